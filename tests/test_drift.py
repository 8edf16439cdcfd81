"""The bounded-error drift fit of coarsely sampled streams (transforms/drift.py) on synthetic activity signals:
impulsive events seen by a 30 fps reference and an 8.7 fps stream whose clock drifts, each event timed only to
the frame interval it fell in."""

from __future__ import annotations

import numpy as np
import pytest

from transforms import drift, sync

SECONDS = 600.0
DECAY_S = 0.06  # an event's effect decays like the synthetic world's impacts (bindset/synth/world.py)


def _events(rng: np.random.Generator, per_minute: float) -> np.ndarray:
    e = np.sort(rng.uniform(1.0, SECONDS - 1.0, int(per_minute * SECONDS / 60)))
    return e[np.r_[True, np.diff(e) >= 0.6]]


def _frames_activity(events: np.ndarray, fps: float, offset_s: float, drift_ppm: float, declared_offset_s: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Frame-difference energy of a camera whose frames are regular on its own clock
    (``t_session = t_dev (1 + drift) + offset``), sampling at each frame instant a scene that jumps at every event
    and decays; placed on the session timeline by the declared clock (offset only, no drift), at the midpoints
    of the frame pairs, as ``transforms/activity.py`` places them."""
    k = 1 + drift_ppm * 1e-6
    t0, t1 = (0.0 - offset_s) / k, (SECONDS - offset_s) / k
    n = int((t1 - t0) * fps)
    t_dev = t0 + rng.uniform(0, 1 / fps) + np.arange(n) / fps + rng.uniform(-0.001, 0.001, n)  # ±1 ms capture jitter
    t_ses = t_dev * k + offset_s
    scene = np.zeros_like(t_ses)
    for e in events:
        m = (t_ses >= e) & (t_ses < e + 10 * DECAY_S)
        scene[m] += np.exp(-(t_ses[m] - e) / DECAY_S)
    scene = scene + rng.normal(0, 0.01, scene.shape) + 0.05 * np.sin(2 * np.pi * 0.3 * t_ses)  # noise, slow motion
    energy = np.abs(np.diff(scene))
    declared = t_dev + declared_offset_s
    return 0.5 * (declared[1:] + declared[:-1]), energy


def _session(seed: int, per_minute: float = 20.0):
    rng = np.random.default_rng(seed)
    events = _events(rng, per_minute)
    truth_ppm = float(rng.choice([-1, 1]) * rng.uniform(20, 100))
    offset = float(rng.uniform(-200, -100))
    declared = offset + float(rng.uniform(-1.0, 1.0))
    ref = sync.to_grid(*_frames_activity(events, 30.0, 0.0, 0.0, 0.0, rng), 100.0)
    other = sync.to_grid(*_frames_activity(events, 8.7, offset, truth_ppm, declared, rng), 100.0)
    return ref, other, declared, truth_ppm


# Over seeds 100..129 the event fit's errors were 10.4 ppm RMS (worst 19.8, none at 20 or more), the windowed
# fit's 16.4 ppm RMS (worst 35.3, 7 of 30 at 20 or more); the first eight are checked here.
SEEDS = tuple(range(100, 108))


@pytest.fixture(scope="module")
def errors() -> dict[str, list[float]]:
    """Drift errors (ppm) of ``sync.estimate_clock`` with the event fit (the activities carry their samples)
    and without (the windowed fit alone), per seed."""
    out: dict[str, list[float]] = {"events": [], "windows": []}
    for seed in SEEDS:
        ref, other, declared, truth = _session(seed)
        est = sync.estimate_clock(ref, other, declared, 0.0)
        assert est.status == sync.CONFIDENT and est.drift_estimated, est
        out["events"].append(est.drift_ppm - truth)
        plain = sync.Activity(other.t0_s, other.rate_hz, other.values)  # no samples: the windowed fit only
        est0 = sync.estimate_clock(ref, plain, declared, 0.0)
        out["windows"].append(est0.drift_ppm - truth if est0.drift_estimated else float("inf"))
    print("\ndrift errors (ppm):", {k: [round(e, 1) for e in v] for k, v in out.items()})
    return out


def test_event_fit_brings_an_8_7_fps_stream_within_20_ppm_over_ten_minutes(errors):
    """Issue 14's bound on every seed, and a smaller RMS error than the windowed fit's (the improvement is the
    point: each event is timed only to its 115 ms frame interval in both)."""
    ev = np.abs(errors["events"])
    assert ev.max() < 20.0, errors
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(errors["events"]) < 0.8 * rms(errors["windows"]), errors


def test_event_intervals_contain_the_true_events():
    """Each matched event's interval on either timeline holds the event (the model the fit relies on)."""
    rng = np.random.default_rng(11)
    events = _events(rng, 20)
    rt, re = _frames_activity(events, 30.0, 0.0, 0.0, 0.0, rng)
    ot, oe = _frames_activity(events, 8.7, 0.0, 0.0, 0.0, rng)
    iv = drift.match_events(rt, re, ot, oe, 0.0)
    assert len(iv.other_lo) >= 0.8 * len(events)
    for lo, hi in ((iv.other_lo, iv.other_hi), (iv.ref_lo, iv.ref_hi)):
        centre = 0.5 * (lo + hi)
        nearest = events[np.argmin(np.abs(centre[:, None] - events[None, :]), axis=1)]
        inside = (nearest >= lo - 1e-3) & (nearest <= hi + 1e-3)
        assert inside.mean() >= 0.95, inside.mean()
    assert np.median(iv.other_hi - iv.other_lo) == pytest.approx(1 / 8.7, rel=0.02)
    assert np.median(iv.ref_hi - iv.ref_lo) == pytest.approx(1 / 30, rel=0.02)


def test_fit_recovers_an_exact_line_and_refuses_too_few_events():
    """Intervals around events on an exact line: the fit finds its slope; fewer than min_events: refused."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, SECONDS, 150))
    slope, lag = 42e-6, 0.3
    phase = rng.uniform(0, 1 / 8.7, t.size)  # where each event fell in its frame interval
    lo = t - phase
    at = t + lag + slope * (t - 300)  # the events on the reference's timeline
    iv = drift.EventIntervals(lo, lo + 1 / 8.7, at - 0.005, at + 0.005)
    fit = drift.fit_event_line(iv, 300.0, lag)
    assert fit.status == sync.CONFIDENT
    assert fit.slope * 1e6 == pytest.approx(42.0, abs=3.0)
    assert fit.intercept_s + fit.slope * 300.0 == pytest.approx(lag, abs=0.005)
    few = drift.EventIntervals(*(a[:10] for a in (iv.other_lo, iv.other_hi, iv.ref_lo, iv.ref_hi)))
    assert drift.fit_event_line(few, 300.0, lag).status == sync.UNSYNCHRONISABLE


def test_fine_streams_and_activities_without_samples_keep_the_windowed_fit():
    """Audio and IMU (10 ms samples, finer than the video's frames) and activities not made by to_grid: the
    windowed fit is returned unchanged."""
    ref, other, _, _ = _session(1)
    fit = sync.DriftEstimate(0.1, 5e-6, 10, 10, 0.01, sync.CONFIDENT)
    plain = sync.Activity(other.t0_s, other.rate_hz, other.values)
    assert drift.coarse_stream_drift(ref, plain, fit) is fit
    t = np.arange(0, SECONDS, 0.01)
    fine = sync.to_grid(t, np.abs(np.sin(t)), 100.0)
    assert drift.coarse_stream_drift(ref, fine, fit) is fit
