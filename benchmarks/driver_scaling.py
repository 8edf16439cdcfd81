"""The build driver at archive scale: plan, skip-finished and commit time and peak RSS against unit count.

    uv run python -m benchmarks.driver_scaling --units 1000 10000 100000 --rows 10 --work /tmp/drv --out R.json

Synthetic unit results, no decoding: every unit folder under ``DATA/_work/units/`` holds hard links to one
template (an index of ``--rows`` rows, a rejects table of one row, one tar part) and its own
``summary.json``. Each size runs in a fresh process, which measures:
- plan: ``transforms.grouping.plan_units`` over as many inputs as there are units;
- skip-finished: reading every unit's ``summary.json`` (``pipelines.work.cached_summary``), as a rebuild does;
- commit: ``pipelines.commit.commit`` (shard links, sizes.json, the streamed index and rejects, manifest),
  after the import of the clock check's modules (scipy, ~1-3 s once), which a build does at warm-up;
and its peak RSS (VmHWM) after all three.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.output import emit


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _template(folder: Path, rows: int) -> None:
    from pipelines.unit_tables import write_unit_tables
    from schemas.tables import INDEX_SCHEMA

    folder.mkdir(parents=True)
    base = {f.name: None for f in INDEX_SCHEMA}
    base.update({f.name: False for f in INDEX_SCHEMA if f.name.startswith("has_")})
    index = [dict(base, key=f"s_{i:09d}", shard="p-train-00000.tar", split="train", session="s", layout="videos",
                  clip_start_s=2.0 * i, clip_end_s=2.0 * i + 2, label_change=False, has_video=True,
                  sha256_jpg=f"{i:064x}", source_video="s.mp4") for i in range(rows)]  # fmt: skip
    reject = {"source": "s.mp4", "reason": "audio_silent", "detail": "x", "session": "s", "key": "s_000000000",
              "start_s": 0.0, "end_s": 2.0, "modality": "audio"}  # fmt: skip
    write_unit_tables(folder, index, [reject])  # as a unit's sink writes them
    (folder / "p-train-00000.tar").write_bytes(bytes(10240))


def child(work: Path, n: int, rows: int) -> dict:
    from pipelines.commit import commit
    from pipelines.unit_tables import TABLE_FILES
    from pipelines.work import cached_summary, units_dir
    from transforms.config import BuildConfig
    from transforms.grouping import BYTES_PER_WINDOW, plan_units
    from transforms.layouts import Discovery, MediaUnit
    from transforms.records import UnitSummary

    data = work / f"data-{n}"
    shutil.rmtree(data, ignore_errors=True)
    ids = [f"u{i:07d}" for i in range(n)]
    t0 = time.perf_counter()
    for k, uid in enumerate(ids):  # the results of an earlier build
        tpl = work / f"template-{rows}-{k // 30000}"  # a file takes at most 65,000 links (ext4)
        if not tpl.exists():
            _template(tpl, rows)
        d = units_dir(data) / uid
        d.mkdir(parents=True)
        for name in (*TABLE_FILES, "p-train-00000.tar"):
            os.link(tpl / name, d / name)
        s = UnitSummary(
            uid,
            "fp",
            windows_planned=rows,
            samples=rows,
            reasons={"audio_silent": 1},
            parts=[{"file": "p-train-00000.tar", "split": "train", "samples": rows, "bytes": 10240}],
        )
        (d / "summary.json").write_text(s.to_json())
    setup_s = time.perf_counter() - t0

    cfg = BuildConfig()
    inputs = [MediaUnit(i, "videos", i, f"{i}.mp4", audio=f"{i}.mp4") for i in ids]
    sizes = {f"{i}.mp4": rows * BYTES_PER_WINDOW // 4 for i in ids}
    t0 = time.perf_counter()
    plan = plan_units(inputs, sizes, cfg)
    plan_s = time.perf_counter() - t0
    del inputs, sizes, plan

    t0 = time.perf_counter()
    units = [(uid, units_dir(data) / uid, cached_summary(data, uid, "fp")) for uid in ids]
    skip_s = time.perf_counter() - t0
    assert all(s is not None for _, _, s in units)

    import pipelines.sync  # noqa: F401 - a build imports the clock check's modules (scipy) at warm-up, not here

    t0 = time.perf_counter()
    result = commit(data, Discovery("videos", False), units, cfg, "bench", dict.fromkeys(ids, "fp"))
    commit_s = time.perf_counter() - t0
    assert result.samples == n * rows
    out = {"units": n, "samples": n * rows, "setup_s": round(setup_s, 2), "plan_s": round(plan_s, 3),
           "skip_finished_s": round(skip_s, 3), "commit_s": round(commit_s, 2),
           "index_mb": round((data / "index.parquet").stat().st_size / 1e6, 2),
           "peak_rss_mb": round(_peak_rss_mb(), 1)}  # fmt: skip
    shutil.rmtree(data, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--rows", type=int, default=10, help="index rows (samples) per unit")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bindset-driver-scaling"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(child(args.work, args.child, args.rows)))
        return
    import subprocess

    runs = []
    for n in args.units:
        cmd = [sys.executable, "-m", "benchmarks.driver_scaling", "--child", str(n), "--rows", str(args.rows),
               "--work", str(args.work)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)
    emit({"rows_per_unit": args.rows, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
