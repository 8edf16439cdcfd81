"""A session's clocks checked against its content: the rows of ``sync.parquet`` for one unit of work.

Used by ``bindset sync`` (pipelines/sync.py) and by the build (transforms/unit.py, ``--clocks verify|estimate``).
The video and audio signals are ``transforms/activity.py``'s taps: in a build, fed by the build's own decoding
pass (transforms/unit.py checks the clocks after it, and decodes the input again only when a stream's clock
is rejected or replaced); in ``bindset sync``, by a pass of their own. The estimators are
``transforms/sync.py``'s. The video is the reference and always keeps its declared clock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from schemas.manifest import ImuUnits
from transforms import activity, sync
from transforms.layouts import ClockSpec, MediaUnit
from transforms.paths import PathRejected, check_file, check_files

log = logging.getLogger(__name__)

SYNC_FILE = "sync.json"  # a unit's rows, beside its summary.json
BORDERLINE_CONFIDENCE = 0.5  # a disagreement under two tolerances is a mismatch only at this confidence or more
# A confident estimate is within one frame period of the truth (issue 14's accuracy bound), not within half a
# period: on correct clocks ~3% of streams come out 17-77 ms off at high confidence (the demo's 48 sessions
# gave 7 of 240), and calling those a mismatch would throw good windows away. A stream is therefore flagged
# only when its disagreement also passes this floor; rigs with wall-clock sync are off by 0.2 s or more.
MIN_MISMATCH_S = 0.1

# Frame streams (depth, thermal) are read whole up to this long; longer ones in FRAME_PROBES windows of
# FRAME_PROBE_S spread evenly over the stream, i.e. the same 10 minutes of frames whatever the length. Decoding
# every PNG of a 30-min session (~43,000 frames at 15 + 8.7 fps) costs about a third of the build; the
# estimators need only enough events for the offset (the whole-stream search masks the gaps) and windows far
# apart for the drift's lever arm (sync.estimate_drift fits a line through per-window lags; windows in a gap
# have no data and drop out).
FRAME_READ_FULL_S = 600.0
FRAME_PROBES = 10
FRAME_PROBE_S = 60.0

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


def verdict(session: str, stream: str, declared, est: sync.ClockEstimate | None, tolerance_s: float,
            mode: str = "verify") -> SyncRow:  # fmt: skip
    """The row for one stream: ``agrees`` / ``mismatch`` / ``estimated`` / ``unsynchronisable`` / ``declared_only``.

    A confident estimate disagrees when it moves the stream's middle by more than ``tolerance_s`` and by more
    than ``MIN_MISMATCH_S`` (by up to two tolerances only at ``BORDERLINE_CONFIDENCE`` or more). In
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
    # A disagreement between one and two tolerances is within what a weak estimate can be off by (the
    # accuracy bound is one frame period for confident estimates): it takes a strong one to call it.
    borderline = abs(est.lag_s) <= 2 * tolerance_s and est.confidence < BORDERLINE_CONFIDENCE
    reason = ""
    if abs(est.lag_s) <= max(tolerance_s, MIN_MISMATCH_S) or borderline:
        status, used = "agrees", (d_off, d_ppm)
        reason = "within the estimate's uncertainty" if abs(est.lag_s) > tolerance_s else ""
    elif mode == "estimate":
        status, used = "estimated", (e_off, e_ppm)
    else:
        status, used = "mismatch", (d_off, d_ppm)
    return SyncRow(session, stream, d_off, d_ppm, e_off, e_ppm, float(est.confidence), status, *used, lag,
                   tolerance_s, reason)  # fmt: skip


def _grid(pair, rate: float) -> sync.Activity:
    t, v = pair
    return sync.to_grid(t, v, rate)


@dataclass
class SideActivities:
    """The depth, thermal and IMU streams' activities (session grid, declared clocks), with their declared
    clocks, frame periods, and why a stream has none. Read from their files: nothing in the build's decoding
    pass sees them, so the build reads them on a thread of their own while it decodes (transforms/unit.py)."""

    acts: dict = dataclasses.field(default_factory=dict)
    clocks: dict = dataclasses.field(default_factory=dict)
    periods: dict = dataclasses.field(default_factory=dict)
    problems: dict = dataclasses.field(default_factory=dict)


def side_activities(root: Path, unit: MediaUnit, rate: float | None = None) -> SideActivities:
    """Activities of a unit's depth, thermal and IMU streams on a ``rate`` Hz grid (default: SyncParams's).

    Never raises for a stream: an unreadable one gets its reason in ``problems`` (it is unsynchronisable).
    """
    from transforms.framestream import FrameTableError, load_frame_table
    from transforms.imu import ImuFormatError, read_imu_csv

    rate = rate or sync.SyncParams().rate_hz
    out = SideActivities()
    acts, clocks, periods, problems = out.acts, out.clocks, out.periods, out.problems
    for name in ("depth", "thermal"):
        spec = getattr(unit, name)
        if spec is None:
            continue
        clocks[name] = spec.clock
        try:
            table = load_frame_table(root, spec)
            acts[name] = _grid(_probed_frames_activity(root, table.files, table.t), rate)
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
                # Ego4D without canonical times: the build's assumption (the device clock starts with the
                # video, transforms/unit.py) is the declared clock the estimate checks
                clocks["imu"] = ClockSpec(offset_s=-float(track.t[0]) if len(track) else 0.0)
            acts["imu"] = _grid(
                activity.imu_flux(clocks["imu"].to_session(track.t), track.data.astype(np.float64)), rate
            )
        except Exception as exc:  # noqa: BLE001
            problems["imu"] = str(exc)
    return out


def frame_probes(times_s: np.ndarray) -> list[np.ndarray]:
    """Indices of the frames the clock check reads, per contiguous run: all of them for a stream up to
    ``FRAME_READ_FULL_S`` long, else the frames of ``FRAME_PROBES`` windows of ``FRAME_PROBE_S`` whose starts
    are evenly spread, on the drift windows' grid, from the first frame to the last whole window's start.
    ``times_s``: (N,) increasing seconds."""
    t = np.asarray(times_s, np.float64)
    if t.size < 2 or t[-1] - t[0] <= FRAME_READ_FULL_S:
        return [np.arange(t.size)]
    # on sync.estimate_drift's window grid (a window every drift_step_s from the stream's start), so that each
    # probe is one whole drift window rather than the ends of two
    step = sync.SyncParams().drift_step_s
    last = int((t[-1] - t[0] - FRAME_PROBE_S) // step)
    starts = t[0] + step * np.unique(np.round(np.linspace(0, last, FRAME_PROBES)))
    return [np.arange(np.searchsorted(t, s0), np.searchsorted(t, s0 + FRAME_PROBE_S, side="right")) for s0 in starts]


def _probed_frames_activity(root: Path, rels: list[str], times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame-difference energy over :func:`frame_probes`' runs, concatenated (no difference spans a gap: the
    grid leaves the gaps NaN). Raises PathRejected for the first probed frame that must not be opened and
    ValueError when no run has two readable frames."""
    times, energy = [], []
    for idx in frame_probes(times_s):
        files = []
        for checked in check_files(root, [rels[i] for i in idx]):
            if isinstance(checked, PathRejected):
                raise checked
            files.append(checked.path)
        try:
            t, e = activity.read_frames_activity(files, np.asarray(times_s)[idx])
        except ValueError:
            if len(idx) == len(rels):
                raise
            continue  # a probe of unreadable frames: the others still place the stream
        times.append(t)
        energy.append(e)
    if not times:
        raise ValueError("frame activity: no probed window has two readable frames")
    return np.concatenate(times), np.concatenate(energy)


def _stream_activities(root: Path, unit: MediaUnit, rate: float, taps: activity.ActivityTaps | None = None,
                       sides: SideActivities | None = None) -> tuple[dict, dict, dict, dict]:  # fmt: skip
    """Activities (session grid, declared clocks), declared clocks, frame periods and problems of a unit's
    streams. ``taps``: the audio as the build's decoding pass measured it (else the file is read here);
    ``sides``: the side streams' activities read already (else they are read here)."""
    acts, clocks, periods, problems = {}, {}, {}, {}
    if unit.audio:
        clocks["audio"] = unit.audio_clock
        try:
            if taps is None:
                measured = activity.read_audio_activity(check_file(root, unit.audio).path, unit.audio_clock)
            elif taps.audio is None:
                raise ValueError("no audio decoded")
            else:
                measured = taps.audio.result(unit.audio_clock)
            acts["audio"] = _grid(measured, rate)
        except Exception as exc:  # noqa: BLE001 - an unreadable stream is unsynchronisable, not a crash
            problems["audio"] = str(exc)
    sides = sides if sides is not None else side_activities(root, unit, rate)
    acts.update(sides.acts)
    clocks.update(sides.clocks)
    periods.update(sides.periods)
    problems.update(sides.problems)
    return acts, clocks, periods, problems


def sync_unit(root: Path, unit: MediaUnit, params: sync.SyncParams | None = None, mode: str = "verify",
              taps: activity.ActivityTaps | None = None, sides: SideActivities | None = None
              ) -> list[SyncRow]:  # fmt: skip
    """Rows for every non-reference stream of one session (the video is the reference, always declared).

    ``taps``: the video and audio activity the build's decoding pass measured (on the declared clocks);
    without them the files are read here (``bindset sync``), through the same taps. ``sides``: the depth,
    thermal and IMU activities (``side_activities``), when read already.
    """
    params = params or sync.SyncParams()
    rows: list[SyncRow] = []
    if not unit.video:
        return rows
    vclock = unit.video_clock
    try:
        if taps is None:
            video = activity.read_video_activity(check_file(root, unit.video).path, vclock)
        else:
            video = {"frames": taps.video.result(vclock)}
        ref = _grid(video["frames"], params.rate_hz)
        vt = video["frames"][0]
        video_half = 0.5 * float(np.median(np.diff(vt))) if vt.size > 1 else 1 / 60
    except Exception as exc:  # noqa: BLE001 - no reference: every stream keeps its declared clock
        log.warning("%s: video unreadable for sync (%s)", unit.session, exc)
        ref, video_half = None, 1 / 60
    rows.append(SyncRow(unit.session, "video", vclock.offset_s, vclock.drift_ppm, vclock.offset_s, vclock.drift_ppm,
                        1.0 if ref is not None else 0.0, "agrees" if ref is not None else "declared_only",
                        vclock.offset_s, vclock.drift_ppm, 0.0, video_half, "reference"))  # fmt: skip
    if sides is not None and params.rate_hz != sync.SyncParams().rate_hz:
        sides = None  # read on another grid: read again on this one
    acts, clocks, periods, problems = _stream_activities(root, unit, params.rate_hz, taps, sides)
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


def declared_rows(unit: MediaUnit) -> list[SyncRow]:
    """``--clocks declared``: every stream's declared clock, nothing estimated (no decoding)."""
    rows = []
    for name, clock in _declared(unit).items():
        rows.append(verdict(unit.session, name, clock, None, 0.0, "declared"))
    return rows


def _declared(unit: MediaUnit) -> dict[str, ClockSpec]:
    out = {"video": unit.video_clock} if unit.video else {}
    if unit.audio:
        out["audio"] = unit.audio_clock
    for name in ("depth", "thermal"):
        if getattr(unit, name) is not None:
            out[name] = getattr(unit, name).clock
    if unit.imu is not None:
        out["imu"] = unit.imu.clock
    return out


def with_used_clocks(unit: MediaUnit, rows: list[SyncRow]) -> MediaUnit:
    """The unit with each stream's clock replaced by the row's ``used_*`` clock (``estimated`` rows)."""
    used = {r.stream: ClockSpec(r.used_offset_s, r.used_drift_ppm) for r in rows if r.status == "estimated"}
    changes: dict = {}
    if "audio" in used:
        changes["audio_clock"] = used["audio"]
    for name in ("depth", "thermal", "imu"):
        if name in used and getattr(unit, name) is not None:
            changes[name] = dataclasses.replace(getattr(unit, name), clock=used[name])
    imu_row = next((r for r in rows if r.stream == "imu" and r.status == "estimated"), None)
    # checked on the device clock (Ego4D without canonical times): build from that column, on the estimate
    on_device = imu_row is not None and unit.imu is not None and unit.imu.fallback_time_column
    if on_device and imu_row.declared_offset_s != unit.imu.clock.offset_s:
        changes["imu"] = dataclasses.replace(unit.imu, time_column=unit.imu.fallback_time_column,
                                             fallback_time_column=None, clock=used["imu"])  # fmt: skip
    return dataclasses.replace(unit, **changes) if changes else unit


def check_clocks(root: Path, unit: MediaUnit, mode: str, folder: Path | None = None,
                 params: sync.SyncParams | None = None, on_rows=None, taps: activity.ActivityTaps | None = None,
                 sides: SideActivities | None = None) -> tuple[MediaUnit, dict[str, str]]:  # fmt: skip
    """Check a unit's clocks under ``--clocks mode``; returns the unit to build and ``{stream: detail}`` of
    the streams whose windows are ``clock_mismatch`` rejects (verify). Writes ``folder/sync.json`` (the rows),
    or hands the rows (dicts) to ``on_rows`` (a unit of work of several inputs collects them: records.UnitSink).
    ``taps``, ``sides``: activity measured by the build's own decoding pass and read beside it (``sync_unit``).

    ``declared``: nothing estimated, rows ``declared_only``. ``verify``: a confident estimate that disagrees
    makes the stream mismatched; the declared clock stays. ``estimate``: such an estimate is used instead.
    """
    try:
        rows = declared_rows(unit) if mode == "declared" else sync_unit(root, unit, params, mode, taps, sides)
    except Exception:  # noqa: BLE001 - an estimator failure must never cost the unit: keep the declared clocks
        log.exception("%s: clock check failed; declared clocks kept", unit.session)
        rows = declared_rows(unit)
    if on_rows is not None:
        on_rows([asdict(r) for r in rows])
    if folder is not None:
        from pipelines.storage import write_synced

        text = json.dumps([asdict(r) for r in rows], sort_keys=True, allow_nan=False, indent=1) + "\n"
        write_synced(folder / SYNC_FILE, text.encode())
    fail = {
        r.stream: f"declared clock {r.lag_s * 1000:+.1f} ms from the content-estimated one (tolerance "
        f"{r.tolerance_s * 1000:.1f} ms, confidence {r.confidence:.2f})"
        for r in rows
        if r.status == "mismatch"
    }
    return (with_used_clocks(unit, rows) if mode == "estimate" else unit), fail
