"""The planner: group inputs (recordings, chunks of still pairs) into units of work.

A unit of work is what one worker processes start to finish, with one decode worker, one set of tar parts,
one index/rejects table and one ``summary.json``. Units are decoupled from inputs: many short videos share a
unit (and its shards); a long recording is a unit of its own. An input is never split, so a session never
spans two units, and a unit holds whole sessions of either split.

How inputs are grouped (``plan_units``) is a deterministic function of the inputs and the config alone
(never of the engine, its worker count or the order of discovery), and adding k inputs to N rewrites O(k)
units, not O(N): content-defined boundaries over the sorted input list, as in content-defined chunking
(rsync, LBFS; Muthitacharoen et al., SOSP 2001), with inputs in place of bytes:

- Inputs are sorted by id (their injective session key, derived from the RAW-relative path).
- Each input has a planned-window estimate ``w`` (``estimate_windows``: from the media files' bytes; still
  chunks: one window per pair), so the grouping key needs no decoding.
- A unit ends after input ``i`` when ``h(id_i) < w_i / target``, ``h`` a uniform hash of the id in [0, 1):
  units then hold ``target`` windows on average, and whether a boundary follows an input depends on that
  input alone. Adding an input changes the unit it lands in (and, through the cap below, at most the
  units until the next content-defined boundary); every other unit keeps its members, its id and its bytes.
- Caps: an input of ``target`` windows or more is a unit of its own, and a unit ends before an input that
  would take it past ``4 * target`` windows or ``unit_max_bytes``. A cut by a cap depends on where the
  unit started, so an input added before it can move it: the rewrite then runs on to the next
  content-defined boundary (one more unit, on average); about 2% of units end at a cap.

The target adapts to the corpus so that there are enough units to keep workers busy: it is
``min(unit_windows, 2**floor(log2(total / unit_min_count)))`` (at least 1), so a corpus has at least about
``unit_min_count`` units (default 16: eight per worker on 2 cores; raise it for a cluster). Being a power of
two of the corpus's planned windows, the target changes only when the corpus doubles or halves past a
level, and a boundary at one level is a boundary at every lower level (``h < 2w/t`` whenever ``h < w/t``):
between such changes adding inputs rewrites O(k) units.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from transforms.config import BuildConfig
from transforms.layouts import MediaUnit, StillUnit, unit_from_dict, unit_to_dict

Input = MediaUnit | StillUnit

#: Bytes of media per planned 2 s window, for the estimate: ~1 Mbit/s, typical of the 240p-720p H.264 + AAC
#: that AudioSet/Ego4D-style corpora hold. Only the balance of units depends on it, never an output's content.
BYTES_PER_WINDOW = 250_000
#: A unit ends before an input that would take it past this many times the target. With boundaries of
#: probability w/target, a run of inputs reaches 4x the target without one in about e^-4 = 2% of units: the
#: cap bounds the tail rarely, so that adding an input almost always rewrites the one unit it falls into.
MAX_OVER_TARGET = 4


@dataclass(frozen=True)
class WorkUnit:
    """A unit of work: whole inputs in id order, processed by one worker into one folder of results."""

    unit_id: str
    inputs: tuple[Input, ...]

    def input_paths(self) -> list[str]:
        return sorted({p for i in self.inputs for p in i.input_paths()})

    def to_dict(self) -> dict:
        return {"unit_id": self.unit_id, "inputs": [unit_to_dict(i) for i in self.inputs]}

    @classmethod
    def from_dict(cls, d: dict) -> WorkUnit:
        """A unit from its JSON form; a bare input's JSON (``unit_to_dict``) is a unit of that input alone."""
        if "inputs" not in d:
            one = unit_from_dict(d)
            return cls(one.unit_id, (one,))
        return cls(d["unit_id"], tuple(unit_from_dict(i) for i in d["inputs"]))


def _uniform(text: str) -> float:
    """A stable hash of ``text`` as a number in [0, 1) (sha256: the same on every machine and Python)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2**64


def estimate_windows(inp: Input, sizes: dict[str, int | None]) -> int:
    """Planned windows of an input, estimated without decoding (at least 1).

    A media input: bytes of its video and separate audio file over ``BYTES_PER_WINDOW``. A chunk of still
    pairs: one window per pair. ``sizes``: RAW-relative path -> bytes (None or absent: 0).
    """
    if isinstance(inp, StillUnit):
        return max(1, len(inp.pairs))
    media = {p for p in (inp.video, inp.audio) if p}
    return max(1, round(sum(sizes.get(p) or 0 for p in media) / BYTES_PER_WINDOW))


def input_bytes(inp: Input, sizes: dict[str, int | None]) -> int:
    return sum(sizes.get(p) or 0 for p in inp.input_paths())


def target_windows(total_windows: int, cfg: BuildConfig) -> int:
    """Windows per unit aimed at: ``min(unit_windows, 2**floor(log2(total / unit_min_count)))``, at least 1."""
    per = total_windows / max(1, cfg.unit_min_count)
    level = 2 ** math.floor(math.log2(per)) if per >= 1 else 1
    return max(1, min(cfg.unit_windows, level))


def unit_id_for(inputs: list[Input]) -> str:
    """A single input keeps its id; a group is named by its first input, its size and a hash of its members."""
    if len(inputs) == 1:
        return inputs[0].unit_id
    digest = hashlib.sha256("\n".join(i.unit_id for i in inputs).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{inputs[0].unit_id}-n{len(inputs)}-{digest[:8]}"


def plan_units(inputs: list[Input], sizes: dict[str, int | None], cfg: BuildConfig) -> list[WorkUnit]:
    """Group ``inputs`` into units of work (see the module docstring), in unit-id order.

    ``sizes``: RAW-relative path -> bytes of the inputs' files. Deterministic in (inputs, sizes, cfg).
    """
    ordered = sorted(inputs, key=lambda i: i.unit_id)
    est = [estimate_windows(i, sizes) for i in ordered]
    target = target_windows(sum(est), cfg)
    max_windows = MAX_OVER_TARGET * target
    groups: list[list[Input]] = []
    cur: list[Input] = []
    acc_w = acc_b = 0

    def flush() -> None:
        nonlocal cur, acc_w, acc_b
        if cur:
            groups.append(cur)
        cur, acc_w, acc_b = [], 0, 0

    for inp, w in zip(ordered, est, strict=True):
        b = input_bytes(inp, sizes)
        if w >= target:
            flush()
            groups.append([inp])
            continue
        if cur and (acc_w + w > max_windows or acc_b + b > cfg.unit_max_bytes):
            flush()
        cur.append(inp)
        acc_w, acc_b = acc_w + w, acc_b + b
        if _uniform(inp.unit_id) < w / target:
            flush()
    flush()
    units = [WorkUnit(unit_id_for(g), tuple(g)) for g in groups]
    units.sort(key=lambda u: u.unit_id)
    return units
