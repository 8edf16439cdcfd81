"""Cached image embeddings: the frozen image tower run once per dataset, reused by every training run.

The tower is frozen, so its embedding of an un-augmented frame never changes; caching it removes the
tower's forward pass and all frame decoding from training. What the cache gives up: image augmentation
(each sample's image side is one fixed centre crop, every epoch), and it is tied to one tower checkpoint
and one frame rule (its folder name is a fingerprint of both and of the dataset version).

    DATA/_cache/image_emb-<fingerprint>/emb.npy    float32 N x D, NaN rows where a sample has no frame
    DATA/_cache/image_emb-<fingerprint>/keys.json  the sample keys, in index.parquet order
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipelines import storage
from schemas import modalities as M
from training.config import TrainConfig

CACHE = "_cache"


def cache_dir(data: Path, cfg: TrainConfig) -> Path:
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    ckpt = cfg.tower.checkpoint
    weights = None
    if ckpt:
        st = os.stat(ckpt)
        weights = [str(Path(ckpt).resolve()), st.st_size, st.st_mtime_ns]
    tower = {k: v for k, v in asdict(cfg.tower).items() if k != "model_config_paths"}
    key = json.dumps([manifest["version"], tower, weights, cfg.data.image_frames], sort_keys=True)
    return Path(data) / CACHE / f"image_emb-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class CachedImages:
    """Row ``i`` of a SampleTable -> its cached vector (memory-mapped: the matrix may exceed RAM)."""

    def __init__(self, folder: Path, keys: list[str], shuffle_seed: int | None = None):
        self.matrix = np.load(folder / "emb.npy", mmap_mode="r", allow_pickle=False)
        position = {k: i for i, k in enumerate(json.loads((folder / "keys.json").read_text()))}
        missing = [k for k in keys if k not in position]
        if missing:
            raise ValueError(f"{folder}: image cache lacks {len(missing)} sample(s), e.g. {missing[0]}")
        self.rows = np.array([position[k] for k in keys], np.int64)
        if shuffle_seed is not None:  # the negative control: every sample gets some other sample's image
            self.rows = self.rows[np.random.default_rng(shuffle_seed).permutation(len(self.rows))]

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __getitem__(self, i: int) -> np.ndarray:
        return np.array(self.matrix[self.rows[i]], np.float32)  # a writable copy, not a view of the map


def build_image_cache(data: Path, cfg: TrainConfig, device: str = "cpu", progress=None) -> Path:
    """Compute the cache unless it exists; returns its folder."""
    from training.inputs import ModelInputs, collate
    from training.shards import SampleReader, SampleTable, loader_context
    from training.towers import FrozenTowers

    folder = cache_dir(data, cfg)
    if (folder / "emb.npy").exists() and (folder / "keys.json").exists():
        return folder
    table = SampleTable.load(data, None)
    towers = FrozenTowers(cfg.tower, device)
    inputs = ModelInputs(cfg.data, towers.image_size, towers.mean, towers.std)
    reader = SampleReader(table, frozenset(M.VIDEO.members))
    batches = [list(range(i, min(i + 64, len(table)))) for i in range(0, len(table), 64)]
    loader = torch.utils.data.DataLoader(reader, batch_sampler=batches, collate_fn=collate,
                                         num_workers=cfg.data.loader_workers,
                                         multiprocessing_context=loader_context(cfg.data.loader_workers))  # fmt: skip
    out = np.full((len(table), towers.embed_dim), np.nan, np.float32)
    bar = progress(len(batches)) if progress else None
    for batch in loader:
        if "frame0" in batch:
            frames = inputs.frames(batch, device, train=False)
            emb = towers.image_embedding(frames, cfg.data.image_frames).cpu().numpy()
            ok = frames["frame0_mask"].cpu().numpy()
            out[batch["index"].numpy()[ok]] = emb[ok]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    tmp = storage.staging_dir(folder)
    np.save(tmp / "emb.npy", out, allow_pickle=False)
    (tmp / "keys.json").write_text(json.dumps(table.keys))
    storage.fsync_tree(tmp)
    storage.replace_dir(tmp, folder)
    return folder


def wait_for_image_cache(data: Path, cfg: TrainConfig, timeout_s: float = 24 * 3600) -> Path:
    import time

    folder = cache_dir(data, cfg)
    deadline = time.monotonic() + timeout_s
    while not ((folder / "emb.npy").exists() and (folder / "keys.json").exists()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder}: the image cache did not appear within {timeout_s:.0f} s")
        time.sleep(2)
    return folder
