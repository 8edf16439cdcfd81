"""`bindset build RAW gs://bucket/prefix --engine local` against a GCS emulator (gcp-storage-emulator, 127.0.0.1;
tests/gcsserver.py), mirroring tests/test_build_s3.py: the object-store commit (manifest.json last), bytes
identical to a local build, a rerun that reuses every unit, validate's verdict written into the manifest
(``ifGenerationMatch`` on the generation read), and the lease object: a second build while its holder lives
exits 2 naming it, a lease whose holder is dead or silent is taken over.

The emulator ignores preconditions, so what these tests show of the lease is its protocol (HEAD, PUT, read-back,
heartbeat, release); the atomic race on real GCS rests on GCS's preconditions (tests/test_storage_gcs.py checks
the requests carry them, on an emulator made to honour them)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

from bindset.cli import main
from pipelines import lock_remote, storage
from pipelines.build import EngineConfig, build
from tests.test_build_s3 import CFG, FLAGS, _local_files, _no_local_data, local_build, videos  # noqa: F401


def _objects(url: str) -> dict[str, bytes]:
    """Every committed object under a dataset URL (not _work/, not quality/), by its name relative to the URL."""
    loc = storage.location(url)
    fs = storage.filesystem("gs")
    return {p[len(loc.path) + 1 :]: fs.cat_file(p) for p in fs.find(loc.path)
            if not p[len(loc.path) + 1 :].startswith(("_work/", "quality/"))}  # fmt: skip


def test_objects_keep_their_bytes_whatever_they_end_with(gcs_bucket, tmp_path):
    """An object's bytes come back as written, a last CR or LF included (the emulator's own multipart parser
    dropped a trailing CR: tests/gcsserver.py), through upload (a file) and put_atomic (bytes)."""
    for i, tail in enumerate((b"\r", b"\n", b"\r\n", b"\n\r", b"--", b"")):
        data = os.urandom(1000) + tail
        src = tmp_path / f"obj{i}"
        src.write_bytes(data)
        storage.upload(src, storage.location(f"{gcs_bucket.url}/o/file{i}"))
        storage.put_atomic(storage.location(f"{gcs_bucket.url}/o/bytes{i}"), data)
        assert storage.read_bytes(f"{gcs_bucket.url}/o/file{i}") == data, tail
        assert storage.read_bytes(f"{gcs_bucket.url}/o/bytes{i}") == data, tail


def _holder(host: str, pid: int, build_id: str) -> bytes:
    return json.dumps({"build_id": build_id, "host": host, "pid": pid, "pid_start": "1", "since": time.time()}).encode()


def test_gcs_build_is_byte_identical_and_a_rerun_reuses_every_unit(videos, local_build, gcs_bucket, tmp_path,  # noqa: F811
                                                                   monkeypatch):  # fmt: skip
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = f"{gcs_bucket.url}/ds"
    first = build(videos, url, CFG, EngineConfig("local"))
    assert first.units > 2 and first.processed == first.units and first.reused == 0

    remote, local = _objects(url), _local_files(local_build)
    assert sorted(remote) == sorted(local)  # every shard, sizes.json, index, rejects, sync.parquet, manifest
    assert len([n for n in local if n.startswith("shards/") and n.endswith(".tar")]) >= 3
    for name in local:
        assert remote[name] == local[name], name  # byte-identical, the manifest included (local RAW in both)
    fs = storage.filesystem("gs")
    assert not fs.exists(f"{gcs_bucket.name}/ds/{lock_remote.LOCK_NAME}")  # the lease is released
    assert len(fs.glob(f"{gcs_bucket.name}/ds/_work/units/*/summary.json")) == first.units
    _no_local_data(gcs_bucket.name, cwd)

    again = build(videos, url, CFG, EngineConfig("local"))
    assert again.processed == 0 and again.reused == first.units and again.processed_units == []
    assert _objects(url) == remote
    log = storage.read_text(storage.location(url) / "_work" / "builds.jsonl").splitlines()
    assert [json.loads(line)["processed"] for line in log] == [first.units, 0]

    # validate reads the dataset through gs:// and writes its verdict into the manifest version it validated
    before = storage.version(storage.location(url) / "manifest.json")[0]
    assert main(["validate", url, "--log-file", str(tmp_path / "v.log")]) == 0
    body, after = storage.read_versioned(storage.location(url) / "manifest.json")
    verdict = json.loads(body)["validation"]
    assert verdict["status"] == "passed" and after != before
    got, want = json.loads(body), json.loads(local["manifest.json"])
    assert want.pop("validation")["status"] == "not_run" and got.pop("validation") == verdict and got == want
    _no_local_data(gcs_bucket.name, cwd)


def test_a_second_build_into_gcs_exits_2_and_a_dead_holders_lease_is_taken_over(videos, local_build, gcs_bucket,  # noqa: F811
                                                                                 tmp_path, monkeypatch, capsys,
                                                                                 caplog):  # fmt: skip
    url = f"{gcs_bucket.url}/ds"
    data = storage.location(url)
    lock = lock_remote.lock_location(data)
    cli = ["build", str(videos), url, "--engine", "local", "--quiet", "--no-validate", *FLAGS]
    # a live holder of this host: a second build exits 2 at once, naming it, and writes nothing
    with lock_remote.ObjectBuildLock(data) as held:
        assert main([*cli, "--log-file", str(tmp_path / "a.log")]) == 2
        assert storage.read_bytes(lock) == held.body  # the refused build left the lease alone
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}, build {held.build_id}" in err, err
    assert not storage.exists(lock) and not storage.exists(data / "manifest.json")

    # a holder on another host with a fresh lease: refused too; once its lease is older than LEASE_S it is taken
    # over, and the build commits the local build's bytes
    storage.put_atomic(lock, _holder("elsewhere", 1, "b0"))
    assert main([*cli, "--log-file", str(tmp_path / "b.log")]) == 2
    assert "host elsewhere, pid 1, build b0" in capsys.readouterr().err
    monkeypatch.setattr(lock_remote, "LEASE_S", 1.0)
    time.sleep(1.2)
    with caplog.at_level(logging.WARNING, logger="pipelines.lock_remote"):
        out = build(videos, url, CFG, EngineConfig("local"))
    assert "took over the build lock of a build that died (host elsewhere, pid 1, build b0" in caplog.text
    assert out.processed == out.units and _objects(url) == _local_files(local_build)
    assert not storage.exists(lock)

    # a holder of this host whose process is gone (a killed build): taken over at once, whatever the lease's age
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    storage.put_atomic(lock, _holder(socket.gethostname(), gone.pid, "b2"))
    monkeypatch.setattr(lock_remote, "LEASE_S", 3600.0)
    with lock_remote.ObjectBuildLock(data) as taken:
        assert json.loads(storage.read_bytes(lock))["build_id"] == taken.build_id
        assert lock_remote.build_alive(data, taken.build_id) and not lock_remote.build_alive(data, "b2")
