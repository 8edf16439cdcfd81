"""`bindset train`: the driver around the loop (cache, engine, export of the final model).

    bindset train DATA RUN [--preset tiny|imagebind] [--config FILE] [--workers N] [--gpu] [--engine ray|local]

RUN/ holds ``train_config.json``, ``events.jsonl`` (starts, resumes, the end), ``metrics.jsonl``,
``checkpoints/`` (local engine) or ``ray/`` (Ray Train storage), and ``model/``: the final encoders
(``model.safetensors``) and ``state.json``, which ``bindset embed`` reads.

DATA may be an ``s3://`` or ``gs://`` URL (training/shards.py reads it by byte range); RUN is a local folder,
and holds the image cache then (training/image_cache.py).
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

FINAL = "model"


@dataclass(frozen=True)
class TrainResult:
    run: Path
    model: Path
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


def export_model(run: Path, checkpoint: Path) -> Path:
    final = Path(run) / FINAL
    tmp = storage.staging_dir(final)
    for name in (MODEL, STATE):
        storage.copy_synced(Path(checkpoint) / name, tmp / name)
    return storage.replace_dir(tmp, final)


def train(data: Path | str, run: Path | str, cfg: TrainConfig, *, workers: int = 1, gpu: bool = False,
          engine: str = "ray", ray_address: str | None = None, progress=None) -> TrainResult:  # fmt: skip
    from training.shards import dataset_location

    data = dataset_location(data)  # a local folder, or an s3:// / gs:// URL read through the storage seam
    run = Path(run).resolve()
    if isinstance(data, Path):
        data = data.resolve()
    if not storage.exists(data / "index.parquet"):
        raise MissingInputError(f"{data}: no built dataset (index.parquet missing); run `bindset build` first")
    if engine not in ("ray", "local"):
        raise ValueError(f"unknown training engine {engine!r}; choose ray or local")
    run.mkdir(parents=True, exist_ok=True)
    from training.inputs import resolve_depth_norm

    cfg = resolve_depth_norm(data, cfg)  # "auto" becomes numbers before the config is written anywhere
    (run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True) + "\n")
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

        checkpoint = fit_with_ray(data, run, cfg, workers, gpu, ray_address)
    else:
        from training.loop import LocalRuntime, train_loop

        if workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise InputError("--engine local runs one process; for several without Ray use torchrun")
        rt = LocalRuntime(run, gpu, cfg.keep_checkpoints)
        train_loop(data, run, cfg, rt)
        checkpoint = rt.checkpoints.latest()
        if rt.rank != 0:
            return TrainResult(run, run / FINAL, read_state(checkpoint).step, {}, engine, rt.world_size)
    final = export_model(run, checkpoint)
    state = read_state(final)
    return TrainResult(run, final, state.step, state.metrics, engine, workers)
