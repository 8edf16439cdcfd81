"""Build wall time with DATA (and RAW) on a local S3 API server against local disk, side by side in one run.

    uv run python -m benchmarks.build_s3 --layout videos --sessions 100 --seconds 6 --width 320 --height 240 \
        --out R.json                                                          # many small inputs
    uv run python -m benchmarks.build_s3 --layout captures --sessions 1 --seconds 300 --out R.json  # a long session

It makes a synthetic RAW once under --work, starts moto's S3 server in a child process on 127.0.0.1 (its own
process, as a real endpoint would be), uploads RAW to a bucket, and times a whole ``bindset build`` (local
engine, default config) in a fresh process for each of: RAW and DATA on local disk; RAW local, DATA on
``s3://``; RAW and DATA on ``s3://`` (when this bindset reads RAW from object storage). The rounds alternate
``--rounds`` times and the best of each is reported, with the ratio to the local build. moto is a floor for
an object store's cost: no network latency or bandwidth limit, but real HTTP, a server that parses and
stores every request, the lease object's heartbeats, server-side copies and range GETs.
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

from benchmarks.output import emit
from benchmarks.train_data_wait_s3 import _start_moto

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bindset-bench"


def _child(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.build_s3", *args], cwd=REPO, capture_output=True,
                          text=True, check=False, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_build(raw: str, data: str) -> dict:
    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    t0 = time.perf_counter()
    result = build(raw, data, BuildConfig(), EngineConfig("local"))
    return {"seconds": time.perf_counter() - t0, "samples": result.commit.samples, "units": result.units}


def _upload_tree(root: Path, url: str) -> int:
    from pipelines import storage

    dest, n = storage.location(url), 0
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".done":
            storage.upload(p, dest / p.relative_to(root).as_posix())
            n += 1
    return n


def _reads_raw_urls() -> bool:
    """Whether this bindset builds from a RAW on object storage (issue 17; refused before it did)."""
    from pipelines import build as build_mod

    text = Path(build_mod.__file__).read_text()
    return "reading inputs from object storage is not yet supported" not in text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", default="videos")
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/bindset-bench-s3"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child_build(*args.child[1:])))
        return 0
    raw = args.work / f"raw-{args.layout}-{args.sessions}x{args.seconds}-{args.width}x{args.height}"
    if not (raw / ".done").exists():
        shutil.rmtree(raw, ignore_errors=True)
        cmd = [sys.executable, "-m", "bindset.cli", "synth", str(raw), "--layout", args.layout, "--sessions",
               str(args.sessions), "--seconds", str(args.seconds), "--width", str(args.width), "--height",
               str(args.height), "--quiet"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        (raw / ".done").touch()

    moto, endpoint = _start_moto()
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        t0 = time.perf_counter()
        files = _upload_tree(raw, f"s3://{BUCKET}/raw")
        results: dict = {"layout": args.layout, "sessions": args.sessions, "seconds": args.seconds,
                         "size": [args.width, args.height], "raw_files": files,
                         "raw_bytes": sum(f.stat().st_size for f in raw.rglob("*") if f.is_file()),
                         "raw_upload_s": time.perf_counter() - t0,
                         "server": "moto (child process, 127.0.0.1)"}  # fmt: skip
        cases = {"local": (str(raw), None), "data_s3": (str(raw), "ds-data")}
        if _reads_raw_urls():
            cases["raw_and_data_s3"] = (f"s3://{BUCKET}/raw", "ds-both")
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for rnd in range(args.rounds):
            for name, (src, prefix) in cases.items():
                data = args.work / "data-local" if prefix is None else None
                if data is not None:
                    shutil.rmtree(data, ignore_errors=True)
                dest = str(data) if data is not None else f"s3://{BUCKET}/{prefix}-{rnd}"
                runs[name].append(_child(["--child", "build", src, dest], env))
                if data is not None:
                    shutil.rmtree(data, ignore_errors=True)
                if args.out:  # what is measured so far survives an interrupted run
                    args.out.write_text(json.dumps({**results, "runs": runs}, indent=2) + "\n")
        best = {name: min(r["seconds"] for r in rs) for name, rs in runs.items()}
        results["runs"] = runs
        results["best_s"] = best
        results["ratio_to_local"] = {name: best[name] / best["local"] for name in best}
    finally:
        moto.terminate()
        moto.wait()
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
