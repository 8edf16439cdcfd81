"""More real-world inputs of the kinds in issue 12, beyond its examples: containers whose timestamps start at
a convention's offset (MPEG-TS at 1.4 s, MPEG-PS at 0.5 s), which a plain `ffmpeg -i x.mp4 x.ts` writes;
thermal frames that cannot hold their declared unit (8-bit or raw counts declared centikelvin).

Inputs are generated with the ``ffmpeg`` CLI; frames carry their index and the audio a stepped tone
(tests/test_media_inputs.py), so the tests check which frame and which moment of sound were stored.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from bindset.synth.generate import SynthConfig, synth
from pipelines.validate import validate
from schemas.reasons import RejectReason as R
from tests.test_media_inputs import (
    FPS,
    ffmpeg,
    ffprobe_times,
    read_code,
    remux,
    run_build,
    tone_match,
    write_video,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI (CI installs it)")


def _start(path: Path, stream: str) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries", "stream=start_time", "-of", "csv=p=0",
         str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return float(out[0].strip(","))


@pytest.fixture(scope="module")
def offset_containers(tmp_path_factory):
    root = tmp_path_factory.mktemp("offsets")
    raw = root / "raw"
    raw.mkdir()
    base = write_video(root / "base.mp4", n=6 * FPS)
    ffmpeg("-i", str(base), "-c", "copy", str(raw / "broadcast.ts"))  # MPEG-TS: timestamps from 1.4 s
    ffmpeg("-i", str(base), "-c:v", "mpeg2video", "-q:v", "2", "-c:a", "mp2", str(raw / "dvd.mpg"))  # PS: 0.5 s
    # video-muxed AAC in MPEG-TS with 0.4 s of packets missing at content time 2.5-2.9 s
    remux(raw / "broadcast.ts", raw / "holed.ts",
          keep=lambda p: not (p.stream.type == "audio" and 3.9 <= p.pts * p.time_base < 4.3))  # fmt: skip
    return raw, run_build(raw, root / "data", layout="videos")


@pytest.mark.parametrize("name", ["broadcast.ts", "dvd.mpg"])
def test_container_start_offset_anchors_the_grid(offset_containers, name):
    raw, b = offset_containers
    b.assert_accounting()
    session = name.split(".")[0]
    video_start = _start(raw / name, "v:0")
    assert video_start > 0.4  # the container's convention, not 0
    keys = b.keys(session)
    # the grid starts at the stream's start (as pytorchvideo counts clip time), so 6 s of media give 3 clips,
    # each beginning with a frame, none of them a window that starts before the video
    assert len(keys) == 3 and not b.window_rejects(session)
    assert b.index[keys[0]]["clip_start_s"] == pytest.approx(video_start, abs=1e-3)
    times = ffprobe_times(raw / name)
    for key in keys:
        row = b.index[key]
        assert row["sync_err_video_ms"] < 1.0, key  # the first frame opens its window
        inside = [
            i for i, t in enumerate(times) if t is not None and row["clip_start_s"] - 1e-9 <= t < row["clip_end_s"]
        ]  # noqa: E501
        assert row["frame0_t_s"] == pytest.approx(times[inside[0]], abs=1e-6)
        assert read_code(b.image(key)) == inside[0] % 256
        assert row["has_audio"], key  # the audio starts with the video: every window has it
        assert tone_match(b.mel(key), row["clip_start_s"] - _start(raw / name, "a:0")) > 0.9, key


def test_audio_hole_in_a_transport_stream_costs_only_its_window(offset_containers):
    raw, b = offset_containers
    a0 = _start(raw / "holed.ts", "a:0")
    keys = b.keys("holed")
    assert len(keys) == 3 and not b.window_rejects("holed")
    hole = b.modality_rejects("holed", "audio")
    assert list(hole) == [keys[1]]  # the window holding content 2.5-2.9 s (session ~3.9-4.3 s), and only it
    r = hole[keys[1]]
    assert r["reason"] == R.AUDIO_GAP and "jump over a hole" in r["detail"]
    assert "outside the audio track" not in r["detail"]  # the track goes on after the hole
    for key in (keys[0], keys[2]):
        row = b.index[key]
        assert row["has_audio"] and tone_match(b.mel(key), row["clip_start_s"] - a0) > 0.9, key


def test_container_start_offsets_pass_the_gate(offset_containers, tmp_path):
    raw, b = offset_containers
    data = tmp_path / "data"
    shutil.copytree(b.data, data)
    outcome = validate(data, verify_hashes=False)
    assert outcome.passed, [(r.suite, r.rule, r.observed) for r in outcome.results if not r.success]


# ------------------------------------------------------------------------------------------ thermal units


@pytest.fixture(scope="module")
def thermal_units(tmp_path_factory):
    """A rig session with 16-bit centikelvin thermal frames, and copies whose frames were saved as 8-bit
    (values >> 8) or hold raw sensor counts (about 8,000), both still declared centikelvin."""
    raw = tmp_path_factory.mktemp("thermal") / "raw"
    synth(raw, SynthConfig(layout="captures", sessions=1, seconds=4, seed=11, width=64, height=48,
                           depth_size=(32, 24), thermal_size=(32, 24), workers=1))  # fmt: skip
    shutil.rmtree(raw / "_truth")
    (base,) = [p for p in raw.iterdir() if p.is_dir()]
    for name, convert in (("th8bit", lambda t: (t >> 8).astype(np.uint8)),
                          ("thcounts", lambda t: (t // 4).astype(np.uint16))):  # fmt: skip
        folder = raw / name
        shutil.copytree(base, folder)
        m = json.loads((folder / "manifest.json").read_text())
        m["session_id"] = name
        (folder / "manifest.json").write_text(json.dumps(m))
        for p in (folder / "thermal").glob("*.png"):
            cv2.imwrite(str(p), convert(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)))
    return base.name, run_build(raw, raw.parent / "data", layout="captures", clocks="declared")


def test_thermal_that_cannot_be_centikelvin_is_rejected_not_stored(thermal_units):
    base, b = thermal_units
    b.assert_accounting()
    kept = [b.index[k] for k in b.keys(base)]
    assert kept and all(r["has_thermal"] for r in kept)
    assert all(27315 - 5000 < r["thermal_min"] <= r["thermal_max"] for r in kept)  # a scene above -50 °C
    for session, text in (("th8bit", "thermal in centikelvin needs a 16-bit PNG"), ("thcounts", "raw counts?")):
        keys = b.keys(session)
        assert len(keys) == len(kept)  # the samples stay, with video, depth and the rest
        rejects = b.modality_rejects(session, "thermal")
        assert set(rejects) == set(keys)
        for key in keys:
            assert not b.index[key]["has_thermal"] and b.index[key]["has_depth"] and b.index[key]["has_video"]
            r = rejects[key]
            assert r["reason"] == R.THERMAL_IMPLAUSIBLE and text in r["detail"], r
            assert r["detail"].startswith(f"{session}/thermal/")  # RAW-relative


# ------------------------------------------------------------------------------------------ ego4d IMU


def _imu(b, key: str) -> np.ndarray:
    return np.load(io.BytesIO(b.members[f"{key}.imu.npy"]), allow_pickle=False)


def test_ego4d_imu_counts_from_the_video_start(tmp_path):
    """Ego4D's IMU times (canonical, or the device clock assumed to start with the video) count from the start
    of the video: a copy of the video in MPEG-TS (timestamps from 1.4 s) or Matroska at 40 s gets the same IMU
    for the same content as the original, not IMU shifted by the container's offset (or none at all)."""
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(layout="ego4d", sessions=1, seconds=10, seed=5, width=64, height=48, workers=1))
    shutil.rmtree(raw / "_truth")
    (video,) = (raw / "full_scale").glob("*.mp4")
    csv = raw / "imu" / f"{video.stem}.csv"
    ffmpeg("-i", str(video), "-c", "copy", str(raw / "full_scale" / "ts.ts"))
    ffmpeg("-i", str(video), "-c", "copy", "-output_ts_offset", "40", str(raw / "full_scale" / "late.mkv"))
    ffmpeg("-i", str(video), "-c", "copy", str(raw / "full_scale" / "nocanon.ts"))
    shutil.copy(csv, raw / "imu" / "ts.csv")
    shutil.copy(csv, raw / "imu" / "late.csv")
    lines = csv.read_text().splitlines()  # the device clock only: canonical_timestamp_ms empty
    header = lines[0].split(",")
    col = header.index("canonical_timestamp_ms")
    rows = [",".join("" if i == col else v for i, v in enumerate(ln.split(","))) for ln in lines[1:]]
    (raw / "imu" / "nocanon.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    b = run_build(raw, tmp_path / "data", layout="ego4d", clocks="declared")
    b.assert_accounting()
    original = {round(b.index[k]["clip_start_s"], 3): k for k in b.keys(video.stem) if b.index[k]["has_imu"]}
    assert len(original) >= 2
    for session in ("ts", "late", "nocanon"):
        keys = b.keys(session)
        start = b.index[keys[0]]["clip_start_s"]
        assert start > 1.0  # the container's offset, kept on the video's own timeline
        shifted = {round(b.index[k]["clip_start_s"] - start, 3): k for k in keys if b.index[k]["has_imu"]}
        assert set(shifted) == set(original), session  # the same windows have IMU
        for t, key in original.items():
            a, c = _imu(b, key), _imu(b, shifted[t])
            # the same content: equal up to the grid's sub-millisecond rounding of the start
            assert np.corrcoef(a.ravel(), c.ravel())[0, 1] > 0.99, (session, t)
            assert np.abs(a - c).mean() < 0.05 * np.abs(a).mean(), (session, t)
