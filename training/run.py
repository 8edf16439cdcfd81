"""`bindset train`: the driver around the loop (cache, engine, export of the final model).

    bindset train DATA RUN [--preset tiny|imagebind] [--config FILE] [--workers N] [--gpu] [--engine ray|local]

RUN/ holds ``train_config.json``, ``events.jsonl`` (starts, resumes, the end), ``metrics.jsonl``,
``checkpoints/`` (local engine) or ``ray/`` (Ray Train storage), and ``model/``: the final encoders
(``model.safetensors``) and ``state.json``, which ``bindset embed`` reads.

DATA may be an ``s3://`` or ``gs://`` URL (training/shards.py reads it by byte range). RUN may be one too
(training/run_store.py): the run is staged in a local temp folder (which then holds the image cache of a URL
DATA, training/image_cache.py) and every checkpoint, log, ``train_config.json`` and the final model are
uploaded through the storage seam, ``state.json`` last in each folder; a rerun resumes from the newest
checkpoint on the store. With Ray Train, ``RunConfig.storage_path`` is the URL itself (``RUN/ray/``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from schemas.errors import InputError, MissingInputError
from training.checkpoint import MODEL, STATE, read_state
from training.config import TrainConfig
from training.run_store import RunStore

FINAL = "model"


@dataclass(frozen=True)
class TrainResult:
    run: Path | storage.Location  # as given: a local folder, or the URL
    model: Path | storage.Location
    step: int
    metrics: dict
    engine: str
    workers: int

    def summary_lines(self) -> list[str]:
        m = self.metrics
        return [
            f"train: {self.step} steps on {self.engine} x {self.workers} worker(s); final model {self.model}",
            f"  last loss {m.get('loss', float('nan')):.4f}, {m.get('samples_per_s', 0):.1f} samples/s per worker, "
            f"data wait {100 * m.get('data_wait_frac', 0):.1f}% of step time",
        ]


def export_model(run: Path, checkpoint: Path, store: RunStore | None = None) -> Path:
    """Copy a checkpoint's model and state into ``run/model/`` (atomically), and upload it to a URL RUN."""
    final = Path(run) / FINAL
    tmp = storage.staging_dir(final)
    for name in (MODEL, STATE):
        storage.copy_synced(Path(checkpoint) / name, tmp / name)
    storage.replace_dir(tmp, final)
    if store is not None:
        store.push_model(final)
    return final


def train(data: Path | str, run: Path | str, cfg: TrainConfig, *, workers: int = 1, gpu: bool = False,
          engine: str = "ray", ray_address: str | None = None, progress=None) -> TrainResult:  # fmt: skip
    from training.shards import dataset_location

    data = dataset_location(data)  # a local folder, or an s3:// / gs:// URL read through the storage seam
    if isinstance(data, Path):
        data = data.resolve()
    if not storage.exists(data / "index.parquet"):
        raise MissingInputError(f"{data}: no built dataset (index.parquet missing); run `bindset build` first")
    if engine not in ("ray", "local"):
        raise ValueError(f"unknown training engine {engine!r}; choose ray or local")
    store = RunStore.open(run)  # a URL RUN: staged in a local temp folder, uploaded through the seam
    try:
        return _train(data, store, cfg, workers, gpu, engine, ray_address, progress)
    finally:
        store.close()


def _train(data, store: RunStore, cfg: TrainConfig, workers: int, gpu: bool, engine: str, ray_address: str | None,
           progress) -> TrainResult:  # fmt: skip
    run = store.work
    from training.inputs import resolve_depth_norm

    cfg = resolve_depth_norm(data, cfg)  # "auto" becomes numbers before the config is written anywhere
    store.put_text("train_config.json", json.dumps(cfg.to_dict(), indent=1, sort_keys=True) + "\n")
    if cfg.data.cache_image_embeddings:
        from training.image_cache import ensure_image_cache

        if engine == "local" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            if not dist.is_initialized():  # torchrun: join now, for the cache's barrier (LocalRuntime reuses the group)
                dist.init_process_group("nccl" if gpu else "gloo")
        # rank 0 builds, the others wait; under RUN when DATA is a URL
        ensure_image_cache(data, cfg, "cuda" if gpu else "cpu", progress, run=run)

    if engine == "ray":
        from training.ray_trainer import fit_with_ray

        checkpoint = fit_with_ray(data, store, cfg, workers, gpu, ray_address)
    else:
        from training.loop import LocalRuntime, train_loop

        if workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise InputError("--engine local runs one process; for several without Ray use torchrun")
        rt = LocalRuntime(run, gpu, cfg.keep_checkpoints, store)
        train_loop(data, run, cfg, rt, store=store)
        checkpoint = rt.checkpoints.latest()
        if rt.rank != 0:
            return TrainResult(store.where, store.where / FINAL, read_state(checkpoint).step, {}, engine,
                               rt.world_size)  # fmt: skip
    final = export_model(run, checkpoint, store)
    state = read_state(final)
    return TrainResult(store.where, store.where / FINAL, state.step, state.metrics, engine, workers)
