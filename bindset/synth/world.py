"""The synthetic world: semantic classes that determine every modality at once.

A class fixes what the scene looks like, what it sounds like, its depth geometry, its heat pattern and
the motion an IMU feels. Models can only learn to pair modalities when they really co-vary, so every
renderer here takes the *session* time and the class active then; the writers convert each stream's own
clock into session time before asking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SceneClass:
    name: str
    caption: str
    # look
    background: tuple[int, int, int]
    foreground: tuple[int, int, int]
    shape: str  # circle | rect | triangle | stripes
    speed: float  # foreground motion, frame widths per second
    # sound
    f0_hz: float  # harmonic series fundamental (0: none)
    harmonics: int
    noise_band_hz: tuple[float, float]
    am_hz: float  # amplitude modulation rate
    chirp: bool  # frequency-swept bursts (birds)
    # depth (mm)
    floor_mm: float
    object_mm: float
    # heat (kelvin)
    ambient_k: float
    object_k: float
    # motion felt by the IMU
    step_hz: float  # periodic acceleration (walking, rocking, vibration)
    accel_amp: float  # m/s^2
    gyro_axis: int
    gyro_amp: float  # rad/s


CLASSES: tuple[SceneClass, ...] = (
    SceneClass(
        "campfire",
        "the crackle of a campfire at night",
        (25, 15, 40),
        (255, 120, 20),
        "circle",
        0.02,
        0.0,
        0,
        (800.0, 6000.0),
        7.0,
        False,
        3500,
        1200,
        283.0,
        560.0,  # below 655.35 K, the most a 16-bit centi-kelvin PNG holds (with flicker)
        0.0,
        0.05,
        2,
        0.02,
    ),
    SceneClass(
        "ocean",
        "waves rolling onto a beach",
        (20, 70, 150),
        (220, 240, 255),
        "stripes",
        0.15,
        0.0,
        0,
        (60.0, 700.0),
        0.4,
        False,
        9000,
        7000,
        290.0,
        286.0,
        0.35,
        0.8,
        0,
        0.4,
    ),
    SceneClass(
        "traffic",
        "cars and engines on a busy street",
        (110, 110, 115),
        (200, 30, 30),
        "rect",
        0.6,
        90.0,
        6,
        (100.0, 1500.0),
        0.0,
        False,
        7000,
        4500,
        295.0,
        330.0,
        12.0,
        0.6,
        1,
        0.05,
    ),
    SceneClass(
        "birdsong",
        "birds singing in a forest",
        (30, 110, 40),
        (240, 220, 60),
        "triangle",
        0.35,
        0.0,
        0,
        (2500.0, 6500.0),
        0.0,
        True,
        5000,
        2500,
        288.0,
        312.0,
        1.8,
        1.5,
        1,
        0.3,
    ),
    SceneClass(
        "machinery",
        "a humming machine in a workshop",
        (90, 80, 60),
        (60, 200, 220),
        "rect",
        0.05,
        220.0,
        3,
        (3000.0, 4000.0),
        25.0,
        False,
        2500,
        1500,
        300.0,
        360.0,
        45.0,
        0.3,
        0,
        0.02,
    ),
    SceneClass(
        "rain",
        "rain falling on a roof",
        (60, 60, 80),
        (150, 170, 200),
        "stripes",
        0.9,
        0.0,
        0,
        (4000.0, 12000.0),
        0.0,
        False,
        6000,
        4000,
        284.0,
        281.0,
        0.0,
        0.02,
        2,
        0.01,
    ),
    SceneClass(
        "running",
        "a person running with heavy footsteps",
        (200, 170, 120),
        (40, 40, 160),
        "circle",
        0.8,
        0.0,
        0,
        (80.0, 400.0),
        2.8,
        False,
        4000,
        1800,
        292.0,
        309.0,
        2.8,
        6.0,
        1,
        1.2,
    ),
    SceneClass(
        "speech",
        "two people talking in a quiet room",
        (200, 200, 190),
        (180, 90, 140),
        "triangle",
        0.08,
        140.0,
        10,
        (300.0, 3000.0),
        4.0,
        False,
        3000,
        1000,
        294.0,
        307.0,
        0.0,
        0.1,
        2,
        0.05,
    ),
)
CLASS_NAMES = tuple(c.name for c in CLASSES)


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    class_id: int


def plan_timeline(rng: np.random.Generator, duration_s: float, min_s: float = 3.0, max_s: float = 9.0) -> list[Segment]:
    """Class segments covering [0, duration); consecutive segments always differ in class.

    Short sessions get shorter segments so that every session shows at least two classes.
    """
    max_s = min(max_s, max(2.5, duration_s / 2))
    min_s = min(min_s, 0.6 * max_s)
    segments: list[Segment] = []
    t, prev = 0.0, -1
    while t < duration_s:
        length = float(rng.uniform(min_s, max_s))
        choices = [i for i in range(len(CLASSES)) if i != prev]
        cid = int(rng.choice(choices))
        end = min(duration_s, round(t + length, 3))
        segments.append(Segment(round(t, 3), end, cid))
        t, prev = end, cid
    return segments


def class_at(segments: list[Segment], t: np.ndarray | float) -> np.ndarray:
    """Class id at session time(s) t; times outside the timeline take the nearest segment."""
    starts = np.array([s.start_s for s in segments])
    ids = np.array([s.class_id for s in segments])
    idx = np.clip(np.searchsorted(starts, np.asarray(t, dtype=np.float64), side="right") - 1, 0, len(ids) - 1)
    return ids[idx]


# ---------------------------------------------------------------------------------------------- video


class FrameRenderer:
    """Renders RGB frames; coordinate grids are built once because frames are rendered by the thousand."""

    def __init__(self, width: int, height: int, seed: int):
        self.w, self.h = width, height
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.x, self.y = xx / width, yy / height
        rng = np.random.default_rng(seed)
        self.texture = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)

    def render(self, cls: SceneClass, t: float) -> np.ndarray:
        x, y = self.x, self.y
        bg = np.asarray(cls.background, np.float32)
        # vertical shading so frames are not flat (and have a measurable sharpness)
        img = bg[None, None, :] * (0.75 + 0.5 * (1 - y))[..., None] + self.texture
        fg = np.asarray(cls.foreground, np.float32)
        phase = t * cls.speed
        if cls.shape == "stripes":
            mask = (np.sin(2 * np.pi * (6 * y + phase)) > 0.3).astype(np.float32)
        else:
            cx = 0.5 + 0.35 * np.sin(2 * np.pi * phase)
            cy = 0.55 + 0.2 * np.cos(2 * np.pi * phase * 0.7)
            r = 0.18 + 0.03 * np.sin(2 * np.pi * t * 1.3)
            if cls.shape == "circle":
                mask = (((x - cx) * self.w / self.h) ** 2 + (y - cy) ** 2 < r * r).astype(np.float32)
            elif cls.shape == "rect":
                mask = ((np.abs(x - cx) < r * 1.2) & (np.abs(y - cy) < r * 0.6)).astype(np.float32)
            else:  # triangle pointing up
                mask = ((y - (cy - r) > 0) & (y < cy + r) & (np.abs(x - cx) < (y - (cy - r)) * 0.6)).astype(np.float32)
        if cls.name == "campfire":  # flicker
            fg = fg * (0.8 + 0.2 * np.sin(2 * np.pi * 9 * t))
        img = img * (1 - mask[..., None]) + fg[None, None, :] * mask[..., None]
        return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- audio


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.std(out) + 1e-9)


def render_audio(segments: list[Segment], t_session: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Mono signal in [-1, 1] at the given session times (one per output sample)."""
    cid = class_at(segments, t_session)
    out = np.zeros(t_session.shape[0], np.float64)
    for c in np.unique(cid):
        cls = CLASSES[int(c)]
        m = cid == c
        t = t_session[m]
        sig = 0.5 * _band_noise(rng, t.shape[0], sr, *cls.noise_band_hz)
        if cls.f0_hz > 0:
            for k in range(1, cls.harmonics + 1):
                sig += (0.8 / k) * np.sin(2 * np.pi * cls.f0_hz * k * t)
        if cls.chirp:
            # 120 ms upward sweeps, four per second
            local = np.mod(t, 0.25)
            sweep = np.sin(2 * np.pi * (3000 * local + 8000 * local**2))
            sig += 1.5 * sweep * (local < 0.12)
        if cls.am_hz > 0:
            sig *= 0.55 + 0.45 * np.sin(2 * np.pi * cls.am_hz * t)
        out[m] = sig
    return (0.18 * out).clip(-1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- depth


def render_depth(cls: SceneClass, t: float, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Depth in mm (uint16), 0 where the sensor saw nothing."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = xx / width, yy / height
    # floor plane: near at the bottom of the image, far at the top
    depth = cls.floor_mm * (0.6 + 0.8 * (1 - y))
    cx = 0.5 + 0.3 * np.sin(2 * np.pi * t * cls.speed)
    if cls.shape == "stripes":
        obj = np.sin(2 * np.pi * (5 * y + t * cls.speed)) > 0.5
    elif cls.shape == "rect":
        obj = (np.abs(x - cx) < 0.22) & (np.abs(y - 0.55) < 0.18)
    elif cls.shape == "triangle":
        obj = (y > 0.3) & (np.abs(x - cx) < (y - 0.3) * 0.5)
    else:
        obj = (x - cx) ** 2 + (y - 0.6) ** 2 < 0.04
    depth = np.where(obj, cls.object_mm * (1 + 0.05 * x), depth)
    holes = rng.random((height, width)) < 0.02  # speckle dropouts, as on real ToF/stereo sensors
    depth[holes] = 0
    return depth.clip(0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------- thermal


def render_thermal(cls: SceneClass, t: float, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Temperature in centi-kelvin (uint16)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = xx / width, yy / height
    temp = cls.ambient_k + 2.0 * (y - 0.5)
    cx = 0.5 + 0.3 * np.sin(2 * np.pi * t * cls.speed)
    blob = np.exp(-((x - cx) ** 2 + (y - 0.6) ** 2) / 0.01)
    flicker = 1.0 + (0.15 * np.sin(2 * np.pi * 7 * t) if cls.name == "campfire" else 0.0)
    temp = temp + (cls.object_k - cls.ambient_k) * blob * flicker
    temp = temp + rng.normal(0, 0.05, size=temp.shape)  # sensor noise (~NETD 50 mK)
    return (temp * 100).clip(0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------- IMU


def render_imu(segments: list[Segment], t_session: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(6, N) [acc_x, acc_y, acc_z, gyro_x, gyro_y, gyro_z] in m/s^2 and rad/s at the given times."""
    n = t_session.shape[0]
    out = np.zeros((6, n), np.float64)
    out[2] = 9.80665  # gravity on z: the device is held upright
    cid = class_at(segments, t_session)
    for c in np.unique(cid):
        cls = CLASSES[int(c)]
        m = cid == c
        t = t_session[m]
        if cls.step_hz > 0:
            wave = np.sin(2 * np.pi * cls.step_hz * t)
            out[1, m] += cls.accel_amp * wave
            out[2, m] += 0.5 * cls.accel_amp * np.abs(wave)
            out[3 + cls.gyro_axis, m] += cls.gyro_amp * np.cos(2 * np.pi * cls.step_hz * t)
        else:
            out[0, m] += cls.accel_amp * rng.standard_normal(t.shape[0])
            out[3 + cls.gyro_axis, m] += cls.gyro_amp * rng.standard_normal(t.shape[0])
    out += rng.normal(0, 0.02, size=out.shape)  # sensor noise
    return out


# ---------------------------------------------------------------------------------------------- impacts
# Shared events for clock synchronisation: a knock or a drop that every sensor registers at the same session
# time (a flash and a jolt in the picture, a thump, a dip in depth, a warm puff, a jerk of the IMU). Class
# changes are shared events too, but a few per session; impacts add sharp ones, as real scenes have.

IMPACT_DECAY_S = 0.06  # exponential decay of every impact's effect


def plan_impacts(rng: np.random.Generator, duration_s: float, per_minute: float) -> np.ndarray:
    """Sorted impact times (session seconds) in [0.5, duration - 0.5), at least 0.6 s apart; none at 0 per minute."""
    if per_minute <= 0 or duration_s < 1.5:
        return np.zeros(0)
    n = max(1, int(round(per_minute * duration_s / 60.0)))
    times = np.sort(rng.uniform(0.5, duration_s - 0.5, n))
    keep = np.concatenate([[True], np.diff(times) >= 0.6])
    return np.round(times[keep], 4)


def impact_envelope(impacts: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Sum over impacts of ``exp(-(t - e) / IMPACT_DECAY_S)`` for ``t >= e`` (0 before): a sharp onset."""
    t = np.asarray(t, np.float64)
    out = np.zeros_like(t)
    for e in impacts:  # each impact touches only the samples of its 10 decay times (t may be millions long)
        m = (t >= e) & (t < e + 10 * IMPACT_DECAY_S)
        out[m] += np.exp(-(t[m] - e) / IMPACT_DECAY_S)
    return out
