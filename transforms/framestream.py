"""Depth and thermal frame streams: a timestamps table on the session timeline, and per-window picks.

One bad side file costs only what it touches: a table that cannot be used rejects its modality for
every window (``FrameTableError``), a row without a usable time or file name is dropped and reported,
and a frame file that cannot be read rejects that modality of the windows that pick it, naming it.

Still pairs (SUN RGB-D, LLVIP) and orientation. Both datasets store a pair registered pixel for pixel
*as coded*: SUN RGB-D's depth PNG is registered to its RGB JPEG's stored grid (its intrinsics.txt is
for that grid), LLVIP's visible and infrared JPEGs are aligned 1280x1024 frames. Their files carry no
EXIF orientation, but a copy re-saved by a phone or photo tool may tag the RGB/visible JPEG. The rule
(``partner_orientation``): the image's tag orients both members, so the pair stays registered; a
partner's own tag is honoured only when it says the same or nothing (1 = as stored); a partner tagged
differently from its image is rejected (``orientation_mismatch``), never stored rotated relative to it.
Depth intrinsics move with the depth pixels (``orient_intrinsics``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas.reasons import RejectReason
from transforms.images import (
    ORIENTATION_NAMES,
    ImageInputError,
    image_header,
    load_depth_png_mm,
    load_png16,
    load_rgb,
    load_thermal_png,
    nearest_frame,
    orient,
    store_png16,
)
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
    units: str = ""  # the stream's declared units; "mm" (depth) makes picks check bit depth and range


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
        files, times, bad, nameless = [], [], 0, 0
        for row in reader:
            try:
                t = float(row[spec.time_column])
            except (TypeError, ValueError):
                bad += 1
                continue
            if not np.isfinite(t):
                bad += 1
                continue
            cell = (row[spec.file_column] or "").strip()
            if not cell:  # an empty cell would name the frames folder itself
                nameless += 1
                continue
            files.append(cell)
            times.append(t)
    issues = []
    if bad:
        issues.append(TableIssue(RejectReason.BAD_TIMESTAMPS, f"{bad} row(s) without a usable timestamp dropped"))
    if nameless:
        detail = f"{nameless} row(s) with an empty {spec.file_column!r} cell dropped"
        issues.append(TableIssue(RejectReason.BAD_TIMESTAMPS, detail))
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
    return FrameTable(files, spec.clock.to_session(t), period, issues, spec.units)


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
        path = check_file(root, source).path
        if table.units == "mm":  # depth: 16-bit millimetres of a plausible range, or a reject saying why
            arr, data = load_depth_png_mm(path, name=source, max_side=max_side)
        elif table.units in ("centikelvin", "gray8", "raw_counts"):  # thermal: its bit depth fits its unit
            arr, data = load_thermal_png(path, units=table.units, name=source, max_side=max_side)
        else:
            arr, data = load_png16(path, max_side=max_side, name=source)
    except PathRejected as exc:
        return FramePickResult(None, source, None, None, None, exc.reason, f"{source}: {exc.detail}")
    except FileNotFoundError:
        return FramePickResult(None, source, None, None, None, RejectReason.FILE_MISSING, f"{source}: not found")
    except ImageInputError as exc:
        return FramePickResult(None, source, None, None, None, exc.reason, str(exc))
    except OSError as exc:  # checked, then unreadable (EIO, replaced meanwhile): this frame only
        detail = f"{source}: cannot be read: {exc.strerror or exc}"
        return FramePickResult(None, source, None, None, None, RejectReason.IO_ERROR, detail)
    return FramePickResult(store_png16(arr, data), source, float(table.t[match.index]), match.delta_s * 1000.0, arr)


class OrientationMismatch(ImageInputError):
    reason = RejectReason.ORIENTATION_MISMATCH


def partner_orientation(image_orientation: int, partner_orientation: int, partner: str) -> int:
    """The EXIF orientation applied to a still pair's partner: the image's (module docstring).

    Raises OrientationMismatch when the partner carries a tag other than 1 that differs from the image's."""
    if partner_orientation in (1, image_orientation):
        return image_orientation
    raise OrientationMismatch(
        f"{partner}: EXIF orientation {partner_orientation} ({ORIENTATION_NAMES[partner_orientation]}) differs "
        f"from its image's {image_orientation} ({ORIENTATION_NAMES[image_orientation]}); the pair is registered "
        "as stored, so one of the tags is wrong"
    )


@dataclass(frozen=True)
class StillPartner:
    """A still pair's depth (mm) or thermal (8-bit) pixels, turned as the image is."""

    pixels: np.ndarray  # (H, W) after ``orientation``
    orientation: int  # EXIF orientation applied (the image's)
    own_orientation: int  # the partner file's own tag (1 when none)
    stored_width: int  # as coded, before orientation (what intrinsics refer to)
    stored_height: int


def read_still_partner(root: Path, rel: str, kind: str, max_side: int, image_orientation: int = 1) -> StillPartner:
    """SUN RGB-D depth (bit-rotated mm, 16-bit, plausible range) or an LLVIP infrared JPEG (8-bit, stored as
    3 equal channels), oriented like its image (``image_orientation``, the image's EXIF tag).

    Raises PathRejected (transforms/paths.py) for a path that must not be opened, ImageInputError
    (``OrientationMismatch``, ``DepthBitDepth``, ...) for one that must not be stored."""
    path = check_file(root, rel).path
    if kind == "depth":
        arr, data = load_depth_png_mm(path, name=rel, sunrgbd=True, max_side=max_side)
        own = image_header(data, name=rel).orientation
    else:
        rgb, header = load_rgb(path, name=rel, max_side=max_side)
        arr, own = rgb[..., 0], header.orientation
    applied = partner_orientation(image_orientation, own, rel)
    height, width = arr.shape
    return StillPartner(orient(arr, applied), applied, own, width, height)
