"""Read and rewrite the small CSV side files (timestamps, IMU) that tests corrupt on purpose: ``read_csv`` gives
the header and the rows, ``write_csv`` writes them back in the layout the synthetic captures use.
"""

from __future__ import annotations

import csv
from pathlib import Path


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """The header and the rows (one dict a row, values as text) of the CSV file at ``path``."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    """Write ``rows`` under ``header`` to ``path`` with "\\n" line ends, as the synthetic captures are written."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
