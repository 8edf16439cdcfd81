"""The storage seam: atomic writes leave the old file or the new one, never a part; the tar reader reads
back exactly what the shard writer wrote."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from transforms.shardwriter import RollingTarWriter


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "sizes.json"
    storage.atomic_write_bytes(path, b"old")
    storage.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert _leftovers(path.parent) == []


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_part(tmp_path):
    path = tmp_path / "index.parquet"
    path.write_bytes(b"committed")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half of the new by")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.atomic_write_with(path, half_then_fail)
    assert path.read_bytes() == b"committed"
    assert _leftovers(tmp_path) == []


def test_a_failing_fsync_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    storage.atomic_write_json(path, {"version": 1})

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        storage.atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert _leftovers(tmp_path) == []


def test_json_that_cannot_be_strict_is_refused_before_writing(tmp_path):
    path = tmp_path / "validation.json"
    with pytest.raises(ValueError):
        storage.atomic_write_json(path, {"x": float("nan")})
    assert not path.exists() and _leftovers(tmp_path) == []
    storage.atomic_write_json(path, {"b": 1, "a": [1.5]}, indent=1)
    assert path.read_text() == '{\n "a": [\n  1.5\n ],\n "b": 1\n}\n'


def test_atomic_parquet_round_trips_with_the_shared_options(tmp_path):
    table = pa.table({"key": ["a_000000000", "b_000002000"], "x": [1.0, None]})
    path = storage.atomic_write_parquet(tmp_path / "t.parquet", table)
    assert pq.read_table(path).equals(table)
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert meta.row_group(0).column(0).statistics is not None


def test_replace_dir_swaps_a_non_empty_folder(tmp_path):
    final = tmp_path / "units" / "u1"
    first = storage.staging_dir(final)
    (first / "a").write_bytes(b"1")
    storage.replace_dir(first, final)
    second = storage.staging_dir(final)
    (second / "b").write_bytes(b"2")
    storage.fsync_tree(second)
    storage.replace_dir(second, final)
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert _leftovers(final.parent) == []


def test_commit_new_dir_is_write_once(tmp_path):
    final = tmp_path / "ds-1"
    a, b = storage.staging_dir(final), storage.staging_dir(final)
    (a / "f").write_bytes(b"a")
    (b / "f").write_bytes(b"b")
    assert storage.commit_new_dir(a, final) is True
    assert storage.commit_new_dir(b, final) is False
    assert (final / "f").read_bytes() == b"a"
    assert _leftovers(tmp_path) == []


def test_place_file_links_and_replaces(tmp_path):
    src, dst = tmp_path / "part.tar", tmp_path / "train-000000.tar"
    src.write_bytes(b"x" * 1024)
    dst.write_bytes(b"stale")
    storage.place_file(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_ino == os.stat(src).st_ino
    storage.place_file(src, dst)  # placing again is a no-op
    assert _leftovers(tmp_path) == []


def test_replace_symlink_points_at_the_new_target(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    link = tmp_path / "current"
    storage.replace_symlink(link, "v1")
    storage.replace_symlink(link, "v2")
    assert os.readlink(link) == "v2"
    assert _leftovers(tmp_path) == []


def _written_samples() -> list[tuple[str, dict[str, bytes]]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(7):
        members = {"jpg": rng.bytes(100 + 37 * i), "mel.npy": rng.bytes(513), "json": b"{}\n"}
        if i % 2:
            members["txt"] = f"caption {i}".encode()
        out.append((f"s{i % 3}_{i * 2000:09d}", members))
    return out


def test_tar_reader_reads_what_the_shard_writer_wrote(tmp_path):
    samples = _written_samples()
    writer = RollingTarWriter(tmp_path, "u0", "train", max_samples=4, max_bytes=1 << 30)
    for key, members in samples:
        writer.add(key, members)
    writer.close()
    assert [p.samples for p in writer.parts] == [4, 3]

    read: list[tuple[str, str, bytes]] = []
    for part in writer.parts:
        with storage.TarReader(tmp_path / part.file) as tar:
            members = tar.members()
            # the header scan agrees with tarfile's own reading, member by member
            with tarfile.open(tmp_path / part.file) as tf:
                names = [i.name for i in tf if i.isfile()]
            assert [m.name for m in members] == names
            read += [(m.key, m.suffix, tar.read(m)) for m in members]
            grouped: dict[str, set[str]] = {}
            for m in members:
                grouped.setdefault(m.key, set()).add(m.suffix)
            assert {k: set(v) for k, v in tar.samples().items()} == grouped
    assert read == [(k, suffix, data) for k, ms in samples for suffix, data in ms.items()]


def test_tar_reader_is_picklable_and_reports_a_cut_member(tmp_path):
    import pickle

    writer = RollingTarWriter(tmp_path, "u0", "val", max_samples=100, max_bytes=1 << 30)
    writer.add("s0_000000000", {"jpg": b"a" * 3000, "json": b"{}"})
    writer.close()
    path = tmp_path / writer.parts[0].file
    tar = storage.TarReader(path)
    first = tar.members()[0]
    assert tar.read(first) == b"a" * 3000
    clone = pickle.loads(pickle.dumps(tar))  # loader processes get a copy without the open file
    assert clone.read(first) == b"a" * 3000
    tar.close()
    clone.close()

    # a tar cut inside a member: the scan refuses it; a reader that scanned before the cut reads short
    cut = tmp_path / "cut.tar"
    whole = path.read_bytes()
    cut.write_bytes(whole)
    with storage.TarReader(cut) as t:
        m = t.members()[0]
        cut.write_bytes(whole[: first.offset + 1000])
        with pytest.raises(EOFError, match="cut short"):
            t.read(m)
    with pytest.raises(tarfile.ReadError):
        storage.TarReader(cut).members()
