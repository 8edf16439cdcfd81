"""Build throughput against the decode floor, clips/s per core per engine, and peak RSS vs length.

    uv run python -m benchmarks.build_throughput --long-min 30 --short-min 1 --out BENCH_build.json

Input: synthetic 720p30 captures with every stream (one session `--long-min` minutes long, one
`--short-min` minutes long), made once under --work and reused. Every measurement runs in a fresh
process, side by side in this one run, so the ratios are comparable on a noisy shared machine:
- decode floor: PyAV demuxing and decoding the same video and audio streams alone (same threading);
- unit build: the same unit of work the engines run, on the same file (wall time and peak RSS);
- engines: a whole build on Beam (DirectRunner) and on Ray (local), clips per second per core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.floor import decode_floor
from benchmarks.output import emit

REPO = Path(__file__).resolve().parents[1]


def _run_child(args: list[str]) -> dict:
    """Run this module in a fresh interpreter; returns its JSON result plus its own peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.build_throughput", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux keeps that across execve, so a
    child would report its parent's peak (the synth step's, here) instead of its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def child_decode(path: str) -> dict:
    f = decode_floor([path])
    return {"seconds": f.seconds, "frames": f.frames, "audio_samples": f.audio_samples, "rss_mb": _peak_rss_mb()}


def child_unit(raw: str, unit_id: str, out: str) -> dict:
    import torch

    from transforms.config import BuildConfig
    from transforms.layouts import discover
    from transforms.records import UnitSink
    from transforms.unit import process_unit

    torch.set_num_threads(1)  # as the build's worker
    unit = next(u for u in discover(Path(raw)).units if u.unit_id == unit_id)
    cfg = BuildConfig()
    t0 = time.perf_counter()
    summary = process_unit(Path(raw), unit, cfg, UnitSink(Path(out), unit_id, "bench", cfg))
    return {"seconds": time.perf_counter() - t0, "samples": summary.samples, "rss_mb": _peak_rss_mb()}


def child_engine(raw: str, data: str, engine: str) -> dict:
    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    t0 = time.perf_counter()
    result = build(raw, data, BuildConfig(), EngineConfig(engine))
    return {"seconds": time.perf_counter() - t0, "samples": result.commit.samples}


def make_input(work: Path, long_min: float, short_min: float) -> Path:
    from bindset.synth.generate import SynthConfig, synth

    raw = work / "raw"
    marker = work / f"raw-{long_min}-{short_min}.done"
    if marker.exists():
        return raw
    common = dict(sessions=1, width=1280, height=720, render_scale=4, encoder_preset="ultrafast", encoder_threads=0)
    t0 = time.perf_counter()
    synth(raw, SynthConfig(seconds=long_min * 60, seed=100, **common))
    synth(raw, SynthConfig(seconds=short_min * 60, seed=101, **common))
    print(f"synth: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    marker.touch()
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--long-min", type=float, default=30.0)
    p.add_argument("--short-min", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/bindset-bench"))
    p.add_argument("--engines", default="beam,ray")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        fn = {"decode": child_decode, "unit": child_unit, "engine": child_engine}[kind]
        print(json.dumps(fn(*rest)))
        return 0

    import shutil

    args.work.mkdir(parents=True, exist_ok=True)
    raw = make_input(args.work, args.long_min, args.short_min)
    long_id, short_id = "s100_000", "s101_000"
    results: dict = {"cores": os.cpu_count(), "long_min": args.long_min, "short_min": args.short_min}
    for name, uid in (("long", long_id), ("short", short_id)):
        video = str(raw / uid / "video.mp4")
        floor = _run_child(["--child", "decode", video])
        out = args.work / f"unit-{uid}"
        shutil.rmtree(out, ignore_errors=True)
        unit = _run_child(["--child", "unit", str(raw), uid, str(out)])
        results[name] = {
            "decode_floor": floor,
            "unit_build": unit,
            "build_over_floor": unit["seconds"] / floor["seconds"],
        }
    results["rss_ratio_long_over_short"] = (
        results["long"]["unit_build"]["rss_mb"] / results["short"]["unit_build"]["rss_mb"]
    )
    for engine in [e for e in args.engines.split(",") if e]:
        data = args.work / f"data-{engine}"
        shutil.rmtree(data, ignore_errors=True)
        r = _run_child(["--child", "engine", str(raw), str(data), engine])
        r["clips_per_s_per_core"] = r["samples"] / r["seconds"] / (os.cpu_count() or 1)
        results[f"engine_{engine}"] = r
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
