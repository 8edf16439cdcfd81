"""The steps of `bindset_train`, as plain functions of TrainSettings (the DAG only wires them).

    RUN_ROOT/runs/<run-name>/          bindset train's RUN folder (model/, checkpoints, events, metrics)
                            emb/       bindset embed's output (per-modality Parquet + FAISS)
                            eval/      eval.md, eval.json
                            report/    eval.md, eval.json, summary.json: the published run report
    RUN_ROOT/current -> runs/<run-name>
    RUN_ROOT/publish_log.jsonl

The run name defaults to ``<dataset version>_<config hash>``: a retried or re-triggered run of the same data
and config finds its checkpoints and resumes instead of starting over. The DAG's first task resolves the
settings and the dataset once per run (``TrainSettings.to_dict``, ``DatasetRef.to_dict``); the steps below
get them re-created from its XCom.

``RUN_ROOT`` (and ``DATA_ROOT``) may be an ``s3://`` URL (issue 17): train, embed and eval write the run's
objects through the storage seam, the report's objects go up with ``summary.json`` last, and the pointer is the
object ``RUN_ROOT/current.json`` (``{"target": "runs/<name>", "version_id": "<name>"}``), replaced by one PUT as
publish does for datasets; ``publish_log.jsonl`` is rewritten whole. Ray Jobs still need local roots.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestration.publish import (
    CURRENT,
    POINTER_SUFFIX,
    PUBLISH_LOG,
    VERSION_JSON,
    read_pointer,
    switch_pointer,
    version_path,
)
from orchestration.settings import TrainSettings
from pipelines import storage
from pipelines.storage import Location, replace_dir

log = logging.getLogger(__name__)

RUNS = "runs"
REPORT = "report"


@dataclass(frozen=True)
class DatasetRef:
    version_id: str
    path: str  # DATA_ROOT/versions/<id>: immutable, so a later publication never changes what this run reads
    source: str  # param | asset event | current

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetRef:
        return cls(str(d["version_id"]), str(d["path"]), str(d["source"]))


def latest_event_extra(events: Iterable[Any]) -> Mapping[str, Any] | None:
    """The ``extra`` of the newest Asset event (objects with ``timestamp`` and ``extra``), or None."""
    newest = max(events, key=lambda e: e.timestamp, default=None)
    return None if newest is None else dict(newest.extra or {})


def resolve_dataset(s: TrainSettings, event_extra: Mapping[str, Any] | None) -> DatasetRef:
    """The dataset to train on: the param, else the triggering Asset event, else what ``current`` points at."""
    if s.dataset_version:
        return DatasetRef(s.dataset_version, str(version_path(s.data_root, s.dataset_version)), "param")
    if event_extra and event_extra.get("version_id"):
        vid = str(event_extra["version_id"])
        path = event_extra.get("path") or version_path(s.data_root, vid)
        if not storage.exists(storage.location(str(path)) / VERSION_JSON):
            raise FileNotFoundError(f"the Asset event names dataset {vid} at {path}, which is not a published version")
        return DatasetRef(vid, str(path), "asset event")
    vid = read_pointer(s.data_root / CURRENT)
    if vid is None:
        raise ValueError(f"no dataset version: pass the param dataset_version, trigger from the bindset_dataset "
                         f"Asset, or publish one under {s.data_root} first")  # fmt: skip
    return DatasetRef(vid, str(version_path(s.data_root, vid)), "current")


@dataclass(frozen=True)
class TrainOutcome:
    dataset: DatasetRef
    run_name: str
    run: str
    step: int
    metrics: dict
    engine: str
    workers: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainOutcome:
        return cls(**{**d, "dataset": DatasetRef.from_dict(d["dataset"])})


def run_dir(s: TrainSettings, ds: DatasetRef) -> tuple[str, Path | Location]:
    name = s.run_name or f"{ds.version_id}_{s.config_hash()}"
    return name, s.run_root / RUNS / name


def _place(where: str | Path | Location) -> Path | Location:
    """A run's folder as handed on in XCom (text): a Path, or a Location for a URL."""
    return storage.location(str(where)) if storage.is_url(str(where)) else Path(where)


def _read_final_state(run: Path | Location) -> dict:
    return json.loads(storage.read_bytes(run / "model" / "state.json"))


def _need_local(s: TrainSettings, where: Path | Location) -> None:
    if s.ray_jobs and isinstance(where, Location):
        raise ValueError(f"{where}: Ray Jobs of the train DAG need a local run_root (a URL run_root: engine local)")


def run_train(s: TrainSettings, ds: DatasetRef, airflow_run_id: str = "manual", try_number: int = 1) -> TrainOutcome:
    name, run = run_dir(s, ds)
    _need_local(s, run)
    if isinstance(run, Path):
        run.mkdir(parents=True, exist_ok=True)
    config_file = run / "requested_config.json"
    storage.put_atomic(config_file, (json.dumps(s.train_config.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    storage.put_atomic(run / "dataset.json", (json.dumps(asdict(ds), indent=1, sort_keys=True) + "\n").encode())
    if s.ray_jobs:
        from orchestration.ray_jobs import job_spec, run_ray_job, train_argv

        assert s.ray is not None
        argv = train_argv(Path(ds.path), run, config_file, s.workers, s.gpu)
        run_ray_job(s.ray, job_spec("train", argv, s.ray, airflow_run_id, try_number))
        state = _read_final_state(run)
        return TrainOutcome(ds, name, str(run), state["step"], state.get("metrics", {}), "ray (job)", s.workers)
    from training.run import train

    result = train(ds.path, run, s.train_config, workers=s.workers, gpu=s.gpu, engine=s.engine)
    for line in result.summary_lines():
        log.info(line)
    return TrainOutcome(ds, name, str(run), result.step, dict(result.metrics), s.engine, s.workers)


def run_embed(s: TrainSettings, t: TrainOutcome, airflow_run_id: str = "manual", try_number: int = 1) -> dict:
    emb = _place(t.run) / "emb"
    _need_local(s, emb)
    if s.ray_jobs:
        from orchestration.ray_jobs import embed_argv, job_spec, run_ray_job

        assert s.ray is not None
        # on the cluster the job runs on: a pool of Ray actors over the parts (training/embed.py)
        argv = embed_argv(Path(t.dataset.path), Path(t.run), emb, s.gpu) + ["--engine", "ray", "--ray-address", "auto"]
        run_ray_job(s.ray, job_spec("embed", argv, s.ray, airflow_run_id, try_number))
    else:
        from training.embed import embed

        embed(t.dataset.path, t.run, emb, gpu=s.gpu)
    meta = json.loads(storage.read_bytes(emb / "meta.json"))
    return {"emb": str(emb), "counts": meta["counts"], "model_id": meta["run_id"]}


def run_eval(s: TrainSettings, t: TrainOutcome, emb: str, airflow_run_id: str = "manual", try_number: int = 1) -> dict:
    out = _place(t.run) / "eval"
    _need_local(s, out)
    if s.ray_jobs:
        from orchestration.ray_jobs import eval_argv, job_spec, run_ray_job

        assert s.ray is not None
        run_ray_job(s.ray, job_spec("eval", eval_argv(Path(emb), s.eval_split, out), s.ray, airflow_run_id, try_number))
    else:
        from training.evaluate import evaluate

        evaluate(emb, s.eval_split, str(out))
    report = json.loads(storage.read_bytes(out / "eval.json"))
    headline = {f"{r['query']}->{r['target']} R@1": r["recall"]["R@1"] for r in report.get("image_modality", [])}
    return {"eval": str(out), "split": s.eval_split, "headline": headline}


def publish_run_report(s: TrainSettings, t: TrainOutcome, embedded: Mapping[str, Any], evaluated: Mapping[str, Any],
                       airflow: Mapping[str, str] | None = None) -> dict:  # fmt: skip
    """RUN/report/ (eval tables + summary.json), then RUN_ROOT/current -> runs/<name>, atomically."""
    run = _place(t.run)
    summary = {
        "run_name": t.run_name,
        "dataset": asdict(t.dataset),
        "train": {"step": t.step, "metrics": t.metrics, "engine": t.engine, "workers": t.workers,
                  "preset": s.preset, "config": s.train_config.to_dict()},
        "embeddings": dict(embedded),
        "eval": dict(evaluated),
        "airflow": dict(airflow or {}),
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    if isinstance(run, Location):
        return _publish_remote(s, t, run, summary, evaluated)
    tmp = run / f".{REPORT}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    for name in ("eval.md", "eval.json"):
        shutil.copy2(Path(evaluated["eval"]) / name, tmp / name)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    replace_dir(tmp, run / REPORT)
    previous = read_pointer(s.run_root / CURRENT)
    switch_pointer(s.run_root / CURRENT, Path(RUNS) / t.run_name)
    entry = {"at": summary["published_at"], "run_name": t.run_name, "previous": previous,
             "dataset_version": t.dataset.version_id}  # fmt: skip
    with open(s.run_root / PUBLISH_LOG, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return {"report": str(run / REPORT), "run_name": t.run_name, "previous": previous}


def _publish_remote(s: TrainSettings, t: TrainOutcome, run: Location, summary: dict,
                    evaluated: Mapping[str, Any]) -> dict:  # fmt: skip
    """``publish_run_report`` on an object store: RUN/report/ objects (``summary.json`` last), then the pointer
    object ``RUN_ROOT/current.json`` with one PUT, then ``publish_log.jsonl`` rewritten whole (no append)."""
    report = run / REPORT
    storage.delete(report / "summary.json")  # uncommitted while its eval tables are replaced
    for name in ("eval.md", "eval.json"):
        storage.put_atomic(report / name, storage.read_bytes(_place(evaluated["eval"]) / name))
    storage.put_json(report / "summary.json", summary, indent=1)
    root = s.run_root
    previous = read_pointer(root / CURRENT)
    storage.put_json(root / f"{CURRENT}{POINTER_SUFFIX}", {"target": f"{RUNS}/{t.run_name}", "version_id": t.run_name},
                     indent=None)  # fmt: skip
    entry = {"at": summary["published_at"], "run_name": t.run_name, "previous": previous,
             "dataset_version": t.dataset.version_id}  # fmt: skip
    try:
        log_bytes = storage.read_bytes(root / PUBLISH_LOG)
    except FileNotFoundError:
        log_bytes = b""
    storage.put_atomic(root / PUBLISH_LOG, log_bytes + (json.dumps(entry, sort_keys=True) + "\n").encode())
    return {"report": str(report), "run_name": t.run_name, "previous": previous}
