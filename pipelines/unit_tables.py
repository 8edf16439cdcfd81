"""A unit's index and rejects rows on disk, under ``DATA/_work/units/<unit>/``: written once by the unit's sink
(``transforms/records.py``), read back by the commit (``pipelines/commit.py``) for every unit at every commit.

Format: an Arrow IPC *stream* (https://arrow.apache.org/docs/format/Columnar.html#ipc-streaming-format), the
whole stream compressed as one zstd frame (RFC 8878), so ``zstd -d < index.arrows.zst`` gives a stream any
Arrow reader opens:
- ``index.arrows.zst``: ``INDEX_SCHEMA``, one record batch per split (in sorted split order), each batch tagged
  with the custom metadata ``{"split": <split>}``; the rows of a split keep the order the sink recorded them in;
- ``rejects.arrows.zst``: ``REJECTS_SCHEMA``, the rows in the order recorded (one batch, none when empty).

Why not Parquet, which the dataset's own ``index.parquet`` is: the commit opens two of these per unit, and a
small Parquet file costs ~1-2 ms to open (footer parse, dataset scan set-up) against ~0.1-0.3 ms for this,
which has no page encoding to undo; at 100,000 units that was most of a commit's time (BENCHMARKS.md, "Driver
scaling"). One zstd frame for the whole stream rather than Arrow's per-buffer compression: a ~50-column
batch has ~150 buffers, and a compression context each cost more than the read (measured: ~5 ms against
~0.5 ms for 1,500 rows); uncompressed, the index rows take 2x (random digests) to 20x (repeated values) the
disk, which the object-storage commit would download. Tagging the index's batches by split lets the commit
take one split's rows without a filter. The rows' values are the same in any format, and the commit writes the dataset's
Parquet files from them with fixed row groups, so the dataset's bytes do not depend on this one.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from pipelines.storage import write_synced
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA

INDEX_FILE = "index.arrows.zst"
REJECTS_FILE = "rejects.arrows.zst"
#: the unit's table files, as the object-storage commit fetches them
TABLE_FILES = (INDEX_FILE, REJECTS_FILE)
_SPLIT = b"split"


def _ipc_bytes(schema: pa.Schema, batches: list[tuple[pa.RecordBatch, dict | None]]) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as zst, ipc.new_stream(zst, schema) as writer:
        for batch, meta in batches:
            writer.write_batch(batch, custom_metadata=meta)
    return sink.getvalue().to_pybytes()


def write_unit_tables(folder: Path, rows: list[dict], rejects: list[dict]) -> None:
    """Write ``folder/index.arrows.zst`` and ``folder/rejects.arrows.zst`` (each fsynced) from a unit's rows.

    ``rows``: index rows (dicts with ``INDEX_SCHEMA``'s columns, ``split`` among them), in the sink's order;
    ``rejects``: reject rows (``REJECTS_SCHEMA``). Raises ``pyarrow.ArrowInvalid`` / ``ArrowTypeError`` when a
    row does not fit its schema.
    """
    by_split: dict[str, list[dict]] = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row)
    index = [(pa.RecordBatch.from_pylist(by_split[s], schema=INDEX_SCHEMA), {_SPLIT: s.encode()})
             for s in sorted(by_split)]  # fmt: skip
    write_synced(folder / INDEX_FILE, _ipc_bytes(INDEX_SCHEMA, index))
    rej = [(pa.RecordBatch.from_pylist(rejects, schema=REJECTS_SCHEMA), None)] if rejects else []
    write_synced(folder / REJECTS_FILE, _ipc_bytes(REJECTS_SCHEMA, rej))


def _batches(path: Path, schema: pa.Schema) -> list[tuple[pa.RecordBatch, object]]:
    """All record batches of a file ``_ipc_bytes`` wrote, with their custom metadata (None when untagged)."""
    try:
        # the whole file in one read, closed at once: the tables never hold a descriptor
        src = pa.CompressedInputStream(pa.BufferReader(pa.py_buffer(path.read_bytes())), "zstd")
        with ipc.open_stream(src) as reader:
            if not reader.schema.equals(schema):
                raise ValueError(f"{path}: its columns are not those this version of bindset writes")
            return [(b.batch, b.custom_metadata) for b in reader.iter_batches_with_custom_metadata()]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: a finished unit's table is missing") from None
    except (pa.ArrowInvalid, OSError) as exc:  # not zstd, or not an Arrow stream inside
        raise ValueError(f"{path}: not a zstd-compressed Arrow IPC stream ({exc})") from None


def read_index(folder: Path, split: str) -> pa.Table:
    """The unit's index rows of one ``split`` (``INDEX_SCHEMA``; zero rows when it has none), in recorded order.

    Raises ``FileNotFoundError`` when the unit has no index file, ``ValueError`` when the file is not one
    this module wrote (another format or other columns).
    """
    path = folder / INDEX_FILE
    want, batches = split.encode(), []
    for i, (batch, meta) in enumerate(_batches(path, INDEX_SCHEMA)):
        if meta is None or _SPLIT not in meta:
            raise ValueError(f"{path}: record batch {i} is not tagged with its split")
        if meta[_SPLIT] == want:
            batches.append(batch)
    return pa.Table.from_batches(batches, schema=INDEX_SCHEMA)


def read_rejects(folder: Path) -> pa.Table:
    """The unit's reject rows (``REJECTS_SCHEMA``), in recorded order. Raises as ``read_index``."""
    return pa.Table.from_batches([b for b, _ in _batches(folder / REJECTS_FILE, REJECTS_SCHEMA)],
                                 schema=REJECTS_SCHEMA)  # fmt: skip
