"""`bindset build`: discover units, skip the ones already done, run the rest on an engine, commit.

    bindset build RAW DATA --engine beam|ray [--layout auto] [runner flags]

Engines only map ``pipelines.work.run_unit`` over units; everything else happens here, once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.commit import CommitResult, commit
from pipelines.work import WORK, WorkContext, cached_summary, code_version, fingerprint, units_dir
from transforms.config import BuildConfig
from transforms.layouts import discover, unit_to_dict
from transforms.records import SUMMARY, UnitSummary

ENGINES = ("beam", "ray", "local")


@dataclass(frozen=True)
class EngineConfig:
    engine: str = "beam"
    pipeline_args: list[str] = field(default_factory=list)  # Beam runner flags, untouched
    ray_address: str | None = None
    num_workers: int | None = None  # ray: CPUs of a local instance


@dataclass(frozen=True)
class BuildResult:
    layout: str
    detected: bool
    units: int
    processed: int
    reused: int
    seconds: float
    commit: CommitResult
    processed_units: list[str]

    def summary_lines(self, data: Path) -> list[str]:
        c = self.commit
        how = "detected" if self.detected else "given"
        return [
            f"build: layout {self.layout} ({how}), {self.units} unit(s): {self.processed} processed, "
            f"{self.reused} reused from an earlier run, in {self.seconds:.1f} s",
            f"  windows planned {c.windows_planned}: {c.samples} samples in shards + {c.window_rejects} rejected",
            f"  shards: {', '.join(f'{k} {v}' for k, v in c.shards.items())}; reject rows: {c.rejects}",
            *(f"    {reason}: {n}" for reason, n in c.reasons.items()),
            f"  dataset version {c.version} at {data}",
        ]


def _run_local(ctx: WorkContext, units_json: list[str], on_done: Callable[[], None]) -> None:
    from pipelines.work import run_unit

    for u in units_json:
        run_unit(ctx, u)
        on_done()


class _Progress:
    """Counts committed units by watching the work folder, whichever engine (and machine) wrote them."""

    def __init__(self, folder: Path, todo: set[str], bar):
        self.folder, self.todo, self.bar = folder, todo, bar
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(0.5):
            self.poll()

    def poll(self):
        now = {u for u in self.todo if (self.folder / u / SUMMARY).exists()}
        if self.bar is not None and len(now) > len(self.seen):
            self.bar.update(len(now) - len(self.seen))
        self.seen = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()


def build(raw: Path | str, data: Path | str, cfg: BuildConfig, engine: EngineConfig, progress=None) -> BuildResult:
    t0 = time.perf_counter()
    raw, data = Path(raw).resolve(), Path(data).resolve()
    if engine.engine not in ENGINES:
        raise ValueError(f"unknown engine {engine.engine!r}; choose one of {', '.join(ENGINES)}")
    if data == raw or raw in data.parents:
        raise ValueError(f"output {data} must not be inside the input {raw}")
    discovery = discover(raw, cfg.layout)
    data.mkdir(parents=True, exist_ok=True)
    fps = {u.unit_id: fingerprint(raw, u, cfg) for u in discovery.units}
    todo = [u for u in discovery.units if cached_summary(data, u.unit_id, fps[u.unit_id]) is None]
    units_json = [json.dumps(unit_to_dict(u), sort_keys=True) for u in todo]
    ctx = WorkContext(str(raw), str(data), cfg.to_dict())
    bar = progress(len(todo)) if (progress and todo) else None
    if todo:
        with _Progress(units_dir(data), {u.unit_id for u in todo}, bar) as prog:
            if engine.engine == "beam":
                from pipelines.beam_engine import run_beam

                run_beam(ctx, units_json, engine.pipeline_args)
            elif engine.engine == "ray":
                from pipelines.ray_engine import run_ray

                run_ray(ctx, units_json, engine.ray_address, engine.num_workers, prog.poll)
            else:
                _run_local(ctx, units_json, prog.poll)
    if bar is not None:
        bar.close()

    units = []
    for u in discovery.units:
        summary = cached_summary(data, u.unit_id, fps[u.unit_id])
        if summary is None:
            raise RuntimeError(f"unit {u.unit_id} has no committed result after the engine finished")
        units.append((u.unit_id, units_dir(data) / u.unit_id, summary))
    _prune(data, {u.unit_id for u in discovery.units})
    result = commit(data, discovery, units, cfg, code_version(), fps)
    out = BuildResult(
        layout=discovery.layout,
        detected=discovery.detected,
        units=len(discovery.units),
        processed=len(todo),
        reused=len(discovery.units) - len(todo),
        seconds=time.perf_counter() - t0,
        commit=result,
        processed_units=sorted(u.unit_id for u in todo),
    )
    _log(data, engine, out)
    return out


def _prune(data: Path, keep: set[str]) -> None:
    import shutil

    folder = units_dir(data)
    for d in folder.iterdir() if folder.exists() else []:
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(data / WORK / "tmp", ignore_errors=True)


def _log(data: Path, engine: EngineConfig, result: BuildResult) -> None:
    """One JSON line per build: the counters that prove what a rerun redid."""
    entry = {
        "engine": engine.engine,
        "units": result.units,
        "processed": result.processed,
        "reused": result.reused,
        "processed_units": result.processed_units,
        "seconds": round(result.seconds, 3),
        "samples": result.commit.samples,
        "version": result.commit.version,
        "pid": os.getpid(),
    }
    with open(data / WORK / "builds.jsonl", "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def load_summary(data: Path, unit_id: str) -> UnitSummary:
    return UnitSummary.from_json((units_dir(data) / unit_id / SUMMARY).read_text())


__all__ = ["build", "BuildConfig", "EngineConfig", "BuildResult", "asdict"]
