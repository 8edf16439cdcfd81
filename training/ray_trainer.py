"""Ray Train adapter: the loop of training/loop.py on a TorchTrainer. Every ``ray.train`` call lives here.

    bindset train DATA RUN --workers 2 [--gpu] [--ray-address ray://head:10001]

FailureConfig(max_failures) restarts the worker group from the latest reported checkpoint when a worker
dies; the loop resumes at the step inside the epoch where that checkpoint was taken.

RUN on a URL (training/run_store.py): ``RunConfig.storage_path`` is the URL's ``bucket/prefix`` and
``storage_filesystem`` a ``pyarrow.fs.PyFileSystem`` over the storage seam's fsspec filesystem, so Ray Train
uploads its checkpoints to ``RUN/ray/`` with the same client, endpoint and credentials as every other call
(from the standard environment; the local cluster's workers get it through ``runtime_env``, never logged).
Rank 0 writes the logs into the driver's staging folder and uploads them; the final checkpoint is downloaded
to that folder for ``export_model``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch

from training.config import TrainConfig
from training.loss import torch_distributed_gather
from training.run_store import RunStore, pyarrow_filesystem, remote_env


class RayRuntime:
    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = torch.device(ray.train.torch.get_device())
        self._tmp = Path(tempfile.mkdtemp(prefix="bindset-ckpt-"))
        # the staged checkpoints are deleted as Ray uploads them (save); the folder itself when the runtime goes
        # (end of the loop, or the worker's exit): each run left its checkpoints' copies in /tmp before (26 MB a
        # tiny run; a checkpoint of the imagebind preset is hundreds of MB)
        weakref.finalize(self, shutil.rmtree, str(self._tmp), True)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        return torch_distributed_gather(t) if self.world_size > 1 else [t]

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as folder:
            yield Path(folder)

    def staging_dir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self._tmp))

    def save(self, metrics: dict, folder: Path | None, step: int) -> None:
        import ray.train

        flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(flat, checkpoint=checkpoint, checkpoint_dir_name=f"ckpt-{step:09d}",
                         delete_local_checkpoint_after_upload=checkpoint is not None)  # fmt: skip


def train_loop_per_worker(config: dict) -> None:
    from training.loop import train_loop
    from training.run_store import RunStore
    from training.shards import dataset_location

    cfg = TrainConfig.from_dict(config["train"])
    # a URL RUN: the driver's staging folder (shared on a local cluster: the image cache is there)
    store = RunStore.open(config["run"], work=config.get("work"))
    train_loop(dataset_location(config["data"]), store.work, cfg, RayRuntime(), store=store)


def fit_with_ray(data: Path | str, store: RunStore, cfg: TrainConfig, workers: int, gpu: bool,
                 address: str | None = None) -> Path:  # fmt: skip
    """Run the TorchTrainer; returns the (local) folder of the final checkpoint.

    ``store``: RUN (training/run_store.py); on a URL Ray Train's storage is the URL (module docstring)."""
    try:
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:  # pragma: no cover - the locked environment has Ray
        raise RuntimeError("training on Ray needs ray[train]; use --engine local or torchrun without it") from exc

    from pipelines.ray_start import init_ray
    from training.loop import FAULT_ENV

    # "local": a fresh instance even where `ray start` left a cluster running (None would attach to it)
    kwargs = (
        {"address": address}
        if address
        else {"address": "local", "num_cpus": max(workers, 1) + 1, "include_dashboard": False}
    )
    # fault injection (tests of recovery) must reach the workers, which do not inherit our environment
    env = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
    if not address:
        # DATA or RUN on object storage: the local cluster's workers reach it with this process's endpoint and
        # credentials (a remote cluster's nodes bring their own: IAM roles, workload identity)
        env.update(remote_env(data, store.remote))
    if store.remote is not None:
        storage_path, storage_fs = f"{store.remote.path}", pyarrow_filesystem(store.remote)
        work = {"work": str(store.work)}
    else:
        storage_path, storage_fs, work = str(store.work), None, {}
    started = init_ray(log_to_driver=True, configure_logging=False, runtime_env={"env_vars": env}, **kwargs)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"data": str(data), "run": str(store.where), "train": cfg.to_dict(), **work},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
            run_config=RunConfig(
                name="ray",
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        if store.remote is None:
            return Path(result.checkpoint.path)
        # on the store: downloaded into the staging folder for export_model
        return Path(result.checkpoint.to_directory(str(store.work / "ray-final" / Path(result.checkpoint.path).name)))
    finally:
        if started:
            ray.shutdown()
