"""The `bindset` command line: thin wrappers over importable functions.

bindset synth RAW/ --sessions 8 --seconds 30 --seed 0
bindset schema [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bindset.synth.generate import LAYOUTS, SynthConfig, synth


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    cfg = SynthConfig(
        sessions=args.sessions,
        seconds=args.seconds,
        seed=args.seed,
        layout=args.layout,
        width=args.width,
        height=args.height,
        workers=args.workers or SynthConfig().workers,
    )
    t0 = time.perf_counter()
    with tqdm(total=cfg.sessions, desc=f"synth {cfg.layout}", unit="session", disable=args.quiet) as bar:
        result = synth(args.raw, cfg, progress=bar.update)
    took = time.perf_counter() - t0
    print(f"synth: {len(result.sessions)} {result.layout} session(s) x {cfg.seconds:g} s, seed {cfg.seed}")
    print(f"  wrote {result.files} files, {result.bytes / 1e6:.1f} MB under {result.raw} in {took:.1f} s")
    print(f"  sessions: {', '.join(result.sessions)}")
    print(f"  ground truth: {result.raw / '_truth'} (never read by the pipeline)")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from schemas.manifest import SCHEMA_FILE, write_json_schema

    path = write_json_schema(Path(args.out) if args.out else SCHEMA_FILE)
    print(f"wrote the captures manifest JSON Schema to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bindset", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "synth",
        help="write realistic synthetic captures with ground truth",
        description="Write synthetic multimodal captures whose every stream follows one hidden "
        "class timeline, each on its own clock; ground truth goes to RAW/_truth/.",
    )
    s.add_argument("raw", type=Path, help="output folder (RAW)")
    s.add_argument("--sessions", type=int, default=8)
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--layout", choices=LAYOUTS, default="captures")
    s.add_argument("--width", type=int, default=320)
    s.add_argument("--height", type=int, default=240)
    s.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    sc = sub.add_parser("schema", help="export the captures manifest JSON Schema")
    sc.add_argument("--out", help="file to write (default: schemas/manifest.schema.json)")
    sc.set_defaults(func=_cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        # user errors (a bad manifest, a missing folder) get one readable message, never a traceback
        print(f"bindset {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
