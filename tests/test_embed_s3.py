"""EMB (and DATA, RUN) on object storage (issue 17): `bindset embed` into ``s3://`` against a real S3 API server
(moto, 127.0.0.1) writes the same part files, vectors and indexes as into a local EMB, meta.json last; a rerun
embeds nothing, a killed run redoes only its unfinished parts, a second run is refused by the lease object, and
search and eval over the URLs give the local results. Nothing is written to local paths other than temp."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bindset.cli import main
from pipelines import storage
from tests.killed import run_to_its_kill
from tests.test_embed import BATCH, _vectors, clean, root  # noqa: F401 - module fixtures, reused
from tests.test_train_s3 import _upload
from training import emb_store as S
from training.embed import FAULT_ENV, embed
from training.evaluate import evaluate
from training.search import search

REPO = Path(__file__).resolve().parents[1]


def _put_run(run: Path, url: str) -> str:
    """RUN's final model under ``url`` (state.json last), as `bindset train` into a URL leaves it."""
    for name in ("model.safetensors", "state.json"):
        storage.upload(run / "model" / name, storage.location(url) / "model" / name)
    return url


def _remote_parts(url: str) -> dict[str, bytes]:
    meta = S.read_meta(url)
    emb = storage.location(url)
    return {f"{m}/{p['name']}": storage.read_bytes(S.part_path(emb, m, p["name"])) for m in meta["modalities"]
            for p in meta["parts"]}  # fmt: skip


def _local_parts(emb: Path) -> dict[str, bytes]:
    meta = S.read_meta(emb)
    return {f"{m}/{p['name']}": S.part_path(emb, m, p["name"]).read_bytes() for m in meta["modalities"]
            for p in meta["parts"]}  # fmt: skip


def _temp_parts() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("bindset-part-*")}


@pytest.fixture
def remote(root, s3_bucket) -> dict[str, str]:  # noqa: F811 - the imported module fixture
    """DATA and RUN uploaded to the bucket; where EMB goes."""
    data = _upload(root / "data", f"{s3_bucket.url}/data")
    run = _put_run(root / "run", f"{s3_bucket.url}/run")
    return {"data": str(data), "run": run, "emb": f"{s3_bucket.url}/emb"}


def test_embed_into_s3_gives_the_local_parts_and_search_and_eval_agree(root, clean, remote, tmp_path,  # noqa: F811
                                                                         monkeypatch):  # fmt: skip
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("BINDSET_CACHE_DIR", str(tmp_path / "cache"))
    temp_before = _temp_parts()
    url = remote["emb"]
    assert main(["embed", remote["data"], remote["run"], url, "--batch-size", str(BATCH), "--quiet"]) == 0

    meta, want = S.read_meta(url), S.read_meta(clean)
    assert meta["counts"] == want["counts"] and meta["parts"] == want["parts"]
    assert meta["run"] == remote["run"] and meta["data"] == remote["data"]
    # the same bytes as a local EMB: vectors, rows, order (the run is named "run" in both places)
    assert_same_embeddings(url, clean, meta)

    # a rerun keeps every part and index: the counters say so
    again = embed(remote["data"], remote["run"], url, batch_size=BATCH)
    assert (again.stats.parts_embedded, again.stats.samples_embedded, again.stats.index_built) == (0, 0, [])
    assert again.stats.parts_kept == len(want["parts"]) and sorted(again.stats.index_kept) == sorted(meta["counts"])

    # search and eval over the URLs: the local results
    keys, _ = _vectors(clean)["audio"]
    for i in (0, len(keys) - 1):
        hits = search(url, "key", keys[i], to="audio", k=3, source="audio")
        assert hits == search(clean, "key", keys[i], to="audio", k=3, source="audio")
    assert search(url, "text", "birds singing", to="depth", k=2) == search(clean, "text", "birds singing",
                                                                           to="depth", k=2)  # fmt: skip
    cached = list((tmp_path / "cache" / "faiss").iterdir())
    assert len(cached) == 2  # audio and depth, each downloaded once
    report = evaluate(url, "train")
    baseline = evaluate(clean, "train", tmp_path / "eval-clean")
    assert report.to_dict() == baseline.to_dict()
    assert json.loads(storage.read_bytes(f"{url}/eval.json")) == baseline.to_dict()
    assert main(["search", url, "--text", "birds", "--to", "image", "-k", "2", "--quiet"]) == 0
    # nothing local: no folder named after a URL, staging folders removed
    assert os.listdir(cwd) == [] and _temp_parts() == temp_before


def test_a_killed_embed_into_s3_redoes_only_unfinished_parts(root, clean, remote, tmp_path):  # noqa: F811
    url = remote["emb"]
    cmd = [sys.executable, "-m", "bindset.cli", "embed", remote["data"], remote["run"], url,
           "--batch-size", str(BATCH), "--quiet", "--log-file", str(tmp_path / "embed.log")]  # fmt: skip
    env = {**os.environ, FAULT_ENV: "kill_after_parts:2", "PYTHONPATH": str(REPO)}
    out = tmp_path / "stderr.txt"
    code = run_to_its_kill(cmd, env, tmp_path, out)
    assert code == -signal.SIGKILL, out.read_text()[-2000:]
    assert not storage.exists(f"{url}/{S.META}")
    assert len([n for n in storage.listdir(f"{url}/{S.PARTS}") if n.endswith(".json")]) == 2
    with pytest.raises(S.EmbNotCommitted):
        search(url, "key", "x", to="image", source="image")

    # the killed run's lease names a dead process of this host: the next run takes it over at once
    result = embed(remote["data"], remote["run"], url, batch_size=BATCH)
    total = len(S.read_meta(clean)["parts"])
    assert (result.stats.parts_kept, result.stats.parts_embedded) == (2, total - 2)
    assert _remote_parts(url) == _local_parts(clean)


def test_a_second_embed_into_the_same_s3_emb_exits_2(root, remote, capsys):  # noqa: F811
    url = remote["emb"]
    with S.EmbLease(storage.location(url)):
        assert main(["embed", remote["data"], remote["run"], url, "--batch-size", str(BATCH), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another `bindset embed`" in err and f"pid {os.getpid()}" in err, err
    assert not storage.exists(f"{url}/{S.META}")


def assert_same_embeddings(url: str, local: Path, meta: dict) -> None:
    """An EMB on object storage holds a local EMB's parts byte for byte (vectors, rows, order), vectors and
    index sizes, and its lease is released (also tests/test_embed_gcs.py)."""
    assert _remote_parts(url) == _local_parts(local)
    for m, (keys, v) in _vectors(local).items():
        got_keys, got = _vectors(url)[m]
        assert got_keys == keys and np.array_equal(got, v), m
    for m in meta["modalities"]:
        assert storage.stat(S.index_path(storage.location(url), m)).size == S.index_path(local, m).stat().st_size
    assert not storage.exists(f"{url}/{S.LOCK}")  # the lease is released


@pytest.mark.slow
def test_ray_engine_embeds_into_s3_the_local_parts(root, clean, remote):  # noqa: F811
    """A local Ray's actors get the S3 endpoint and credentials from the driver (runtime_env): the same parts."""
    url = remote["emb"]
    result = embed(remote["data"], remote["run"], url, batch_size=BATCH, engine="ray", workers=2)
    assert result.stats.parts_embedded == len(S.read_meta(clean)["parts"])
    assert _remote_parts(url) == _local_parts(clean)
