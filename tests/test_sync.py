"""Clock synchronisation from content: estimators on synthetic signals with known offsets and drifts."""

from __future__ import annotations

import numpy as np
import pytest

from transforms import activity as act
from transforms import sync

RATE = 100.0


def events_signal(times: np.ndarray, events: np.ndarray, rng, width_s: float = 0.02, noise: float = 0.05):
    """Activity of a scene with impacts at session times ``events``, seen at the given session times."""
    d = times[:, None] - events[None, :]
    clean = np.exp(-0.5 * (d / width_s) ** 2).sum(axis=1)
    return 0.2 + clean + noise * rng.random(times.shape[0])


def pair(lag_s: float, seconds: float = 30.0, seed: int = 0, n_events: int = 12, other_rate: float = 30.0):
    """(ref, other) activities where other(τ) = ref(τ + lag_s); other sampled irregularly at other_rate."""
    rng = np.random.default_rng(seed)
    events = np.sort(rng.uniform(1, seconds - 1, n_events))
    t_ref = np.arange(0, seconds, 1 / 30.0)
    t_other = np.arange(0, seconds, 1 / other_rate) + rng.uniform(-1e-3, 1e-3)
    ref = sync.to_grid(t_ref, events_signal(t_ref, events, rng), RATE)
    other = sync.to_grid(t_other, events_signal(t_other + lag_s, events, rng), RATE)
    return ref, other


@pytest.mark.parametrize("lag", [0.0, 0.3456, -1.2345, 1.9])
def test_offset_recovered_to_a_few_ms_with_subsample_refinement(lag):
    ref, other = pair(lag, seed=int(abs(lag) * 1000))
    est = sync.estimate_lag(ref, other)
    assert est.status == sync.CONFIDENT, est.reason
    assert abs(est.lag_s - lag) < 0.004
    assert est.confidence > 0.3 and est.psr > 6


def test_search_range_is_centred_on_the_declared_offset_and_configurable():
    ref, other = pair(3.2, seed=5)
    narrow = sync.estimate_lag(ref, other)  # ±2 s around 0 cannot contain 3.2 s
    assert narrow.status == sync.UNSYNCHRONISABLE
    wide = sync.estimate_lag(ref, other, sync.SyncParams(search_s=4.0))
    assert wide.status == sync.CONFIDENT and abs(wide.lag_s - 3.2) < 0.004
    centred = sync.estimate_lag(ref, other, center_s=3.0)
    assert centred.status == sync.CONFIDENT and abs(centred.lag_s - 3.2) < 0.004


def test_flat_stream_is_unsynchronisable():
    ref, _ = pair(0.0)
    flat = sync.Activity(0.0, RATE, np.full(3000, 4.0))
    est = sync.estimate_lag(ref, flat)
    assert est.status == sync.UNSYNCHRONISABLE and est.confidence == 0.0 and "activity" in est.reason


@pytest.mark.parametrize("seed", range(8))
def test_unrelated_streams_are_never_confident(seed):
    ref, _ = pair(0.0, seed=seed)
    _, other = pair(0.0, seed=seed + 100)  # different events: nothing in common
    est = sync.estimate_lag(ref, other)
    assert est.status == sync.UNSYNCHRONISABLE and est.confidence == 0.0


def test_periodic_activity_is_ambiguous_not_confident():
    t = np.arange(0, 30, 0.01)
    ref = sync.to_grid(t, 1.5 + np.sin(2 * np.pi * 1.0 * t), RATE)
    other = sync.to_grid(t, 1.5 + np.sin(2 * np.pi * 1.0 * (t + 0.2)), RATE)
    est = sync.estimate_lag(ref, other)
    assert est.status == sync.UNSYNCHRONISABLE


def test_to_grid_marks_gaps_and_outside_as_missing():
    t = np.array([0.0, 0.5, 1.0, 3.0, 3.5])
    a = sync.to_grid(t, np.arange(5.0), 10.0, max_gap_s=0.4)
    assert a.t0_s == 0.0 and len(a.values) == 36
    assert a.values[5] == pytest.approx(1.0)
    assert np.isnan(a.values[20])  # 2.0 s: 1 s from the nearest sample
    assert np.isfinite(a.values[30])


def test_corrected_clock_is_exact():
    # declared o=-400 s, d=0; truth o=-399.2 s, d=+55 ppm; lag line derived from the truth
    o_d, d_d, o_t, d_t = -400.0, 0.0, -399.2, 55.0
    t = np.array([400.0, 1000.0])  # stream times
    tau_d = t * (1 + d_d * 1e-6) + o_d
    tau = t * (1 + d_t * 1e-6) + o_t
    slope = (tau[1] - tau[0] - (tau_d[1] - tau_d[0])) / (tau_d[1] - tau_d[0])
    intercept = (tau[0] - tau_d[0]) - slope * tau_d[0]
    off, ppm = sync.corrected_clock(o_d, d_d, intercept, slope)
    assert off == pytest.approx(o_t, abs=1e-9) and ppm == pytest.approx(d_t, abs=1e-6)
    assert sync.clock_error_s(off, ppm, o_t, d_t, 700.0) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("true_ppm", [-80.0, 35.0])
def test_drift_over_ten_minutes_within_20_ppm(true_ppm):
    """A 10-minute stream on a clock with drift, declared without: offset and drift come back."""
    rng = np.random.default_rng(7)
    seconds = 600.0
    events = np.sort(rng.uniform(1, seconds - 1, 200))
    true_off, epoch = 0.6, 120.0  # device clock started 120 s before the session
    t_ref = np.arange(0, seconds, 1 / 30.0)
    ref = sync.to_grid(t_ref, events_signal(t_ref, events, rng), RATE)
    t_dev = epoch + np.arange(0, seconds, 1 / 30.0)  # the stream's own clock
    true_o = true_off - epoch * (1 + true_ppm * 1e-6)
    tau_true = t_dev * (1 + true_ppm * 1e-6) + true_o
    declared_o = -epoch  # drift undeclared, offset off by 0.6 s
    tau_decl = t_dev + declared_o
    other = sync.to_grid(tau_decl, events_signal(tau_true, events, rng), RATE)
    est = sync.estimate_clock(ref, other, declared_o, 0.0)
    assert est.status == sync.CONFIDENT and est.drift_estimated
    assert abs(est.drift_ppm - true_ppm) < 20
    for t in (t_dev[0], t_dev[-1]):
        assert abs(sync.clock_error_s(est.offset_s, est.drift_ppm, true_o, true_ppm, t)) < 0.005


def test_drift_fit_rejects_outlier_windows():
    rng = np.random.default_rng(3)
    seconds = 400.0
    events = np.sort(rng.uniform(1, seconds - 1, 150))
    t = np.arange(0, seconds, 1 / 30.0)
    ref = sync.to_grid(t, events_signal(t, events, rng), RATE)
    lag = 0.25 + 50e-6 * t
    glitch = (t >= 90) & (t < 180)
    lag[glitch] += 0.4  # a stretch on a stepped clock: confident windows, but off the line
    sig = events_signal(t + lag, events, rng)
    other = sync.to_grid(t, sig, RATE)
    fit, windows = sync.estimate_drift(ref, other, center_s=0.25)
    assert fit.status == sync.CONFIDENT
    assert abs(fit.slope * 1e6 - 50) < 20 and abs(fit.intercept_s - 0.25) < 0.005
    assert fit.inliers < fit.windows


# ------------------------------------------------------------------------------------------- activity


def test_frame_difference_energy_peaks_between_the_frames_of_a_cut():
    times = np.arange(10) / 10.0
    frames = [np.full((6, 8), 10 if k < 4 else 200, np.uint8) for k in range(10)]
    t, e = act.frame_difference_energy(frames, times)
    assert t[np.argmax(e)] == pytest.approx(0.35) and e.max() == pytest.approx(190.0)
    with pytest.raises(ValueError):
        act.frame_difference_energy(frames[:1], times[:1])


def test_spectral_flux_marks_an_onset_within_10_ms():
    sr = 16000
    t = np.arange(2 * sr) / sr
    rng = np.random.default_rng(0)
    # a scene change: hum and low noise, then a louder high hiss (as at a class change of the synthetic world)
    low = np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size)
    high = np.diff(rng.standard_normal(t.size + 1))
    x = np.where(t >= 1.237, high, low)
    ft, flux = act.spectral_flux(x, sr)
    assert abs(ft[np.argmax(flux)] - 1.237) < 0.01


def test_novelty_peaks_at_a_motion_start():
    rng = np.random.default_rng(1)
    t = np.arange(0, 6, 1 / 200)
    gyro = 0.01 * rng.standard_normal((3, t.size))
    gyro[1, t >= 2.5] += np.sin(2 * np.pi * 2.8 * t[t >= 2.5])  # walking starts at 2.5 s
    nt, nov = act.novelty(t, gyro)
    assert abs(nt[np.argmax(nov)] - 2.5) < 0.02


def test_camera_rotation_rate_from_optical_flow():
    """A camera panning over a texture: flow speed over focal length gives the rotation rate."""
    rng = np.random.default_rng(2)
    import cv2

    world = cv2.GaussianBlur((rng.random((120, 600)) * 255).astype(np.uint8), (5, 5), 1.5)
    focal = 100.0
    fps = 30.0
    omega = 0.6  # rad/s -> 2 px per frame
    times = np.arange(20) / fps
    frames = [world[:, int(round(focal * omega * t)) : int(round(focal * omega * t)) + 160] for t in times]
    _, w = act.camera_rotation_rate(frames, times, focal)
    assert np.median(w) == pytest.approx(omega, rel=0.1)
