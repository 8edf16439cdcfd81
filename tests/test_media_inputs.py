"""Real-world media inputs (issue 12): orientation, non-square pixels, containers without reliable pts, audio
that changes format or has a hole, sound in one channel only, timestamps that start late, damage mid-file.

Every input is generated here with the ``ffmpeg`` CLI or PyAV. Each video frame carries its index as eight
big blocks (``code_frame``), and the audio is a tone whose pitch steps every 0.5 s (``freq``), so the tests
can tell which frame and which moment of audio was stored, and assert it. Builds run on ``--engine local``
through ``pipelines.build.build``; one slow test runs a case on Beam and Ray and compares bytes.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import tarfile
import wave
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.build import EngineConfig, build
from schemas.reasons import RejectReason as R
from transforms import audio as A
from transforms.config import BuildConfig
from transforms.images import orient

W, H = 160, 100
FPS = 25
AUDIO_RATE = 44100

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI (CI installs it)")


# ------------------------------------------------------------------------------------------ marked media


def code_frame(i: int, w: int = W, h: int = H) -> np.ndarray:
    """(h, w, 3) RGB: frame index ``i`` as 8 bits in a 2x4 grid of blocks on the left 2/3, a red marker in
    the top-right corner (shows the orientation), on a fine checkerboard (a sharp picture, so the blur
    filter keeps it)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.where(((yy // 2 + xx // 2) % 2)[..., None] == 0, 40, 90).astype(np.uint8).repeat(3, axis=2)
    bw, bh = w // 6, h // 2
    for b in range(8):
        r, c = divmod(b, 4)
        img[r * bh + 3 : (r + 1) * bh - 3, c * bw + 3 : (c + 1) * bw - 3] = 235 if (i >> b) & 1 else 10
    img[: h // 5, w - w // 5 :] = (220, 30, 30)
    return img


def read_code(rgb: np.ndarray) -> int:
    """Inverse of ``code_frame`` on an upright, coded-orientation picture of any size: the index mod 256."""
    h, w = rgb.shape[:2]
    bw, bh = w / 6, h / 2
    gray = rgb.astype(np.float32).mean(axis=2)
    code = 0
    for b in range(8):
        r, c = divmod(b, 4)
        y0, x0 = int((r + 0.3) * bh), int((c + 0.3) * bw)
        y1, x1 = int((r + 0.7) * bh), int((c + 0.7) * bw)
        code |= int(gray[y0:y1, x0:x1].mean() > 120) << b
    return code


def freq(t) -> np.ndarray:
    """The tone's pitch (Hz) at content time t (s): a new step every 0.5 s, 12 steps from 400 Hz."""
    return 400.0 + 300.0 * (np.floor(np.asarray(t, np.float64) / 0.5) % 12)


def tone(seconds: float, rate: int, t0: float = 0.0, channels: int = 1) -> np.ndarray:
    """(channels, n) float: the stepped tone from content time t0, phase-continuous."""
    t = t0 + np.arange(int(round(seconds * rate))) / rate
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(freq(t)) / rate)
    return np.repeat(x[None], channels, 0)


def write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").T.copy()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(x.shape[0])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def write_video(path: Path, n: int = 12 * FPS, *, w: int = W, h: int = H, audio: bool = True,
                vcodec: tuple[str, ...] = ("-c:v", "libx264", "-preset", "ultrafast", "-g", str(FPS), "-bf", "0"),
                extra: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """n coded frames (``code_frame(i)``) at 25 fps, with the tone as AAC when ``audio``."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(FPS)]
    cmd += ["-i", "-"]
    if audio:
        wav = write_wav(path.with_suffix(".tone.wav"), tone(n / FPS, AUDIO_RATE), AUDIO_RATE)
        cmd += ["-i", str(wav), "-c:a", "aac"]
    cmd += [*vcodec, "-pix_fmt", "yuv420p", "-threads", "1", *extra, str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(n):
        proc.stdin.write(code_frame(i, w, h).tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    if audio:
        path.with_suffix(".tone.wav").unlink()
    return path


def remux(src: Path, dst: Path, *, keep=lambda packet: True, display: tuple[int, bool] | None = None) -> Path:
    """Copy packets (no re-encode), dropping those ``keep`` refuses; ``display`` = (ccw degrees, hflip)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {}
        for s in inp.streams:
            streams[s.index] = out.add_stream_from_template(s)
            if display is not None and s.type == "video":
                streams[s.index].set_display_rotation(display[0], hflip=display[1])
        for packet in inp.demux():
            if packet.dts is None or not keep(packet):
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def ffmpeg_frame(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` as FFmpeg itself shows it (its autorotation and all), as RGB."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"select=eq(n\\,{index})", "-frames:v", "1",
         "-f", "image2pipe", "-vcodec", "png", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def ffprobe_times(path: Path) -> list[float | None]:
    """FFmpeg's own timeline: each decoded frame's best-effort timestamp (None where it has none)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=best_effort_timestamp_time",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [None if "N/A" in line else float(line.strip().strip(",")) for line in out.split()]


# ------------------------------------------------------------------------------------------ builds


@dataclass
class Built:
    data: Path
    index: dict[str, dict] = field(init=False)
    rejects: list[dict] = field(init=False)
    manifest: dict = field(init=False)
    members: dict[str, bytes] = field(init=False)

    def __post_init__(self):
        self.index = {r["key"]: r for r in pq.read_table(self.data / "index.parquet").to_pylist()}
        self.rejects = pq.read_table(self.data / "rejects.parquet").to_pylist()
        self.manifest = json.loads((self.data / "manifest.json").read_text())
        self.members = {}
        for tar in sorted((self.data / "shards").glob("*.tar")):
            with tarfile.open(tar) as t:
                for m in t.getmembers():
                    self.members[m.name] = t.extractfile(m).read()

    def keys(self, session: str) -> list[str]:
        return sorted(k for k, r in self.index.items() if r["session"] == session)

    def window_rejects(self, session: str) -> dict[str, dict]:
        return {r["key"]: r for r in self.rejects if r["session"] == session and r["key"] and r["modality"] is None}

    def modality_rejects(self, session: str, modality: str) -> dict[str, dict]:
        return {r["key"]: r for r in self.rejects if r["session"] == session and r["modality"] == modality}

    def image(self, key: str, member: str = "jpg") -> np.ndarray:
        blob = np.frombuffer(self.members[f"{key}.{member}"], np.uint8)
        return cv2.cvtColor(cv2.imdecode(blob, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def mel(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.members[f"{key}.mel.npy"]), allow_pickle=False)

    def meta(self, key: str) -> dict:
        return json.loads(self.members[f"{key}.json"])

    def assert_accounting(self) -> None:
        c = self.manifest["counts"]
        window_rejects = sum(1 for r in self.rejects if r["key"] and r["modality"] is None)
        assert c["windows_planned"] == len(self.index) + window_rejects


def run_build(raw: Path, data: Path, engine: str = "local", **cfg) -> Built:
    build(raw, data, BuildConfig(**cfg), EngineConfig(engine=engine))
    return Built(data)


def captures_session(raw: Path, name: str, video: Path, audio: Path | None = None, **streams) -> Path:
    """A captures session folder: the video (+ a separate audio file), manifest.json; ``streams`` adds more."""
    folder = raw / name
    folder.mkdir(parents=True)
    shutil.copy(video, folder / ("video" + video.suffix))
    st: dict = {"video": {"path": "video" + video.suffix, "clock": {"offset_s": 0.0, "drift_ppm": 0.0}}}
    if audio is not None:
        shutil.copy(audio, folder / ("audio" + audio.suffix))
        st["audio"] = {"path": "audio" + audio.suffix, "track": "file", "clock": {"offset_s": 0.0, "drift_ppm": 0.0}}
    st.update(streams)
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "session_id": name, "streams": st}))
    return folder


# ------------------------------------------------------------------------------------------ audio checks


@functools.cache
def _tone_bin(f: float) -> int:
    x = 0.3 * np.sin(2 * np.pi * f * np.arange(32000) / A.TARGET_SR)[None]
    return int(np.argmax(A.log_mel(x.astype(np.float32))[0].mean(axis=1)))


def tone_match(mel: np.ndarray, content_start_s: float) -> float:
    """Share of the mel's columns whose loudest bin is the tone's at that moment (columns within 30 ms of a
    pitch step are left out); ``content_start_s``: content time of the window's first sample."""
    centre = content_start_s + (np.arange(198) * 160 + 200) / A.TARGET_SR
    clear = np.abs(centre / 0.5 - np.round(centre / 0.5)) * 0.5 > 0.03
    got = np.argmax(mel[0][:, :198], axis=0)
    want = np.array([_tone_bin(float(f)) for f in freq(centre)])
    return float(np.mean(np.abs(got - want)[clear] <= 1))


# ------------------------------------------------------------------------------------------ video cases


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, Built]:
    """One build of a videos folder with every video case; the raw folder keeps the sources."""
    root = tmp_path_factory.mktemp("videos")
    src, raw = root / "src", root / "raw"
    src.mkdir()
    raw.mkdir()
    base = write_video(src / "base.mp4")
    # 90° display matrix as phones write it, through FFmpeg's rotate tag
    ffmpeg("-i", str(base), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(raw / "rot90.mp4"))
    # a mirrored orientation: 90° counter-clockwise plus a horizontal flip (EXIF 7, "transverse")
    remux(base, raw / "transverse.mp4", display=(90, True))
    remux(base, raw / "rot180.mp4", display=(180, False))
    # a legacy `rotate` tag (clockwise degrees, as FFmpeg < 5 and some Matroska writers left it), no matrix
    ffmpeg("-i", str(base), "-c", "copy", "-metadata:s:v:0", "ROTATE=90", str(raw / "legacy.mkv"))
    # 80x100 coded pixels, SAR 2:1: displays at 160x100
    write_video(raw / "sar.mp4", w=80, extra=("-vf", "setsar=2/1"), audio=False)
    # H.264 with 3 B-frames in AVI: pts come out of order
    write_video(raw / "bframes.avi", audio=False, vcodec=("-c:v", "libx264", "-bf", "3", "-preset", "ultrafast"))
    # 8 s whose timestamps start at 45 s, in Matroska
    ffmpeg("-i", str(base), "-t", "8", "-c", "copy", "-output_ts_offset", "45", str(raw / "late.mkv"))
    # 12 s with 3,000 bytes overwritten in the middle of mdat
    damaged = bytearray(base.read_bytes())
    pos, size = _mdat(bytes(damaged))
    mid = pos + size // 2
    damaged[mid : mid + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (raw / "damaged.mp4").write_bytes(bytes(damaged))
    (root / "damage.json").write_text(json.dumps([mid, mid + 3000]))
    # 0.5 s of AAC packets missing at 5.0-5.5 s; the pts jump over the hole
    remux(base, raw / "gap.mp4", keep=lambda p: not (p.stream.type == "audio" and 5.0 <= p.pts * p.time_base < 5.5))
    return root, run_build(raw, root / "data", layout="videos")


def _mdat(data: bytes) -> tuple[int, int]:
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"mdat":
            return pos, size
        pos += size
    raise AssertionError("no mdat box")


def _frame_index(t_s: float, start_s: float = 0.0) -> int:
    """Index of the frame shown at t_s (a stream may start a fraction of a frame late: Matroska copies of
    an MP4 with AAC start their video at 23 ms)."""
    return int(np.floor((t_s - start_s) * FPS + 1e-6))


def test_every_window_is_accounted_for(videos):
    _, b = videos
    b.assert_accounting()
    assert not [r for r in b.rejects if r["reason"] in (R.INTERNAL_ERROR, R.DECODE_ERROR)]


@pytest.mark.parametrize(
    ("name", "exif", "degrees"),
    [("rot90.mp4", 8, 90), ("transverse.mp4", 7, 90), ("rot180.mp4", 3, 180), ("legacy.mkv", 6, 270)],
)
def test_orientation_frames_stored_as_meant_to_be_seen(videos, name, exif, degrees):
    root, b = videos
    session = name.split(".")[0]
    keys = b.keys(session)
    assert len(keys) == 6
    if name.endswith(".mp4"):  # FFmpeg >= 5 ignores legacy tags; its display-matrix convention is the reference
        # FFmpeg's own autorotated picture of frame 0 is the coded frame turned by `exif`
        shown = ffmpeg_frame(root / "raw" / name, 0)
        assert np.abs(shown.astype(int) - orient(code_frame(0), exif)).mean() < 6
    for key in keys:
        row = b.index[key]
        assert row["video_rotation_deg"] == degrees
        k = _frame_index(row["frame0_t_s"])
        stored = b.image(key)
        want = orient(code_frame(k), exif)
        assert stored.shape == want.shape
        assert np.abs(stored.astype(int) - want).mean() < 6
        # undoing the orientation gives back the coded frame, whose code is the frame's index
        assert read_code(orient(stored, {8: 6, 6: 8}.get(exif, exif))) == k % 256
        assert b.meta(key)["video_orientation"]["exif"] == exif


def _depth_frame(w: int = W, h: int = H) -> np.ndarray:
    """16-bit depth in mm: 500 mm on the left rising to 3000 mm on the right, a 4000 mm block top-right
    (where the video's red marker is: they are the same sensor's picture)."""
    d = np.tile(np.linspace(500, 3000, w), (h, 1)).astype(np.uint16)
    d[: h // 5, w - w // 5 :] = 4000
    return d


def test_depth_is_turned_with_its_video(tmp_path):
    """A rig recording with a 90° display matrix: the depth frames (no matrix of their own, the camera's
    sensor orientation) are stored turned the same way, so the pair stays aligned; the intrinsics follow."""
    src, raw = tmp_path / "src", tmp_path / "raw"
    src.mkdir()
    base = write_video(src / "base.mp4", n=4 * FPS, audio=False)
    ffmpeg("-i", str(base), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(src / "rot.mp4"))
    intrinsics = {"fx": 120.0, "fy": 110.0, "cx": 70.0, "cy": 40.0, "baseline_m": 0.075}
    depth = {"frames": "depth", "units": "mm", "intrinsics": intrinsics, "clock": {"offset_s": 0.0, "drift_ppm": 0.0},
             "timestamps": {"path": "depth_timestamps.csv", "source": "csv", "unit": "ms"}}  # fmt: skip
    folder = captures_session(raw, "rig", src / "rot.mp4", depth=depth)
    (folder / "depth").mkdir()
    rows = ["file,timestamp"]
    for i in range(40):
        cv2.imwrite(str(folder / "depth" / f"{i:06d}.png"), _depth_frame())
        rows.append(f"{i:06d}.png,{i * 100}")
    (folder / "depth_timestamps.csv").write_text("\n".join(rows) + "\n")
    b = run_build(raw, tmp_path / "data", layout="captures")
    b.assert_accounting()
    keys = b.keys("rig")
    assert len(keys) == 2
    for key in keys:
        assert b.index[key]["has_depth"] and b.index[key]["video_rotation_deg"] == 90
        stored = cv2.imdecode(np.frombuffer(b.members[f"{key}.depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(stored, orient(_depth_frame(), 8))
        # the depth marker sits where the image's red marker sits
        rgb = b.image(key)
        assert stored.shape == rgb.shape[:2]
        red = (rgb[..., 0] > 180) & (rgb[..., 1] < 90)
        assert np.all(stored[red] == 4000)
        meta = b.meta(key)
        assert meta["depth_orientation"] == 8
        # 90° counter-clockwise: x' = y, y' = (W - 1) - x; fx and fy swap
        want = {"fx": 110.0, "fy": 120.0, "cx": 40.0, "cy": W - 1 - 70.0, "baseline_m": 0.075}
        assert meta["depth_intrinsics"] == pytest.approx(want)


def test_unrotated_video_records_no_rotation(videos):
    _, b = videos
    for key in b.keys("late"):
        assert b.index[key]["video_rotation_deg"] == 0 and b.index[key]["video_sar"] == 1.0
        assert "video_orientation" not in b.meta(key)


def test_non_square_pixels_stored_at_display_aspect(videos):
    _, b = videos
    keys = b.keys("sar")
    assert len(keys) == 6
    for key in keys:
        row = b.index[key]
        assert row["video_sar"] == 2.0
        k = _frame_index(row["frame0_t_s"])
        stored = b.image(key)
        assert stored.shape == (H, 2 * 80, 3)  # 80x100 coded, displayed 160x100
        want = cv2.resize(code_frame(k, 80, H), (160, H), interpolation=cv2.INTER_NEAREST)
        assert read_code(stored) == k % 256
        # the blocks keep their displayed proportions: the code grid's columns are 160/6 px apart
        assert np.abs(stored.astype(int) - want).mean() < 25


def test_frame_times_follow_ffmpeg_best_effort_timeline(videos):
    root, b = videos
    times = ffprobe_times(root / "raw" / "bframes.avi")
    assert len(times) == 12 * FPS
    # frames FFmpeg gives no time (drained at the end) follow the last at the frame step
    for i, t in enumerate(times):
        if t is None:
            times[i] = times[i - 1] + 1 / FPS
    keys = b.keys("bframes")
    assert len(keys) == 6
    for key in keys:
        row = b.index[key]
        inside = [i for i, t in enumerate(times) if row["clip_start_s"] - 1e-9 <= t < row["clip_end_s"] - 1e-9]
        assert row["frame0_t_s"] == pytest.approx(times[inside[0]], abs=1e-6)
        assert row["frame1_t_s"] == pytest.approx(times[inside[-1]], abs=1e-6)
        # and the pictures are the frames at those times (decode order = display order = the code)
        assert read_code(b.image(key)) == inside[0] % 256
        assert read_code(b.image(key, "frame1.jpg")) == inside[-1] % 256


def test_late_timestamps_windows_cover_the_media(videos):
    _, b = videos
    keys = b.keys("late")
    assert [b.index[k]["clip_start_s"] for k in keys] == [45.0, 47.0, 49.0, 51.0]
    assert not b.window_rejects("late")
    for key in keys:
        row = b.index[key]
        assert row["frame0_t_s"] == pytest.approx(row["clip_start_s"])
        assert read_code(b.image(key)) == _frame_index(row["frame0_t_s"], 45.0) % 256
        # audio placed by its timestamps too: the tone of content time (t - 45)
        assert row["has_audio"]
        assert tone_match(b.mel(key), row["clip_start_s"] - 45.0) > 0.9


def test_damage_mid_file_rejects_only_the_damaged_windows(videos):
    root, b = videos
    lo, hi = json.loads((root / "damage.json").read_text())
    hit, keyframes = [], []
    with av.open(str(root / "src" / "base.mp4")) as c:
        for p in c.demux():
            if p.size and p.stream.type == "video":
                t = float(p.pts * p.time_base)
                if p.is_keyframe:
                    keyframes.append(t)
                if p.pos < hi and p.pos + p.size > lo:
                    hit.append(t)
    assert hit, "the damage must touch video packets"
    end = min(k for k in keyframes if k > max(hit))  # frames until the next keyframe lean on the damage
    rejected = b.window_rejects("damaged")
    assert rejected and all(r["reason"] == R.CORRUPT_PACKETS for r in rejected.values())
    for r in rejected.values():  # only windows touching [first damaged packet, next keyframe)
        assert r["start_s"] < end and r["end_s"] > min(hit)
    kept = b.keys("damaged")
    assert len(kept) + len(rejected) == 6 and len(kept) >= 4
    for key in kept:
        row = b.index[key]
        assert read_code(b.image(key)) == _frame_index(row["frame0_t_s"]) % 256
        assert read_code(b.image(key, "frame1.jpg")) == _frame_index(row["frame1_t_s"]) % 256
        assert not (row["clip_start_s"] < end and row["clip_end_s"] > min(hit))


def test_audio_pts_gap_is_placed_by_timestamps(videos):
    _, b = videos
    gap = b.modality_rejects("gap", "audio")
    assert set(gap) == {"gap_000004000"}  # the window holding the 0.5 s hole, and only it
    assert gap["gap_000004000"]["reason"] == R.AUDIO_GAP
    for key in b.keys("gap"):
        row = b.index[key]
        if key == "gap_000004000":
            assert not row["has_audio"]
            continue
        assert row["has_audio"], key  # the last window too: the track runs to its end
        assert abs(row["sync_err_audio_ms"]) < 1.0
        # not shifted by the hole: the tone of the window's own time
        assert tone_match(b.mel(key), row["clip_start_s"]) > 0.9, key


# ------------------------------------------------------------------------------------------ audio cases


def _mp3(src: Path, x: np.ndarray, rate: int) -> Path:
    wav = write_wav(src.with_suffix(".wav"), x, rate)
    ffmpeg("-i", str(wav), "-c:a", "libmp3lame", str(src))
    return src


def _first_pts_at(path: Path, rate: int | None = None, channels: int | None = None) -> float:
    """Stream time of the first decoded frame of that format (where the appended file's audio begins)."""
    with av.open(str(path)) as c:
        for p in c.demux(c.streams.audio[0]):
            try:
                frames = p.decode()
            except av.error.FFmpegError:
                continue
            for f in frames:
                if (rate is None or f.sample_rate == rate) and (channels is None or f.layout.nb_channels == channels):
                    return float(f.pts * f.time_base)
    raise AssertionError("format not found")


@pytest.fixture(scope="module")
def switches(tmp_path_factory) -> tuple[Path, Built]:
    """Captures sessions whose separate audio file changes format after 4 s: 44.1 -> 48 kHz MP3 (rate) and
    mono -> stereo ADTS AAC (layout); the video (8 s, no audio) is valid throughout."""
    root = tmp_path_factory.mktemp("switches")
    src, raw = root / "src", root / "raw"
    src.mkdir()
    video = write_video(src / "video.mp4", n=8 * FPS, audio=False)
    a = _mp3(src / "a.mp3", tone(4, 44100), 44100)
    bb = _mp3(src / "b.mp3", tone(4, 48000, t0=4), 48000)
    (src / "rate.mp3").write_bytes(a.read_bytes() + bb.read_bytes())
    write_wav(src / "m.wav", tone(4, 44100), 44100)
    write_wav(src / "s.wav", tone(4, 44100, t0=4, channels=2), 44100)
    for n in ("m", "s"):
        ffmpeg("-i", str(src / f"{n}.wav"), "-c:a", "aac", "-f", "adts", str(src / f"{n}.aac"))
    (src / "layout.aac").write_bytes((src / "m.aac").read_bytes() + (src / "s.aac").read_bytes())
    captures_session(raw, "rate", video, src / "rate.mp3")
    captures_session(raw, "layout", video, src / "layout.aac")
    return root, run_build(raw, root / "data", layout="captures")


@pytest.mark.parametrize(("session", "audio", "fmt"), [("rate", "rate.mp3", (48000, None)),
                                                       ("layout", "layout.aac", (None, 2))])  # fmt: skip
def test_audio_format_change_is_followed(switches, session, audio, fmt):
    root, b = switches
    b.assert_accounting()
    switch = _first_pts_at(root / "src" / audio, *fmt)
    assert 4.0 < switch < 4.2
    keys = b.keys(session)
    assert len(keys) == 4  # the video is never lost with the audio
    rejected = b.modality_rejects(session, "audio")
    # only the window the switch falls in loses its audio, with the specific reason; where two MP3 files
    # were glued, the second file's ID3 tag sits between them as a packet the decoder refuses, which is
    # damage in the same window (the rejected window is the same either way)
    assert set(rejected) == {f"{session}_000004000"}
    reasons = {R.AUDIO_FORMAT_CHANGE} if session == "layout" else {R.AUDIO_FORMAT_CHANGE, R.CORRUPT_PACKETS}
    assert rejected[f"{session}_000004000"]["reason"] in reasons
    for key in keys:
        row = b.index[key]
        if key in rejected:
            continue
        assert row["has_audio"]
        # the pitch is right after the switch as before it (not x0.91); content after it starts at `switch`
        content = row["clip_start_s"] if row["clip_start_s"] < 4.0 else row["clip_start_s"] - switch + 4.0
        best = max(tone_match(b.mel(key), content + lag) for lag in np.arange(-0.03, 0.031, 0.005))
        assert best > 0.85, (key, best)


def test_audio_figures_describe_the_channel_the_mel_is_built_from():
    """A stereo window with sound only in channel 1: under ``first`` (ImageBind: channel 0) it is silent,
    and the figures say so; under ``mean`` it is the mean of the two."""
    loud = 0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    x = np.stack([np.zeros(32000), loud]).astype(np.float32)
    cut = A.CutWindow("w", 0.0, A.WindowStatus.OK, x, 0.0)
    first = A.finish_window(cut, "first")
    mean = A.finish_window(cut, "mean")
    assert first.quality.rms_dbfs == A.RMS_FLOOR_DBFS  # the stored mel is of silence
    assert np.allclose(first.mel, A.log_mel(x[:1]))
    rms_half = 20 * np.log10(np.sqrt(np.mean((loud / 2) ** 2)))
    assert mean.quality.rms_dbfs == pytest.approx(rms_half, abs=0.01)
    clipped = np.stack([np.zeros(32000), np.ones(32000)]).astype(np.float32)
    assert A.finish_window(A.CutWindow("c", 0.0, A.WindowStatus.OK, clipped, 0.0), "first").quality.clipped_frac == 0


def test_a_failure_in_the_audio_work_costs_only_the_audio(tmp_path, monkeypatch):
    """Whatever goes wrong in the audio work (a bug, an input nobody foresaw), the video of every window is
    kept and the audio of the windows not yet done is an internal_error reject, nothing vanishes."""
    from transforms import media
    from transforms.layouts import ClockSpec
    from transforms.plan import Window

    path = write_video(tmp_path / "v.mp4", n=8 * FPS)
    real, calls = A.finish_window, []

    def failing(cut, channels):
        calls.append(cut.id)
        if len(calls) == 2:
            raise RuntimeError("planted")
        return real(cut, channels)

    monkeypatch.setattr(A, "finish_window", failing)
    windows = [Window(i, 2.0 * i, 2.0 * i + 2) for i in range(4)]
    events = list(media.decode_media(path, video_windows=windows, video_clock=ClockSpec(), audio_windows=windows,
                                     audio_clock=ClockSpec(), cfg=BuildConfig()))  # fmt: skip
    video = {e.video.index: e.video for e in events if e.video}
    audio = {e.audio.id: e.audio for e in events if e.audio}
    assert sorted(video) == sorted(audio) == [0, 1, 2, 3]
    assert all(v.first is not None and read_code(_jpg(v.first.jpg)) == (i * 50) % 256
               for i, v in video.items())  # fmt: skip
    assert audio[0].mel is not None
    assert all(audio[i].reject_reason is R.INTERNAL_ERROR and "planted" in audio[i].detail for i in (1, 2, 3))


def _jpg(blob: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------ engines


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["beam", "ray"])
def test_engines_store_the_same_bytes(videos, tmp_path, engine):
    """Orientation, SAR, B-frame AVI and the late MKV: the same shards and index on Beam and Ray."""
    root, local = videos
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("rot90.mp4", "sar.mp4", "bframes.avi", "late.mkv"):
        shutil.copy(root / "raw" / name, raw / name)
    ref = run_build(raw, tmp_path / "local", layout="videos")
    other = run_build(raw, tmp_path / engine, engine=engine, layout="videos")
    assert (tmp_path / engine / "index.parquet").read_bytes() == (tmp_path / "local" / "index.parquet").read_bytes()
    assert other.members == ref.members
    assert ref.keys("rot90") == local.keys("rot90")
