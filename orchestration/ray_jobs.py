"""Running a bindset command on a Ray cluster as a Ray Job, from an Airflow worker.

    entrypoint: bindset build LANDING DATA_ROOT/build --engine ray --ray-address auto --no-validate ...

The job's driver runs on the cluster, so the Airflow worker only submits, polls and relays logs; heavy work
never runs on it. bindset must be installed in the cluster's Python environment (or be given through the
Connection's ``runtime_env``), and the paths must be the same on the cluster and on the Airflow worker (a
shared filesystem), since the later tasks read what the job wrote.

A retried Airflow task must never start a second job writing the same folder: each submission id is
``bindset-<kind>-<airflow run id>-<try>``, and a try first waits for a still-running job of an earlier try
of the same run instead of submitting. A task that is killed or times out stops its job.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestration.settings import RaySettings
from schemas.config import cli_flag
from transforms.config import BuildConfig

log = logging.getLogger(__name__)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class RayJobSpec:
    argv: tuple[str, ...]
    submission_id: str
    runtime_env: Mapping[str, Any] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def entrypoint(self) -> str:
        return shlex.join(self.argv)


def build_argv(landing: Path, build_dir: Path, cfg: BuildConfig) -> list[str]:
    """`bindset build` with every BuildConfig field as its flag (named by the field's definition, like the
    CLI's), so the job builds with exactly the resolved config even if the CLI's defaults change."""
    argv = ["bindset", "build", str(landing), str(build_dir), "--engine", "ray", "--ray-address", "auto"]
    for name, value in cfg.to_dict().items():
        text = "none" if value is None else json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
        argv += [cli_flag(BuildConfig, name), text]
    return argv + ["--no-validate", "--quiet"]


def train_argv(data: Path, run: Path, config_file: Path, workers: int, gpu: bool) -> list[str]:
    argv = ["bindset", "train", str(data), str(run), "--config", str(config_file), "--workers", str(workers),
            "--engine", "ray", "--ray-address", "auto", "--quiet"]  # fmt: skip
    return argv + (["--gpu"] if gpu else [])


def embed_argv(data: Path, run: Path, emb: Path, gpu: bool) -> list[str]:
    return ["bindset", "embed", str(data), str(run), str(emb), "--quiet"] + (["--gpu"] if gpu else [])


def eval_argv(emb: Path, split: str, out: Path) -> list[str]:
    return ["bindset", "eval", str(emb), "--split", split, "--out", str(out)]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:120]


def submission_prefix(kind: str, airflow_run_id: str) -> str:
    return f"bindset-{kind}-{_safe(airflow_run_id)}-"


def job_spec(kind: str, argv: list[str], ray: RaySettings, airflow_run_id: str, try_number: int) -> RayJobSpec:
    return RayJobSpec(
        argv=tuple(argv),
        submission_id=f"{submission_prefix(kind, airflow_run_id)}{try_number}",
        runtime_env=ray.runtime_env,
        metadata={"bindset": kind, "airflow_run_id": airflow_run_id, "try": str(try_number)},
    )


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _active_earlier_try(client, spec: RayJobSpec) -> str | None:
    prefix = spec.submission_id.rsplit("-", 1)[0] + "-"
    for job in client.list_jobs():
        sid = getattr(job, "submission_id", None) or ""
        if sid.startswith(prefix) and sid != spec.submission_id and _status(job.status) not in TERMINAL:
            return sid
    return None


def run_ray_job(ray: RaySettings, spec: RayJobSpec, *, client=None, sleep: Callable[[float], None] = time.sleep) -> str:
    """Submit (or re-attach to) the job, wait for it, return its log tail; a failed job raises with its logs."""
    if client is None:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(ray.address, headers=ray.headers())
    job_id = _active_earlier_try(client, spec)
    if job_id is not None:
        log.info("Ray job %s of an earlier try is still running at %s: waiting for it", job_id, ray.address)
    else:
        job_id = client.submit_job(
            entrypoint=spec.entrypoint,
            submission_id=spec.submission_id,
            runtime_env=dict(spec.runtime_env) if spec.runtime_env else None,
            metadata=dict(spec.metadata),
        )
        log.info("submitted Ray job %s to %s: %s", job_id, ray.address, spec.entrypoint)
    try:
        status = _status(client.get_job_status(job_id))
        while status not in TERMINAL:
            sleep(ray.poll_s)
            status = _status(client.get_job_status(job_id))
    except BaseException:
        # the Airflow task was killed or timed out: its retry must not race a job still writing the folder
        try:
            client.stop_job(job_id)
        except Exception:  # noqa: BLE001 - best effort; the original error is the one to report
            log.warning("could not stop Ray job %s", job_id, exc_info=True)
        raise
    logs = client.get_job_logs(job_id)
    if status != "SUCCEEDED":
        message = getattr(client.get_job_info(job_id), "message", "") or ""
        raise RuntimeError(
            f"Ray job {job_id} ({spec.entrypoint}) ended {status} at {ray.address}: {message}\n"
            f"--- last {LOG_TAIL_LINES} log lines ---\n{_tail(logs)}"
        )
    log.info("Ray job %s succeeded; last log lines:\n%s", job_id, _tail(logs, 10))
    return _tail(logs)
