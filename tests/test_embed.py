"""`bindset embed` at archive scale: streamed parts, resume after SIGKILL, incremental versions, Ray = local,
and search/eval over both index types (training/embed.py, emb_store.py, vector_index.py).

Small and on CPU: a 3-session synthetic dataset with 2-sample shards and a run with the tiny preset's
random-init encoders (no training needed to test the materialisation).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build
from schemas.errors import InputError
from training import emb_store as S
from training.checkpoint import TrainState, write_checkpoint
from training.config import PRESETS
from training.embed import FAULT_ENV, PartEmbedder, PartPlan, embed, load_run, produced_modalities
from training.encoders import BindingModel
from training.evaluate import evaluate
from training.search import search
from training.shards import SampleTable
from training.towers import tower_embed_dim
from training.vector_index import IndexParams, build_index, exact_truth, recall_at_k
from transforms.config import BuildConfig

REPO = Path(__file__).resolve().parents[1]
BATCH = 2


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embed")
    synth(root / "raw", SynthConfig(sessions=3, seconds=6.0, width=96, height=72, seed=7))
    build(root / "raw", root / "data", BuildConfig(shard_max_samples=2), EngineConfig("local"))
    tiny = PRESETS["tiny"]
    # a trained run's state holds fitted numbers for depth_norm "auto" (training/run.py)
    cfg = tiny.replace(data=tiny.data.replace(loader_workers=0, depth_norm=(0.0, 1.0)))
    torch.manual_seed(0)
    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, tower_embed_dim(cfg.tower))
    write_checkpoint(root / "run" / "model", model, None, TrainState(0, 0, 0, cfg.to_dict(), {}))
    return root


@pytest.fixture(scope="module")
def clean(root) -> Path:
    """A clean, uninterrupted embed of the first dataset version."""
    embed(root / "data", root / "run", root / "clean", batch_size=BATCH)
    return root / "clean"


def _parts(emb: Path) -> dict[str, bytes]:
    meta = S.read_meta(emb)
    return {f"{m}/{p['name']}": S.part_path(emb, m, p["name"]).read_bytes() for m in meta["modalities"]
            for p in meta["parts"]}  # fmt: skip


def _vectors(emb: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    out = {}
    for m in S.read_meta(emb)["modalities"]:
        rows, v = S.read_vectors(emb, m)
        out[m] = (rows.column("key").to_pylist(), v)
    return out


# --------------------------------------------------------------------------------------- layout, memory


def test_parts_follow_the_shards_and_meta_is_the_commit_point(root, clean):
    meta = S.read_meta(clean)
    shards = sorted(json.loads((root / "data" / "shards" / "sizes.json").read_text()))
    assert [p["shard"] for p in meta["parts"]] == shards and len(shards) >= 4
    assert [p["name"] for p in meta["parts"]] == [f"part-{i:06d}" for i in range(len(shards))]
    index = pq.read_table(root / "data" / "index.parquet", columns=["key", "shard"]).to_pylist()
    keys, v = _vectors(clean)["image"]
    # rows in shard order, then index order within a shard; one image vector per sample
    assert keys == [r["key"] for s in shards for r in index if r["shard"] == s]
    assert v.shape == (len(index), meta["dim"]) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert meta["counts"]["image"] == len(index) and meta["last_run"]["parts_embedded"] == len(shards)
    for m in meta["modalities"]:
        assert meta["index"][m]["kind"] == "flat_ip" and S.index_path(clean, m).exists()


def test_embed_loop_holds_at_most_one_batch_of_vectors(root, clean):
    """Fails if vectors accumulate: the live-row counter, and the traced memory between batches, which stays
    flat over a part of 8x the dataset instead of growing by the vectors already written."""
    from training.embed import _WANT, PartReader, _reader_batches

    assert 0 < S.read_meta(clean)["last_run"]["peak_live_rows"] <= BATCH
    lr = load_run(root / "run")
    table = SampleTable.load(root / "data", None)
    reader = PartReader(table, _WANT)
    between: list[int] = []  # traced bytes each time the loop asks for its next batch

    def watched(batches):
        for b in batches:
            gc.collect()  # cyclic garbage (numpy's header parser leaves some) is not held data
            between.append(tracemalloc.get_traced_memory()[0])
            yield b

    embedder = PartEmbedder(lr, table, root / "tiled-warm", produced_modalities(lr.cfg))
    embedder.embed_part(PartPlan(0, "x", tuple(range(len(table))), "x"), _reader_batches(reader, [[0]]))  # warm-up
    embedder = PartEmbedder(lr, table, root / "tiled", produced_modalities(lr.cfg))
    part = PartPlan(0, "tiled", tuple(range(len(table))) * 8, "x")
    tracemalloc.start()
    try:
        marker = embedder.embed_part(part, watched(_reader_batches(reader, part.batches(8))))
    finally:
        tracemalloc.stop()
    rows = sum(marker["rows"].values())
    assert len(between) >= 9 and embedder.live.peak <= 8
    early, late = np.median(between[1:4]), np.median(between[-3:])
    kept_if_accumulated = rows * (len(between) - 4) / len(between) * lr.towers.embed_dim * 4  # bytes
    # (torch leaves ~0.5 kB of small Python objects per batch behind: a few % of the vectors)
    assert late - early < kept_if_accumulated / 3, (early, late, kept_if_accumulated)


# ------------------------------------------------------------------------------------------ resume, kill


def test_a_killed_run_redoes_only_unfinished_parts(root, clean, tmp_path):
    emb = tmp_path / "emb"
    env = {**os.environ, FAULT_ENV: "kill_after_parts:2", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "bindset.cli", "embed", str(root / "data"), str(root / "run"), str(emb),
           "--batch-size", str(BATCH), "--quiet", "--log-file", str(tmp_path / "embed.log")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (emb / S.META).exists() and len(list((emb / S.PARTS).glob("*.json"))) == 2
    with pytest.raises(S.EmbNotCommitted):
        search(emb, "key", "x", to="image", source="image")
    result = embed(root / "data", root / "run", emb, batch_size=BATCH)
    total = len(S.read_meta(clean)["parts"])
    assert (result.stats.parts_kept, result.stats.parts_embedded) == (2, total - 2)
    assert _parts(emb) == _parts(clean)  # byte for byte the files of an uninterrupted run
    for m, (keys, v) in _vectors(clean).items():
        assert _vectors(emb)[m][0] == keys and np.array_equal(_vectors(emb)[m][1], v), m
    again = embed(root / "data", root / "run", emb, batch_size=BATCH)
    assert (again.stats.parts_embedded, again.stats.samples_embedded, again.stats.index_built) == (0, 0, [])


@pytest.mark.slow
def test_a_second_embed_into_the_same_emb_exits_2_and_a_dead_ones_lock_is_taken_over(root, clean, tmp_path):
    import socket

    emb = tmp_path / "emb"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    cmd = lambda log: [sys.executable, "-m", "bindset.cli", "embed", str(root / "data"), str(root / "run"),  # noqa: E731
                       str(emb), "--batch-size", str(BATCH), "--quiet", "--log-file", str(tmp_path / log)]  # fmt: skip
    first = subprocess.Popen(cmd("first.log"), env={**env, FAULT_ENV: "stop_after_parts:1"}, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # it stops itself after one part, holding the lock
        assert os.WIFSTOPPED(status)
        second = subprocess.run(cmd("second.log"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"host {socket.gethostname()}, pid {first.pid}" in second.stderr
        assert "another `bindset embed`" in second.stderr and len(list((emb / S.PARTS).glob("*.json"))) == 1
    finally:
        first.kill()  # SIGKILL ends a stopped process too; the kernel releases its flock
        first.wait()
    third = subprocess.run(cmd("third.log"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    assert (
        f"took over the embed lock of a run that died (host {socket.gethostname()}, pid {first.pid}"
        in (tmp_path / "third.log").read_text()
    )
    meta = S.read_meta(emb)
    assert meta["last_run"]["parts_kept"] == 1 and meta["counts"] == S.read_meta(clean)["counts"]
    assert (emb / S.LOCK).read_text() == ""  # a finished run leaves no holder behind


# ------------------------------------------------------------------------------------------- incremental


def test_a_new_version_embeds_only_the_shards_whose_content_changed(root, clean, tmp_path):
    import shutil

    raw, data, emb = tmp_path / "raw", tmp_path / "data", tmp_path / "emb"
    shutil.copytree(root / "raw", raw)
    shutil.copytree(root / "data", data)
    embed(data, root / "run", emb, batch_size=BATCH)
    before = pq.read_table(data / "index.parquet")
    # a new version: one session's depth frames re-measured 1 mm further; the rebuild redoes that unit only
    session = sorted(p for p in raw.iterdir() if not p.name.startswith("_"))[1]
    for png in (session / "depth").glob("*.png"):
        d = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(png), np.where(d > 0, d + 1, 0).astype(np.uint16))
    build(raw, data, BuildConfig(shard_max_samples=2), EngineConfig("local"))
    after = pq.read_table(data / "index.parquet")
    assert after.column("key").to_pylist() == before.column("key").to_pylist()

    def content(t):
        rows = t.select(["shard", "key", "sha256_depth_png", "sha256_jpg"]).to_pylist()
        return {s: [r for r in rows if r["shard"] == s] for s in sorted({r["shard"] for r in rows})}

    old, new = content(before), content(after)
    changed = {s for s in new if new[s] != old.get(s)}
    assert changed and len(changed) < len(new)
    meta0 = S.read_meta(emb)
    kept_files = {p["name"]: os.stat(S.part_path(emb, "audio", p["name"])).st_ino for p in meta0["parts"]}

    result = embed(data, root / "run", emb, batch_size=BATCH)
    meta = S.read_meta(emb)
    inode = lambda p: os.stat(S.part_path(emb, "audio", p["name"])).st_ino  # noqa: E731
    redone = {p["shard"] for p in meta["parts"] if inode(p) != kept_files[p["name"]]}  # a kept file is untouched
    assert result.stats.parts_embedded == len(changed) and redone == changed
    assert result.stats.samples_embedded == sum(len(new[s]) for s in changed)
    assert meta["dataset_version"] != meta0["dataset_version"]
    # what was kept plus what was redone equals a clean embed of the new version
    fresh = embed(data, root / "run", tmp_path / "fresh", batch_size=BATCH)
    assert fresh.stats.parts_embedded == len(new) and _parts(emb) == _parts(tmp_path / "fresh")


# ---------------------------------------------------------------------------------- index types, search


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq"])
def test_approximate_index_is_built_in_batches_and_measures_its_recall(kind):
    x = _clustered(4000, 32)
    chunks = lambda: iter(np.array_split(x, 7))  # noqa: E731 - parts of uneven sizes
    params = IndexParams(exact_max=1000, kind=kind, add_batch=300, queries=200, pq_m=8, target_recall=0.9, nprobe=1)
    built = build_index(chunks, len(x), 32, params)
    info = built.info
    assert built.index.ntotal == 4000 and info.kind == kind and info.nlist == 63 and info.train_rows == 4000 - 200
    assert info.recall_at_k >= 0.9 or info.nprobe == info.nlist
    # the recall it reports is the recall of the index it returns, against brute force
    q_ids = np.arange(0, 4000, 37)
    _, truth = exact_truth(chunks, x[q_ids], q_ids, 10)
    exact = np.argsort(-(x[q_ids] @ x.T), axis=1)
    assert all(set(exact[i, 1:11]) <= truth[i] | {q} for i, q in enumerate(q_ids))
    r = recall_at_k(built.index, x[q_ids], q_ids, truth, 10)
    assert abs(r - info.recall_at_k) < 0.1
    if kind == "ivf_flat":
        # nprobe doubles from 1 until the target: the first try falls short on 20 clusters spread over 63 lists
        assert info.recall_at_k >= 0.9 and info.tried[0][1] < 0.9 and [p for p, _ in info.tried][:2] == [1, 2]


def test_flat_index_is_exact_and_recall_counts_ties():
    x = _clustered(300, 16)
    x[10] = x[11] = x[12]  # text rows repeat a caption's vector
    built = build_index(lambda: iter([x[:100], x[100:]]), 300, 16, IndexParams())
    assert built.info.kind == "flat_ip" and built.info.recall_at_k is None
    _, truth = exact_truth(lambda: iter([x]), x[[10]], np.array([10]), 2)
    assert {11, 12} <= truth[0]
    assert recall_at_k(built.index, x[[10]], np.array([10]), truth, 2) == 1.0


def test_ivf_that_would_probe_most_lists_falls_back_to_exact():
    # random unit vectors have no clusters for the lists to follow: recall 0.95 needs most of the lists probed
    x = np.random.default_rng(1).standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    chunks = lambda: iter(np.array_split(x, 5))  # noqa: E731
    built = build_index(chunks, len(x), 32, IndexParams(exact_max=0, queries=200))
    info = built.info
    assert info.kind == "flat_ip" and built.index.ntotal == 3000 and "nprobe" in info.fallback
    last_nprobe, last_recall = info.tried[-1]
    assert last_nprobe >= 0.5 * 55 and [p for p, _ in info.tried][0] == 8  # nlist = round(sqrt(3000)) = 55
    assert f"nprobe {last_nprobe} of nlist 55" in info.fallback and info.to_dict()["fallback"] == info.fallback
    _, ids = built.index.search(x[:5], 3)
    assert ids.tolist() == np.argsort(-(x[:5] @ x.T), axis=1)[:, :3].tolist()  # exact
    # the same vectors with the limit off: the IVF index, every list probed in the end
    kept = build_index(chunks, len(x), 32, IndexParams(exact_max=0, queries=200, max_probe_fraction=1.0))
    assert kept.info.kind == "ivf_flat" and kept.info.fallback is None and kept.info.nprobe == last_nprobe
    # clustered vectors keep theirs (test above): the limit is about the data, not the size
    few = build_index(lambda: iter([x[:500]]), 500, 32, IndexParams(exact_max=0, queries=50))
    assert few.info.kind == "flat_ip" and "450 sample rows for 22 lists" in few.info.fallback and not few.info.tried


def test_embed_records_the_fallback_in_meta(root, tmp_path):
    emb = tmp_path / "emb"
    result = embed(root / "data", root / "run", emb, batch_size=BATCH, index=IndexParams(exact_max=4, queries=3))
    meta = S.read_meta(emb)
    assert meta["index_params"]["min_train_per_list"] == 39 and meta["index_params"]["max_probe_fraction"] == 0.5
    assert any(n > 4 for n in meta["counts"].values())
    for m, info in meta["index"].items():  # exact at <= 4 rows anyway, and without a fallback to explain
        why = "fewer than min_train_per_list 39" if meta["counts"][m] > 4 else None
        assert info["kind"] == "flat_ip" and (info["fallback"] is None if why is None else why in info["fallback"]), m
    assert any("fewer than min_train_per_list" in line for line in result.summary_lines())
    hits = search(emb, "key", _vectors(emb)["audio"][0][0], to="audio", k=2, source="audio")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("exact_max", [200_000, 4], ids=["flat", "ivf"])
def test_search_and_eval_on_both_index_types(root, clean, tmp_path, exact_max):
    emb = clean
    if exact_max != 200_000:
        emb = tmp_path / "emb"
        # an IVF index over a few rows: without the fallback limits it would be built exact (next test)
        params = IndexParams(exact_max=exact_max, queries=3, min_train_per_list=1, max_probe_fraction=1.0)
        embed(root / "data", root / "run", emb, batch_size=BATCH, index=params)
        info = S.read_meta(emb)["index"]["image"]
        assert info["kind"] == "ivf_flat" and info["nprobe"] >= 1 and 0 <= info["recall_at_k"] <= 1
    keys, v = _vectors(emb)["audio"]
    for i in (0, len(keys) - 1):  # a key in the first part and one in the last
        hits = search(emb, "key", keys[i], to="audio", k=3, source="audio")
        assert hits[0].key == keys[i] and hits[0].score == pytest.approx(1.0, abs=1e-5) and len(hits) == 3
        best = np.argsort(-(v @ v[i]))[:3]
        assert [h.key for h in hits] == [keys[j] for j in best]
    text = search(emb, "text", "birds singing in a forest", to="depth", k=2)
    assert len(text) == 2 and text[0].score >= text[1].score
    report = evaluate(emb, "train", tmp_path / "eval")
    baseline = evaluate(clean, "train", tmp_path / "eval-clean")
    assert report.image_modality and report.to_dict()["image_modality"] == baseline.to_dict()["image_modality"]


# ------------------------------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_engine_gives_the_local_vectors_in_the_same_order(root, clean, tmp_path):
    result = embed(root / "data", root / "run", tmp_path / "emb", batch_size=BATCH, engine="ray", workers=2)
    assert result.stats.parts_embedded == len(S.read_meta(clean)["parts"])
    ray_meta, local_meta = S.read_meta(tmp_path / "emb"), S.read_meta(clean)
    assert ray_meta["parts"] == local_meta["parts"] and ray_meta["counts"] == local_meta["counts"]
    local = _vectors(clean)
    for m, (keys, v) in _vectors(tmp_path / "emb").items():
        assert keys == local[m][0]
        np.testing.assert_allclose(v, local[m][1], atol=1e-5)


def test_a_shard_renumbered_by_a_new_one_before_it_is_moved_not_embedded_again(root, tmp_path):
    """Reuse follows content, not part numbers: a train session added to the dataset adds train shards, which
    sort before the val shards and so renumber their parts; the val parts are moved to their new numbers."""
    import shutil

    index = pq.read_table(root / "data" / "index.parquet", columns=["session", "split"]).to_pylist()
    late = max(r["session"] for r in index if r["split"] == "train")  # its shards sort last among train's
    raw, data, emb = tmp_path / "raw", tmp_path / "data", tmp_path / "emb"
    shutil.copytree(root / "raw", raw, ignore=lambda d, names: [late] if Path(d) == root / "raw" else [])
    build(raw, data, BuildConfig(shard_max_samples=2), EngineConfig("local"))
    embed(data, root / "run", emb, batch_size=BATCH)
    old = {p["shard"]: p for p in S.read_meta(emb)["parts"]}
    inodes = {p["shard"]: os.stat(S.part_path(emb, "image", p["name"])).st_ino for p in old.values()}
    evaluate(emb, "train")  # the report in EMB: kept by a rerun of the same version, removed by a new one's
    assert embed(data, root / "run", emb, batch_size=BATCH).stats.parts_embedded == 0
    assert (emb / "eval.json").exists() and (emb / "eval.md").exists()
    shutil.copytree(root / "raw" / late, raw / late)
    build(raw, data, BuildConfig(shard_max_samples=2), EngineConfig("local"))

    result = embed(data, root / "run", emb, batch_size=BATCH)
    meta = S.read_meta(emb)
    assert not (emb / "eval.json").exists() and not (emb / "eval.md").exists()  # it described the old version
    new = {p["shard"]: p for p in meta["parts"]}
    renumbered = {s for s in old if new[s]["name"] != old[s]["name"]}
    assert renumbered and all(s.startswith("val-") for s in renumbered)  # the case under test
    added = set(new) - set(old)
    assert added and all(new[s]["fingerprint"] != p["fingerprint"] for s in added for p in old.values())
    s = result.stats
    assert (s.parts_embedded, s.parts_kept, s.parts_moved) == (len(added), len(old), len(renumbered))
    assert s.samples_embedded == sum(new[x]["samples"] for x in added)
    # a moved part is the same file (renamed), under its new number
    assert all(os.stat(S.part_path(emb, "image", new[x]["name"])).st_ino == inodes[x] for x in old)
    assert json.loads(S.marker_path(emb, new[min(renumbered)]["name"]).read_text())["shard"] == min(renumbered)
    embed(data, root / "run", tmp_path / "fresh", batch_size=BATCH)
    assert _parts(emb) == _parts(tmp_path / "fresh") and meta["parts"] == S.read_meta(tmp_path / "fresh")["parts"]
    assert sorted(p.name for p in (emb / "image").iterdir()) == [p["name"] + ".parquet" for p in meta["parts"]]


def _copy(emb: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(emb, to, ignore=shutil.ignore_patterns(S.LOCK))
    return to


def test_a_rerun_embeds_again_the_parts_whose_files_were_deleted_or_truncated(root, clean, tmp_path):
    emb = _copy(clean, tmp_path / "emb")
    parts = S.read_meta(emb)["parts"]
    gone, cut = S.part_path(emb, "audio", parts[1]["name"]), S.part_path(emb, "image", parts[-1]["name"])
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    result = embed(root / "data", root / "run", emb, batch_size=BATCH)
    assert (result.stats.parts_embedded, result.stats.parts_kept) == (2, len(parts) - 2)
    assert result.stats.samples_embedded == parts[1]["samples"] + parts[-1]["samples"]
    assert _parts(emb) == _parts(clean) and S.read_meta(emb)["parts"] == parts
    keys, _ = _vectors(emb)["audio"]
    assert search(emb, "key", keys[-1], to="audio", k=1, source="audio")[0].key == keys[-1]
    assert evaluate(emb, "train").to_dict() == evaluate(clean, "train", tmp_path / "eval-clean").to_dict()


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("batch_size", [0, -2])
def test_a_batch_size_below_1_is_refused_before_emb_is_touched(root, clean, tmp_path, batch_size):
    from schemas.errors import InputError

    emb = _copy(clean, tmp_path / "emb")
    before = _tree(emb)
    with pytest.raises(InputError, match=f"--batch-size {batch_size}: must be a whole number of at least 1"):
        embed(root / "data", root / "run", emb, batch_size=batch_size)
    with pytest.raises(InputError, match="--workers -1"):
        embed(root / "data", root / "run", emb, batch_size=BATCH, engine="ray", workers=-1)
    assert _tree(emb) == before and S.read_meta(emb)["counts"] == S.read_meta(clean)["counts"]


def test_emb_inside_data_or_run_or_on_a_file_is_refused_before_anything_is_written(root, tmp_path):
    from schemas.errors import InputError

    data, run = root / "data", root / "run"
    before = {"data": _tree(data), "run": _tree(run)}
    for emb, what in [(data, "DATA"), (data / "emb", "DATA"), (run, "RUN"), (run / "model", "RUN"),
                      (run / "checkpoints" / "x", "RUN"), (tmp_path / "link" / "emb", "DATA")]:  # fmt: skip
        if emb.parent.name == "link":
            emb.parent.symlink_to(data)  # the same folder by another name
        with pytest.raises(InputError, match=f"must not be {what} .* (or inside it|or one of its own folders)"):
            embed(data, run, emb, batch_size=BATCH)
    assert {"data": _tree(data), "run": _tree(run)} == before
    # a folder of its own inside RUN (the train DAG's RUN/emb) is an EMB like any other
    embed(data, run, run / "emb", batch_size=BATCH)
    assert (run / "emb" / S.META).exists()
    shutil.rmtree(run / "emb")
    (tmp_path / "file").write_text("x")
    for emb in (tmp_path / "file", tmp_path / "file" / "emb"):
        with pytest.raises(InputError, match=f"{tmp_path / 'file'} is a file, not a folder"):
            embed(data, run, emb, batch_size=BATCH)
    assert (tmp_path / "file").read_text() == "x"


def test_cli_refuses_emb_inside_data_with_one_line_and_exit_2(root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    cmd = [sys.executable, "-m", "bindset.cli", "embed", str(root / "data"), str(root / "run"),
           str(root / "data" / "emb"), "--quiet", "--log-file", str(tmp_path / "embed.log")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "must not be DATA" in lines[0] and not (root / "data" / "emb").exists()


def _tagged(tag: str) -> list[int]:
    """Processes whose environment holds ``tag`` (the embed, its forkserver and loader processes)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if tag.encode() in (proc / "environ").read_bytes():
                    out.append(int(proc.name))
            except OSError:  # gone, or not ours
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loader_processes_and_their_forkserver_die_with_a_killed_embed(root, tmp_path):
    import time
    import uuid

    cfg = PRESETS["tiny"]
    cfg = cfg.replace(data=cfg.data.replace(loader_workers=1, depth_norm=(0.0, 1.0)))
    torch.manual_seed(0)
    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, tower_embed_dim(cfg.tower))
    write_checkpoint(tmp_path / "run" / "model", model, None, TrainState(0, 0, 0, cfg.to_dict(), {}))
    value = uuid.uuid4().hex
    tag = f"BINDSET_TEST_TAG={value}"
    env = {**os.environ, FAULT_ENV: "kill_after_parts:1", "PYTHONPATH": str(REPO), "BINDSET_TEST_TAG": value}
    cmd = [sys.executable, "-m", "bindset.cli", "embed", str(root / "data"), str(tmp_path / "run"),
           str(tmp_path / "emb"), "--batch-size", str(BATCH), "--quiet", "--log-file",
           str(tmp_path / "embed.log")]  # fmt: skip
    with open(tmp_path / "stderr", "w") as err:  # a file, not a pipe: a leftover loader would hold a pipe open
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()[-2000:]
    deadline = time.monotonic() + 20
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _tagged(tag)
    for pid in left:  # not to leave them behind when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not left


def test_an_index_pq_m_that_cannot_fit_the_vectors_is_refused_before_any_work(root, clean, tmp_path):
    """``pq_m`` must divide the run's vector dimension (128 for the tiny preset): exit 2 before EMB is touched,
    even where this dataset's index would have fallen back to exact and never used it."""
    emb = tmp_path / "emb"
    shutil.copytree(clean, emb)
    before = {p: p.read_bytes() for p in emb.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="pq_m 48 .* must divide the embedding dimension 128"):
        embed(root / "data", root / "run", emb, batch_size=BATCH, index=IndexParams(kind="ivf_pq", pq_m=48))
    assert {p: p.read_bytes() for p in emb.rglob("*") if p.is_file()} == before
