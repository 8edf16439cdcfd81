"""The training loop, the same with or without Ray.

    bindset train DATA RUN --workers 2                 # Ray Train TorchTrainer (training/ray_trainer.py)
    bindset train DATA RUN --engine local              # one process, no Ray
    torchrun --nproc_per_node 8 -m training.torchrun DATA RUN --config cfg.json   # no Ray, many GPUs

Everything distributed comes in through a ``Runtime`` (rank, world size, device, gather, where
checkpoints go): ``LocalRuntime`` here (a single process, or torchrun's environment), ``RayRuntime`` in
ray_trainer.py, which holds every ``ray.train.*`` call.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from schemas import modalities as M
from training.checkpoint import CheckpointDir, TrainState, load_checkpoint, write_checkpoint
from training.config import TrainConfig
from training.encoders import BindingModel
from training.image_cache import CachedImages, cache_dir
from training.inputs import ModelInputs, collate, resolve_depth_norm, scatter_rows, take_rows
from training.loss import BindingLoss, Gather, no_gather, torch_distributed_gather
from training.run_store import RunStore
from training.shards import (
    MODALITY_MEMBER,
    PAD,
    BatchSampler,
    EpochPlan,
    SampleReader,
    SampleTable,
    dataset_location,
    loader_context,
    loader_worker_init,
)

#: Fault injection for the recovery test: ``kill:RANK:STEP[:DELAY_S]`` SIGKILLs that rank's process DELAY_S
#: seconds after that step, on a run that did not resume from a checkpoint (so the restarted attempt goes
#: on). The delay lets Ray's controller collect the checkpoint reported just before: it drops reports it
#: had not yet polled when a worker dies.
FAULT_ENV = "BINDSET_TRAIN_FAULT"
EVENTS = "events.jsonl"
METRICS = "metrics.jsonl"


class Runtime(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]: ...

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def staging_dir(self) -> Path: ...

    def save(self, metrics: dict, folder: Path | None, step: int) -> None: ...


class LocalRuntime:
    """One process, or one of torchrun's (RANK/WORLD_SIZE/LOCAL_RANK in the environment).

    ``store``: a RUN on a URL (training/run_store.py): checkpoints are staged under ``run`` (its local work
    folder), uploaded after each commit, and the newest one on the store is downloaded first to resume from."""

    def __init__(self, run: Path, gpu: bool = False, keep: int = 3, store: RunStore | None = None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if gpu and not torch.cuda.is_available():
            raise RuntimeError("--gpu was given but torch sees no CUDA device")
        self.device = torch.device(f"cuda:{local_rank}" if gpu else "cpu")
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if gpu else "gloo")
            self.rank = dist.get_rank()
        else:
            self.rank = 0
        self.checkpoints = CheckpointDir(Path(run) / "checkpoints", keep)
        self.keep, self.store = keep, store
        if store is not None and store.is_remote:
            store.pull_latest_checkpoint(self.checkpoints.root)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        return torch_distributed_gather(t) if self.world_size > 1 else no_gather(t)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        yield self.checkpoints.latest()

    def staging_dir(self) -> Path:
        return self.checkpoints.staging()

    def save(self, metrics: dict, folder: Path | None, step: int) -> None:
        if folder is not None:
            final = self.checkpoints.commit(folder, step)
            if self.store is not None:
                self.store.push_checkpoint(final, step, self.keep)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


@dataclass(frozen=True)
class LoopResult:
    step: int
    epochs: float
    resumed_from_step: int
    last_metrics: dict


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero (ImageBind: 2 warm-up epochs)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: BindingModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """One AdamW, a param group per modality with its own lr/wd; no decay on norms, biases, tokens."""
    groups = []
    for m, enc in model.encoders.items():
        o = cfg.optim[m]
        decay = [p for n, p in enc.named_parameters() if p.ndim >= 2 and n not in ("cls", "pos")]
        rest = [p for n, p in enc.named_parameters() if not (p.ndim >= 2 and n not in ("cls", "pos"))]
        groups.append({"params": decay, "lr": o.lr, "base_lr": o.lr, "weight_decay": o.weight_decay, "name": m})
        groups.append({"params": rest, "lr": o.lr, "base_lr": o.lr, "weight_decay": 0.0, "name": f"{m}.no_decay"})
    return torch.optim.AdamW(groups, betas=cfg.betas)


def members_needed(cfg: TrainConfig, cached: bool) -> frozenset[str]:
    want = {M.META_MEMBER}
    if not cached:
        want |= set(M.VIDEO.members) if cfg.data.image_frames == "mean" else {M.VIDEO.member}
    want |= {MODALITY_MEMBER[m] for m in cfg.modalities}
    return frozenset(want)


Rows = dict[str, tuple[torch.Tensor, torch.Tensor]]


def encoder_rows(batch: dict, allowed: dict[str, torch.Tensor], modalities) -> Rows:
    """Per modality, the batch rows its encoder must see: real (not padding), allowed by the pairing and
    carrying the modality, and whether each counts in the loss. All of it is on the host, so choosing
    rows costs no device sync.

    Under disjoint pairing a sample trains one modality, so running every encoder on every row would
    do 4x the work for rows whose loss is masked out anyway. An encoder always gets at least one row
    (masked out in the loss) so that every parameter stays in the graph, as DDP requires."""
    idx = batch["index"]
    real = idx != PAD
    safe = idx.clamp(min=0)
    present = {"audio": batch["mel_mask"], "imu": batch["imu_mask"],
               "depth": (batch["depth_hw"] > 0).all(1), "thermal": (batch["thermal_hw"] > 0).all(1)}  # fmt: skip
    out = {}
    for m in modalities:
        rows = (allowed[m][safe] & real & present[m]).nonzero().squeeze(1)
        if len(rows):
            out[m] = rows, torch.ones(len(rows), dtype=torch.bool)
        else:
            out[m] = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool)
    return out


def _fault(rank: int, step: int, resumed: bool) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if resumed or not spec.startswith("kill:"):
        return
    _, r, s, *delay = spec.split(":")
    if int(r) == rank and int(s) == step:
        time.sleep(float(delay[0]) if delay else 0.0)
        os.kill(os.getpid(), signal.SIGKILL)


class Prefetch:
    """Pulls batches from a loader iterator on a thread, a few steps ahead.

    Receiving a batch from loader processes (unpickling, mapping shared memory, pinning) costs the
    training thread time in which it launches no GPU work; on a thread it overlaps with the GPU running
    the previous steps, whose waits release the GIL. The iterator is made by the caller, on the training
    thread: creating it may fork loader processes, and a fork from a second thread while the first runs
    torch ops can copy a held lock into the child and deadlock it. Exceptions reach the training thread;
    ``close`` (or leaving the ``with`` block) stops the thread even mid-epoch."""

    _END = object()

    def __init__(self, iterator, depth: int = 3):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator) -> None:
        try:
            for batch in iterator:
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread, which raises it
            self._put(exc)

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class StepTiming:
    step: int
    wait_s: float  # waiting for the loader
    step_s: float  # from the end of the previous step to the end of this one (wait included)
    samples: int  # real (not padding) rows


def train_loop(
    data: Path | str,
    run: Path,
    cfg: TrainConfig,
    rt: Runtime,
    gather: Gather | None = None,
    *,
    table: SampleTable | None = None,
    on_step: Callable[[StepTiming], None] | None = None,
    store: RunStore | None = None,
) -> LoopResult:
    """``table`` replaces the split's sample table (benchmarks tile it); ``on_step`` sees every step's timing.

    ``run`` is the local folder the loop writes into; ``store`` (training/run_store.py) mirrors its logs to a
    RUN URL (default: ``run`` itself, nothing mirrored)."""
    data, run = dataset_location(data), Path(run)  # DATA: a local folder or an s3:// / gs:// URL
    store = store if store is not None else RunStore(run)
    cfg = resolve_depth_norm(data, cfg)  # `train` has done it already; benchmarks and tests may call this directly
    device = rt.device
    torch.manual_seed(cfg.seed * 1000 + rt.rank)
    if table is None:
        table = SampleTable.load(data, cfg.data.train_split, cfg.data.pairing, cfg.modalities)
    plan = EpochPlan(len(table), cfg.batch_size, rt.world_size, cfg.seed)

    cached = cfg.data.cache_image_embeddings
    towers = None
    if cached:
        shuffle = cfg.seed + 1 if cfg.data.shuffle_pairs else None
        images = CachedImages(cache_dir(data, cfg, run), table.keys, shuffle)
        embed_dim, inputs = images.dim, ModelInputs(cfg.data)
    else:
        from training.towers import FrozenTowers

        images = None
        towers = FrozenTowers(cfg.tower, device)
        embed_dim, inputs = towers.embed_dim, ModelInputs(cfg.data, towers.image_size, towers.mean, towers.std)

    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, embed_dim).to(device)
    optimizer = make_optimizer(model, cfg)
    start = 0
    with rt.latest_checkpoint() as ckpt:
        if ckpt is not None:
            start = load_checkpoint(ckpt, model, optimizer, device).step
    net = model
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    steps_per_epoch = plan.steps
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if rt.rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        store.pull_logs()  # a URL RUN: the logs of earlier attempts go on
        store.append(EVENTS, {"event": "start", "resumed_from_step": start, "world_size": rt.world_size,
                               "steps_per_epoch": steps_per_epoch, "total_steps": total, "pid": os.getpid(),
                               "time": time.time()})  # fmt: skip

    sampler = BatchSampler(plan, rt.rank)
    workers = cfg.data.loader_workers
    reader = SampleReader(table, members_needed(cfg, cached), images, only_allowed=True)
    loader = torch.utils.data.DataLoader(
        reader, batch_sampler=sampler, collate_fn=collate,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda" and cfg.data.pin_memory,
        worker_init_fn=loader_worker_init, multiprocessing_context=loader_context(workers),
        prefetch_factor=cfg.data.prefetch_factor if workers else None,
    )  # fmt: skip
    loss_fn = BindingLoss({m: cfg.encoder(m).logit_scale for m in cfg.modalities}, rt.rank, rt.world_size,
                          gather or rt.gather)  # fmt: skip
    allowed = {m: torch.from_numpy(table.allowed[m]) for m in cfg.modalities}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())  # fmt: skip
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + rt.rank)

    step, metrics = start, {}
    window = {"wait": 0.0, "time": 0.0, "samples": 0, "loss": 0.0, "n": 0}
    while step < total:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, skip)
        net.train()
        t_last = time.perf_counter()
        with Prefetch(iter(loader)) as batches:
            for batch in batches:
                t_got = time.perf_counter()
                lr_scale = lr_factor(step, warmup, total)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * lr_scale
                idx = batch["index"]
                real = idx != PAD
                with autocast:
                    if cached:
                        image = batch["image_emb"].to(device)
                        image_ok = torch.isfinite(image).all(1) & real.to(device)
                        image = torch.nan_to_num(image)
                    else:
                        frames = inputs.frames(batch, device, train=True, generator=generator)
                        image = towers.image_embedding(frames, cfg.data.image_frames)
                        image_ok = frames["frame0_mask"]
                    rows = encoder_rows(batch, allowed, cfg.modalities)
                    enc_in, masks = {}, {}
                    for m, (r, keep) in rows.items():
                        x, present = inputs.encoders(take_rows(batch, r), device, (m,))
                        enc_in[m] = x[m]
                        # a usable image is only known on the device (a cached embedding may be missing)
                        ok = present[m] & keep.to(device, non_blocking=True) & image_ok[r.to(device, non_blocking=True)]
                        masks[m] = scatter_rows(ok, r, len(idx))
                    emb = {m: scatter_rows(e, rows[m][0], len(idx)) for m, e in net(enc_in).items()}
                loss, parts = loss_fn(image.float(), {m: e.float() for m, e in emb.items()}, masks)
                optimizer.zero_grad(set_to_none=True)
                (loss * loss_fn.backward_scale).backward()
                optimizer.step()
                step += 1
                now = time.perf_counter()
                window["wait"] += t_got - t_last
                window["time"] += now - t_last
                window["samples"] += int(real.sum())
                window["loss"] = window["loss"] + loss.detach()  # stays on the device: no sync per step
                window["n"] += 1
                if on_step is not None:
                    on_step(StepTiming(step, t_got - t_last, now - t_last, int(real.sum())))
                t_last = now
                _fault(rt.rank, step, resumed=start > 0)

                end_of_epoch = cfg.checkpoint_at_epoch_end and step % steps_per_epoch == 0
                if step % cfg.checkpoint_every == 0 or end_of_epoch or step >= total:
                    metrics = {
                        "step": step, "epoch": step / steps_per_epoch, "lr_scale": lr_scale,
                        "loss": float(window["loss"]) / max(1, window["n"]),
                        "loss_parts": {m: float(v) for m, v in parts.items()},
                        "samples_per_s": window["samples"] / max(window["time"], 1e-9),
                        "data_wait_frac": window["wait"] / max(window["time"], 1e-9),
                    }  # fmt: skip
                    window = dict.fromkeys(window, 0)
                    folder = None
                    if rt.rank == 0:
                        store.append(METRICS, metrics)
                        epochs_done, in_epoch = divmod(step, steps_per_epoch)
                        state = TrainState(step, epochs_done, in_epoch, cfg.to_dict(), metrics)
                        folder = write_checkpoint(rt.staging_dir(), model, optimizer, state)
                    rt.save(metrics, folder, step)
                    t_last = time.perf_counter()  # saving is not waiting for data
                if step >= total:
                    break
    if rt.rank == 0:
        store.append(EVENTS, {"event": "done", "step": step, "time": time.time()})
    return LoopResult(step, step / steps_per_epoch, start, metrics)
