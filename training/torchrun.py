"""`bindset train` under torchrun, for machines without Ray: every process runs the same loop and joins
torchrun's process group (NCCL with --gpu, gloo on CPU).

    torchrun --nproc_per_node 8 -m training.torchrun DATA RUN --preset imagebind --gpu
    torchrun --nproc_per_node 2 -m training.torchrun DATA RUN --config cfg.yaml --max-steps 100

Its own entry point (the training library does not import the `bindset` CLI): the same TrainConfig flags as
`bindset train` (training/config.py:add_train_config_arguments), always the local engine, and the same exit
codes (bindset/logs.py:guarded). Each rank writes its own log file, RUN/logs/train-rank<R>-<time>-<pid>.log;
only rank 0 shows a progress bar and prints the summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bindset.logs import EXIT_USAGE, OneLineParser, guarded, log_file_name, run_logging
from schemas.errors import UserError
from training.config import add_train_config_arguments, train_config_from_args


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="torchrun -m training.torchrun", description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("--gpu", action="store_true", help="one GPU per process (LOCAL_RANK), NCCL")
    add_train_config_arguments(p)
    p.add_argument("-v", "--verbose", action="count", default=0, help="console: -v INFO, -vv DEBUG + third-party")
    p.add_argument("-q", "--quiet", action="store_true", help="console: no progress bar, errors and summary only")
    p.add_argument("--log-file", type=Path, default=None, help="this rank's log file")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    rank = int(os.environ.get("RANK", "0"))
    path = args.log_file or args.run / "logs" / log_file_name(f"train-rank{rank}")
    quiet = args.quiet or rank != 0

    def command() -> int:
        from tqdm import tqdm

        from training.run import train

        cfg = train_config_from_args(args)
        if not (args.data / "index.parquet").is_file():
            raise UserError(f"DATA {args.data}: not a built dataset (no index.parquet); run `bindset build` first")
        bar = lambda total: tqdm(total=total, desc="image cache", unit="batch", disable=quiet, file=run.console)  # noqa: E731
        result = train(args.data, args.run, cfg, gpu=args.gpu, engine="local", progress=bar)
        if rank == 0:
            print("\n".join(result.summary_lines()))
            print(f"  log: {run.path}")
        return 0

    with run_logging(path, verbose=args.verbose, quiet=quiet) as run:
        paths = [p for p in (args.data, args.run, args.config) if p is not None]
        return guarded(f"training.torchrun (rank {rank})", run, command, paths)


if __name__ == "__main__":
    sys.exit(main())
