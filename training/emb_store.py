"""The EMB folder: embeddings partitioned by input shard, a marker per finished part, meta.json as the commit point.

    EMB/<modality>/part-NNNNNN.parquet   key, modality, split, session, label, run_id, vector (fixed-size list)
    EMB/_parts/part-NNNNNN.json          a finished part: its shard, content fingerprint and rows per modality
    EMB/index/<modality>.faiss           a FAISS inner-product index over the modality's rows, in part order
    EMB/meta.json                        written last: the run, the dataset version, the parts in order, the
                                         counts and the index parameters; without it EMB is not committed
    EMB/_embed.lock                      held (flock) by the one `bindset embed` writing into EMB: who holds it

Part N holds the rows of the dataset's N-th shard (shards in name order), in index order; a modality's rows
are the concatenation of its parts in meta.json's order, and row i of that concatenation is id i of the
modality's FAISS index. Readers go by meta.json's part list, never by listing folders, so a file left by an
interrupted or older run is never read. Every read here streams part by part.

EMB may be an ``s3://`` or ``gs://`` URL (issue 17): every read and write goes through the storage seam
(pipelines/storage.py); parts are staged locally and uploaded, meta.json is still the last object written, and
the lock is a lease object (``EmbLease``) instead of a ``flock``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.lock import BuildLocked, Holder, holder_in, release_holder_lock, take_holder_lock
from pipelines.lock_remote import ObjectBuildLock, _read_holder
from pipelines.storage import Location
from schemas.errors import MissingInputError, UserError

log = logging.getLogger(__name__)

META = "meta.json"
PARTS = "_parts"
INDEX = "index"
FORMAT = 2  # 1: one EMB/<modality>.parquet per modality (before partitioned output)
COLUMNS = ("key", "modality", "split", "session", "label", "run_id", "vector")
LOCK = "_embed.lock"


class EmbNotCommitted(UserError):
    """EMB holds no committed embeddings (no run finished, or one is writing right now)."""


class EmbLocked(UserError):
    """Another `bindset embed` is writing into this EMB (exit 2): the message names its host and pid."""


def _describe(h: Holder) -> str:
    return f"host {h.host}, pid {h.pid}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h.since))}"


class EmbLock:
    """Context manager: one `bindset embed` per EMB folder, the same way as one build per DATA
    (pipelines/lock.py): an exclusive ``flock`` on ``EMB/_embed.lock``, which also names the holder (host,
    pid, its start time). A second run raises :class:`EmbLocked` at once. A run that was killed leaves its
    name in the file, but the kernel released its ``flock``: the next run takes the lock over (and logs whose).
    A finished run empties the file. ``flock`` needs a local filesystem or a shared one that supports it."""

    def __init__(self, emb: Path | str):
        self.path = Path(emb) / LOCK
        self.run_id = uuid.uuid4().hex[:12]
        self._fd: int | None = None

    def holder(self) -> Holder | None:
        return holder_in(self.path)

    def __enter__(self) -> EmbLock:
        def refused(held: Holder | None) -> EmbLocked:
            who = _describe(held) if held else "holder unknown"
            return EmbLocked(f"{self.path.parent} is being written by another `bindset embed` ({who}); wait for "
                             "it to finish or stop it")  # fmt: skip

        self._fd = take_holder_lock(self.path, self.run_id, refused, "embed lock of a run", _describe)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            release_holder_lock(self._fd)
            self._fd = None


class EmbLease(ObjectBuildLock):
    """EMB's lock on object storage: the lease object ``EMB/_embed.lock`` of pipelines/lock_remote.py (a
    conditional PUT takes it, a heartbeat keeps it, each take and renewal is read back, a dead or silent
    holder's lease is taken over after ``pipelines.lock.LEASE_S``), with the embed lock's error. ``s3://`` and
    ``gs://`` (``storage.put_conditional``)."""

    def __init__(self, emb: Location):
        super().__init__(emb)
        self.loc = emb / LOCK

    def _refused(self, holder: Holder | None) -> BuildLocked:
        # the holder that refused this run, kept for the embed lock's message (read again, it may be gone)
        self._holder = holder
        return super()._refused(holder)

    def __enter__(self) -> EmbLease:
        self._holder: Holder | None = None
        try:
            super().__enter__()
        except BuildLocked:
            held = self._holder or _read_holder(self.loc)
            who = held.describe() if held else "holder unknown"
            raise EmbLocked(f"{self.data} is being written by another `bindset embed` ({who}); wait for it to "
                            "finish or stop it") from None  # fmt: skip
        return self


def emb_lock(emb: Path | Location) -> EmbLock | EmbLease:
    """The lock of one `bindset embed` per EMB: a ``flock`` locally, a lease object on a URL."""
    return EmbLease(emb) if isinstance(emb, Location) else EmbLock(emb)


def emb_root(emb: Path | Location | str) -> Path | Location:
    """EMB as a resolved local Path, or a Location for an ``s3://`` / ``gs://`` URL."""
    loc = storage.location(emb)
    return loc if not loc.is_local else Path(loc.path)


def part_name(i: int) -> str:
    return f"part-{i:06d}"


def part_path(emb: Path | Location, modality: str, name: str) -> Path | Location:
    return emb / modality / f"{name}.parquet"


def marker_path(emb: Path | Location, name: str) -> Path | Location:
    return emb / PARTS / f"{name}.json"


def index_path(emb: Path | Location, modality: str) -> Path | Location:
    return emb / INDEX / f"{modality}.faiss"


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("key", pa.string()), ("modality", pa.string()), ("split", pa.string()), ("session", pa.string()),
        ("label", pa.string()), ("run_id", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
    ])  # fmt: skip


def read_meta(emb: Path | str) -> dict:
    """EMB/meta.json. Raises ``EmbNotCommitted`` (exit 2) when there is none or it predates partitioned output."""
    path = emb_root(emb) / META
    try:
        meta = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        raise EmbNotCommitted(f"{path}: no committed embeddings here (run `bindset embed`, or wait for the run "
                              "in progress to finish)") from None  # fmt: skip
    if meta.get("format") != FORMAT:
        raise EmbNotCommitted(f"{path}: written by an older bindset (one file per modality); run `bindset embed` "
                              "again into this folder")  # fmt: skip
    return meta


def modality_parts(meta: dict, modality: str) -> list[tuple[str, int]]:
    """(part name, rows) of a modality, in row order. Raises ``MissingInputError`` for a modality not embedded."""
    if modality not in meta["modalities"]:
        raise MissingInputError(f"no {modality} embeddings (this EMB has {', '.join(meta['modalities'])})")
    return [(p["name"], int(p["rows"].get(modality, 0))) for p in meta["parts"]]


def iter_tables(emb: Path | str, modality: str, columns: Sequence[str] | None = None,
                meta: dict | None = None) -> Iterator[pa.Table]:  # fmt: skip
    """The modality's parts as Arrow tables (``columns`` only), in row order, one part in memory at a time."""
    emb = emb_root(emb)
    meta = meta or read_meta(emb)
    for name, rows in modality_parts(meta, modality):
        if rows:
            t = storage.read_parquet(part_path(emb, modality, name), columns=list(columns) if columns else None)
            if t.num_rows != rows:
                raise UserError(f"{part_path(emb, modality, name)}: {t.num_rows} rows, meta.json says {rows}; "
                                "EMB was changed after its commit, run `bindset embed` again")  # fmt: skip
            yield t


def to_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list vector column as an N x D float32 matrix."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def iter_vectors(emb: Path | str, modality: str, meta: dict | None = None) -> Iterator[np.ndarray]:
    """The modality's vectors part by part (rows x dim float32), in row order."""
    for t in iter_tables(emb, modality, ["vector"], meta):
        yield to_matrix(t.column("vector"))


def read_vectors(emb: Path | str, modality: str, split: str | None = None) -> tuple[pa.Table, np.ndarray]:
    """A modality's rows (without the vector column) and vectors (N x D float32), of one split or all.

    Memory: the selected rows only (eval reads one split); parts are read one at a time.
    """
    meta = read_meta(emb)
    rows, vecs = [], []
    for t in iter_tables(emb, modality, meta=meta):
        if split is not None:
            t = t.filter(pc.equal(t.column("split"), split))
        rows.append(t.drop(["vector"]))
        vecs.append(to_matrix(t.column("vector")))
    if not rows:
        return pa.schema(schema(int(meta["dim"]))).empty_table().drop(["vector"]), np.zeros((0, meta["dim"]), "f4")
    return pa.concat_tables(rows), np.concatenate(vecs)


def rows_at(emb: Path | str, modality: str, ids: Sequence[int], columns: Sequence[str]) -> list[dict]:
    """The rows with the given ids (row numbers in part order), reading only the parts they fall in."""
    emb = emb_root(emb)
    meta = read_meta(emb)
    parts = modality_parts(meta, modality)
    starts = np.cumsum([0] + [r for _, r in parts])
    out: dict[int, dict] = {}
    for p in sorted({int(np.searchsorted(starts, i, side="right")) - 1 for i in ids}):
        t = storage.read_parquet(part_path(emb, modality, parts[p][0]), columns=list(columns)).to_pylist()
        for i in ids:
            if starts[p] <= i < starts[p + 1]:
                out[int(i)] = t[int(i - starts[p])]
    return [out[int(i)] for i in ids]


def find_key(emb: Path | str, modality: str, key: str) -> np.ndarray | None:
    """The stored vector of ``key`` in a modality (the first, in row order), or None."""
    for t in iter_tables(emb, modality, ["key", "vector"]):
        hit = pc.index(t.column("key"), key).as_py()
        if hit >= 0:
            return to_matrix(t.column("vector").slice(hit, 1))[0]
    return None
