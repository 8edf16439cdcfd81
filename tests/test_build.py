"""The dataset build end to end: output contract, engines byte-identical, reruns, crash-resume, incremental."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bindset.cli import main
from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build, decode_threads, lone_units
from schemas.reasons import RejectReason
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA
from transforms.config import BuildConfig
from transforms.layouts import LayoutError, detect_layout, discover

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(seconds=6.0, width=160, height=120, workers=2)


def _contract_digest(data: Path) -> dict[str, str]:
    files = sorted((data / "shards").iterdir()) + [data / "index.parquet", data / "rejects.parquet"]
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    synth(root, SynthConfig(sessions=4, seed=3, **SMALL))
    return root


@pytest.fixture(scope="module")
def beam_data(raw, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("beam") / "data"
    build(raw, data, BuildConfig(shard_max_samples=2), EngineConfig("beam"))
    return data


def test_output_contract(beam_data):
    data = beam_data
    manifest = json.loads((data / "manifest.json").read_text())
    index = pq.read_table(data / "index.parquet")
    rejects = pq.read_table(data / "rejects.parquet")
    assert index.schema.equals(INDEX_SCHEMA) and rejects.schema.equals(REJECTS_SCHEMA)
    sizes = json.loads((data / "shards" / "sizes.json").read_text())
    tars = sorted(p.name for p in (data / "shards").glob("*.tar"))
    assert sorted(sizes) == tars and all(n.startswith(("train-", "val-")) and len(n) == len("train-000000.tar") or
                                         len(n) == len("val-000000.tar") for n in tars)  # fmt: skip
    rows = index.to_pylist()
    # index rows == samples in the tars, read back from the tars themselves
    seen = {}
    for name in tars:
        with tarfile.open(data / "shards" / name) as tf:
            members = tf.getmembers()
            assert all(m.mtime == 0 and m.uid == 0 for m in members)
            keys = {m.name.split(".", 1)[0] for m in members}
            assert len(keys) == sizes[name] <= 2  # shard_max_samples bounds every shard
            for m in members:
                key, ext = m.name.split(".", 1)
                blob = tf.extractfile(m).read()
                seen.setdefault(key, {})[ext] = hashlib.sha256(blob).hexdigest()
                if ext == "mel.npy":
                    arr = np.load(io.BytesIO(blob), allow_pickle=False)
                    assert arr.shape == (1, 128, 204) and arr.dtype == np.float32
                if ext == "imu.npy":
                    arr = np.load(io.BytesIO(blob), allow_pickle=False)
                    assert arr.shape == (6, 2000) and arr.dtype == np.float32
    assert sorted(seen) == sorted(r["key"] for r in rows)
    for r in rows:
        assert r["key"] == f"{r['session']}_{round(r['clip_start_s'] * 1000):09d}" and "." not in r["key"]
        assert r["clip_end_s"] - r["clip_start_s"] == pytest.approx(2.0)
        assert seen[r["key"]]["jpg"] == r["sha256_jpg"]
        assert r["has_audio"] == ("mel.npy" in seen[r["key"]])
        assert r["shard"] in sizes
    # split by session, never by clip
    splits = {}
    for r in rows:
        splits.setdefault(r["session"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    counts = manifest["counts"]
    assert counts["samples"] == index.num_rows
    window_rejects = sum(1 for r in rejects.to_pylist() if r["key"] is not None and r["modality"] is None)
    assert counts["windows_planned"] == index.num_rows + window_rejects
    assert counts["windows_planned"] == 4 * 3  # 6 s sessions, 2 s clips
    assert manifest["validation"]["status"] == "not_run" and manifest["layout"] == "captures"
    # open_clip's WebDataset trainer needs jpg + txt in every sample
    assert all({"jpg", "txt", "json"} <= set(m) for m in seen.values())


def test_webdataset_reads_the_shards(beam_data):
    import webdataset as wds

    urls = [str(p) for p in sorted((beam_data / "shards").glob("train-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    index = pq.read_table(beam_data / "index.parquet").to_pylist()
    assert len(samples) == sum(1 for r in index if r["split"] == "train")
    s = samples[0]
    assert s["jpg"].ndim == 3 and isinstance(s["txt"], str) and s["json"]["key"] == s["__key__"]


def test_ray_and_rerun_are_byte_identical(raw, beam_data, tmp_path):
    ray_data = tmp_path / "ray"
    result = build(raw, ray_data, BuildConfig(shard_max_samples=2), EngineConfig("ray", num_workers=2))
    assert result.processed == 4
    assert _contract_digest(ray_data) == _contract_digest(beam_data)
    assert (ray_data / "manifest.json").read_bytes() == (beam_data / "manifest.json").read_bytes()
    again = build(raw, ray_data, BuildConfig(shard_max_samples=2), EngineConfig("local"))
    assert (again.processed, again.reused) == (0, 4)
    assert _contract_digest(ray_data) == _contract_digest(beam_data)


def test_decoder_threads_do_not_change_the_output(raw, beam_data, tmp_path):
    # Beam's 2 workers decode with one FFmpeg thread each (decode_threads); one local worker alone decodes
    # with FFmpeg's default, frame threading on every core: the same frames, so the same bytes
    assert decode_threads(2, cores=2) == 1 and decode_threads(2, cores=16) == 8 and decode_threads(1) == 0
    assert decode_threads(4, cores=2) == 1  # never 0 (which would mean every core) when units share cores
    # a long session among short ones decodes alone once they are done: it keeps FFmpeg's default threads
    assert lone_units({"long": 10, "a": 1, "b": 1}, 2) == ["long"] and lone_units({"a": 5, "b": 5}, 2) == []
    assert lone_units({"long": 10, "a": 1}, 1) == [] and lone_units({"a": 0, "b": 0}, 2) == []
    data = tmp_path / "serial"
    build(raw, data, BuildConfig(shard_max_samples=2), EngineConfig("local", num_workers=1))
    assert _contract_digest(data) == _contract_digest(beam_data)


def test_shard_byte_bound(raw, tmp_path):
    data = tmp_path / "d"
    build(raw, data, BuildConfig(shard_max_bytes=100_000), EngineConfig("local"))
    sizes = json.loads((data / "shards" / "sizes.json").read_text())
    assert max(sizes.values()) == 1  # one sample is bigger than the bound: every shard holds one
    assert sum(sizes.values()) == pq.read_table(data / "index.parquet").num_rows


def test_sigkill_then_rerun_redoes_only_unfinished_work(raw, beam_data, tmp_path):
    data = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bindset.cli", "build", str(raw), str(data), "--engine", "local", "--quiet",
           "--shard-max-samples", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    units = data / "_work" / "units"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (units.exists() and any(units.glob("*/summary.json"))):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its worker, mid-run
    proc.wait()
    done_before = sorted(p.parent.name for p in units.glob("*/summary.json"))
    assert 1 <= len(done_before) < 4
    assert not (data / "manifest.json").exists()
    result = build(raw, data, BuildConfig(shard_max_samples=2), EngineConfig("local"))
    assert result.reused == len(done_before)
    assert sorted(set(result.processed_units) | set(done_before)) == sorted(p.name for p in units.iterdir())
    assert not set(result.processed_units) & set(done_before)
    log = [json.loads(line) for line in (data / "_work" / "builds.jsonl").read_text().splitlines()]
    assert log[-1]["processed"] == 4 - len(done_before)
    assert _contract_digest(data) == _contract_digest(beam_data)


def test_incremental_adds_only_the_new_session(raw, tmp_path):
    src = tmp_path / "raw"
    shutil.copytree(raw, src)
    data = tmp_path / "data"
    first = build(src, data, BuildConfig(), EngineConfig("local"))
    synth(src, SynthConfig(sessions=1, seed=9, **SMALL))
    second = build(src, data, BuildConfig(), EngineConfig("local"))
    assert second.processed_units == ["s009_000"] and second.reused == first.units
    assert second.commit.samples == first.commit.samples + 3
    # a removed session leaves the dataset, and nothing else is redone
    shutil.rmtree(src / "s009_000")
    third = build(src, data, BuildConfig(), EngineConfig("local"))
    assert third.processed == 0 and third.commit.samples == first.commit.samples


@pytest.mark.parametrize("layout", ["videos", "ego4d", "sunrgbd", "llvip"])
def test_every_layout_builds_with_auto_detection(tmp_path, layout, capsys):
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=2, seed=5, layout=layout, **SMALL))
    data = tmp_path / "data"
    assert main(["build", str(raw), str(data), "--engine", "local", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"layout {layout} (detected)" in out
    index = pq.read_table(data / "index.parquet").to_pylist()
    expected = {"videos": 6, "ego4d": 6, "sunrgbd": 6, "llvip": 6}[layout]
    assert len(index) == expected
    member = {"videos": "has_audio", "ego4d": "has_imu", "sunrgbd": "has_depth", "llvip": "has_thermal"}[layout]
    assert any(r[member] for r in index)
    if layout == "llvip":
        assert {r["split"] for r in index} == {"train", "val"}  # LLVIP's own train/test folders
    if layout == "sunrgbd":
        assert all(r["caption"] for r in index)


def test_mixed_or_unknown_input_names_the_offending_path(tmp_path, raw):
    # a stray beside a clearly detected layout is a reject naming it, not a whole-build error
    mixed = tmp_path / "mixed"
    shutil.copytree(raw, mixed)
    (mixed / "stray.mp4").write_bytes(b"x")
    assert detect_layout(mixed) == "captures"
    found = discover(mixed)
    assert [(r.source, r.reason) for r in found.rejects] == [("stray.mp4", RejectReason.UNUSED_FILE)]
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "notes.docx").write_text("?")
    with pytest.raises(LayoutError, match="notes.docx"):
        detect_layout(unknown)
    assert main(["build", str(unknown), str(tmp_path / "out"), "--engine", "local"]) == 2
