"""Running one unit of work safely: fingerprints, a watchdog child process, atomic unit commits.

Native decoders can segfault or hang on hostile input. Each unit therefore runs in a child process
forked from a preloaded server; the child announces every file it opens, and the parent kills it when
one file takes longer than ``decode_timeout_s``. A crash or a timeout becomes a reject record for the
file, never a failed build. Messages cross the pipe as JSON bytes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import stat
import time
import traceback
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipelines.storage import replace_dir
from schemas.reasons import RejectReason
from transforms.config import BuildConfig
from transforms.layouts import MediaUnit, StillUnit, unit_from_dict, unit_to_dict
from transforms.paths import walk
from transforms.records import SUMMARY, Reject, UnitSink, UnitSummary

WORK = "_work"
_CODE_DIRS = ("transforms", "schemas", "pipelines")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the code that shapes outputs: a change invalidates cached units."""
    h = hashlib.sha256()
    top = Path(__file__).resolve().parents[1]
    for d in _CODE_DIRS:
        for p in sorted((top / d).glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _stat_entries(root: Path, rel: str) -> list:
    # Never raises: a path that loops, cannot be searched or is gone has size None, and a folder is listed
    # by transforms/paths.walk, which neither follows symlinked folders nor stops at an unreadable one.
    try:
        st = os.stat(root / rel)
    except (OSError, ValueError):
        return [[rel, None, None]]
    if not stat.S_ISDIR(st.st_mode):
        return [[rel, st.st_size, st.st_mtime_ns]]
    listing = walk(root, rel, skip_hidden=False)
    found = [[e.rel, e.size, e.mtime_ns] for e in listing.entries] + [[p.source, None, None] for p in listing.problems]
    return sorted(found, key=lambda e: e[0])


def fingerprint(root: Path, unit: MediaUnit | StillUnit, cfg: BuildConfig) -> str:
    """What a unit's outputs depend on: its description, its files (path, size, mtime), config, code.

    Size and mtime rather than content hashes: a nightly build over a large archive must not reread
    every byte to find out that nothing changed.
    """
    stats = [e for rel in unit.input_paths() for e in _stat_entries(root, rel)]
    blob = json.dumps(
        {"unit": unit_to_dict(unit), "files": stats, "config": cfg.to_dict(), "code": code_version()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class WorkContext:
    """Everything a worker needs, as plain JSON-able values."""

    raw: str
    data: str
    config: dict

    def to_json(self) -> str:
        return json.dumps({"raw": self.raw, "data": self.data, "config": self.config}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkContext:
        return cls(**json.loads(text))


def units_dir(data: Path) -> Path:
    return data / WORK / "units"


def cached_summary(data: Path, unit_id: str, fp: str) -> UnitSummary | None:
    path = units_dir(data) / unit_id / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = UnitSummary.from_json(path.read_text())
    except (ValueError, TypeError):
        return None
    return summary if summary.fingerprint == fp else None


# ------------------------------------------------------------------------------------------ child side


#: Fault injection, for tests of the watchdog: ``segv:SUBSTRING`` or ``hang:SUBSTRING`` (comma-separated for
#: several). The child then crashes with SIGSEGV, or hangs, right after announcing a file whose path contains
#: SUBSTRING, as a native decoder may on hostile input. Read by the parent in ``run_unit`` and handed to the
#: child, because forkserver children inherit the server's environment, not the caller's current one.
FAULT_ENV = "BINDSET_FAULT_INJECT"


def _fault_for(spec: str, path: str) -> str | None:
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, needle = item.partition(":")
        if kind in ("segv", "hang") and needle and needle in path:
            return kind
    return None


def _child_main(conn, ctx_json: str, unit_json: str, tmp: str, fp: str, fault: str = "") -> None:
    import torch

    from transforms.unit import process_unit

    # Float reductions in resampling and fbank add up in an order that depends on the thread count;
    # one thread makes mel.npy byte-identical whatever engine, machine or core count ran the unit.
    torch.set_num_threads(1)

    ctx = WorkContext.from_json(ctx_json)
    cfg = BuildConfig.from_dict(ctx.config)
    unit = unit_from_dict(json.loads(unit_json))
    raw = Path(ctx.raw)

    def heartbeat(path: str) -> None:
        # a crash or timeout reject names the file relative to RAW, like every other reject
        p = Path(path)
        path = p.relative_to(raw).as_posix() if p.is_relative_to(raw) else path
        conn.send_bytes(json.dumps({"file": path}).encode())
        kind = _fault_for(fault, path) if fault else None
        if kind == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        while kind == "hang":
            time.sleep(3600)

    try:
        summary = process_unit(raw, unit, cfg, UnitSink(Path(tmp), unit.unit_id, fp, cfg), heartbeat)
        conn.send_bytes(json.dumps({"done": summary.samples}).encode())
    except BaseException:  # noqa: BLE001 - reported to the parent, which records it as a reject
        conn.send_bytes(json.dumps({"error": traceback.format_exc(limit=8)}).encode())
    finally:
        conn.close()


@lru_cache(maxsize=1)
def _context() -> mp.context.BaseContext:
    # forkserver: children fork from a clean server that already imported the heavy modules, so a unit
    # starts in milliseconds and never inherits an engine's threads.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["transforms.unit", "pyarrow.parquet", "pandas"])
    return ctx


@dataclass
class _Failure:
    reason: RejectReason
    source: str
    detail: str


def _watch(proc, conn, timeout_s: float, first_source: str) -> _Failure | None:
    current, started = first_source, time.monotonic()
    while True:
        if conn.poll(0.2):
            try:
                msg = json.loads(conn.recv_bytes())
            except (EOFError, OSError):
                msg = None
            if msg is None:
                proc.join(5)
                break
            if "file" in msg:
                current, started = msg["file"], time.monotonic()
            elif "done" in msg:
                proc.join()
                return None
            elif "error" in msg:
                proc.join()
                return _Failure(RejectReason.INTERNAL_ERROR, current, msg["error"].strip().splitlines()[-1][:2000])
        elif not proc.is_alive():
            break
        if time.monotonic() - started > timeout_s:
            proc.kill()
            proc.join()
            return _Failure(RejectReason.DECODE_TIMEOUT, current, f"no progress within {timeout_s:g} s; decoder killed")
    code = proc.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return _Failure(RejectReason.DECODER_CRASH, current, f"worker died with {name} while reading this file")
    return _Failure(RejectReason.DECODER_CRASH, current, f"worker exited with code {code} while reading this file")


def run_unit(ctx: WorkContext, unit_json: str) -> dict:
    """Process one unit (unless its committed result is current) and commit its folder atomically."""
    data = Path(ctx.data)
    cfg = BuildConfig.from_dict(ctx.config)
    unit = unit_from_dict(json.loads(unit_json))
    fp = fingerprint(Path(ctx.raw), unit, cfg)
    done = cached_summary(data, unit.unit_id, fp)
    if done is not None:
        return {"unit_id": unit.unit_id, "processed": False}
    tmp = data / WORK / "tmp" / f"{unit.unit_id}.{uuid.uuid4().hex[:8]}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    parent_conn, child_conn = _context().Pipe(duplex=False)
    fault = os.environ.get(FAULT_ENV, "")
    proc = _context().Process(target=_child_main, args=(child_conn, ctx.to_json(), unit_json, str(tmp), fp, fault))
    proc.start()
    child_conn.close()
    first = unit.input_paths()[0] if unit.input_paths() else unit.unit_id
    failure = _watch(proc, parent_conn, cfg.decode_timeout_s, first)
    parent_conn.close()
    if failure is not None:
        # keep nothing the child half-wrote; the unit's outcome is this one reject
        shutil.rmtree(tmp, ignore_errors=True)
        sink = UnitSink(tmp, unit.unit_id, fp, cfg)
        sink.reject(Reject(failure.source, failure.reason, failure.detail, getattr(unit, "session", None)))
        sink.summary.failed = True
        sink.close()
    replace_dir(tmp, units_dir(data) / unit.unit_id)
    return {"unit_id": unit.unit_id, "processed": True}


def run_unit_json(ctx_json: str, unit_json: str) -> dict:
    """Engine entry point: everything in and out is JSON text."""
    return run_unit(WorkContext.from_json(ctx_json), unit_json)
