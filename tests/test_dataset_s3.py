"""Reading a committed dataset on object storage: a small build made locally and uploaded to a real S3 API
server (moto, 127.0.0.1) is opened, validated and reported through ``s3://`` with the same results as the
local copy; a missing bucket and wrong credentials are one-line errors (exit 2) that name the URL."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bindset.cli import main
from bindset.synth.generate import SynthConfig, synth
from pipelines import storage
from pipelines.build import EngineConfig, build
from pipelines.dataset import DatasetChanged, DatasetNotCommitted, open_dataset
from tests.s3server import SECRET_KEY
from transforms.config import BuildConfig


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A committed local dataset of 2 short sessions (tiny media), never validated."""
    root = tmp_path_factory.mktemp("s3ds")
    synth(root / "raw", SynthConfig(sessions=2, seconds=6.0, width=96, height=72, depth_size=(64, 48),
                                    thermal_size=(48, 36), workers=1))  # fmt: skip
    build(root / "raw", root / "data", BuildConfig(), EngineConfig("local"))
    return root / "data"


def _upload(data: Path, url: str) -> storage.Location:
    """The committed files of DATA under ``url``, manifest.json last (the commit point)."""
    dest = storage.location(url)
    files = [p for p in sorted(data.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    files = [p for p in files if p.relative_to(data).parts[0] not in ("quality", "_work")]
    for p in [*files, data / "_work" / "builds.jsonl"]:
        if p.exists():
            storage.upload(p, dest / p.relative_to(data).as_posix())
    storage.upload(data / "manifest.json", dest / "manifest.json")
    return dest


def _local_copy(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest, ignore=shutil.ignore_patterns("quality", "_work"))
    (dest / "_work").mkdir()
    shutil.copy2(data / "_work" / "builds.jsonl", dest / "_work" / "builds.jsonl")
    return dest


def test_open_dataset_on_s3_reads_the_same_snapshot(built, s3_bucket):
    url = f"{s3_bucket.url}/ds"
    with pytest.raises(DatasetNotCommitted, match=re.escape(f"{url}/manifest.json: no committed dataset")):
        open_dataset(url)
    _upload(built, url)
    local, remote = open_dataset(built), open_dataset(url)
    assert remote.manifest == local.manifest and remote.index.equals(local.index)
    assert sorted(remote.shards) == sorted(local.shards) and len(remote.shards) >= 1
    name = sorted(remote.shards)[0]
    assert remote.shards[name].size == local.shards[name].size
    with remote.open_shard(name) as a, local.open_shard(name) as b:
        a.seek(512)
        b.seek(512)
        assert a.read(4096) == b.read(4096)
    # a shard replaced after the snapshot was taken is refused, not read
    storage.put_atomic(storage.location(url) / "shards" / name, b"other bytes")
    with pytest.raises(DatasetChanged, match="replaced by a rebuild"):
        remote.open_shard(name)


def _normalised(page: str, root: str) -> str:
    page = page.replace(root, "DATA")
    return re.sub(r"built \d{4}-\d\d-\d\d \d\d:\d\d UTC", "built WHEN", page)


@pytest.mark.slow
def test_validate_and_report_on_s3_match_the_local_copy(built, s3_bucket, tmp_path, capsys):
    url = f"{s3_bucket.url}/ds"
    remote = _upload(built, url)
    local = _local_copy(built, tmp_path / "data")
    log = tmp_path / "validate-s3.log"

    assert main(["validate", url, "--log-file", str(log)]) == main(["validate", str(local)]) == 0
    out = capsys.readouterr().out
    assert f"results {url}/quality/validation.json" in out
    got = json.loads(storage.read_bytes(remote / "quality" / "validation.json"))
    want = json.loads((local / "quality" / "validation.json").read_text())
    for doc in (got, want):
        doc.pop("validated_at")
    assert got == want and got["passed"] is True and got["statistics"]["expectations"] > 10
    # the verdict is in the manifest object, and the rest of the manifest is the build's, unchanged
    m_remote = json.loads(storage.read_bytes(remote / "manifest.json"))
    m_local = json.loads((local / "manifest.json").read_text())
    assert m_remote == m_local and m_remote["validation"]["status"] == "passed"
    assert storage.exists(remote / "quality" / "data_docs" / "index.html")
    assert storage.exists(remote / "quality" / "tables" / "shards.parquet")

    rlog = tmp_path / "report-s3.log"
    assert main(["report", url, "--log-file", str(rlog)]) == main(["report", str(local)]) == 0
    page_remote = storage.read_text(remote / "quality" / "report.html")
    page_local = (local / "quality" / "report.html").read_text()
    assert _normalised(page_remote, url) == _normalised(page_local, str(local.resolve()))
    assert page_remote.count("data:image/jpeg;base64") >= 1  # the gallery read members from the shards by range

    # the secret key is in the environment, never in a log or on the console
    for path in (log, rlog):
        assert path.exists() and SECRET_KEY not in path.read_text()
    captured = capsys.readouterr()
    assert SECRET_KEY not in captured.out + captured.err


def test_a_missing_bucket_or_wrong_credentials_exit_2_naming_the_url(built, s3_bucket, capsys):
    from moto.core.authorization import enable_iam_authentication

    missing = "s3://no-such-bucket-bindset-test/ds"
    assert main(["validate", missing]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        f"{missing}/manifest.json: no such bucket s3://no-such-bucket-bindset-test"
    )

    url = f"{s3_bucket.url}/ds"
    _upload(built, url)
    with enable_iam_authentication():  # the server checks keys now: ours belong to no IAM user
        assert main(["report", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{url}/manifest.json: access denied" in err[0]
    assert SECRET_KEY not in err[0]
