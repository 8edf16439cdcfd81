"""RUN on object storage (issue 17): `bindset train DATA s3://bucket/run` against a real S3 API server (moto,
127.0.0.1) writes its checkpoints, logs, config and final model there through the storage seam, with the same
losses and model bytes as a local RUN (same seed); a run killed mid-way resumes from the checkpoint on the store;
nothing is written to a local path other than temp (the local DATA's image cache aside, as for a local RUN)."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from bindset.cli import main
from bindset.synth.generate import SynthConfig, synth
from pipelines import storage
from pipelines.build import EngineConfig, build
from tests.killed import run_to_its_kill
from training.loop import FAULT_ENV
from transforms.config import BuildConfig

REPO = Path(__file__).resolve().parents[1]
#: the smallest run that still trains: a few steps of small batches, a checkpoint (and metrics line) every step
TRAIN_ARGS = ["--preset", "tiny", "--engine", "local", "--max-steps", "4", "--batch-size", "4",
              "--checkpoint-every", "1", "--seed", "3", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A committed local dataset: 3 sessions of 5 s at 64x48, shards of at most 3 samples; its image cache
    built once by a local run (so later runs only read it)."""
    root = tmp_path_factory.mktemp("runs3")
    synth(root / "raw", SynthConfig(sessions=3, seconds=5.0, width=64, height=48, depth_size=(64, 48),
                                    thermal_size=(48, 36), workers=1, seed=5))  # fmt: skip
    build(root / "raw", root / "data", BuildConfig(shard_max_samples=3), EngineConfig("local"))
    return root / "data"


@pytest.fixture(scope="module")
def local_run(built, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs3-local") / "run"
    assert main(["train", str(built), str(run), *TRAIN_ARGS]) == 0
    return run


def _objects(url: str) -> dict[str, int]:
    loc = storage.location(url)
    fs = storage.filesystem(loc.scheme)
    return {k[len(loc.path) + 1 :]: v["size"] for k, v in fs.find(loc.path, detail=True).items()}


def _jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _temp_runs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("bindset-run-*")}


def test_train_into_s3_gives_the_local_losses_and_model_bytes(built, local_run, s3_bucket, tmp_path, monkeypatch):
    url = f"{s3_bucket.url}/runs/r1"
    cwd = tmp_path / "cwd"  # a relative path named after the URL (s3:/bucket/...) would appear here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data_before, temp_before = _tree(built), _temp_runs()

    assert main(["train", str(built), url, *TRAIN_ARGS]) == 0

    objects = _objects(url)
    assert {"train_config.json", "events.jsonl", "metrics.jsonl", "model/model.safetensors",
            "model/state.json"} <= set(objects)  # fmt: skip
    # checkpoints on the store: the newest 3 (keep_checkpoints), each complete
    ckpts = sorted({k.split("/")[1] for k in objects if k.startswith("checkpoints/")})
    assert ckpts == [f"ckpt-{s:09d}" for s in (2, 3, 4)]
    for c in ckpts:
        assert {f"checkpoints/{c}/{n}" for n in ("model.safetensors", "optimizer.safetensors", "state.json")} <= set(
            objects
        )
    want = _jsonl((local_run / "metrics.jsonl").read_bytes())
    got = _jsonl(storage.read_bytes(f"{url}/metrics.jsonl"))
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-6, abs=1e-7)
    # the same seed on CPU: the same model, byte for byte
    local_model = (local_run / "model" / "model.safetensors").read_bytes()
    assert storage.read_bytes(f"{url}/model/model.safetensors") == local_model
    assert storage.read_bytes(f"{url}/train_config.json") == (local_run / "train_config.json").read_bytes()
    events = _jsonl(storage.read_bytes(f"{url}/events.jsonl"))
    assert [e["event"] for e in events] == ["start", "done"] and events[-1]["step"] == 4
    # nothing local: no folder named after the URL, DATA unchanged (its image cache was there already), the
    # staging folder removed
    assert os.listdir(cwd) == []
    assert _tree(built) == data_before
    assert _temp_runs() == temp_before


def test_a_killed_run_on_s3_resumes_from_the_checkpoint_on_the_store(built, local_run, s3_bucket, tmp_path):
    url = f"{s3_bucket.url}/runs/killed"
    cmd = [sys.executable, "-m", "bindset.cli", "train", str(built), url, *TRAIN_ARGS,
           "--log-file", str(tmp_path / "train.log")]  # fmt: skip
    # SIGKILL right after step 3, before its checkpoint: the store holds the checkpoints of steps 1 and 2
    env = {**os.environ, FAULT_ENV: "kill:0:3", "PYTHONPATH": str(REPO)}
    out = tmp_path / "stderr.txt"
    code = run_to_its_kill(cmd, env, tmp_path, out)
    assert code == -signal.SIGKILL, out.read_text()[-2000:]
    objects = _objects(url)
    assert "model/state.json" not in objects
    assert sorted({k.split("/")[1] for k in objects if k.endswith("/state.json")}) == ["ckpt-000000001",
                                                                                       "ckpt-000000002"]  # fmt: skip

    # a fresh process (its own empty staging folder) resumes from step 2 on the store
    got = resume_matches_local(url, built, local_run)
    assert json.loads(storage.read_bytes(f"{url}/model/state.json"))["step"] == 4
    assert np.isfinite([m["loss"] for m in got]).all()


def resume_matches_local(url: str, built: Path, local_run: Path) -> list[dict]:
    """Run ``bindset train`` again into the RUN at ``url`` killed after step 3 (checkpoints 1 and 2 on the store):
    it resumes from step 2, and its losses and final model match the uninterrupted local run's. Returns the
    metrics rows (also tests/test_gcs_more.py)."""
    assert main(["train", str(built), url, *TRAIN_ARGS]) == 0
    events = _jsonl(storage.read_bytes(f"{url}/events.jsonl"))
    assert [e.get("resumed_from_step") for e in events if e["event"] == "start"] == [0, 2]
    assert events[-1]["event"] == "done" and events[-1]["step"] == 4
    got = _jsonl(storage.read_bytes(f"{url}/metrics.jsonl"))
    want = _jsonl((local_run / "metrics.jsonl").read_bytes())
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-5, abs=1e-6)
    a = load_safetensors(storage.read_bytes(f"{url}/model/model.safetensors"))
    b = load_safetensors((local_run / "model" / "model.safetensors").read_bytes())
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    return got


@pytest.mark.slow
def test_ray_train_stores_its_checkpoints_on_s3(built, local_run, s3_bucket, tmp_path, monkeypatch):
    """Ray Train with ``RunConfig.storage_path`` on the URL: its checkpoints land under RUN/ray/ on the store,
    and the final model equals the local engine's (one worker, same seed)."""
    url = f"{s3_bucket.url}/runs/ray"
    monkeypatch.chdir(tmp_path)
    args = [a if a != "local" else "ray" for a in TRAIN_ARGS]
    assert main(["train", str(built), url, *args, "--workers", "1"]) == 0
    objects = _objects(url)
    ray_ckpts = {k.split("/")[1] for k in objects if k.startswith("ray/") and k.endswith("/state.json")}
    assert ray_ckpts and all(c.startswith("ckpt-") for c in ray_ckpts), sorted(objects)
    assert json.loads(storage.read_bytes(f"{url}/model/state.json"))["step"] == 4
    got = _jsonl(storage.read_bytes(f"{url}/metrics.jsonl"))
    want = _jsonl((local_run / "metrics.jsonl").read_bytes())
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-5, abs=1e-6)
    assert os.listdir(tmp_path) == []


def train_dag_steps_on(root: str, built: Path, cwd: Path) -> None:
    """The train DAG's steps (no Airflow) with DATA_ROOT and RUN_ROOT under the object-store URL ``root``
    (``s3://`` here, ``gs://`` in tests/test_gcs_more.py), run from ``cwd``: the run, its embeddings, eval and
    report are objects under RUN_ROOT/runs/<name>/, ``current`` is the pointer object current.json, a retried
    publication grows the log and keeps the pointer, and nothing is written to ``cwd``."""
    from orchestration.publish import read_pointer
    from orchestration.settings import TrainSettings
    from orchestration.train_steps import publish_run_report, resolve_dataset, run_embed, run_eval, run_train
    from tests.test_train_s3 import _upload
    from training.config import PRESETS

    _upload(built, f"{root}/data/versions/v1")
    # what a publication writes last (orchestration/publish.py): the steps only check it is there
    storage.put_json(f"{root}/data/versions/v1/VERSION.json", {"version_id": "v1"})
    cfg = PRESETS["tiny"].replace(max_steps=2, batch_size=4, checkpoint_every=1, seed=3)
    s = TrainSettings.from_dict({
        "data_root": f"{root}/data", "run_root": f"{root}/runs", "dataset_version": "v1",
        "preset": "tiny", "train_config": cfg.to_dict(), "engine": "local", "workers": 1, "gpu": False,
        "eval_split": "train", "run_name": None, "ray": None, "origin": {},
    }, None)  # fmt: skip
    assert isinstance(s.run_root, storage.Location) and s.run_root.scheme == root.split("://")[0]
    t = run_train(s, resolve_dataset(s, None))
    assert t.step == 2 and t.run.startswith(f"{root}/runs/runs/v1_")
    embedded = run_embed(s, t)
    evaluated = run_eval(s, t, embedded["emb"])
    assert embedded["counts"]["image"] > 0 and evaluated["headline"]
    out = publish_run_report(s, t, embedded, evaluated)
    assert out["previous"] is None and read_pointer(s.run_root / "current") == t.run_name
    pointer = json.loads(storage.read_bytes(f"{root}/runs/current.json"))
    assert pointer == {"target": f"runs/{t.run_name}", "version_id": t.run_name}
    summary = json.loads(storage.read_bytes(f"{t.run}/report/summary.json"))
    assert summary["train"]["step"] == 2 and summary["embeddings"]["counts"] == embedded["counts"]
    assert storage.read_bytes(f"{t.run}/report/eval.json") == storage.read_bytes(f"{t.run}/eval/eval.json")
    assert {"model", "checkpoints", "emb", "eval", "report", "requested_config.json", "dataset.json"} <= set(
        storage.listdir(t.run)
    )
    again = publish_run_report(s, t, embedded, evaluated)  # a retried task: the log grows, the pointer stays
    assert again["previous"] == t.run_name
    log_lines = storage.read_text(f"{root}/runs/publish_log.jsonl").splitlines()
    assert [json.loads(x)["previous"] for x in log_lines] == [None, t.run_name]
    assert os.listdir(cwd) == []


@pytest.mark.slow
def test_train_dag_steps_on_s3_publish_the_run_with_a_pointer_object(built, s3_bucket, tmp_path, monkeypatch):
    """The train DAG's steps (no Airflow) with DATA_ROOT and RUN_ROOT on s3:// (``train_dag_steps_on``)."""
    monkeypatch.chdir(tmp_path)
    train_dag_steps_on(s3_bucket.url, built, tmp_path)
