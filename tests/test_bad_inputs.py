"""Hostile and broken inputs: each one gets its own reject reason, none aborts the build, nothing is lost.

The corpora are generated here: clean synthetic captures and videos, plus corrupted copies (cut MP4s, a
zero-byte file, a video without audio, audio without video, broken and oversized PNGs, messy timestamp
and IMU tables, missing depth, manifest paths that leave the input). Each corpus is built once; the
crash and hang cases run in a small build of their own with the watchdog's fault injection.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import wave
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build, load_summary
from pipelines.work import FAULT_ENV
from schemas.reasons import RejectReason as R
from tests.csvutil import read_csv, write_csv
from transforms.config import BuildConfig

SMALL = dict(width=160, height=120, workers=1)
SECONDS = 10  # five windows; the 5 s IMU windows of windows 1..3 lie inside the recording
BASE = "s005_000"  # the session the corrupted captures are copied from (30 fps, audio in the video)
DECLARED = ("audio", "depth", "thermal", "imu")


def _key(session: str, k: int) -> str:
    return f"{session}_{k * 2000:09d}"


@dataclass
class Built:
    raw: Path
    data: Path
    index: list[dict] = field(init=False)
    rejects: list[dict] = field(init=False)
    manifest: dict = field(init=False)
    cases: dict = field(default_factory=dict)  # what each corruption touched, for the assertions

    def __post_init__(self):
        self.index = pq.read_table(self.data / "index.parquet").to_pylist()
        self.rejects = pq.read_table(self.data / "rejects.parquet").to_pylist()
        self.manifest = json.loads((self.data / "manifest.json").read_text())

    def samples(self, session: str) -> dict[str, dict]:
        return {r["key"]: r for r in self.index if r["session"] == session}

    def rows(self, session: str, **match) -> list[dict]:
        return [r for r in self.rejects if r["session"] == session and all(r[k] == v for k, v in match.items())]

    def modality_rejects(self, session: str, modality: str) -> dict[str, dict]:
        out = {}
        for r in self.rows(session, modality=modality):
            if r["key"] is not None:
                assert r["key"] not in out, f"two {modality} rejects for {r['key']}"
                out[r["key"]] = r
        return out


# ------------------------------------------------------------------------------------------ corruptions


def _remux(src: Path, dst: Path, kinds=("video", "audio"), faststart: bool = False) -> None:
    """Copy packets of the chosen stream kinds into a new MP4 (no re-encode); faststart puts moov first."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options=options) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in kinds}
        for packet in inp.demux(*[s for s in inp.streams if s.index in streams]):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def _first_video_packet(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        for packet in c.demux(c.streams.video[0]):
            if packet.size:
                return packet.pos, packet.size
    raise AssertionError(f"{path} has no video packet")


def _cut(src: Path, dst: Path, at: int) -> None:
    dst.write_bytes(src.read_bytes()[:at])


def _cut_inside_first_frame(src: Path, dst: Path) -> None:
    pos, size = _first_video_packet(src)
    _cut(src, dst, pos + size // 2)


def _write_tone_wav(path: Path, seconds: float = 6.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _derive(raw: Path, name: str) -> Path:
    """A copy of the base session under a new session id."""
    folder = raw / name
    shutil.copytree(raw / BASE, folder)
    _edit_manifest(folder, lambda m: m.update(session_id=name))
    return folder


def _edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m, indent=2))


def _to_session(folder: Path, stream: str, t_stream_s):
    clock = json.loads((folder / "manifest.json").read_text())["streams"][stream]["clock"]
    return np.asarray(t_stream_s, np.float64) * (1 + clock["drift_ppm"] * 1e-6) + clock["offset_s"]


def _frames_between(folder: Path, stream: str, lo: float, hi: float) -> list[str]:
    """Frame files of a depth/thermal stream whose session time is in [lo, hi]."""
    _, rows = read_csv(folder / f"{stream}_timestamps.csv")
    t = _to_session(folder, stream, [float(r["timestamp"]) * 1e-3 for r in rows])
    return [r["file"] for r, ts in zip(rows, t, strict=True) if lo <= ts <= hi]


def _png_chunks(data: bytes):
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        yield pos, data[pos + 4 : pos + 8], length
        pos += 12 + length


def _garble_idat(path: Path, seed: int) -> None:
    """Random bytes in place of the compressed pixels; the chunk structure stays intact."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for pos, kind, length in list(_png_chunks(bytes(data))):
        if kind == b"IDAT":
            data[pos + 8 : pos + 8 + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _declare_huge(path: Path, side: int = 100_000) -> None:
    """Patch IHDR to declare side x side pixels, with a valid CRC, so only the size is wrong."""
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------ corpora


def _make_captures(raw: Path, outside: Path) -> dict:
    cases: dict = {}
    base = raw / BASE

    # video without its audio track, although the manifest says the audio rides in the video
    folder = _derive(raw, "bad_noaudio")
    _remux(base / "video.mp4", folder / "video.mp4", kinds=("video",))

    # depth frames that window 1 may pick: garbage pixels; window 2's candidates: cut in half
    folder = _derive(raw, "bad_png")
    garbled = _frames_between(folder, "depth", 1.85, 2.2)
    for i, name in enumerate(garbled):
        _garble_idat(folder / "depth" / name, seed=i)
    cut = _frames_between(folder, "depth", 3.85, 4.2)
    for name in cut:
        p = folder / "depth" / name
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    cases["bad_png"] = {1: {f"bad_png/depth/{n}" for n in garbled}, 2: {f"bad_png/depth/{n}" for n in cut}}

    # depth timestamps: one row repeated, two rows swapped; the same frames, so the same pairing
    folder = _derive(raw, "bad_ts")
    header, rows = read_csv(folder / "depth_timestamps.csv")
    rows[10], rows[11] = rows[11], rows[10]
    rows.insert(21, dict(rows[20]))
    write_csv(folder / "depth_timestamps.csv", header, rows)

    # IMU: non-finite values over [1.0, 1.3] s (only window 1's IMU span [0.5, 5.5] sees them) and no
    # samples over [9.0, 9.3] s (only window 3's span [4.5, 9.5]); window 2's span [2.5, 7.5] stays clean
    folder = _derive(raw, "bad_imu")
    header, rows = read_csv(folder / "imu.csv")
    t = _to_session(folder, "imu", [float(r["component_timestamp_ms"]) * 1e-3 for r in rows])
    for r, ts in zip(rows, t, strict=True):
        if 1.0 <= ts <= 1.3:
            r["gyro_x"] = "nan"
    rows = [r for r, ts in zip(rows, t, strict=True) if not 9.0 <= ts <= 9.3]
    write_csv(folder / "imu.csv", header, rows)

    # depth frames missing from 1.9 s to 3.9 s: rows and files gone
    folder = _derive(raw, "bad_depthgap")
    gone = set(_frames_between(folder, "depth", 1.9, 3.9))
    header, rows = read_csv(folder / "depth_timestamps.csv")
    write_csv(folder / "depth_timestamps.csv", header, [r for r in rows if r["file"] not in gone])
    for name in gone:
        (folder / "depth" / name).unlink()

    # thermal frames near 2 s declare 100000 x 100000 pixels
    folder = _derive(raw, "bad_huge")
    huge = _frames_between(folder, "thermal", 1.8, 2.3)
    for name in huge:
        _declare_huge(folder / "thermal" / name)
    cases["bad_huge"] = {f"bad_huge/thermal/{n}" for n in huge}

    # a zero-byte IMU table: the IMU part of every window is rejected, the samples stay
    folder = _derive(raw, "bad_emptyimu")
    (folder / "imu.csv").write_bytes(b"")

    # manifest paths that leave the input: '..' in the manifest, and a symlink to a real file outside
    folder = _derive(raw, "bad_dotdot")
    _edit_manifest(folder, lambda m: m["streams"]["imu"].update(path="../../etc/passwd"))
    folder = _derive(raw, "bad_symlink")
    outside.mkdir()
    shutil.move(folder / "imu.csv", outside / "imu.csv")
    (folder / "imu.csv").symlink_to(outside / "imu.csv")
    return cases


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> tuple[Built, Built]:
    """(the clean captures built alone, the clean captures plus every corrupted copy built together)."""
    base = tmp_path_factory.mktemp("captures")
    clean = base / "clean"
    synth(clean, SynthConfig(layout="captures", sessions=2, seconds=SECONDS, seed=5, **SMALL))
    raw = base / "raw"
    shutil.copytree(clean, raw)
    cases = _make_captures(raw, base / "outside")
    cfg = BuildConfig(layout="captures")
    build(clean, base / "data_clean", cfg, EngineConfig("local"))
    build(raw, base / "data", cfg, EngineConfig("local"))
    return Built(clean, base / "data_clean"), Built(raw, base / "data", cases=cases)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Built:
    raw = tmp_path_factory.mktemp("videos") / "raw"
    synth(raw, SynthConfig(layout="videos", sessions=1, seconds=6, seed=5, **SMALL))
    src = raw / f"{BASE}.mp4"
    _cut(src, raw / "cut_mid.mp4", src.stat().st_size // 2)  # moov is at the end: the cut removes it
    _cut_inside_first_frame(src, raw / "cut_frame.mp4")
    _remux(src, raw / "fs_whole.mp4", faststart=True)  # moov first: a cut file still opens
    whole = raw / "fs_whole.mp4"
    _cut(whole, raw / "fs_mid.mp4", whole.stat().st_size // 2)
    _cut_inside_first_frame(whole, raw / "fs_frame.mp4")
    (raw / "empty.mp4").write_bytes(b"")
    _remux(src, raw / "audio_m4a.m4a", kinds=("audio",))
    _write_tone_wav(raw / "audio_wav.wav")
    shutil.rmtree(raw / "_truth")
    data = raw.parent / "data"
    build(raw, data, BuildConfig(layout="videos"), EngineConfig("local"))
    return Built(raw, data)


# ------------------------------------------------------------------------------------------ accounting


def _assert_accounted(b: Built) -> None:
    """Every planned window is a sample or a window reject, per unit and in total, in the tables and manifest."""
    counts = b.manifest["counts"]
    planned = samples = window_rejects = 0
    for unit in b.manifest["inputs"]:
        summary = load_summary(b.data, unit)
        kept = b.samples(unit)
        rejected = [r["key"] for r in b.rows(unit, modality=None) if r["key"] is not None]
        assert len(kept) == summary.samples and len(rejected) == summary.window_rejects, unit
        assert sorted([*kept, *rejected]) == [_key(unit, k) for k in range(summary.windows_planned)], unit
        # a modality reject belongs to a kept sample, and every declared modality is present or explained
        for m in DECLARED:
            explained = b.modality_rejects(unit, m)
            assert set(explained) <= set(kept), (unit, m)
            for key, row in kept.items():
                if row[f"source_{m}"] is not None:
                    assert row[f"has_{m}"] != (key in explained), (key, m)
        planned += summary.windows_planned
        samples += len(kept)
        window_rejects += len(rejected)
    assert samples == len(b.index) == counts["samples"]
    assert window_rejects == counts["window_rejects"]
    assert window_rejects == sum(r["key"] is not None and r["modality"] is None for r in b.rejects)
    assert planned == counts["windows_planned"] == samples + window_rejects
    assert counts["reject_rows"] == len(b.rejects)
    assert b.manifest["rejects_by_reason"] == dict(Counter(r["reason"] for r in b.rejects))
    assert {r["reason"] for r in b.rejects} <= {r.value for r in R}


def test_nothing_is_lost(captures, videos):
    clean, bad = captures
    for built in (clean, bad, videos):
        _assert_accounted(built)
    assert bad.manifest["counts"]["units_failed"] == 0 and videos.manifest["counts"]["units_failed"] == 0


def test_clean_sessions_unaffected(captures, videos):
    clean, bad = captures
    sessions = sorted({r["session"] for r in clean.index})
    assert sessions == [BASE, "s005_001"]
    for s in sessions:
        # every window of a clean recording is a sample, identical to a build without the bad inputs
        assert sorted(clean.samples(s)) == [_key(s, k) for k in range(SECONDS // 2)]
        strip = [{k: v for k, v in r.items() if k != "shard"} for r in clean.samples(s).values()]
        assert strip == [{k: v for k, v in r.items() if k != "shard"} for r in bad.samples(s).values()]
        assert clean.rows(s) == bad.rows(s)
    assert sorted(videos.samples(BASE)) == [_key(BASE, k) for k in range(3)]
    assert sorted(videos.samples("fs_whole")) == [_key("fs_whole", k) for k in range(3)]
    assert videos.rows(BASE) == [] and videos.rows("fs_whole") == []


# ------------------------------------------------------------------------------------------ media files


def _input_reject(b: Built, session: str) -> dict:
    rows = b.rows(session)
    assert len(rows) == 1 and rows[0]["key"] is None and rows[0]["modality"] is None, rows
    assert not b.samples(session)
    return rows[0]


@pytest.mark.parametrize("name", ["cut_mid", "cut_frame"])
def test_truncated_mp4_without_moov_is_an_input_reject(videos, name):
    row = _input_reject(videos, name)
    assert row["reason"] == R.TRUNCATED_MEDIA and row["source"] == f"{name}.mp4"


def test_faststart_mp4_cut_mid_file_keeps_the_windows_before_the_cut(videos):
    kept = videos.samples("fs_mid")
    rejected = {r["key"]: r for r in videos.rows("fs_mid", modality=None)}
    assert kept and rejected and set(kept).isdisjoint(rejected)
    assert max(kept) < min(rejected)  # the cut splits the recording: samples first, then rejects
    for r in rejected.values():
        assert r["reason"] == R.TRUNCATED_MEDIA and r["source"] == "fs_mid.mp4"
    # the frames before the cut are exactly those of the intact file
    whole = videos.samples("fs_whole")
    first = kept["fs_mid_000000000"]
    assert first["sha256_jpg"] == whole["fs_whole_000000000"]["sha256_jpg"]
    # the cut falls inside a kept window: its audio is reported as truncated, not as off the track
    audio = videos.modality_rejects("fs_mid", "audio")
    assert audio and set(audio) <= set(kept)
    assert all(r["reason"] == R.TRUNCATED_MEDIA and r["source"] == "fs_mid.mp4" for r in audio.values())


def test_faststart_mp4_cut_inside_first_frame_rejects_every_window(videos):
    assert not videos.samples("fs_frame")
    rows = videos.rows("fs_frame")
    assert sorted(r["key"] for r in rows) == [_key("fs_frame", k) for k in range(3)]
    assert all(r["reason"] == R.TRUNCATED_MEDIA and r["source"] == "fs_frame.mp4" for r in rows)


def test_zero_byte_file(videos, captures):
    row = _input_reject(videos, "empty")
    assert row["reason"] == R.EMPTY_FILE and row["source"] == "empty.mp4"
    # a zero-byte side stream costs only that modality
    _, bad = captures
    kept = bad.samples("bad_emptyimu")
    imu = bad.modality_rejects("bad_emptyimu", "imu")
    assert sorted(imu) == sorted(kept) == [_key("bad_emptyimu", k) for k in range(SECONDS // 2)]
    assert all(r["reason"] == R.EMPTY_FILE and r["source"] == "bad_emptyimu/imu.csv" for r in imu.values())


@pytest.mark.parametrize("name", ["audio_m4a.m4a", "audio_wav.wav"])
def test_audio_without_video(videos, name):
    row = _input_reject(videos, Path(name).stem)
    assert row["reason"] == R.NO_VIDEO_STREAM and row["source"] == name


def test_video_without_audio_keeps_the_samples(captures):
    _, bad = captures
    kept = bad.samples("bad_noaudio")
    assert sorted(kept) == [_key("bad_noaudio", k) for k in range(SECONDS // 2)]
    assert all(r["has_video"] and not r["has_audio"] for r in kept.values())
    audio = bad.modality_rejects("bad_noaudio", "audio")
    assert sorted(audio) == sorted(kept)
    assert all(r["reason"] == R.NO_AUDIO_STREAM and r["source"] == "bad_noaudio/video.mp4" for r in audio.values())


# ------------------------------------------------------------------------------------------ side streams


def test_corrupt_png(captures):
    _, bad = captures
    depth = bad.modality_rejects("bad_png", "depth")
    assert sorted(depth) == [_key("bad_png", 1), _key("bad_png", 2)]
    for k, files in bad.cases["bad_png"].items():
        row = depth[_key("bad_png", k)]
        assert row["reason"] == R.CORRUPT_IMAGE and row["source"] in files, row
    assert all(r["has_depth"] for key, r in bad.samples("bad_png").items() if key not in depth)


def test_absurd_png_dimensions(captures):
    _, bad = captures
    thermal = bad.modality_rejects("bad_huge", "thermal")
    assert list(thermal) == [_key("bad_huge", 1)]
    row = thermal[_key("bad_huge", 1)]
    assert row["reason"] == R.ABSURD_DIMENSIONS and row["source"] in bad.cases["bad_huge"]
    assert "100000x100000" in row["detail"]


def test_duplicate_and_non_monotonic_depth_timestamps(captures):
    _, bad = captures
    table = {r["reason"]: r for r in bad.rows("bad_ts", modality="depth", key=None)}
    assert set(table) == {R.DUPLICATE_TIMESTAMPS, R.NON_MONOTONIC_TIMESTAMPS}
    assert all(r["source"] == "bad_ts/depth_timestamps.csv" for r in table.values())
    # repaired, the table pairs every window with the same depth frame as the intact session
    base, messy = bad.samples(BASE), bad.samples("bad_ts")
    assert len(messy) == len(base) == SECONDS // 2
    for k in range(SECONDS // 2):
        b, m = base[_key(BASE, k)], messy[_key("bad_ts", k)]
        assert m["has_depth"] and Path(m["source_depth"]).name == Path(b["source_depth"]).name
        assert m["sha256_depth_png"] == b["sha256_depth_png"] and m["sync_err_depth_ms"] == b["sync_err_depth_ms"]


def test_imu_nan_and_gap_reject_only_the_windows_they_touch(captures):
    _, bad = captures
    imu = bad.modality_rejects("bad_imu", "imu")
    reasons = {key: r["reason"] for key, r in imu.items()}
    assert reasons == {
        _key("bad_imu", 0): R.IMU_OUT_OF_RANGE,  # as in the intact session: the 5 s span starts before 0
        _key("bad_imu", 1): R.IMU_NAN,
        _key("bad_imu", 3): R.IMU_GAP,
        _key("bad_imu", 4): R.IMU_OUT_OF_RANGE,
    }
    assert all(r["source"] == "bad_imu/imu.csv" for r in imu.values())
    assert bad.samples("bad_imu")[_key("bad_imu", 2)]["has_imu"]
    assert set(bad.modality_rejects(BASE, "imu")) == {_key(BASE, 0), _key(BASE, 4)}
    (dropped,) = bad.rows("bad_imu", modality="imu", key=None)
    assert dropped["reason"] == R.IMU_NAN and dropped["source"] == "bad_imu/imu.csv"


def test_depth_missing_for_a_time_range(captures):
    _, bad = captures
    depth = bad.modality_rejects("bad_depthgap", "depth")
    assert list(depth) == [_key("bad_depthgap", 1)]
    row = depth[_key("bad_depthgap", 1)]
    assert row["reason"] == R.DEPTH_MISSING and row["source"] == "bad_depthgap/depth"
    assert sum(r["has_depth"] for r in bad.samples("bad_depthgap").values()) == SECONDS // 2 - 1


def test_manifest_path_escaping_the_input(captures):
    # '..' in one stream's path costs only that stream: every window's IMU is a path_escapes_root reject
    # naming the RAW-relative path, and the session's video and audio are kept
    _, bad = captures
    imu = bad.modality_rejects("bad_dotdot", "imu")
    assert sorted(imu) == [_key("bad_dotdot", k) for k in range(SECONDS // 2)]
    assert {(r["reason"], r["source"]) for r in imu.values()} == {(R.PATH_ESCAPES_ROOT, "../etc/passwd")}
    assert sorted(bad.samples("bad_dotdot")) == [_key("bad_dotdot", k) for k in range(SECONDS // 2)]
    assert all(r["has_video"] and not r["has_imu"] for r in bad.samples("bad_dotdot").values())


def test_symlinked_side_file_leaving_the_input_costs_only_its_modality(captures):
    # a valid manifest whose imu.csv links outside RAW: checked where it is opened (transforms/paths.py)
    _, bad = captures
    imu = bad.modality_rejects("bad_symlink", "imu")
    assert sorted(imu) == [_key("bad_symlink", k) for k in range(SECONDS // 2)]
    assert {(r["reason"], r["source"]) for r in imu.values()} == {(R.PATH_ESCAPES_ROOT, "bad_symlink/imu.csv")}
    assert len(bad.samples("bad_symlink")) == SECONDS // 2


# ------------------------------------------------------------------------------------------ crash, hang


def test_decoder_crash_and_hang_do_not_stop_the_build(tmp_path, videos, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a_clean", "crashme", "hangme"):
        shutil.copyfile(videos.raw / f"{BASE}.mp4", raw / f"{name}.mp4")
    monkeypatch.setenv(FAULT_ENV, "segv:crashme,hang:hangme")
    result = build(raw, tmp_path / "data", BuildConfig(layout="videos", decode_timeout_s=5), EngineConfig("local"))
    b = Built(raw, tmp_path / "data")
    assert result.processed == 3 and b.manifest["counts"]["units_failed"] == 2
    crash, hang = _input_reject(b, "crashme"), _input_reject(b, "hangme")
    assert crash["reason"] == R.DECODER_CRASH and crash["source"] == "crashme.mp4" and "SIGSEGV" in crash["detail"]
    assert hang["reason"] == R.DECODE_TIMEOUT and hang["source"] == "hangme.mp4"
    assert sorted(b.samples("a_clean")) == [_key("a_clean", k) for k in range(3)]
    _assert_accounted(b)


# ---------------------------------------------------------------------- damage and the decoder's threads

_CODECS = {  # tiny encodes of each kind whose damage FFmpeg conceals differently with other thread counts
    "h264.mp4": ("-c:v", "libx264", "-preset", "ultrafast", "-bf", "3", "-g", "25"),  # frame threads
    "mpeg2.mpg": ("-c:v", "mpeg2video", "-bf", "2", "-g", "25"),  # slice threads
    # not HEVC: FFmpeg's HEVC decoder conceals some damage from memory whose content depends on what the
    # process decoded before (one thread: the same damaged file gave other frames after an H.264 and an AV1
    # file than alone), so no thread policy makes it repeatable; see the README's "Damaged media"
    "av1.mkv": ("-c:v", "libsvtav1", "-preset", "12", "-g", "25"),
}


def _damage(src: Path, dst: Path, seed: int, runs: int = 6, size: int = 40) -> None:
    """XOR ``runs`` runs of ``size`` random bytes into the middle 40% of the file (headers and index intact)."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for _ in range(runs):
        at = int(rng.integers(int(0.3 * len(data)), int(0.7 * len(data)) - size))
        noise = rng.integers(1, 256, size, dtype=np.uint8)
        data[at : at + size] = (np.frombuffer(bytes(data[at : at + size]), np.uint8) ^ noise).tobytes()
    dst.write_bytes(bytes(data))


class _Recorder:
    """A sink keeping what an input records, in order, as comparable values (hashes of member bytes)."""

    def __init__(self):
        self.events: list = []
        self.marks: list[int] = []

    def planned(self, n: int) -> None:
        self.events.append(("planned", n))

    def reject(self, r) -> None:
        self.events.append(("reject", r.source, r.reason, r.detail, r.key, r.modality))

    def sample(self, split: str, key: str, members: dict[str, bytes], row: dict) -> None:
        import hashlib

        digests = {k: hashlib.sha256(v).hexdigest() for k, v in sorted(members.items())}
        self.events.append(("sample", split, key, json.dumps(digests), json.dumps(row, sort_keys=True, default=str)))

    def sync(self, rows: list[dict]) -> None:
        self.events.append(("sync", json.dumps(rows, sort_keys=True, default=str)))

    def begin_input(self) -> None:
        self.marks.append(len(self.events))

    def withdraw_input(self) -> None:
        del self.events[self.marks[-1] :]


def test_damaged_videos_are_stored_the_same_whatever_the_decoder_threads(tmp_path):
    """How FFmpeg conceals a damaged packet depends on its threading (frame threads, slice threads, their
    count): a damaged video decoded with several threads is decoded again with one, so what a build stores
    for it does not depend on the engine, the worker count or the machine's cores."""
    from transforms import layouts, media
    from transforms.plan import plan_windows
    from transforms.unit import process_input

    raw = tmp_path / "raw"
    raw.mkdir()
    for name, vcodec in _CODECS.items():
        clean = tmp_path / name
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=6",
                        "-f", "lavfi", "-i", "sine=frequency=440:duration=6", *vcodec, "-pix_fmt", "yuv420p",
                        "-c:a", "mp2" if name.endswith(".mpg") else "aac" if name.endswith(".mp4") else "libopus",
                        str(clean)], check=True)  # fmt: skip
        for seed in (1, 2):
            _damage(clean, raw / f"{Path(name).stem}_{seed}{Path(name).suffix}", seed)
    cfg = BuildConfig(layout="videos", clip_s=0.5, stride_s=0.5)
    units = layouts.discover(raw, cfg.layout).units
    assert len(units) == 2 * len(_CODECS)
    detected = 0
    for unit in units:
        path = raw / unit.video
        info = media.probe(path, cfg.max_image_side)
        windows = plan_windows(info.video_end_s, cfg, info.video_start_s, own_timeline=True)
        media.set_decode_threads(3)
        try:  # the damage is there, and seen, with several threads
            for _ in media.decode_media(path, video_windows=windows, video_clock=unit.video_clock, audio_windows=None,
                                        audio_clock=unit.audio_clock, cfg=cfg):  # fmt: skip
                pass
        except media.DamagedUnderThreads:
            detected += 1
        stored = {}
        for threads in (0, 1, 3):
            media.set_decode_threads(threads)
            sink = _Recorder()
            process_input(raw, unit, cfg, sink)
            stored[threads] = sink.events
        media.set_decode_threads(0)
        assert stored[0] == stored[1] == stored[3], unit.video
        assert any(e[0] == "sample" for e in stored[1]), unit.video  # damage in places, not a dead file
    assert detected >= len(units) - 1, detected  # (a run of XORed bytes may land in the audio alone)
