"""Training from object storage: a tiny dataset built locally and uploaded to a real S3 API server (moto,
127.0.0.1) trains through ``s3://`` to the same losses as the local copy with the same seed, reading shards by
byte range; nothing is written to DATA (the image cache goes under RUN) or to a local path named after the URL;
a missing bucket is one line naming the URL (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bindset.cli import main
from bindset.synth.generate import SynthConfig, synth
from pipelines import storage
from pipelines.build import EngineConfig, build
from training.shards import SampleReader, SampleTable
from transforms.config import BuildConfig

#: the smallest run that still trains: a few steps of small batches, a metrics line (the loss) every step
TRAIN_ARGS = ["--preset", "tiny", "--engine", "local", "--max-steps", "4", "--batch-size", "4",
              "--checkpoint-every", "1", "--seed", "3", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A committed local dataset: 3 sessions of 5 s at 64x48, shards of at most 3 samples."""
    root = tmp_path_factory.mktemp("trains3")
    synth(root / "raw", SynthConfig(sessions=3, seconds=5.0, width=64, height=48, depth_size=(64, 48),
                                    thermal_size=(48, 36), workers=1, seed=5))  # fmt: skip
    build(root / "raw", root / "data", BuildConfig(shard_max_samples=3), EngineConfig("local"))
    return root / "data"


def _upload(data: Path, url: str) -> storage.Location:
    """The committed files of DATA (no build state, no cache) under ``url``, manifest.json last (the commit point)."""
    dest = storage.location(url)
    files = [p for p in sorted(data.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    for p in files:
        if p.relative_to(data).parts[0] not in ("quality", "_work", "_cache"):
            storage.upload(p, dest / p.relative_to(data).as_posix())
    storage.upload(data / "manifest.json", dest / "manifest.json")
    return dest


def _objects(where: storage.Location) -> dict[str, tuple]:
    fs = storage.filesystem(where.scheme)
    return {k: (v["size"], v.get("ETag")) for k, v in fs.find(where.path, detail=True).items()}


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_reader_gives_the_same_samples_from_s3_as_from_disk(built, s3_bucket):
    remote = _upload(built, f"{s3_bucket.url}/ds")
    local_t, remote_t = SampleTable.load(built, None), SampleTable.load(str(remote), None)
    assert isinstance(remote_t.data, storage.Location) and remote_t.keys == local_t.keys
    assert len(set(remote_t.shards)) >= 3  # samples of several shards in one batch
    want = frozenset({"jpg", "mel.npy", "imu.npy", "depth.png", "thermal.png", "json"})
    a, b = SampleReader(local_t, want), SampleReader(remote_t, want)
    batch = [*range(len(local_t)), -1]  # the whole split and a padding row, in one concurrent read
    for x, y in zip(a.__getitems__(batch), b.__getitems__(batch), strict=True):
        assert x.keys() == y.keys()
        for k, v in x.items():
            assert np.array_equal(v, y[k]) if isinstance(v, np.ndarray) else v == y[k], k
    assert sum("mel.npy" in s for s in b.__getitems__(batch)) == int(local_t.has["audio"].sum()) > 0
    assert b[0].keys() == a[0].keys()


@pytest.mark.slow
def test_train_from_s3_gives_the_local_losses_and_writes_nothing_to_data(built, s3_bucket, tmp_path, monkeypatch):
    url = f"{s3_bucket.url}/ds"
    remote = _upload(built, url)
    before = _objects(remote)
    local_data = tmp_path / "local-data"
    shutil.copytree(built, local_data, ignore=shutil.ignore_patterns("_cache"))
    cwd = tmp_path / "cwd"  # a relative path named after the URL (s3:/bucket/...) would appear here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    built_tree = _tree(built)

    run_local, run_s3 = tmp_path / "run-local", tmp_path / "run-s3"
    # the local run starts the loader's forkserver without the S3 environment: the s3:// run's loader
    # processes, forked from it, must still reach the server (the reader hands them the environment)
    aws = storage.client_environment("s3")
    for name in aws:
        monkeypatch.delenv(name)
    assert main(["train", str(local_data), str(run_local), *TRAIN_ARGS]) == 0
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    assert main(["train", url, str(run_s3), *TRAIN_ARGS]) == 0

    want, got = _losses(run_local), _losses(run_s3)
    assert len(want) == 4 and all(np.isfinite(want))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # the image cache: under RUN for a URL, the same fingerprint and vectors as the local one under DATA
    (cache_local,) = (local_data / "_cache").iterdir()
    (cache_s3,) = (run_s3 / "_cache").iterdir()
    assert cache_s3.name == cache_local.name
    assert np.array_equal(np.load(cache_s3 / "emb.npy"), np.load(cache_local / "emb.npy"), equal_nan=True)
    # nothing written to DATA: the bucket holds the same objects, no local folder took the URL's name
    assert _objects(remote) == before
    assert os.listdir(cwd) == [] and not (run_s3 / "s3:").exists()
    assert _tree(built) == built_tree
    meta = json.loads((run_s3 / "model" / "state.json").read_text())
    assert meta["step"] == 4


def test_training_on_a_missing_bucket_exits_2_naming_the_url(s3_bucket, tmp_path, capsys):
    missing = "s3://no-such-bucket-bindset-train/ds"
    assert main(["train", missing, str(tmp_path / "run"), *TRAIN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "no such bucket" in err[0], err
    assert not (tmp_path / "run" / "model").exists()
