"""The steps of `bindset_dataset_build`, as plain functions of BuildSettings (the DAG only wires them).

    find_changes -> run_build -> run_validation -> run_report -> publish (orchestration.publish)

"What changed" is measured against the *published* version, not the build folder: a build that failed its
gate is retried on the next run (its units come from the cache, so only validation runs again), and a run
that finds the landing path as it was at the last publication does nothing at all.

The DAG resolves the BuildSettings once per run, in find_changes, and re-creates them in every later task
from its XCom (``BuildSettings.to_dict`` / ``from_dict``): all steps of a run use the same paths.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from orchestration.publish import CURRENT, read_pointer, version_folder
from orchestration.settings import BuildSettings
from pipelines import storage
from pipelines.storage import Location

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    """The landing path against the published version: units (sessions, videos, ...) new, changed, gone."""

    layout: str
    units: int
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # files (path, size, mtime), build config or code differ
    removed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # inputs that cannot be planned, not yet recorded
    published: str | None = None  # the version `current` points at

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.removed or self.unreadable)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self:
            return f"nothing new: {self.units} unit(s) in the landing path, all as published in {self.published}"
        groups = {"new": self.new, "changed": self.changed, "removed": self.removed, "unreadable": self.unreadable}
        parts = [f"{len(v)} {k}" for k, v in groups.items() if v]
        return f"{', '.join(parts)} of {self.units} unit(s) against {self.published or 'no published version'}"


def _published_input_rejects(version: Path | Location) -> set[str]:
    path = version / "rejects.parquet"
    if not storage.exists(path):
        return set()
    table = storage.read_parquet(path, columns=["key", "source"])
    return set(table.filter(pc.is_null(table.column("key"))).column("source").to_pylist())


def find_changes(s: BuildSettings) -> Changes:
    """Fingerprint the landing path as a build would (file stats, config, code: no bytes read).

    ``s.data_root`` may be a ``Location`` on an object store: the published version is then found through
    the pointer object (``orchestration.publish``), resolved once so that the manifest and the rejects come
    from the same version.
    """
    from pipelines.work import fingerprint
    from transforms.layouts import discover

    raw = s.landing_path
    discovery = discover(raw, s.build_config.layout)
    now = {u.unit_id: fingerprint(raw, u, s.build_config) for u in discovery.units}
    published = read_pointer(s.data_root / CURRENT)
    version = None if published is None else version_folder(s.data_root, published)
    manifest = json.loads(storage.read_bytes(version / "manifest.json")) if version is not None else None
    before: dict[str, str] = manifest.get("inputs", {}) if manifest else {}
    recorded = _published_input_rejects(version) if version is not None and manifest else set()
    return Changes(
        layout=discovery.layout,
        units=len(now),
        new=sorted(set(now) - set(before)),
        changed=sorted(u for u in now if u in before and before[u] != now[u]),
        removed=sorted(set(before) - set(now)),
        unreadable=sorted({r.source for r in discovery.rejects} - recorded),
        published=published,
    )


@dataclass(frozen=True)
class BuildOutcome:
    engine: str
    units: int
    processed: int
    reused: int
    processed_units: list[str]
    samples: int
    build_version: str
    build_dir: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _log_lines(build_dir: Path) -> list[dict]:
    path = build_dir / "_work" / "builds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_build(s: BuildSettings, airflow_run_id: str = "manual", try_number: int = 1) -> BuildOutcome:
    """The incremental build into DATA_ROOT/build: here (Beam, local, a Ray on this worker) or as a Ray Job."""
    if s.ray_jobs:
        return _run_build_as_ray_job(s, airflow_run_id, try_number)
    from pipelines.build import EngineConfig, build

    engine = EngineConfig(s.engine, list(s.beam_pipeline_args), None, s.workers)
    result = build(s.landing_path, s.build_dir, s.build_config, engine)
    for line in result.summary_lines(s.build_dir):
        log.info(line)
    return BuildOutcome(
        engine=s.engine,
        units=result.units,
        processed=result.processed,
        reused=result.reused,
        processed_units=result.processed_units,
        samples=result.commit.samples,
        build_version=result.commit.version,
        build_dir=str(s.build_dir),
        seconds=round(result.seconds, 3),
    )


def _run_build_as_ray_job(s: BuildSettings, airflow_run_id: str, try_number: int) -> BuildOutcome:
    from orchestration.ray_jobs import build_argv, job_spec, run_ray_job

    assert s.ray is not None
    spec = job_spec("build", build_argv(s.landing_path, s.build_dir, s.build_config), s.ray, airflow_run_id, try_number)
    before = len(_log_lines(s.build_dir))
    run_ray_job(s.ray, spec)
    # the job's build appended its counters to the shared build folder: that is how we learn what it redid
    lines = _log_lines(s.build_dir)
    if len(lines) <= before:
        raise RuntimeError(f"Ray job {spec.submission_id} succeeded but {s.build_dir}/_work/builds.jsonl has no new "
                           "entry: is DATA_ROOT the same shared path on the cluster and on this worker?")  # fmt: skip
    last = lines[-1]
    return BuildOutcome(
        engine="ray (job)",
        units=last["units"],
        processed=last["processed"],
        reused=last["reused"],
        processed_units=last["processed_units"],
        samples=last["samples"],
        build_version=last["version"],
        build_dir=str(s.build_dir),
        seconds=last["seconds"],
    )


def run_validation(s: BuildSettings):
    """The Great Expectations gate over the build folder; records the verdict in its manifest."""
    from pipelines.validate import validate

    outcome = validate(s.build_dir, s.thresholds)
    for line in outcome.summary_lines():
        log.info(line)
    return outcome


def run_report(s: BuildSettings) -> Path:
    from pipelines.report import write_report

    return write_report(s.build_dir)
