"""`bindset sync`: estimate every stream's clock from content, compare it with the declared one.

    bindset sync RAW/ [--layout captures|ego4d|auto] [--out sync.parquet] [--write-manifest OUT/]

A separate, cheap pass over decimated streams (``transforms/activity.py`` readers: video thumbnails, 8 kHz
mono audio, reduced depth/thermal frames, the IMU CSV); the build's decoding path is not involved. The
estimators are ``transforms/sync.py``'s. Per session and stream, one ``SyncRow``; ``sync.parquet`` holds
them (``SYNC_COLUMNS``). ``--write-manifest`` writes corrected captures manifests to a folder of its own,
never over RAW.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.errors import UserError
from schemas.manifest import MANIFEST_NAMES, ImuUnits
from transforms import activity, sync
from transforms.layouts import MediaUnit, discover
from transforms.paths import check_file

log = logging.getLogger(__name__)

MODES = ("declared", "verify", "estimate")
STATUSES = ("agrees", "mismatch", "estimated", "unsynchronisable", "declared_only")
SYNC_COLUMNS = (
    "session",
    "stream",
    "declared_offset_s",
    "declared_drift_ppm",
    "estimated_offset_s",
    "estimated_drift_ppm",
    "confidence",
    "status",
    "used_offset_s",
    "used_drift_ppm",
)


@dataclass(frozen=True)
class SyncRow:
    """One stream of one session: its declared clock, the estimate, and which one is used."""

    session: str
    stream: str
    declared_offset_s: float
    declared_drift_ppm: float
    estimated_offset_s: float | None
    estimated_drift_ppm: float | None
    confidence: float
    status: str  # one of STATUSES
    used_offset_s: float
    used_drift_ppm: float
    lag_s: float | None = None  # the estimate minus the declared clock at the stream's middle (seconds)
    tolerance_s: float = 0.0  # half the stream's frame period (the video's for audio and IMU)
    reason: str = ""


@dataclass(frozen=True)
class SyncResult:
    rows: list[SyncRow]
    sessions: int
    seconds: float


def verdict(session: str, stream: str, declared, est: sync.ClockEstimate | None, tolerance_s: float,
            mode: str = "verify") -> SyncRow:  # fmt: skip
    """The row for one stream: ``agrees`` / ``mismatch`` / ``estimated`` / ``unsynchronisable`` / ``declared_only``.

    A confident estimate disagrees when it moves the stream's middle by more than ``tolerance_s``. In
    ``estimate`` mode a disagreeing confident estimate is used (``estimated``); otherwise the declared clock is.
    """
    d_off, d_ppm = float(declared.offset_s), float(declared.drift_ppm)
    if est is None or mode == "declared":
        return SyncRow(session, stream, d_off, d_ppm, None, None, 0.0, "declared_only", d_off, d_ppm,
                       tolerance_s=tolerance_s)  # fmt: skip
    lag = None if not np.isfinite(est.lag_s) else float(est.lag_s)
    if est.status != sync.CONFIDENT:
        return SyncRow(session, stream, d_off, d_ppm, None, None, 0.0, "unsynchronisable", d_off, d_ppm, lag,
                       tolerance_s, est.reason)  # fmt: skip
    e_off, e_ppm = float(est.offset_s), float(est.drift_ppm)
    if abs(est.lag_s) <= tolerance_s:
        status, used = "agrees", (d_off, d_ppm)
    elif mode == "estimate":
        status, used = "estimated", (e_off, e_ppm)
    else:
        status, used = "mismatch", (d_off, d_ppm)
    return SyncRow(session, stream, d_off, d_ppm, e_off, e_ppm, float(est.confidence), status, *used, lag,
                   tolerance_s)  # fmt: skip


def _grid(pair, rate: float) -> sync.Activity:
    t, v = pair
    return sync.to_grid(t, v, rate)


def _stream_activities(root: Path, unit: MediaUnit, rate: float) -> tuple[dict, dict, dict]:
    """Activities (session grid, declared clocks), declared clocks and frame periods of a unit's streams."""
    acts, clocks, periods, problems = {}, {}, {}, {}
    from transforms.framestream import FrameTableError, load_frame_table
    from transforms.imu import ImuFormatError, read_imu_csv

    if unit.audio:
        clocks["audio"] = unit.audio_clock
        try:
            acts["audio"] = _grid(activity.read_audio_activity(check_file(root, unit.audio).path, unit.audio_clock),
                                  rate)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - an unreadable stream is unsynchronisable, not a crash
            problems["audio"] = str(exc)
    for name in ("depth", "thermal"):
        spec = getattr(unit, name)
        if spec is None:
            continue
        clocks[name] = spec.clock
        try:
            table = load_frame_table(root, spec)
            files = [check_file(root, f).path for f in table.files]
            acts[name] = _grid(activity.read_frames_activity(files, table.t), rate)
            periods[name] = table.period_s
        except (FrameTableError, ValueError, OSError) as exc:
            problems[name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - PathRejected and friends
            problems[name] = str(exc)
    if unit.imu is not None:
        spec = unit.imu
        clocks["imu"] = spec.clock
        try:
            units = ImuUnits(accel=spec.accel_units, gyro=spec.gyro_units)
            path = check_file(root, spec.path).path
            try:
                track = read_imu_csv(path, time_column=spec.time_column, time_unit_s=spec.time_unit_s, units=units)
            except ImuFormatError:
                if not spec.fallback_time_column:
                    raise
                track = read_imu_csv(path, time_column=spec.fallback_time_column, time_unit_s=spec.time_unit_s,
                                     units=units)  # fmt: skip
            acts["imu"] = _grid(activity.imu_flux(spec.clock.to_session(track.t), track.data.astype(np.float64)), rate)
        except Exception as exc:  # noqa: BLE001
            problems["imu"] = str(exc)
    return acts, clocks, periods, problems


def sync_unit(root: Path, unit: MediaUnit, params: sync.SyncParams | None = None, mode: str = "verify"
              ) -> list[SyncRow]:  # fmt: skip
    """Rows for every non-reference stream of one session (the video is the reference, always declared)."""
    params = params or sync.SyncParams()
    rows: list[SyncRow] = []
    if not unit.video:
        return rows
    vclock = unit.video_clock
    try:
        video = activity.read_video_activity(check_file(root, unit.video).path, vclock)
        ref = _grid(video["frames"], params.rate_hz)
        vt = video["frames"][0]
        video_half = 0.5 * float(np.median(np.diff(vt))) if vt.size > 1 else 1 / 60
    except Exception as exc:  # noqa: BLE001 - no reference: every stream keeps its declared clock
        log.warning("%s: video unreadable for sync (%s)", unit.session, exc)
        ref, video_half = None, 1 / 60
    rows.append(SyncRow(unit.session, "video", vclock.offset_s, vclock.drift_ppm, vclock.offset_s, vclock.drift_ppm,
                        1.0 if ref is not None else 0.0, "agrees" if ref is not None else "declared_only",
                        vclock.offset_s, vclock.drift_ppm, 0.0, video_half, "reference"))  # fmt: skip
    acts, clocks, periods, problems = _stream_activities(root, unit, params.rate_hz)
    for name in ("audio", "depth", "thermal", "imu"):
        if name not in clocks:
            continue
        tol = max(video_half, 0.5 * periods.get(name, 0.0))
        if ref is None:
            rows.append(verdict(unit.session, name, clocks[name], None, tol, mode))
            continue
        if name not in acts:
            est = sync.ClockEstimate(clocks[name].offset_s, clocks[name].drift_ppm, 0.0, sync.UNSYNCHRONISABLE,
                                     float("nan"), False, problems.get(name, "no data"))  # fmt: skip
        else:
            est = sync.estimate_clock(ref, acts[name], clocks[name].offset_s, clocks[name].drift_ppm, params)
        rows.append(verdict(unit.session, name, clocks[name], est, tol, mode))
    return rows


def rows_table(rows: list[SyncRow]) -> pa.Table:
    """``sync.parquet``'s table: SYNC_COLUMNS, then lag, tolerance and reason."""
    cols = {f: [getattr(r, f) for r in rows] for f in SyncRow.__dataclass_fields__}
    types = {"estimated_offset_s": pa.float64(), "estimated_drift_ppm": pa.float64(), "lag_s": pa.float64()}
    return pa.table({k: pa.array(v, type=types.get(k)) for k, v in cols.items()})


def _manifest_path(root: Path, unit: MediaUnit) -> str | None:
    folder = (unit.video or "").split("/")[0]
    return next((f"{folder}/{n}" for n in MANIFEST_NAMES if (root / folder / n).is_file()), None)


def _outside(root: Path, out: Path) -> None:
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise UserError(f"--write-manifest {out}: must be outside RAW ({root}); inputs are never overwritten")


def write_manifests(root: Path, out: Path, units: list[MediaUnit], rows: list[SyncRow]) -> list[Path]:
    """Captures manifests with each confident, disagreeing estimate in place of the declared clock.

    Written as ``OUT/<session folder>/manifest.json``; OUT must not be RAW or inside it (UserError).
    """
    from pipelines.storage import atomic_write_json
    from schemas.manifest import load_manifest

    out = Path(out)
    _outside(root, out)
    by = {(r.session, r.stream): r for r in rows}
    written = []
    for unit in units:
        rel = _manifest_path(root, unit) if unit.layout == "captures" else None
        if rel is None:
            continue
        m = load_manifest(check_file(root, rel).path).model_dump(mode="json", exclude_none=True)
        for name, stream in m.get("streams", {}).items():
            r = by.get((unit.session, name))
            if r is not None and r.status in ("mismatch", "estimated") and r.estimated_offset_s is not None:
                stream["clock"] = {"offset_s": round(r.estimated_offset_s, 6),
                                   "drift_ppm": round(r.estimated_drift_ppm or 0.0, 3)}  # fmt: skip
        target = out / rel.split("/")[0] / "manifest.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_json(target, m))
    return written


def sync_raw(raw: Path | str, layout: str = "auto", params: sync.SyncParams | None = None,
             out: Path | str | None = None, write_manifest: Path | str | None = None, mode: str = "verify",
             progress=None) -> SyncResult:  # fmt: skip
    """Estimate every session's clocks; write ``out`` (sync.parquet) and corrected manifests when asked."""
    import time

    from pipelines.storage import atomic_write_parquet

    params = params or sync.SyncParams()
    t0 = time.perf_counter()
    root = Path(raw)
    if write_manifest is not None:
        _outside(root, Path(write_manifest))
    found = discover(root, layout)
    units = sorted((u for u in found.units if isinstance(u, MediaUnit)), key=lambda u: u.session)
    rows: list[SyncRow] = []
    for unit in units:
        rows += sync_unit(root, unit, params, mode)
        progress and progress(1)
    if out is not None:
        atomic_write_parquet(out, rows_table(rows))
    if write_manifest is not None:
        write_manifests(root, Path(write_manifest), units, rows)
    return SyncResult(rows, len(units), time.perf_counter() - t0)


def rows_as_dicts(rows: list[SyncRow]) -> list[dict]:
    return [asdict(r) for r in rows]
