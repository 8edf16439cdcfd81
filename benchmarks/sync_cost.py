"""The clock check's cost as a fraction of build time (issue 14: target <= 15% on the 30-minute session).

    uv run python -m benchmarks.sync_cost --minutes 30 --width 1280 --height 720 --out BENCH_sync.json
    uv run python -m benchmarks.sync_cost --raw RAW30 --out BENCH_sync.json   # RAW30 from benchmarks.tile_session

Input: one synthetic captures session with every stream (exact clocks, so that verify rejects nothing and both
builds decode the same; 6 impacts a minute), made once under --work.
Measured back to back in this process, alternating, the faster of two runs each: a whole local build with
``--clocks declared`` (no estimation), the same with ``--clocks verify`` (the video and audio activity
measured by the build's own decoding pass, the depth, thermal and IMU streams read again), and the
standalone check that ``bindset sync`` runs (``transforms/clockcheck.check_clocks`` without taps: every
stream read in a pass of its own).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks.output import emit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--work", type=Path, default=Path("/tmp/bindset-bench-sync"))
    p.add_argument("--raw", type=Path, default=None,
                   help="an existing captures RAW of one session instead of synthesising one (e.g. made by "
                        "benchmarks.tile_session: 30 min of 720p in seconds); its clocks must be exact")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from bindset.synth.generate import SynthConfig, synth
    from pipelines.build import EngineConfig, build
    from transforms.clockcheck import check_clocks
    from transforms.config import BuildConfig
    from transforms.layouts import discover

    raw = args.raw or args.work / f"raw-exact-{args.minutes:g}min-{args.width}x{args.height}"
    if not raw.exists():
        synth(raw, SynthConfig(sessions=1, seconds=args.minutes * 60, seed=77, width=args.width, height=args.height,
                               impacts_per_minute=6, workers=1))  # fmt: skip
    timings: dict[str, float] = {}
    # alternated, twice each, the faster of each kept: the first build of the process also starts the decode
    # workers' forkserver (imports torch), which would be charged to whichever mode ran first
    for mode in ("declared", "verify", "declared", "verify"):
        data = args.work / f"data-{mode}"
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        build(raw, data, BuildConfig(clocks=mode), EngineConfig("local"))
        key = f"build_{mode}_s"
        timings[key] = min(timings.get(key, float("inf")), time.perf_counter() - t0)
    unit = discover(raw, "captures").units[0]
    t0 = time.perf_counter()
    check_clocks(raw, unit, "verify")
    timings["standalone_check_s"] = time.perf_counter() - t0
    result = {
        "raw": str(raw),
        "minutes": args.minutes if args.raw is None else None,
        "size": f"{args.width}x{args.height}" if args.raw is None else None,
        **timings,
        "standalone_check_fraction_of_declared_build": timings["standalone_check_s"] / timings["build_declared_s"],
        "verify_overhead": timings["build_verify_s"] / timings["build_declared_s"] - 1,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
