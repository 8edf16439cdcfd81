"""RUN on a local folder or an object-store URL: where `bindset train` writes, through the storage seam.

    store = RunStore.open("s3://bucket/runs/r1")   # or a local path: then ``work`` is RUN itself
    store.work                                     # the local folder the loop writes into
    store.append("metrics.jsonl", {...})           # appended in ``work``; on a URL the whole file is PUT again
    store.push_checkpoint(folder, step)            # RUN/checkpoints/ckpt-<step>/..., state.json last
    store.pull_latest_checkpoint(work / "checkpoints")   # resume: the newest complete one, downloaded
    store.push_model(folder)                       # RUN/model/, state.json last

Why stage locally and upload (rather than write through fsspec streams): the writers are libraries that take a
path (safetensors, JSON, Ray Train's checkpoint folders), and a local checkpoint is what a restarted loop loads;
an object store has no rename, so a checkpoint or the final model is committed by writing ``state.json`` after
the tensors (``training/checkpoint.py`` reads a folder without ``state.json`` as incomplete, as locally). Before
a folder is rewritten its ``state.json`` is deleted first, so a reader never takes the old ``state.json`` with
new tensors. ``events.jsonl`` and ``metrics.jsonl`` are small: each append PUTs the whole file again (object
stores have no append), and a resumed run downloads them first so the logs go on.

A local RUN keeps today's behaviour exactly: ``work`` is RUN and every ``push_*`` is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.storage import Location

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
STATE = "state.json"  # training/checkpoint.py's STATE: the commit point of a checkpoint or model folder
MODEL = "model.safetensors"
#: the files a run folder's logs consist of (appended by rank 0; pulled on resume)
LOGS = ("events.jsonl", "metrics.jsonl")


def run_location(run: Path | Location | str) -> Path | Location:
    """A local RUN as a resolved Path, an ``s3://`` / ``gs://`` RUN as a Location."""
    loc = storage.location(run)
    return loc if not loc.is_local else Path(loc.path).resolve()


@dataclass
class RunStore:
    """A run folder: ``work`` (local, written by the loop) and ``remote`` (the URL it is mirrored to, or None)."""

    work: Path
    remote: Location | None = None
    temporary: bool = False  # ``work`` was made here and is removed by ``close``

    @classmethod
    def open(cls, run: Path | Location | str, work: Path | str | None = None) -> RunStore:
        """The store of RUN: for a URL a fresh temp folder (or ``work``, e.g. the driver's, on a local Ray
        cluster) stages what is uploaded; for a local path ``work`` is RUN itself."""
        where = run_location(run)
        if isinstance(where, Path):
            where.mkdir(parents=True, exist_ok=True)
            return cls(where)
        if work is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # torchrun: the ranks of a node share one staging folder (rank 0's image cache, the checkpoints)
            key = hashlib.sha256(f"{where.url} {os.environ.get('TORCHELASTIC_RUN_ID', '')}".encode()).hexdigest()
            work = Path(tempfile.gettempdir()) / f"bindset-run-{key[:16]}"
        if work is not None:
            Path(work).mkdir(parents=True, exist_ok=True)
            return cls(Path(work), where)
        return cls(Path(tempfile.mkdtemp(prefix="bindset-run-")), where, temporary=True)

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    @property
    def where(self) -> Path | Location:
        """What the user named: the URL, or the local RUN folder."""
        return self.remote if self.remote is not None else self.work

    def __str__(self) -> str:
        return str(self.where)

    def close(self) -> None:
        """Remove the staging folder of a URL RUN (everything in it has been uploaded)."""
        if self.temporary:
            shutil.rmtree(self.work, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ files

    def put_text(self, name: str, text: str) -> None:
        """``work/name`` (atomically) and, on a URL, ``RUN/name`` (one PUT)."""
        storage.atomic_write_text(self.work / name, text)
        if self.remote is not None:
            storage.put_atomic(self.remote / name, text.encode("utf-8"))

    def append(self, name: str, entry: dict) -> None:
        """One JSON line appended to ``work/name``; on a URL the file is PUT whole (no append on object stores)."""
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True, default=float) + "\n")
        if self.remote is not None:
            storage.upload(path, self.remote / name)

    def pull_logs(self) -> None:
        """Download RUN's logs into ``work`` (a resumed run, or a restarted Ray worker, appends after them)."""
        if self.remote is None:
            return
        for name in LOGS:
            storage.download(self.remote / name, self.work / name)

    # ------------------------------------------------------------------------------------ checkpoints

    def push_checkpoint(self, folder: Path, step: int, keep: int) -> None:
        """Upload a committed local checkpoint as ``RUN/checkpoints/ckpt-<step>/`` (state.json last), then
        delete the remote checkpoints older than the newest ``keep``."""
        if self.remote is None:
            return
        dest = self.remote / CHECKPOINTS / Path(folder).name
        upload_folder(Path(folder), dest)
        for name in remote_checkpoints(self.remote)[:-keep] if keep > 0 else ():
            delete_folder(self.remote / CHECKPOINTS / name)

    def pull_latest_checkpoint(self, into: Path) -> Path | None:
        """Download the newest complete remote checkpoint into ``into/<its name>``; None when there is none."""
        if self.remote is None:
            return None
        done = remote_checkpoints(self.remote)
        if not done:
            return None
        name = done[-1]
        local = Path(into) / name
        if (local / STATE).exists():
            return local
        tmp = storage.staging_dir(local)
        for f in storage.listdir(self.remote / CHECKPOINTS / name):
            if not storage.download(self.remote / CHECKPOINTS / name / f, tmp / f):
                raise FileNotFoundError(f"{self.remote / CHECKPOINTS / name / f}: vanished while downloading")
        storage.replace_dir(tmp, local)
        log.info("resuming from %s", self.remote / CHECKPOINTS / name)
        return local

    def push_model(self, folder: Path) -> None:
        """Upload the final model folder as ``RUN/model/`` (state.json last)."""
        if self.remote is not None:
            upload_folder(Path(folder), self.remote / MODEL_DIR)


def remote_checkpoints(run: Location) -> list[str]:
    """Names of RUN's complete checkpoints on the store (``state.json`` and the model there), oldest first."""
    root = run / CHECKPOINTS
    names = [n for n in storage.listdir(root) if n.startswith("ckpt-")]
    return [n for n in names if {STATE, MODEL} <= set(storage.listdir(root / n))]


def upload_folder(folder: Path, dest: Location) -> None:
    """The files of ``folder`` (not recursive) under ``dest``: ``state.json`` removed first and written last,
    so the folder is committed only once all its tensors are there; objects no longer in ``folder`` go."""
    storage.delete(dest / STATE)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    for name in [n for n in names if n != STATE]:
        storage.upload(folder / name, dest / name)
    for stale in set(storage.listdir(dest)) - set(names):
        storage.delete(dest / stale)
    if STATE in names:
        storage.upload(folder / STATE, dest / STATE)


def delete_folder(dest: Location) -> None:
    """Delete the objects under ``dest`` (one level), ``state.json`` first: uncommitted before it goes."""
    storage.delete(dest / STATE)
    for name in storage.listdir(dest):
        storage.delete(dest / name)


def read_run_file(run: Path | Location | str, name: str) -> bytes:
    """A file of a (local or remote) RUN, e.g. ``model/state.json``; ``FileNotFoundError`` when absent."""
    where = run_location(run)
    return storage.read_bytes(where / name if isinstance(where, Location) else Path(where) / name)


def remote_env(*where: Path | Location | str | None) -> dict[str, str]:
    """The client environment (credentials, endpoint) of the object stores among ``where``, for processes that do
    not inherit this one's (Ray workers of a local cluster). Values hold secrets: never log them."""
    env: dict[str, str] = {}
    for w in where:
        if w is None:
            continue
        loc = storage.location(w)
        if not loc.is_local:
            env.update(storage.client_environment(loc.scheme))
    return env


def pyarrow_filesystem(loc: Location):
    """A ``pyarrow.fs`` filesystem over the seam's fsspec filesystem of ``loc``'s scheme (for Ray Train's
    ``RunConfig(storage_filesystem=...)``): the same client, endpoint and credentials as every other call."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(storage.filesystem(loc.scheme)))


@contextlib.contextmanager
def local_copy(run: Path | Location | str, name: str):
    """A local path holding RUN's file ``name``: the file itself for a local RUN, a temp download for a URL."""
    where = run_location(run)
    if isinstance(where, Path):
        yield where / name
        return
    fd, tmp = tempfile.mkstemp(prefix="bindset-", suffix="-" + Path(name).name)
    os.close(fd)
    try:
        if not storage.download(where / name, tmp):
            raise FileNotFoundError(f"{where / name}: no such object")
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
