"""Per-sample quality filters (transforms/filters.py) and the thresholds file (filters + gate).

Every figure here is computed by the build's own functions on signals with known properties: a tone of a
known level, a textured image, a sine clipped at a known level.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from schemas.config import ConfigError
from schemas.errors import UserError
from schemas.expectations import QualityThresholds, Thresholds
from schemas.reasons import QUALITY_FILTER, RejectReason
from transforms import filters as F
from transforms.audio import WINDOW_SAMPLES, audio_quality
from transforms.config import BuildConfig
from transforms.images import depth_quality, frame_quality, luma, luma_diff, thermal_quality

T = F.FilterThresholds()


def _tone(dbfs: float, freq: float = 440.0) -> np.ndarray:
    """A 2 s sine at 16 kHz whose RMS is ``dbfs`` (peak = RMS * sqrt 2), shape (1, 32000)."""
    t = np.arange(WINDOW_SAMPLES) / 16000.0
    return (10 ** (dbfs / 20) * math.sqrt(2) * np.sin(2 * np.pi * freq * t))[None].astype(np.float32)


def _audio(x: np.ndarray) -> F.FilterReject | None:
    q = audio_quality(x)
    return F.audio_filter(q.rms_dbfs, q.clipped_frac, T)


def test_audio_filter_on_tones_of_known_level():
    assert audio_quality(_tone(-20.0)).rms_dbfs == pytest.approx(-20.0, abs=0.01)
    assert _audio(_tone(-20.0)) is None
    assert _audio(_tone(-65.0)) is None  # a quiet room is not silence
    silent = _audio(np.zeros((1, WINDOW_SAMPLES), np.float32))
    assert silent.reason is RejectReason.AUDIO_SILENT and "-120.0 dBFS < -70 dBFS" in silent.detail
    assert _audio(_tone(-80.0)).reason is RejectReason.AUDIO_SILENT
    # a -3 dBFS sine driven 10x (+20 dB) into full scale sits at the rails for most of each period
    clipped = np.clip(_tone(-3.0) * 10, -1, 1)
    q = audio_quality(clipped)
    assert q.clipped_frac > 0.5
    bad = _audio(clipped)
    assert bad.reason is RejectReason.AUDIO_CLIPPED and f"{q.clipped_frac:.2%}" in bad.detail
    # a loud sine peaking at 0.9 of full scale never reaches the rails
    assert _audio(_tone(-3.0 - 20 * math.log10(1 / 0.9))) is None


def _textured(seed: int = 0, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8), size[::-1],
                      interpolation=cv2.INTER_NEAREST)  # fmt: skip
    return np.clip(base.astype(np.int16) + rng.integers(-10, 11, base.shape), 0, 255).astype(np.uint8)


def _frames(first: np.ndarray, last: np.ndarray | None) -> F.FilterReject | None:
    q = frame_quality(first)
    diff = None if last is None else luma_diff(luma(first), luma(last))
    return F.frame_filter(q.brightness, q.sharpness, diff, T)


def test_frame_filter_each_reason():
    a, b = _textured(0), _textured(1)
    assert _frames(a, b) is None
    assert _frames(a, None) is None  # a still pair: nothing to freeze
    assert _frames(np.zeros_like(a), np.zeros_like(a)).reason is RejectReason.FRAME_BLACK  # black, not "frozen"
    assert _frames(np.full_like(a, 255), b).reason is RejectReason.FRAME_WHITE
    flat = np.full_like(a, 128)
    assert frame_quality(flat).sharpness == 0.0
    assert _frames(flat, b).reason is RejectReason.FRAME_BLURRED
    frozen = _frames(a, a.copy())
    assert frozen.reason is RejectReason.FRAME_FROZEN and "differ by 0.000" in frozen.detail
    # one grey level of sensor noise between two pictures of a still scene is not a frozen camera
    rng = np.random.default_rng(2)
    noisy = np.clip(a.astype(np.int16) + rng.integers(-1, 2, a.shape), 0, 255).astype(np.uint8)
    assert luma_diff(luma(a), luma(noisy)) > T.frame_diff_min
    assert _frames(a, noisy) is None


def test_dark_but_real_scene_passes():
    # a night scene: 15 % exposure of a textured picture with sensor noise keeps detail and brightness
    rng = np.random.default_rng(3)
    night = np.clip(_textured(0) * 0.15 + rng.normal(0, 2, (120, 160, 3)), 0, 255).astype(np.uint8)
    q = frame_quality(night)
    assert q.brightness < 25 and q.sharpness > 50
    assert _frames(night, _textured(1)) is None


def test_depth_thermal_filters():
    depth = np.full((48, 64), 1500, np.uint16)
    assert F.depth_filter(depth_quality(depth), T) is None
    depth[: int(0.9 * 48)] = 0
    bad = F.depth_filter(depth_quality(depth), T)
    assert bad.reason is RejectReason.DEPTH_INVALID and "10.4% valid" in bad.detail
    scene = (29000 + 10 * np.arange(64)[None].repeat(48, 0)).astype(np.uint16)
    q = thermal_quality(scene)
    assert F.thermal_filter(q.min, q.max, T) is None
    dead = np.full((48, 64), 29100, np.uint16)
    dead[0, 0] += 1  # a dead sensor's one count of flicker is still flat
    q = thermal_quality(dead)
    bad = F.thermal_filter(q.min, q.max, T)
    assert bad.reason is RejectReason.THERMAL_FLAT and "span 1 (29100..29101)" in bad.detail
    gray8 = np.full((48, 64), 7, np.uint8)
    assert F.thermal_filter(*(lambda q: (q.min, q.max))(thermal_quality(gray8)), T).reason is RejectReason.THERMAL_FLAT


def _imu(t: np.ndarray, amplitude: float = 1.0) -> np.ndarray:
    """A (6, n) IMU window at 400 Hz: gravity on z plus a 1.8 Hz sway (a walk) on every channel."""
    phase = np.arange(6)[:, None]
    x = amplitude * np.sin(2 * np.pi * 1.8 * t[None] + phase)
    x[2] += 9.81
    return x.astype(np.float32)


def test_imu_saturation_figure():
    t = np.arange(2000) / 400.0
    walk = _imu(t)
    assert F.imu_saturated_frac(walk) == 0.0
    assert F.imu_filter(0.0, T) is None
    # clipped at half its swing, a sine spends 2/3 of its time at the rails (|sin| > 1/2 for 2/3 of a period)
    med = np.median(walk, axis=1, keepdims=True)
    clipped = np.clip(walk, med - 0.5, med + 0.5).astype(np.float32)
    frac = F.imu_saturated_frac(clipped)
    assert frac == pytest.approx(2 / 3, abs=0.02)
    bad = F.imu_filter(frac, T)
    assert bad.reason is RejectReason.IMU_SATURATED and "of IMU steps on a flat top" in bad.detail
    # a dead (constant) channel is not saturated
    dead = walk.copy()
    dead[0] = 0.25
    assert F.imu_saturated_frac(dead) == 0.0
    # a quiet sensor quantised to a coarse LSB repeats readings at every level, not only at its extremes
    rng = np.random.default_rng(0)
    lsb = 16 * 9.81 / 32768
    rest = np.repeat(np.round((9.81 + rng.normal(0, 0.6 * lsb, (6, 1000))) / lsb) * lsb, 2, axis=1)
    assert F.imu_saturated_frac(rest) == 0.0


def test_every_filter_reason_is_a_quality_code():
    assert {
        RejectReason.AUDIO_SILENT, RejectReason.AUDIO_CLIPPED, RejectReason.FRAME_BLACK, RejectReason.FRAME_WHITE,
        RejectReason.FRAME_BLURRED, RejectReason.FRAME_FROZEN, RejectReason.DEPTH_INVALID,
        RejectReason.THERMAL_FLAT, RejectReason.IMU_SATURATED,
    } == QUALITY_FILTER  # fmt: skip


# ------------------------------------------------------------------------------------- thresholds config


def test_filter_thresholds_are_strict():
    with pytest.raises(ConfigError, match="frame_sharpnes_min: unknown key") as exc:
        F.FilterThresholds.from_dict({"frame_sharpnes_min": 1.0})
    assert isinstance(exc.value, UserError)  # the CLI's exit 2
    with pytest.raises(ConfigError, match=r"audio_rms_dbfs_min: input should be a valid number \(got '-60'\)"):
        F.FilterThresholds.from_dict({"audio_rms_dbfs_min": "-60"})
    with pytest.raises(ConfigError, match="depth_valid_frac_min"):
        F.FilterThresholds.from_dict({"depth_valid_frac_min": 1.5})
    assert F.FilterThresholds.from_dict({"frame_sharpness_min": 2}).frame_sharpness_min == 2.0  # int is lossless


def test_gate_thresholds_are_strict():
    with pytest.raises(ConfigError, match="max_reject_rat: unknown key"):
        QualityThresholds.from_dict({"max_reject_rat": 0.1})
    with pytest.raises(ConfigError, match="min_samples: input should be a valid integer"):
        QualityThresholds.from_dict({"min_samples": 64.5})
    with pytest.raises(ConfigError, match="unknown reject reason.*audio_silnt"):
        QualityThresholds.from_dict({"reason_rates": {"audio_silnt": 0.1}})
    with pytest.raises(ConfigError, match="rates must be within"):
        QualityThresholds.from_dict({"reason_rates": {"audio_silent": 2.0}})
    t = QualityThresholds.from_dict({"reason_rates": {"audio_silent": 0.1}, "max_reason_rate": 0.3})
    assert t.reason_rate("audio_silent") == 0.1 and t.reason_rate("frame_black") == 0.3
    # a recording's first and last clips reach past its IMU track by design: not bounded unless asked
    assert t.reason_rate("imu_out_of_range") == 1.0 and t.reason_rate("audio_out_of_range") == 1.0
    t = QualityThresholds.from_dict({"edge_reason_rate": 0.6, "reason_rates": {"audio_out_of_range": 0.2}})
    assert t.reason_rate("imu_out_of_range") == 0.6 and t.reason_rate("audio_out_of_range") == 0.2


def test_thresholds_file_json_and_yaml(tmp_path):
    js = tmp_path / "t.json"
    js.write_text(
        json.dumps({"filters": {"frame_sharpness_min": 5.0}, "gate": {"reason_rates": {"audio_silent": 0.2}}})
    )
    t = Thresholds.from_file(js)
    assert t.filters.frame_sharpness_min == 5.0 and t.filters.audio_rms_dbfs_min == T.audio_rms_dbfs_min
    assert t.gate.reason_rate("audio_silent") == 0.2
    assert QualityThresholds.from_file(js) == t.gate  # `bindset validate --thresholds` reads the gate part
    ym = tmp_path / "t.yaml"
    ym.write_text("gate:\n  max_reject_rate: 0.3\n")
    t = Thresholds.from_file(ym)
    assert t.gate.max_reject_rate == 0.3 and t.filters == F.FilterThresholds()
    bad = tmp_path / "bad.yaml"
    bad.write_text("filters:\n  frame_sharpness_min: '5'\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: filters.frame_sharpness_min: input should be a valid number"):
        Thresholds.from_file(bad)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"max_reject_rate": 0.3}))  # gate keys belong under "gate"
    with pytest.raises(ConfigError, match="max_reject_rate: unknown key"):
        Thresholds.from_file(flat)


def test_filters_are_part_of_the_build_config():
    cfg = BuildConfig.from_dict({"filters": {"frame_sharpness_min": 3.0}})
    assert cfg.filters.frame_sharpness_min == 3.0
    assert cfg.to_dict()["filters"]["frame_sharpness_min"] == 3.0  # the unit fingerprint hashes to_dict()
    assert BuildConfig().to_dict() != cfg.to_dict()
    assert BuildConfig.from_dict(cfg.to_dict()) == cfg  # a worker rebuilds it from the dict
    with pytest.raises(ConfigError, match="filters.frame_sharpnes_min: unknown key"):
        BuildConfig.from_dict({"filters": {"frame_sharpnes_min": 3.0}})
