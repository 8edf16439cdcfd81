"""The synthetic capture generator: determinism, decodable streams at the promised rates, and layouts."""

from __future__ import annotations

import csv
import hashlib
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from bindset.cli import main
from bindset.synth.generate import LAYOUTS, SynthConfig, synth
from bindset.synth.world import CLASS_NAMES, CLASSES
from schemas.manifest import load_manifest

SMALL = dict(sessions=4, seconds=6.0, width=160, height=120, workers=2)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("captures")
    synth(raw, SynthConfig(seed=7, layout="captures", **SMALL))
    return raw


def _truth(raw: Path, sid: str) -> dict:
    return json.loads((raw / "_truth" / f"{sid}.json").read_text())


def test_same_seed_gives_byte_identical_files(tmp_path, captures):
    again = tmp_path / "again"
    synth(again, SynthConfig(seed=7, layout="captures", **{**SMALL, "workers": 1}))  # other worker count too
    assert _digest(again) == _digest(captures)
    other = tmp_path / "other"
    synth(other, SynthConfig(seed=8, layout="captures", sessions=1, seconds=6.0, width=160, height=120))
    a = (captures / "s007_000" / "video.mp4").read_bytes()
    b = (other / "s008_000" / "video.mp4").read_bytes()
    assert a != b


def test_world_has_enough_distinct_classes():
    assert len(CLASSES) >= 6 and len(set(CLASS_NAMES)) == len(CLASSES)
    # every class differs from every other in look, sound and motion together
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i + 1 :]:
            assert (a.background, a.shape) != (b.background, b.shape)
            assert (a.f0_hz, a.noise_band_hz) != (b.f0_hz, b.noise_band_hz)
            assert (a.step_hz, a.accel_amp) != (b.step_hz, b.accel_amp)


def test_classes_change_within_a_session(captures):
    for sid in ("s007_000", "s007_001"):
        labels = [s["label"] for s in _truth(captures, sid)["segments"]]
        assert len(labels) >= 2
        assert all(a != b for a, b in zip(labels, labels[1:], strict=False))


def test_manifests_validate_and_state_true_clocks(captures):
    for sid in ("s007_000", "s007_001", "s007_002", "s007_003"):
        m = load_manifest(captures / sid / "manifest.json")
        truth = _truth(captures, sid)
        for name in ("video", "audio", "depth", "thermal", "imu"):
            stream = getattr(m.streams, name)
            assert stream.clock.offset_s == pytest.approx(truth["clocks"][name]["offset_s"])
            assert stream.clock.drift_ppm == pytest.approx(truth["clocks"][name]["drift_ppm"])
        # relative offsets between streams are tens to hundreds of ms, after removing device epochs
        starts = {n: m.streams.__getattribute__(n).clock.to_session(0.0) for n in ("video", "audio")}
        assert 0.01 <= abs(starts["video"] - starts["audio"]) <= 0.5
        assert m.labels and m.labels[0].start_s == 0.0


@pytest.mark.parametrize(
    ("sid", "rate", "vfr"),
    [("s007_000", Fraction(30), False), ("s007_001", Fraction(30000, 1001), False), ("s007_002", None, True)],
)
def test_video_decodes_at_promised_rate(captures, sid, rate, vfr):
    with av.open(str(captures / sid / "video.mp4")) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == "h264"
        pts = np.array([float(f.pts * f.time_base) for f in c.decode(v)])
    assert len(pts) > 5 * 24
    steps = np.diff(pts)
    if vfr:
        assert steps.max() - steps.min() > 0.008  # really variable
    else:
        assert np.allclose(steps, float(1 / rate), atol=1e-4)
    video_off = _truth(captures, sid)["clocks"]["video"]["offset_s"]
    # the video covers the session from its clock offset to the end
    assert 6.0 - 0.045 < pts[-1] + video_off < 6.0


def test_audio_track_is_aac_48k_stereo_with_offset(captures):
    sid = "s007_000"
    with av.open(str(captures / sid / "video.mp4")) as c:
        a = c.streams.audio[0]
        assert (a.codec_context.name, a.codec_context.sample_rate, a.codec_context.channels) == ("aac", 48000, 2)
        samples = sum(f.samples for f in c.decode(a))
    clocks = _truth(captures, sid)["clocks"]
    expected = (6.0 - clocks["audio"]["offset_s"]) * 48000
    assert abs(samples - expected) < 2048  # AAC pads to whole 1024-sample frames


def test_separate_audio_file_session(captures):
    m = load_manifest(captures / "s007_003" / "manifest.json")
    assert m.streams.audio.track == "file" and m.streams.audio.path == "audio.wav"
    with av.open(str(captures / "s007_003" / "audio.wav")) as c:
        a = c.streams.audio[0]
        assert (a.codec_context.sample_rate, a.codec_context.channels) == (48000, 2)
    with av.open(str(captures / "s007_003" / "video.mp4")) as c:
        assert not c.streams.audio


@pytest.mark.parametrize(("name", "fps", "dtype_max"), [("depth", 15.0, 20000), ("thermal", 8.7, 65535)])
def test_frame_streams_have_rate_timestamps_and_16bit_pngs(captures, name, fps, dtype_max):
    sid = "s007_000"
    folder = captures / sid
    with open(folder / f"{name}_timestamps.csv") as f:
        rows = list(csv.DictReader(f))
    t = np.array([float(r["timestamp"]) for r in rows]) / 1000
    assert np.median(np.diff(t)) == pytest.approx(1 / fps, abs=0.002)
    clock = load_manifest(folder / "manifest.json").streams.__getattribute__(name).clock
    session_t = clock.to_session(t)
    assert -0.002 < session_t[0] < 1 / fps and 6.0 - 1 / fps - 0.002 < session_t[-1] < 6.0 + 0.002
    img = cv2.imread(str(folder / name / rows[0]["file"]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.ndim == 2
    assert 0 < img.max() <= dtype_max
    if name == "depth":
        assert 0.9 < (img > 0).mean() < 1.0  # some invalid (zero) pixels, as real sensors have


def test_imu_csv_ego4d_columns_rate_jitter_and_drops(captures):
    with open(captures / "s007_001" / "imu.csv") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == [
        "component_idx", "component_timestamp_ms", "canonical_timestamp_ms",
        "gyro_x", "gyro_y", "gyro_z", "accl_x", "accl_y", "accl_z",
    ]  # fmt: skip
    t = np.array([float(r[1]) for r in rows]) / 1000
    steps = np.diff(t)
    assert np.median(steps) == pytest.approx(1 / 200, abs=2e-4)
    assert steps.std() > 1e-5  # jitter
    assert (steps > 1.5 / 200).sum() >= 1  # dropped samples
    m = load_manifest(captures / "s007_001" / "manifest.json")
    assert (m.streams.imu.units.accel, m.streams.imu.units.gyro) == ("g", "deg/s")
    acc_z = np.array([float(r[8]) for r in rows])
    assert np.median(acc_z) == pytest.approx(1.0, abs=0.3)  # gravity, in g


def test_video_content_follows_the_class(captures):
    """A frame's mean colour is closest to the background of the class the truth says is active."""
    sid = "s007_000"
    truth = _truth(captures, sid)
    off = truth["clocks"]["video"]["offset_s"]
    hits = total = 0
    with av.open(str(captures / sid / "video.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i % 15:
                continue
            t = float(frame.pts * frame.time_base) + off
            seg = next(s for s in truth["segments"] if s["start_s"] <= t < s["end_s"])
            rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).astype(float)
            med = np.median(rgb, axis=0)
            best = min(CLASSES, key=lambda k: np.abs(np.asarray(k.background) * 1.0 - med).sum())
            hits += best.name == seg["label"]
            total += 1
    assert hits / total > 0.8


@pytest.mark.parametrize("layout", [x for x in LAYOUTS if x != "captures"])
def test_other_layouts_put_files_where_spec_says(tmp_path, layout):
    raw = tmp_path / layout
    synth(raw, SynthConfig(seed=1, layout=layout, sessions=2, seconds=4.0, width=160, height=120, workers=1))
    if layout == "videos":
        assert sorted(p.name for p in raw.glob("*.mp4")) == ["s001_000.mp4", "s001_001.mp4"]
    elif layout == "ego4d":
        vids = sorted(p.stem for p in (raw / "full_scale").glob("*.mp4"))
        assert vids == sorted(p.stem for p in (raw / "imu").glob("*.csv")) and len(vids) == 2
        with open(raw / "imu" / f"{vids[0]}.csv") as f:
            row = next(csv.DictReader(f))
        assert row["canonical_timestamp_ms"] != ""
    elif layout == "sunrgbd":
        scenes = sorted((raw / "kv2" / "synth").iterdir())
        assert len(scenes) == 4  # one pair per 2 s
        s = scenes[0]
        assert (s / "image" / f"{s.name}.jpg").is_file() and (s / "intrinsics.txt").is_file()
        stored = cv2.imread(str(s / "depth" / f"{s.name}.png"), cv2.IMREAD_UNCHANGED)
        mm = (stored >> 3) | (stored << 13)  # SUN RGB-D's bit rotation, undone
        valid = mm[mm > 0]
        assert 500 < np.median(valid) < 20000  # plausible millimetres only after undoing the rotation
        assert (s / "scene.txt").read_text().strip() in CLASS_NAMES
    elif layout == "llvip":
        vis = sorted(p.relative_to(raw / "visible") for p in (raw / "visible").rglob("*.jpg"))
        ir = sorted(p.relative_to(raw / "infrared") for p in (raw / "infrared").rglob("*.jpg"))
        assert vis == ir and len(vis) == 4
        assert {p.parts[0] for p in vis} == {"train", "test"}
    assert (raw / "_truth").is_dir()


def test_cli_synth_prints_summary(tmp_path, capsys):
    rc = main(["synth", str(tmp_path / "raw"), "--sessions", "1", "--seconds", "3", "--quiet", "--width", "96",
               "--height", "64"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "1 captures session(s)" in out and "ground truth" in out


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "raw"), "--seconds", "1"]) == 2
    assert "at least 2 seconds" in capsys.readouterr().err
