"""DATA's build lock on object storage (issue 17): a lease object ``DATA/_work/build.lock``.

Object stores have no ``flock``. The lock is an object holding the holder's JSON (``pipelines.lock.Holder``),
taken with a conditional write and kept with a heartbeat (``storage.put_conditional``: on ``s3://``
``If-None-Match: *`` / ``If-Match: <ETag>``, S3 conditional writes, AWS since 2024-08, checked by moto's server
too; on ``gs://`` ``ifGenerationMatch=0`` / ``ifGenerationMatch=<generation>``, GCS request preconditions):

- **take**: a HEAD, then, when there is no lock, a create-only PUT. A second build reads the holder and fails
  at once with ``BuildLocked`` (exit 2) naming it.
- **heartbeat**: the driver PUTs the same bytes again every ``HEARTBEAT_S``, conditional on the version it
  wrote last, so the object's last-modified time is the holder's last sign of life; a failed condition (or a
  version it did not write) means another build took the lock over, and it stops refreshing.
- **stale takeover**: a lock whose holder is a dead process on this host, or whose last-modified time is older
  than ``pipelines.lock.LEASE_S`` (another host), is replaced conditional on the stale version: of two builds
  taking over at once, one wins and the other sees the winner's lock.
- **read-back**: after every take and renewal the lock is read again and must hold this build's id; a build
  that finds another id there stops with ``BuildLocked`` naming that holder (or, in the heartbeat, stops
  refreshing: its workers then stop writing). Where the store checks the preconditions (S3, GCS) this never
  fires; it is what keeps one writer on a store that ignores them (the GCS emulator of the tests), except for
  two takers whose PUT and read-back do not interleave: both then go on until the next heartbeat of the one
  overwritten, which sees the other id and stops; ``require_held`` (the driver, before its commit) stops it
  in any case before it commits.
- **release**: the driver deletes the object (after checking its version is still its own).

A worker asks :func:`build_alive` (one HEAD, a GET only when the version changed) before it writes. The lease
compares the store's last-modified time with this machine's clock: clocks must agree to well within ``LEASE_S``
(NTP gives milliseconds).
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
    """The lock object's version (S3 ETag / GCS generation) and last-modified time (seconds since the epoch),
    or None when there is none."""
    try:
        tag, modified = storage.version(loc)
    except FileNotFoundError:
        return None
    return {"version": tag, "modified": modified}


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
_HOLDERS: dict[str, tuple[str, Holder | None]] = {}  # lock url -> (version, holder read at that version)
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
            holder = known[1] if known and known[0] == head["version"] else _read_holder(loc)
            with _CACHE_LOCK:
                _HOLDERS[str(loc)] = (head["version"], holder)
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


def require_held(data: Location, build_id: str) -> None:
    """Raise ``BuildLocked`` naming the holder unless DATA's lease names ``build_id`` and its holder is alive.

    A fresh read (no cache): the driver's last check before its commit, so a build whose lease was taken over
    (its lease lapsed in an outage, or, on a store that ignores preconditions, a concurrent taker overwrote it)
    never commits over the build that holds the lock now.
    """
    _require_lease(lock_location(data), build_id, f"{data}: this build lost its build lock")


def _require_lease(loc: Location, build_id: str, lost: str) -> None:
    head = _head(loc)
    holder = _read_holder(loc) if head is not None else None
    if head is None or holder is None or holder.build_id != build_id or not _live(holder, head["modified"]):
        who = holder.describe() if holder else "no holder"
        raise BuildLocked(f"{lost} ({who}); nothing was committed, run it again")


class ObjectBuildLock:
    """Context manager: take DATA's lease object or raise ``BuildLocked``; refresh it while held; delete it.

    ``s3://`` and ``gs://`` (``storage.put_conditional``: If-None-Match / If-Match, ifGenerationMatch). Each take
    and each renewal is read back (see the module docstring).
    """

    def __init__(self, data: Location):
        if data.scheme not in ("s3", "gs"):
            raise storage.StorageError(f"{data}: a lease object needs s3:// or gs://")
        self.data = data
        self.loc = lock_location(data)
        self.build_id = uuid.uuid4().hex[:12]
        self.version = ""  # the lease object's version this build wrote last
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _refused(self, holder: Holder | None) -> BuildLocked:
        who = holder.describe() if holder else "holder unknown"
        return BuildLocked(f"{self.data} is being built by another build ({who}); wait for it to finish or stop it")

    def _read_back(self) -> Holder | None:
        """None when the lease object holds this build's id, else the holder that is there instead (``_GONE``
        when it is gone): on a store that checks preconditions this always holds; on one that ignores them, a concurrent
        taker that overwrote this build's PUT is seen here."""
        holder = _read_holder(self.loc)
        return None if holder is not None and holder.build_id == self.build_id else (holder or _GONE)

    def __enter__(self) -> ObjectBuildLock:
        pid = os.getpid()
        me = Holder(self.build_id, socket.gethostname(), pid, _proc_start(pid) or "", time.time())
        self.body = (json.dumps(asdict(me), sort_keys=True) + "\n").encode()
        for _ in range(5):  # a few rounds: each lost race re-reads the lock that won
            head = _head(self.loc)  # a HEAD first: a store that ignores If-None-Match would overwrite a live lease
            stale = None
            if head is None:
                try:
                    self.version = storage.put_conditional(self.loc, self.body, "")
                except FileExistsError:  # created by another build between the HEAD and the PUT
                    continue
            else:
                stale = _read_holder(self.loc)
                if stale is not None and stale.build_id == self.build_id:  # our own PUT, retried by the client
                    self.version = head["version"]
                elif _live(stale, head["modified"]):
                    raise self._refused(stale)
                else:
                    try:
                        self.version = storage.put_conditional(self.loc, self.body, head["version"])
                    except (FileExistsError, FileNotFoundError):  # another build took it over (or released it)
                        continue
            other = self._read_back()
            if other is _GONE:
                continue  # deleted right after our PUT (a takeover's release): try again
            if other is not None:  # a store that ignored the precondition: the later writer holds the lock
                raise self._refused(other)
            if stale is not None and stale.build_id != self.build_id:
                log.warning("took over the build lock of a build that died (%s)", stale.describe())
            break
        else:
            raise BuildLocked(f"{self.data}: could not take the build lock (other builds keep taking it)")
        self._beat = threading.Thread(target=self._heartbeat, name="bindset-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def require_held(self) -> None:
        """``require_held`` for this lease (any lease object, e.g. EMB's): raise ``BuildLocked`` unless it still
        names this holder and is live; the last check before a commit point is written."""
        _require_lease(self.loc, self.build_id, f"{self.data}: this run lost its lock")

    def _renew(self) -> bool:
        """One heartbeat: PUT the holder again, conditional on the version this build wrote last, and read it
        back. False (logged) when the lease is no longer this build's; transient errors propagate."""
        head = _head(self.loc)
        if head is None:
            log.error("the build lock at %s is gone; this build's workers stop writing", self.loc)
            return False
        if head["version"] != self.version:  # rewritten since our last PUT: by us (a retried PUT) or a taker
            holder = _read_holder(self.loc)
            if holder is None or holder.build_id != self.build_id:
                log.error("the build lock at %s was taken over by another build", self.loc)
                return False
            self.version = head["version"]
        try:
            self.version = storage.put_conditional(self.loc, self.body, self.version)
        except (FileExistsError, FileNotFoundError):  # 412 / 404: another build took the lock over (ours lapsed)
            head = _head(self.loc)
            if head is not None and self._read_back() is None:
                # still ours: the client retried a PUT that had landed (its answer lost), and the retry's
                # condition named the version that PUT replaced
                self.version = head["version"]
                return True
            log.error("the build lock at %s was taken over by another build", self.loc)
            return False
        if self._read_back() is not None:
            log.error("the build lock at %s was taken over by another build", self.loc)
            return False
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self._renew():
                    return
            except Exception:  # noqa: BLE001 - transient: the next beat tries again, the lease allows several
                log.warning("cannot refresh the build lock's heartbeat at %s", self.loc)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            head = _head(self.loc)
            if head is not None and head["version"] == self.version:
                storage.delete(self.loc)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not release the build lock at %s; it expires after %.0f s", self.loc, LEASE_S)


#: ``_read_back``'s answer when the lease object is gone
_GONE = Holder("", "", 0, "", 0.0)
