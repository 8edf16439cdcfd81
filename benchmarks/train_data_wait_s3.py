"""Training data wait with shards on a local S3 API server against local disk, side by side in one run.

    uv run python -m benchmarks.train_data_wait_s3 --sessions 3 --seconds 5 --width 64 --height 48 \
        --shard-samples 3 --steps 24 --warmup 4 --batch-size 8 --repeat 20        # CPU, tiny preset
    uv run python -m benchmarks.train_data_wait_s3 --data DATA --steps 60 --repeat 20

It builds a small synthetic dataset (or takes ``--data``), starts moto's S3 server in a child process on
127.0.0.1 (a separate process, as a real endpoint would be: in this process its request handling would take
the training thread's GIL), uploads the committed dataset to a bucket, and runs the real loop
(training/loop.py, ``LocalRuntime``, no Ray) once on the local folder and once on ``s3://``, with the same
config and seed, alternating ``--rounds`` times. Reported per source: the mean time a step waits for its
batch (``StepTiming.wait_s``, the trainer's own "data wait") over the steps after ``--warmup``, its share of
step time, and the ratio s3/local. ``--repeat`` tiles the split's sample table so that an epoch spans many
steps of random reads across all shards. The S3 figure on moto is a floor: no network latency or bandwidth
limit, but real HTTP, range GETs and a server that parses every request.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.output import emit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, endpoint
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("moto server did not start within 30 s")


def _upload(data: Path, url: str) -> None:
    from pipelines import storage

    dest = storage.location(url)
    for p in sorted(data.rglob("*")):
        rel = p.relative_to(data)
        if p.is_file() and p.name != "manifest.json" and rel.parts[0] not in ("quality", "_work", "_cache"):
            storage.upload(p, dest / rel.as_posix())
    storage.upload(data / "manifest.json", dest / "manifest.json")


def _measure(data, cfg, repeat: int, warmup: int) -> dict:
    import numpy as np

    from training.image_cache import build_image_cache
    from training.loop import LocalRuntime, StepTiming, train_loop
    from training.shards import SampleTable

    timings: list[StepTiming] = []
    with tempfile.TemporaryDirectory(prefix="bindset-wait-") as run_dir:
        run = Path(run_dir)
        if cfg.data.cache_image_embeddings:
            build_image_cache(data, cfg, "cpu", run=run)  # under DATA locally, under RUN for a URL
        table = SampleTable.load(data, cfg.data.train_split, cfg.data.pairing, cfg.modalities)
        if repeat > 1:
            lists = ("keys", "shards", "splits", "sessions", "labels", "captions")
            table = replace(table, **{f: getattr(table, f) * repeat for f in lists},
                            has={m: np.tile(v, repeat) for m, v in table.has.items()},
                            allowed={m: np.tile(v, repeat) for m, v in table.allowed.items()})  # fmt: skip
        t0 = time.perf_counter()
        train_loop(data, run, cfg, LocalRuntime(run), table=table, on_step=timings.append)
        wall = time.perf_counter() - t0
    measured = [t for t in timings if t.step > warmup]
    wait = sum(t.wait_s for t in measured)
    total = sum(t.step_s for t in measured)
    return {"steps_measured": len(measured), "wall_s": round(wall, 2),
            "data_wait_ms_per_step": round(1000 * wait / len(measured), 2),
            "step_ms": round(1000 * total / len(measured), 2), "data_wait_frac": round(wait / total, 4)}  # fmt: skip


def run(args) -> dict:
    from training.config import PRESETS

    work = Path(tempfile.mkdtemp(prefix="bindset-wait-data-"))
    data = Path(args.data) if args.data else None
    if data is None:
        from bindset.synth.generate import SynthConfig, synth
        from pipelines.build import EngineConfig, build
        from transforms.config import BuildConfig

        synth(work / "raw", SynthConfig(sessions=args.sessions, seconds=args.seconds, width=args.width,
                                        height=args.height, workers=1))  # fmt: skip
        data = work / "data"
        build(work / "raw", data, BuildConfig(shard_max_samples=args.shard_samples), EngineConfig("local"))
    cfg = PRESETS[args.preset]
    cfg = cfg.replace(epochs=10**6, max_steps=args.steps, checkpoint_every=10**9, checkpoint_at_epoch_end=False,
                      batch_size=args.batch_size or cfg.batch_size, seed=0,
                      data=cfg.data.replace(loader_workers=args.loader_workers))  # fmt: skip

    proc, endpoint = _start_moto()
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        url = "s3://bench/ds"
        _upload(data, url)
        rounds = {"local": [], "s3": []}
        for _ in range(args.rounds):  # alternating, so a busy moment of the machine hits both
            rounds["local"].append(_measure(data, cfg, args.repeat, args.warmup))
            rounds["s3"].append(_measure(url, cfg, args.repeat, args.warmup))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    mean = {k: sum(r["data_wait_ms_per_step"] for r in v) / len(v) for k, v in rounds.items()}
    return {
        "preset": args.preset, "device": "cpu", "steps": args.steps, "warmup": args.warmup,
        "batch_size": cfg.batch_size, "loader_workers": cfg.data.loader_workers, "repeat": args.repeat,
        "cached_image_embeddings": cfg.data.cache_image_embeddings, "rounds": rounds,
        "data_wait_ms_per_step": {k: round(v, 2) for k, v in mean.items()},
        "ratio_s3_over_local": round(mean["s3"] / max(mean["local"], 1e-9), 2),
        "server": "moto (child process, 127.0.0.1)",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a built local dataset (default: build a synthetic one)")
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--shard-samples", type=int, default=8)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
