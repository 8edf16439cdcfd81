"""``gs://`` through the same seam, against a GCS emulator (gcp-storage-emulator, 127.0.0.1; tests/gcsserver.py):
every storage operation, the tar reader by range, reading / validating / reporting a committed dataset with
the results of its local copy, a build from a RAW on ``gs://`` byte-identical to one from the local RAW, and the
conditional writes (``ifGenerationMatch``) that the build and embed leases and validate's verdict use: on the
emulator as it is (it ignores them: the lease's read-back is what is tested) and on the emulator made to check
them as GCS documents (``gcs_preconditions``). Builds into ``gs://``: tests/test_build_gcs.py."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from bindset.cli import main
from pipelines import lock_remote, storage
from pipelines.build import EngineConfig, build
from pipelines.dataset import open_dataset
from pipelines.lock import BuildLocked
from pipelines.storage import Location
from tests.gcsserver import gcs_preconditions  # noqa: F401 - fixture
from tests.test_build_s3 import CFG, _local_files, local_build, videos  # noqa: F401 - fixtures
from tests.test_dataset_s3 import _local_copy, _normalised, _upload, built  # noqa: F401 - fixture
from tests.test_storage_s3 import every_operation


def test_every_operation_on_gcs(gcs_bucket, tmp_path):
    every_operation(Location.parse(f"{gcs_bucket.url}/ds"), tmp_path)


def test_a_committed_dataset_on_gcs_reads_validates_and_reports_as_its_local_copy(built, gcs_bucket, tmp_path,  # noqa: F811
                                                                                   capsys):  # fmt: skip
    url = f"{gcs_bucket.url}/ds"
    remote = _upload(built, url)
    local = _local_copy(built, tmp_path / "data")
    a, b = open_dataset(url), open_dataset(local)
    assert a.manifest == b.manifest and a.index.equals(b.index) and sorted(a.shards) == sorted(b.shards)
    name = sorted(a.shards)[0]
    with storage.TarReader(remote / "shards" / name) as r, storage.TarReader(local / "shards" / name) as s:
        assert r.members() == s.members()
        assert all(r.read(m) == s.read(m) for m in r.members()[:6])

    assert main(["validate", url, "--log-file", str(tmp_path / "v.log")]) == main(["validate", str(local)]) == 0
    got = json.loads(storage.read_bytes(remote / "quality" / "validation.json"))
    want = json.loads((local / "quality" / "validation.json").read_text())
    for doc in (got, want):
        doc.pop("validated_at")
    assert got == want and got["passed"] is True
    assert json.loads(storage.read_bytes(remote / "manifest.json")) == json.loads((local / "manifest.json").read_text())
    assert main(["report", url, "--log-file", str(tmp_path / "r.log")]) == main(["report", str(local)]) == 0
    page_remote = storage.read_text(remote / "quality" / "report.html")
    page_local = (local / "quality" / "report.html").read_text()
    assert _normalised(page_remote, url) == _normalised(page_local, str(local.resolve()))
    capsys.readouterr()


def test_a_build_from_a_gcs_raw_matches_the_local_raw(videos, local_build, gcs_bucket, tmp_path):  # noqa: F811
    raw = storage.location(f"{gcs_bucket.url}/raw")
    for p in sorted(videos.rglob("*")):
        if p.is_file():
            storage.upload(p, raw / p.relative_to(videos).as_posix())
    data = tmp_path / "data"
    out = build(str(raw), data, CFG, EngineConfig("local"))
    assert out.processed == out.units > 2
    got, want = _local_files(data), _local_files(local_build)
    assert sorted(got) == sorted(want)
    for name in want:
        if name != "manifest.json":  # its unit fingerprints hold generations here, mtimes there
            assert got[name] == want[name], name
    again = build(str(raw), data, CFG, EngineConfig("local"))
    assert again.processed == 0 and again.reused == out.units


def test_conditional_writes_on_the_emulator_as_it_is(gcs_bucket, monkeypatch):
    """The emulator ignores ``ifGenerationMatch`` (if a later version checks it, the first branch says so): a
    create-only PUT over a lease replaces it there, and the lease's read-back is what sees the overwrite."""
    obj = Location.parse(f"{gcs_bucket.url}/ds/a.json")
    first = storage.put_conditional(obj, b"one", "")
    assert first.isdigit() and storage.version(obj)[0] == first  # the generation
    assert storage.read_versioned(obj) == (b"one", first)
    try:
        storage.put_conditional(obj, b"two", "")
    except FileExistsError:
        assert storage.read_bytes(obj) == b"one"  # an emulator that checks the precondition
    else:
        assert storage.read_bytes(obj) == b"two" and storage.version(obj)[0] != first

    data = Location.parse(f"{gcs_bucket.url}/ds")
    lock = lock_remote.lock_location(data)
    intruder = json.dumps({"build_id": "b1", "host": "elsewhere", "pid": 1, "pid_start": "1", "since": time.time()})
    # 1. a concurrent taker's create-only PUT lands between this build's PUT and its read-back: the build stops
    #    with the lock's error naming the taker (on real GCS the taker's PUT fails with 412 instead)
    real_put = storage.put_conditional

    def racing_put(loc, body, version):
        out = real_put(loc, body, version)
        with contextlib.suppress(FileExistsError):
            real_put(loc, intruder.encode(), "")
        return out

    with monkeypatch.context() as patched, pytest.raises(BuildLocked, match="host elsewhere, pid 1, build b1"):
        patched.setattr(storage, "put_conditional", racing_put)
        lock_remote.ObjectBuildLock(data).__enter__()
    storage.delete(lock)
    # 2. a taker overwrites a held lease after its read-back: the holder's next heartbeat sees another id and stops
    #    renewing, its workers stop writing, and the driver refuses to commit
    with lock_remote.ObjectBuildLock(data) as held:
        assert held._renew() and lock_remote.build_alive(data, held.build_id)
        storage.put_atomic(lock, intruder.encode())
        assert not held._renew()
        assert storage.read_bytes(lock) == intruder.encode()  # the renewal did not overwrite the taker
        lock_remote._ALIVE.clear()
        assert not lock_remote.build_alive(data, held.build_id)
        with pytest.raises(BuildLocked, match="lost its build lock.*build b1"):
            lock_remote.require_held(data, held.build_id)
    assert storage.read_bytes(lock) == intruder.encode()  # not released: it is not this build's
    # 3. EMB's lease: the embed checks it still holds it before meta.json (its commit point)
    from training.emb_store import EmbLease

    emb = data / "emb"
    with EmbLease(emb) as lease:
        lease.require_held()
        storage.put_atomic(lease.loc, intruder.encode())
        with pytest.raises(BuildLocked, match="this run lost its lock.*build b1"):
            lease.require_held()


def test_conditional_writes_with_preconditions_checked(gcs_preconditions, monkeypatch):  # noqa: F811
    """With the emulator checking ``ifGenerationMatch`` as GCS documents: create-only refuses an existing object
    (bindset's PUT and gcsfs's ``mode="create"``), a PUT on a stale or vanished generation is refused (412 ->
    ``FileExistsError`` / False), and two builds racing for the lease: the one whose create fails sees the other."""
    obj = Location.parse(f"{gcs_preconditions.url}/ds/manifest.json")
    gen = storage.put_conditional(obj, b'{"version": 1}\n', "")
    with pytest.raises(FileExistsError):
        storage.put_conditional(obj, b"other", "")
    with pytest.raises(FileExistsError):
        storage.filesystem("gs").pipe_file(obj.path, b"other", mode="create")
    assert storage.read_versioned(obj) == (b'{"version": 1}\n', gen)
    assert storage.put_if_unchanged(obj, b'{"version": 1, "validation": "a"}\n', gen)
    assert not storage.put_if_unchanged(obj, b'{"version": 1, "validation": "b"}\n', gen)  # stale generation
    _, newer = storage.read_versioned(obj)
    storage.put_atomic(obj, b'{"version": 2}\n')  # a commit lands between the read and the PUT
    assert not storage.put_if_unchanged(obj, b'{"version": 1, "validation": "c"}\n', newer)
    assert storage.read_bytes(obj) == b'{"version": 2}\n'
    storage.delete(obj)
    assert not storage.put_if_unchanged(obj, b"d", newer) and not storage.exists(obj)

    data = Location.parse(f"{gcs_preconditions.url}/ds")
    with lock_remote.ObjectBuildLock(data) as held:
        # a second build whose HEAD saw no lock (it came just before the first one's create): its create gets
        # 412, it reads the lock that won and stops, naming the holder
        real_head, calls = lock_remote._head, []

        def late_head(loc):
            calls.append(loc)
            return None if len(calls) == 1 else real_head(loc)

        with monkeypatch.context() as patched, pytest.raises(BuildLocked, match=f"build {held.build_id}"):
            patched.setattr(lock_remote, "_head", late_head)
            lock_remote.ObjectBuildLock(data).__enter__()
        assert len(calls) == 2 and held._renew()
        # a renewal whose first PUT landed but whose answer was lost, sent again by the client: the retry's 412
        # is not a takeover (the lease still names this build), the build keeps its lease
        real_put = storage.put_conditional

        def retried(loc, body, version):
            real_put(loc, body, version)
            return real_put(loc, body, version)

        with monkeypatch.context() as patched:
            patched.setattr(storage, "put_conditional", retried)
            assert held._renew()
        assert held._renew() and held.version == storage.version(lock_remote.lock_location(data))[0]


def test_gcs_clients_use_the_core_filesystem(gcs_bucket):
    import gcsfs.core

    assert type(storage.filesystem("gs")) is gcsfs.core.GCSFileSystem
