"""IMU CSV -> clean track -> ImageBind IMU windows (SPEC §3: 5 s, 400 Hz, ``6×2000`` float32).

Reading is columnar (pyarrow.csv), so a 30-minute 200 Hz file (~360k rows) or an Ego4D hour parses in
well under a second. Cleaning drops rows with non-finite values, sorts stably by time and drops
duplicated timestamps, counting each so the build can record what it fixed. Windows are cut with
``searchsorted`` on the clean track and resampled by linear interpolation.

Times are seconds on the IMU stream's own clock; the caller maps the session timeline onto it with
``Clock.to_stream``.

A clock that steps back. A row a little earlier than the one before it is a reordered row (sorted
back into place). A step back longer than ``CLOCK_STEP_PERIODS`` sample periods, or a shorter one after
which the rows stamp the same moments twice (sorted, they interleave: two or more pairs much closer than
a period, where a reordered row fills a hole), is the device clock being set back (a reset, an NTP
correction): the rows from there on are stamped on a different clock, and sorting them in would
interleave two readings of the same stretch of time. Nothing in the file says how far the clock really
moved (the jump between two rows also holds whatever time passed between them, and samples may be
missing there), so no shift can be proved right. The declared clock is kept for the rows before the
first step, which are on it; the rows after it are set aside and reported (``ClockStep``), and every
window that needs a sample past the step is ``imu_clock_step``. Windows wholly before the step stay
valid; windows after it are rejected, since their times are on the unknown
clock. A clock that jumps *forward* looks like missing samples and is an ``imu_gap``.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from schemas.manifest import ImuUnits
from schemas.reasons import RejectReason

STANDARD_GRAVITY = 9.80665  # m/s² per g (CGPM 1901), what IMU vendors use for "g"
WINDOW_S = 5.0
RATE_HZ = 400.0
MAX_GAP_S = 0.1

#: Output channel order, and the Ego4D column each one comes from.
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
CSV_COLUMNS = ("accl_x", "accl_y", "accl_z", "gyro_x", "gyro_y", "gyro_z")

# A backward step of more than this many median sample periods is a clock step, not a reordered row:
# loggers reorder a row or two (one period back); a reset or correction moves the clock by far more.
CLOCK_STEP_PERIODS = 5.0

# Window edges computed as ``center ± length/2`` can miss the track's first/last sample by float
# rounding; 1 µs is far below any IMU sample period, so tolerating it never hides missing data.
_EDGE_EPS_S = 1e-6


class ImuFormatError(ValueError):
    """An IMU file that cannot be used at all; the message names the file (and column)."""

    def __init__(
        self,
        path: Path | str,
        problem: str,
        *,
        column: str | None = None,
        reason: RejectReason = RejectReason.DECODE_ERROR,
    ):
        self.path = str(path)
        self.column = column
        self.reason = reason
        where = f" column {column!r}" if column else ""
        super().__init__(f"{self.path}:{where} {problem}")


# ---------------------------------------------------------------------------------------------
# Track


@dataclass(frozen=True)
class ImuReadReport:
    """What cleaning changed; all counts are rows of the input."""

    rows_read: int
    rows_kept: int
    nan_rows: int  # a non-finite time or channel value; dropped
    duplicate_rows: int  # same timestamp as an earlier row (after sorting); dropped, first kept
    non_monotonic_steps: int  # places where time goes backwards in file order; fixed by sorting
    clock_step_rows: int = 0  # rows from the first clock step on (see ClockStep); set aside, not used

    @property
    def issues(self) -> tuple[RejectReason, ...]:
        """Timestamp problems worth recording even though the track was repaired."""
        found = []
        if self.duplicate_rows:
            found.append(RejectReason.DUPLICATE_TIMESTAMPS)
        if self.non_monotonic_steps:
            found.append(RejectReason.NON_MONOTONIC_TIMESTAMPS)
        if self.clock_step_rows:
            found.append(RejectReason.IMU_CLOCK_STEP)
        return tuple(found)


@dataclass(frozen=True)
class ClockStep:
    """The first place where the IMU clock steps back by more than ``CLOCK_STEP_PERIODS`` sample periods."""

    row: int  # 0-based data row (file order) of the first sample after the step
    before_s: float  # IMU-clock time of the last sample before the step
    after_s: float  # and of the first one after it
    rows_set_aside: int  # rows from ``row`` on

    @property
    def back_s(self) -> float:
        return self.before_s - self.after_s

    def describe(self) -> str:
        return (
            f"IMU clock steps back {self.back_s:.3f} s at data row {self.row} ({self.before_s:.3f} s -> "
            f"{self.after_s:.3f} s); the {self.rows_set_aside} row(s) from there on are on an unknown clock "
            "and not used"
        )


@dataclass(frozen=True)
class ImuTrack:
    t: np.ndarray  # float64 (N,), seconds on the IMU clock, strictly increasing
    data: np.ndarray  # float32 (6, N), CHANNELS order, m/s² and rad/s
    # Times of rows dropped for non-finite values: a gap they leave is reported as IMU_NAN, not IMU_GAP.
    nan_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    report: ImuReadReport | None = None
    clock_step: ClockStep | None = None  # when set, ``t`` ends at the step: later times are not on this clock

    def __len__(self) -> int:
        return int(self.t.shape[0])


def unit_scale(units: ImuUnits) -> np.ndarray:
    """Per-channel factor to m/s² and rad/s, shape (6, 1)."""
    acc = STANDARD_GRAVITY if units.accel == "g" else 1.0
    gyro = math.pi / 180.0 if units.gyro == "deg/s" else 1.0
    return np.array([acc] * 3 + [gyro] * 3, dtype=np.float64)[:, None]


def clean_track(t: np.ndarray, data: np.ndarray) -> ImuTrack:
    """Drop non-finite rows, set aside the rows from the first clock step back on (``ClockStep``), sort
    stably by time, drop repeated timestamps (keeping the first row).

    ``data`` is (6, N) already in SI units; it is stored as float32.
    """
    t = np.asarray(t, dtype=np.float64)
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape != (len(CHANNELS), t.shape[0]):
        raise ValueError(f"data must be ({len(CHANNELS)}, {t.shape[0]}), got {data.shape}")
    rows_read = int(t.shape[0])

    finite = np.isfinite(t) & np.isfinite(data).all(axis=0)
    nan_t = t[~finite & np.isfinite(t)]
    t, data = t[finite], data[:, finite]
    step = _first_clock_step(t, np.flatnonzero(finite), rows_read)
    if step is not None:
        keep = int(np.searchsorted(np.flatnonzero(finite), step.row))
        t, data = t[:keep], data[:, :keep]
        nan_t = nan_t[nan_t <= step.before_s]

    non_monotonic = int(np.count_nonzero(np.diff(t) < 0))
    # Stable, so among equal timestamps the row that came first in the file survives.
    order = np.argsort(t, kind="stable")
    t, data = t[order], data[:, order]
    first = np.ones(t.shape[0], dtype=bool)
    first[1:] = t[1:] != t[:-1]
    t, data = t[first], data[:, first]

    report = ImuReadReport(
        rows_read=rows_read,
        rows_kept=int(t.shape[0]),
        nan_rows=int(np.count_nonzero(~finite)),
        duplicate_rows=int(np.count_nonzero(~first)),
        non_monotonic_steps=non_monotonic,
        clock_step_rows=0 if step is None else step.rows_set_aside,
    )
    return ImuTrack(
        t=np.ascontiguousarray(t),
        data=np.ascontiguousarray(data, dtype=np.float32),
        nan_t=np.sort(nan_t),
        report=report,
        clock_step=step,
    )


def _first_clock_step(t: np.ndarray, rows: np.ndarray, rows_read: int) -> ClockStep | None:
    """The first backward step of ``t`` (finite times in file order; ``rows`` their data-row numbers, of
    ``rows_read`` in all) longer than ``CLOCK_STEP_PERIODS`` median forward periods."""
    if t.shape[0] < 3:
        return None
    d = np.diff(t)
    forward = d[d > 0]
    if forward.size == 0:
        return None
    period = float(np.median(forward))
    big = np.flatnonzero(d < -CLOCK_STEP_PERIODS * period)
    short = [int(i) for i in np.flatnonzero(d < 0) if (big.size == 0 or i < big[0]) and _interleaves(t, int(i), period)]
    steps = ([short[0]] if short else []) + ([int(big[0])] if big.size else [])
    if not steps:
        return None
    i = min(steps)
    row = int(rows[i + 1])
    return ClockStep(row=row, before_s=float(t[i]), after_s=float(t[i + 1]), rows_set_aside=rows_read - row)


def _interleaves(t: np.ndarray, i: int, period: float) -> bool:
    """Whether the short step back after row ``i`` (within ``CLOCK_STEP_PERIODS``) is a clock set back, not
    reordered rows: rows written late fill a hole the rows before them left, so sorted they are about one
    period apart again; a clock set back by a few periods stamps the same moments twice, so sorted, two or
    more pairs of rows lie much closer than a period (a jittery stream has at most one such pair here)."""
    span = int(CLOCK_STEP_PERIODS) + 2
    seg = t[max(i - span, 0) : i + span + 1]
    seg = seg[np.r_[True, np.diff(seg) != 0]]  # a row written twice in a row is a duplicate, repaired apart
    near = np.diff(np.sort(seg))
    return int(np.count_nonzero(near < 0.5 * period)) >= 2  # 0 too: a step of whole periods repeats times


def float_column(column: pa.ChunkedArray) -> np.ndarray:
    """A float64 Arrow column as numpy, nulls as NaN.

    Read from the buffers directly: pyarrow's ``to_numpy`` imports pandas, seconds per fresh worker
    process for nothing.
    """
    parts = [np.zeros(0, np.float64)]
    for chunk in column.chunks:
        n, offset = len(chunk), chunk.offset
        validity, values = chunk.buffers()
        part = np.frombuffer(values, np.float64, count=offset + n)[offset:].copy()
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
            part[bits[offset : offset + n] == 0] = np.nan
        parts.append(part)
    return np.concatenate(parts)


def _header(path: Path, label: str) -> list[str]:
    # Read the header ourselves: pyarrow's error for a missing include_column does not name the file.
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            line = fh.readline()
    except FileNotFoundError:
        raise ImuFormatError(label, "file not found", reason=RejectReason.FILE_MISSING) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImuFormatError(label, f"cannot read: {exc}") from None
    if not line.strip():
        raise ImuFormatError(label, "file is empty (no header)", reason=RejectReason.EMPTY_FILE)
    return [name.strip() for name in next(csv.reader([line]))]


def read_imu_csv(
    path: Path | str,
    *,
    time_column: str = "component_timestamp_ms",
    time_unit_s: float = 1e-3,
    units: ImuUnits,
    source_name: str | None = None,
) -> ImuTrack:
    """Read an Ego4D-layout IMU CSV into a clean track (see ``clean_track``; counts in ``.report``).

    ``source_name``: how messages name the file (a build passes the RAW-relative path), default the path.
    Raises ImuFormatError."""
    path = Path(path)
    label = source_name or str(path)
    header = _header(path, label)
    wanted = (time_column, *CSV_COLUMNS)
    for column in wanted:
        if column not in header:
            raise ImuFormatError(label, f"missing (header has {', '.join(header)})", column=column)

    # Empty cells (canonical_timestamp_ms often is) and "nan" become nulls -> NaN, counted by cleaning.
    convert = pacsv.ConvertOptions(
        include_columns=list(wanted),
        column_types={name: pa.float64() for name in wanted},
    )
    read = pacsv.ReadOptions(block_size=1 << 24)
    try:
        table = pacsv.read_csv(path, read_options=read, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        # Arrow names a column by its position only ("In CSV column #3: ..."); give its name too.
        found = re.search(r"column #(\d+)", str(exc))
        index = int(found.group(1)) if found else -1
        name = header[index] if 0 <= index < len(header) else None
        raise ImuFormatError(label, f"not a numeric IMU table: {exc}", column=name) from None

    def column(name: str) -> np.ndarray:
        return float_column(table.column(name))

    t = column(time_column) * time_unit_s
    if t.shape[0] and not np.isfinite(t).any():
        raise ImuFormatError(label, "has no usable timestamps", column=time_column, reason=RejectReason.BAD_TIMESTAMPS)
    data = np.stack([column(name) for name in CSV_COLUMNS]) * unit_scale(units)
    return clean_track(t, data)


# ---------------------------------------------------------------------------------------------
# Windows


class ImuWindowStatus(StrEnum):
    OK = "ok"
    INVALID = "invalid"


@dataclass(frozen=True)
class ImuWindow:
    status: ImuWindowStatus
    start_s: float  # IMU-clock time of step 0; step i sits at start_s + i / rate_hz
    data: np.ndarray | None  # float32 (6, steps) when OK
    reason: RejectReason | None
    detail: str
    input_rate_hz: float  # samples per second of the track inside [start, start + length)
    max_gap_ms: float  # longest step between the samples spanning the window; nan when out of range

    @property
    def ok(self) -> bool:
        return self.status is ImuWindowStatus.OK


def _invalid(start: float, reason: RejectReason, detail: str, rate: float, gap_ms: float) -> ImuWindow:
    return ImuWindow(ImuWindowStatus.INVALID, start, None, reason, detail, rate, gap_ms)


def imu_window(
    track: ImuTrack,
    center_s: float,
    *,
    length_s: float = WINDOW_S,
    rate_hz: float = RATE_HZ,
    max_gap_s: float = MAX_GAP_S,
) -> ImuWindow:
    """The window centred on ``center_s`` (IMU clock), linearly resampled to ``length_s*rate_hz`` steps."""
    steps = round(length_s * rate_hz)
    start = center_s - length_s / 2.0
    last = start + (steps - 1) / rate_hz
    t = track.t

    # Samples in [start, start+length) give the measured rate; the gap check also takes the samples
    # just outside, because interpolation near the edges leans on them.
    inside = int(np.searchsorted(t, start + length_s, "left") - np.searchsorted(t, start, "left"))
    rate = inside / length_s
    step = track.clock_step
    if step is not None and len(track) and last > t[-1] + _EDGE_EPS_S and t[0] <= start + _EDGE_EPS_S:
        detail = f"window [{start:.3f}, {last:.3f}] s needs samples past the clock step: {step.describe()}"
        return _invalid(start, RejectReason.IMU_CLOCK_STEP, detail, rate, math.nan)
    if len(track) < 2 or t[0] > start + _EDGE_EPS_S or t[-1] < last - _EDGE_EPS_S:
        span = f"[{t[0]:.3f}, {t[-1]:.3f}] s" if len(track) else "empty"
        detail = f"window [{start:.3f}, {last:.3f}] s not covered by IMU track {span}"
        return _invalid(start, RejectReason.IMU_OUT_OF_RANGE, detail, rate, math.nan)

    lo = max(int(np.searchsorted(t, start, "right")) - 1, 0)
    hi = min(int(np.searchsorted(t, last, "left")), len(track) - 1)
    span_t = t[lo : hi + 1]
    gaps = np.diff(span_t)
    max_gap = float(gaps.max()) if gaps.size else 0.0
    gap_ms = max_gap * 1e3

    if max_gap > max_gap_s:
        big = np.flatnonzero(gaps > max_gap_s)
        left, right = span_t[big], span_t[big + 1]
        # A dropped NaN row strictly inside a too-long gap means bad values, not missing samples.
        j = np.searchsorted(track.nan_t, left, "right")
        k = np.searchsorted(track.nan_t, right, "left")
        worst = int(np.argmax(right - left))
        where = f"{gaps[big[worst]] * 1e3:.1f} ms gap at {left[worst]:.3f} s"
        if np.any(k > j):
            detail = f"{where} left by dropped non-finite rows (limit {max_gap_s * 1e3:.0f} ms)"
            return _invalid(start, RejectReason.IMU_NAN, detail, rate, gap_ms)
        return _invalid(start, RejectReason.IMU_GAP, f"{where} (limit {max_gap_s * 1e3:.0f} ms)", rate, gap_ms)

    t_out = start + np.arange(steps, dtype=np.float64) / rate_hz
    values = track.data[:, lo : hi + 1]
    out = np.empty((values.shape[0], steps), dtype=np.float32)
    for c in range(values.shape[0]):
        out[c] = np.interp(t_out, span_t, values[c].astype(np.float64))
    if not np.isfinite(out).all():
        detail = "window contains non-finite values"
        return _invalid(start, RejectReason.IMU_NAN, detail, rate, gap_ms)
    return ImuWindow(ImuWindowStatus.OK, start, out, None, "", rate, gap_ms)
