"""Per-sample quality filters: a figure beyond its threshold rejects that modality, or that window, with a reason.

Filters on samples, gates on datasets (datatrove's ``filter(doc) -> bool | (False, reason)``): each filter
here is a pure function of one sample's quality figures and a ``FilterThresholds``, returning ``None`` (keep)
or a ``FilterReject`` (reason code + a readable detail with the figure and its bound). ``transforms/unit.py``
applies them where a sample's figures are computed; the dataset gate (``schemas/expectations.py``) then only
bounds how often each reason occurs.

| filter         | figures                                        | reasons                                 | rejects |
|----------------|------------------------------------------------|-----------------------------------------|---------|
| audio_filter   | audio_rms_dbfs, audio_clipped_frac             | audio_silent, audio_clipped             | modality|
| frame_filter   | frame_brightness, frame_sharpness, frame_diff  | frame_black, frame_white, frame_blurred,| window  |
|                |                                                | frame_frozen                            |         |
| depth_filter   | depth_valid_frac                               | depth_invalid                           | modality|
| thermal_filter | thermal_max - thermal_min                      | thermal_flat                            | modality|
| imu_filter     | imu_saturated_frac                             | imu_saturated                           | modality|

A frame reject is a window reject: every sample is anchored on its paired image.

The defaults are calibrated on real media (README, "Quality filters and gate";
``benchmarks/calibrate_quality.py``): each sits between what real, good captures give and what the
broken versions of the same captures give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from schemas.config import StrictConfig
from schemas.reasons import RejectReason

__all__ = [
    "FilterReject",
    "FilterThresholds",
    "audio_filter",
    "depth_filter",
    "frame_filter",
    "imu_filter",
    "imu_saturated_frac",
    "thermal_filter",
]


class FilterThresholds(StrictConfig):
    """Per-sample thresholds; a figure beyond one makes its modality (or window) a reject.

    Strict (``schemas/config.py``): an unknown key or a wrong type (``"0.5"`` for a number) is a
    ``ConfigError`` that names the key (exit 2). Part of ``BuildConfig`` (its ``filters`` field), so
    changing one changes the unit fingerprint and rebuilds the units.
    """

    # Defaults: README "Quality filters and gate" names the real media each was checked on and the figures
    # measured (benchmarks/calibrate_quality.py). Audio: on the stored channel of the 2 s window. Real
    # recordings (alsa-utils speech, freedesktop sound theme) give -45..-9 dBFS for windows holding the sound; a
    # muted microphone's noise floor is about -90, digital silence the -120 floor.
    audio_rms_dbfs_min: float = Field(-70.0, description="audio_silent below this RMS (dBFS)")
    # No real recording has 0.1 % of samples at |x| >= 0.999; x10 gain clipped gives a median of 10 %.
    audio_clipped_frac_max: float = Field(0.01, ge=0.0, le=1.0, description="audio_clipped above this share")
    # Frames: mean luma 0..255 of the stored first frame. A covered lens gives <= 1.03; real photos at 15 %
    # exposure (night) >= 2.5; 4x overexposed real photos have a median of 248.
    frame_brightness_min: float = Field(2.0, description="frame_black below this mean luma")
    frame_brightness_max: float = Field(245.0, description="frame_white above this mean luma")
    # Variance of the Laplacian of the stored first frame's luma. It cannot tell a smooth real scene from a
    # mildly blurred one: real daylight photos score 6.9 and up (microscopy, the moon) and 100s for ordinary
    # scenes, real LLVIP visible images go down to ~51, while a sigma 3 px blur of textured photos scores
    # 1.7..21. So the default rejects only frames without detail: flat, fogged or far out of focus (a flat
    # frame through H.264 scores 0..0.6, black frames <= 0.24). Dim smooth scenes can score below it (real
    # microscopy/astronomy photos at 15 % exposure: 0.55..0.85).
    frame_sharpness_min: float = Field(1.0, ge=0.0, description="frame_blurred below this Laplacian variance")
    # Mean |luma difference| between a window's first and last frame. A camera repeating one picture gives
    # 0..0.040 under H.264 CRF 23 (median 0.006) and 0.028..0.036 under CRF 18 (the encoder keeps refining the
    # repeated picture); a fixed camera on a still real scene with sensor noise gives 0.030..0.45 (2 of 19
    # below this default). The two overlap: a stalled camera cannot be told from a perfectly still scene by
    # two frames, and the gate's rate bound on frame_frozen absorbs the few still scenes it rejects.
    frame_diff_min: float = Field(0.04, ge=0.0, description="frame_frozen below this mean luma difference")
    # Depth: share of non-zero (valid) pixels of the stored frame; the real Middlebury motorcycle map has 0.93.
    depth_valid_frac_min: float = Field(0.3, ge=0.0, le=1.0, description="depth_invalid below this valid share")
    # Thermal: max - min of the stored frame, in its own units (counts, centikelvin or 8-bit grey): a dead
    # sensor is constant or flickers by one count; real scenes span tens of grey levels or hundreds of counts.
    thermal_range_min: float = Field(2.0, ge=0.0, description="thermal_flat below this value range")
    # IMU: share of the stored window's steps that sit on a flat top at a channel's extreme.
    imu_saturated_frac_max: float = Field(0.05, ge=0.0, le=1.0, description="imu_saturated above this share")


@dataclass(frozen=True)
class FilterReject:
    """Why a filter rejected a modality or window: a reason code and the figure against its bound."""

    reason: RejectReason
    detail: str


def audio_filter(rms_dbfs: float, clipped_frac: float, t: FilterThresholds) -> FilterReject | None:
    """Silence first (a silent track is never clipped); figures from ``transforms.audio.audio_quality``."""
    if rms_dbfs < t.audio_rms_dbfs_min:
        return FilterReject(RejectReason.AUDIO_SILENT, f"audio RMS {rms_dbfs:.1f} dBFS < {t.audio_rms_dbfs_min:g} dBFS")
    if clipped_frac > t.audio_clipped_frac_max:
        return FilterReject(
            RejectReason.AUDIO_CLIPPED, f"{clipped_frac:.2%} of samples clipped > {t.audio_clipped_frac_max:.2%}"
        )
    return None


def frame_filter(brightness: float, sharpness: float, diff: float | None, t: FilterThresholds) -> FilterReject | None:
    """The paired image: black/white before blurred before frozen (a black frame is also flat and frozen).

    ``diff`` is None for still pairs (one image, nothing can freeze).
    """
    if brightness < t.frame_brightness_min:
        return FilterReject(RejectReason.FRAME_BLACK, f"mean luma {brightness:.1f} < {t.frame_brightness_min:g}")
    if brightness > t.frame_brightness_max:
        return FilterReject(RejectReason.FRAME_WHITE, f"mean luma {brightness:.1f} > {t.frame_brightness_max:g}")
    if sharpness < t.frame_sharpness_min:
        return FilterReject(
            RejectReason.FRAME_BLURRED, f"Laplacian variance {sharpness:.1f} < {t.frame_sharpness_min:g}"
        )
    if diff is not None and diff < t.frame_diff_min:
        return FilterReject(
            RejectReason.FRAME_FROZEN, f"first and last frame differ by {diff:.3f} < {t.frame_diff_min:g} (mean luma)"
        )
    return None


def depth_filter(valid_frac: float, t: FilterThresholds) -> FilterReject | None:
    if valid_frac < t.depth_valid_frac_min:
        return FilterReject(
            RejectReason.DEPTH_INVALID, f"{valid_frac:.1%} valid depth pixels < {t.depth_valid_frac_min:.0%}"
        )
    return None


def thermal_filter(value_min: float, value_max: float, t: FilterThresholds) -> FilterReject | None:
    spread = value_max - value_min
    if spread < t.thermal_range_min:
        return FilterReject(
            RejectReason.THERMAL_FLAT,
            f"thermal values span {spread:g} ({value_min:g}..{value_max:g}) < {t.thermal_range_min:g}",
        )
    return None


def imu_filter(saturated_frac: float, t: FilterThresholds) -> FilterReject | None:
    if saturated_frac > t.imu_saturated_frac_max:
        return FilterReject(
            RejectReason.IMU_SATURATED,
            f"{saturated_frac:.1%} of IMU steps on a flat top at full scale > {t.imu_saturated_frac_max:.0%}",
        )
    return None


# Flat-top detection: a saturated sensor repeats its full-scale reading; a live signal touches its peak for
# one instant. A run must last this many steps of the stored 400 Hz window (7.5 ms) to count.
_SAT_MIN_RUN = 3


def imu_saturated_frac(data: np.ndarray) -> float:
    """Share of time steps (0..1, max over channels) lying on a flat top at a channel's extreme.

    ``data``: the stored IMU window, float ``(channels, steps)`` (``6 x 2000`` in bindset). A step counts when
    it is part of a run of at least 3 identical values equal to the channel's window minimum or maximum.
    Full-scale ranges differ between sensors and settings (±2..±16 g, ±250..±2000 °/s), so the figure looks
    for the shape of clipping rather than a fixed value. Two cases are not saturation and give 0 for the
    channel: a constant channel (dead, not clipped), and a coarsely quantised quiet channel, whose runs of
    repeated readings occur at every level, not mostly at its extremes (more flat steps away from the
    extremes than at them).
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < _SAT_MIN_RUN:
        return 0.0
    worst = 0.0
    for ch in x:
        if not np.all(np.isfinite(ch)) or ch.min() == ch.max():
            continue
        starts = np.flatnonzero(np.concatenate(([True], ch[1:] != ch[:-1])))  # where a run of equal values begins
        lengths = np.diff(np.concatenate((starts, [ch.size])))
        flat = np.repeat(lengths >= _SAT_MIN_RUN, lengths)  # each step: is its run long enough
        at_extreme = flat & ((ch == ch.min()) | (ch == ch.max()))
        if np.count_nonzero(flat & ~at_extreme) > np.count_nonzero(at_extreme):
            continue
        worst = max(worst, float(at_extreme.mean()))
    return worst
