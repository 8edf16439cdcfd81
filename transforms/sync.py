"""Clock synchronisation from content: offset and drift of a stream against the video, pure numpy/scipy.

A stream's activity signal (``transforms/activity.py``), placed on the session timeline with its *declared*
clock, is a delayed copy of the video's activity when the declared clock is wrong: if the stream's true
offset is the declared one plus ``δ`` seconds, the stream shows at declared session time ``τ`` what the
video shows at ``τ + δ``. The lag that maximises their normalised cross-correlation is therefore ``δ``.

- Offset: normalised cross-correlation (by FFT, ``scipy.fft``; masks handle the parts where only one stream
  has data) inside a search range around the declared offset, then a parabola through the
  peak and its two neighbours for a sub-sample lag (the standard three-point interpolation, e.g. Smith,
  "Spectral Audio Signal Processing", "Quadratic Interpolation of Spectral Peaks").
- Confidence: the peak-to-sidelobe ratio (PSR: peak minus the sidelobes' mean, in units of their standard
  deviation; Bolme et al., "Visual Object Tracking using Adaptive Correlation Filters", CVPR 2010) and the
  ratio of the best sidelobe peak to the main peak (a periodic signal has several equal peaks and must not
  be trusted). A stream whose activity is flat, or whose peak is not clearly the only one, is
  ``unsynchronisable``; it never gets a confident estimate.
- Short streams (6-10 s clips): the peak is chosen on the NCC weighted by each lag's overlap (the divisor-N
  cross-covariance, ``_overlap_weighted``), so lags at the edge of the search range, normalised over fewer
  samples, do not win by their wider spread; and a peak that is not overwhelming must stay put when any
  third of the overlap is left out (``_rests_on_one_stretch``), so one chance pairing of two strong events
  is not confident. On 300 six-second videos with exact clocks these took false mismatches from 5 to 0.
- Drift: offsets of windows along a long session, a Theil–Sen line (``scipy.stats.theilslopes``, robust to
  29% outliers) through the confident ones, windows further than ``outlier_s`` from that line rejected,
  and the line fitted again by least squares on the rest.

Clock convention (``schemas/manifest.py``): ``t_session = t_stream * (1 + drift_ppm * 1e-6) + offset_s``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

# No scipy at module level: this module is in the import chain of transforms.unit, which the decode worker's
# forkserver preloads before a local build can start; scipy.signal cost ~0.6 s there, scipy.stats (theilslopes)
# ~0.2 s and scipy.fft ~0.2 s. The correlations use scipy.fft (the transforms scipy.signal.correlate's FFT method
# uses) and the drift fit scipy.stats, each imported where it is needed: only a clock check pays for them, and
# sessions shorter than drift_min_session_s never import scipy.stats.

log = logging.getLogger(__name__)

CONFIDENT = "confident"
UNSYNCHRONISABLE = "unsynchronisable"


@dataclass(frozen=True)
class Activity:
    """An activity signal sampled on the session timeline: ``values[k]`` at ``t0_s + k / rate_hz`` seconds.

    NaN marks samples where the stream has no data (before its first or after its last sample, gaps).
    """

    t0_s: float
    rate_hz: float
    values: np.ndarray  # float64 (N,)
    # the (times, values) it was gridded from (to_grid): where a frame stream's frames really are
    # (transforms/drift.py times events by their frame intervals); None when not known
    samples: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)

    @property
    def t1_s(self) -> float:
        return self.t0_s + len(self.values) / self.rate_hz

    def times(self) -> np.ndarray:
        return self.t0_s + np.arange(len(self.values)) / self.rate_hz


@dataclass(frozen=True)
class SyncParams:
    """Settings of the estimators. Lags and windows in seconds; ``rate_hz`` is the common grid's rate."""

    rate_hz: float = 100.0
    search_s: float = 2.0  # ± around the declared offset
    min_overlap_s: float = 4.0  # both streams must have data this long at the chosen lag
    min_psr: float = 6.0  # peak-to-sidelobe ratio below which an estimate is not trusted
    max_sidelobe_ratio: float = 0.75  # best sidelobe peak / main peak above which the peak is ambiguous
    min_peak: float = 0.15  # normalised correlation at the peak below which the streams do not co-vary
    min_activity_cv: float = 1e-3  # std/|mean| of the raw activity below which a stream is flat (static, silent)
    highpass_s: float = 1.0  # moving mean removed before correlating: events matter, slow levels do not
    # A confident peak must survive leaving out any one of this many equal stretches of the overlap (0: no
    # check). On short clips (6-10 s, 2-3 scene changes) a lag that pairs the two biggest events of the
    # streams wrongly can out-score the true lag, where every event pairs; such a peak rests on one stretch.
    support_blocks: int = 3
    # ... unless the peak is this distinct: one long, shaped event (a pan seen by camera and gyro: PSR > 100)
    # is unmistakable on its own; the chance pairings above come out at PSR 6-8, near min_psr
    support_psr: float = 12.0
    # Drift windows of 30 s every 15 s, not 60 s every 30 s: a window's lag is pulled by the scenes in it (a
    # class whose motion texture differs between streams tilts the correlation around its changes, tens of ms
    # on an 8.7 fps thermal camera), and with twice the windows the robust fit sees such a stretch as what it
    # is, a few windows off the line, and drops them. Over 9 ten-minute synthetic sessions (0, 6 and 20 impacts
    # a minute) thermal drift errors went from 17 to 12 ppm RMS (worst 39 to 29), depth from 12 to 10.
    drift_window_s: float = 30.0
    drift_step_s: float = 15.0
    drift_min_session_s: float = 300.0  # shorter sessions: drift is not estimated (too little lever arm)
    outlier_s: float = 0.03  # window estimates further than this from the robust line are rejected
    min_drift_windows: int = 4


@dataclass(frozen=True)
class LagEstimate:
    """The lag δ (seconds) at which ``other(τ) ≈ ref(τ + δ)``, and how far to trust it."""

    lag_s: float
    peak: float  # normalised correlation at the peak, in [-1, 1]
    psr: float  # peak-to-sidelobe ratio (dimensionless)
    sidelobe_ratio: float  # best sidelobe peak / main peak
    confidence: float  # in [0, 1]; 0 when unsynchronisable
    status: str  # CONFIDENT | UNSYNCHRONISABLE
    reason: str = ""  # why unsynchronisable


@dataclass(frozen=True)
class DriftEstimate:
    """A line ``δ(τ) = intercept_s + slope * τ`` through windowed lags (τ: declared session time, seconds)."""

    intercept_s: float
    slope: float  # dimensionless (seconds per second); ppm = slope * 1e6
    windows: int  # windows estimated
    inliers: int  # confident windows kept after outlier rejection
    residual_s: float  # RMS of the inliers' residuals
    status: str
    reason: str = ""


@dataclass(frozen=True)
class ClockEstimate:
    """A stream's clock in the manifest's convention, estimated from content."""

    offset_s: float
    drift_ppm: float
    confidence: float
    status: str
    lag_s: float  # the correction at the stream's middle, against the declared clock
    drift_estimated: bool
    reason: str = ""


# -------------------------------------------------------------------------------------------- signals


def to_grid(times_s: np.ndarray, values: np.ndarray, rate_hz: float, t0_s: float | None = None,
            t1_s: float | None = None, max_gap_s: float = 0.5) -> Activity:  # fmt: skip
    """Resample an irregularly timed activity onto the grid ``k / rate_hz`` (session seconds).

    Linear interpolation between samples; grid points further than ``max_gap_s`` from any sample, or outside
    ``[times_s[0], times_s[-1]]``, are NaN. ``times_s`` must be increasing. Raises ValueError on fewer than
    two samples or mismatched lengths.
    """
    times_s = np.asarray(times_s, np.float64)
    values = np.asarray(values, np.float64)
    if times_s.shape != values.shape or times_s.size < 2:
        raise ValueError("to_grid: need at least two (time, value) samples of equal length")
    lo = times_s[0] if t0_s is None else t0_s
    hi = times_s[-1] if t1_s is None else t1_s
    k0, k1 = int(np.ceil(lo * rate_hz)), int(np.floor(hi * rate_hz))
    grid = np.arange(k0, k1 + 1) / rate_hz
    out = np.interp(grid, times_s, values, left=np.nan, right=np.nan)
    # distance to the nearest sample: gaps in the stream are not invented by interpolation
    idx = np.clip(np.searchsorted(times_s, grid), 1, len(times_s) - 1)
    near = np.minimum(np.abs(grid - times_s[idx - 1]), np.abs(times_s[idx] - grid))
    out[near > max_gap_s] = np.nan
    return Activity(k0 / rate_hz, rate_hz, out, samples=(times_s, values))


def _prepare(a: Activity, highpass_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-compressed, high-passed, standardised values (0 where missing) and the validity mask."""
    v = np.asarray(a.values, np.float64)
    mask = np.isfinite(v)
    x = np.where(mask, v, 0.0)
    # log compression: one huge event (a scene cut) must not drown every other one
    scale = np.median(np.abs(x[mask])) if mask.any() else 0.0
    x = np.log1p(np.abs(x) / (scale + 1e-12))
    n = max(1, int(round(highpass_s * a.rate_hz)))
    if n > 1:
        from scipy.ndimage import median_filter

        # events stand above the local median; the texture of steady motion or noise below it is dropped
        base = median_filter(np.where(mask, x, np.median(x[mask]) if mask.any() else 0.0), size=n | 1,
                             mode="nearest")  # fmt: skip
        x = np.clip(x - base, 0.0, None)
    x = np.where(mask, x, 0.0)
    if mask.sum() > 1:
        mu = x[mask].mean()
        sd = x[mask].std()
        x = np.where(mask, (x - mu) / (sd if sd > 0 else 1.0), 0.0)
    return x, mask.astype(np.float64)


def _flat(a: Activity, min_cv: float) -> bool:
    v = a.values[np.isfinite(a.values)]
    if v.size < 3:
        return True
    return float(np.std(v)) <= min_cv * max(float(np.mean(np.abs(v))), 1e-12)


def _parabolic(y_minus: float, y0: float, y_plus: float) -> float:
    """Sub-sample offset in [-0.5, 0.5] of the vertex of the parabola through three equally spaced points."""
    den = y_minus - 2.0 * y0 + y_plus
    if den >= 0:  # not a maximum (flat or convex): keep the sample
        return 0.0
    return float(np.clip(0.5 * (y_minus - y_plus) / den, -0.5, 0.5))


def _unsync(reason: str, lag: float = float("nan"), peak=float("nan"), psr=0.0, side=float("nan")) -> LagEstimate:
    return LagEstimate(lag, peak, psr, side, 0.0, UNSYNCHRONISABLE, reason)


class _RefSpectra:
    """The forward transforms of a masked reference that every correlation against it shares.

    ``correlate(r, o)[k] = Σ_n r[n + k] o[n]`` (``scipy.signal.correlate``'s 'full' order, lags
    ``-(len(o) - 1) .. len(r) - 1``) is the convolution of ``r`` with ``o`` reversed, computed as scipy's FFT
    method does (``scipy.signal.fftconvolve``: real FFTs at ``next_fast_len(len(r) + len(o) - 1)``). The four
    correlations of ``_masked_ncc`` need three transforms of the reference (``r``, ``r²``, its mask) and three
    of the other stream; the reference's are kept here for the jackknife of ``_rests_on_one_stretch``, which
    correlates the same reference with ``support_blocks`` variants of the other stream.
    """

    def __init__(self, r: np.ndarray, mr: np.ndarray, n_other: int):
        from scipy import fft as sp_fft  # not at module level: see the imports

        self.n_ref, self.n_other = len(r), n_other
        self.size = len(r) + n_other - 1
        self.nfft = sp_fft.next_fast_len(self.size, real=True)
        self.r, self.r2, self.mr = sp_fft.rfft(np.stack([r, r * r, mr]), self.nfft, axis=-1)

    def correlate(self, o: np.ndarray, mo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``correlate(r, o)``, ``correlate(r², mo)``, ``correlate(mr, o²)``, ``correlate(mr, mo)`` ('full')."""
        if len(o) != self.n_other:
            raise ValueError(f"_RefSpectra: other stream of {len(o)} samples, not {self.n_other}")
        from scipy import fft as sp_fft

        rev = np.stack([o[::-1], mo[::-1], (o * o)[::-1]])
        f_o, f_mo, f_o2 = sp_fft.rfft(rev, self.nfft, axis=-1)
        prod = np.stack([self.r * f_o, self.r2 * f_mo, self.mr * f_o2, self.mr * f_mo])
        out = sp_fft.irfft(prod, self.nfft, axis=-1)[:, : self.size]
        return out[0], out[1], out[2], out[3]


def _masked_ncc(r: np.ndarray, mr: np.ndarray, o: np.ndarray, mo: np.ndarray, spectra: _RefSpectra | None = None
                ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Normalised cross-correlation of two masked signals at every lag, and the overlap (samples) it rests on.

    ``ncc[k] = Σ r[n+k] o[n] / sqrt(Σ r[n+k]² mo[n] · Σ mr[n+k] o[n]²)``: each lag normalised by the energies
    of the samples both streams have there (``scipy.signal.correlate`` index order). NaN where an energy is 0.
    ``spectra``: the reference's transforms (``_RefSpectra(r, mr, len(o))``), when computed already.
    """
    spectra = spectra if spectra is not None else _RefSpectra(r, mr, len(o))
    num, e_r, e_o, overlap = spectra.correlate(o, mo)
    den = np.sqrt(np.clip(e_r, 0, None) * np.clip(e_o, 0, None))
    ncc = np.where(den > 1e-9, num / np.where(den > 1e-9, den, 1.0), np.nan)
    return ncc, np.clip(overlap, 0.0, None)


def _overlap_weighted(ncc: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """``ncc`` scaled by each lag's overlap over the largest overlap: the score the peak is chosen on.

    The NCC at a lag where the streams share n samples is an average over n products, and its spread under no
    true correlation grows as n shrinks; normalised per lag, the lags at the edge of the search range of a short
    stream (6 s, ±2 s: 4 s shared) get the widest spread, and the maximum over ~400 lags lands there by chance
    (4 of the 5 false mismatches on 300 six-second clips were at |lag| > 1.7 s). Scaling by n / n_max is the
    usual cross-covariance estimate with divisor N instead of N - |k| (Box, Jenkins & Reinsel, "Time Series
    Analysis: Forecasting and Control", ch. 2, estimation of the autocovariance function: the divisor-N
    estimate has the smaller mean squared error, and the divisor-(N - k) one's variance grows with the lag).
    The weight is 1 on long streams (30 min, ±2 s: > 0.998) and for windows that lie inside the reference.
    """
    top = float(np.nanmax(overlap)) if overlap.size else 0.0
    return ncc * (overlap / top) if top > 0 else ncc


def _rests_on_one_stretch(r: np.ndarray, mr: np.ndarray, o: np.ndarray, mo: np.ndarray, k_peak: int,
                          lags: np.ndarray, idx: np.ndarray, i: int, tol: int, blocks: int,
                          spectra: _RefSpectra | None = None) -> bool:  # fmt: skip
    """Whether the peak ``idx[i]`` (a correlate index) moves when any one of ``blocks`` equal stretches of
    the streams' overlap at that lag is left out of ``other`` (moves: the best lag in the search range, ``idx``,
    is more than ``tol`` samples away). A delete-a-group jackknife (Efron & Tibshirani, "An Introduction to
    the Bootstrap", ch. 11) applied to the peak's position: the true lag pairs every shared event, so it stays
    the best without any one stretch; a lag that pairs one big event of each stream by chance does not.
    """
    shift = int(lags[k_peak])  # other[n] meets r[n + shift]
    n = np.arange(len(o))
    m = n + shift
    inside = (m >= 0) & (m < len(r))
    both = np.zeros(len(o), bool)
    both[inside] = (mo[inside] > 0) & (mr[m[inside]] > 0)
    for part in np.array_split(np.flatnonzero(both), blocks):
        if part.size == 0:
            continue
        keep = mo.copy()
        keep[part] = 0.0
        ncc, overlap = _masked_ncc(r, mr, np.where(keep > 0, o, 0.0), keep, spectra)
        c = _overlap_weighted(ncc, overlap)[idx]
        if not np.isfinite(c).any():
            return True
        if abs(int(np.argmax(np.where(np.isfinite(c), c, -np.inf))) - i) > tol:
            return True
    return False


def estimate_lag(ref: Activity, other: Activity, params: SyncParams = SyncParams(), center_s: float = 0.0
                 ) -> LagEstimate:  # fmt: skip
    """The lag δ (seconds) in ``[center_s - search_s, center_s + search_s]`` where ``other(τ) ≈ ref(τ + δ)``.

    ``ref`` and ``other`` must share ``rate_hz`` (ValueError otherwise). The peak is chosen, and its PSR and
    sidelobe ratio measured, on the overlap-weighted NCC (``_overlap_weighted``); the lag is refined and
    ``peak`` reported on the plain NCC. Returns an ``UNSYNCHRONISABLE`` estimate (confidence 0, a reason) when
    either signal is flat, the streams overlap less than ``min_overlap_s``, the peak is at the edge of the
    search range, weak, not clearly unique, or rests on one stretch of the overlap (``support_blocks``).
    """
    if not np.isclose(ref.rate_hz, other.rate_hz):
        raise ValueError(f"estimate_lag: rates differ ({ref.rate_hz} Hz vs {other.rate_hz} Hz)")
    p = params
    rate = ref.rate_hz
    if _flat(ref, p.min_activity_cv) or _flat(other, p.min_activity_cv):
        return _unsync("no activity")
    r, mr = _prepare(ref, p.highpass_s)
    o, mo = _prepare(other, p.highpass_s)
    # correlate(r, o)[k] = sum_n r[n + k] o[n]; lags in samples of the arrays, shifted by their start times
    spectra = _RefSpectra(r, mr, len(o))
    ncc, overlap = _masked_ncc(r, mr, o, mo, spectra)
    lags = np.arange(-(len(o) - 1), len(r))  # scipy.signal.correlation_lags(len(r), len(o), "full")
    base = int(round((other.t0_s - ref.t0_s) * rate))  # other[n] sits at ref index n + base
    lag_s = (lags - base) / rate
    ok = (overlap >= p.min_overlap_s * rate - 0.5) & np.isfinite(ncc)
    score = np.where(ok, _overlap_weighted(ncc, overlap), np.nan)
    sel = np.abs(lag_s - center_s) <= p.search_s + 0.5 / rate
    if not np.any(sel & ok):
        return _unsync(f"streams overlap less than {p.min_overlap_s:.1f} s")
    idx = np.flatnonzero(sel)
    c = score[idx]
    c = np.where(np.isfinite(c), c, -np.inf)
    i = int(np.argmax(c))
    top = float(c[i])
    if i == 0 or i == len(c) - 1 or not np.isfinite(c[i - 1]) or not np.isfinite(c[i + 1]):
        return _unsync("peak at the edge of the search range", float(lag_s[idx[i]]), float(ncc[idx[i]]))
    # sub-sample lag on the plain NCC: the weight's slope (1/N per sample) would pull the vertex
    peak = float(ncc[idx[i]])
    frac = _parabolic(ncc[idx[i] - 1], peak, ncc[idx[i] + 1])
    lag = float(lag_s[idx[i]] + frac / rate)
    # main lobe: down to half the peak on both sides (at least two samples)
    lo = i
    while lo > 0 and np.isfinite(c[lo - 1]) and c[lo - 1] > 0.5 * top:
        lo -= 1
    hi = i
    while hi < len(c) - 1 and np.isfinite(c[hi + 1]) and c[hi + 1] > 0.5 * top:
        hi += 1
    guard = max(2, (hi - lo) // 2)
    side_mask = np.isfinite(c)
    side_mask[max(0, lo - guard) : hi + guard + 1] = False
    side = c[side_mask]
    if side.size < 10:
        return _unsync("search range too small for a sidelobe estimate", lag, peak)
    psr = float((top - side.mean()) / (side.std() + 1e-12))
    ratio = float(max(side.max(), 0.0) / top) if top > 0 else 1.0
    if peak < p.min_peak:
        return _unsync(f"weak correlation (peak {peak:.2f})", lag, peak, psr, ratio)
    if psr < p.min_psr:
        return _unsync(f"peak not distinct (PSR {psr:.1f})", lag, peak, psr, ratio)
    if ratio > p.max_sidelobe_ratio:
        return _unsync(f"ambiguous peak (sidelobe {ratio:.2f} of peak)", lag, peak, psr, ratio)
    one_stretch = p.support_blocks > 1 and psr < p.support_psr
    jackknife = (r, mr, o, mo, int(idx[i]), lags, idx, i, guard, p.support_blocks, spectra)
    if one_stretch and _rests_on_one_stretch(*jackknife):
        return _unsync(f"peak rests on one {1 / p.support_blocks:.0%} of the overlap", lag, peak, psr, ratio)
    conf = float(np.clip((psr - p.min_psr) / p.min_psr, 0, 1) * 0.5 + np.clip(1 - ratio, 0, 1) * 0.5)
    conf = max(conf, 0.05)
    return LagEstimate(lag, peak, psr, ratio, conf, CONFIDENT)


def window(a: Activity, t0_s: float, t1_s: float) -> Activity:
    """The part of ``a`` inside ``[t0_s, t1_s)`` (session seconds)."""
    k0 = max(0, int(np.ceil((t0_s - a.t0_s) * a.rate_hz - 1e-9)))
    k1 = min(len(a.values), int(np.ceil((t1_s - a.t0_s) * a.rate_hz - 1e-9)))
    return Activity(a.t0_s + k0 / a.rate_hz, a.rate_hz, a.values[k0 : max(k0, k1)])


DRIFT_REF_MARGIN_S = 5.0  # ref kept beyond a drift window's reach: its standardisation sees a few events more


def estimate_drift(ref: Activity, other: Activity, params: SyncParams = SyncParams(), center_s: float = 0.0
                   ) -> tuple[DriftEstimate, list[tuple[float, LagEstimate]]]:  # fmt: skip
    """Robust line through the lags of windows of ``other`` (``drift_window_s`` long, every ``drift_step_s``).

    Each window is searched within ``±search_s`` of ``center_s`` against the part of ``ref`` those lags can
    reach, plus ``DRIFT_REF_MARGIN_S`` (the high-pass's edges stay outside the compared span). Returns the fit
    and the (window centre, estimate) pairs. The fit's status is ``UNSYNCHRONISABLE`` when fewer than
    ``min_drift_windows`` confident windows survive outlier rejection.
    """
    p = params
    wp = SyncParams(**{**p.__dict__, "min_overlap_s": min(p.min_overlap_s, 0.5 * p.drift_window_s)})
    starts = np.arange(other.t0_s, other.t1_s - p.drift_window_s + 1e-9, p.drift_step_s)
    # other(τ) ≈ ref(τ + δ): the window [s, s + W) meets ref in [s + δ, s + W + δ), δ within center ± search.
    # Correlating against the whole of ref instead cost a median filter and four FFTs of the whole session per
    # window (a 30-min session: ~120 windows x 180,000 grid points, seconds per stream)
    reach = p.search_s + DRIFT_REF_MARGIN_S + 2 * p.highpass_s
    found: list[tuple[float, LagEstimate]] = []
    for s in starts:
        w = window(other, float(s), float(s) + p.drift_window_s)
        r = window(ref, float(s) + center_s - reach, float(s) + p.drift_window_s + center_s + reach)
        found.append((float(s) + p.drift_window_s / 2, estimate_lag(r, w, wp, center_s)))
    good = [(t, e.lag_s) for t, e in found if e.status == CONFIDENT]
    if len(good) < p.min_drift_windows:
        return DriftEstimate(float("nan"), 0.0, len(found), len(good), float("nan"), UNSYNCHRONISABLE,
                             f"{len(good)} confident windows (need {p.min_drift_windows})"), found  # fmt: skip
    t = np.array([g[0] for g in good])
    y = np.array([g[1] for g in good])
    from scipy.stats import theilslopes  # not at module level: see the imports (only long sessions get here)

    slope, intercept, _, _ = theilslopes(y, t)
    keep = np.abs(y - (intercept + slope * t)) <= p.outlier_s
    if keep.sum() < p.min_drift_windows:
        return DriftEstimate(float(intercept), float(slope), len(found), int(keep.sum()), float("nan"),
                             UNSYNCHRONISABLE, "windows disagree"), found  # fmt: skip
    slope, intercept = np.polyfit(t[keep], y[keep], 1)
    resid = y[keep] - (intercept + slope * t[keep])
    rms = float(np.sqrt(np.mean(resid**2)))
    return DriftEstimate(float(intercept), float(slope), len(found), int(keep.sum()), rms, CONFIDENT), found


# ---------------------------------------------------------------------------------------------- clocks


def corrected_clock(offset_s: float, drift_ppm: float, intercept_s: float, slope: float) -> tuple[float, float]:
    """The clock that maps a stream to where its content really is, given a declared clock and a lag line.

    With ``τ_d = t (1 + d) + o`` (declared) and the true session time ``τ = τ_d + intercept + slope · τ_d``:
    ``1 + d' = (1 + slope)(1 + d)`` and ``o' = (1 + slope) o + intercept`` (exact, no small-drift
    approximation). Returns ``(offset_s, drift_ppm)``.
    """
    d = drift_ppm * 1e-6
    return (1 + slope) * offset_s + intercept_s, ((1 + slope) * (1 + d) - 1) * 1e6


def clock_error_s(offset_a: float, drift_a: float, offset_b: float, drift_b: float, t_stream: float) -> float:
    """How far apart two clocks put stream time ``t_stream`` on the session timeline (seconds, signed a - b).

    The fair measure of an estimate: an offset fitted without drift absorbs ``t · drift`` of the truth, so
    offsets alone are not comparable when the stream's epoch is far from the session start.
    """
    return (t_stream * (1 + drift_a * 1e-6) + offset_a) - (t_stream * (1 + drift_b * 1e-6) + offset_b)


def estimate_clock(ref: Activity, other: Activity, declared_offset_s: float, declared_drift_ppm: float = 0.0,
                   params: SyncParams = SyncParams()) -> ClockEstimate:  # fmt: skip
    """A stream's clock from content, given its activity placed on the session timeline by its declared clock.

    Sessions at least ``drift_min_session_s`` long also get a drift from windowed lags (a stream sampled more
    coarsely than ``ref``, whose activity carries its samples, gets the slope of ``transforms/drift.py``'s
    event fit); shorter ones keep the declared drift and get a constant correction. Raises nothing on weak
    input: the status says ``unsynchronisable`` and the declared clock is returned unchanged with confidence 0.
    """
    whole = estimate_lag(ref, other, params)
    span = other.t1_s - other.t0_s
    if whole.status != CONFIDENT:
        return ClockEstimate(declared_offset_s, declared_drift_ppm, 0.0, UNSYNCHRONISABLE,
                             whole.lag_s, False, whole.reason)  # fmt: skip
    mid = 0.5 * (other.t0_s + other.t1_s)
    if span >= params.drift_min_session_s:
        fit, _ = estimate_drift(ref, other, params, center_s=whole.lag_s)
        from transforms.drift import coarse_stream_drift  # drift.py builds on this module

        # a stream sampled more coarsely than the video (depth, thermal): slope from its events' frame intervals
        fit = coarse_stream_drift(ref, other, fit, params, center_s=whole.lag_s)
        if fit.status == CONFIDENT:
            off, ppm = corrected_clock(declared_offset_s, declared_drift_ppm, fit.intercept_s, fit.slope)
            return ClockEstimate(off, ppm, whole.confidence, CONFIDENT, fit.intercept_s + fit.slope * mid, True)
        log.info("drift not estimated (%s); constant correction only", fit.reason)
    off, ppm = corrected_clock(declared_offset_s, declared_drift_ppm, whole.lag_s, 0.0)
    return ClockEstimate(off, ppm, whole.confidence, CONFIDENT, whole.lag_s, False)
