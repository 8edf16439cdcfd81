"""DATA's build lock on object storage (issue 17): a lease object ``DATA/_work/build.lock``.

Object stores have no ``flock``. The lock is an object holding the holder's JSON (``pipelines.lock.Holder``),
taken with a conditional PUT and kept with a heartbeat:

- **take**: ``PutObject`` with ``If-None-Match: *`` creates it only when there is none (S3 conditional
  writes, AWS since 2024-08; moto's server checks the header too). A second build then reads the holder
  and fails at once with ``BuildLocked`` (exit 2) naming it.
- **heartbeat**: the driver PUTs the same bytes again every ``HEARTBEAT_S`` with ``If-Match: <its ETag>``,
  so the object's ``LastModified`` is the holder's last sign of life; a failed condition means another
  build took the lock over, and it stops refreshing.
- **stale takeover**: a lock whose holder is a dead process on this host, or whose ``LastModified`` is
  older than ``pipelines.lock.LEASE_S`` (another host), is replaced with ``If-Match: <the stale ETag>``:
  of two builds taking over at once, one wins and the other sees the winner's lock.
- **release**: the driver deletes the object (after checking its ETag is still its own).

A worker asks :func:`build_alive` (one HEAD, a GET only when the ETag changed) before it writes. The lease
compares the store's ``LastModified`` with this machine's clock: clocks must agree to well within ``LEASE_S``
(NTP gives milliseconds). Only ``s3://`` implements this (``If-Match``/``If-None-Match`` on PutObject).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict

from pipelines import storage
from pipelines.lock import LEASE_S, BuildLocked, Holder, _pid_alive, _proc_start
from pipelines.storage import Location

log = logging.getLogger(__name__)

LOCK_NAME = "_work/build.lock"
#: seconds between two refreshes of the lease object's LastModified (well under LEASE_S)
HEARTBEAT_S = 5.0
#: a worker's answer from build_alive is reused this long (each check is a request to the store)
_ALIVE_CACHE_S = 1.0


def lock_location(data: Location) -> Location:
    return data / LOCK_NAME


def _split(loc: Location) -> tuple[str, str]:
    bucket, _, key = loc.path.partition("/")
    return bucket, key


def _head(loc: Location) -> dict | None:
    """The lock object's ``ETag`` and ``LastModified`` (seconds since the epoch), or None when there is none."""
    try:
        info = storage.filesystem(loc.scheme).info(loc.path)
    except FileNotFoundError:
        return None
    when = info.get("LastModified")
    return {"etag": str(info.get("ETag", "")).strip('"'), "modified": when.timestamp() if when else 0.0}


def _read_holder(loc: Location) -> Holder | None:
    try:
        return Holder(**json.loads(storage.read_bytes(loc)))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _live(holder: Holder | None, modified: float) -> bool:
    """Whether a lock's holder may still be building: its process on this host, or a fresh lease elsewhere."""
    if holder is None:
        return time.time() - modified < LEASE_S  # unreadable: trust the lease alone
    if holder.host == socket.gethostname():
        return _pid_alive(holder.pid, holder.pid_start)
    return time.time() - modified < LEASE_S


_ALIVE: dict[tuple[str, str], tuple[float, bool]] = {}
_HOLDERS: dict[str, tuple[str, Holder | None]] = {}  # lock url -> (ETag, holder read at that ETag)
_CONFIRMED: dict[tuple[str, str], float] = {}  # (lock url, build id) -> when the store last said "alive"
_CACHE_LOCK = threading.Lock()


def build_alive(data: Location, build_id: str) -> bool:
    """May the build ``build_id`` still write into DATA on object storage? (``pipelines.lock.build_alive``)

    False when the lock object is gone, names another build, or its holder is dead (see ``_live``).
    Answers are reused for ``_ALIVE_CACHE_S``. A store that cannot be reached counts as "alive" for half a
    lease (``LEASE_S / 2``) after the store last said so, then as "not alive".
    """
    loc = lock_location(data)
    key, now = (str(loc), build_id), time.monotonic()
    with _CACHE_LOCK:
        hit = _ALIVE.get(key)
    if hit is not None and now - hit[0] < _ALIVE_CACHE_S:
        return hit[1]
    try:
        head = _head(loc)
        if head is None:
            alive = False
        else:
            with _CACHE_LOCK:
                known = _HOLDERS.get(str(loc))
            holder = known[1] if known and known[0] == head["etag"] else _read_holder(loc)
            with _CACHE_LOCK:
                _HOLDERS[str(loc)] = (head["etag"], holder)
            alive = holder is not None and holder.build_id == build_id and _live(holder, head["modified"])
        if alive:
            with _CACHE_LOCK:
                _CONFIRMED[key] = now
    except Exception:  # noqa: BLE001 - an unreachable store: see below
        # Nobody can take the lock over while the store is unreachable, and no other build's lease can
        # start before ours lapses (LEASE_S after our holder's last heartbeat): a worker whose build was
        # alive a moment ago goes on through a short outage (its writes retry) rather than throw its unit
        # away, and stops writing once half a lease has passed without an answer.
        with _CACHE_LOCK:
            confirmed = _CONFIRMED.get(key)
        since = time.monotonic() - confirmed if confirmed is not None else None  # the HEAD retried a while
        alive = since is not None and since < LEASE_S / 2
        verdict = f"going on: the build was alive {since:.1f} s ago" if alive else "this worker stops writing"
        log.warning("cannot read the build lock at %s; %s", loc, verdict)
    with _CACHE_LOCK:
        _ALIVE[key] = (now, alive)
    return alive


class ObjectBuildLock:
    """Context manager: take DATA's lease object or raise ``BuildLocked``; refresh it while held; delete it."""

    def __init__(self, data: Location):
        if data.scheme != "s3":
            raise storage.StorageError(f"{data}: building into {data.scheme}:// is not supported yet (s3:// only)")
        self.data = data
        self.loc = lock_location(data)
        self.build_id = uuid.uuid4().hex[:12]
        self.etag = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _put(self, body: bytes, **cond: str) -> str:
        bucket, key = _split(self.loc)
        fs = storage.filesystem(self.loc.scheme)
        out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **cond)
        return str(out.get("ETag", "")).strip('"')

    def __enter__(self) -> ObjectBuildLock:
        pid = os.getpid()
        me = Holder(self.build_id, socket.gethostname(), pid, _proc_start(pid) or "", time.time())
        self.body = (json.dumps(asdict(me), sort_keys=True) + "\n").encode()
        for _ in range(5):  # a few rounds: each lost race re-reads the lock that won
            try:
                self.etag = storage._remote(self.loc, lambda: self._put(self.body, IfNoneMatch="*"))
                break
            except FileExistsError:  # s3fs's translation of 412 Precondition Failed on If-None-Match
                pass
            head = _head(self.loc)
            if head is None:
                continue  # released meanwhile: try to create it again
            holder = _read_holder(self.loc)
            if _live(holder, head["modified"]):
                who = holder.describe() if holder else "holder unknown"
                raise BuildLocked(f"{self.data} is being built by another build ({who}); "
                                  f"wait for it to finish or stop it")  # fmt: skip
            try:
                self.etag = storage._remote(self.loc, lambda h=head: self._put(self.body, IfMatch=h["etag"]))
            except (OSError, FileNotFoundError):  # another build took it over (or released it) first
                continue
            log.warning("took over the build lock of a build that died (%s)",
                        holder.describe() if holder else "holder unknown")  # fmt: skip
            break
        else:
            raise BuildLocked(f"{self.data}: could not take the build lock (other builds keep taking it)")
        self._beat = threading.Thread(target=self._heartbeat, name="bindset-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.etag = self._put(self.body, IfMatch=self.etag)
            except FileNotFoundError:
                log.error("the build lock at %s is gone; this build's workers stop writing", self.loc)
                return
            except OSError:  # 412: another build took the lock over (our lease had lapsed)
                log.error("the build lock at %s was taken over by another build", self.loc)
                return
            except Exception:  # noqa: BLE001 - transient: the next beat tries again, the lease allows several
                log.warning("cannot refresh the build lock's heartbeat at %s", self.loc)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            head = _head(self.loc)
            if head is not None and head["etag"] == self.etag:
                storage.delete(self.loc)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not release the build lock at %s; it expires after %.0f s", self.loc, LEASE_S)
