"""Training throughput: samples/s per worker, the share of step time spent waiting for data, GPU
utilisation, and the MFU of the trainable encoders.

    uv run python -m benchmarks.train_throughput --data DATA --preset tiny --steps 40                 # CPU
    python3 -m benchmarks.train_throughput --data DATA --preset imagebind --device cuda --steps 60 \\
        --batch-size 256 --repeat 40 --loader-workers 12                                            # GPU

It runs the real loop (training/loop.py) through ``LocalRuntime``, without Ray, so it also runs where
Ray is not installed. ``--repeat`` tiles the split's sample table so a small dataset fills large batches
(every read still decodes the member bytes). The first ``--warmup`` steps are not counted. MFU counts the
trainable encoders' matmul FLOPs (forward x3 for forward+backward) against the GPU's dense bf16 peak;
the frozen image tower's FLOPs are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.output import emit

# dense bf16 tensor-core peaks (no sparsity), FLOP/s
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def _peak(name: str) -> float | None:
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in name:
            return PEAK_BF16[key]
    return None


class GpuSampler:
    """GPU utilisation from one long-lived ``nvidia-smi -lms 200`` child, started before training.

    Not a subprocess per sample: forking a process that maps tens of GB of GPU memory stalls its threads
    for tens of milliseconds each time, which the loop would report as waiting for data."""

    def __init__(self):
        self.values: list[float] = []
        self.counting = False
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0", "-lms", "200"], stdout=subprocess.PIPE, text=True)  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if self.counting:
                with contextlib.suppress(ValueError):
                    self.values.append(float(line.strip()))

    def start(self):
        self.counting = True

    def stop(self) -> float | None:
        self.counting = False
        self.proc.terminate()
        return sum(self.values) / len(self.values) if self.values else None


def run(args) -> dict:
    import numpy as np
    import torch

    from training.config import PRESETS
    from training.encoders import BindingModel
    from training.loop import LocalRuntime, StepTiming, train_loop
    from training.shards import SampleTable

    cfg = PRESETS[args.preset]
    data_cfg = cfg.data.replace(loader_workers=args.loader_workers, pairing="joint", pin_memory=not args.no_pin,
                                cache_image_embeddings=args.cached, augment=not args.cached)  # fmt: skip
    cfg = cfg.replace(data=data_cfg, batch_size=args.batch_size or cfg.batch_size, epochs=10**6,
                      max_steps=args.steps, checkpoint_every=10**9, checkpoint_at_epoch_end=False,
                      precision="bf16" if args.device == "cuda" else "fp32")  # fmt: skip
    if args.cached:
        from training.image_cache import build_image_cache

        build_image_cache(Path(args.data), cfg, args.device)
    table = SampleTable.load(args.data, cfg.data.train_split, "joint", cfg.modalities)
    if args.repeat > 1:
        lists = ("keys", "shards", "splits", "sessions", "labels", "captions")
        table = replace(table, **{f: getattr(table, f) * args.repeat for f in lists},
                        has={m: np.tile(v, args.repeat) for m, v in table.has.items()},
                        allowed={m: np.tile(v, args.repeat) for m, v in table.allowed.items()})  # fmt: skip
    timings: list[StepTiming] = []
    gpu = GpuSampler() if args.device == "cuda" else None
    clock: dict[str, float] = {}

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def on_step(t: StepTiming):
        # the loop does not sync with the GPU per step, so the window is timed between two syncs
        timings.append(t)
        if t.step == args.warmup:
            sync()
            clock["start"] = time.perf_counter()
            if gpu is not None:
                gpu.start()
        elif t.step == args.steps:
            sync()
            clock["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as run_dir:
        rt = LocalRuntime(Path(run_dir), gpu=args.device == "cuda")
        t0 = time.perf_counter()
        train_loop(Path(args.data), Path(run_dir), cfg, rt, table=table, on_step=on_step)
        wall = time.perf_counter() - t0
    util = gpu.stop() if gpu is not None else None
    measured = [t for t in timings if t.step > args.warmup]
    window_s = clock["end"] - clock["start"]
    samples = sum(t.samples for t in measured)
    flops_fwd = sum(e.flops_per_sample() for e in BindingModel({m: cfg.encoder(m) for m in cfg.modalities},
                                                                 1024).encoders.values())  # fmt: skip
    result = {
        "preset": args.preset, "device": args.device, "batch_size": cfg.batch_size, "cached_image_embeddings":
        args.cached, "loader_workers": args.loader_workers, "pin_memory": not args.no_pin,
        "steps_measured": len(measured), "wall_s": wall,
        "samples_per_s": samples / window_s, "step_ms": 1000 * window_s / len(measured),
        "data_wait_frac": sum(t.wait_s for t in measured) / window_s, "gpu_util_pct": util,
        "train_gflop_per_sample": 3 * flops_fwd / 1e9, "torch": torch.__version__,
    }  # fmt: skip
    if args.device == "cuda":
        name = torch.cuda.get_device_name(0)
        peak = _peak(name)
        result["gpu"] = name
        result["peak_bf16_tflops"] = peak / 1e12 if peak else None
        result["mfu"] = 3 * flops_fwd * result["samples_per_s"] / peak if peak else None
        result["max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    else:
        result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cached", action="store_true", help="cached image embeddings (no tower in the loop)")
    p.add_argument("--no-pin", action="store_true", help="no page-locked host buffers")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = run(args)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
