"""`bindset build`: discover units, skip the ones already done, run the rest on an engine, commit.

    bindset build RAW DATA --engine beam|ray [--layout auto] [runner flags]

Engines only map ``pipelines.work.run_unit`` over units; everything else happens here, once.

A build holds DATA's lock (``pipelines.lock``) from discovery to commit: a second build into the same DATA
fails at once (exit 2), and the workers of a killed build write nothing more. Units whose result holds a
transient reject (``schemas.reasons.TRANSIENT``) run again, up to ``max_attempts`` runs in all, or at once
with ``retry_failed``. An input that changes while the build reads it is built once more, or rejected as
``input_changed`` (and built by the next build); the build itself never fails over it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipelines import storage, work
from pipelines.commit import CommitResult, commit
from pipelines.lock import BuildLock
from pipelines.storage import Location
from pipelines.work import (
    MAX_ATTEMPTS,
    WORK,
    WorkContext,
    attempt_of,
    cached_summary,
    code_version,
    fingerprint,
    input_stats,
    transient_reasons,
    units_dir,
    write_unit_reject,
)
from schemas.errors import InputError
from schemas.reasons import RejectReason
from transforms.config import BuildConfig
from transforms.grouping import WorkUnit, plan_units
from transforms.layouts import discover
from transforms.records import SUMMARY, Reject, UnitSummary

log = logging.getLogger(__name__)

ENGINES = ("beam", "ray", "local")


@dataclass(frozen=True)
class EngineConfig:
    engine: str = "beam"
    pipeline_args: list[str] = field(default_factory=list)  # Beam runner flags, untouched
    ray_address: str | None = None
    num_workers: int | None = None  # ray: CPUs of a local instance; local: decode workers (default: cores)


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
    retried_units: list[str] = field(default_factory=list)  # transient failures of earlier builds, run again
    changed_units: list[str] = field(default_factory=list)  # inputs that changed during this build

    def summary_lines(self, data: Path) -> list[str]:
        c = self.commit
        how = "detected" if self.detected else "given"
        return [
            f"build: layout {self.layout} ({how}), {self.units} unit(s): {self.processed} processed, "
            f"{self.reused} reused from an earlier run, in {self.seconds:.1f} s",
            f"  windows planned {c.windows_planned}: {c.samples} samples in shards + {c.window_rejects} rejected",
            f"  shards: {', '.join(f'{k} {v}' for k, v in c.shards.items())}; reject rows: {c.rejects}",
            *(f"    {reason}: {n}" for reason, n in c.reasons.items()),
            *([f"  retried after a transient failure: {', '.join(self.retried_units)}"] if self.retried_units else []),
            *([f"  inputs changed during the build: {', '.join(self.changed_units)}"] if self.changed_units else []),
            f"  dataset version {c.version} at {data}",
        ]


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, as a container or ``taskset`` limits it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def local_workers(requested: int | None, units: int) -> int:
    """The local engine's decode workers: ``requested``, by default one per usable core (a decode worker
    keeps about 1.5 cores busy: its decoding thread and the per-window and clock-check threads beside it,
    so more workers than cores only adds memory), never more than there are units."""
    return max(1, min(requested or usable_cores(), units))


def decode_threads(concurrent_units: int, cores: int | None = None) -> int:
    """FFmpeg threads for each video decoder when ``concurrent_units`` units decode at once on ``cores``
    CPUs (default: ``usable_cores()``): 0 (FFmpeg's default, one thread per core) for a unit alone, which
    then decodes as fast as frame threading allows (a 30-minute session, ``benchmarks/build_throughput.py``);
    otherwise the cores shared out, at least 1. Frame threading costs ~35% more CPU than one thread
    (transforms/media.py), a loss where other units' decoders fill the cores anyway: on 300 six-second
    videos with 2 workers on 2 cores, one thread each builds in 13.8 s against 15.6 s."""
    cores = cores or usable_cores()
    return 0 if concurrent_units <= 1 else max(1, cores // concurrent_units)


def lone_units(weights: dict[str, int], concurrent: int) -> list[str]:
    """The units of ``weights`` (unit id -> input bytes) heavier than an even share of the work among
    ``concurrent`` units at once: the others finish first, so such a unit (a long session among short ones)
    decodes alone for much of its time and keeps FFmpeg's default threads (``decode_threads``); at most
    ``concurrent - 1`` of them, so the list stays short in every task's context. Sorted ids."""
    total = sum(weights.values())
    if concurrent <= 1 or not total:
        return []
    return sorted(u for u, w in weights.items() if w > total / concurrent)


STOP_WAIT_S = 30.0  # how long a stopping local build waits for its unit threads to let go


def _run_local(ctx: WorkContext, units_json: list[str], on_done: Callable[[], None], workers: int = 1) -> None:
    """Run the units in this process: ``workers`` threads, each feeding a decode process of its own
    (``work.DecodeWorker``) and writing its unit's folder, taking the next unit of ``units_json`` (the caller's
    order) as soon as one ends. Results do not depend on the count: each unit's output is a function of its
    inputs alone. An exception in one unit, or an interrupt (Ctrl-C) of this thread, stops the others as
    the serial loop stops: running units are abandoned (decoders killed, nothing of them written), then it
    re-raises (tests/test_reliability.py: Ctrl-C to the process group, or SIGINT to this process alone).
    Each thread's decode process ends with the thread."""
    if workers <= 1:
        for u in units_json:
            work.run_unit(ctx, u)
            on_done()
        return
    import queue

    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for u in units_json:
        todo.put(u)
    results: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()

    def unit_thread() -> None:
        work.set_thread_stop(stop)
        try:
            while not stop.is_set():
                try:
                    u = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    work.run_unit(ctx, u)
                except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which re-raises it
                    results.put(exc)
                    return
                results.put(None)
        finally:
            work.release_thread_decoder()

    threads = [threading.Thread(target=unit_thread, name=f"bindset-unit-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        for _ in units_json:
            while True:
                try:
                    failed = results.get(timeout=0.5)  # a timed wait: Ctrl-C is seen at once on any platform
                    break
                except queue.Empty:
                    continue
            if failed is not None:
                raise failed
            on_done()
    finally:
        stop.set()  # a no-op once every unit is done; otherwise the running ones stop within a watchdog tick
        # ... unless a thread is inside a storage call that retries (an object store that went down): the
        # build does not wait for it past STOP_WAIT_S; its unit has no summary yet and the next build redoes it
        deadline = time.monotonic() + STOP_WAIT_S
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("%d unit thread(s) still in a call after %.0f s; not waited for: %s", len(stuck),
                        STOP_WAIT_S, ", ".join(stuck))  # fmt: skip


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
        if isinstance(self.folder, Location):  # object storage: one listing, not a request per unit
            fs = storage.filesystem(self.folder.scheme)
            try:
                found = fs.glob(f"{self.folder.path}/*/{SUMMARY}")
            except Exception:  # noqa: BLE001 - progress only; the commit reads the summaries itself
                return
            now = {p.rstrip("/").split("/")[-2] for p in found} & self.todo
        else:
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


#: Beam runners whose workers run on other machines (Beam accepts ``--runner=DataflowRunner`` or ``dataflow``)
CLUSTER_RUNNERS = ("dataflow", "flink", "spark", "portable")
#: Ray addresses that are no machine in particular: this machine's cluster ("auto"), a fresh instance ("local")
_RAY_HERE = ("auto", "local")


def _beam_runner(args: list[str]) -> str | None:
    """The ``--runner`` value among Beam pipeline flags (``--runner=X`` or ``--runner X``), else None."""
    for i, arg in enumerate(args):
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
        if arg == "--runner" and i + 1 < len(args):
            return args[i + 1]
    return None


def _remote_ray_host(address: str) -> str | None:
    """The host of a Ray address on another machine (``ray://10.0.0.5:10001``, ``head:6379``), else None.

    Loopback addresses and this machine's own name are not remote; neither are "auto" and "local".
    """
    import socket
    from urllib.parse import urlsplit

    if address.strip().lower() in _RAY_HERE:
        return None
    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return None
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return None if host.lower() in names else host


def refuse_cluster_with_local_paths(raw: Path | str, data: Path | str, engine: EngineConfig) -> None:
    """Raise ``UserError`` (exit 2) when workers on other machines would be handed this machine's folders.

    A Ray cluster on another host (``--ray-address``) needs RAW and DATA it can reach; a Beam runner of
    ``CLUSTER_RUNNERS`` (Dataflow, Flink, Spark, portable) needs DATA it can write and RAW it can read (its
    workers download their inputs from a URL RAW, ``pipelines.raw_source``). A local path is
    neither: the workers would write into their own disks, and the driver's commit would find nothing. Called
    before the lock and the discovery, so nothing has run or been written when it refuses.
    """
    from schemas.errors import UserError

    if engine.engine == "ray" and engine.ray_address:
        host = _remote_ray_host(engine.ray_address)
        local = [f"{name} {where}" for name, where in (("DATA", data), ("RAW", raw)) if not storage.is_url(where)]
        if host and local:
            raise UserError(f"--engine ray --ray-address {engine.ray_address} with a local {local[0]}: the cluster's "
                            f"workers on {host} cannot read or write this machine's folders; use s3:// or gs:// "
                            "locations, or a Ray started here (no --ray-address)")  # fmt: skip
    runner = _beam_runner(engine.pipeline_args) if engine.engine == "beam" else None
    name = (runner or "").lower().removesuffix("runner")
    if name in CLUSTER_RUNNERS and not storage.is_url(data):
        raise UserError(
            f"--runner={runner} with a local DATA {data}: that runner's workers run on other machines "
            "and cannot write this machine's folder; use an s3:// or gs:// DATA, or the DirectRunner"
        )
    if name in CLUSTER_RUNNERS and not storage.is_url(raw):  # RAW on a URL is read by the workers themselves
        raise UserError(
            f"--runner={runner} with a local RAW {raw}: that runner's workers run on other machines "
            "and cannot read this machine's folder; use an s3:// or gs:// RAW, or the DirectRunner"
        )


def build(raw: Path | str, data: Path | str, cfg: BuildConfig, engine: EngineConfig, progress=None, *,
          retry_failed: bool = False, max_attempts: int = MAX_ATTEMPTS) -> BuildResult:  # fmt: skip
    """Build DATA from RAW: discover units, run those without a current result on ``engine``, commit.

    ``retry_failed``: run units whose result holds a transient reject again now, however many attempts they
    had; otherwise such a unit runs again until it has run ``max_attempts`` times, then its reject stays.
    Raises ``pipelines.lock.BuildLocked`` (exit 2) when another build holds DATA, ``LayoutError`` for an
    input no layout fits, ``ValueError`` for a bad engine or DATA inside RAW, ``UserError`` for a cluster
    engine given local paths (``refuse_cluster_with_local_paths``).
    """
    t0 = time.perf_counter()
    refuse_cluster_with_local_paths(raw, data, engine)
    if storage.is_url(data):
        return _build_remote(raw, storage.location(data), cfg, engine, progress, retry_failed, max_attempts, t0)
    raw, data = _raw_at(raw), Path(data).resolve()
    if engine.engine not in ENGINES:
        raise ValueError(f"unknown engine {engine.engine!r}; choose one of {', '.join(ENGINES)}")
    if isinstance(raw, Path) and (data == raw or raw in data.parents):
        raise InputError(f"output {data} must not be inside the input {raw}")
    if data.exists() and not data.is_dir():
        raise InputError(f"output {data}: not a folder")
    data.mkdir(parents=True, exist_ok=True)
    with BuildLock(data) as lock:
        out = _build_locked(raw, data, cfg, engine, progress, lock.build_id, retry_failed, max_attempts, t0)
        _log(data, engine, out)
    return out


def _build_remote(raw: Path | str, data: Location, cfg: BuildConfig, engine: EngineConfig, progress,
                  retry_failed: bool, max_attempts: int, t0: float) -> BuildResult:  # fmt: skip
    """``build`` into DATA on object storage (``s3://bucket/prefix``, ``gs://``): the lease object instead of ``flock``
    (``pipelines.lock_remote``), units uploaded summary last (``work.upload_unit``), the object-store commit
    (``pipelines.commit_remote``). Nothing is written to a local DATA path. Every engine: the unit upload runs
    in whichever process ran the unit; a Ray or Beam worker needs only the store's endpoint and credentials
    (a Ray worker gets them through the runtime environment, ``pipelines.ray_engine``; the DirectRunner's
    worker threads or processes inherit this process's environment; the workers of a cluster runner bring
    their own)."""
    from pipelines.lock_remote import ObjectBuildLock

    if engine.engine not in ENGINES:
        raise ValueError(f"unknown engine {engine.engine!r}; choose one of {', '.join(ENGINES)}")
    storage.filesystem(data.scheme)  # a missing extra: one line naming it, before any work
    raw = _raw_at(raw)
    if isinstance(raw, Location) and (str(data) == str(raw) or str(data).startswith(f"{raw}/")):
        raise InputError(f"output {data} must not be inside the input {raw}")
    with ObjectBuildLock(data) as lock:
        out = _build_locked(raw, data, cfg, engine, progress, lock.build_id, retry_failed, max_attempts, t0)
        _log(data, engine, out)
    return out


def _raw_at(raw: Path | str | Location) -> Path | Location:
    """RAW as the build takes it: a resolved local folder, or a ``Location`` on object storage, checked to be
    there before any lock or work (``UserError`` naming the URL for a missing bucket or an empty prefix)."""
    if not storage.is_url(raw):
        return Path(raw).resolve()
    from pipelines.raw_source import RemoteRaw

    loc = storage.location(raw)
    RemoteRaw(loc).require()
    return loc


def _discover(raw: Path | Location, layout: str):
    """Discovery and a function ``rel -> stats entries`` for the fingerprints: one stat per input file of a
    local RAW; on object storage the entries of RAW's one listing (``pipelines.raw_source``)."""
    if isinstance(raw, Location):
        from pipelines.raw_source import RemoteRaw, discover_remote

        remote = RemoteRaw(raw)
        discovery, objects = discover_remote(remote, layout)
        return discovery, remote.stats_from(objects)
    return discover(raw, layout), lambda rel: work.path_stats(raw, rel)


def _stats_now(raw: Path | Location):
    """``rel -> stats entries`` as RAW is now: local stats, or one fresh listing of RAW on object storage."""
    if isinstance(raw, Location):
        from pipelines.raw_source import RemoteRaw

        remote = RemoteRaw(raw)
        return remote.stats_from(remote.objects())
    return lambda rel: work.path_stats(raw, rel)


def _build_locked(raw: Path | Location, data: Path, cfg: BuildConfig, engine: EngineConfig, progress, build_id: str,
                  retry_failed: bool, max_attempts: int, t0: float) -> BuildResult:  # fmt: skip
    discovery, stats_of = _discover(raw, cfg.layout)
    # one stat per input file: it sizes the units (transforms/grouping.py) and fingerprints them
    stats = {rel: stats_of(rel) for inp in discovery.units for rel in inp.input_paths()}
    sizes = {e[0]: e[1] for entries in stats.values() for e in entries}
    plan = plan_units(discovery.units, sizes, cfg)
    fps = {u.unit_id: fingerprint(raw, u, cfg, [e for rel in u.input_paths() for e in stats[rel]]) for u in plan}
    todo, attempts = [], {}
    for u in plan:
        done = cached_summary(data, u.unit_id, fps[u.unit_id])
        if done is None:
            todo.append(u)
        elif transient_reasons(done) and (retry_failed or attempt_of(data, u.unit_id) < max_attempts):
            attempts[u.unit_id] = attempt_of(data, u.unit_id) + 1
            todo.append(u)
    if attempts:
        log.info("running %d unit(s) with transient failures again: %s", len(attempts), sorted(attempts))
    if todo:
        _warm_up(engine)
    units_json = [json.dumps(u.to_dict(), sort_keys=True) for u in todo]
    weights = {u.unit_id: sum(sizes.get(p) or 0 for p in u.input_paths()) for u in todo}  # None: unreadable
    # for engines that feed units to workers in order: the last to start are small, so workers finish together
    largest_first = [units_json[i] for i in sorted(range(len(todo)), key=lambda i: -weights[todo[i].unit_id])]
    side_by_side = local_workers(engine.num_workers, len(todo)) if engine.engine == "local" else len(todo)
    ctx = WorkContext(str(raw), str(data), cfg.to_dict(), build_id, attempts,
                      decode_alone=lone_units(weights, min(side_by_side, usable_cores())))  # fmt: skip
    bar = progress(len(todo)) if (progress and todo) else None
    if todo:
        with _Progress(units_dir(data), {u.unit_id for u in todo}, bar) as prog:
            if engine.engine == "beam":
                from pipelines.beam_engine import run_beam

                run_beam(ctx, units_json, engine.pipeline_args)
            elif engine.engine == "ray":
                from pipelines.ray_engine import run_ray

                run_ray(ctx, largest_first, engine.ray_address, engine.num_workers, prog.poll)
            else:
                workers = local_workers(engine.num_workers, len(units_json))
                if workers > 1:
                    units_json = largest_first
                ctx = replace(ctx, decode_threads=decode_threads(workers))
                _run_local(ctx, units_json, prog.poll, workers)
    if bar is not None:
        bar.close()

    units, changed = [], []
    now = _stats_now(raw)
    for u in plan:
        fp = fingerprint(raw, u, cfg, [e for rel in u.input_paths() for e in now(rel)])
        summary = cached_summary(data, u.unit_id, fp)
        if summary is None:
            changed.append(u.unit_id)
            fp, summary = _redo_changed(raw, data, cfg, ctx, u)
        fps[u.unit_id] = fp
        units.append((u.unit_id, units_dir(data) / u.unit_id, summary))
    _prune(data, {u.unit_id for u in plan})
    if isinstance(data, Location):
        from pipelines.commit_remote import commit_remote
        from pipelines.lock_remote import require_held

        require_held(data, build_id)  # a build whose lease was taken over meanwhile must not commit
        result = commit_remote(data, discovery, units, cfg, code_version(), fps)
    else:
        result = commit(data, discovery, units, cfg, code_version(), fps)
    processed = sorted({u.unit_id for u in todo} | set(changed))
    return BuildResult(
        layout=discovery.layout,
        detected=discovery.detected,
        units=len(plan),
        processed=len(processed),
        reused=len(plan) - len(processed),
        seconds=time.perf_counter() - t0,
        commit=result,
        processed_units=processed,
        retried_units=sorted(attempts),
        changed_units=changed,
    )


def _warm_up(engine: EngineConfig) -> None:
    """Start now what the build will wait for later, so that it comes up beside other work: the decode
    workers' forkserver (torch's import, ~3 s) where they run in this process (the local engine, Beam's
    DirectRunner on threads, its default), and this process's own imports that closing the first unit would
    wait for (~1.5 s): the clock check's modules (scipy), which a unit's sync rows and the commit need, and
    pandas, which pyarrow imports at a unit's first ``Table.from_pylist``."""
    beam_threads = False
    if engine.engine == "beam":
        from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

        from pipelines.beam_engine import _default_flags, in_process

        options = PipelineOptions(_default_flags(engine.pipeline_args))
        beam_threads = in_process(options) and options.view_as(DirectOptions).direct_running_mode != "multi_processing"
    if engine.engine == "local" or beam_threads:
        work.start_decode_server()
    threading.Thread(target=_import_for_units, name="bindset-warm-up", daemon=True).start()


def _import_for_units() -> None:
    for name in ("pipelines.sync", "pandas"):
        # pandas is optional to pyarrow: where it is missing, nothing imports it later either
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _redo_changed(raw: Path, data: Path, cfg: BuildConfig, ctx: WorkContext,
                  unit: WorkUnit) -> tuple[str, UnitSummary]:  # fmt: skip
    """A unit without a result for its inputs as they are now: they changed during the build (or a worker
    gave up). Run it once more here; if its inputs change again meanwhile, record it as ``input_changed``,
    a transient reject, so that the next build takes it up again. Returns (fingerprint, summary)."""
    before = input_stats(raw, unit)
    log.warning("unit %s: its inputs changed during the build; building it again", unit.unit_id)
    work.run_unit(ctx, json.dumps(unit.to_dict(), sort_keys=True))
    fp = fingerprint(raw, unit, cfg)
    summary = cached_summary(data, unit.unit_id, fp)
    if summary is None:
        after = input_stats(raw, unit)
        moved = [a[0] for a in after if a not in before] or [e[0] for e in before if e not in after]
        source = moved[0] if moved else (unit.input_paths() or [unit.unit_id])[0]
        detail = "changed (size or mtime) while the build read it; the next build reads it again"
        owner = next((i for i in unit.inputs for p in i.input_paths() if source == p or source.startswith(p + "/")),
                     unit.inputs[0])  # fmt: skip
        reject = Reject(source, RejectReason.INPUT_CHANGED, detail, getattr(owner, "session", None))
        write_unit_reject(data, unit, fp, cfg, reject, ctx.attempts.get(unit.unit_id, 1))
        log.warning("unit %s: rejected as input_changed (%s)", unit.unit_id, source)
        summary = cached_summary(data, unit.unit_id, fp)
    assert summary is not None  # written just above, with this fingerprint
    return fp, summary


def _prune(data: Path, keep: set[str]) -> None:
    import shutil

    if isinstance(data, Location):  # object storage: results of units no longer planned; no tmp there
        fs = storage.filesystem(data.scheme)
        for name in storage.listdir(units_dir(data)):
            if name not in keep:
                storage._remote(data, lambda n=name: fs.rm(f"{units_dir(data).path}/{n}", recursive=True))
        return
    folder = units_dir(data)
    for d in folder.iterdir() if folder.exists() else []:
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(data / WORK / "tmp", ignore_errors=True)


def _log(data: Path, engine: EngineConfig, result: BuildResult) -> None:
    """One JSON line per build: the counters that prove what a rerun redid."""
    entry = {
        "retried_units": result.retried_units,
        "changed_units": result.changed_units,
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
    if isinstance(data, Location):  # no append on an object store: read, add the line, one PUT (under the lease)
        where = data / WORK / "builds.jsonl"
        try:
            old = storage.read_bytes(where)
        except FileNotFoundError:
            old = b""
        storage.put_atomic(where, old + (json.dumps(entry, sort_keys=True) + "\n").encode())
        return
    with open(data / WORK / "builds.jsonl", "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def load_summary(data: Path, unit_id: str) -> UnitSummary:
    return UnitSummary.from_json((units_dir(data) / unit_id / SUMMARY).read_text())


__all__ = ["build", "BuildConfig", "EngineConfig", "BuildResult", "asdict"]
