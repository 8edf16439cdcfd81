"""Publishing a build: unit results become DATA/shards, index.parquet, rejects.parquet, manifest.json.

The manifest is removed first and written last, so a reader never takes a half-committed dataset for a
finished one; ``pipelines/dataset.py`` is the readers' side of this protocol. Shards are hard links to the
unit parts (no copy), each placed with an atomic rename.
Shard names are assigned in sorted unit order, so the same inputs always give the same names.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage, work
from pipelines.lock import manifest_lock
from pipelines.unit_tables import read_index, read_rejects
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA
from transforms.config import BuildConfig
from transforms.layouts import Discovery
from transforms.records import Reject, UnitSummary

SPLITS = ("train", "val")
#: Rows per row group of index.parquet and rejects.parquet: large enough for column statistics and
#: compression to pay off (Parquet's advice is 128 MB-1 GB groups; index rows are ~1 KB), small enough
#: that the commit holds only this much of the index at a time.
ROW_GROUP_ROWS = 65_536


class _RowGroups:
    """A Parquet writer that collects tables and writes a row group each ``ROW_GROUP_ROWS`` rows.

    Row groups of a fixed row count: the file's bytes depend on its rows alone, not on how the units cut them.
    """

    def __init__(self, path: Path, schema: pa.Schema):
        self.schema = schema
        self.writer = pq.ParquetWriter(path, schema, **storage.PARQUET_OPTS)
        self.packed: list[pa.Table] = []  # contiguous copies of 256 unit tables each
        self.pending: list[pa.Table] = []  # unit tables since the last copy
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.rows += table.num_rows
        if len(self.pending) >= 256:
            # many small unit tables: one contiguous copy frees their read buffers; only the new ones are copied,
            # so a row is copied once here however many small tables make up a row group
            self.packed.append(pa.concat_tables(self.pending).combine_chunks())
            self.pending = []
        while self.rows >= ROW_GROUP_ROWS:
            both = pa.concat_tables(self.packed + self.pending)
            self.writer.write_table(both.slice(0, ROW_GROUP_ROWS).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
            rest = both.slice(ROW_GROUP_ROWS)
            self.packed, self.pending, self.rows = [], ([rest] if rest.num_rows else []), rest.num_rows

    def __enter__(self) -> _RowGroups:
        return self

    def __exit__(self, *exc) -> None:
        if (self.packed or self.pending) and exc[0] is None:
            last = pa.concat_tables(self.packed + self.pending).combine_chunks()
            self.writer.write_table(last, row_group_size=ROW_GROUP_ROWS)
        self.writer.close()


# The units' tables are read one after another on this thread: a unit's read (pipelines/unit_tables.py) is
# ~0.1-0.3 ms, mostly Python-side calls that hold the GIL, and reader threads made the commit slower, not
# faster (5,000 units: 4.0 s on 4 threads, 3.1 s on this one; 300 units of 1,500 rows: 0.7 s against 0.5 s).


@dataclass(frozen=True)
class CommitResult:
    samples: int
    windows_planned: int
    window_rejects: int
    rejects: int
    shards: dict[str, int]
    reasons: dict[str, int]
    version: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def commit(
    data: Path,
    discovery: Discovery,
    units: list[tuple[str, Path, UnitSummary]],
    cfg: BuildConfig,
    code_version: str,
    input_fingerprints: dict[str, str],
) -> CommitResult:
    """Publish the units' results as DATA's dataset (the caller holds DATA's build lock).

    Holds the manifest lock throughout, so ``validate`` never writes its verdict into a half-committed
    dataset; readers use ``pipelines.dataset.open_dataset``, which detects a commit that ran under them.
    """
    with manifest_lock(data):
        return _commit(data, discovery, units, cfg, code_version, input_fingerprints)


def _commit(data: Path, discovery: Discovery, units: list[tuple[str, Path, UnitSummary]], cfg: BuildConfig,
            code_version: str, input_fingerprints: dict[str, str], place=None) -> CommitResult:  # fmt: skip
    # place(unit part, shard path): storage.place_file by default; the object-store commit
    # (pipelines/commit_remote.py) records the names instead and copies the objects server-side
    place = place or storage.place_file
    shards_dir = data / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    (data / "manifest.json").unlink(missing_ok=True)

    # final shard names, in (split, unit, part) order
    rename: dict[tuple[str, str], str] = {}
    counters = dict.fromkeys(SPLITS, 0)
    sizes: dict[str, int] = {}
    for split in SPLITS:
        for unit_id, folder, summary in units:
            for part in summary.parts:
                if part["split"] != split:
                    continue
                name = f"{split}-{counters[split]:06d}.tar"
                counters[split] += 1
                rename[(unit_id, part["file"])] = name
                sizes[name] = part["samples"]
                place(folder / part["file"], shards_dir / name)
    for stale in shards_dir.glob("*.tar"):
        if stale.name not in sizes:
            stale.unlink()

    # The index and rejects stream into one Parquet table each, a row group per ROW_GROUP_ROWS rows, in
    # shard order (split, unit, part: the order the names were given in), never all in memory at once.
    by_split: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    n_rejects = 0

    shard_at, shard_field = INDEX_SCHEMA.get_field_index("shard"), INDEX_SCHEMA.field("shard")

    def renamed(unit_id: str, idx: pa.Table) -> pa.Table:
        """The unit's rows with their part names (``shard``) replaced by the final shard names."""
        col = idx.column(shard_at)
        if idx.num_rows <= 64:  # a few rows: a list is cheaper than the three Arrow calls below
            shard = pa.array([rename[(unit_id, s)] for s in col.to_pylist()], pa.string())
        else:  # a unit's rows name a few parts: rename each distinct part once, then spread the names
            local = col.combine_chunks().dictionary_encode()
            names = pa.array([rename[(unit_id, s)] for s in local.dictionary.to_pylist()], pa.string())
            shard = names.take(local.indices)
        return idx.set_column(shard_at, shard_field, shard)

    def write_index(tmp: Path) -> None:
        with _RowGroups(tmp, INDEX_SCHEMA) as out:
            for split in SPLITS:
                for unit_id, folder, summary in units:
                    if any(p["split"] == split for p in summary.parts):
                        idx = renamed(unit_id, read_index(folder, split))
                        by_split[split] += idx.num_rows
                        out.write(idx)

    def write_rejects(tmp: Path) -> None:
        nonlocal n_rejects
        found = [Reject(r.source, r.reason, r.detail, r.session).row() for r in discovery.rejects]

        def tables():
            yield pa.Table.from_pylist(found, schema=REJECTS_SCHEMA)  # input rejects of discovery first
            yield from (read_rejects(folder) for _, folder, _ in units)

        with _RowGroups(tmp, REJECTS_SCHEMA) as out:
            for table in tables():
                reasons.update(table.column("reason").to_pylist())
                n_rejects += table.num_rows
                out.write(table)

    storage.atomic_write_with(data / "index.parquet", write_index)
    storage.atomic_write_with(data / "rejects.parquet", write_rejects)
    storage.atomic_write_bytes(shards_dir / "sizes.json", (json.dumps(sizes, indent=1, sort_keys=True) + "\n").encode())
    # the clock rows: inside the manifest lock and described by the manifest, like the index, so a reader
    # never pairs one build's sync table with another build's index
    from pipelines.sync import write_sync_table

    sync_path, sync_rows = write_sync_table(data, [folder for _, folder, _ in units])

    summaries = [s for _, _, s in units]
    # the units' outcomes too: a unit that failed transiently and succeeded on a retry has the same inputs,
    # config and code but other content, and readers' caches (training's image cache) are keyed on the version
    outcomes = [[s.unit_id, s.samples, s.failed, s.reasons] for s in summaries]
    version = hashlib.sha256(
        json.dumps([input_fingerprints, cfg.to_dict(), code_version, outcomes], sort_keys=True).encode()
    ).hexdigest()[:16]
    result = CommitResult(
        samples=sum(by_split.values()),
        windows_planned=sum(s.windows_planned for s in summaries),
        window_rejects=sum(s.window_rejects for s in summaries),
        rejects=n_rejects,
        shards={k: v for k, v in counters.items()},
        reasons=dict(sorted(reasons.items())),
        version=version,
    )
    manifest = {
        "version": version,
        "layout": discovery.layout,
        "code_version": code_version,
        "libraries": work.library_versions(),  # what the unit fingerprints hold too
        "config": cfg.to_dict(),
        "inputs": dict(sorted(input_fingerprints.items())),
        "counts": {
            "units": len(units),
            "units_failed": sum(1 for s in summaries if s.failed),
            "windows_planned": result.windows_planned,
            "samples": result.samples,
            "window_rejects": result.window_rejects,
            "reject_rows": result.rejects,
            "samples_by_split": {k: v for k, v in by_split.items() if v},
            "shards": result.shards,
        },
        "rejects_by_reason": result.reasons,
        "sync": {"file": sync_path.name, "rows": sync_rows, "sha256": _sha256(sync_path)},
        "validation": {"status": "not_run", "published": False},
    }
    storage.atomic_write_bytes(data / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return result
