"""Calibrate the per-sample quality filters (transforms/filters.py) on real media and broken versions of them.

    pip install --target /tmp/calib scikit-image             # real photos + a real stereo disparity map
    apt-get download alsa-utils sound-theme-freedesktop && dpkg-deb -x <each .deb> /tmp/calib/deb   # real sounds
    PYTHONPATH=/tmp/calib .venv/bin/python benchmarks/calibrate_quality.py \
        --sounds /tmp/calib/deb/usr/share/sounds --out benchmarks/results/calibrate_quality.json

Every figure is measured the way the build measures it, on what the build stores:

- frames: realistic 2 s clips made by panning and zooming over each real photo (15 fps, H.264 CRF 23 through
  PyAV, decoded again, shrunk to the stored size); brightness and sharpness of the window's first frame, and
  the mean luma difference of its first and last frame. "night" is the same photo at 15 % exposure with
  sensor noise (LLVIP-like visible frames), "still" a fixed camera on the photo with sensor noise. Broken:
  black (lens covered: 1 % exposure + noise), white (4x overexposed), blurred (Gaussian sigma 2, 3, 6 px,
  a defocused lens), frozen (one picture repeated by the camera).
- audio: 2 s windows over every real recording (resampled to 16 kHz, channel 0), RMS dBFS and share of
  samples at full scale. Broken: digital silence, a muted microphone (-90 dBFS noise floor), clipping
  (x10 and x30 gain clipped at full scale).
- depth: the real Middlebury disparity of scikit-image's ``stereo_motorcycle`` turned into millimetres;
  broken: 90 % dropout.
- thermal: no real thermal images are available offline; the real grey photos stand in for the value
  spread of a scene (8-bit and scaled to 16-bit counts); broken: a dead sensor (constant, and constant with
  one count of flicker).

Prints (and writes with --out) per figure the min/percentiles/max over good and broken, and the current
default threshold; the README's calibration table is this output, by hand.
"""

from __future__ import annotations

import argparse
import fractions
import io
import sys
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.output import emit  # noqa: E402
from transforms.audio import TARGET_SR, WINDOW_SAMPLES, audio_quality, frame_to_float  # noqa: E402
from transforms.filters import FilterThresholds, imu_saturated_frac  # noqa: E402
from transforms.images import (  # noqa: E402
    depth_quality,
    luma,
    luma_diff,
    luma_quality,
    shrink_to_short_side,
    thermal_quality,  # noqa: E402
)

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "hubble_deep_field",
          "immunohistochemistry", "retina", "brick", "grass", "gravel", "cell", "microaneurysms", "clock")  # fmt: skip
FPS = 15
CLIP_S = 2.0
SIZE = (320, 240)  # a webcam-sized frame: the stored size (short side 320 at most) keeps it as is


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in PHOTOS:
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # a fetcher that would need the network: skipped
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    left, _right, _disp = data.stereo_motorcycle()
    out["motorcycle_left"] = np.asarray(left)[..., :3].astype(np.uint8)
    return out


def _pan_zoom(img: np.ndarray, n: int, still: bool) -> list[np.ndarray]:
    """n frames of SIZE from a camera panning and zooming slowly over img (or fixed, with still)."""
    h, w = img.shape[:2]
    frames = []
    for i in range(n):
        f = 0.0 if still else i / max(n - 1, 1)
        zoom = 0.8 - 0.15 * f  # crop = zoom * the largest SIZE-shaped box in the photo
        cw = int(min(w, h * SIZE[0] / SIZE[1]) * zoom)
        ch = int(cw * SIZE[1] / SIZE[0])
        x0 = int((w - cw) * (0.3 + 0.4 * f))
        y0 = int((h - ch) * (0.4 + 0.2 * f))
        crop = img[y0 : y0 + ch, x0 : x0 + cw]
        frames.append(cv2.resize(crop, SIZE, interpolation=cv2.INTER_AREA))
    return frames


def _noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) + rng.normal(0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def _h264_roundtrip(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Encode as a camera would (H.264, CRF 23) and decode again."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for i, rgb in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            fr.pts, fr.time_base = i, fractions.Fraction(1, FPS)
            out.mux(s.encode(fr))
        out.mux(s.encode(None))
    buf.seek(0)
    with av.open(buf) as inp:
        return [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]


def _frame_figures(frames: list[np.ndarray]) -> dict[str, float]:
    decoded = _h264_roundtrip(frames)
    first, last = (luma(shrink_to_short_side(f, 320)) for f in (decoded[0], decoded[-1]))
    q = luma_quality(first)
    return {"brightness": q.brightness, "sharpness": q.sharpness, "diff": luma_diff(first, last)}


def measure_frames(photos: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    rng = np.random.default_rng(0)
    n = int(FPS * CLIP_S)
    variants = {
        "good": lambda fr: fr,
        "good_night": lambda fr: [_noise(f * 0.15, 2.0, rng) for f in fr],
        "good_still_noisy": None,  # built from a fixed camera below
        "black": lambda fr: [_noise(f * 0.01, 1.0, rng) for f in fr],
        "white": lambda fr: [np.clip(f.astype(np.float32) * 4, 0, 255).astype(np.uint8) for f in fr],
        "blurred_sigma2": lambda fr: [cv2.GaussianBlur(f, (0, 0), 2.0) for f in fr],
        "blurred_sigma3": lambda fr: [cv2.GaussianBlur(f, (0, 0), 3.0) for f in fr],
        "blurred_sigma6": lambda fr: [cv2.GaussianBlur(f, (0, 0), 6.0) for f in fr],
        "frozen": lambda fr: [fr[0]] * len(fr),
    }
    out: dict[str, dict[str, dict[str, float]]] = {v: {} for v in variants}
    for name, img in photos.items():
        moving = _pan_zoom(img, n, still=False)
        fixed = _pan_zoom(img, n, still=True)
        for v, fn in variants.items():
            frames = [_noise(f, 2.0, rng) for f in fixed] if fn is None else fn(moving)
            out[v][name] = _frame_figures(frames)
    return out


def _decode_audio(path: Path) -> np.ndarray:
    """Channel 0 at 16 kHz, float in [-1, 1]."""
    import torch
    import torchaudio.functional as AF

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        sr = s.codec_context.sample_rate
        x = np.concatenate([frame_to_float(f)[:1] for f in c.decode(s)], axis=1)
    return AF.resample(torch.from_numpy(x), sr, TARGET_SR).numpy()


def measure_audio(sound_dirs: list[Path]) -> dict[str, dict[str, dict[str, float]]]:
    files = sorted(p for d in sound_dirs for p in d.rglob("*") if p.suffix in (".wav", ".oga", ".ogg"))
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, dict[str, float]]] = {"good": {}, "silent": {}, "muted_mic": {}, "clipped_x10": {},
                                                   "clipped_x30": {}}  # fmt: skip
    for p in files:
        x = _decode_audio(p)
        # a 2 s window, the sound in it as recorded (zero-padded when shorter, as a window at a track's end)
        w = np.zeros((1, WINDOW_SAMPLES), np.float32)
        w[:, : min(x.shape[1], WINDOW_SAMPLES)] = x[:, :WINDOW_SAMPLES]
        name = f"{p.parent.name}/{p.name}"
        muted = rng.normal(0, 10 ** (-90 / 20), w.shape).astype(np.float32)
        for v, y in (("good", w), ("silent", np.zeros_like(w)), ("muted_mic", muted),
                     ("clipped_x10", np.clip(w * 10, -1, 1)), ("clipped_x30", np.clip(w * 30, -1, 1))):  # fmt: skip
            q = audio_quality(y)
            out[v][name] = {"rms_dbfs": q.rms_dbfs, "clipped_frac": q.clipped_frac}
    return out


def measure_depth() -> dict[str, dict[str, dict[str, float]]]:
    from skimage import data

    _l, _r, disp = data.stereo_motorcycle()
    disp = np.asarray(disp, np.float64)
    ok = np.isfinite(disp) & (disp > 0)
    # Middlebury 2014 motorcycle: f ~ 3979 px, baseline 193 mm (calib.txt) at full size; the bundled map is
    # at a reduced size, so the absolute scale is approximate; validity is what the figure measures.
    mm = np.zeros(disp.shape, np.uint16)
    mm[ok] = np.clip(3979.0 * 193.0 / disp[ok], 1, 65535).astype(np.uint16)
    broken = mm.copy()
    broken[: int(0.9 * broken.shape[0])] = 0
    return {"good": {"motorcycle_disp": {"valid_frac": depth_quality(mm)}},
            "dropout_90pct": {"motorcycle_disp": {"valid_frac": depth_quality(broken)}}}  # fmt: skip


def measure_thermal(photos: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, dict[str, float]]] = {
        "good_gray8": {},
        "good_counts16": {},
        "dead": {},
        "dead_flicker": {},
    }
    for name, img in photos.items():
        g = luma(img)
        counts = (7000 + g.astype(np.int32) * 8).astype(np.uint16)  # ~2 K of scene spread on a 16-bit sensor
        dead = np.full_like(counts, 7400)
        flicker = (dead + rng.integers(0, 2, dead.shape)).astype(np.uint16)
        for v, a in (("good_gray8", g), ("good_counts16", counts), ("dead", dead), ("dead_flicker", flicker)):
            q = thermal_quality(a)
            out[v][name] = {"range": q.max - q.min}
    return out


def measure_imu() -> dict[str, dict[str, dict[str, float]]]:
    """No real IMU recording is available offline: a walking-like signal at 400 Hz, quantised as a 16-bit
    ±16 g / ±2000 dps sensor, at rest and moving; broken: clipped at 20 % of its swing."""
    rng = np.random.default_rng(0)
    t = np.arange(2000) / 400.0
    lsb = np.array([16 * 9.81 / 32768] * 3 + [np.deg2rad(2000) / 32768] * 3)[:, None]
    rest = np.array([0, 0, 9.81, 0, 0, 0])[:, None] + rng.normal(0, 0.02, (6, 2000))
    walk = rest + np.array([2.0, 1.0, 3.0, 0.5, 0.8, 0.3])[:, None] * np.sin(
        2 * np.pi * 1.8 * t + np.arange(6)[:, None]
    )
    out: dict[str, dict[str, dict[str, float]]] = {"good": {}, "saturated": {}}
    for name, x in (("rest", rest), ("walk", walk)):
        q = np.round(x / lsb) * lsb
        out["good"][name] = {"saturated_frac": imu_saturated_frac(q)}
        med = np.median(q, axis=1, keepdims=True)
        hi = med + 0.2 * (q.max(axis=1, keepdims=True) - med)
        lo = med - 0.2 * (med - q.min(axis=1, keepdims=True))
        out["saturated"][name] = {"saturated_frac": imu_saturated_frac(np.clip(q, lo, hi))}
    return out


def _summary(groups: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and figure: min, 5th percentile, median, max and n."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for v, items in groups.items():
        figures = sorted({k for d in items.values() for k in d})
        out[v] = {}
        for f in figures:
            vals = np.array([d[f] for d in items.values()])
            out[v][f] = {"min": float(vals.min()), "p05": float(np.percentile(vals, 5)),
                         "median": float(np.median(vals)), "max": float(vals.max()), "n": len(vals)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sounds", type=Path, nargs="*", default=[Path("/usr/share/sounds")],
                    help="folders of real recordings (.wav/.oga)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--per-item", action="store_true", help="list every file's figures, not only the summary")
    args = ap.parse_args(argv)
    photos = _photos()
    raw = {
        "frames": measure_frames(photos),
        "audio": measure_audio(args.sounds),
        "depth": measure_depth(),
        "thermal": measure_thermal(photos),
        "imu": measure_imu(),
    }
    results = {
        "defaults": FilterThresholds().to_dict(),
        "real_media": {
            "photos": sorted(photos),
            "sounds": sorted({k for d in raw["audio"].values() for k in d}),
        },  # fmt: skip
        "summary": {kind: _summary(groups) for kind, groups in raw.items()},
    }
    if args.per_item:
        results["items"] = raw
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
