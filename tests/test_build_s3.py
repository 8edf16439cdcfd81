"""`bindset build RAW s3://bucket/prefix --engine local` against a real S3 API server (moto, 127.0.0.1):
the object-store commit protocol of issue 17 (units uploaded summary last, shards copied server-side,
manifest.json last), the lease-object build lock, byte identity with a local build, reuse of finished
units, resume after SIGKILL, and nothing written to a local DATA path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bindset.cli import main
from bindset.synth.generate import SynthConfig, synth
from pipelines import lock_remote, storage
from pipelines.build import EngineConfig, build
from pipelines.lock import BuildLocked
from pipelines.work import FAULT_ENV
from transforms.config import BuildConfig
from transforms.grouping import plan_units
from transforms.layouts import discover

#: 5 inputs of 4 s: units of 1-3 inputs, shards of 2 samples across inputs
FLAGS = ["--unit-min-count", "2", "--unit-windows", "2", "--shard-max-samples", "2"]
CFG = BuildConfig(unit_min_count=2, unit_windows=2, shard_max_samples=2)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3build-raw")
    synth(root, SynthConfig(sessions=5, seed=3, seconds=4.0, width=64, height=48, workers=1, layout="videos"))
    return root


@pytest.fixture(scope="module")
def local_build(videos, tmp_path_factory) -> Path:
    """The reference: the same RAW built into a local DATA."""
    data = tmp_path_factory.mktemp("s3build-local") / "data"
    build(videos, data, CFG, EngineConfig("local"))
    return data


def _objects(url: str) -> dict[str, bytes]:
    """Every committed object under a dataset URL (not _work/), by its name relative to the URL."""
    loc = storage.location(url)
    fs = storage.filesystem(loc.scheme)
    out = {}
    for path in fs.find(loc.path):
        rel = path[len(loc.path) + 1 :]
        if not rel.startswith("_work/"):
            out[rel] = fs.cat_file(path)
    return out


def _local_files(data: Path) -> dict[str, bytes]:
    return {p.relative_to(data).as_posix(): p.read_bytes() for p in sorted(data.rglob("*"))
            if p.is_file() and p.relative_to(data).parts[0] not in ("_work", "quality")}  # fmt: skip


def _no_local_data(bucket: str, cwd: Path) -> None:
    """No folder named like the bucket (or an ``s3:`` folder) appeared in the cwd or the system temp."""
    assert not any(cwd.iterdir()), sorted(p.name for p in cwd.iterdir())
    tmp = Path(tempfile.gettempdir())
    assert not [p for p in tmp.iterdir() if bucket in p.name or p.name.startswith("s3:")]


def test_s3_build_is_byte_identical_and_a_rerun_reuses_every_unit(videos, local_build, s3_bucket, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = f"{s3_bucket.url}/ds"
    units_before = set(Path(tempfile.gettempdir()).glob("bindset-unit-*"))
    first = build(videos, url, CFG, EngineConfig("local"))
    assert first.units > 2 and first.processed == first.units and first.reused == 0

    remote, local = _objects(url), _local_files(local_build)
    assert sorted(remote) == sorted(local)  # every shard, sizes.json, index, rejects, sync.parquet, manifest
    shards = [n for n in local if n.startswith("shards/") and n.endswith(".tar")]
    assert len(shards) >= 3 and "manifest.json" in remote and "index.parquet" in remote
    for name in local:
        assert remote[name] == local[name], name  # byte-identical, the manifest included
    # the lease is released, the units are there, each with its summary, and no local staging is left
    fs = storage.filesystem("s3")
    assert not fs.exists(f"{s3_bucket.name}/ds/_work/build.lock")
    assert len(fs.glob(f"{s3_bucket.name}/ds/_work/units/*/summary.json")) == first.units
    assert set(Path(tempfile.gettempdir()).glob("bindset-unit-*")) <= units_before
    _no_local_data(s3_bucket.name, cwd)

    again = build(videos, url, CFG, EngineConfig("local"))
    assert again.processed == 0 and again.reused == first.units and again.processed_units == []
    assert _objects(url) == remote
    log = storage.read_text(storage.location(url) / "_work" / "builds.jsonl").splitlines()
    assert [json.loads(line)["processed"] for line in log] == [first.units, 0]

    # the quality gate reads the result through s3:// and passes, as on the local copy
    assert main(["validate", url, "--log-file", str(tmp_path / "v.log")]) == 0
    verdict = json.loads(storage.read_bytes(storage.location(url) / "manifest.json"))["validation"]
    assert verdict["status"] == "passed"
    _no_local_data(s3_bucket.name, cwd)


def test_orphan_shards_are_deleted_after_the_manifest(videos, local_build, s3_bucket):
    url = f"{s3_bucket.url}/ds"
    stale = storage.location(url) / "shards" / "train-999999.tar"
    storage.put_atomic(stale, b"a shard of an older build")
    build(videos, url, CFG, EngineConfig("local"))
    assert not storage.exists(stale)
    assert _objects(url) == _local_files(local_build)


@pytest.mark.slow
def test_beam_multi_processing_builds_from_and_into_s3(videos, local_build, s3_bucket, tmp_path, monkeypatch):
    """Beam's DirectRunner with worker processes (they share nothing with the driver but the environment they
    inherit), RAW and DATA on s3://: every unit read and uploaded by a Beam worker, the commit by the driver,
    bytes as a local build's (the manifest's unit fingerprints hold ETags here, mtimes there)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    raw = storage.location(f"{s3_bucket.url}/raw")
    for p in sorted(videos.rglob("*")):
        if p.is_file():
            storage.upload(p, raw / p.relative_to(videos).as_posix())
    url = f"{s3_bucket.url}/ds"
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    out = build(str(raw), url, CFG, EngineConfig("beam", pipeline_args=args))
    assert out.units > 2 and out.processed == out.units
    remote, local = _objects(url), _local_files(local_build)
    assert sorted(remote) == sorted(local)
    for name in local:
        if name != "manifest.json":
            assert remote[name] == local[name], name
    got, want = (json.loads(m["manifest.json"]) for m in (remote, local))
    assert sorted(got.pop("inputs")) == sorted(want.pop("inputs"))  # the same units
    got.pop("version"), want.pop("version")
    assert got == want
    assert not storage.filesystem("s3").exists(f"{s3_bucket.name}/ds/_work/build.lock")
    _no_local_data(s3_bucket.name, cwd)


def test_lease_lock_refuses_a_live_holder_and_takes_over_a_stale_one(s3_bucket, monkeypatch):
    data = storage.location(f"{s3_bucket.url}/ds")
    with lock_remote.ObjectBuildLock(data) as held:
        assert lock_remote.build_alive(data, held.build_id)
        # a second build of this host while the holder lives: exit 2, naming the holder
        with pytest.raises(BuildLocked, match=f"pid {os.getpid()}, build {held.build_id}"):
            lock_remote.ObjectBuildLock(data).__enter__()
    assert not storage.exists(lock_remote.lock_location(data))  # released
    # a holder on another host: live while its lease is fresh, taken over once it is older than LEASE_S
    other = {"build_id": "b0", "host": "elsewhere", "pid": 1, "pid_start": "1", "since": time.time()}
    storage.put_atomic(lock_remote.lock_location(data), json.dumps(other).encode())
    with pytest.raises(BuildLocked, match="host elsewhere, pid 1, build b0"):
        lock_remote.ObjectBuildLock(data).__enter__()
    monkeypatch.setattr(lock_remote, "LEASE_S", 1.0)
    time.sleep(2.2)  # LastModified has a 1 s resolution
    with lock_remote.ObjectBuildLock(data) as taken:
        holder = json.loads(storage.read_bytes(lock_remote.lock_location(data)))
        assert holder["build_id"] == taken.build_id and not lock_remote.build_alive(data, "b0")


def test_sigkill_then_resume_on_s3_redoes_only_the_unfinished_units(videos, local_build, s3_bucket, tmp_path):
    """A CLI build into s3:// killed (SIGKILL, process group) inside a unit of several inputs: the rerun takes
    over the dead build's lease at once (its pid is gone), redoes that unit and the ones after it, reuses the
    finished ones (from their summaries on S3), and ends byte-identical to the local build."""
    sigkill_then_resume(videos, local_build, s3_bucket, tmp_path)


def sigkill_then_resume(videos: Path, local_build: Path, bucket, tmp_path: Path) -> str:
    """Kill (SIGKILL, process group) a CLI build into ``bucket`` (the moto or GCS emulator fixture) inside a unit
    of several inputs, check nothing was committed and the dead build's lease is left, resume it, and check that
    only that unit and the ones after it were redone and the objects equal the local build's. Returns DATA's URL
    (also tests/test_gcs_more.py)."""
    plan = plan_units(discover(videos, "videos").units, {p.name: p.stat().st_size for p in videos.glob("*.mp4")},
                      CFG)  # fmt: skip
    k = next(i for i, u in enumerate(plan) if i >= 1 and len(u.inputs) > 1)
    stuck = plan[k].inputs[-1].unit_id  # the unit's first inputs decode, then its last one hangs
    url = f"{bucket.url}/ds"
    fs = storage.filesystem(storage.location(url).scheme)
    first = subprocess.Popen([sys.executable, "-m", "bindset.cli", "build", str(videos), url, "--engine", "local",
                              "--quiet", "--no-validate", "--log-file", str(tmp_path / "first.log"), *FLAGS,
                              "--workers", "1"],  # one decode worker: the units after the stuck one wait
                             start_new_session=True, env={**os.environ, FAULT_ENV: f"hang:{stuck}.mp4"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    done = [f"{bucket.name}/ds/_work/units/{u.unit_id}/summary.json" for u in plan[:k]]
    deadline = time.monotonic() + 240
    try:
        while not all(fs.exists(p) for p in done):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first build never got to the hanging unit"
            time.sleep(0.2)
        time.sleep(1.0)  # inside the hanging unit now
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not fs.exists(f"{bucket.name}/ds/_work/units/{plan[k].unit_id}/summary.json")
    assert not fs.exists(f"{bucket.name}/ds/manifest.json")  # never committed
    assert fs.exists(f"{bucket.name}/ds/_work/build.lock")  # the dead build's lease is left behind

    resumed = build(videos, url, CFG, EngineConfig("local"))
    assert resumed.processed_units == sorted(u.unit_id for u in plan[k:])
    assert resumed.reused == k
    local = _local_files(local_build)
    remote = _objects(url)
    assert sorted(remote) == sorted(local)
    for name in local:
        assert remote[name] == local[name], name
    return url


def test_a_unit_folder_is_replaced_as_a_whole_summary_last(s3_bucket, tmp_path):
    """``upload_unit`` over an older result: the older summary goes first, objects the new result lacks go,
    the new summary.json is written last (a unit is done only when its summary is there)."""
    from pipelines.work import upload_unit

    final = storage.location(f"{s3_bucket.url}/ds/_work/units/u1")
    storage.put_atomic(final / "summary.json", b'{"old": true}\n')
    storage.put_atomic(final / "train-000003.tar", b"a part of the older result")
    new = tmp_path / "u1"
    new.mkdir()
    (new / "train-000000.tar").write_bytes(b"new part")
    (new / "index.parquet").write_bytes(b"new index")
    (new / "summary.json").write_bytes(b'{"new": true}\n')
    upload_unit(new, final)
    assert storage.listdir(final) == ["index.parquet", "summary.json", "train-000000.tar"]
    assert storage.read_bytes(final / "summary.json") == b'{"new": true}\n'
    times = {n: storage.stat(final / n).modified for n in storage.listdir(final)}
    assert times["summary.json"] >= max(times.values())
    (new / "summary.json").unlink()
    with pytest.raises(ValueError, match="not a finished unit"):
        upload_unit(new, final)
