"""Ray Train adapter: the loop of training/loop.py on a TorchTrainer. Every ``ray.train`` call lives here.

    bindset train DATA RUN --workers 2 [--gpu] [--ray-address ray://head:10001]

FailureConfig(max_failures) restarts the worker group from the latest reported checkpoint when a worker
dies; the loop resumes at the step inside the epoch where that checkpoint was taken.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from pipelines import storage
from training.config import TrainConfig
from training.loss import torch_distributed_gather


class RayRuntime:
    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = torch.device(ray.train.torch.get_device())
        self._tmp = Path(tempfile.mkdtemp(prefix="bindset-ckpt-"))

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
        ray.train.report(flat, checkpoint=checkpoint, checkpoint_dir_name=f"ckpt-{step:09d}")


def train_loop_per_worker(config: dict) -> None:
    from training.loop import train_loop
    from training.shards import dataset_location

    cfg = TrainConfig.from_dict(config["train"])
    train_loop(dataset_location(config["data"]), Path(config["run"]), cfg, RayRuntime())


def fit_with_ray(data: Path | str, run: Path, cfg: TrainConfig, workers: int, gpu: bool,
                 address: str | None = None) -> Path:  # fmt: skip
    """Run the TorchTrainer; returns the folder of the final checkpoint."""
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
    loc = storage.location(data)
    if not loc.is_local and not address:
        # DATA on object storage: the local cluster's workers read it with this process's endpoint and
        # credentials (a remote cluster's nodes bring their own: IAM roles, workload identity)
        env.update(storage.client_environment(loc.scheme))
    started = init_ray(log_to_driver=True, configure_logging=False, runtime_env={"env_vars": env}, **kwargs)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"data": str(data), "run": str(run), "train": cfg.to_dict()},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
            run_config=RunConfig(
                name="ray",
                storage_path=str(Path(run).resolve()),
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        return Path(result.checkpoint.path)
    finally:
        if started:
            ray.shutdown()
