"""Training pieces on CPU: encoders, the distributed loss, per-worker reading, batched inputs, checkpoints
and resume, the frozen towers from a local file, the image cache, and the CLI from train to eval."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build
from training.checkpoint import CheckpointDir, TrainState, load_checkpoint, write_checkpoint
from training.config import ENCODER_PRESETS, PRESETS, DataConfig, TrainConfig, tiny_tower
from training.encoders import BindingModel, ModalityEncoder
from training.inputs import ModelInputs, collate, crop_boxes, resize_crop
from training.loss import BindingLoss, info_nce
from training.shards import PAD, BatchSampler, EpochPlan, SampleReader, SampleTable
from transforms.config import BuildConfig

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    synth(root / "raw", SynthConfig(sessions=5, seconds=10.0, width=160, height=120, seed=4))
    build(root / "raw", root / "data", BuildConfig(shard_max_samples=3), EngineConfig("local"))
    return root / "data"


# ------------------------------------------------------------------------------------------ encoders


def test_encoder_token_geometry_follows_imagebind():
    cfgs = ENCODER_PRESETS["imagebind"]
    assert cfgs["audio"].tokens() == 12 * 19  # patch 16, stride 10 over 128x204
    assert cfgs["depth"].tokens() == cfgs["thermal"].tokens() == 14 * 14
    assert cfgs["imu"].tokens() == 250  # unfold(8) over 2000 steps
    sizes = {m: (c.width, c.layers, c.heads) for m, c in cfgs.items()}
    assert sizes == {"audio": (768, 12, 12), "depth": (384, 12, 8), "thermal": (768, 12, 12), "imu": (512, 6, 8)}
    assert {m: c.logit_scale for m, c in cfgs.items()} == {"audio": 20.0, "depth": 5.0, "thermal": 10.0, "imu": 5.0}


def test_imagebind_imu_encoder_runs_at_full_size():
    enc = ModalityEncoder(ENCODER_PRESETS["imagebind"]["imu"], 1024).eval()
    assert enc.stem.linear.in_features == 48 and enc.stem.linear.bias is None
    with torch.no_grad():
        out = enc(torch.randn(2, 6, 2000))
    assert out.shape == (2, 1024)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("modality,shape", [("audio", (3, 1, 128, 204)), ("depth", (3, 1, 224, 224)),
                                            ("thermal", (3, 1, 224, 224)), ("imu", (3, 6, 2000))])  # fmt: skip
def test_tiny_encoders_give_unit_vectors(modality, shape):
    enc = ModalityEncoder(ENCODER_PRESETS["tiny"][modality], 32).eval()
    out = enc(torch.randn(shape))
    assert out.shape == (3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    assert enc.pos.shape[1] == ENCODER_PRESETS["tiny"][modality].tokens() + 1
    with pytest.raises(ValueError, match=modality):
        enc(torch.randn(3, 1, 100, 100) if modality != "imu" else torch.randn(3, 6, 100))


def test_imu_unfold_groups_eight_consecutive_steps_of_all_channels():
    enc = ModalityEncoder(ENCODER_PRESETS["tiny"]["imu"], 16)
    x = torch.arange(6 * 2000, dtype=torch.float32).view(1, 6, 2000)
    captured = {}
    enc.stem.linear.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    enc(x)
    tokens = captured["x"]
    assert tokens.shape == (1, 250, 48)
    # token 1 holds steps 8..15 of channel 0, then of channel 1, ...
    assert tokens[0, 1, :8].tolist() == list(range(8, 16))
    assert tokens[0, 1, 8:16].tolist() == [2000 + t for t in range(8, 16)]


# -------------------------------------------------------------------------------------------- loss


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_loss_with_fake_gather_equals_single_process_loss():
    world, b, d = 3, 4, 8
    image = _unit(world * b, d, seed=1)
    audio = _unit(world * b, d, seed=2).requires_grad_()
    depth = _unit(world * b, d, seed=3).requires_grad_()
    mask_a = torch.rand(world * b, generator=torch.Generator().manual_seed(4)) > 0.3
    mask_d = torch.ones(world * b, dtype=torch.bool)
    mask_d[::5] = False
    scales = {"audio": 20.0, "depth": 5.0}
    single, parts = BindingLoss(scales)(image, {"audio": audio, "depth": depth}, {"audio": mask_a, "depth": mask_d})
    single.backward()
    grads_single = audio.grad.clone(), depth.grad.clone()
    expected_audio = info_nce(image[mask_a], audio.detach()[mask_a], 20.0)
    assert parts["audio"].item() == pytest.approx(expected_audio.item(), rel=1e-6)

    sl = lambda t, r: t[r * b : (r + 1) * b]  # noqa: E731
    summed = {"audio": torch.zeros_like(audio), "depth": torch.zeros_like(depth)}
    for rank in range(world):
        # this rank's live tensors; the fake all-gather returns every rank's values, in the order the loss
        # gathers (image, then mask and embedding per modality), like torch.distributed.all_gather would
        a_local = sl(audio, rank).detach().clone().requires_grad_()
        d_local = sl(depth, rank).detach().clone().requires_grad_()
        order = iter([image, mask_a.to(torch.uint8), audio.detach(), mask_d.to(torch.uint8), depth.detach()])

        def gather(t, order=order, rank=rank):
            full = next(order)
            assert torch.equal(t.detach(), sl(full, rank)), "gathered out of order"
            return [sl(full, r).clone() for r in range(world)]

        fn = BindingLoss(scales, rank, world, gather)
        loss, _ = fn(sl(image, rank), {"audio": a_local, "depth": d_local},
                     {"audio": sl(mask_a, rank), "depth": sl(mask_d, rank)})  # fmt: skip
        assert loss.item() == pytest.approx(single.item(), rel=1e-6)
        (loss * fn.backward_scale).backward()
        # DDP averages gradients over ranks; each rank's backward reaches only its own slice
        summed["audio"][rank * b : (rank + 1) * b] += a_local.grad / world
        summed["depth"][rank * b : (rank + 1) * b] += d_local.grad / world
    torch.testing.assert_close(summed["audio"], grads_single[0])
    torch.testing.assert_close(summed["depth"], grads_single[1])


def test_loss_ignores_a_modality_with_fewer_than_two_samples():
    image, audio = _unit(4, 8), _unit(4, 8, seed=5).requires_grad_()
    mask = torch.tensor([True, False, False, False])
    loss, parts = BindingLoss({"audio": 20.0})(image, {"audio": audio}, {"audio": mask})
    assert set(parts) == {"audio"} and parts["audio"].item() == 0.0 and loss.item() == 0.0
    loss.backward()  # still connected to the graph (DDP needs every parameter used)
    assert audio.grad is not None and float(audio.grad.abs().sum()) == 0.0


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("world", [1, 2, 3])
def test_an_epoch_reads_every_sample_once_across_ranks_and_loader_workers(data, world):
    table = SampleTable.load(data, "train")
    plan = EpochPlan(len(table), batch_size=4, world_size=world, seed=7)
    seen, workers_used = [], set()
    for rank in range(world):
        sampler = BatchSampler(plan, rank)
        sampler.set_epoch(3)
        loader = torch.utils.data.DataLoader(SampleReader(table, frozenset({"mel.npy", "json"})),
                                             batch_sampler=sampler, collate_fn=collate, num_workers=2)  # fmt: skip
        steps = 0
        for batch in loader:
            steps += 1
            real = batch["index"] != PAD
            seen += batch["index"][real].tolist()
            workers_used |= set(batch["loader_worker"][real].tolist())
            # a real sample's mel is really there; padding rows carry nothing
            assert bool(batch["mel_mask"][~real].any()) is False
        assert steps == plan.steps  # every rank takes the same number of steps (collectives stay matched)
    assert sorted(seen) == list(range(len(table)))  # nothing duplicated, nothing dropped
    assert workers_used == {0, 1}


def test_epochs_reshuffle_and_resume_skips_whole_batches():
    plan = EpochPlan(50, 4, 2, seed=1)
    e0 = plan.rank_batches(0, 0) + plan.rank_batches(0, 1)
    e1 = plan.rank_batches(1, 0) + plan.rank_batches(1, 1)
    assert e0 != e1 and sorted(sum(e0, [])) == sorted(sum(e1, [])) == [PAD] * 6 + list(range(50))
    assert plan.rank_batches(0, 1, skip=3) == plan.rank_batches(0, 1)[3:]


def test_disjoint_pairing_gives_each_session_one_modality(data):
    table = SampleTable.load(data, "train", pairing="disjoint")
    for session in set(table.sessions):
        rows = np.array([s == session for s in table.sessions])
        trained = [m for m in ("audio", "depth", "thermal", "imu") if table.allowed[m][rows].any()]
        assert len(trained) == 1, (session, trained)
    joint = SampleTable.load(data, "train")
    assert all((joint.allowed[m] == joint.has[m]).all() for m in joint.has)


# ------------------------------------------------------------------------------------------- inputs


def test_batched_resize_crop_matches_per_image_resize_and_centre_crop():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3)).astype(np.uint8), (0, 0), 6)
    other = cv2.GaussianBlur(rng.integers(0, 255, (300, 200, 3)).astype(np.uint8), (0, 0), 6)
    batch = collate([{"index": 0, "loader_worker": 0, "jpg": smooth}, {"index": 1, "loader_worker": 0, "jpg": other}])
    boxes, _ = crop_boxes(batch["frame0_hw"], False, (1.0, 1.0), None)
    out = resize_crop(batch["frame0"].float(), boxes, 224)
    for i, img in enumerate((smooth, other)):
        h, w = img.shape[:2]
        s = 224 / min(h, w)
        resized = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA).astype(np.float32)
        y0, x0 = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
        ref = torch.from_numpy(resized[y0 : y0 + 224, x0 : x0 + 224]).permute(2, 0, 1)
        assert float((out[i] - ref).abs().mean()) < 1.5  # grey levels, on smooth content


def test_depth_becomes_disparity_and_invalid_stays_zero():
    mm = np.full((120, 160), 2000, np.uint16)
    mm[:, :40] = 0  # no measurement
    meta = {"depth_intrinsics": {"fx": 200.0, "baseline_m": 0.1}}
    batch = collate([{"index": 0, "loader_worker": 0, "depth.png": mm, "json": meta}])
    cfg = DataConfig(disparity_scale=1.0)
    x, mask = ModelInputs(cfg).depth(batch, "cpu")
    assert x.shape == (1, 1, 224, 224) and bool(mask[0])
    centre = x[0, 0, 100:120, 150:200]
    torch.testing.assert_close(centre, torch.full_like(centre, 0.1 * 200.0 / 2.0))
    # the centre crop of 160x120 starts at x=20, so the invalid band is the first (40-20)*224/120 columns
    assert float(x[0, 0, :, :30].abs().max()) == 0.0
    metric, _ = ModelInputs(DataConfig(depth_mode="metric", depth_max_m=10.0)).depth(batch, "cpu")
    assert float(metric[0, 0, 100, 150]) == pytest.approx(0.2)


def test_thermal_8_and_16_bit_both_land_in_unit_range():
    eight = np.tile(np.arange(160, dtype=np.uint8), (120, 1))
    sixteen = (np.tile(np.arange(160, dtype=np.uint16), (120, 1)) * 100 + 29000).astype(np.uint16)
    batch = collate([{"index": 0, "loader_worker": 0, "thermal.png": eight},
                     {"index": 1, "loader_worker": 0, "thermal.png": sixteen}])  # fmt: skip
    x, mask = ModelInputs(DataConfig()).thermal(batch, "cpu")
    assert mask.all() and x.shape == (2, 1, 224, 224)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # 8-bit is divided by 255: the centre crop keeps columns 20..139, so at most (139/255 - 0.5) / 0.5
    assert float(x[0].max()) == pytest.approx(139 / 255 * 2 - 1, abs=0.01)
    # 16-bit is stretched between the frame's 1st and 99th percentiles (the crop keeps the middle 3/4)
    assert float(x[1].max()) > 0.7 and float(x[1].min()) < -0.7


# ---------------------------------------------------------------------------------------- checkpoints


def _tiny_cfg(**kw) -> TrainConfig:
    data = TINY.data.replace(loader_workers=0)
    return TINY.replace(data=data, **kw)


def test_checkpoint_round_trip_is_exact_and_never_pickles(tmp_path):
    cfg = _tiny_cfg()
    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, 16)
    from training.loop import make_optimizer

    opt = make_optimizer(model, cfg)
    model({"audio": torch.randn(2, 1, 128, 204), "imu": torch.randn(2, 6, 2000)})["audio"].sum().backward()
    opt.step()
    folder = write_checkpoint(tmp_path / "c", model, opt, TrainState(5, 1, 2, cfg.to_dict(), {"loss": 1.0}))
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    clone = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, 16)
    opt2 = make_optimizer(clone, cfg)
    state = load_checkpoint(folder, clone, opt2)
    assert (state.step, state.epoch, state.step_in_epoch) == (5, 1, 2)
    for (n, a), (_, b) in zip(model.state_dict().items(), clone.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][pid][k]))


def test_checkpoint_dir_keeps_the_newest_complete_ones(tmp_path):
    d = CheckpointDir(tmp_path / "ck", keep=2)
    model = torch.nn.Linear(2, 2)
    for step in (2, 4, 6):
        d.commit(write_checkpoint(d.staging(), model, None, TrainState(step, 0, step, {}, {})), step)
    (tmp_path / "ck" / "ckpt-000000008").mkdir()  # half-written: no state.json
    assert [p.name for p in d.complete()] == ["ckpt-000000004", "ckpt-000000006"]
    assert d.latest().name == "ckpt-000000006"


def test_resume_mid_epoch_reproduces_an_uninterrupted_run(data, tmp_path):
    from training.loop import LocalRuntime, train_loop
    from training.run import train

    cfg = _tiny_cfg(epochs=2, checkpoint_every=1, modalities=("audio", "imu"), batch_size=4)
    whole = train(data, tmp_path / "whole", cfg, engine="local")
    part_cfg = cfg.replace(max_steps=whole.step // 2 + 1)  # stops inside an epoch
    train(data, tmp_path / "part", part_cfg, engine="local")
    rt = LocalRuntime(tmp_path / "part", keep=cfg.keep_checkpoints)
    assert train_loop(data, tmp_path / "part", cfg, rt).resumed_from_step == part_cfg.max_steps
    from safetensors.torch import load_file

    a = load_file(rt.checkpoints.latest() / "model.safetensors")
    b = load_file(whole.model / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    events = [json.loads(x) for x in (tmp_path / "part" / "events.jsonl").read_text().splitlines()]
    assert [e["resumed_from_step"] for e in events if e["event"] == "start"] == [0, part_cfg.max_steps]


# ------------------------------------------------------------------------------------ towers, cache


def test_tower_loads_a_local_checkpoint_without_network(tmp_path, monkeypatch):
    import socket

    from training.towers import FrozenTowers

    def no_network(*a, **k):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    random_a = FrozenTowers(tiny_tower().replace(init_seed=1))
    path = tmp_path / "tower.pt"
    torch.save(random_a.model.state_dict(), path)
    loaded = FrozenTowers(tiny_tower().replace(init_seed=2, checkpoint=str(path)))
    fresh_b = FrozenTowers(tiny_tower().replace(init_seed=2))
    px = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(loaded.encode_image(px), random_a.encode_image(px))
    assert not torch.allclose(fresh_b.encode_image(px), random_a.encode_image(px))
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(FileNotFoundError, match="not a local file"):
        FrozenTowers(tiny_tower().replace(checkpoint=str(tmp_path / "missing.pt")))


def test_image_cache_equals_the_online_tower(data):
    from training.image_cache import CachedImages, build_image_cache, cache_dir
    from training.towers import FrozenTowers

    cfg = _tiny_cfg()
    folder = build_image_cache(data, cfg)
    assert folder == cache_dir(data, cfg)
    table = SampleTable.load(data, "val")
    cached = CachedImages(folder, table.keys)
    towers = FrozenTowers(cfg.tower)
    inputs = ModelInputs(cfg.data, towers.image_size, towers.mean, towers.std)
    reader = SampleReader(table, frozenset({"jpg", "frame1.jpg"}))
    batch = collate([reader[i] for i in range(len(table))])
    online = towers.image_embedding(inputs.frames(batch, "cpu", train=False), cfg.data.image_frames)
    torch.testing.assert_close(torch.from_numpy(np.stack([cached[i] for i in range(len(table))])), online,
                               atol=1e-5, rtol=1e-4)  # fmt: skip
    shuffled = CachedImages(folder, table.keys, shuffle_seed=3)
    assert sorted(shuffled.rows.tolist()) == sorted(cached.rows.tolist()) and not (shuffled.rows == cached.rows).all()


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_train_embed_search_eval(data, tmp_path, capsys):
    import pyarrow.parquet as pq

    from bindset.cli import main

    run, emb = tmp_path / "run", tmp_path / "emb"
    assert main(["train", str(data), str(run), "--engine", "local", "--epochs", "2", "--quiet"]) == 0
    assert "train:" in capsys.readouterr().out and (run / "model" / "model.safetensors").exists()
    assert main(["embed", str(data), str(run), str(emb), "--quiet"]) == 0
    t = pq.read_table(emb / "audio")  # the parts, one per shard
    assert t.column_names == ["key", "modality", "split", "session", "label", "run_id", "vector"]
    shards = json.loads((data / "shards" / "sizes.json").read_text())
    assert sorted(p.name for p in (emb / "audio").iterdir()) == [f"part-{i:06d}.parquet" for i in range(len(shards))]
    assert t.schema.field("vector").type.list_size == 128 and set(t.column("modality").to_pylist()) == {"audio"}
    for m in ("image", "text", "audio", "depth", "thermal", "imu"):
        assert (emb / "index" / f"{m}.faiss").exists(), m
    capsys.readouterr()
    key = t.column("key")[0].as_py()
    assert main(["search", str(emb), "--key", key, "--from", "audio", "--to", "audio", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[2] == key  # a vector's nearest neighbour in its own index is itself
    assert main(["search", str(emb), "--text", "birds singing in a forest", "--to", "depth", "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    wav = tmp_path / "q.wav"
    import av

    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=44100, layout="mono")
        tone = (np.sin(np.arange(44100 * 3) * 2 * np.pi * 440 / 44100) * 8000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = 44100
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    assert main(["search", str(emb), "--audio", str(wav), "--to", "image", "-k", "1"]) == 0
    assert main(["search", str(emb), "--text", "x", "--audio", str(wav)]) == 2  # one query only
    capsys.readouterr()
    assert main(["eval", str(emb)]) == 0
    report = json.loads((emb / "eval.json").read_text())
    assert {(r["query"], r["target"]) for r in report["image_modality"]} >= {("audio", "image"), ("image", "depth")}
    assert any((r["query"], r["target"]) == ("audio", "depth") for r in report["emergent"])
    assert "Emergent retrieval" in (emb / "eval.md").read_text()


def test_train_config_file_errors_are_readable(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps({"batch_sise": 8}))
    with pytest.raises(ValueError, match="batch_sise: unknown key"):
        TrainConfig.from_file(bad)
    bad.write_text(json.dumps({"data": {"pairing": "joint", "shuffle_pairs": True}}))
    with pytest.raises(ValueError, match="needs data.cache_image_embeddings"):
        TrainConfig.from_file(bad)
    good = tmp_path / "cfg.yaml"
    good.write_text("encoders: tiny\nmodalities: [audio, depth]\noptim: {audio: {lr: 0.01, weight_decay: 0}}\n")
    cfg = TrainConfig.from_file(good)
    assert cfg.modalities == ("audio", "depth") and cfg.optim["audio"].lr == 0.01 and cfg.optim["depth"].lr == 1.6e-3


# ---------------------------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_train_recovers_from_a_killed_worker(data, tmp_path, monkeypatch):
    """Two Ray Train workers; rank 1 is SIGKILLed after step 5. FailureConfig restarts the group from the
    checkpoint of step 4 and the run finishes every step."""
    from training.loop import FAULT_ENV
    from training.run import train

    monkeypatch.setenv(FAULT_ENV, "kill:1:5:4")
    cfg = _tiny_cfg(epochs=3, checkpoint_every=2, batch_size=4, modalities=("audio", "imu"), max_failures=2)
    run = tmp_path / "run"
    staging = Path(tempfile.gettempdir())
    before = set(staging.glob("bindset-ckpt-*"))
    result = train(data, run, cfg, workers=2, engine="ray")
    # the workers' checkpoint staging folders go with them; the first group's two (one SIGKILLed, the other
    # torn down by Ray) keep theirs, never a checkpoint in it (each is deleted once Ray has uploaded it)
    left = set(staging.glob("bindset-ckpt-*")) - before
    assert len(left) <= 2 and not [p for d in left for p in d.rglob("*") if p.is_file()], left
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    total = starts[0]["total_steps"]
    assert [e["resumed_from_step"] for e in starts] == [0, 4], events
    assert all(e["world_size"] == 2 for e in starts)
    assert len({e["pid"] for e in starts}) == 2  # a new process group, not the same one going on
    assert events[-1] == {**events[-1], "event": "done", "step": total}
    assert result.step == total and (result.model / "model.safetensors").exists()
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == total and {2, 4} <= set(steps) and 5 not in steps
