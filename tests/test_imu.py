"""``transforms.imu``: CSV reading and units, timestamp hygiene, 5 s / 400 Hz windows and their rejects."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from schemas.manifest import ImuUnits
from schemas.reasons import RejectReason
from transforms.imu import (
    STANDARD_GRAVITY,
    ImuFormatError,
    ImuTrack,
    ImuWindowStatus,
    clean_track,
    float_column,
    imu_window,
    read_imu_csv,
)

HEADER = "component_idx,component_timestamp_ms,canonical_timestamp_ms,gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z"
SI = ImuUnits()


def write_csv(path: Path, t_ms: np.ndarray, gyro: np.ndarray, acc: np.ndarray, canonical: bool = False) -> Path:
    lines = [HEADER]
    for i, t in enumerate(t_ms):
        can = f"{t + 500:.3f}" if canonical else ""
        values = ",".join(f"{v:.6f}" for v in (*gyro[:, i], *acc[:, i]))
        lines.append(f"{i},{t:.3f},{can},{values}")
    path.write_text("\n".join(lines) + "\n")
    return path


def sine_track(rate_hz: float, seconds: float, freq_hz: float = 1.0, t0: float = 0.0) -> ImuTrack:
    t = t0 + np.arange(round(seconds * rate_hz)) / rate_hz
    data = np.stack([np.sin(2 * np.pi * freq_hz * t + c) for c in range(6)])
    return clean_track(t, data)


# ------------------------------------------------------------------------------------- reading


def test_units_and_channel_order(tmp_path):
    t_ms = np.array([0.0, 5.0, 10.0])
    gyro = np.array([[180.0] * 3, [90.0] * 3, [-360.0] * 3])  # deg/s
    acc = np.array([[1.0] * 3, [0.5] * 3, [-2.0] * 3])  # g
    path = write_csv(tmp_path / "imu.csv", t_ms, gyro, acc)

    track = read_imu_csv(path, units=ImuUnits(accel="g", gyro="deg/s"))
    assert track.data.dtype == np.float32 and track.data.shape == (6, 3)
    assert track.t.dtype == np.float64
    np.testing.assert_allclose(track.t, [0.0, 0.005, 0.010])
    # acc first, then gyro, whatever the CSV's column order
    np.testing.assert_allclose(track.data[:3, 0], np.array([1.0, 0.5, -2.0]) * STANDARD_GRAVITY, rtol=1e-6)
    np.testing.assert_allclose(track.data[3:, 0], [math.pi, math.pi / 2, -2 * math.pi], rtol=1e-6)

    si = read_imu_csv(path, units=SI)
    np.testing.assert_allclose(si.data[:, 0], [1.0, 0.5, -2.0, 180.0, 90.0, -360.0], rtol=1e-6)


def test_canonical_column_may_be_empty_or_chosen(tmp_path):
    t_ms = np.arange(4) * 5.0
    zeros = np.zeros((3, 4))
    empty = write_csv(tmp_path / "a.csv", t_ms, zeros, zeros, canonical=False)
    assert len(read_imu_csv(empty, units=SI)) == 4
    with pytest.raises(ImuFormatError, match="canonical_timestamp_ms") as err:
        read_imu_csv(empty, time_column="canonical_timestamp_ms", units=SI)
    assert err.value.reason is RejectReason.BAD_TIMESTAMPS

    filled = write_csv(tmp_path / "b.csv", t_ms, zeros, zeros, canonical=True)
    track = read_imu_csv(filled, time_column="canonical_timestamp_ms", units=SI)
    np.testing.assert_allclose(track.t, 0.5 + t_ms / 1000)


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "imu.csv"
    path.write_text("component_idx,component_timestamp_ms,gyro_x,gyro_y,gyro_z,accl_x,accl_y\n0,0,1,2,3,4,5\n")
    with pytest.raises(ImuFormatError) as err:
        read_imu_csv(path, units=SI)
    assert str(path) in str(err.value) and "accl_z" in str(err.value)
    assert err.value.column == "accl_z"


def test_unparsable_value_names_column(tmp_path):
    path = tmp_path / "imu.csv"
    path.write_text(HEADER + "\n0,0,,1,2,3,4,5,6\n1,5,,1,oops,3,4,5,6\n")
    with pytest.raises(ImuFormatError) as err:
        read_imu_csv(path, units=SI)
    assert str(path) in str(err.value) and err.value.column == "gyro_y"


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ImuFormatError) as err:
        read_imu_csv(tmp_path / "empty.csv", units=SI)
    assert err.value.reason is RejectReason.EMPTY_FILE
    with pytest.raises(ImuFormatError) as err:
        read_imu_csv(tmp_path / "nope.csv", units=SI)
    assert err.value.reason is RejectReason.FILE_MISSING


def test_nan_rows_dropped_and_counted(tmp_path):
    path = tmp_path / "imu.csv"
    rows = ["0,0,,1,1,1,1,1,1", "1,5,,nan,1,1,1,1,1", "2,10,,1,1,1,,1,1", "3,,,1,1,1,1,1,1", "4,20,,2,2,2,2,2,2"]
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    track = read_imu_csv(path, units=SI)
    np.testing.assert_allclose(track.t, [0.0, 0.020])
    assert track.report.nan_rows == 3 and track.report.rows_read == 5 and track.report.rows_kept == 2
    # rows with a usable time remember where they were, for IMU_NAN attribution
    np.testing.assert_allclose(track.nan_t, [0.005, 0.010])


def test_float_column_keeps_nulls_and_slices():
    import pyarrow as pa

    sliced = pa.array([1.0, None, 3.0, 4.0, None, 6.0])[3:]
    column = pa.chunked_array([sliced, pa.array([None, 2.0]), pa.array([], pa.float64())])
    np.testing.assert_array_equal(float_column(column), [4.0, np.nan, 6.0, np.nan, 2.0])


# ---------------------------------------------------------------------------- timestamp hygiene


def test_duplicate_and_non_monotonic_timestamps():
    t = np.array([0.0, 0.01, 0.01, 0.03, 0.02, 0.04, 0.04])
    data = np.tile(np.arange(7, dtype=np.float64), (6, 1))
    track = clean_track(t, data)
    np.testing.assert_array_equal(track.t, [0.0, 0.01, 0.02, 0.03, 0.04])
    assert np.all(np.diff(track.t) > 0)
    # the first row of each duplicated timestamp survives
    np.testing.assert_array_equal(track.data[0], [0, 1, 4, 3, 5])
    report = track.report
    assert report.duplicate_rows == 2 and report.non_monotonic_steps == 1 and report.nan_rows == 0
    assert report.issues == (RejectReason.DUPLICATE_TIMESTAMPS, RejectReason.NON_MONOTONIC_TIMESTAMPS)
    assert clean_track(np.arange(3.0), np.zeros((6, 3))).report.issues == ()


# -------------------------------------------------------------------------------------- windows


def test_window_of_400hz_sine_matches_analytic_exactly():
    # A 400 Hz track on the output grid: resampling must hand back the samples themselves.
    track = sine_track(400.0, 20.0, freq_hz=3.0)
    w = imu_window(track, 10.0)
    assert w.ok and w.status is ImuWindowStatus.OK and w.reason is None
    assert w.data.shape == (6, 2000) and w.data.dtype == np.float32
    t = 7.5 + np.arange(2000) / 400.0
    expected = np.stack([np.sin(2 * np.pi * 3.0 * t + c) for c in range(6)])
    np.testing.assert_allclose(w.data, expected, atol=1e-6)
    assert w.start_s == 7.5 and w.input_rate_hz == pytest.approx(400.0)
    assert w.max_gap_ms == pytest.approx(2.5)


def test_window_from_200hz_sine_within_interpolation_error():
    track = sine_track(200.0, 20.0, freq_hz=1.0, t0=0.0013)  # off the output grid
    w = imu_window(track, 6.0)
    t = 3.5 + np.arange(2000) / 400.0
    expected = np.stack([np.sin(2 * np.pi * t + c) for c in range(6)])
    # linear interpolation error is at most h²/8·|f''| = 0.005²/8·(2π)² ≈ 1.2e-4
    np.testing.assert_allclose(w.data, expected, atol=1.3e-4)
    assert w.input_rate_hz == pytest.approx(200.0, abs=0.5)
    assert w.max_gap_ms == pytest.approx(5.0)


def test_windows_at_track_edges():
    track = sine_track(200.0, 10.0)  # samples at 0 .. 9.995 s
    assert imu_window(track, 2.5).ok  # starts exactly on the first sample
    assert imu_window(track, 9.995 - 2.5 + 1 / 400).ok  # last step exactly on the last sample
    for center in (2.49, 7.6, -10.0, 100.0):
        w = imu_window(track, center)
        assert not w.ok and w.reason is RejectReason.IMU_OUT_OF_RANGE and w.data is None
        assert "not covered" in w.detail
    empty = clean_track(np.zeros(0), np.zeros((6, 0)))
    assert imu_window(empty, 5.0).reason is RejectReason.IMU_OUT_OF_RANGE


def test_planted_gap():
    t = np.arange(0, 20, 0.005)
    keep = (t < 9.0) | (t >= 9.25)  # a 255 ms hole
    track = clean_track(t[keep], np.ones((6, int(keep.sum()))))
    w = imu_window(track, 10.0)
    assert w.status is ImuWindowStatus.INVALID and w.reason is RejectReason.IMU_GAP
    assert w.max_gap_ms == pytest.approx(255.0) and "255.0 ms gap at 8.995" in w.detail
    assert imu_window(track, 10.0, max_gap_s=0.3).ok
    assert imu_window(track, 15.0).ok  # the hole is outside [12.5, 17.5]
    assert imu_window(track, 4.0).ok


def test_nan_rows_inside_window():
    t = np.arange(0, 20, 0.005)
    data = np.ones((6, t.shape[0]))
    data[2, 1801:1900] = np.nan  # 99 bad rows in a block: 9.005 .. 9.495 s
    data[4, 600] = np.nan  # one bad row at 3.0 s: its neighbours bridge 10 ms
    track = clean_track(t, data)
    assert track.report.nan_rows == 99 + 1
    w = imu_window(track, 10.0)
    assert w.reason is RejectReason.IMU_NAN and "non-finite" in w.detail
    assert w.max_gap_ms == pytest.approx(500.0)
    ok = imu_window(track, 3.0)
    assert ok.ok and np.all(ok.data == 1.0)


def test_non_finite_values_in_a_hand_built_track():
    t = np.arange(0, 10, 0.005)
    data = np.zeros((6, t.shape[0]), np.float32)
    data[0, 1000] = np.inf
    w = imu_window(ImuTrack(t=t, data=data), 5.0)
    assert w.reason is RejectReason.IMU_NAN and w.data is None


def test_thousands_of_windows_from_30_minutes_are_fast():
    track = sine_track(200.0, 1800.0)
    centers = np.arange(2.5, 1797.5, 1.0)  # 1795 windows
    started = time.perf_counter()
    windows = [imu_window(track, float(c)) for c in centers]
    assert time.perf_counter() - started < 5.0
    assert all(w.ok for w in windows)


# ------------------------------------------------------------------------------------- clock steps


def _stepped(rate_hz: float = 200.0, seconds: float = 12.0, at_s: float = 6.0, back_s: float = 0.5):
    """A sine whose device clock is set back by ``back_s`` after ``at_s``: the true signal, and the file's times."""
    true_t = np.arange(round(seconds * rate_hz)) / rate_hz
    data = np.stack([np.sin(2 * np.pi * 1.0 * true_t + c) for c in range(6)])
    stamped = np.where(true_t > at_s, true_t - back_s, true_t)
    return true_t, stamped, data


def test_clock_step_back_sets_later_rows_aside():
    true_t, stamped, data = _stepped()
    track = clean_track(stamped, data)
    step = track.clock_step
    first_after = int(np.flatnonzero(true_t > 6.0)[0])
    assert step.row == first_after and step.rows_set_aside == len(true_t) - first_after
    assert step.before_s == pytest.approx(6.0) and step.back_s == pytest.approx(0.495)
    np.testing.assert_array_equal(track.t, true_t[:first_after])  # only the rows on the declared clock
    assert track.report.clock_step_rows == step.rows_set_aside and RejectReason.IMU_CLOCK_STEP in track.report.issues
    assert track.report.non_monotonic_steps == 0 and track.report.duplicate_rows == 0
    assert "steps back 0.495 s at data row 1201 (6.000 s -> 5.505 s)" in step.describe()


@pytest.mark.parametrize(
    ("center", "reason"),
    [
        (3.0, None),  # [0.5, 5.5]: wholly before the step, on the declared clock
        (3.5, None),  # [1.0, 6.0): ends at the last sample before the step
        (5.0, RejectReason.IMU_CLOCK_STEP),  # overlaps the step
        (8.5, RejectReason.IMU_CLOCK_STEP),  # [6.0, 11.0]: after it, on a clock nothing pins down
        (1.0, RejectReason.IMU_OUT_OF_RANGE),  # starts before the recording
    ],
)
def test_windows_around_a_clock_step(center, reason):
    true_t, stamped, data = _stepped()
    w = imu_window(clean_track(stamped, data), center)
    if reason is None:
        assert w.ok
        # identical to the window of the intact track: the stored signal is the true one
        np.testing.assert_array_equal(w.data, imu_window(clean_track(true_t, data), center).data)
    else:
        assert w.reason is reason, w.detail
        if reason is RejectReason.IMU_CLOCK_STEP:
            assert "needs samples past the clock step" in w.detail and "steps back 0.495 s" in w.detail


def test_reordered_rows_are_not_a_clock_step():
    t = np.arange(400) / 200.0
    t[[100, 101]] = t[[101, 100]]  # one swapped pair: one period back
    t[[300, 302]] = t[[302, 300]]  # 302, 301, 300: two steps of one period back
    track = clean_track(t, np.zeros((6, 400)))
    assert track.clock_step is None and track.report.non_monotonic_steps == 3 and len(track) == 400


def test_clock_step_read_from_csv_names_the_file_as_given(tmp_path):
    true_t, stamped, data = _stepped(rate_hz=50.0, seconds=10.0)
    path = write_csv(tmp_path / "imu.csv", stamped * 1e3, data[3:], data[:3])
    track = read_imu_csv(path, units=SI, source_name="s1/imu.csv")
    assert track.clock_step is not None and track.t[-1] == pytest.approx(6.0)
    with pytest.raises(ImuFormatError) as err:
        read_imu_csv(tmp_path / "missing.csv", units=SI, source_name="s1/missing.csv")
    assert str(err.value) == "s1/missing.csv: file not found" and str(tmp_path) not in str(err.value)


@pytest.mark.parametrize("back_s", [0.02, 0.0175])  # 4 and 3.5 periods at 200 Hz: under CLOCK_STEP_PERIODS
def test_a_short_clock_step_back_is_not_sorted_in(back_s):
    # a clock set back by a few periods stamps the same moments twice: sorting would interleave two readings
    # (a zigzag) and leave every later row that much early, so it is a clock step like a long one
    true_t, stamped, data = _stepped(back_s=back_s)
    track = clean_track(stamped, data)
    assert track.clock_step is not None and track.clock_step.back_s == pytest.approx(back_s - 0.005)
    np.testing.assert_array_equal(track.t, true_t[: int(np.flatnonzero(true_t > 6.0)[0])])
    assert imu_window(track, 3.0).ok and imu_window(track, 5.0).reason is RejectReason.IMU_CLOCK_STEP


def test_jittery_reordered_rows_are_not_a_clock_step():
    rng = np.random.default_rng(0)
    t = np.arange(2000) / 200.0 + rng.uniform(-0.0015, 0.0015, 2000)  # ±30% of a period of jitter
    for i in range(50, 1950, 97):
        t[[i, i + 1]] = t[[i + 1, i]]  # a row written one late, every half second
    track = clean_track(t, np.zeros((6, 2000)))
    assert track.clock_step is None and len(track) == 2000
