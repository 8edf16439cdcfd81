"""A unit's table files (pipelines/unit_tables.py) and the commit's row-group writer (pipelines/commit.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import commit, unit_tables
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA


def _row(i: int, split: str) -> dict:
    row = {f.name: None for f in INDEX_SCHEMA}
    row.update({f.name: False for f in INDEX_SCHEMA if f.name.startswith("has_")})
    row.update(key=f"k{i:04d}", shard=f"p-{split}-{i // 3:05d}.tar", split=split, session=f"s{i % 4}",
               layout="videos", clip_start_s=2.0 * i, clip_end_s=2.0 * i + 2, label_change=i % 5 == 0,
               has_video=True, sha256_jpg=f"{i * 7919:064x}", frame_brightness=0.5 + i)  # fmt: skip
    return row


def _reject(i: int) -> dict:
    return {"source": f"s{i}.mp4", "reason": "audio_silent", "detail": f"d{i}", "session": f"s{i}",
            "key": None if i % 2 else f"k{i:04d}", "start_s": float(i), "end_s": None, "modality": "audio"}  # fmt: skip


def test_unit_tables_round_trip_by_split_in_recorded_order(tmp_path):
    rows = [_row(i, "val" if i % 3 == 1 else "train") for i in range(20)]  # the splits interleaved
    rejects = [_reject(i) for i in range(5)]
    unit_tables.write_unit_tables(tmp_path, rows, rejects)

    train, val = unit_tables.read_index(tmp_path, "train"), unit_tables.read_index(tmp_path, "val")
    assert train.schema == INDEX_SCHEMA and val.schema == INDEX_SCHEMA
    assert train.to_pylist() == [r for r in rows if r["split"] == "train"]
    assert val.to_pylist() == [r for r in rows if r["split"] == "val"]
    assert (train.num_rows, val.num_rows) == (13, 7)
    assert unit_tables.read_index(tmp_path, "test").num_rows == 0  # a split the unit has no rows of
    got = unit_tables.read_rejects(tmp_path)
    assert got.schema == REJECTS_SCHEMA and got.to_pylist() == [{f.name: r[f.name] for f in REJECTS_SCHEMA}
                                                                 for r in rejects]  # fmt: skip
    # what the sink writes is what the commit reads: the same bytes on a second write
    first = (tmp_path / unit_tables.INDEX_FILE).read_bytes()
    unit_tables.write_unit_tables(tmp_path, rows, rejects)
    assert (tmp_path / unit_tables.INDEX_FILE).read_bytes() == first


def test_unit_tables_empty_unit(tmp_path):
    unit_tables.write_unit_tables(tmp_path, [], [])
    assert unit_tables.read_index(tmp_path, "train").num_rows == 0
    assert unit_tables.read_rejects(tmp_path).num_rows == 0
    assert unit_tables.read_rejects(tmp_path).schema == REJECTS_SCHEMA


def test_unit_tables_refuse_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.arrows.zst"):
        unit_tables.read_index(tmp_path, "train")
    # a unit folder of an older bindset (Parquet tables) under the new name: a readable error, never wrong rows
    pq.write_table(pa.Table.from_pylist([_row(0, "train")], schema=INDEX_SCHEMA), tmp_path / unit_tables.INDEX_FILE)
    with pytest.raises(ValueError, match="not a zstd-compressed Arrow IPC stream"):
        unit_tables.read_index(tmp_path, "train")
    # another schema (the rejects' columns where the index belongs)
    unit_tables.write_unit_tables(tmp_path, [], [_reject(0)])
    (tmp_path / unit_tables.INDEX_FILE).write_bytes((tmp_path / unit_tables.REJECTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="columns"):
        unit_tables.read_index(tmp_path, "train")


def test_row_groups_bytes_do_not_depend_on_how_units_cut_the_rows(tmp_path, monkeypatch):
    """index.parquet's bytes are a function of its rows: one table, or hundreds of small unit tables (which the
    writer packs 256 at a time), give the same file, with row groups of exactly ROW_GROUP_ROWS rows."""
    monkeypatch.setattr(commit, "ROW_GROUP_ROWS", 500)
    rows = [_row(i, "train") for i in range(1_234)]
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    cuts = {"whole": [table], "ones": [table.slice(i, 1) for i in range(table.num_rows)],
            "mixed": [table.slice(0, 3), table.slice(3, 0), table.slice(3, 700), table.slice(703, 531)]}  # fmt: skip
    for name, tables in cuts.items():
        with commit._RowGroups(tmp_path / f"{name}.parquet", INDEX_SCHEMA) as out:
            for t in tables:
                out.write(t)
    whole = (tmp_path / "whole.parquet").read_bytes()
    assert (tmp_path / "ones.parquet").read_bytes() == whole
    assert (tmp_path / "mixed.parquet").read_bytes() == whole
    meta = pq.ParquetFile(tmp_path / "ones.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [500, 500, 234]
    assert pq.read_table(tmp_path / "ones.parquet").to_pylist() == rows
