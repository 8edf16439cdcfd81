"""Many small inputs: build wall time over the decode floor on the local, Beam and Ray engines, side by side.

    uv run python -m benchmarks.many_inputs --sessions 300 --seconds 6 --width 320 --height 240 --out R.json

Input: ``bindset synth --layout videos`` (H.264 + AAC), made once under --work and reused. Each measurement
runs in a fresh process, one after another in this run, so the ratios are comparable on a shared machine:
- decode floor: PyAV demuxing and decoding every video and audio frame of every file, in one process;
- a whole ``bindset build`` on each engine (default config: units and shards as the planner makes them),
  wall time, clips per second per core (every engine uses every core by default: Beam's DirectRunner one
  worker per core, a local Ray one CPU per core, `local` one decode worker per core; `local:N` N workers),
  the unit and shard counts and the smallest shard;
- the machine's 1-minute load average before and after each measurement (``load``): on a shared machine the
  ratios are only comparable between measurements under a similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.floor import decode_floor
from benchmarks.output import emit

REPO = Path(__file__).resolve().parents[1]


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.many_inputs", *args], cwd=REPO, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_decode(raw: str) -> dict:
    f = decode_floor(sorted(Path(raw).glob("*.mp4")))
    return {"seconds": f.seconds, "frames": f.frames + f.audio_frames}


def child_engine(raw: str, data: str, engine: str) -> dict:
    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    name, _, workers = engine.partition(":")  # "local:2": the local engine with 2 decode workers
    t0 = time.perf_counter()
    result = build(raw, data, BuildConfig(), EngineConfig(name, num_workers=int(workers) if workers else None))
    seconds = time.perf_counter() - t0
    sizes = json.loads((Path(data) / "shards" / "sizes.json").read_text())
    return {"seconds": seconds, "samples": result.commit.samples, "units": result.units, "shards": len(sizes),
            "smallest_shard": min(sizes.values()), "largest_shard": max(sizes.values())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=300)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--work", type=Path, default=Path("/tmp/bindset-bench-many"))
    p.add_argument("--engines", default="local,local:1,beam,ray",
                   help="local:N = the local engine with N decode workers (local: one per core)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        print(json.dumps({"decode": child_decode, "engine": child_engine}[kind](*rest)))
        return 0
    raw = args.work / f"raw-{args.sessions}x{args.seconds}-{args.width}x{args.height}"
    if not (raw / ".done").exists():
        shutil.rmtree(raw, ignore_errors=True)
        cmd = [sys.executable, "-m", "bindset.cli", "synth", str(raw), "--layout", "videos", "--sessions",
               str(args.sessions), "--seconds", str(args.seconds), "--width", str(args.width), "--height",
               str(args.height), "--quiet"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        (raw / ".done").touch()
    cores = os.cpu_count() or 1
    results: dict = {"cores": cores, "sessions": args.sessions, "seconds": args.seconds,
                     "size": [args.width, args.height]}  # fmt: skip
    load0 = os.getloadavg()[0]
    floor = _child(["--child", "decode", str(raw)])
    results["decode_floor_s"] = floor["seconds"]
    results["decode_floor_load"] = [load0, os.getloadavg()[0]]
    engines = [e for e in args.engines.split(",") if e]
    for engine in engines:
        data = args.work / f"data-{engine}"
        shutil.rmtree(data, ignore_errors=True)
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        r = _child(["--child", "engine", str(raw), str(data), engine])
        r["process_wall_s"] = time.perf_counter() - t0
        r["load"] = [load0, os.getloadavg()[0]]
        used = int(engine.partition(":")[2] or 0) or cores if engine.startswith("local") else cores  # local:0 too
        r["over_floor"] = r["seconds"] / floor["seconds"]
        r["clips_per_s_per_core"] = r["samples"] / r["seconds"] / used
        results[engine] = r
        shutil.rmtree(data, ignore_errors=True)
        if args.out:  # what is measured so far survives an interrupted run
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    local = results.get("local")
    for engine in ("beam", "ray"):
        if local and engine in results:
            per_core = results[engine]["clips_per_s_per_core"]
            results[engine]["per_core_vs_local"] = per_core / local["clips_per_s_per_core"]
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
