"""Depth and thermal frame streams: a timestamps table on the session timeline, and per-window picks."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas.reasons import RejectReason
from transforms.images import ImageInputError, load_png16, nearest_frame, read_png16, store_png16, sunrgbd_depth_mm
from transforms.layouts import FrameStreamSpec
from transforms.paths import PathRejected, check_dir, check_file, join_rel


class FrameTableError(Exception):
    def __init__(self, source: str, reason: RejectReason, detail: str):
        self.source, self.reason, self.detail = source, reason, detail
        super().__init__(f"{source}: {detail}")


@dataclass(frozen=True)
class TableIssue:
    reason: RejectReason
    detail: str


@dataclass
class FrameTable:
    files: list[str]  # relative to RAW
    t: np.ndarray  # session seconds, strictly increasing
    period_s: float  # median frame period
    issues: list[TableIssue] = field(default_factory=list)


def load_frame_table(root: Path, spec: FrameStreamSpec) -> FrameTable:
    """Read the timestamps CSV; duplicated and out-of-order rows are repaired and reported, never fatal."""
    src = spec.timestamps_csv
    try:  # both inside RAW, of the right type and readable, before anything opens them
        checked = check_file(root, src)
        check_dir(root, spec.frames_dir)
    except PathRejected as exc:
        raise FrameTableError(exc.source, exc.reason, exc.detail) from None
    path = checked.path
    if checked.size == 0:
        raise FrameTableError(src, RejectReason.EMPTY_FILE, "timestamps file is empty")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (spec.file_column, spec.time_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise FrameTableError(src, RejectReason.BAD_TIMESTAMPS, f"missing column(s) {', '.join(missing)}")
        files, times, bad = [], [], 0
        for row in reader:
            try:
                t = float(row[spec.time_column])
            except (TypeError, ValueError):
                bad += 1
                continue
            if not np.isfinite(t):
                bad += 1
                continue
            files.append(row[spec.file_column])
            times.append(t)
    issues = []
    if bad:
        issues.append(TableIssue(RejectReason.BAD_TIMESTAMPS, f"{bad} row(s) without a usable timestamp dropped"))
    t = np.asarray(times, np.float64) * spec.time_unit_s
    backwards = int((np.diff(t) < 0).sum()) if t.size > 1 else 0
    if backwards:
        issues.append(TableIssue(RejectReason.NON_MONOTONIC_TIMESTAMPS, f"{backwards} backward step(s); rows sorted"))
    order = np.argsort(t, kind="stable")
    t = t[order]
    files = [files[i] for i in order]
    keep = np.ones(t.shape[0], bool)
    keep[1:] = np.diff(t) > 0
    dups = int((~keep).sum())
    if dups:
        issues.append(TableIssue(RejectReason.DUPLICATE_TIMESTAMPS, f"{dups} repeated timestamp(s); first kept"))
    t = t[keep]
    # a cell is relative to the frames folder; one with '..' or an absolute one is judged where it leads,
    # when its frame is picked (transforms/paths.py)
    files = [join_rel(spec.frames_dir, files[i]) for i in np.flatnonzero(keep)]
    if t.size == 0:
        raise FrameTableError(src, RejectReason.BAD_TIMESTAMPS, "no usable timestamps")
    period = float(np.median(np.diff(t))) if t.size > 1 else 0.0
    return FrameTable(files, spec.clock.to_session(t), period, issues)


@dataclass(frozen=True)
class FramePickResult:
    png: bytes | None
    source: str | None
    t_s: float | None
    delta_ms: float | None
    array: np.ndarray | None
    reason: RejectReason | None = None
    detail: str = ""


def pick_frame(
    root: Path, table: FrameTable, target_s: float, tolerance_s: float | None, missing: RejectReason, max_side: int
) -> FramePickResult:
    tol = tolerance_s if tolerance_s is not None else 0.5 * table.period_s
    match = nearest_frame(table.t, target_s, tol)
    if match.index is None:
        gap = "no frames" if np.isnan(match.delta_s) else f"nearest frame {match.delta_s * 1000:+.1f} ms away"
        return FramePickResult(None, None, None, None, None, missing, f"{gap} (tolerance {tol * 1000:.1f} ms)")
    source = table.files[match.index]
    try:
        arr, data = load_png16(check_file(root, source).path, max_side=max_side)
    except PathRejected as exc:
        return FramePickResult(None, source, None, None, None, exc.reason, f"{source}: {exc.detail}")
    except FileNotFoundError:
        return FramePickResult(None, source, None, None, None, RejectReason.FILE_MISSING, f"{source}: not found")
    except ImageInputError as exc:
        return FramePickResult(None, source, None, None, None, exc.reason, str(exc))
    return FramePickResult(store_png16(arr, data), source, float(table.t[match.index]), match.delta_s * 1000.0, arr)


def read_still_partner(root: Path, rel: str, kind: str, max_side: int) -> np.ndarray:
    """SUN RGB-D depth (bit-rotated mm) or an LLVIP infrared JPEG (8-bit, stored as 3 equal channels).

    Raises PathRejected (transforms/paths.py) for a path that must not be opened."""
    path = check_file(root, rel).path
    if kind == "depth":
        return sunrgbd_depth_mm(read_png16(path, max_side=max_side))
    from transforms.images import read_rgb

    return read_rgb(path, max_side=max_side)[..., 0].copy()
