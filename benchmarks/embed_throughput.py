"""Embedding at scale: throughput against pure inference, peak RSS at N and 4N samples, and the vector index.

    nice -n 5 .venv/bin/python -m benchmarks.embed_throughput --samples 20000 --index-rows 200000 \\
        --index-dim 1024 --out benchmarks/results/embed_throughput.json

1. A synthetic dataset (``bindset synth``, 4 sessions x ``--source-seconds`` (120) of tiny media, a local
   build: 4 x 60 samples in 4 shards, the size of a build's shards once units pack many inputs (issue 16) at
   this scale; ``--source DIR`` keeps it between runs) is *tiled*: its shards are repeated (hard links under new
   names, ``<shard>-tNNNNN.tar``) until the dataset holds ``--samples`` samples (4N), each copy a shard and so
   a part of its own; and a quarter of that (N).
2. Per size, a child process (tiny preset's encoders and tower, random init: speed does not depend on the
   weights) runs pure inference, then ``bindset embed``'s function (local engine, the tiny preset's one
   loader process), then pure inference again, and reports the embed's peak RSS (VmHWM, reset just before
   it) and the time of its parts loop (reading, decoding, inference, writing; model loading excluded).
3. Pure inference: the same encoders and tower on the same batches in the same order, in the same process
   with the same torch threads, each distinct batch decoded beforehand and held (no reading, decoding or
   writing). Its rate is the mean of the passes before and after the embed, so that a drift in the machine's
   load cancels to first order. Throughput ratio = embed samples/s / pure samples/s, at 4N.
4. The index: ``--index-rows`` unit vectors of ``--index-dim`` (streamed in chunks, as parts are), random
   (no cluster structure: the worst case for an inverted file) and clustered (a random centre per 200 rows, plus noise
   as large as the centre, as embeddings of similar clips group), each built as in ``INDEX_RUNS``: exact
   (IndexFlatIP); the approximate path at the default IndexParams (IVF-Flat, nprobe tuned to recall@10 >= 0.95,
   falling back to exact where it would probe half the lists or more); IVF-Flat kept whatever it probes; IVF-PQ.
   Build time, recall@10 and the search time of 500 queries. ``--index-rows 0`` skips it, ``--index-only``
   picks runs by label.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def make_source(root: Path, seconds: float = 120.0) -> tuple[Path, Path]:
    """A small built dataset (4 sessions x ``seconds``, one shard each) and a tiny-preset run with random weights.

    Kept when ``root`` already holds both (``--source``): the build is not what this benchmark measures."""
    import torch

    from bindset.synth.generate import SynthConfig, synth
    from pipelines.build import EngineConfig, build
    from training.checkpoint import TrainState, write_checkpoint
    from training.config import PRESETS
    from training.encoders import BindingModel
    from training.towers import tower_embed_dim
    from transforms.config import BuildConfig

    if (root / "data" / "manifest.json").exists() and (root / "run" / "model").is_dir():
        return root / "data", root / "run"
    synth(root / "raw", SynthConfig(sessions=4, seconds=seconds, width=160, height=120, seed=0))
    build(root / "raw", root / "data", BuildConfig(shard_max_samples=1000), EngineConfig("local"))
    tiny = PRESETS["tiny"]
    cfg = tiny.replace(data=tiny.data.replace(depth_norm=(0.0, 1.0)))
    torch.manual_seed(0)
    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, tower_embed_dim(cfg.tower))
    write_checkpoint(root / "run" / "model", model, None, TrainState(0, 0, 0, cfg.to_dict(), {}))
    return root / "data", root / "run"


def tile(src: Path, dst: Path, samples: int) -> int:
    """DATA made of the source's shards repeated (``<shard>-tNNNNN.tar``, hard links) until it holds at least
    ``samples`` samples: every copy is a shard of its own, read, decoded and embedded as one part."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines import storage

    index = pq.read_table(src / "index.parquet")
    if not index.num_rows:
        raise SystemExit(f"{src}: the source dataset has no samples")
    repeat = max(1, math.ceil(samples / index.num_rows))
    shards = sorted(set(index.column("shard").to_pylist()))
    (dst / "shards").mkdir(parents=True)
    tables, sizes = [], {}
    for r in range(repeat):
        for s in shards:
            name = f"{Path(s).stem}-t{r:05d}.tar"
            storage.link_or_copy(src / "shards" / s, dst / "shards" / name)
            rows = index.filter(pc.equal(index.column("shard"), s))
            names = pa.array([name] * rows.num_rows, index.schema.field("shard").type)
            tables.append(rows.set_column(rows.schema.get_field_index("shard"), "shard", names))
            sizes[name] = rows.num_rows
    tiled = pa.concat_tables(tables)
    storage.atomic_write_json(dst / "shards" / "sizes.json", sizes)
    pq.write_table(tiled, dst / "index.parquet")
    storage.link_or_copy(src / "rejects.parquet", dst / "rejects.parquet")
    manifest = json.loads((src / "manifest.json").read_text())
    storage.atomic_write_json(dst / "manifest.json", {**manifest, "version": f"{manifest.get('version')}-x{repeat}"})
    return tiled.num_rows


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0: "5" to clear_refs), so that the peak measured is
    the embed's, not the pure-inference set-up's that ran before it in the same process."""
    Path("/proc/self/clear_refs").write_text("5")


def child_embed(data: str, run: str, emb: str, pure: bool) -> dict:
    """Run in a fresh process: pure inference on the embed's batches, the embed (its counters and its peak
    RSS), pure inference again. Same process, model, batches and torch threads on both sides; the pure rate
    is the mean of the passes before and after, so that a change in the machine's load cancels to first order.
    Without ``pure`` only the set-up and one warm-up pass run (the same memory state before the embed)."""
    import gc

    import torch

    from training.embed import cpu_threads, embed, run_identity

    # the embed's own setting on CPU (one core per loader process, the rest to the model), on both sides
    torch.set_num_threads(cpu_threads(run_identity(run)[0].data.loader_workers))
    bench = PureInference(Path(data), Path(run))
    bench.run(warmup=True)
    passes = [bench.run()] if pure else []
    gc.collect()
    _reset_peak_rss()
    t0 = time.perf_counter()
    r = embed(data, run, emb, batch_size=BATCH)
    wall = time.perf_counter() - t0
    peak = _peak_rss_mb()
    s = r.stats
    out = {"samples": s.samples_embedded, "parts": s.parts, "wall_s": wall, "embed_s": s.embed_s,
           "index_s": s.index_s, "samples_per_s": s.samples_embedded / s.embed_s, "peak_live_rows": s.peak_live_rows,
           "peak_rss_mb": peak, "torch_threads": torch.get_num_threads()}  # fmt: skip
    if pure:
        passes.append(bench.run())
        seconds = sum(passes) / len(passes)
        out["pure_inference"] = {"samples": bench.samples, "distinct_batches": len(bench.decoded),
                                 "seconds_before_after": passes, "samples_per_s": bench.samples / seconds}  # fmt: skip
    return out


class PureInference:
    """The same encoders and tower on the same batches as the embed loop, in the same order, with no I/O:
    each distinct batch (a tiled dataset repeats the source's shards) is decoded once beforehand and held."""

    def __init__(self, data: Path, run: Path):
        import torch

        from pipelines.dataset import open_dataset
        from training.embed import _WANT, PartEmbedder, PartReader, load_run, plan_parts, produced_modalities
        from training.inputs import collate
        from training.shards import SampleTable

        lr = load_run(run)
        table = SampleTable.load(data, None)
        reader = PartReader(table, _WANT)
        self.embedder = PartEmbedder(lr, table, Path(tempfile.mkdtemp()), produced_modalities(lr.cfg))
        parts = plan_parts(open_dataset(data).index, sorted(set(table.shards)), {})
        source = lambda shard: shard.rsplit("-t", 1)[0]  # noqa: E731  the source shard a tiled copy repeats
        self.decoded: dict[tuple, dict] = {}
        self.order: list[tuple[int, tuple, torch.Tensor]] = []
        for p in parts:
            for b in p.batches(BATCH):
                key = (source(p.shard), tuple(table.keys[i] for i in b))
                if key not in self.decoded:
                    self.decoded[key] = collate([reader[i] for i in b])
                self.order.append((p.number, key, torch.tensor(b, dtype=torch.long)))
        self.samples = sum(len(p.rows) for p in parts)

    def run(self, warmup: bool = False) -> float:
        """One pass over every batch (``warmup``: over each distinct batch once); returns its seconds."""
        import torch

        order = self.order
        if warmup:
            first = {}
            for item in order:
                first.setdefault(item[1], item)
            order = list(first.values())
        t0 = time.perf_counter()
        with torch.no_grad():
            cache: dict = {}
            last = None
            for number, key, index in order:
                if number != last:
                    cache, last = {}, number  # per part, as in the embed loop
                batch = {**self.decoded[key], "index": index}
                for _, (e, mask) in self.embedder._outputs(batch, index.numpy(), cache).items():
                    e.float().cpu().numpy()[mask.cpu().numpy()]
        return time.perf_counter() - t0


def _unit_chunks(rows: int, dim: int, chunk: int, clusters: int):
    """chunks() over ``rows`` unit vectors: isotropic random (``clusters`` 0), or ``clusters`` random centres
    with noise as large as the centre (each vector's nearest neighbours are mostly its cluster's, as embeddings
    of similar clips are)."""
    centres = None
    if clusters:
        c = np.random.default_rng(12345).standard_normal((clusters, dim), dtype=np.float32)
        centres = c / np.linalg.norm(c, axis=1, keepdims=True)

    def chunks():
        for start in range(0, rows, chunk):
            rng = np.random.default_rng(start)
            n = min(chunk, rows - start)
            x = rng.standard_normal((n, dim), dtype=np.float32)
            if centres is not None:
                x = centres[rng.integers(0, clusters, n)] + x / np.sqrt(dim, dtype=np.float32)
            yield x / np.linalg.norm(x, axis=1, keepdims=True)

    return chunks


# (label, clusters (-1: one per 200 rows), IndexParams fields): exact; the approximate path at the defaults
# (exact_max=0 forces it); IVF-Flat kept whatever it needs (max_probe_fraction=1);
# IVF-PQ at the default pq_m (dim/8 bytes a vector)
INDEX_RUNS = (
    ("random/exact", 0, {"exact_max": 10**9}),
    ("random/defaults", 0, {"exact_max": 0}),
    ("random/ivf_flat_kept", 0, {"exact_max": 0, "max_probe_fraction": 1.0}),
    ("random/ivf_pq", 0, {"exact_max": 0, "kind": "ivf_pq"}),
    ("clustered/exact", -1, {"exact_max": 10**9}),
    ("clustered/defaults", -1, {"exact_max": 0}),
    ("clustered/ivf_pq", -1, {"exact_max": 0, "kind": "ivf_pq"}),
)


def index_benchmark(rows: int, dim: int, chunk: int = 10_000, queries: int = 500, only: str = "") -> dict:
    """Build time, search time for ``queries`` rows and recall@10 of each of ``INDEX_RUNS`` on ``rows`` unit
    vectors of ``dim``, streamed in chunks of ``chunk`` rows as from parts. ``only``: a substring of the labels."""
    from training.vector_index import IndexParams, build_index

    out: dict = {"rows": rows, "dim": dim}
    for label, clusters, fields in INDEX_RUNS:
        if only not in label:
            continue
        chunks = _unit_chunks(rows, dim, chunk, max(1, rows // 200) if clusters < 0 else clusters)
        q = next(iter(chunks()))[:queries]
        built = build_index(chunks, rows, dim, IndexParams(**fields))
        t0 = time.perf_counter()
        built.index.search(q, 10)
        search_s = time.perf_counter() - t0
        info = built.info.to_dict()
        out[label] = {"params": fields, "build_s": round(info["build_s"], 2), "search_s": round(search_s, 3),
                      "queries": len(q),
                      "recall_at_10": 1.0 if info["recall_at_k"] is None else round(info["recall_at_k"], 4),
                      **{k: info[k] for k in ("kind", "nlist", "nprobe", "pq_m", "train_rows", "tried", "fallback")},
                      }  # fmt: skip
        print(f"{label}: {out[label]}", file=sys.stderr, flush=True)
        del built
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=20_000, help="4N: the larger tiled dataset; 0: skip")
    p.add_argument("--index-rows", type=int, default=200_000, help="0: skip the index benchmark")
    p.add_argument("--index-dim", type=int, default=1024)
    p.add_argument("--index-only", default="", help="run only the index runs whose label holds this")
    p.add_argument("--source", type=Path, help="folder for the source dataset and run, kept between runs")
    p.add_argument("--source-seconds", type=float, default=120.0,
                   help="length of each of the 4 source sessions: samples per part = seconds / 2")  # fmt: skip
    p.add_argument("--out", type=Path)
    p.add_argument("--child", nargs=4, metavar=("DATA", "RUN", "EMB", "PURE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child_embed(*a.child[:3], pure=a.child[3] == "1")))
        return
    results: dict = {"command": " ".join(["python -m benchmarks.embed_throughput", *(argv or sys.argv[1:])]),
                     "batch_size": BATCH, "cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}  # fmt: skip
    if a.samples:
        with tempfile.TemporaryDirectory(prefix="bindset-embed-bench-") as tmp:
            root = Path(tmp)
            if a.source:
                a.source.mkdir(parents=True, exist_ok=True)
            src, run = make_source(a.source or root, a.source_seconds)
            for label, n in (("N", a.samples // 4), ("4N", a.samples)):
                data = root / f"data-{label}"
                tiled = tile(src, data, n)
                cmd = [sys.executable, "-m", "benchmarks.embed_throughput", "--child", str(data), str(run),
                       str(root / f"emb-{label}"), "1" if label == "4N" else "0"]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                results[label] = {"tiled_samples": tiled, **json.loads(proc.stdout.strip().splitlines()[-1])}
            results["peak_rss_ratio_4N_over_N"] = results["4N"]["peak_rss_mb"] / results["N"]["peak_rss_mb"]
            pure = results["4N"].pop("pure_inference")
            results["pure_inference"] = pure
            results["throughput_ratio"] = results["4N"]["samples_per_s"] / pure["samples_per_s"]
    results["load_avg_after"] = os.getloadavg()
    if a.index_rows:
        results["index"] = index_benchmark(a.index_rows, a.index_dim, only=a.index_only)
    emit(results, a.out)


if __name__ == "__main__":
    main()
