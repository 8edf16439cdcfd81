"""Alignment of the built dataset against the synthetic world's ground truth.

One synth + one build (local engine). Everything the pipeline paired is traced back to the raw
streams' own timestamps and mapped to session time with the *true* clocks from ``RAW/_truth``:

1. sync: each modality's content sits within half its frame period of the clip's reference time,
   and the index's ``sync_err_*_ms`` columns say so correctly;
2. classes: every modality of every sample whose window does not straddle a class change shows the
   ground-truth class, judged from the data alone (and the check fails when a modality is shuffled);
3. mel: the shard's log-mel equals ImageBind's recipe applied literally to the whole decoded track.

Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchaudio

from bindset.synth.generate import (
    AUDIO_RATE,
    DEPTH_FPS,
    IMU_HZ,
    THERMAL_FPS,
    SynthConfig,
    TrueClock,
    _audio,
    _video_timing,
    plan_session,
    synth,
)
from bindset.synth.world import CLASS_NAMES, CLASSES, Segment, class_at, render_audio
from pipelines.build import EngineConfig, build
from transforms.audio import log_mel
from transforms.config import BuildConfig

SYN = SynthConfig(sessions=6, seconds=20.0, width=160, height=120, workers=2)
CFG = BuildConfig()
SR = 16_000
WIN = 32_000
GRAVITY = 9.80665
IMU_JITTER_S = 0.0015  # generator: normal(0, 0.3 ms) sampling jitter -> 5 sigma
MEL_TOL = 1e-4
SYNC_COL_TOL_MS = 0.01
AGREEMENT = 0.99


@contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------- raw ground truth


@dataclass
class Session:
    sid: str
    segments: list[Segment]
    clocks: dict[str, TrueClock]
    video_t: np.ndarray  # true session time of every decoded frame, sorted
    frames: list[np.ndarray]  # decoded RGB, same order
    frame_files: dict[str, dict[str, float]]  # depth/thermal: RAW-relative file -> device seconds
    frame_times: dict[str, np.ndarray]  # depth/thermal: true session times of all frames, sorted
    imu_t: np.ndarray  # device seconds, as in the CSV
    imu: np.ndarray  # (6, N) float64, m/s^2 and rad/s, [acc xyz, gyro xyz]
    audio: np.ndarray  # (C, n) float32, the whole decoded track at its native rate
    audio_rate: int
    audio_first_s: float  # stream-clock time of the first decoded sample
    _audio16: torch.Tensor | None = field(default=None, repr=False)

    @property
    def boundaries(self) -> list[float]:
        return [s.start_s for s in self.segments[1:]]

    def audio16(self) -> torch.Tensor:
        """ImageBind: torchaudio.functional.resample of the whole track, default arguments."""
        if self._audio16 is None:
            with _torch_threads(1):
                self._audio16 = torchaudio.functional.resample(torch.from_numpy(self.audio), self.audio_rate, SR)
        return self._audio16

    def audio_start_index(self, clip_start_s: float) -> int:
        """Index in the 16 kHz track of a window's first sample (transforms/media.py _AudioTracker)."""
        return round((float(self.clocks["audio"].to_stream(clip_start_s)) - self.audio_first_s) * SR)


def shard_members(data: Path) -> dict[str, dict[str, bytes]]:
    """Every sample's members in DATA's shards: {key: {extension: bytes}} (also tests/test_sync_long.py)."""
    members: dict[str, dict[str, bytes]] = {}
    for tar in sorted((data / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return members


def _decode_audio(path: Path) -> tuple[np.ndarray, int, float]:
    parts, rate, first = [], 0, None
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams.audio[0]):
            arr = frame.to_ndarray()
            if not frame.format.is_planar:  # packed: (1, n*C) interleaved
                arr = arr.reshape(-1, frame.layout.nb_channels).T
            if frame.format.name.rstrip("p") == "s16":
                arr = arr.astype(np.float32) / 32768.0
            parts.append(arr.astype(np.float32))
            rate = frame.sample_rate
            if first is None:
                first = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
    return np.ascontiguousarray(np.concatenate(parts, axis=1)), rate, first


def _load_session(raw: Path, sid: str) -> Session:
    truth = json.loads((raw / "_truth" / f"{sid}.json").read_text())
    manifest = json.loads((raw / sid / "manifest.json").read_text())
    clocks = {k: TrueClock(**v) for k, v in truth["clocks"].items()}
    segments = [Segment(s["start_s"], s["end_s"], CLASS_NAMES.index(s["label"])) for s in truth["segments"]]

    pts, frames = [], []
    with av.open(str(raw / sid / "video.mp4")) as c:
        for f in c.decode(c.streams.video[0]):
            pts.append(float(f.pts * f.time_base))
            frames.append(f.to_ndarray(format="rgb24"))
    order = np.argsort(pts, kind="stable")
    pts_s = np.asarray(pts)[order]
    frames = [frames[i] for i in order]

    files, times = {}, {}
    for name in ("depth", "thermal"):
        with open(raw / sid / f"{name}_timestamps.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        files[name] = {f"{sid}/{name}/{r['file']}": float(r["timestamp"]) / 1000.0 for r in rows}
        times[name] = np.sort(clocks[name].to_session(np.array(list(files[name].values()))))

    # component_timestamp_ms, gyro_x/y/z, accl_x/y/z (canonical_timestamp_ms is empty in captures)
    table = np.loadtxt(raw / sid / "imu.csv", delimiter=",", skiprows=1, usecols=(1, 3, 4, 5, 6, 7, 8), ndmin=2)
    units = manifest["streams"]["imu"]["units"]
    acc = table[:, 4:7].T * (GRAVITY if units["accel"] == "g" else 1.0)
    gyro = table[:, 1:4].T * (np.pi / 180.0 if units["gyro"] == "deg/s" else 1.0)
    audio_path = raw / sid / manifest["streams"]["audio"].get("path", "video.mp4")
    audio, rate, first = _decode_audio(audio_path)
    return Session(
        sid=sid,
        segments=segments,
        clocks=clocks,
        video_t=clocks["video"].to_session(pts_s),
        frames=frames,
        frame_files=files,
        frame_times=times,
        imu_t=table[:, 0] / 1000.0,
        imu=np.concatenate([acc, gyro]),
        audio=audio,
        audio_rate=rate,
        audio_first_s=first,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("alignment")
    raw, data = root / "raw", root / "data"
    synth(raw, SYN)
    t1 = time.perf_counter()
    build(raw, data, CFG, EngineConfig("local"))
    t2 = time.perf_counter()
    rows = sorted(pq.read_table(data / "index.parquet").to_pylist(), key=lambda r: r["key"])
    members = shard_members(data)
    sessions = {sid: _load_session(raw, sid) for sid in sorted({r["session"] for r in rows})}
    print(f"\nfixture: synth {t1 - t0:.1f} s, build {t2 - t1:.1f} s, raw decode {time.perf_counter() - t2:.1f} s")
    assert len(sessions) == SYN.sessions and len(rows) == SYN.sessions * int(SYN.seconds // CFG.clip_s)
    return SimpleNamespace(raw=raw, data=data, rows=rows, members=members, sessions=sessions)


def _meta(built, key: str) -> dict:
    return json.loads(built.members[key]["json"])


def _npy(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _rgb(blob: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _png16(blob: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)


# ------------------------------------------------------------------------ ImageBind mel, literally


def imagebind_mel(waveform: torch.Tensor, start: int) -> np.ndarray:
    """waveform2melspec on waveform[:, start:start+32000] (zeros where the window leaves the track).

    One torch thread, as the build's workers use: the float32 reductions (the window mean included)
    depend on the thread count at the 1e-4 level in the quietest mel bins.
    """
    n = waveform.shape[1]
    with _torch_threads(1):
        w = torch.zeros((waveform.shape[0], WIN), dtype=waveform.dtype)
        lo, hi = max(start, 0), min(start + WIN, n)
        if hi > lo:
            w[:, lo - start : hi - start] = waveform[:, lo:hi]
        w = w - w.mean()
        fbank = torchaudio.compliance.kaldi.fbank(
            w,
            htk_compat=True,
            sample_frequency=SR,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_length=25,
            frame_shift=10,
        )
        fbank = fbank.transpose(0, 1)
        p = 204 - fbank.size(1)
        fbank = torch.nn.ZeroPad2d((0, p, 0, 0))(fbank) if p > 0 else fbank[:, :204]
        return ((fbank - (-4.268)) / 9.138).unsqueeze(0).numpy()


# ------------------------------------------------------------------------------------ 0. raw truth


def _lag(decoded: np.ndarray, source: np.ndarray, span: int = 1100) -> int:
    """Shift (samples) of the decoded track against the source over its second second (AAC priming is 1024)."""
    a = source[AUDIO_RATE : 2 * AUDIO_RATE]
    scores = [float(np.dot(a, decoded[AUDIO_RATE + lag : 2 * AUDIO_RATE + lag])) for lag in range(-span, span + 1)]
    return int(np.argmax(scores)) - span


def test_raw_timestamps_are_the_generators(built):
    """The raw timestamps used as truth below are what the generator rendered at: decoded video pts are
    the planned frame times, and decoded audio sample 0 (pts 0) is the generator's sample 0."""
    for i, (sid, S) in enumerate(built.sessions.items()):
        plan = plan_session(SYN, i)
        assert plan.session_id == sid
        rng = np.random.default_rng([SYN.seed, i, 2])  # the generator's stream for this video
        timing = _video_timing(plan, rng)
        assert np.allclose(S.clocks["video"].to_stream(S.video_t), timing.pts_s, atol=1e-9, rtol=0)
        source = _audio(plan, np.random.default_rng([SYN.seed, i, 6]) if plan.separate_audio else rng)
        assert S.audio_rate == AUDIO_RATE and S.audio_first_s == 0.0
        assert _lag(S.audio[0], source[0]) == 0, sid


# ------------------------------------------------------------------------------------------ 1. sync


def _is_nearest_frame(frames: list[np.ndarray], shard_jpg: bytes, claimed: int) -> bool:
    """The shard's JPEG is closest to the claimed decoded frame among its neighbours (ties allowed:
    x264 repeats some frames of slow scenes exactly)."""
    rgb = _rgb(shard_jpg).astype(np.float32)
    near = range(max(0, claimed - 3), min(len(frames), claimed + 4))
    mse = {j: float(np.mean((frames[j].astype(np.float32) - rgb) ** 2)) for j in near}
    return mse[claimed] <= min(mse.values()) + 1e-3 and mse[claimed] < 50.0


def test_sync_against_ground_truth(built):
    """Per sample and stream: the true session time of what was paired (raw timestamps + true clocks)
    against the reference (video: window start; depth/thermal: frame 0; audio: window start; IMU:
    window centre), the content being really that frame/sample, and the index's sync_err_* columns."""
    half = {"depth": 0.5 / DEPTH_FPS, "thermal": 0.5 / THERMAL_FPS, "audio": 0.5 / SR + 1e-6}
    worst: dict[str, tuple[float, float]] = {}  # stream -> (|err| s, bound s)
    col_diff: dict[str, float] = {}
    counts = dict.fromkeys(("video", "audio", "depth", "thermal", "imu"), 0)
    late_start = 0

    def note(stream: str, err: float, bound: float) -> None:
        assert abs(err) <= bound, f"{stream}: {err * 1e3:+.4f} ms exceeds {bound * 1e3:.4f} ms"
        if stream not in worst or abs(err) / bound > worst[stream][0] / worst[stream][1]:
            worst[stream] = (abs(err), bound)

    def column(stream: str, row: dict, err_s: float) -> None:
        got = row[f"sync_err_{stream}_ms"]
        assert got is not None, f"{row['key']}: sync_err_{stream}_ms missing"
        d = abs(got - err_s * 1000.0)
        assert d <= SYNC_COL_TOL_MS, f"{row['key']}: sync_err_{stream}_ms {got} vs true {err_s * 1000:.6f}"
        col_diff[stream] = max(col_diff.get(stream, 0.0), d)

    for r in built.rows:
        S, key, s, e = built.sessions[r["session"]], r["key"], r["clip_start_s"], r["clip_end_s"]
        meta, mem = _meta(built, key), built.members[key]
        # -- video: first and last frame whose true time is in [s, e)
        vt = S.video_t
        i0, i1 = int(np.searchsorted(vt, s, "left")), int(np.searchsorted(vt, e, "left")) - 1
        assert i0 <= i1 and r["has_video"]
        assert abs(r["frame0_t_s"] - vt[i0]) < 1e-9 and abs(r["frame1_t_s"] - vt[i1]) < 1e-9, key
        assert np.allclose(meta["frame_times_s"], [vt[i0], vt[i1]], atol=1e-9, rtol=0), key
        if i0 > 0:  # frame 0 lies in [s, s + one frame period)
            note("video", vt[i0] - s, vt[i0] - vt[i0 - 1])
        else:  # the recording's first frame comes after s: nothing earlier could be picked
            assert vt[0] >= s
            late_start += 1
        period1 = vt[i1 + 1] - vt[i1] if i1 + 1 < len(vt) else vt[i1] - vt[i1 - 1]
        assert e - period1 <= vt[i1] < e, key
        column("video", r, vt[i0] - s)
        # the pixels are those frames (JPEG of the decoded frame, nearest among its neighbours)
        assert _is_nearest_frame(S.frames, mem["jpg"], i0), f"{key}: jpg is not frame {i0}"
        assert _is_nearest_frame(S.frames, mem["frame1.jpg"], i1), f"{key}: frame1.jpg is not frame {i1}"
        counts["video"] += 1
        ref = vt[i0]
        # -- depth, thermal: the file named in the index, its CSV timestamp, the true clock
        for name in ("depth", "thermal"):
            times = S.frame_times[name]
            nearest = float(np.min(np.abs(times - ref)))
            if not r[f"has_{name}"]:
                assert nearest > half[name] - 2e-3, f"{key}: {name} missing although a frame is {nearest} s away"
                continue
            t_true = float(S.clocks[name].to_session(S.frame_files[name][r[f"source_{name}"]]))
            err = t_true - ref
            note(name, err, half[name])
            assert abs(err) <= nearest + 1e-9, f"{key}: {name} frame is not the nearest one"
            assert abs(meta[f"{name}_t_s"] - t_true) < 1e-9, f"{key}: {name}_t_s in the json is not its true time"
            column(name, r, err)
            raw_png = cv2.imread(str(built.raw / r[f"source_{name}"]), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(_png16(mem[f"{name}.png"]), raw_png), f"{key}: {name}.png is not its source"
            counts[name] += 1
        # -- audio: the window's first sample in the whole 16 kHz track
        n16 = S.audio16().shape[1]
        start = S.audio_start_index(s)
        outside = max(0, -start) + max(0, start + WIN - n16)
        tolerance = round(CFG.audio_tolerance_s * SR)
        assert r["has_audio"] == (outside <= tolerance), f"{key}: audio present={r['has_audio']}, {outside} outside"
        if r["has_audio"]:
            t_true = float(S.clocks["audio"].to_session(S.audio_first_s + start / SR))
            note("audio", t_true - s, half["audio"])
            column("audio", r, t_true - s)
            # ... and the mel really was cut there: it matches that start and not its neighbours
            mel = _npy(mem["mel.npy"])
            diffs = {d: float(np.abs(imagebind_mel(S.audio16(), start + d) - mel).max()) for d in (-1, 0, 1)}
            assert diffs[0] <= MEL_TOL < min(diffs[-1], diffs[1]), f"{key}: {diffs}"
            counts["audio"] += 1
        # -- IMU: the 5 s window centred on the clip centre, on the IMU's own clock
        centre = float(S.clocks["imu"].to_stream(s + CFG.clip_s / 2))
        w0 = centre - CFG.imu_window_s / 2
        steps = round(CFG.imu_window_s * CFG.imu_rate_hz)
        covered = S.imu_t[0] <= w0 + 1e-6 and S.imu_t[-1] >= w0 + (steps - 1) / CFG.imu_rate_hz - 1e-6
        assert r["has_imu"] == covered, key
        if r["has_imu"]:
            t_out = w0 + np.arange(steps) / CFG.imu_rate_hz
            expect = np.stack([np.interp(t_out, S.imu_t, ch) for ch in S.imu])
            got = _npy(mem["imu.npy"])
            assert got.shape == (6, steps) and np.allclose(got, expect, atol=2e-4, rtol=0), key
            assert abs(meta["imu_window_s"][0] - float(S.clocks["imu"].to_session(w0))) < 1e-6, key
            j = int(np.argmin(np.abs(S.imu_t - centre)))
            err = float(S.clocks["imu"].to_session(S.imu_t[j])) - (s + CFG.clip_s / 2)
            k = int(np.searchsorted(S.imu_t, centre))
            gap = S.imu_t[k] - S.imu_t[k - 1]
            # a dropped sample next to the centre (the generator drops ~0.4%) doubles the distance
            bound = (0.5 if gap < 1.5 / IMU_HZ else 1.0) / IMU_HZ + IMU_JITTER_S
            note("imu", err, bound)
            column("imu", r, err)
            counts["imu"] += 1

    print("\nsync error vs ground truth (worst |err| / bound), index column max deviation:")
    for stream, (err, bound) in sorted(worst.items(), key=lambda kv: list(counts).index(kv[0])):
        print(f"  {stream:8s} n={counts[stream]:3d}  worst {err * 1e3:8.4f} ms / {bound * 1e3:8.4f} ms  "
              f"({err / bound:5.1%})   index column off by <= {col_diff.get(stream, 0.0):.2e} ms")  # fmt: skip
    print(f"  ({late_start} first windows start before the video's first frame)")
    assert all(counts[k] > 0 for k in counts)


# ---------------------------------------------------------------------------------------- 2. classes
#
# Each classifier looks only at the sample's own member and the world's class parameters.


def classify_frame(rgb: np.ndarray) -> int:
    """Nearest class background colour to the median pixel (the shading's median factor is 1)."""
    med = np.median(rgb.reshape(-1, 3).astype(np.float64), axis=0)
    bg = np.array([c.background for c in CLASSES], np.float64)
    return int(np.argmin(np.linalg.norm(bg - med, axis=1)))


def classify_depth(depth_mm: np.ndarray) -> int:
    """Floor distance (row maxima over the floor's known slope) and nearest distance vs each class."""
    h = depth_mm.shape[0]
    d = depth_mm.astype(np.float64)
    slope = 0.6 + 0.8 * (1 - np.arange(h) / h)  # floor depth = floor_mm * slope(y)
    floor = float(np.median(d.max(axis=1) / slope))
    near = float(np.percentile(d[d > 0], 0.5))
    score = [abs(np.log(floor / c.floor_mm)) + abs(np.log(near / min(c.object_mm, 0.6 * c.floor_mm))) for c in CLASSES]
    return int(np.argmin(score))


def classify_thermal(centikelvin: np.ndarray) -> int:
    """Ambient (median), hottest and coldest spots vs each class's ambient and object temperature.

    16-bit centi-kelvin saturates at 655.35 K, so the campfire's 900 K object is stored clipped.
    """
    k = centikelvin.astype(np.float64) / 100.0
    med, hot, cold = float(np.median(k)), float(k.max()), float(k.min())
    score = [
        abs(med - c.ambient_k)
        + abs(hot - min(max(c.object_k, c.ambient_k + 1), 655.35))
        + abs(cold - min(c.object_k, c.ambient_k - 1))
        for c in CLASSES
    ]
    return int(np.argmin(score))


def _mel_profile(mel: np.ndarray) -> np.ndarray:
    return mel[0, :, :198].mean(axis=1)  # mean spectrum over the 198 real frames (the rest is padding)


@pytest.fixture(scope="module")
def audio_templates() -> np.ndarray:
    """Mean log-mel spectrum of each class, rendered by the world at 48 kHz, resampled, via log_mel."""
    rng = np.random.default_rng(123)
    seconds = 10
    out = []
    with _torch_threads(1):
        for cid in range(len(CLASSES)):
            t = 1000.0 + np.arange(seconds * AUDIO_RATE) / AUDIO_RATE
            x = render_audio([Segment(0.0, 1e6, cid)], t, AUDIO_RATE, rng)[None]
            x16 = torchaudio.functional.resample(torch.from_numpy(x), AUDIO_RATE, SR).numpy()
            out.append(
                np.mean([_mel_profile(log_mel(x16[:, i : i + WIN])) for i in range(0, x16.shape[1] - WIN, WIN)], 0)
            )
    return np.stack(out)


def classify_audio(mel: np.ndarray, templates: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(templates - _mel_profile(mel), axis=1)))


# periodic motion: acc_y = amp*sin(2*pi*f*t) (+ |.| on z); otherwise white noise of amp on acc_x
_PERIODIC = [i for i, c in enumerate(CLASSES) if c.step_hz > 0]
_NOISY = [i for i, c in enumerate(CLASSES) if c.step_hz == 0]


def _amplitude_at(x: np.ndarray, t: np.ndarray, f: float) -> float:
    basis = np.stack([np.ones_like(t), np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
    coef = np.linalg.lstsq(basis, x, rcond=None)[0]
    return float(np.hypot(coef[1], coef[2]))


def classify_imu(imu: np.ndarray) -> int:
    """On the clip's own 2 s (the middle of the 5 s window): the class step rate carrying the most
    acc_y amplitude when there is periodic motion, else the acc_x noise level."""
    rate, mid, half = CFG.imu_rate_hz, imu.shape[1] // 2, round(CFG.clip_s / 2 * CFG.imu_rate_hz)
    part = imu[:, mid - half : mid + half].astype(np.float64)
    t = np.arange(part.shape[1]) / rate
    amps = {i: _amplitude_at(part[1], t, CLASSES[i].step_hz) for i in _PERIODIC}
    best = max(amps, key=amps.get)
    if amps[best] > 0.1:
        return best
    level = float(np.std(part[0]))
    # sensor noise 0.02 m/s^2 on top; linear interpolation 200 -> 400 Hz smooths white noise by ~0.87
    expected = {i: 0.87 * np.hypot(CLASSES[i].accel_amp, 0.02) for i in _NOISY}
    return min(expected, key=lambda i: abs(np.log(level / expected[i])))


def _true_change(S: Session, s: float, e: float) -> bool:
    return any(s + 1e-6 < b < e - 1e-6 for b in S.boundaries)


def test_label_change_flag_and_label_match_ground_truth(built):
    flagged = 0
    for r in built.rows:
        S, s, e = built.sessions[r["session"]], r["clip_start_s"], r["clip_end_s"]
        assert r["label_change"] == _true_change(S, s, e), r["key"]
        overlap = {}
        for seg in S.segments:
            ov = min(seg.end_s, e) - max(seg.start_s, s)
            if ov > 1e-6:
                overlap[seg.class_id] = overlap.get(seg.class_id, 0.0) + ov
        assert r["label"] == CLASS_NAMES[max(overlap, key=overlap.get)], r["key"]
        assert r["caption"] == CLASSES[max(overlap, key=overlap.get)].caption
        flagged += r["label_change"]
    print(f"\nlabel_change: {flagged} of {len(built.rows)} windows straddle a class change (all flagged exactly)")
    assert 0 < flagged < len(built.rows)


def _modality_data(built) -> dict[str, list[tuple[np.ndarray, int]]]:
    """Per modality: (member data, true class of what that member shows) for every counted sample."""
    out: dict[str, list[tuple[np.ndarray, int]]] = {m: [] for m in ("frame", "audio", "depth", "thermal", "imu")}
    for r in built.rows:
        S, key, s, e = built.sessions[r["session"]], r["key"], r["clip_start_s"], r["clip_end_s"]
        if _true_change(S, s, e):
            continue  # flagged (checked above); not counted
        window_class = int(class_at(S.segments, s + 1e-6))
        mem, meta = built.members[key], _meta(built, key)
        out["frame"].append((_rgb(mem["jpg"]), int(class_at(S.segments, r["frame0_t_s"]))))
        out["frame"].append((_rgb(mem["frame1.jpg"]), int(class_at(S.segments, r["frame1_t_s"]))))
        for name in ("depth", "thermal"):
            if r[f"has_{name}"]:  # the frame nearest frame 0 may lie a few ms before the window
                out[name].append((_png16(mem[f"{name}.png"]), int(class_at(S.segments, meta[f"{name}_t_s"]))))
        if r["has_audio"]:
            out["audio"].append((_npy(mem["mel.npy"]), window_class))
        if r["has_imu"]:
            out["imu"].append((_npy(mem["imu.npy"]), window_class))
    return out


def test_every_modality_shows_the_true_class(built, audio_templates):
    classify = {
        "frame": classify_frame,
        "audio": lambda m: classify_audio(m, audio_templates),
        "depth": classify_depth,
        "thermal": classify_thermal,
        "imu": classify_imu,
    }
    data = _modality_data(built)
    rng = np.random.default_rng(0)
    print("\nclass agreement with ground truth (samples not straddling a class change):")
    for name, items in data.items():
        truth = np.array([c for _, c in items])
        pred = np.array([classify[name](x) for x, _ in items])
        agree = float(np.mean(pred == truth))
        # the check can fail: the same classifier on this modality shuffled across samples
        perm = rng.permutation(len(items))
        shuffled = float(np.mean(np.array([classify[name](items[j][0]) for j in perm]) == truth))
        wrong = [(CLASS_NAMES[t], CLASS_NAMES[p]) for t, p in zip(truth, pred, strict=True) if t != p]
        print(f"  {name:8s} n={len(items):3d}  agreement {agree:7.2%}   shuffled {shuffled:7.2%}  {wrong[:5]}")
        assert len(items) >= 30
        assert agree >= AGREEMENT, f"{name}: {agree:.2%} agreement; (true, seen): {wrong}"
        assert shuffled < 0.6, f"{name}: shuffled data still agrees {shuffled:.2%}"


# ------------------------------------------------------------------------------------------- 3. mel


def test_mel_matches_imagebind_recipe_on_built_output(built):
    """The shard's mel.npy vs ImageBind's waveform2melspec on the whole decoded track, resampled whole.

    Sessions: two with AAC in the MP4 (one with variable-frame-rate video) and the one with a separate
    WAV on a drifting clock; the first and last windows of each that have audio.
    """
    picks = []
    for sid in ("s000_000", "s000_002", "s000_003"):
        with_audio = [r for r in built.rows if r["session"] == sid and r["has_audio"]]
        picks += [with_audio[0], with_audio[-1]]
    starts = {r["clip_start_s"] for r in picks}
    assert 0.0 in starts and SYN.seconds - CFG.clip_s in starts  # a session's first and last window
    worst = 0.0
    print("\nmel parity vs ImageBind recipe (max |diff|):")
    for r in picks:
        S = built.sessions[r["session"]]
        mel = _npy(built.members[r["key"]]["mel.npy"])
        assert mel.shape == (1, 128, 204) and mel.dtype == np.float32
        start = S.audio_start_index(r["clip_start_s"])
        ref = imagebind_mel(S.audio16(), start)
        diff = float(np.abs(ref - mel).max())
        print(f"  {r['key']}  16 kHz samples [{start}, {start + WIN}) of {S.audio16().shape[1]}: {diff:.3e}")
        worst = max(worst, diff)
    print(f"  worst {worst:.3e} (limit {MEL_TOL:g})")
    assert worst <= MEL_TOL
