"""The image-embedding cache under two processes: a real 2-rank gloo group on CPU (torch.distributed, a
FileStore as torchrun's agent store would be: it outlives rank 0), spawned per scenario. Rank 0 builds the
cache of a tiny real dataset with the tiny random tower; rank 1 waits for it, and must fail at once, not
after a day of polling, when rank 0 dies, fails or hangs.

Each rank writes what happened to it as JSON (time in, time out, its folder or its error); the test reads
those files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from training.config import PRESETS, TrainConfig
from training.image_cache import CachedImages, cache_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # imported here, not at the top: every spawned rank imports this module, and needs none of the build
    from bindset.synth.generate import SynthConfig, synth
    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    root = tmp_path_factory.mktemp("cache")
    synth(root / "raw", SynthConfig(sessions=2, seconds=4.0, width=96, height=72, seed=5, workers=1))
    build(root / "raw", root / "data", BuildConfig(), EngineConfig("local"))
    return root / "data"


def _cfg(**tower) -> TrainConfig:
    d = PRESETS["tiny"].to_dict()
    return TrainConfig.from_dict({**d, "tower": {**d["tower"], **tower}, "data": {**d["data"], "loader_workers": 0}})


class _SlowBar:
    """A progress bar that makes rank 0's build take a while, so that rank 1 is surely waiting in it."""

    def __init__(self, total: int):
        pass

    def update(self, n: int) -> None:
        time.sleep(1.0)

    def close(self) -> None:
        pass


class _DyingBar(_SlowBar):
    def update(self, n: int) -> None:
        os._exit(3)  # rank 0's process ends mid-build: no exception, no message, no cache


class _HangingBar(_SlowBar):
    def update(self, n: int) -> None:
        time.sleep(120)  # alive but stuck: only the timeout can end rank 1's wait


BARS = {"slow": _SlowBar, "dies": _DyingBar, "hangs": _HangingBar}


def _rank(rank: int, store: str, data: str, out: str, bar: str, timeout_s: float, tower: dict) -> None:
    import torch.distributed as dist

    from training.image_cache import ensure_image_cache

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cfg = _cfg(**tower)
    record: dict = {"entered": time.time()}
    try:
        record["existed"] = (cache_dir(Path(data), cfg) / "emb.npy").exists()
        progress = BARS[bar] if rank == 0 else None
        folder = ensure_image_cache(Path(data), cfg, "cpu", progress, timeout_s=timeout_s)
        record.update(folder=str(folder))
    except Exception as exc:
        record.update(error=f"{type(exc).__name__}: {exc}")
    record["left"] = time.time()
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def _spawn(tmp_path: Path, data: Path, bar: str, timeout_s: float, tower: dict | None = None,
           wait_for_rank0: bool = True) -> tuple[list[int | None], dict[int, dict]]:  # fmt: skip
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    args = (str(tmp_path / "store"), str(data), str(tmp_path), bar, timeout_s, tower or {})
    procs = [ctx.Process(target=_rank, args=(r, *args)) for r in range(2)]
    for p in procs:
        p.start()
    procs[1].join(120)
    procs[0].join(120 if wait_for_rank0 else 0.1)
    for p in procs:
        if p.is_alive():  # only the hanging rank 0, on purpose
            p.kill()
            p.join()
    records = {r: json.loads(f.read_text()) for r in range(2) if (f := tmp_path / f"rank{r}.json").exists()}
    return [p.exitcode for p in procs], records


def test_rank_1_waits_for_rank_0_to_build_the_cache_then_reads_it(data, tmp_path):
    codes, rec = _spawn(tmp_path, data, "slow", timeout_s=120)
    assert codes == [0, 0], rec
    folder = cache_dir(data, _cfg())
    assert rec[0]["folder"] == rec[1]["folder"] == str(folder)
    assert not rec[1]["existed"]  # there was nothing to read when rank 1 arrived
    # rank 1 left only after rank 0 had built: at least one slowed batch later, and not before rank 0
    assert rec[1]["left"] - rec[1]["entered"] >= 1.0 and rec[1]["left"] >= rec[0]["left"] - 0.5
    keys = json.loads((folder / "keys.json").read_text())
    cached = CachedImages(folder, keys)
    emb = np.stack([cached[i] for i in range(len(keys))])
    assert len(keys) == 4 and emb.shape[1] > 0 and np.isfinite(emb).all()  # 2 sessions x 2 windows, all with frames
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_a_dead_rank_0_fails_rank_1_at_once_not_at_the_timeout(data, tmp_path):
    tower = {"init_seed": 11}  # another tower, so another cache folder than the other tests'
    start = time.time()
    codes, rec = _spawn(tmp_path, data, "dies", timeout_s=600, tower=tower)
    assert codes[0] == 3 and "folder" not in rec[1]
    waited = rec[1]["left"] - rec[1]["entered"]
    assert waited < 30 and time.time() - start < 60, rec  # the timeout is 600 s: gloo noticed the closed connection
    assert rec[1]["error"].startswith("ImageCacheError: rank 1: rank 0 died or did not finish building the image")
    assert "Connection closed by peer" in rec[1]["error"]
    assert not (cache_dir(data, _cfg(**tower)) / "emb.npy").exists()


def test_a_hung_rank_0_fails_rank_1_at_the_timeout(data, tmp_path):
    tower = {"init_seed": 12}
    codes, rec = _spawn(tmp_path, data, "hangs", timeout_s=2, tower=tower, wait_for_rank0=False)
    assert codes[1] == 0 and "folder" not in rec[1]  # rank 1 ended on its own, with its error recorded
    assert 1.5 <= rec[1]["left"] - rec[1]["entered"] < 30, rec
    assert "rank 0 died or did not finish building the image cache within 2 s" in rec[1]["error"]
    assert "Timed out" in rec[1]["error"]


def test_a_rank_0_that_fails_tells_rank_1_which_fails_too(data, tmp_path):
    broken = tmp_path / "tower.safetensors"
    broken.write_bytes(b"not a checkpoint")  # a truncated download: rank 0 cannot load the tower
    codes, rec = _spawn(tmp_path, data, "slow", timeout_s=600, tower={"checkpoint": str(broken)})
    assert codes == [0, 0]
    assert "error" in rec[0] and not rec[0]["error"].startswith("ImageCacheError"), rec[0]  # its own error
    assert rec[1]["error"] == ("ImageCacheError: rank 1: rank 0 failed to build the image cache; its error is in "
                               "rank 0's log")  # fmt: skip
    assert rec[1]["left"] - rec[1]["entered"] < 30


def test_one_process_without_a_group_just_builds(data, tmp_path):
    import torch.distributed as dist

    from training.image_cache import ensure_image_cache

    assert not dist.is_initialized()
    cfg = _cfg(init_seed=13)
    folder = ensure_image_cache(data, cfg)
    assert folder == cache_dir(data, cfg) and (folder / "emb.npy").exists() and (folder / "keys.json").exists()
