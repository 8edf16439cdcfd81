"""`bindset synth`: realistic synthetic captures, with ground truth, in every input layout.

    bindset synth RAW/ --sessions 8 --seconds 30 --seed 0 --layout captures

Every stream runs on its own clock (device epochs, offsets of tens to hundreds of ms, drift in ppm);
the captures manifest states the clocks, and the ground truth goes to ``RAW/_truth/`` (the pipeline
never reads folders starting with ``_``). The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from bindset.synth import media
from bindset.synth.world import (
    CLASSES,
    FrameRenderer,
    Segment,
    class_at,
    impact_envelope,
    plan_impacts,
    plan_timeline,
    render_audio,
    render_depth,
    render_imu,
    render_thermal,
)
from schemas.config import ConfigError
from schemas.manifest import SessionManifest

LAYOUTS = ("captures", "videos", "ego4d", "sunrgbd", "llvip")
TRUTH_DIR = "_truth"
AUDIO_RATE = 48000
DEPTH_FPS = 15.0
THERMAL_FPS = 8.7
IMU_HZ = 200.0
CLOCK_MODES = ("exact", "coarse", "wrong")
SYNC_STREAMS = ("audio", "depth", "thermal", "imu")  # every stream but the reference video
IMU_COLUMNS = [
    "component_idx",
    "component_timestamp_ms",
    "canonical_timestamp_ms",
    "gyro_x",
    "gyro_y",
    "gyro_z",
    "accl_x",
    "accl_y",
    "accl_z",
]


@dataclass(frozen=True)
class SynthConfig:
    sessions: int = 8
    seconds: float = 30.0
    seed: int = 0
    layout: str = "captures"
    width: int = 320
    height: int = 240
    depth_size: tuple[int, int] = (224, 168)
    thermal_size: tuple[int, int] = (160, 120)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Benchmark-scale inputs (hours of 720p) need a faster path; the defaults keep files byte-identical.
    render_scale: int = 1  # render frames at 1/scale and upscale
    encoder_preset: str = "veryfast"
    encoder_threads: int = 1  # 0 = all cores (output then depends on the core count)
    # Clock synchronisation ground truth (the defaults write today's files byte for byte):
    clocks: str = "exact"  # what the captures manifests declare: exact | coarse | wrong (CLOCK_MODES)
    impacts_per_minute: float = 0.0  # shared sharp events (world.plan_impacts) every stream registers
    long_drift: bool = False  # depth, thermal, IMU (and a separate audio file) drift by ±20..100 ppm


@dataclass(frozen=True)
class TrueClock:
    """offset_s and drift_ppm in the manifest's convention: t_session = t*(1+ppm*1e-6) + offset_s."""

    offset_s: float
    drift_ppm: float = 0.0

    def to_session(self, t):
        return np.asarray(t, np.float64) * (1 + self.drift_ppm * 1e-6) + self.offset_s

    def to_stream(self, t):
        return (np.asarray(t, np.float64) - self.offset_s) / (1 + self.drift_ppm * 1e-6)


@dataclass(frozen=True)
class SessionPlan:
    index: int
    session_id: str
    seconds: float
    segments: list[Segment]
    fps_mode: str  # "30", "29.97" or "vfr"
    separate_audio: bool
    imu_units: tuple[str, str]
    imu_canonical: bool
    clocks: dict[str, TrueClock]
    declared: dict[str, TrueClock] | None = None  # what the manifest says when it is not the truth
    impacts: tuple[float, ...] = ()  # session seconds of shared impacts


def session_id(seed: int, index: int) -> str:
    return f"s{seed:03d}_{index:03d}"


def plan_session(cfg: SynthConfig, index: int) -> SessionPlan:
    rng = np.random.default_rng([cfg.seed, index, 1])
    realistic = cfg.layout in ("captures",)

    def device(epoch_lo: float, drift: float) -> TrueClock:
        # a device clock that started `epoch` seconds before the session, plus a real offset error
        epoch = float(rng.uniform(epoch_lo, epoch_lo * 10))
        drift_ppm = round(float(rng.uniform(-drift, drift)), 2)
        delta = float(rng.uniform(-0.3, 0.3))
        return TrueClock(round(delta - epoch * (1 + drift_ppm * 1e-6), 6), drift_ppm)

    video_off = round(float(rng.uniform(0.02, 0.25)), 6) if realistic else 0.0
    audio_off = round(video_off + float(rng.choice([-1, 1]) * rng.uniform(0.02, 0.2)), 6) if realistic else 0.0
    separate_audio = realistic and index == 3
    clocks = {
        "video": TrueClock(video_off),
        "audio": TrueClock(audio_off, round(float(rng.uniform(-20, 20)), 2) if separate_audio else 0.0),
        "depth": device(50.0, 30.0),
        "thermal": device(50.0, 80.0),
        "imu": device(100.0, 50.0) if realistic else TrueClock(0.0),
    }
    segments = plan_timeline(rng, cfg.seconds)
    # Everything below draws from generators of its own, so that the defaults leave the files above unchanged.
    if cfg.long_drift:
        clocks = _long_drift(clocks, separate_audio, np.random.default_rng([cfg.seed, index, 11]))
    impacts = plan_impacts(np.random.default_rng([cfg.seed, index, 10]), cfg.seconds, cfg.impacts_per_minute)
    return SessionPlan(
        index=index,
        session_id=session_id(cfg.seed, index),
        seconds=cfg.seconds,
        segments=segments,
        fps_mode={1: "29.97", 2: "vfr"}.get(index, "30"),
        separate_audio=separate_audio,
        imu_units=("g", "deg/s") if (realistic and index % 2 == 1) else ("m/s^2", "rad/s"),
        imu_canonical=index != 2,
        clocks=clocks,
        declared=declared_clocks(clocks, cfg.clocks, np.random.default_rng([cfg.seed, index, 9])),
        impacts=tuple(float(e) for e in impacts),
    )


def _long_drift(clocks: dict[str, TrueClock], separate_audio: bool, rng: np.random.Generator) -> dict:
    """Drifts of ±20..100 ppm (cheap device oscillators) on every clock but the video's (and its audio's)."""
    out = dict(clocks)
    for name in ("depth", "thermal", "imu") + (("audio",) if separate_audio else ()):
        ppm = round(float(rng.choice([-1, 1]) * rng.uniform(20, 100)), 2)
        out[name] = TrueClock(clocks[name].offset_s, ppm)
    return out


def declared_clocks(clocks: dict[str, TrueClock], mode: str, rng: np.random.Generator) -> dict | None:
    """The clocks a manifest declares under ``--clocks`` (None: the truth, ``exact``).

    ``coarse``: every stream but the video off by up to ±1.5 s and no drift declared (a rig synced by wall
    clock). ``wrong``: one to three of the other streams off by 0.2..1.5 s (either sign), the rest exact.
    """
    if mode == "exact":
        return None
    if mode not in CLOCK_MODES:
        raise ConfigError(f"--clocks: unknown mode {mode!r}; choose one of {', '.join(CLOCK_MODES)}")
    out = dict(clocks)
    if mode == "coarse":
        for name in SYNC_STREAMS:
            out[name] = TrueClock(round(clocks[name].offset_s + float(rng.uniform(-1.5, 1.5)), 6), 0.0)
        return out
    wrong = rng.choice(len(SYNC_STREAMS), size=int(rng.integers(1, 4)), replace=False)
    for k in sorted(int(i) for i in wrong):
        name = SYNC_STREAMS[k]
        err = float(rng.choice([-1, 1]) * rng.uniform(0.2, 1.5))
        out[name] = TrueClock(round(clocks[name].offset_s + err, 6), clocks[name].drift_ppm)
    return out


# ------------------------------------------------------------------------------------ stream writers


def _video_timing(plan: SessionPlan, rng: np.random.Generator) -> media.VideoTiming:
    span = plan.seconds - plan.clocks["video"].offset_s
    if plan.fps_mode == "vfr":
        return media.variable_timing(rng, span)
    rate = Fraction(30000, 1001) if plan.fps_mode == "29.97" else Fraction(30)
    return media.constant_timing(rate, span)


def _audio(plan: SessionPlan, rng: np.random.Generator) -> np.ndarray:
    clock = plan.clocks["audio"]
    n = int(np.floor(float(clock.to_stream(plan.seconds)) * AUDIO_RATE))
    t = clock.to_session(np.arange(n) / AUDIO_RATE)
    mono = render_audio(plan.segments, t, AUDIO_RATE, rng)
    if plan.impacts:  # a thump: a decaying noise burst
        thump = np.random.default_rng([plan.index, 12]).standard_normal(n)
        mono = np.clip(mono + 0.6 * impact_envelope(np.asarray(plan.impacts), t) * thump, -1, 1).astype(np.float32)
    # stereo with a little decorrelation, so "first" and "mean" channel modes really differ
    right = 0.8 * mono + 0.01 * rng.standard_normal(n).astype(np.float32)
    return np.stack([mono, right]).astype(np.float32)


def _write_video(plan: SessionPlan, cfg: SynthConfig, path: Path, with_audio: bool) -> dict:
    rng = np.random.default_rng([cfg.seed, plan.index, 2])
    scale = max(1, cfg.render_scale)
    renderer = FrameRenderer(cfg.width // scale, cfg.height // scale, seed=plan.index)
    timing = _video_timing(plan, rng)
    vclock = plan.clocks["video"]
    seg = plan.segments

    def render(pts_s: float) -> np.ndarray:
        t = float(vclock.to_session(pts_s))
        frame = renderer.render(CLASSES[int(class_at(seg, t))], t)
        if plan.impacts:  # a flash: the picture whitens for a few frames
            flash = 110.0 * min(1.0, float(impact_envelope(np.asarray(plan.impacts), t)))
            frame = np.clip(frame.astype(np.float32) + flash, 0, 255).astype(np.uint8)
        if scale > 1:
            frame = cv2.resize(frame, (cfg.width, cfg.height), interpolation=cv2.INTER_LINEAR)
        return frame

    audio = _audio(plan, rng) if with_audio else None
    x264 = {"preset": cfg.encoder_preset, "threads": str(cfg.encoder_threads)}
    media.write_mp4(path, timing, render, (cfg.width, cfg.height), audio, AUDIO_RATE, x264)
    return {
        "frames": len(timing.pts_s),
        "fps_mode": plan.fps_mode,
        "audio_samples": 0 if audio is None else audio.shape[1],
    }


def _frame_times(plan: SessionPlan, name: str, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Device timestamps (seconds) of a frame stream covering the session, with ±1 ms capture jitter."""
    clock = plan.clocks[name]
    start, end = float(clock.to_stream(0.0)), float(clock.to_stream(plan.seconds))
    n = int(np.ceil((end - start) * fps))
    return start + np.arange(n) / fps + rng.uniform(-0.001, 0.001, n)


def _write_frames(plan, cfg, folder: Path, name: str, fps: float, size, render) -> dict:
    rng = np.random.default_rng([cfg.seed, plan.index, 3 if name == "depth" else 4])
    times = _frame_times(plan, name, fps, rng)
    frames_dir = folder / name
    frames_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, t_dev in enumerate(times):
        t = float(plan.clocks[name].to_session(t_dev))
        cls = CLASSES[int(class_at(plan.segments, t))]
        fname = f"{k:06d}.png"
        img = render(cls, t, size[0], size[1], rng)
        if plan.impacts:  # everything jolts nearer (depth) or a warm puff passes (thermal, +15 K)
            env = min(1.0, float(impact_envelope(np.asarray(plan.impacts), t)))
            if name == "depth":
                img = (img.astype(np.float32) * (1 - 0.3 * env)).astype(np.uint16)
            else:
                img = np.clip(img.astype(np.float32) + 1500 * env, 0, 65535).astype(np.uint16)
        (frames_dir / fname).write_bytes(media.png_bytes(img))
        rows.append((fname, f"{t_dev * 1000:.3f}"))
    media.write_csv(folder / f"{name}_timestamps.csv", ["file", "timestamp"], rows)
    return {"frames": len(rows)}


def _imu_rows(plan: SessionPlan, cfg: SynthConfig, video_aligned: bool) -> list[tuple]:
    rng = np.random.default_rng([cfg.seed, plan.index, 5])
    clock = plan.clocks["imu"]
    start, end = float(clock.to_stream(0.0)), float(clock.to_stream(plan.seconds))
    n = int(np.ceil((end - start) * IMU_HZ))
    t_dev = start + np.arange(n) / IMU_HZ + rng.normal(0, 0.0003, n)  # sampling jitter
    keep = rng.random(n) > 0.004  # a few dropped samples
    t_dev = t_dev[keep]
    data = render_imu(plan.segments, clock.to_session(t_dev), rng)
    if plan.impacts:  # a jerk on every axis
        env = impact_envelope(np.asarray(plan.impacts), clock.to_session(t_dev))
        data = data + env[None, :] * np.array([25.0, 25.0, 25.0, 3.0, 3.0, 3.0])[:, None]
    acc, gyr = data[:3], data[3:]
    if plan.imu_units[0] == "g":
        acc = acc / 9.80665
    if plan.imu_units[1] == "deg/s":
        gyr = np.degrees(gyr)
    canonical = clock.to_session(t_dev) - plan.clocks["video"].offset_s  # Ego4D: aligned to the video
    rows = []
    for i in range(t_dev.shape[0]):
        can = f"{canonical[i] * 1000:.3f}" if (video_aligned and plan.imu_canonical) else ""
        rows.append(
            (i, f"{t_dev[i] * 1000:.3f}", can, *(f"{v:.6f}" for v in gyr[:, i]), *(f"{v:.6f}" for v in acc[:, i]))
        )
    return rows


# ------------------------------------------------------------------------------------------ layouts


def _truth(plan: SessionPlan, layout: str, **files) -> dict:
    truth = {
        "session_id": plan.session_id,
        "layout": layout,
        "seconds": plan.seconds,
        "segments": [
            {"start_s": s.start_s, "end_s": s.end_s, "label": CLASSES[s.class_id].name} for s in plan.segments
        ],
        "clocks": {k: asdict(v) for k, v in plan.clocks.items()},
        "fps_mode": plan.fps_mode,
        "files": files,
    }
    if plan.declared is not None:  # keys only when not the defaults: exact truth files stay byte-identical
        truth["declared_clocks"] = {k: asdict(v) for k, v in plan.declared.items()}
    if plan.impacts:
        truth["impacts_s"] = list(plan.impacts)
    return truth


def _manifest(plan: SessionPlan, cfg: SynthConfig) -> dict:
    c = plan.declared or plan.clocks

    def clock(name):
        return {"offset_s": c[name].offset_s, "drift_ppm": c[name].drift_ppm}

    fx = cfg.depth_size[0] * 0.9
    streams = {
        "video": {"path": "video.mp4", "clock": clock("video")},
        "audio": (
            {"track": "file", "path": "audio.wav", "clock": clock("audio")}
            if plan.separate_audio
            else {"track": "video", "clock": clock("audio")}
        ),
        "depth": {
            "frames": "depth",
            "timestamps": {"source": "csv", "path": "depth_timestamps.csv", "unit": "ms"},
            "clock": clock("depth"),
            "units": "mm",
            "intrinsics": {
                "fx": fx,
                "fy": fx,
                "cx": cfg.depth_size[0] / 2,
                "cy": cfg.depth_size[1] / 2,
                "baseline_m": 0.075,
            },
        },
        "thermal": {
            "frames": "thermal",
            "timestamps": {"source": "csv", "path": "thermal_timestamps.csv", "unit": "ms"},
            "clock": clock("thermal"),
            "units": "centikelvin",
        },
        "imu": {
            "path": "imu.csv",
            "clock": clock("imu"),
            "units": {"accel": plan.imu_units[0], "gyro": plan.imu_units[1]},
        },
    }
    labels = [
        {
            "start_s": s.start_s,
            "end_s": s.end_s,
            "label": CLASSES[s.class_id].name,
            "caption": CLASSES[s.class_id].caption,
        }
        for s in plan.segments
    ]
    manifest = {"schema_version": 1, "session_id": plan.session_id, "streams": streams, "labels": labels}
    SessionManifest.model_validate(manifest)  # the generator must never write what the pipeline refuses
    return manifest


def write_captures_session(raw: Path, cfg: SynthConfig, index: int) -> dict:
    plan = plan_session(cfg, index)
    folder = raw / plan.session_id
    folder.mkdir(parents=True, exist_ok=True)
    files = {"video": _write_video(plan, cfg, folder / "video.mp4", with_audio=not plan.separate_audio)}
    if plan.separate_audio:
        rng = np.random.default_rng([cfg.seed, plan.index, 6])
        audio = _audio(plan, rng)
        media.write_wav(folder / "audio.wav", audio, AUDIO_RATE)
        files["audio"] = {"samples": audio.shape[1]}
    files["depth"] = _write_frames(plan, cfg, folder, "depth", DEPTH_FPS, cfg.depth_size, render_depth)
    files["thermal"] = _write_frames(plan, cfg, folder, "thermal", THERMAL_FPS, cfg.thermal_size, render_thermal)
    imu = _imu_rows(plan, cfg, video_aligned=False)
    media.write_csv(folder / "imu.csv", IMU_COLUMNS, imu)
    files["imu"] = {"samples": len(imu)}
    (folder / "manifest.json").write_text(json.dumps(_manifest(plan, cfg), indent=2, sort_keys=True) + "\n")
    return _truth(plan, "captures", **files)


def write_videos_session(raw: Path, cfg: SynthConfig, index: int) -> dict:
    plan = plan_session(cfg, index)
    info = _write_video(plan, cfg, raw / f"{plan.session_id}.mp4", with_audio=True)
    return _truth(plan, "videos", video=info)


def write_ego4d_session(raw: Path, cfg: SynthConfig, index: int) -> dict:
    plan = plan_session(cfg, index)
    (raw / "full_scale").mkdir(parents=True, exist_ok=True)
    (raw / "imu").mkdir(parents=True, exist_ok=True)
    info = _write_video(plan, cfg, raw / "full_scale" / f"{plan.session_id}.mp4", with_audio=True)
    imu = _imu_rows(plan, cfg, video_aligned=True)
    media.write_csv(raw / "imu" / f"{plan.session_id}.csv", IMU_COLUMNS, imu)
    return _truth(plan, "ego4d", video=info, imu={"samples": len(imu), "canonical": plan.imu_canonical})


def _still_times(plan: SessionPlan) -> list[float]:
    # one pair per 2 s, taken mid-window where the class is unambiguous
    return [t + 1.0 for t in np.arange(0.0, plan.seconds - 1.0, 2.0)]


def write_sunrgbd_session(raw: Path, cfg: SynthConfig, index: int) -> dict:
    plan = plan_session(cfg, index)
    rng = np.random.default_rng([cfg.seed, plan.index, 7])
    renderer = FrameRenderer(cfg.width, cfg.height, seed=plan.index)
    pairs = {}
    for k, t in enumerate(_still_times(plan)):
        cls = CLASSES[int(class_at(plan.segments, t))]
        name = f"{plan.session_id}_{k:04d}"
        d = raw / "kv2" / "synth" / name
        (d / "image").mkdir(parents=True, exist_ok=True)
        (d / "depth").mkdir(parents=True, exist_ok=True)
        (d / "image" / f"{name}.jpg").write_bytes(media.jpg_bytes(renderer.render(cls, t)))
        depth = render_depth(cls, t, cfg.width, cfg.height, rng)
        # SUN RGB-D stores depth with its bits rotated: stored = (mm << 3) | (mm >> 13)
        rotated = ((depth << 3) | (depth >> 13)).astype(np.uint16)
        (d / "depth" / f"{name}.png").write_bytes(media.png_bytes(rotated))
        fx = cfg.width * 0.9
        (d / "intrinsics.txt").write_text(f"{fx:.6f} 0 {cfg.width / 2:.6f}\n0 {fx:.6f} {cfg.height / 2:.6f}\n0 0 1\n")
        (d / "scene.txt").write_text(cls.name + "\n")
        pairs[name] = {"label": cls.name, "t": t}
    return _truth(plan, "sunrgbd", pairs=pairs)


def write_llvip_session(raw: Path, cfg: SynthConfig, index: int) -> dict:
    plan = plan_session(cfg, index)
    rng = np.random.default_rng([cfg.seed, plan.index, 8])
    renderer = FrameRenderer(cfg.width, cfg.height, seed=plan.index)
    split = "test" if index == cfg.sessions - 1 and cfg.sessions > 1 else "train"
    pairs = {}
    for k, t in enumerate(_still_times(plan)):
        cls = CLASSES[int(class_at(plan.segments, t))]
        name = f"{plan.index:03d}{k:04d}"  # LLVIP names are digits only
        for sub in ("visible", "infrared"):
            (raw / sub / split).mkdir(parents=True, exist_ok=True)
        (raw / "visible" / split / f"{name}.jpg").write_bytes(media.jpg_bytes(renderer.render(cls, t)))
        ck = render_thermal(cls, t, cfg.width, cfg.height, rng).astype(np.float32)
        gray = np.clip((ck / 100 - 270.0) / 60.0 * 255, 0, 255).astype(np.uint8)  # 270..330 K -> 0..255
        (raw / "infrared" / split / f"{name}.jpg").write_bytes(media.jpg_bytes(np.repeat(gray[..., None], 3, -1)))
        pairs[name] = {"label": cls.name, "t": t, "split": split}
    return _truth(plan, "llvip", pairs=pairs)


WRITERS = {
    "captures": write_captures_session,
    "videos": write_videos_session,
    "ego4d": write_ego4d_session,
    "sunrgbd": write_sunrgbd_session,
    "llvip": write_llvip_session,
}


@dataclass(frozen=True)
class SynthResult:
    raw: Path
    layout: str
    sessions: list[str]
    files: int
    bytes: int


def _one(args: tuple[Path, SynthConfig, int]) -> dict:
    raw, cfg, index = args
    return WRITERS[cfg.layout](raw, cfg, index)


def synth(raw: Path | str, cfg: SynthConfig, progress=None) -> SynthResult:
    """Write cfg.sessions sessions into raw (replacing the sessions of the same ids)."""
    if cfg.layout not in WRITERS:
        raise ConfigError(f"unknown layout {cfg.layout!r}; choose one of {', '.join(LAYOUTS)}")
    if cfg.sessions < 1 or cfg.seconds < 2:
        raise ConfigError("--sessions/--seconds: need at least one session of at least 2 seconds")
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    if cfg.layout == "captures":
        for i in range(cfg.sessions):
            shutil.rmtree(raw / session_id(cfg.seed, i), ignore_errors=True)
    jobs = [(raw, cfg, i) for i in range(cfg.sessions)]
    workers = max(1, min(cfg.workers, cfg.sessions))
    truths = []
    if workers == 1:
        for job in jobs:
            truths.append(_one(job))
            progress and progress(1)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for truth in pool.map(_one, jobs):
                truths.append(truth)
                progress and progress(1)
    truth_dir = raw / TRUTH_DIR
    truth_dir.mkdir(exist_ok=True)
    for t in truths:
        (truth_dir / f"{t['session_id']}.json").write_text(json.dumps(t, indent=2, sort_keys=True) + "\n")
    files = [p for p in raw.rglob("*") if p.is_file()]
    return SynthResult(
        raw, cfg.layout, [t["session_id"] for t in truths], len(files), sum(p.stat().st_size for p in files)
    )
