"""How every benchmark hands back its figures: JSON on stdout, and the same in ``--out`` when given."""

from __future__ import annotations

import json
from pathlib import Path


def emit(results: dict, out: Path | None) -> None:
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
