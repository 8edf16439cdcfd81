"""Cached image embeddings: the frozen image tower run once per dataset, reused by every training run.

The tower is frozen, so its embedding of an un-augmented frame never changes; caching it removes the
tower's forward pass and all frame decoding from training. What the cache gives up: image augmentation
(each sample's image side is one fixed centre crop, every epoch), and it is tied to one tower checkpoint
and one frame rule (its folder name is a fingerprint of both and of the dataset version).

    DATA/_cache/image_emb-<fingerprint>/emb.npy    float32 N x D, NaN rows where a sample has no frame
    DATA/_cache/image_emb-<fingerprint>/keys.json  the sample keys, in index.parquet order

When DATA is an object-store URL the cache lives in the run instead, ``RUN/_cache/image_emb-<fingerprint>/``
(the same fingerprint: dataset version, tower, frame rule): training never writes to DATA on object storage,
and the memory map needs a local file. Every run over a URL builds its own cache once.

Under several processes (torchrun; Ray Train workers), ``ensure_image_cache`` has rank 0 build it while the
other ranks wait in a collective with a timeout, so a rank 0 that dies or fails ends the run at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from pipelines import storage
from schemas import modalities as M
from training.config import TrainConfig

CACHE = "_cache"

#: How long ranks other than 0 wait for rank 0 to build the cache (a forward pass of the tower over every frame:
#: hours on a large dataset). It bounds a rank 0 that is alive but stuck, or a lost node; a rank 0 process that
#: dies is noticed at once, since gloo fails a pending receive when the peer's connection closes.
BUILD_TIMEOUT_S = 24 * 3600.0


class ImageCacheError(RuntimeError):
    """A rank other than 0 got no usable image cache: rank 0 failed, died or timed out, or DATA is not shared."""


def cache_dir(data: Path | storage.Location | str, cfg: TrainConfig, run: Path | None = None) -> Path:
    """The cache's folder: under DATA for a local dataset, under ``run`` (required then) for an object-store URL.

    Raises ``ValueError`` for a URL without ``run``; ``FileNotFoundError`` when DATA has no manifest.
    """
    from training.shards import dataset_location

    data = dataset_location(data)
    if isinstance(data, storage.Location):
        if run is None:
            raise ValueError(f"{data}: the image cache of a dataset on object storage lives in RUN; pass run=")
        manifest = json.loads(storage.read_bytes(data / "manifest.json"))
        root = Path(run)
    else:
        manifest = json.loads((Path(data) / "manifest.json").read_text())
        root = Path(data)
    ckpt = cfg.tower.checkpoint
    weights = None
    if ckpt:
        st = os.stat(ckpt)
        weights = [str(Path(ckpt).resolve()), st.st_size, st.st_mtime_ns]
    tower = {k: v for k, v in cfg.tower.to_dict().items() if k != "model_config_paths"}
    key = json.dumps([manifest["version"], tower, weights, cfg.data.image_frames], sort_keys=True)
    return root / CACHE / f"image_emb-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


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


def build_image_cache(data: Path | str, cfg: TrainConfig, device: str = "cpu", progress=None,
                      run: Path | None = None) -> Path:  # fmt: skip
    """Compute the cache unless it exists; returns its folder (``run``: see ``cache_dir``)."""
    from training.inputs import ModelInputs, collate
    from training.shards import SampleReader, SampleTable, loader_context
    from training.towers import FrozenTowers

    folder = cache_dir(data, cfg, run)
    if _complete(folder):
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


def _complete(folder: Path) -> bool:
    return (folder / "emb.npy").exists() and (folder / "keys.json").exists()


def ensure_image_cache(data: Path | str, cfg: TrainConfig, device: str = "cpu", progress=None, *,
                       timeout_s: float = BUILD_TIMEOUT_S, run: Path | None = None) -> Path:  # fmt: skip
    """The cache's folder, built once per run however many processes train.

    Without an initialised ``torch.distributed`` process group (one process, or the Ray driver before its
    workers start) this is ``build_image_cache``. With one (torchrun, Ray Train's TorchTrainer workers),
    rank 0 builds while every other rank waits for rank 0's verdict (0 built, 1 failed) in a broadcast on
    a gloo group created with ``timeout_s``: a barrier that also says whether it is safe to read on. Gloo,
    not the default group's backend, because NCCL waits on the GPU, where neither a timeout nor a dead
    peer ends the wait; gloo fails a pending receive when the peer's connection closes.

    Every rank of the default group must call this (``new_group`` is collective). Raises on rank 0 what
    building raised; on the other ranks ``ImageCacheError`` when rank 0 failed, died or did not finish
    within ``timeout_s`` seconds, or when the folder rank 0 built is not visible here (DATA must be one
    filesystem shared by every node; RUN, when DATA is on object storage).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return build_image_cache(data, cfg, device, progress, run)
    rank = dist.get_rank()
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    verdict = torch.zeros(1, dtype=torch.int32)
    try:
        if rank == 0:
            try:
                folder = build_image_cache(data, cfg, device, progress, run)
            except BaseException:
                verdict.fill_(1)
                # tell the others, but raise the build's own error whatever happens to the message
                with contextlib.suppress(RuntimeError):
                    dist.broadcast(verdict, 0, group=group)
                raise
            dist.broadcast(verdict, 0, group=group)
            return folder
        try:
            dist.broadcast(verdict, 0, group=group)
        except RuntimeError as exc:  # DistBackendError: "Connection closed by peer" or "Timed out waiting"
            raise ImageCacheError(f"rank {rank}: rank 0 died or did not finish building the image cache within "
                                  f"{timeout_s:g} s: {str(exc).splitlines()[0]}") from exc  # fmt: skip
        if verdict.item() != 0:
            raise ImageCacheError(f"rank {rank}: rank 0 failed to build the image cache; its error is in rank 0's log")
        folder = cache_dir(data, cfg, run)
        if not _complete(folder):
            raise ImageCacheError(f"rank {rank}: rank 0 built the image cache at {folder}, but this rank does not see "
                                  "it: DATA (RUN, for DATA on object storage) must be one filesystem shared by "
                                  "every node")  # fmt: skip
        return folder
    finally:
        dist.destroy_process_group(group)
