"""`bindset train` under torchrun, for machines without Ray: every process runs the same loop and joins
torchrun's process group (NCCL with --gpu, gloo on CPU).

    torchrun --nproc_per_node 8 -m training.torchrun DATA RUN --preset imagebind --gpu
"""

from __future__ import annotations

import sys

from bindset.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["train", *argv, "--engine", "local", "--quiet"])


if __name__ == "__main__":
    sys.exit(main())
