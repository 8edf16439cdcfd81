"""RAW on object storage: `bindset build s3://bucket/raw DATA` and `bindset sync s3://bucket/raw` against the moto
S3 server (tests/s3server.py). A synthetic captures RAW (video + audio, depth and thermal frames, IMU CSVs,
manifests; plus a truncated video, a folder without a manifest and a stray file) is built from the local copy
and from its upload: the outputs are the same bytes. Incremental builds redo only the unit of an added or
rewritten object, and a missing bucket or prefix is one line naming the URL."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bindset.cli import main
from bindset.synth.generate import SynthConfig, synth
from pipelines import storage
from pipelines.build import EngineConfig, build, refuse_cluster_with_local_paths
from pipelines.raw_source import RemoteRaw, discover_remote
from pipelines.sync import sync_raw
from schemas.errors import UserError
from transforms.config import BuildConfig
from transforms.layouts import discover

CFG = BuildConfig(shard_max_samples=2)
#: what a build writes that must be the same bytes whether RAW was local or on S3
OUTPUTS = ("index.parquet", "rejects.parquet", "sync.parquet", "shards/sizes.json")


def _synth(root: Path, sessions: int, seed: int) -> Path:
    synth(root, SynthConfig(sessions=sessions, seed=seed, seconds=4.0, width=64, height=48, depth_size=(32, 24),
                            thermal_size=(32, 24), workers=1, layout="captures"))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> Path:
    """3 sessions, one of them with its video cut in half (a truncated object), a folder with no manifest and a
    stray top-level file: every kind of reject a listing and a decode give."""
    root = _synth(tmp_path_factory.mktemp("rawS3") / "raw", sessions=3, seed=5)
    sessions = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    video = next(p for p in sorted(sessions[1].iterdir()) if p.suffix == ".mp4")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    (root / "no_manifest").mkdir()
    (root / "no_manifest" / "clip.bin").write_bytes(b"\0" * 10)
    (root / "README.txt").write_text("notes\n")
    return root


def _upload(root: Path, url: str) -> None:
    fs = storage.filesystem("s3")
    loc = storage.location(url)
    fs.put(str(root) + "/", loc.path + "/", recursive=True)


def _outputs(data: Path) -> dict[str, bytes]:
    shards = sorted((data / "shards").glob("*.tar"))
    out = {f"shards/{p.name}": p.read_bytes() for p in shards}
    out.update({name: (data / name).read_bytes() for name in OUTPUTS})
    return out


def _manifest(data: Path) -> dict:
    """manifest.json less what records each input file's change token (mtime on a disk, ETag on a store):
    the unit fingerprints under "inputs" and the version id made from them."""
    m = json.loads((data / "manifest.json").read_text())
    inputs = m.pop("inputs")
    m.pop("version")
    return {**m, "inputs": sorted(inputs)}


def _log(data: Path) -> list[dict]:
    return [json.loads(x) for x in (data / "_work" / "builds.jsonl").read_text().splitlines()]


def test_build_from_s3_equals_a_build_from_the_local_copy(captures, s3_bucket, tmp_path):
    raw_url = f"{s3_bucket.url}/raw"
    _upload(captures, raw_url)
    local = build(captures, tmp_path / "local", CFG, EngineConfig("local"))
    remote = build(raw_url, tmp_path / "remote", CFG, EngineConfig("local"))
    assert remote.layout == local.layout == "captures" and remote.units == local.units == 3
    a, b = _outputs(tmp_path / "local"), _outputs(tmp_path / "remote")
    assert sorted(a) == sorted(b) and len([n for n in a if n.endswith(".tar")]) >= 2
    for name in a:
        assert a[name] == b[name], name
    assert _manifest(tmp_path / "local") == _manifest(tmp_path / "remote")
    # every file is in a shard or a reject: the truncated video, the manifest-less folder, the stray file
    rejects = pq.read_table(tmp_path / "remote" / "rejects.parquet").to_pylist()
    by_source = {r["source"]: r["reason"] for r in rejects if r["key"] is None}
    assert by_source["no_manifest"] == "manifest_invalid" and by_source["README.txt"] == "unused_file"
    cut = [r for r in rejects if r["reason"] == "truncated_media"]
    assert len(cut) == 1 and cut[0]["source"].endswith("/video.mp4") and "/tmp" not in cut[0]["detail"], cut
    # the rerun reads one listing and reuses every unit
    again = build(raw_url, tmp_path / "remote", CFG, EngineConfig("local"))
    assert again.processed == 0 and again.reused == 3
    assert _outputs(tmp_path / "remote") == b


def test_discovery_lists_once_and_fingerprints_agree_with_a_workers_stats(captures, s3_bucket):
    raw_url = f"{s3_bucket.url}/raw"
    _upload(captures, raw_url)
    remote = RemoteRaw(raw_url)
    found, objects = discover_remote(remote, "auto")
    here = discover(captures)
    assert [u.unit_id for u in found.units] == [u.unit_id for u in here.units]
    assert found.units == here.units and found.rejects == here.rejects
    stats = remote.stats_from(objects)
    for unit in found.units:  # the driver's listing and a worker's HEADs describe the same objects alike
        paths = unit.input_paths()
        assert [e for p in paths for e in stats(p)] == remote.stats(paths)
        assert all(e[2].startswith("etag:") for p in paths for e in stats(p) if e[1] is not None)


@pytest.mark.parametrize("layout", ["videos", "ego4d", "sunrgbd", "llvip"])
def test_every_layout_is_discovered_from_s3_as_from_a_local_copy(layout, s3_bucket, tmp_path):
    """Units, session keys, captions/intrinsics read by discovery and input rejects, from one listing."""
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=2, seed=2, seconds=2.0, width=32, height=24, depth_size=(16, 12),
                           thermal_size=(16, 12), workers=1, layout=layout))  # fmt: skip
    (raw / "misc").mkdir()
    (raw / "misc" / "stray.bin").write_bytes(b"x")
    _upload(raw, f"{s3_bucket.url}/{layout}")
    found, _ = discover_remote(RemoteRaw(f"{s3_bucket.url}/{layout}"), "auto")
    here = discover(raw)
    assert found.layout == here.layout == layout and found.units and found.units == here.units
    assert found.rejects == here.rejects and any(r.source == "misc/stray.bin" for r in found.rejects)


def test_a_stills_layout_builds_from_s3_byte_identical(s3_bucket, tmp_path):
    """SUN RGB-D pairs: many small files per input, staged together."""
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=3, seed=4, seconds=2.0, width=48, height=32, depth_size=(24, 16),
                           workers=1, layout="sunrgbd"))  # fmt: skip
    _upload(raw, f"{s3_bucket.url}/sun")
    build(raw, tmp_path / "local", CFG, EngineConfig("local"))
    build(f"{s3_bucket.url}/sun", tmp_path / "remote", CFG, EngineConfig("local"))
    a, b = _outputs(tmp_path / "local"), _outputs(tmp_path / "remote")
    assert a == b and any(n.endswith(".tar") for n in a)
    assert _manifest(tmp_path / "local") == _manifest(tmp_path / "remote")


def test_incremental_an_added_or_rewritten_object_redoes_only_its_unit(captures, s3_bucket, tmp_path):
    raw_url = f"{s3_bucket.url}/raw"
    _upload(captures, raw_url)
    data = tmp_path / "data"
    first = build(raw_url, data, CFG, EngineConfig("local"))
    # a new session: synthesised with another seed, uploaded under a name of its own
    extra = _synth(tmp_path / "extra", sessions=1, seed=11)
    session = next(p for p in extra.iterdir() if p.is_dir() and not p.name.startswith("_"))
    manifest = json.loads((session / "manifest.json").read_text())
    manifest["session_id"] = "zz_added"
    (session / "manifest.json").write_text(json.dumps(manifest))
    _upload(session, f"{raw_url}/zz_added")
    second = build(raw_url, data, CFG, EngineConfig("local"))
    assert second.units == first.units + 1 and second.processed_units == ["zz_added"]
    # one object rewritten (an IMU CSV, one byte changed in place: same size, new ETag): its unit only
    fs = storage.filesystem("s3")
    imu = sorted(k for k in fs.find(storage.location(raw_url).path) if k.endswith(".csv") and "/imu" in k)[0]
    body = bytearray(fs.cat_file(imu))
    body[-2] = ord("1") if body[-2] != ord("1") else ord("2")
    fs.pipe_file(imu, bytes(body))
    unit_of_imu = next(u.unit_id for u in discover(captures).units
                       if any(imu.endswith("/" + p) for p in u.input_paths()))  # fmt: skip
    third = build(raw_url, data, CFG, EngineConfig("local"))
    assert third.processed_units == [unit_of_imu]
    assert [e["processed"] for e in _log(data)] == [first.units, 1, 1]


def test_an_object_that_cannot_be_read_is_an_io_error_reject_naming_its_url(captures, s3_bucket, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    """An archived object (S3 GLACIER storage class: listed and HEAD-able, but a GET is refused until it is
    restored): its input is one transient io_error reject naming the URL; the other units are built."""
    scratch = tmp_path / "system-temp"  # this test's own temp folder: the scratch copies go there
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    raw_url = f"{s3_bucket.url}/raw"
    _upload(captures, raw_url)
    fs = storage.filesystem("s3")
    imu = sorted(k for k in fs.find(storage.location(raw_url).path) if k.endswith(".csv") and "/imu" in k)[0]
    fs.pipe_file(imu, fs.cat_file(imu), StorageClass="GLACIER")
    result = build(raw_url, tmp_path / "data", CFG, EngineConfig("local"))
    rel = imu[len(storage.location(raw_url).path) + 1 :]
    rejects = pq.read_table(tmp_path / "data" / "rejects.parquet").to_pylist()
    bad = [r for r in rejects if r["reason"] == "io_error"]
    assert [(r["source"], r["key"]) for r in bad] == [(rel, None)] and f"s3://{imu}" in bad[0]["detail"]
    assert result.commit.samples > 0 and result.units == 3
    assert not list(scratch.glob("bindset-raw-*"))  # every scratch copy removed
    # transient: the next build runs that unit again (the object is restored meanwhile, same bytes and ETag)
    fs.pipe_file(imu, (captures / rel).read_bytes())
    again = build(raw_url, tmp_path / "data", CFG, EngineConfig("local"))
    assert again.processed_units == [rel.split("/")[0]] and "io_error" not in again.commit.reasons


def test_a_missing_bucket_or_prefix_is_one_line_naming_the_url(s3_bucket, tmp_path, capsys):
    for url in (f"{s3_bucket.url}/nothing-here", "s3://bindset-no-such-bucket-7f3a/raw"):
        code = main(["build", url, str(tmp_path / "data"), "--engine", "local", "--quiet",
                     "--log-file", str(tmp_path / "b.log")])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and url in err, err
        assert not (tmp_path / "data").exists()  # refused before the lock or any folder
        code = main(["sync", url, "--out", str(tmp_path / "s.parquet"), "--log-file", str(tmp_path / "s.log")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and url in err, err
    assert "no such bucket" in err


def test_a_url_raw_is_fine_for_a_cluster_a_local_one_is_not(tmp_path):
    remote = EngineConfig("ray", ray_address="ray://10.1.2.3:10001")
    refuse_cluster_with_local_paths("s3://b/raw", "s3://b/data", remote)  # nothing to refuse
    with pytest.raises(UserError, match="local RAW"):
        refuse_cluster_with_local_paths(tmp_path, "s3://b/data", remote)
    with pytest.raises(UserError, match="local DATA"):
        refuse_cluster_with_local_paths("s3://b/raw", tmp_path, remote)
    dataflow = EngineConfig("beam", ["--runner=DataflowRunner"])
    refuse_cluster_with_local_paths("s3://b/raw", "s3://b/data", dataflow)
    with pytest.raises(UserError, match=f"--runner=DataflowRunner with a local RAW {tmp_path}: .* cannot read"):
        refuse_cluster_with_local_paths(tmp_path, "s3://b/data", dataflow)


def test_sync_reads_raw_from_s3_like_a_local_raw(captures, s3_bucket, tmp_path):
    raw_url = f"{s3_bucket.url}/raw"
    _upload(captures, raw_url)
    here = sync_raw(captures, "captures", out=tmp_path / "here.parquet", write_manifest=tmp_path / "fixed_here")
    there = sync_raw(raw_url, "captures", out=tmp_path / "there.parquet", write_manifest=tmp_path / "fixed")
    assert there.sessions == here.sessions == 3 and there.rows == here.rows and len(here.rows) >= 6
    assert (tmp_path / "here.parquet").read_bytes() == (tmp_path / "there.parquet").read_bytes()
    written = {p.parent.name: p.read_bytes() for p in (tmp_path / "fixed").glob("*/manifest.json")}
    assert len(written) == 3
    assert written == {p.parent.name: p.read_bytes() for p in (tmp_path / "fixed_here").glob("*/manifest.json")}


@pytest.mark.slow
def test_ray_builds_from_s3_raw_into_s3_data_like_a_local_build(captures, s3_bucket, tmp_path):
    raw_url, data_url = f"{s3_bucket.url}/raw", f"{s3_bucket.url}/ds"
    _upload(captures, raw_url)
    build(captures, tmp_path / "local", CFG, EngineConfig("local"))
    result = build(raw_url, data_url, CFG, EngineConfig("ray", num_workers=1))
    assert result.processed == result.units == 3
    fs = storage.filesystem("s3")
    for name, data in _outputs(tmp_path / "local").items():
        assert fs.cat_file(f"{s3_bucket.name}/ds/{name}") == data, name
    shutil.rmtree(tmp_path / "local")
