"""Readers' protocol: ``open_dataset(DATA)`` returns one committed version of a dataset, or raises.

    snap = bindset.open_dataset("DATA")          # manifest, index table, shards of one committed version
    with snap.open_shard(snap.index["shard"][0].as_py()) as f: ...   # raises DatasetChanged after a rebuild

A build commits in place (``pipelines/commit.py``): it removes ``manifest.json``, places the shards (hard
links, each by an atomic rename), writes ``index.parquet``, ``rejects.parquet``, ``shards/sizes.json`` and
writes ``manifest.json`` last. A reader that checks the manifest only before reading can therefore see a new
index beside old shards, or, after a session whose name sorts first was added, read shard names that now
hold other samples. The protocol closes both gaps:

1. read the manifest (none: wait for a commit in progress, up to ``wait_s``, else :class:`DatasetNotCommitted`
   at once: a commit holds DATA's manifest lock from removing the manifest to writing it again);
2. read the index and ``sizes.json`` and record each shard file's identity (device, inode, size, mtime);
3. read the manifest again: the same file (inode, mtime, bytes) means no commit ran in between, so 1-2 saw
   one version; otherwise start again.

Shard files are opened later, by name, through :meth:`Snapshot.open_shard`, which checks the opened file
against the recorded identity: a shard replaced by a later commit raises :class:`DatasetChanged` instead of
returning samples the index does not describe. (Unit parts are written once and linked, so an unchanged
shard keeps its inode across commits, and a reader is only interrupted when what it reads really changed.)

On object storage (``s3://``, ``gs://``; issue 17, in progress) the same steps run through the storage seam
(``pipelines/storage.py``): the manifest is the commit point, a shard's identity is its size and ETag, and
there is no commit lock to wait on (a missing manifest is "not committed" at once).

Issue 17's write-once commit (a new version folder per commit, then one atomic pointer switch) makes this
trivial: a snapshot is then just the folder the pointer names, and nothing in it ever changes.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.storage import Location
from schemas.errors import UserError

MANIFEST = "manifest.json"


class DatasetNotCommitted(UserError):
    """DATA holds no committed dataset (no build yet, or a commit did not finish within the wait)."""


class DatasetChanged(UserError):
    """A build committed a new version while this snapshot was being read: open the dataset again."""


@dataclass(frozen=True)
class ShardFile:
    """One shard of a snapshot: where it is, how many samples it holds, and which file it was."""

    name: str
    path: Path | Location  # a Location on object storage
    samples: int
    size: int  # bytes
    identity: tuple  # (st_dev, st_ino, st_size, st_mtime_ns); on object storage (size, ETag)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ShardPins:
    """The shard identities of a snapshot, small and picklable (for DataLoader worker processes)."""

    folder: Path | Location  # a Location on object storage
    identities: dict[str, tuple] = field(default_factory=dict)

    def check_path(self, name: str) -> Path | Location:
        """The shard's path, after checking that the file there is still the snapshot's (else DatasetChanged)."""
        path = self.folder / name
        if isinstance(path, Location):
            self._check_remote(name, path)
            return path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DatasetChanged(f"{path}: gone since the dataset was opened (a rebuild); open it again") from None
        self._check(name, st)
        return path

    def open(self, name: str) -> IO[bytes]:
        """Open a shard for reading; raises DatasetChanged if a later commit replaced it."""
        path = self.folder / name
        if isinstance(path, Location):  # range reads through the seam's block cache
            self._check_remote(name, path)
            return storage.open_read(path)
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            raise DatasetChanged(f"{path}: gone since the dataset was opened (a rebuild); open it again") from None
        try:
            self._check(name, os.fstat(f.fileno()))
        except BaseException:
            f.close()
            raise
        return f

    def _check_remote(self, name: str, path: Location) -> None:
        if name not in self.identities:
            raise KeyError(f"{name}: not a shard of this snapshot")
        try:
            ident = storage.stat(path).identity
        except FileNotFoundError:
            raise DatasetChanged(f"{path}: gone since the dataset was opened (a rebuild); open it again") from None
        if ident != self.identities[name]:
            raise DatasetChanged(f"{path}: replaced by a rebuild since the dataset was opened; open it again")

    def _check(self, name: str, st: os.stat_result) -> None:
        want = self.identities.get(name)
        if want is None:
            raise KeyError(f"{name}: not a shard of this snapshot")
        if _identity(st) != want:
            raise DatasetChanged(f"{self.folder / name}: replaced by a rebuild since the dataset was opened; "
                                 "open it again")  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """One committed version of DATA: its manifest, index (INDEX_SCHEMA), rejects and shards."""

    data: Path | Location  # a Location on object storage
    manifest: dict
    index: pa.Table
    shards: dict[str, ShardFile]
    pins: ShardPins
    manifest_id: tuple = ()  # the manifest file's (device, inode, mtime, bytes) when the snapshot was taken

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    def rejects(self) -> pa.Table:
        """rejects.parquet (read on demand; checked against the same manifest)."""
        if isinstance(self.data, Location):
            table = storage.read_parquet(self.data / "rejects.parquet")
            if _read_manifest_remote(self.data)[0] != self.manifest_id:
                raise DatasetChanged(f"{self.data}: rebuilt while its rejects were read; open it again")
            return table
        table = pq.read_table(self.data / "rejects.parquet")
        if _read_manifest(self.data)[0] != self.manifest_id:
            raise DatasetChanged(f"{self.data}: rebuilt while its rejects were read; open it again")
        return table

    def open_shard(self, name: str) -> IO[bytes]:
        """Open shard ``name`` for reading (``KEY.suffix`` tar members); DatasetChanged if a rebuild replaced it."""
        return self.pins.open(name)


def _read_manifest(data: Path) -> tuple[tuple, bytes] | tuple[None, None]:
    path = data / MANIFEST
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            blob = f.read()
    except FileNotFoundError:
        return None, None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, blob), blob


def _read_manifest_remote(data: Location) -> tuple[tuple, bytes] | tuple[None, None]:
    """The manifest object's (size, ETag, bytes) and bytes; (None, None) when there is none.

    A missing bucket or refused credentials raise ``storage.StorageError`` (one line naming the URL).
    """
    path = data / MANIFEST
    try:
        info = storage.stat(path)
        blob = storage.read_bytes(path)
    except FileNotFoundError:
        return None, None
    return (*info.identity, blob), blob


def _read_version_remote(data: Location, manifest_blob: bytes) -> Snapshot | None:
    """Step 2 on object storage: index, sizes and each shard's (size, ETag); None when they are not all there."""
    try:
        manifest = json.loads(manifest_blob)
        index = storage.read_parquet(data / "index.parquet")
        sizes = json.loads(storage.read_text(data / "shards" / "sizes.json"))
        shards = {}
        for name, samples in sorted(sizes.items()):
            info = storage.stat(data / "shards" / name)
            shards[name] = ShardFile(name, data / "shards" / name, int(samples), info.size, info.identity)
    except (FileNotFoundError, ValueError, pa.ArrowInvalid):
        return None
    return _consistent(data, manifest, index, shards)


def _not_committed(data: Path | Location) -> DatasetNotCommitted:
    return DatasetNotCommitted(f"{data / MANIFEST}: no committed dataset here (run `bindset build`, or wait "
                               "for the build in progress to commit)")  # fmt: skip


def _read_version(data: Path, manifest_blob: bytes) -> Snapshot | None:
    """Steps 2 of the protocol: index, sizes and shard identities; None when they are not all there."""
    try:
        manifest = json.loads(manifest_blob)
        index = pq.read_table(data / "index.parquet")
        sizes = json.loads((data / "shards" / "sizes.json").read_text())
        shards = {}
        for name, samples in sorted(sizes.items()):
            st = os.stat(data / "shards" / name)
            shards[name] = ShardFile(name, data / "shards" / name, int(samples), st.st_size, _identity(st))
    except (FileNotFoundError, ValueError, pa.ArrowInvalid):
        return None  # a commit is replacing these files right now
    return _consistent(data, manifest, index, shards)


def _consistent(data, manifest: dict, index: pa.Table, shards: dict) -> Snapshot | None:
    """The snapshot, when the index and the shards describe each other (rows = sizes.json's samples, every
    index row in a listed shard); None when they do not (a commit ran under the reader)."""
    if index.num_rows != sum(s.samples for s in shards.values()):
        return None
    if index.num_rows and not set(index.column("shard").to_pylist()) <= set(shards):
        return None
    pins = ShardPins(data / "shards", {n: s.identity for n, s in shards.items()})
    return Snapshot(data, manifest, index, shards, pins)


def _commit_in_progress(data: Path) -> bool:
    """Whether a build's commit holds DATA's manifest lock (``pipelines.lock.manifest_lock``) right now.

    Probed with a shared, non-blocking flock on the lock file, which conflicts only with the commit's (or
    ``validate``'s verdict write's) exclusive hold; creates nothing (no lock file: no build ever committed).
    """
    try:
        fd = os.open(Path(data) / "_work" / "manifest.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's shared lock, if it got one
    return False


def committed_manifest(data: Path | str, *, wait_s: float = 60.0) -> dict:
    """The committed ``manifest.json`` of DATA, waiting up to ``wait_s`` s while a commit is in progress.

    For the checkers (``validate``, ``report``): unlike :func:`open_dataset` it does not require the index and
    the shards to agree, because finding out whether they do is the quality gate's job. Raises
    :class:`DatasetNotCommitted` (exit 2) when DATA has no manifest and no commit is in progress, or when a
    commit does not finish within ``wait_s``. ``data`` may be an ``s3://``/``gs://`` URL or Location: there
    the manifest is the commit point and there is no lock to wait on.
    """
    loc = storage.location(data)
    if not loc.is_local:
        blob = _read_manifest_remote(loc)[1]
        if blob is None:
            raise _not_committed(loc)
        return json.loads(blob)
    data = Path(data)
    deadline = time.monotonic() + wait_s
    while True:
        if not _commit_in_progress(data):
            first, blob = _read_manifest(data)
            if first is not None:
                return json.loads(blob)
            if not _commit_in_progress(data):
                break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise DatasetNotCommitted(f"{data / MANIFEST}: no committed dataset here (run `bindset build`, or wait "
                              "for the build in progress to commit)")  # fmt: skip


def open_dataset(data: Path | str, *, wait_s: float = 60.0) -> Snapshot:
    """A consistent snapshot of the committed dataset in DATA.

    Waits up to ``wait_s`` seconds while a commit is in progress (no manifest, or files changing under
    the read). Raises :class:`DatasetNotCommitted` (a UserError, exit 2) when DATA holds no committed
    dataset by then, or at once when it has no manifest and no commit is in progress (never built, or a
    first build still decoding). Reading is cheap: the index, sizes.json and one ``stat`` per shard.
    ``data`` may be an ``s3://``/``gs://`` URL or Location (read through the storage seam; shards by range).
    """
    loc = storage.location(data)
    if not loc.is_local:
        return _open_remote(loc, wait_s)
    data = Path(data)
    deadline = time.monotonic() + wait_s
    while True:
        first, blob = _read_manifest(data)
        if first is not None:
            snap = _read_version(data, blob)
            again, _ = _read_manifest(data)
            if snap is not None and again == first:
                return replace(snap, manifest_id=first)
        elif not _commit_in_progress(data) and _read_manifest(data)[0] is None:
            break  # checked again after the probe: a commit may have finished in between
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not (data / MANIFEST).exists():
        raise DatasetNotCommitted(f"{data / MANIFEST}: no committed dataset here (run `bindset build`, or wait "
                                  "for the build in progress to commit)")  # fmt: skip
    raise DatasetNotCommitted(f"{data}: the dataset kept changing for {wait_s:g} s; open it again later")


def _open_remote(data: Location, wait_s: float) -> Snapshot:
    """``open_dataset`` on object storage: manifest, then index/sizes/shard ETags, then the manifest again."""
    deadline = time.monotonic() + wait_s
    while True:
        first, blob = _read_manifest_remote(data)
        if first is None:
            raise _not_committed(data)
        snap = _read_version_remote(data, blob)
        if snap is not None and _read_manifest_remote(data)[0] == first:
            return replace(snap, manifest_id=first)
        if time.monotonic() >= deadline:
            raise DatasetNotCommitted(f"{data}: the dataset kept changing for {wait_s:g} s; open it again later")
        time.sleep(0.2)
