"""The clock check's cost as a fraction of build time (issue 14: target <= 15% on the 30-minute session).

    uv run python -m benchmarks.sync_cost --minutes 30 --width 1280 --height 720 --out BENCH_sync.json
    uv run python -m benchmarks.sync_cost --raw RAW30 --out BENCH_sync.json   # RAW30 from benchmarks.tile_session

Input: one synthetic captures session with every stream (exact clocks, so that verify rejects nothing and both
builds decode the same; 6 impacts a minute), made once under --work.
Measured back to back in this process, alternating, ``--rounds`` runs each after a warm-up build: a whole
local build with ``--clocks declared`` (no estimation), the same with ``--clocks verify`` (the video and audio
activity measured by the build's own decoding pass, the depth, thermal and IMU streams read beside it), and the
standalone check that ``bindset sync`` runs (``transforms/clockcheck.check_clocks`` without taps: every
stream read in a pass of its own).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.output import emit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--work", type=Path, default=Path("/tmp/bindset-bench-sync"))
    p.add_argument(
        "--raw",
        type=Path,
        default=None,
        help="an existing captures RAW of one session instead of synthesising one (e.g. made by "
        "benchmarks.tile_session: 30 min of 720p in seconds); its clocks must be exact",
    )
    p.add_argument("--rounds", type=int, default=2, help="declared/verify pairs, alternated")
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
    walls: dict[str, list[float]] = {"declared": [], "verify": []}
    pairs: list[float] = []
    loads: list[float] = []
    # alternated, --rounds times each; the first build of the process also starts the decode workers'
    # forkserver (imports torch), so a warm-up build runs first and is not counted. Each round's verify/declared
    # ratio compares two builds run back to back (the machine's load drifts between rounds)
    build(raw, args.work / "data-warmup", BuildConfig(clocks="declared"), EngineConfig("local"))
    for _ in range(args.rounds):
        for mode in ("declared", "verify"):
            data = args.work / f"data-{mode}"
            shutil.rmtree(data, ignore_errors=True)
            t0 = time.perf_counter()
            build(raw, data, BuildConfig(clocks=mode), EngineConfig("local"))
            walls[mode].append(time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
        pairs.append(walls["verify"][-1] / walls["declared"][-1] - 1)
    for mode, w in walls.items():
        timings[f"build_{mode}_s"] = min(w)
        timings[f"build_{mode}_all_s"] = [round(x, 2) for x in w]
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
        "verify_overhead": timings["build_verify_s"] / timings["build_declared_s"] - 1,  # fastest of each
        "verify_overhead_per_round": [round(x, 4) for x in pairs],
        "verify_overhead_median": statistics.median(pairs),
        "load_1min_during": [round(x, 2) for x in loads],
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
