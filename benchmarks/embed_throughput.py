"""Embedding at scale: throughput against pure inference, peak RSS at N and 4N samples, and the vector index.

    .venv/bin/python -m benchmarks.embed_throughput --samples 800 --index-rows 200000 --index-dim 1024 \\
        --out benchmarks/results/embed_throughput.json

1. A synthetic dataset (``bindset synth`` + a local build, tiny media) is *tiled*: each shard's index rows are
   repeated so the dataset holds ``--samples`` samples (4N) in the same shards (every repeat reads and decodes
   the member bytes again), and a quarter of that (N).
2. ``bindset embed``'s function runs in a child process per size, with the tiny preset's encoders and tower
   (random init: speed does not depend on the weights); the child reports its peak RSS (VmHWM) and the time
   of the parts loop (reading, inference, writing; model loading excluded).
3. Pure inference: the same encoders and tower on the same batches of the 4N dataset, decoded beforehand and
   held in memory (no reading, no writing). Throughput ratio = embed samples/s / pure samples/s.
4. The index: ``--index-rows`` random unit vectors of ``--index-dim`` (streamed in chunks, as parts are),
   built exact (IndexFlatIP) and approximate (IVF-Flat at the default IndexParams, nprobe tuned to recall@10
   >= 0.95 on held-out queries); build time, recall@10 and the search time of 500 queries for both.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.output import emit

BATCH = 64


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_source(root: Path) -> tuple[Path, Path]:
    """A small built dataset (4 sessions x 20 s, one shard per split) and a tiny-preset run with random weights."""
    import torch

    from bindset.synth.generate import SynthConfig, synth
    from pipelines.build import EngineConfig, build
    from training.checkpoint import TrainState, write_checkpoint
    from training.config import PRESETS
    from training.encoders import BindingModel
    from training.towers import tower_embed_dim
    from transforms.config import BuildConfig

    synth(root / "raw", SynthConfig(sessions=4, seconds=20.0, width=160, height=120, seed=0))
    build(root / "raw", root / "data", BuildConfig(shard_max_samples=1000), EngineConfig("local"))
    tiny = PRESETS["tiny"]
    cfg = tiny.replace(data=tiny.data.replace(depth_norm=(0.0, 1.0)))
    torch.manual_seed(0)
    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, tower_embed_dim(cfg.tower))
    write_checkpoint(root / "run" / "model", model, None, TrainState(0, 0, 0, cfg.to_dict(), {}))
    return root / "data", root / "run"


def tile(src: Path, dst: Path, samples: int) -> int:
    """DATA with each shard's index rows repeated to about ``samples`` rows, same shard files (hard links)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import storage

    index = pq.read_table(src / "index.parquet")
    repeat = max(1, math.ceil(samples / index.num_rows))
    shards = index.column("shard").to_pylist()
    order = [i for s in sorted(set(shards)) for _ in range(repeat) for i in range(len(shards)) if shards[i] == s]
    (dst / "shards").mkdir(parents=True)
    for tar in (src / "shards").glob("*.tar"):
        storage.link_or_copy(tar, dst / "shards" / tar.name)
    sizes = {s: shards.count(s) * repeat for s in sorted(set(shards))}
    storage.atomic_write_json(dst / "shards" / "sizes.json", sizes)
    pq.write_table(index.take(pa.array(order)), dst / "index.parquet")
    storage.link_or_copy(src / "rejects.parquet", dst / "rejects.parquet")
    manifest = json.loads((src / "manifest.json").read_text())
    storage.atomic_write_json(dst / "manifest.json", {**manifest, "version": f"{manifest.get('version')}-x{repeat}"})
    return len(order)


def child_embed(data: str, run: str, emb: str) -> dict:
    """Run in a fresh process: one embed, its counters and this process's peak RSS."""
    from training.embed import embed

    t0 = time.perf_counter()
    r = embed(data, run, emb, batch_size=BATCH)
    s = r.stats
    return {"samples": s.samples_embedded, "parts": s.parts, "wall_s": time.perf_counter() - t0,
            "embed_s": s.embed_s, "index_s": s.index_s, "samples_per_s": s.samples_embedded / s.embed_s,
            "peak_live_rows": s.peak_live_rows, "peak_rss_mb": _peak_rss_mb()}  # fmt: skip


def pure_inference(data: Path, run: Path) -> dict:
    """The same encoders and tower on the same batches as the embed loop, decoded beforehand (no I/O)."""
    import torch

    from pipelines.dataset import open_dataset
    from training.embed import _WANT, PartEmbedder, PartReader, load_run, plan_parts, produced_modalities
    from training.inputs import collate
    from training.shards import SampleTable

    lr = load_run(run)
    table = SampleTable.load(data, None)
    snap = open_dataset(data)
    reader = PartReader(table, _WANT)
    embedder = PartEmbedder(lr, table, Path(tempfile.mkdtemp()), produced_modalities(lr.cfg))
    parts = plan_parts(snap.index, snap.shards, {})
    decoded = [[collate([reader[i] for i in b]) for b in p.batches(BATCH)] for p in parts]
    samples = sum(len(p.rows) for p in parts)
    t0 = time.perf_counter()
    with torch.no_grad():
        for batches in decoded:
            cache: dict = {}  # per part, as in the embed loop
            for batch in batches:
                for _, (e, mask) in embedder._outputs(batch, batch["index"].numpy(), cache).items():
                    e.float().cpu().numpy()[mask.cpu().numpy()]
    took = time.perf_counter() - t0
    return {"samples": samples, "seconds": took, "samples_per_s": samples / took}


def index_benchmark(rows: int, dim: int, chunk: int = 10_000, queries: int = 500) -> dict:
    """Exact vs IVF-Flat at the default parameters on random unit vectors, streamed in chunks."""
    from training.vector_index import IndexParams, build_index

    def chunks():
        for start in range(0, rows, chunk):
            x = np.random.default_rng(start).standard_normal((min(chunk, rows - start), dim), dtype=np.float32)
            yield x / np.linalg.norm(x, axis=1, keepdims=True)

    q = next(iter(chunks()))[:queries]
    out = {"rows": rows, "dim": dim}
    for name, params in (("exact", IndexParams(exact_max=rows)), ("ivf_flat", IndexParams(exact_max=0))):
        built = build_index(chunks, rows, dim, params)
        t0 = time.perf_counter()
        built.index.search(q, 10)
        search_s = time.perf_counter() - t0
        info = built.info.to_dict()
        out[name] = {"build_s": round(info["build_s"], 2), "search_500_s": round(search_s, 3),
                     "recall_at_10": 1.0 if info["recall_at_k"] is None else round(info["recall_at_k"], 4),
                     **{k: info[k] for k in ("kind", "nlist", "nprobe", "train_rows", "tried")}}  # fmt: skip
        del built
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=20_000, help="4N: the larger tiled dataset")
    p.add_argument("--index-rows", type=int, default=200_000)
    p.add_argument("--index-dim", type=int, default=1024)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", nargs=3, metavar=("DATA", "RUN", "EMB"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child_embed(*a.child)))
        return
    results: dict = {"command": " ".join(["python -m benchmarks.embed_throughput", *(argv or sys.argv[1:])]),
                     "batch_size": BATCH}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bindset-embed-bench-") as tmp:
        root = Path(tmp)
        src, run = make_source(root)
        for label, n in (("N", a.samples // 4), ("4N", a.samples)):
            data = root / f"data-{label}"
            tiled = tile(src, data, n)
            cmd = [sys.executable, "-m", "benchmarks.embed_throughput", "--child", str(data), str(run),
                   str(root / f"emb-{label}")]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[label] = {"tiled_samples": tiled, **json.loads(proc.stdout.strip().splitlines()[-1])}
        results["peak_rss_ratio_4N_over_N"] = results["4N"]["peak_rss_mb"] / results["N"]["peak_rss_mb"]
        pure = pure_inference(root / "data-4N", run)
        results["pure_inference"] = pure
        results["throughput_ratio"] = results["4N"]["samples_per_s"] / pure["samples_per_s"]
    results["index"] = index_benchmark(a.index_rows, a.index_dim)
    emit(results, a.out)


if __name__ == "__main__":
    main()
