"""One build per DATA: an exclusive ``flock`` on ``DATA/_work/build.lock``, held from discovery to commit.

The lock file also says who holds it (host, pid, the process's start time and a build id), so that

- a second build fails at once with :class:`BuildLocked` (exit 2) naming the holder;
- a worker of a build whose driver is gone (killed, crashed) can tell, and writes nothing into DATA
  (:func:`build_alive`): a newer build id in the file, a dead driver process on this host, or, on another
  host, a heartbeat (the file's mtime, touched by the driver every second) older than :data:`LEASE_S`.

A lock left by a killed build needs no cleanup: the kernel releases a ``flock`` when its holder dies, and
the next build takes it over and rewrites the holder. ``flock`` needs DATA on a local filesystem or a
shared one that supports it (NFSv4, Lustre, CephFS, GPFS); on object storage a lease object taken with a
conditional PUT replaces it (``pipelines/lock_remote.py``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from schemas.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "build.lock"
#: A driver on another host is taken for gone when its heartbeat is older than this (seconds).
LEASE_S = 30.0
_HEARTBEAT_S = 1.0


class BuildLocked(UserError):
    """Another build holds DATA's lock (exit 2): the message names its host, pid and start time."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a DATA's build lock."""

    build_id: str
    host: str
    pid: int
    pid_start: str  # the process's start time (/proc/PID/stat field 22): tells a reused pid apart
    since: float  # time.time() when the lock was taken

    def describe(self) -> str:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, build {self.build_id}, since {at}"


def lock_path(data: Path | str) -> Path:
    return Path(data) / "_work" / LOCK_FILE


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _pid_alive(pid: int, start: str) -> bool:
    if Path("/proc/self/stat").exists():
        return _proc_start(pid) == start
    try:  # no procfs: signal 0 checks existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(data: Path | str) -> Holder | None:
    """The holder written into the lock file, or None when there is none (or it is unreadable)."""
    return holder_in(lock_path(data))


def build_alive(data: Path | str, build_id: str) -> bool:
    """May the build ``build_id`` still write into DATA? False once its driver is gone or another build took over.

    Cheap enough to call before every write a worker makes (one small read, one /proc read or stat).
    DATA on object storage: ``pipelines.lock_remote.build_alive`` (the lease object).
    """
    if getattr(data, "scheme", "") or (isinstance(data, str) and "://" in data and not data.startswith("file://")):
        from pipelines import lock_remote, storage

        return lock_remote.build_alive(storage.location(data), build_id)
    path = lock_path(data)
    holder = read_holder(data)
    if holder is None or holder.build_id != build_id:
        return False
    if holder.host == socket.gethostname():
        return _pid_alive(holder.pid, holder.pid_start)
    try:
        return time.time() - path.stat().st_mtime < LEASE_S
    except OSError:
        return False


def take_holder_lock(path: Path, holder_id: str, refused, what: str, describe=Holder.describe) -> int:
    """Take an exclusive ``flock`` on ``path`` and write this process's ``Holder`` into it; return the fd.

    The one mechanism behind ``BuildLock`` and training's ``EmbLock``: when another process holds the flock,
    ``refused(holder or None)`` is raised (the holder's name stays in the file: no ``O_TRUNC``); a holder
    left in the file by a process that died (the kernel released its flock) is taken over and logged as
    "took over the ``what`` that died (``describe(holder)``)". Release with ``release_holder_lock``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise refused(holder_in(path)) from None
    previous = holder_in(path)
    if previous is not None:
        # a finished holder empties the file; a holder left in it died, and the kernel released its flock
        log.warning("took over the %s that died (%s)", what, describe(previous))
    pid = os.getpid()
    me = Holder(holder_id, socket.gethostname(), pid, _proc_start(pid) or "", time.time())
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(asdict(me), sort_keys=True) + "\n").encode(), 0)
    os.fsync(fd)
    return fd


def release_holder_lock(fd: int) -> None:
    """Empty the lock file (no holder: nobody's workers may write) and release the flock."""
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def holder_in(path: Path) -> Holder | None:
    """The holder written into a lock file, or None when there is none (or it is unreadable)."""
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class BuildLock:
    """Context manager: take DATA's build lock or raise :class:`BuildLocked`; keep its heartbeat while held."""

    def __init__(self, data: Path | str):
        self.path = lock_path(data)
        self.build_id = uuid.uuid4().hex[:12]
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> BuildLock:
        def refused(holder: Holder | None) -> BuildLocked:
            who = holder.describe() if holder else "holder unknown"
            return BuildLocked(f"{self.path.parents[1]} is being built by another build ({who}); "
                               f"wait for it to finish or stop it")  # fmt: skip

        # Its workers see the new build id and stop writing when a dead build's lock is taken over.
        fd = take_holder_lock(self.path, self.build_id, refused, "build lock of a build")
        self._fd = fd
        self._beat = threading.Thread(target=self._heartbeat, name="bindset-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # DATA unmounted under us: workers elsewhere will stop on the stale lease
                log.warning("cannot refresh the build lock's heartbeat at %s", self.path)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._fd is not None:
            # an empty file: a worker still running for this build sees no holder and writes nothing
            release_holder_lock(self._fd)
            self._fd = None


@contextmanager
def manifest_lock(data: Path | str) -> Iterator[None]:
    """Hold DATA's manifest lock (blocking): a commit holds it from removing manifest.json to writing it again,
    and ``validate`` while it checks that the manifest is still the one it validated and writes its verdict.
    So a verdict is never written into a half-committed dataset, nor into the next version's manifest."""
    path = Path(data) / "_work" / "manifest.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
