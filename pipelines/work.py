"""Running one unit of work safely: fingerprints, a long-lived decode worker, atomic unit commits.

A unit of work (``transforms.grouping.WorkUnit``) holds whole inputs. Native decoders can segfault or hang
on hostile input, so inputs are decoded in a child process (``DecodeWorker``: one per engine worker, forked
from a preloaded server and reused input after input), while this process writes the unit's tar parts and
tables from what the child sends (JSON headers and raw member bytes: no pickle). The child announces every
file it opens (with its size, and its media duration once probed), and the parent kills it when a file
outlives its decode budget (``decode_budget``: ``decode_timeout_s`` at least, more for long or large files,
never the time earlier files took). A crash or a timeout becomes a reject record for the file, the samples
already sent of that input are withdrawn, the child is started afresh and the input's unit-mates go on.

Such rejects are *transient* (``schemas.reasons.TRANSIENT``): the unit records its attempt number, and
the next build runs it again, up to ``MAX_ATTEMPTS`` times (``bindset build --retry-failed``: at once).

A worker writes into DATA only while the build that started it holds DATA's lock
(``pipelines.lock.build_alive``): it checks before it creates its temporary folder, every watchdog tick,
and before its final rename, so the workers of a killed driver stop writing within a fraction of a second.
Workers log each unit's start, end, seconds and rejects by reason (logger ``pipelines.work``).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from pipelines import storage
from pipelines.lock import build_alive
from pipelines.storage import Location, replace_dir
from schemas.reasons import TRANSIENT, RejectReason
from transforms.config import BuildConfig
from transforms.grouping import WorkUnit
from transforms.layouts import MediaUnit, StillUnit, unit_from_dict, unit_to_dict
from transforms.paths import walk
from transforms.records import SUMMARY, Reject, UnitSink, UnitSummary

Input = MediaUnit | StillUnit  # one recording or chunk of still pairs (transforms/layouts.py)
Unit = WorkUnit | MediaUnit | StillUnit  # a unit of work, or an input taken as a unit of its own

log = logging.getLogger(__name__)

WORK = "_work"
_CODE_DIRS = ("transforms", "schemas", "pipelines")
#: A unit whose result holds a transient reject is rerun by later builds until it has run this many times.
MAX_ATTEMPTS = 3
ATTEMPT_FILE = "attempt.json"  # beside summary.json: {"attempt": n}, how many runs this result took

# Decode budget per file (decode_budget). FFmpeg decodes the 320p-1080p streams bindset reads at 10-100x
# real time and a depth PNG at ~50 MB/s on one core, so these allow a machine ~40x slower than that
# before a file times out; a hung decoder still dies after decode_timeout_s (the floor) for small files.
DECODE_S_PER_MEDIA_S = 4.0
DECODE_S_PER_MB = 2.0
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


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


#: Distributions whose versions decide output bytes: codecs (PyAV and its FFmpeg), image codecs (OpenCV,
#: Pillow and their libjpeg/libpng), the arithmetic of mel and resampling (numpy, torch, torchaudio) and
#: the Parquet writer.
_OUTPUT_LIBRARIES = ("av", "opencv-python-headless", "opencv-python", "numpy", "torch", "torchaudio", "pillow",
                     "pyarrow")  # fmt: skip


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of the libraries that produce output bytes, and of the native libraries inside them.

    Part of every unit's fingerprint: after an upgrade, cached units are rebuilt rather than mixed with
    fresh ones whose bytes differ. Package versions come from installed metadata (no import); the FFmpeg
    libraries from ``av.library_versions``, the JPEG/PNG codecs from OpenCV's build information and Pillow.
    """
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in _OUTPUT_LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import av

        out.update({f"ffmpeg.{k}": ".".join(map(str, v)) for k, v in sorted(av.library_versions.items())})
    except ImportError:
        pass
    try:
        import cv2

        # e.g. "    JPEG:                        libjpeg-turbo (ver 3.0.3-70)"; the "Media I/O:" block
        wanted = ("JPEG:", "PNG:", "ZLib:", "FFMPEG:")
        for line in cv2.getBuildInformation().splitlines():
            item = line.strip()
            if item.startswith(wanted):
                name, _, value = item.partition(":")
                out[f"cv2.{name.lower()}"] = " ".join(value.split())
    except ImportError:
        pass
    try:
        from PIL import features

        for name in ("jpg", "zlib", "libjpeg_turbo"):
            out[f"pillow.{name}"] = str(features.version(name))
    except ImportError:
        pass
    return out


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


def path_stats(root: Path, rel: str) -> list:
    """[RAW-relative path, size, mtime_ns] of a file, or of each file below a folder (size None: missing)."""
    return _stat_entries(root, rel)


def input_stats(root: Path | Location, unit: Unit) -> list:
    """[RAW-relative path, size, mtime_ns] of every file a unit (or an input) reads (size None: missing).

    RAW on object storage (a ``Location``): [key, size, "etag:..."] of its objects, asked for these keys only
    (``pipelines.raw_source.RemoteRaw.stats``), the entries the driver's listing gives for the same objects.
    """
    if _remote(root):
        from pipelines.raw_source import RemoteRaw

        return RemoteRaw(root).stats(unit.input_paths())
    return [e for rel in unit.input_paths() for e in _stat_entries(root, rel)]


def raw_at(text: str | Path | Location) -> Path | Location:
    """RAW as the workers take it: a ``Path`` for a local folder, a ``Location`` for an object-store URL."""
    if isinstance(text, Location):
        return text if text.scheme else Path(text.path)
    return storage.location(text) if storage.is_url(text) else Path(text)


def unit_dict(unit: Unit) -> dict:
    """A unit of work's JSON form; an input alone is the unit of that input."""
    return (unit if isinstance(unit, WorkUnit) else WorkUnit(unit.unit_id, (unit,))).to_dict()


def fingerprint(root: Path, unit: Unit, cfg: BuildConfig, stats: list | None = None) -> str:
    """What a unit's outputs depend on: its description, its files (path, size, mtime), config, code and the
    versions of the libraries that write its bytes (``library_versions``).

    Size and mtime rather than content hashes: a nightly build over a large archive must not reread
    every byte to find out that nothing changed.
    """
    stats = input_stats(root, unit) if stats is None else stats
    blob = json.dumps(
        {"unit": unit_dict(unit), "files": stats, "config": cfg.to_dict(), "code": code_version(),
         "libraries": library_versions()},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class WorkContext:
    """Everything a worker needs, as plain JSON-able values."""

    raw: str
    data: str
    config: dict
    build_id: str = ""  # the build that owns DATA's lock; "" = no lock (a unit run outside a build)
    attempts: dict[str, int] = field(default_factory=dict)  # unit_id -> the attempt this build makes (default 1)
    # FFmpeg threads per video decoder (pipelines/build.py ``decode_threads``); 0 = FFmpeg's default (one per
    # core). Not part of any fingerprint: stored frames do not depend on it (a damaged video, whose frames
    # would, is decoded with one thread: transforms/media.py ``DamagedUnderThreads``).
    decode_threads: int = 0
    # units that decode with FFmpeg's default threads whatever decode_threads says (build.lone_units)
    decode_alone: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkContext:
        return cls(**json.loads(text))


def units_dir(data: Path | Location) -> Path | Location:
    return data / WORK / "units"


def data_at(text: str | Path | Location) -> Path | Location:
    """DATA as the build's functions take it: a ``Path`` for a local folder, a ``Location`` for an object store."""
    if isinstance(text, Location):
        return text if text.scheme else Path(text.path)
    return storage.location(text) if storage.is_url(text) else Path(text)


def _remote(data: Path | Location) -> bool:
    return isinstance(data, Location) and bool(data.scheme)


def cached_summary(data: Path | Location, unit_id: str, fp: str) -> UnitSummary | None:
    if _remote(data):  # object storage: summary.json is uploaded last, so its presence means the unit is done
        try:
            text = storage.read_text(units_dir(data) / unit_id / SUMMARY)
        except FileNotFoundError:
            return None
        try:
            summary = UnitSummary.from_json(text)
        except (ValueError, TypeError):
            return None
        return summary if summary.fingerprint == fp else None
    path = units_dir(data) / unit_id / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = UnitSummary.from_json(path.read_text())
    except (ValueError, TypeError):
        return None
    return summary if summary.fingerprint == fp else None


def attempt_of(data: Path, unit_id: str) -> int:
    """How many runs the committed result of a unit took (1 for results from before attempts were counted)."""
    if _remote(data):
        try:
            return int(json.loads(storage.read_bytes(units_dir(data) / unit_id / ATTEMPT_FILE))["attempt"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 1
    try:
        return int(json.loads((units_dir(data) / unit_id / ATTEMPT_FILE).read_text())["attempt"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def transient_reasons(summary: UnitSummary) -> list[str]:
    """The transient reject reasons in a unit's result (empty: its outcome is final)."""
    return sorted(r for r in summary.reasons if r in TRANSIENT)


def decode_budget(floor_s: float, size_bytes: int | None, duration_s: float | None) -> float:
    """Seconds one file may take to decode: ``max(floor_s, 4 s per media second + 2 s per MB)``.

    A function of the file alone, so whether a file times out does not depend on what ran before it.
    ``floor_s`` is BuildConfig.decode_timeout_s; the rates are DECODE_S_PER_MEDIA_S and DECODE_S_PER_MB.
    """
    est = DECODE_S_PER_MEDIA_S * (duration_s or 0.0) + DECODE_S_PER_MB * (size_bytes or 0) / 1e6
    return max(floor_s, est)


# ------------------------------------------------------------------------------------------ child side


#: Fault injection, for tests of the watchdog: ``segv:SUBSTRING`` or ``hang:SUBSTRING`` (comma-separated for
#: several). The decode worker then crashes with SIGSEGV, or hangs, right after announcing a file whose path
#: contains SUBSTRING, as a native decoder may on hostile input. Read by the parent in ``run_unit`` and handed
#: to the worker with each input, because forkserver children inherit the server's environment, not the
#: caller's current one.
FAULT_ENV = "BINDSET_FAULT_INJECT"


def _fault_for(spec: str, path: str) -> str | None:
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, needle = item.partition(":")
        if kind in ("segv", "hang") and needle and needle in path:
            return kind
    return None


def _media_duration(path: Path) -> float | None:
    """Seconds of media in a container, from its header (None for images and unreadable files)."""
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return None
    import av

    try:
        with av.open(str(path)) as c:
            return c.duration / av.time_base if c.duration else None
    except (av.error.FFmpegError, OSError, ValueError):
        return None  # the decode that follows reports the problem with its own reason


# Messages between the unit's writer (parent) and its decode worker (child) are frames of
# ``4-byte header length | JSON header | payload``; a sample's payload is its members' bytes, back to back.
def _frame(head: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(head, default=_plain).encode()
    return len(text).to_bytes(4, "big") + text + payload


def _unframe(buf: bytes) -> tuple[dict, memoryview]:
    n = int.from_bytes(buf[:4], "big")
    return json.loads(buf[4 : 4 + n]), memoryview(buf)[4 + n :]


def _plain(obj):
    # numpy scalars in index rows (frame figures): their exact Python value
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


class _PipeSink:
    """The decode worker's side of a unit's sink: every call becomes one frame, in call order.

    ``transforms/unit.py`` calls it from its decoding and its writing thread, hence the lock (a frame must
    not interleave with another)."""

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()

    def _send(self, data: bytes) -> None:
        with self.lock:
            self.conn.send_bytes(data)

    def planned(self, n: int) -> None:
        self._send(_frame({"planned": n}))

    def reject(self, r: Reject) -> None:
        self._send(_frame({"reject": r.row()}))

    def sync(self, rows: list[dict]) -> None:
        self._send(_frame({"sync": rows}))

    def begin_input(self) -> None:
        """The parent marks the sink before it sends an input (``run_unit``): nothing to send."""

    def withdraw_input(self) -> None:
        self._send(_frame({"withdraw": True}))

    def sample(self, split: str, key: str, members: dict[str, bytes], row: dict) -> None:
        names = list(members)
        head = {"sample": {"split": split, "key": key, "row": row, "names": names,
                           "lens": [len(members[n]) for n in names]}}  # fmt: skip
        self._send(_frame(head, b"".join(members[n] for n in names)))


def _guard(state: dict, watchdog_pid: int) -> None:
    """Child-side guard: stop at once when the watchdog, or the build of the input at hand, is gone."""
    while True:
        time.sleep(0.25)
        try:
            os.kill(watchdog_pid, 0)
            task = state.get("ctx")
            # DATA on object storage: the parent watches the lease (a request per check) and kills this
            # process when its build is gone; the child checks only that the parent lives
            alive = (task is None or not task.build_id or storage.is_url(task.data)
                     or build_alive(task.data, task.build_id))  # fmt: skip
        except ProcessLookupError:
            alive = False
        if not alive:
            os._exit(3)


def _decoder_main(conn, watchdog_pid: int) -> None:
    """A long-lived decode worker: takes inputs one at a time from ``conn`` and sends back their results."""
    import torch

    from transforms import media
    from transforms.unit import process_input

    # Float reductions in resampling and fbank add up in an order that depends on the thread count;
    # one thread makes mel.npy byte-identical whatever engine, machine or core count ran the unit.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the unit's writer decides what an interrupt means (it stops and
    # kills this process); a KeyboardInterrupt here would come back as the input's error, a false reject
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    state: dict = {}
    threading.Thread(target=_guard, args=(state, watchdog_pid), daemon=True).start()
    sink = _PipeSink(conn)
    while True:
        try:
            task = json.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the unit's writer is gone
            os._exit(0)
        ctx = WorkContext.from_json(task["ctx"])
        cfg = BuildConfig.from_dict(ctx.config)
        media.set_decode_threads(ctx.decode_threads)
        inp = unit_from_dict(task["input"])
        raw, fault = Path(ctx.raw), task.get("fault", "")
        state["ctx"] = ctx

        # a file is announced again when its decoding starts (after the probe, and for a second pass): its
        # duration, for the parent's decode budget, is the one its probe read (another open of the container
        # costs ~1-2 ms, as much as a 6 s video's frames); only a file announced twice unprobed is opened
        durations: dict[tuple[str, int], float | None] = {}
        announced: set[tuple[str, int]] = set()

        def heartbeat(path: str, raw=raw, fault=fault, durations=durations, announced=announced) -> None:
            # a crash or timeout reject names the file relative to RAW, like every other reject
            p = Path(path)
            rel = p.relative_to(raw).as_posix() if p.is_relative_to(raw) else path
            try:
                st = p.stat()
                size = st.st_size
            except OSError:
                st, size = None, None
            sink._send(_frame({"file": rel, "bytes": size}))
            kind = _fault_for(fault, rel) if fault else None
            if kind and size and (rel, size) not in durations:
                # an injected fault stands for one in the decoding, which starts once the duration is known
                durations[(rel, size)] = _media_duration(p)
            if size and (rel, size) not in durations:
                # announced before its probe (which reads the duration) and again when its decoding starts:
                # the second time the probe's reading serves, without opening the file once more
                known, seconds = media.header_duration(p, st)
                if known:
                    durations[(rel, size)] = seconds
                elif (rel, size) in announced:
                    durations[(rel, size)] = _media_duration(p)  # not probed (an image, an unreadable file)
                announced.add((rel, size))
            duration = durations.get((rel, size)) if size else None
            if duration:
                sink._send(_frame({"file": rel, "bytes": size, "duration_s": duration}))
            if kind == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            while kind == "hang":
                time.sleep(3600)

        try:
            process_input(raw, inp, cfg, sink, heartbeat)
            sink._send(_frame({"done": True}))
        except BaseException:  # noqa: BLE001 - reported to the parent, which records it as a reject
            sink._send(_frame({"error": traceback.format_exc(limit=8)}))
        state["ctx"] = None


@lru_cache(maxsize=1)
def _context() -> mp.context.BaseContext:
    # forkserver: children fork from a clean server that already imported the heavy modules, so a decode
    # worker starts in milliseconds and never inherits an engine's threads.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["transforms.unit"])
    return ctx


def start_decode_server() -> None:
    """Start the forkserver the decode workers fork from, without waiting for it: it imports transforms.unit
    (torch, scipy: ~3 s) while this process goes on with other work, rather than when the first unit starts
    its decode worker. A no-op when it runs already."""
    from multiprocessing import forkserver

    _context()  # sets the preload
    forkserver.ensure_running()


# ------------------------------------------------------------------------------------------ parent side


@dataclass
class _Failure:
    reason: RejectReason
    source: str
    detail: str


class _Abandoned(Exception):
    """The build that launched this unit is gone: its worker stops and writes nothing more."""


class DecodeWorker:
    """One long-lived decode process per engine worker, reused by every input of every unit it runs.

    Isolation without a process per input: a decoder that segfaults or outlives its budget costs its
    input alone (a ``decoder_crash`` / ``decode_timeout`` reject; the samples it sent of that input are
    withdrawn from the unit's sink) and the process is started afresh for the next input.
    """

    #: seconds between two checks that the build still holds DATA's lock
    ALIVE_EVERY_S = 0.2

    def __init__(self) -> None:
        self.proc = None
        self.conn = None

    def _start(self) -> None:
        parent, child = _context().Pipe(duplex=True)
        self.proc = _context().Process(target=_decoder_main, args=(child, os.getpid()), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def run_input(self, ctx_json: str, inp: Input, sink: UnitSink, floor_s: float, extra_bytes: int,
                  alive: Callable[[], bool]) -> _Failure | None:  # fmt: skip
        """Decode one input into ``sink``; a crash, a timeout or an exception becomes the returned failure.

        The watchdog: each announced file gets ``decode_budget(floor, its bytes + extra_bytes, its
        duration)`` from its announcement (extended when the duration arrives); the deadline only moves
        later, so a file announced while another is still decoding (video + separate audio) never shortens
        the first one's time. ``extra_bytes``: the input's files read without an announcement (depth/thermal
        frames, IMU). Raises ``_Abandoned`` (after killing the decoder) when ``alive()`` turns false.
        """
        if self.proc is None or not self.proc.is_alive():
            self.stop()
            self._start()
        task = {"ctx": ctx_json, "input": unit_to_dict(inp), "fault": os.environ.get(FAULT_ENV, "")}
        self.conn.send_bytes(json.dumps(task).encode())
        current = inp.input_paths()[0] if inp.input_paths() else inp.unit_id
        budget = decode_budget(floor_s, extra_bytes, None)
        announced = checked = time.monotonic()
        deadline = announced + budget
        while True:
            if self.conn.poll(0.2):
                try:
                    head, body = _unframe(self.conn.recv_bytes())
                except (EOFError, OSError):
                    self.proc.join(5)
                    break
                if "sample" in head:
                    s = head["sample"]
                    members, at = {}, 0
                    for name, n in zip(s["names"], s["lens"], strict=True):
                        members[name] = bytes(body[at : at + n])
                        at += n
                    sink.sample(s["split"], s["key"], members, s["row"])
                elif "reject" in head:
                    row = head["reject"]
                    sink.reject(Reject(**{**row, "reason": RejectReason(row["reason"])}))
                elif "sync" in head:
                    sink.sync(head["sync"])
                elif "withdraw" in head:  # the input goes through a second pass (its clock check)
                    sink.withdraw_input()
                elif "planned" in head:
                    sink.planned(head["planned"])
                elif "file" in head:
                    if head["file"] != current or "duration_s" not in head:
                        current, announced = head["file"], time.monotonic()
                    budget = decode_budget(floor_s, (head.get("bytes") or 0) + extra_bytes, head.get("duration_s"))
                    deadline = max(deadline, announced + budget)
                elif "done" in head:
                    return None
                elif "error" in head:
                    return _Failure(RejectReason.INTERNAL_ERROR, current, head["error"].strip().splitlines()[-1][:2000])
            elif not self.proc.is_alive():
                break
            now = time.monotonic()
            if now - checked >= self.ALIVE_EVERY_S:
                checked = now
                if not alive():
                    self.stop()
                    raise _Abandoned
            if now > deadline:
                self.stop()
                detail = f"not decoded within its budget of {budget:g} s (decode_budget); decoder killed"
                return _Failure(RejectReason.DECODE_TIMEOUT, current, detail)
        code = self.proc.exitcode
        self.stop()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return _Failure(RejectReason.DECODER_CRASH, current, f"worker died with {name} while reading this file")
        return _Failure(RejectReason.DECODER_CRASH, current, f"worker exited with code {code} while reading this file")


_DECODERS = threading.local()


def _decoder() -> DecodeWorker:
    """This thread's decode worker (engine workers run many units one after another; the local engine runs
    one thread per worker in the driver, each with a decode worker of its own)."""
    worker = getattr(_DECODERS, "worker", None)
    if worker is None:
        worker = _DECODERS.worker = DecodeWorker()
        atexit.register(worker.stop)
    return worker


def set_thread_stop(event: threading.Event | None) -> None:
    """For the local engine's unit threads: once ``event`` is set (the build was interrupted), a unit running
    on this thread stops as one whose build is gone does: its decoder killed, nothing of it written."""
    _DECODERS.stop = event


def release_thread_decoder() -> None:
    """Stop this thread's decode worker, if it has one: a unit thread of the local engine that ends (its
    decode process would otherwise wait on its pipe until the interpreter exits)."""
    worker = getattr(_DECODERS, "worker", None)
    if worker is not None:
        _DECODERS.worker = None
        atexit.unregister(worker.stop)
        worker.stop()


def _extra_bytes(root: Path, inp: Input) -> int:
    """Bytes of a recording's side files (depth/thermal frames, IMU), read while its media files decode."""
    if not isinstance(inp, MediaUnit):
        return 0
    announced = {inp.video, inp.audio}
    return sum(e[1] or 0 for rel in inp.input_paths() if rel not in announced for e in _stat_entries(root, rel))


def write_unit_reject(data: Path, unit: Unit, fp: str, cfg: BuildConfig, reject: Reject,
                      attempt: int, tmp: Path | None = None) -> None:  # fmt: skip
    """Commit a unit whose whole outcome is one reject (an input that changed)."""

    def write(folder: Path) -> None:
        sink = UnitSink(folder, unit.unit_id, fp, cfg)
        sink.reject(reject)
        sink.summary.failed = True
        sink.close()
        (folder / ATTEMPT_FILE).write_text(json.dumps({"attempt": attempt}) + "\n")

    if _remote(data):
        tmp = _remote_tmp(unit.unit_id)
        try:
            write(tmp)
            upload_unit(tmp, units_dir(data) / unit.unit_id)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        return
    tmp = tmp or data / WORK / "tmp" / f"{unit.unit_id}.{uuid.uuid4().hex[:8]}"
    shutil.rmtree(tmp, ignore_errors=True)  # keep nothing half-written
    write(tmp)
    replace_dir(tmp, units_dir(data) / unit.unit_id)


def _remote_tmp(unit_id: str) -> Path:
    """A unit's staging folder when DATA is on object storage: under the system temp, never under DATA.
    The caller removes its parent (``shutil.rmtree(tmp.parent)``)."""
    return Path(tempfile.mkdtemp(prefix="bindset-unit-")) / unit_id


def upload_unit(tmp: Path, final: Location) -> None:
    """Publish a finished unit folder ``tmp`` at ``final`` on object storage, ``summary.json`` last.

    There is no rename of a folder on an object store; the unit is done when its ``summary.json`` is there
    (``cached_summary``). So the folder is overwritten as a whole, in this order: the old ``summary.json``
    goes first (from then on the unit reads as not done), then objects of an older result that the new one
    does not have (tar parts of other names), then the new files, and ``summary.json`` last with one PUT.
    A writer killed anywhere in between leaves a folder without a summary: the next build redoes the unit.
    This needs one writer per unit at a time, which the build lock and the local engine give (an engine that
    may run a task twice would need a fresh prefix per attempt, with the summary pointing at it).
    """
    names = sorted(p.name for p in tmp.iterdir())
    if SUMMARY not in names:
        raise ValueError(f"{tmp}: no {SUMMARY}; not a finished unit")
    storage.delete(final / SUMMARY)
    for old in storage.listdir(final):
        if old not in names:
            storage.delete(final / old)
    for name in names:
        if name != SUMMARY:
            storage.upload(tmp / name, final / name)
    storage.upload(tmp / SUMMARY, final / SUMMARY)


def run_unit(ctx: WorkContext, unit_json: str) -> dict:
    """Process one unit of work (unless its committed result is current) and commit its folder atomically.

    ``unit_json``: a ``WorkUnit``'s JSON, or one input's (``unit_to_dict``: a unit of that input alone).
    Its inputs run one after another in this process's decode worker (``DecodeWorker``); their samples
    share the unit's tar parts. An input whose decoder crashes, hangs or raises becomes one reject and its
    unit-mates go on; the unit is then ``failed`` (its reasons are transient: the next build runs it again).
    Returns ``{"unit_id", "processed": bool, "abandoned": bool}``; abandoned: the build that launched the
    unit was gone (``pipelines.lock.build_alive``), and nothing was written. A result is current when its
    fingerprint matches and it is not a transient failure from an earlier attempt than ``ctx.attempts``
    asks for (engines may run a task twice; the second run then finds the first one's result).
    """
    t0 = time.perf_counter()
    data, raw = data_at(ctx.data), raw_at(ctx.raw)
    remote = _remote(data)
    cfg = BuildConfig.from_dict(ctx.config)
    unit = WorkUnit.from_dict(json.loads(unit_json))
    if unit.unit_id in ctx.decode_alone:
        ctx = replace(ctx, decode_threads=0)
    attempt = ctx.attempts.get(unit.unit_id, 1)
    out = {"unit_id": unit.unit_id, "processed": False, "abandoned": False}

    stop = getattr(_DECODERS, "stop", None)  # the local engine's unit threads: set when the build is interrupted

    def alive() -> bool:
        if stop is not None and stop.is_set():
            return False
        return not ctx.build_id or build_alive(data, ctx.build_id)

    by_rel = None
    if _remote(raw):  # one round of concurrent HEADs: the fingerprint's stats and the objects to download
        from pipelines.raw_source import RemoteRaw

        by_rel = RemoteRaw(raw).stats_by_rel(unit.input_paths())
    fp = fingerprint(raw, unit, cfg, None if by_rel is None else [e for p in unit.input_paths() for e in by_rel[p]])
    done = cached_summary(data, unit.unit_id, fp)
    if done is not None and (not transient_reasons(done) or attempt_of(data, unit.unit_id) >= attempt):
        return out
    if not alive():
        log.warning("unit %s: not started, its build %s is gone", unit.unit_id, ctx.build_id)
        return dict(out, abandoned=True)
    log.info("unit %s: start (attempt %d, %d input(s))", unit.unit_id, attempt, len(unit.inputs))
    # DATA on object storage: built under the system temp, uploaded when finished (nothing in a local DATA)
    tmp = _remote_tmp(unit.unit_id) if remote else data / WORK / "tmp" / f"{unit.unit_id}.{uuid.uuid4().hex[:8]}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    sink = UnitSink(tmp, unit.unit_id, fp, cfg)
    decoder, ctx_json = _decoder(), ctx.to_json()
    failures = 0
    staged = None if by_rel is None else _Staging(raw, unit.inputs, by_rel)
    try:
        for i, inp in enumerate(unit.inputs):
            sink.begin_input()
            if staged is None:
                failure = decoder.run_input(ctx_json, inp, sink, cfg.decode_timeout_s, _extra_bytes(raw, inp), alive)
            else:  # RAW on object storage: the decoder reads a local copy of this input's files
                folder, failure = staged.take(i)
                if failure is None:
                    local_ctx = WorkContext(**{**asdict(ctx), "raw": str(folder)}).to_json()
                    failure = decoder.run_input(local_ctx, inp, sink, cfg.decode_timeout_s,
                                                _extra_bytes(folder, inp), alive)  # fmt: skip
                staged.done(i)
            if failure is not None:
                failures += 1
                sink.withdraw_input()  # what the decoder sent of this input goes; its unit-mates' stays
                sink.reject(Reject(failure.source, failure.reason, failure.detail, getattr(inp, "session", None)))
                sink.summary.failed = True
                log.warning("unit %s: input %s failed: %s on %s (%s)", unit.unit_id, inp.unit_id,
                            failure.reason.value, failure.source, failure.detail)  # fmt: skip
        if not alive():  # the last moment before the result becomes visible
            raise _Abandoned
        summary = sink.close()
    except _Abandoned:
        shutil.rmtree(tmp.parent if remote else tmp, ignore_errors=True)
        log.warning("unit %s: stopped, its build %s was interrupted or is gone (or the store cannot confirm it "
                    "holds the lock); nothing written", unit.unit_id, ctx.build_id)  # fmt: skip
        return dict(out, abandoned=True)
    except BaseException:
        shutil.rmtree(tmp.parent if remote else tmp, ignore_errors=True)
        raise
    finally:
        if staged is not None:
            staged.close()
    (tmp / ATTEMPT_FILE).write_text(json.dumps({"attempt": attempt}) + "\n")
    if remote:
        try:
            upload_unit(tmp, units_dir(data) / unit.unit_id)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
    else:
        replace_dir(tmp, units_dir(data) / unit.unit_id)
    log.info("unit %s: end in %.2f s, %d input(s) (%d failed), %d sample(s) of %d window(s), rejects by reason %s",
             unit.unit_id, time.perf_counter() - t0, len(unit.inputs), failures, summary.samples,
             summary.windows_planned, summary.reasons or "{}")  # fmt: skip
    return dict(out, processed=True)


class _Staging:
    """The inputs of a unit with RAW on object storage, each downloaded to a scratch folder of its own
    (``pipelines.raw_source``: why a local copy rather than a streamed file object) while the one before it
    decodes: at most two inputs' files on local disk per worker, each removed when its input is done."""

    def __init__(self, raw: Location, inputs: tuple[Input, ...], by_rel: dict[str, list]):
        from concurrent.futures import ThreadPoolExecutor

        from pipelines.raw_source import RemoteRaw

        self.raw, self.inputs, self.by_rel = RemoteRaw(raw), inputs, by_rel
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bindset-stage")
        self.futures: dict[int, object] = {}
        self.folders: dict[int, Path] = {}
        self._submit(0)

    def _submit(self, i: int) -> None:
        if i < len(self.inputs) and i not in self.futures:
            folder = Path(tempfile.mkdtemp(prefix="bindset-raw-"))
            self.folders[i] = folder
            self.futures[i] = self.pool.submit(self._fetch, self.inputs[i], folder)

    def _fetch(self, inp: Input, folder: Path) -> _Failure | None:
        from pipelines.raw_source import describe_failure

        try:
            # the objects the fingerprint describes: a rewrite since then shows in the build's re-check
            entries = [e for p in inp.input_paths() for e in self.by_rel[p]]
            failed = self.raw.stage(entries, folder)
        except Exception as exc:  # noqa: BLE001 - a failing endpoint costs this input, transiently
            failed = {(inp.input_paths() or [inp.unit_id])[0]: exc}
        if not failed:
            return None
        rel, exc = sorted(failed.items())[0]
        return _Failure(RejectReason.IO_ERROR, rel, describe_failure(self.raw.url(rel), exc))

    def take(self, i: int) -> tuple[Path, _Failure | None]:
        """Input ``i``'s local folder (RAW's layout) once downloaded, or the failure to read it; starts the next."""
        failure = self.futures[i].result()
        self._submit(i + 1)
        return self.folders[i], failure

    def done(self, i: int) -> None:
        shutil.rmtree(self.folders.pop(i), ignore_errors=True)

    def close(self) -> None:
        for fut in self.futures.values():
            fut.cancel()
        self.pool.shutdown(wait=True)
        for folder in self.folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        self.folders.clear()


def run_unit_json(ctx_json: str, unit_json: str) -> dict:
    """Engine entry point: everything in and out is JSON text."""
    return run_unit(WorkContext.from_json(ctx_json), unit_json)


def run_units_json(ctx_json: str, units_json: list[str]) -> list[dict]:
    """Engine entry point for a batch of units (one engine task): run them one after another."""
    return [run_unit_json(ctx_json, u) for u in units_json]
