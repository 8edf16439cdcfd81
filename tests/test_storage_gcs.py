"""``gs://`` through the same seam, against a GCS emulator (gcp-storage-emulator, 127.0.0.1; tests/gcsserver.py):
every storage operation, the tar reader by range, reading / validating / reporting a committed dataset with
the results of its local copy, and a build from a RAW on ``gs://`` byte-identical to one from the local RAW.
Building INTO ``gs://`` needs the lease's preconditions (``ifGenerationMatch``), which the emulator does not
check; it is refused with one line (tested)."""

from __future__ import annotations

import json

import pytest

from bindset.cli import main
from pipelines import storage
from pipelines.build import EngineConfig, build
from pipelines.dataset import open_dataset
from pipelines.storage import Location
from schemas.errors import UserError
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


def test_building_into_gcs_is_refused_with_one_line(videos, gcs_bucket):  # noqa: F811
    with pytest.raises(UserError, match=r"building into gs:// is not yet supported \(s3:// only\)"):
        build(videos, f"{gcs_bucket.url}/ds", CFG, EngineConfig("local"))
    assert storage.listdir(Location.parse(gcs_bucket.url)) == []


def test_gcs_clients_use_the_core_filesystem(gcs_bucket):
    import gcsfs.core

    assert type(storage.filesystem("gs")) is gcsfs.core.GCSFileSystem
