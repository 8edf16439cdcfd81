"""The storage seam on object storage: every operation against a real S3 API server (moto, on 127.0.0.1),
the tar reader by byte range, and the one-line errors for a missing extra, bucket or credential."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipelines import storage
from pipelines.storage import Location
from schemas.errors import UserError


def test_locations_parse_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Location.parse("data") == Location("", str(tmp_path / "data"))
    assert Location.parse(f"file://{tmp_path}/d") == Location("", str(tmp_path / "d"))
    s3 = Location.parse("s3://bucket/some/prefix/")
    assert (s3.scheme, s3.path, s3.bucket, s3.name) == ("s3", "bucket/some/prefix", "bucket", "prefix")
    assert str(s3 / "shards" / "train-000000.tar") == "s3://bucket/some/prefix/shards/train-000000.tar"
    assert (s3 / "x").parent == s3
    assert Location.parse("gcs://b/k") == Location("gs", "b/k")
    assert not storage.is_url(tmp_path) and storage.is_url("gs://b")
    assert storage.cli_location("s3://b/k") == "s3://b/k" and storage.cli_location("d") == Path("d")
    with pytest.raises(UserError, match=r"http://x/y: unsupported URL scheme"):
        Location.parse("http://x/y")
    with pytest.raises(UserError, match="names no bucket"):
        Location.parse("s3://")
    for bad in ("s3://data1//dd", "s3://b/./ds", "gs://b/x/../y"):  # keys no two tools read back alike
        with pytest.raises(UserError, match=r"an empty, '\.' or '\.\.' segment in the URL's path"):
            Location.parse(bad)


def test_every_operation_on_s3(s3_bucket, tmp_path):
    every_operation(Location.parse(f"{s3_bucket.url}/ds"), tmp_path)


def every_operation(root: Location, tmp_path: Path) -> None:
    """Each operation of the seam on an object-store prefix (tests/test_storage_gcs.py runs it on gs://)."""
    assert not storage.exists(root / "manifest.json")
    storage.put_atomic(root / "manifest.json", b'{"v": 1}')
    storage.put_atomic(root / "manifest.json", b'{"v": 2}')  # a second PUT replaces the object whole
    assert storage.read_bytes(root / "manifest.json") == b'{"v": 2}'
    assert storage.read_text(root / "manifest.json") == '{"v": 2}'
    assert storage.exists(root / "manifest.json") and storage.exists(root)

    blob = bytes(range(256)) * 40
    assert storage.write_once(root / "shards" / "a.bin", blob) is True
    assert storage.write_once(root / "shards" / "a.bin", b"other bytes") is False  # never replaced
    assert storage.read_bytes(root / "shards" / "a.bin") == blob
    assert storage.read_range(root / "shards" / "a.bin", 1000, 1010) == blob[1000:1010]
    assert storage.read_range(root / "shards" / "a.bin", len(blob) - 3, len(blob) + 50) == blob[-3:]
    info = storage.stat(root / "shards" / "a.bin")
    assert info.size == len(blob)
    assert storage.listdir(root) == ["manifest.json", "shards"]
    assert storage.listdir(root / "nothing-here") == []

    table = pa.table({"key": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]})
    local = tmp_path / "t.parquet"
    storage.atomic_write_parquet(local, table)
    storage.upload(local, root / "index.parquet")
    assert storage.read_parquet(root / "index.parquet").equals(table)
    assert storage.read_parquet(root / "index.parquet", columns=["x"]).column("x").to_pylist() == [1.0, 2.0, 3.0]
    assert storage.read_parquet_schema(root / "index.parquet").names == ["key", "x"]

    storage.delete(root / "shards" / "a.bin")
    storage.delete(root / "shards" / "a.bin")  # already gone: no error
    assert not storage.exists(root / "shards" / "a.bin")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(root / "shards" / "a.bin")


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_reader_reads_members_by_range_from_s3_as_from_disk(s3_bucket, tmp_path):
    rng = np.random.default_rng(0)
    members = {}
    for i in range(60):  # members on both sides of the 1 MiB block boundaries
        key = f"s{i:03d}_{i * 2000:09d}"
        members[f"{key}.jpg"] = rng.integers(0, 256, int(rng.integers(1, 90_000)), dtype=np.uint8).tobytes()
        members[f"{key}.txt"] = f"caption {i}".encode()
    blob = _tar_bytes(members)
    assert len(blob) > 2 * storage.BLOCK_SIZE
    local = tmp_path / "train-000000.tar"
    local.write_bytes(blob)
    remote = Location.parse(f"{s3_bucket.url}/shards/train-000000.tar")
    storage.put_atomic(remote, blob)

    with storage.TarReader(local) as a, storage.TarReader(remote) as b:
        assert b.members() == a.members()
        assert [m.name for m in b.members()] == list(members)
        for m in reversed(b.members()):  # out of order: every read is a range, not a stream
            assert b.read(m) == members[m.name]
        assert set(b.samples()) == set(a.samples())
    # the URL string works too, and a truncated object reads as a truncated file does
    storage.put_atomic(remote, blob[: len(blob) - 5000])
    with storage.TarReader(str(remote)) as c:
        last = a.members()[-1]
        with pytest.raises(EOFError, match="cut short"):
            c.read(last)


def test_a_missing_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed
    monkeypatch.setattr(storage, "_FILESYSTEMS", {})
    with pytest.raises(storage.MissingExtra) as err:
        storage.read_bytes("s3://bucket/x")
    assert str(err.value) == "s3:// needs the s3 extra: uv sync --extra s3 (or pip install 'bindset[s3]')"
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(storage.MissingExtra, match=r"gs:// needs the gcs extra: uv sync --extra gcs"):
        storage.exists("gs://bucket/x")


def test_a_missing_bucket_and_wrong_credentials_are_one_line_errors(s3_bucket, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes("s3://no-such-bucket-bindset/ds/manifest.json")
    assert str(err.value) == "s3://no-such-bucket-bindset/ds/manifest.json: no such bucket s3://no-such-bucket-bindset"
    storage.put_atomic(f"{s3_bucket.url}/ds/manifest.json", b"{}")
    # the server now checks keys: ours are in no IAM user's records
    with enable_iam_authentication(), pytest.raises(storage.StorageError) as err:
        storage.read_bytes(f"{s3_bucket.url}/ds/manifest.json")
    msg = str(err.value)
    assert msg.startswith(f"{s3_bucket.url}/ds/manifest.json: access denied") and "\n" not in msg
    assert "testing-secret" not in msg


def test_a_conditional_put_never_overwrites_a_newer_version(s3_bucket):
    """``put_if_unchanged`` (validate's verdict into the manifest): one PUT with If-Match on the ETag read."""
    obj = storage.location(f"{s3_bucket.url}/ds/manifest.json")
    storage.put_atomic(obj, b'{"version": 1}\n')
    body, version = storage.read_versioned(obj)
    assert body == b'{"version": 1}\n' and version
    assert storage.put_if_unchanged(obj, b'{"version": 1, "validation": "a"}\n', version)
    assert storage.read_bytes(obj) == b'{"version": 1, "validation": "a"}\n'
    # the ETag read before is stale now: a writer holding it is refused, the newer bytes stay
    assert not storage.put_if_unchanged(obj, b'{"version": 1, "validation": "b"}\n', version)
    _, newer = storage.read_versioned(obj)
    storage.put_atomic(obj, b'{"version": 2}\n')  # a commit lands between a read and the PUT
    assert not storage.put_if_unchanged(obj, b'{"version": 1, "validation": "c"}\n', newer)
    assert storage.read_bytes(obj) == b'{"version": 2}\n'
    storage.delete(obj)  # a commit under way (the manifest deleted first)
    assert not storage.put_if_unchanged(obj, b'{"version": 2, "validation": "d"}\n', newer)
    assert not storage.exists(obj)


def test_s3_retry_policy_comes_from_the_standard_variables(monkeypatch):
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    assert storage.s3_retries() == {"mode": "standard", "max_attempts": storage.S3_MAX_ATTEMPTS}
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert storage.s3_retries() == {"mode": "adaptive", "max_attempts": 3}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "many")
    with pytest.raises(storage.StorageError, match="AWS_MAX_ATTEMPTS='many'"):
        storage.s3_retries()


def test_no_credential_is_logged_even_at_debug(s3_bucket, tmp_path, monkeypatch, capsys):
    """-vv sends third-party DEBUG to the console and the log; botocore's header dumps are kept out."""
    from bindset.cli import main
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    token = "SessionTokenQx7Pz"
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    storage.put_atomic(f"{s3_bucket.url}/ds/note.txt", b"x")  # requests with the token, outside the CLI too
    log = tmp_path / "v.log"
    assert main(["validate", f"{s3_bucket.url}/ds", "-vv", "--log-file", str(log)]) == 2  # no manifest there
    captured = capsys.readouterr()
    text = log.read_text() + captured.out + captured.err
    assert "no committed dataset" in text and "DEBUG" in text  # it did log at DEBUG
    for secret in (token, SECRET_KEY, f"Credential={ACCESS_KEY}"):
        assert secret not in text
