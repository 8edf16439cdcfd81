"""Drift of a coarsely sampled stream's clock from the intervals in which its events happened.

``transforms/sync.py::estimate_drift`` fits a line through the lags of 30 s windows, each found by
cross-correlation; an event in an 8.7 fps thermal stream is then placed at the middle of its frame interval,
a uniform error of ± half a period (33 ms RMS), and the line is ~14 ppm (1 sigma) uncertain over 10 minutes
with 200 events. The error is bounded, though, and bounded errors allow a better estimate than least squares
(below). Nothing here reads the amplitude of an event for sub-frame timing: a frame samples the scene at an
instant, and an impact's decay is the same function of time in every frame, so the amplitudes say nothing
about where in the interval it fell (the synthetic world renders it so, ``bindset/synth/world.py``).

Used by ``sync.estimate_clock`` for streams sampled more coarsely than the reference (depth, thermal):
:func:`coarse_stream_drift`. Measured on 10-minute synthetic sessions: see the README's Clock
synchronisation section.

Clock convention (``schemas/manifest.py``): ``t_session = t_stream * (1 + drift_ppm * 1e-6) + offset_s``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from transforms import sync

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ event intervals

# A frame-difference value says that something changed between two frames: an event it shows happened
# somewhere in that interval, and nothing in the frames says where (the synthetic thermal camera, like a real
# one, samples the scene at its frame instants; the puff's decay is the same function of time in every frame,
# so amplitudes carry no sub-frame timing). Placing the event at the interval's middle leaves a uniform error of
# ± half a period (8.7 fps: 33 ms RMS); a least-squares line through such lags is ~14 ppm (1 sigma) uncertain
# over 10 minutes with 200 events. But the error is *bounded*: the true lag line must make each event's
# interval in the stream overlap its interval in the reference. The likelihood of one event is the overlap of
# the two intervals (a trapezoid in the lag; plus a floor for events matched wrongly), and the estimate under
# it converges faster than least squares, as estimators of bounded noise do (set-membership estimation; e.g.
# Milanese & Vicino, "Optimal estimation theory for dynamic systems with set membership uncertainty",
# Automatica 1991). The reference's own 33 ms frame intervals soften the trapezoid's edges, which limits the
# gain: in simulation, 200 events at 8.7 fps against 30 fps video give 10 ppm (1 sigma) instead of 14; on
# tests/test_drift.py's synthetic signals (30 seeds) 10.3 ppm RMS against the windowed fit's 16.4.


@dataclass(frozen=True)
class EventParams:
    """Settings of :func:`match_events` and :func:`fit_event_line` (seconds unless said)."""

    median_s: float = 1.0  # onsets rise above the running median of the log energy over this long
    onset_frac: float = 0.3  # ... by this fraction of the 99.5th percentile of that rise
    match_s: float = 0.2  # the reference's onset is searched within ± this of where the whole-stream lag puts it
    dominance: float = 2.0  # the reference's rise there must be this many times any other rise there
    impulsive: float = 0.7  # an onset sample holds at least this of its peak (the next 3 samples), and the one before
    # it at most 1 - this: the event appeared between two samples
    outlier_floor: float = 0.05  # likelihood floor of one event (a wrongly matched event costs only this)
    lag_range_s: float = 0.1  # line's lag at the stream's middle searched within ± this of the whole-stream lag
    # fine: with sharp-edged intervals the likelihood's ridge is about a period / events wide (~1 ms)
    lag_step_s: float = 0.00025
    max_ppm: float = 150.0
    coarse_step_ppm: float = 1.0
    min_events: int = 20  # fewer matched events: no estimate (the window fit is used)


@dataclass(frozen=True)
class EventIntervals:
    """Matched events: each happened in ``[other_lo, other_hi]`` on the other stream's declared timeline and in
    ``[ref_lo, ref_hi]`` on the reference's. Arrays (M,), seconds."""

    other_lo: np.ndarray
    other_hi: np.ndarray
    ref_lo: np.ndarray
    ref_hi: np.ndarray


def _rise(times_s: np.ndarray, energy: np.ndarray, median_s: float) -> np.ndarray:
    """Log-compressed energy minus its running median (``sync._prepare``'s compression, per sample)."""
    from scipy.ndimage import median_filter

    x = np.log1p(np.abs(energy) / (np.median(np.abs(energy)) + 1e-12))
    period = float(np.median(np.diff(times_s))) if times_s.size > 1 else 1.0
    n = max(3, int(round(median_s / max(period, 1e-6)))) | 1
    return x - median_filter(x, size=n, mode="nearest")


def _spans(times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interval each sample stands for: a frame difference at the midpoint of its two frames spans them,
    i.e. ± half the spacing (the smaller of the two neighbouring spacings: a sample beside a gap between probed
    runs, ``clockcheck.frame_probes``, keeps its own frame period)."""
    if times_s.size < 2:
        return times_s.copy(), times_s.copy()
    d = np.diff(times_s)
    half = 0.5 * np.minimum(np.r_[d[0], d], np.r_[d, d[-1]])
    return times_s - half, times_s + half


def match_events(ref_t, ref_e, other_t, other_e, center_s: float, ev: EventParams = EventParams()) -> EventIntervals:
    """Onsets of the other stream and, for each, the reference's onset where the lag ``center_s`` puts it.

    ``*_t``: (N,) increasing sample times (session seconds, declared clocks; for frame streams the midpoints
    of the frame pairs), ``*_e``: (N,) activity at them. An onset is a sample whose rise above the running
    median first passes ``onset_frac`` of its 99.5th percentile, and that holds most of its peak (``impulsive``);
    its reference partner is the biggest rise of the reference within ``match_s`` of where ``center_s`` puts it,
    timed where it first passes half its peak, kept when it dominates any other rise there and is itself a
    jump within one sample. Returns the matched events' intervals (``_spans``: ± half the sample spacing).
    """
    ref_t, ref_e = np.asarray(ref_t, np.float64), np.asarray(ref_e, np.float64)
    other_t, other_e = np.asarray(other_t, np.float64), np.asarray(other_e, np.float64)
    empty = EventIntervals(*(np.zeros(0),) * 4)
    if ref_t.size < 3 or other_t.size < 3:
        return empty
    h = _rise(other_t, other_e, ev.median_s)
    thr = ev.onset_frac * float(np.quantile(h, 0.995))
    if thr <= 0:
        return empty
    onsets = np.flatnonzero((h > thr) & np.r_[True, h[:-1] <= thr])
    # the interval model holds for an event that appears within one sample: a frame difference that jumps at
    # once (a scene sampled at frame instants). A rise spread over several samples (a profile smoother than a
    # frame period) times the event by its shape, not by an interval: left to the correlation.
    ahead = np.array([h[k : k + 3].max() for k in onsets]) if onsets.size else np.zeros(0)
    onsets = onsets[h[onsets] >= ev.impulsive * ahead]
    o_lo, o_hi = _spans(other_t)
    r_lo, r_hi = _spans(ref_t)
    hr = _rise(ref_t, ref_e, ev.median_s)
    thr_r = ev.onset_frac * float(np.quantile(hr, 0.995))
    keep_o, keep_r = [], []
    lo_idx = np.searchsorted(ref_t, other_t[onsets] + center_s - ev.match_s)
    hi_idx = np.searchsorted(ref_t, other_t[onsets] + center_s + ev.match_s, side="right")
    for k, a, b in zip(onsets, lo_idx, hi_idx, strict=True):
        if b - a < 3:
            continue
        w = hr[a:b]
        p = int(np.argmax(w))
        peak = float(w[p])
        if peak <= max(thr_r, 0.0):
            continue
        # the onset: where the rise first passes half the peak, walking back from it (constant-fraction timing)
        j = p
        while j > 0 and w[j - 1] > 0.5 * peak:
            j -= 1
        e = p
        while e < len(w) - 1 and w[e + 1] > 0.5 * peak:
            e += 1
        rest = np.r_[w[:j], w[e + 1 :]]
        if j == 0 or (rest.size and rest.max() * ev.dominance > peak):
            continue  # the rise began before the window, or another one there is nearly as big: ambiguous
        if w[j] < ev.impulsive * peak or w[j - 1] > (1 - ev.impulsive) * peak:
            continue  # not a jump within one sample (see above)
        keep_o.append(k)
        keep_r.append(a + j)
    io, ir = np.asarray(keep_o, int), np.asarray(keep_r, int)
    return EventIntervals(o_lo[io], o_hi[io], r_lo[ir], r_hi[ir])


def _overlap_loglik(ev_iv: EventIntervals, tau: np.ndarray, lags: np.ndarray, slope: float, floor: float):
    """Σ over events of log(floor + overlap fraction) for each lag at the middle (lags (A,)), one slope."""
    dl = lags[:, None] + slope * tau[None, :]
    lo = np.maximum(ev_iv.other_lo + dl, ev_iv.ref_lo)
    hi = np.minimum(ev_iv.other_hi + dl, ev_iv.ref_hi)
    width = np.minimum(ev_iv.other_hi - ev_iv.other_lo, ev_iv.ref_hi - ev_iv.ref_lo)
    return np.log(floor + np.clip(hi - lo, 0.0, None) / np.maximum(width, 1e-9)).sum(axis=1)


def fit_event_line(ev_iv: EventIntervals, tc: float, center_s: float, ev: EventParams = EventParams(),
                   center_ppm: float = 0.0) -> sync.DriftEstimate:  # fmt: skip
    """The lag line ``δ(τ) = intercept + slope · τ`` under the bounded-error model above: the posterior mean of
    its slope and of its lag at ``tc`` (flat priors over the grid), not the likelihood's argmax.

    The likelihood is flat-topped (every line that keeps each event inside both of its intervals is as good),
    so its argmax is an arbitrary point of that set, and on a grid the first of equal maxima, a bias; the
    mean over the set is the estimate of least squared error (the "central" estimate of set-membership
    estimation). ``tc``: the stream's middle (declared session seconds); lags at ``tc`` within ``lag_range_s``
    of ``center_s`` (steps of ``lag_step_s``), slopes within ``center_ppm ± max_ppm`` (steps of
    ``coarse_step_ppm``). Returns ``UNSYNCHRONISABLE`` with fewer than ``min_events`` events or the most likely
    slope at the grid's edge.
    """
    n = len(ev_iv.other_lo)
    if n < ev.min_events:
        return sync.DriftEstimate(float("nan"), 0.0, n, 0, float("nan"), sync.UNSYNCHRONISABLE,
                                  f"{n} matched events (need {ev.min_events})")  # fmt: skip
    tau = 0.5 * (ev_iv.other_lo + ev_iv.other_hi) - tc
    lags = center_s + np.arange(-ev.lag_range_s, ev.lag_range_s + 1e-12, ev.lag_step_s)
    slopes = (center_ppm + np.arange(-ev.max_ppm, ev.max_ppm + 1e-9, ev.coarse_step_ppm)) * 1e-6
    ll = np.stack([_overlap_loglik(ev_iv, tau, lags, float(b), ev.outlier_floor) for b in slopes])  # (B, A)
    i_b = int(np.argmax(ll.max(axis=1)))
    if i_b in (0, len(slopes) - 1):
        return sync.DriftEstimate(float("nan"), 0.0, n, 0, float("nan"), sync.UNSYNCHRONISABLE,
                                  f"best drift at the edge of ±{ev.max_ppm:.0f} ppm")  # fmt: skip
    w = np.exp(ll - ll.max())
    slope = float((w.sum(axis=1) * slopes).sum() / w.sum())
    lag_mid = float((w.sum(axis=0) * lags).sum() / w.sum())
    # inliers: events whose intervals overlap under the line; residual: their midpoints' RMS distance from it
    dl = lag_mid + slope * tau
    resid = 0.5 * (ev_iv.ref_lo + ev_iv.ref_hi) - 0.5 * (ev_iv.other_lo + ev_iv.other_hi) - dl
    inl = (np.minimum(ev_iv.other_hi + dl, ev_iv.ref_hi) - np.maximum(ev_iv.other_lo + dl, ev_iv.ref_lo)) > 0
    rms = float(np.sqrt(np.mean(resid[inl] ** 2))) if inl.any() else float("nan")
    return sync.DriftEstimate(float(lag_mid - slope * tc), slope, n, int(inl.sum()), rms, sync.CONFIDENT)


# ------------------------------------------------------------------------------- drift of a stream


def _samples(a: sync.Activity) -> tuple[np.ndarray, np.ndarray]:
    """The (times, values) an activity was gridded from (``Activity.samples``), else its finite grid points."""
    got = getattr(a, "samples", None)
    if got is not None:
        return np.asarray(got[0], np.float64), np.asarray(got[1], np.float64)
    t = a.times()
    m = np.isfinite(a.values)
    return t[m], np.asarray(a.values, np.float64)[m]


def _unsync(reason: str, n: int = 0) -> sync.DriftEstimate:
    return sync.DriftEstimate(float("nan"), 0.0, n, 0, float("nan"), sync.UNSYNCHRONISABLE, reason)


def event_line(ref: sync.Activity, other: sync.Activity, params: sync.SyncParams | None = None,
               ev: EventParams = EventParams(), center_ppm: float = 0.0, center_s: float = 0.0
               ) -> sync.DriftEstimate:  # fmt: skip
    """The bounded-error lag line of ``other`` against ``ref`` (:func:`match_events`, :func:`fit_event_line`),
    around their whole-stream lag (``sync.estimate_lag`` within ``search_s`` of ``center_s``). ``UNSYNCHRONISABLE``
    when that lag is not confident
    or too few events match. Slopes are searched within ``center_ppm ± ev.max_ppm``."""
    params = params or sync.SyncParams()
    whole = sync.estimate_lag(ref, other, params, center_s)
    if whole.status != sync.CONFIDENT:
        return _unsync(f"whole-stream lag: {whole.reason}")
    rt, re = _samples(ref)
    ot, oe = _samples(other)
    iv = match_events(rt, re, ot, oe, whole.lag_s, ev)
    return fit_event_line(iv, 0.5 * (other.t0_s + other.t1_s), whole.lag_s, ev, center_ppm)


def coarse_stream_drift(ref: sync.Activity, other: sync.Activity, fit: sync.DriftEstimate,
                        params: sync.SyncParams | None = None, center_s: float = 0.0,
                        ev: EventParams = EventParams()) -> sync.DriftEstimate:  # fmt: skip
    """The drift of a stream sampled more coarsely than the reference (depth at 15 fps, thermal at 8.7 fps
    against 30 fps video) from the bounded-error event fit (:func:`event_line`), in place of ``fit`` (the
    windowed fit, ``sync.estimate_drift``), whose line keeps its lag at the stream's middle (or ``center_s``,
    the whole-stream lag, when ``fit`` is not confident): only the slope changes.

    ``fit`` is returned unchanged when either activity lacks its ``samples`` (the sample times are what the
    intervals come from), the stream's median sample spacing is not above the reference's (audio and IMU, at
    10 ms, are timed far better than the video's frames, and the windowed fit serves them better), or the
    event fit is not confident (fewer than ``ev.min_events`` matched events).
    """
    if getattr(ref, "samples", None) is None or getattr(other, "samples", None) is None:
        return fit
    rt, _ = _samples(ref)
    ot, _ = _samples(other)
    if rt.size < 3 or ot.size < 3 or float(np.median(np.diff(ot))) <= 1.2 * float(np.median(np.diff(rt))):
        return fit
    line = event_line(ref, other, params, ev, center_s=center_s)
    if line.status != sync.CONFIDENT:
        log.info("event drift fit not used (%s)", line.reason)
        return fit
    mid = 0.5 * (other.t0_s + other.t1_s)
    lag_mid = fit.intercept_s + fit.slope * mid if fit.status == sync.CONFIDENT else center_s
    return sync.DriftEstimate(float(lag_mid - line.slope * mid), line.slope, line.windows, line.inliers,
                              line.residual_s, sync.CONFIDENT)  # fmt: skip
