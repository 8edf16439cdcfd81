"""Side inputs that are wrong in a specific way: each costs only its modality (or window), with a reason.

Covers: 8-bit and implausible depth maps (`depth_bit_depth`, `depth_implausible`), decompression bombs
refused from the header (`decoded_size_over_budget`), a gray+alpha PNG described as it is, a depth
`frames` entry that is a file, an empty `file` cell, one unreadable depth frame, a NaN in the manifest,
a `video.mp4` that is a folder, an IMU clock that steps back (`imu_clock_step`), and EXIF orientation of
still pairs (SUN RGB-D, LLVIP). Reject details name files RAW-relative, never absolutely.

Each corpus is generated here (synthetic captures / stills, then edited copies) and built once with
``--engine local``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build
from schemas.reasons import RejectReason as R
from tests.csvutil import read_csv, write_csv
from transforms.config import BuildConfig
from transforms.images import PNG_SIGNATURE, orient, sunrgbd_depth_mm

SECONDS = 12  # six windows; the IMU clock step at 6 s lies inside windows 2 and 3's 5 s IMU spans
SMALL = dict(width=64, height=48, depth_size=(32, 24), thermal_size=(32, 24), workers=1)
BASE = "s007_000"


def _key(session: str, k: int) -> str:
    return f"{session}_{k * 2000:09d}"


@dataclass
class Built:
    raw: Path
    data: Path
    index: list[dict] = field(init=False)
    rejects: list[dict] = field(init=False)

    def __post_init__(self):
        self.index = pq.read_table(self.data / "index.parquet").to_pylist()
        self.rejects = pq.read_table(self.data / "rejects.parquet").to_pylist()

    def samples(self, session: str) -> dict[str, dict]:
        return {r["key"]: r for r in self.index if r["session"] == session}

    def rows(self, session: str, **match) -> list[dict]:
        return [r for r in self.rejects if r["session"] == session and all(r[k] == v for k, v in match.items())]

    def by_key(self, session: str, modality: str) -> dict[str, dict]:
        return {r["key"]: r for r in self.rows(session, modality=modality) if r["key"] is not None}

    def member(self, row: dict, suffix: str) -> bytes:
        with tarfile.open(self.data / "shards" / row["shard"]) as tar:
            return tar.extractfile(f"{row['key']}.{suffix}").read()


# ------------------------------------------------------------------------------------------ crafting


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int = 16384) -> bytes:
    """A PNG declaring side x side RGBA, 16 bits a sample (2 GiB decoded) in a few kilobytes: its IDAT is
    the deflate of the first rows of zeros only (a decoder would allocate the whole image first)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + side * 8) * 4, 9)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gray_alpha_png(h: int = 24, w: int = 32) -> bytes:
    return Image.fromarray(np.full((h, w, 2), 200, np.uint8), "LA")._repr_png_()  # noqa: SLF001


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _read_rgb_file(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m, indent=2))


def _derive(raw: Path, name: str) -> Path:
    folder = raw / name
    shutil.copytree(raw / BASE, folder)
    _edit_manifest(folder, lambda m: m.update(session_id=name))
    return folder


def _clock(folder: Path, stream: str) -> dict:
    return json.loads((folder / "manifest.json").read_text())["streams"][stream]["clock"]


def _frame_near(folder: Path, stream: str, t_session: float) -> str:
    """The frame file of a depth/thermal stream nearest session time ``t_session``."""
    c = _clock(folder, stream)
    _, rows = read_csv(folder / f"{stream}_timestamps.csv")
    t = np.array([float(r["timestamp"]) * 1e-3 for r in rows]) * (1 + c["drift_ppm"] * 1e-6) + c["offset_s"]
    return rows[int(np.argmin(np.abs(t - t_session)))]["file"]


# ------------------------------------------------------------------------------------------ captures corpus


def _make_captures(raw: Path) -> dict:
    cases: dict = {}
    # depth saved as 8-bit gray (mm >> 4), as some capture tools do
    folder = _derive(raw, "d8bit")
    for p in (folder / "depth").glob("*.png"):
        mm = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(p), (mm >> 4).astype(np.uint8))
    # depth in whole metres in a 16-bit file declared "mm": the bit depth is right, the values are not mm
    folder = _derive(raw, "dscaled")
    for p in (folder / "depth").glob("*.png"):
        mm = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(p), (mm // 1000).astype(np.uint16))
    # the depth `frames` entry names a file
    folder = _derive(raw, "dframesfile")
    _edit_manifest(folder, lambda m: m["streams"]["depth"].update(frames="video.mp4"))
    # an empty `file` cell in the depth table
    folder = _derive(raw, "demptycell")
    header, rows = read_csv(folder / "depth_timestamps.csv")
    rows[5]["file"] = ""
    write_csv(folder / "depth_timestamps.csv", header, rows)
    # the depth frames around 4.1 s are unreadable (a folder where each file should be): window 2 picks one
    folder = _derive(raw, "dunread")
    for name in {_frame_near(folder, "depth", t) for t in np.arange(3.95, 4.25, 0.01)}:
        (folder / "depth" / name).unlink()
        (folder / "depth" / name).mkdir()
    # a depth frame that is a decompression bomb, and a thermal frame that is gray+alpha
    folder = _derive(raw, "dbomb")
    bomb = {_frame_near(folder, "depth", t) for t in np.arange(5.8, 6.4, 0.02)}
    for name in bomb:
        (folder / "depth" / name).write_bytes(bomb_png())
    cases["dbomb"] = {f"dbomb/depth/{n}" for n in bomb}
    alpha = {_frame_near(folder, "thermal", t) for t in np.arange(7.8, 8.4, 0.02)}
    for name in alpha:
        (folder / "thermal" / name).write_bytes(gray_alpha_png())
    cases["dbomb_alpha"] = {f"dbomb/thermal/{n}" for n in alpha}
    # depth intrinsics cx: NaN
    folder = _derive(raw, "dnan")
    _edit_manifest(folder, lambda m: m["streams"]["depth"]["intrinsics"].update(cx=float("nan")))
    # the depth `frames` entry climbs out of the session folder and out of RAW
    folder = _derive(raw, "doutside")
    _edit_manifest(folder, lambda m: m["streams"]["depth"].update(frames="../../outside"))
    # video.mp4 is a folder
    folder = _derive(raw, "videodir")
    (folder / "video.mp4").unlink()
    (folder / "video.mp4").mkdir()
    # the IMU clock steps back: every timestamp after 6 s (session time) is 0.5 s earlier
    folder = _derive(raw, "imustep")
    header, rows = read_csv(folder / "imu.csv")
    c = _clock(folder, "imu")
    step_at = (6.0 - c["offset_s"]) / (1 + c["drift_ppm"] * 1e-6) * 1e3  # 6 s session time, stream ms
    for r in rows:
        if float(r["component_timestamp_ms"]) > step_at:
            r["component_timestamp_ms"] = f"{float(r['component_timestamp_ms']) - 500.0:.3f}"
    write_csv(folder / "imu.csv", header, rows)
    return cases


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> tuple[Built, dict]:
    raw = tmp_path_factory.mktemp("side") / "raw"
    synth(raw, SynthConfig(layout="captures", sessions=1, seconds=SECONDS, seed=7, **SMALL))
    shutil.rmtree(raw / "_truth")
    cases = _make_captures(raw)
    data = raw.parent / "data"
    build(raw, data, BuildConfig(layout="captures"), EngineConfig("local"))
    return Built(raw, data), cases


def _assert_rest_kept(b: Built, session: str, lost: str | None, windows: int = SECONDS // 2) -> dict[str, dict]:
    """Every window is a sample with the same video and audio as the intact session; every other side
    modality is present where it is in the intact session."""
    kept = b.samples(session)
    base = b.samples(BASE)
    assert sorted(kept) == [_key(session, k) for k in range(windows)], session
    assert sum(r["has_audio"] for r in base.values()) >= windows - 1  # the intact session does have audio
    for k in range(windows):
        row, ref = kept[_key(session, k)], base[_key(BASE, k)]
        assert row["has_video"] and row["has_audio"] == ref["has_audio"], (session, k)
        assert row["sha256_jpg"] == ref["sha256_jpg"] and row["sha256_mel_npy"] == ref["sha256_mel_npy"]
        for m in ("depth", "thermal", "imu"):
            if m != lost:
                assert row[f"has_{m}"] == ref[f"has_{m}"], (session, k, m)
    return kept


def test_details_are_raw_relative(captures):
    b, _ = captures
    assert b.rejects
    for r in b.rejects:
        assert str(b.raw) not in (r["detail"] or ""), r
        assert not r["source"].startswith("/"), r


def test_8bit_depth_is_rejected_not_read_as_mm(captures):
    b, _ = captures
    _assert_rest_kept(b, "d8bit", lost="depth")
    depth = b.by_key("d8bit", "depth")
    assert sorted(depth) == [_key("d8bit", k) for k in range(SECONDS // 2)]
    for r in depth.values():
        assert r["reason"] == R.DEPTH_BIT_DEPTH and r["source"].startswith("d8bit/depth/"), r
        assert "8-bit" in r["detail"] and r["detail"].startswith(r["source"]), r
    assert not any(row["has_depth"] for row in b.samples("d8bit").values())


def test_scaled_16bit_depth_is_implausible(captures):
    b, _ = captures
    _assert_rest_kept(b, "dscaled", lost="depth")
    depth = b.by_key("dscaled", "depth")
    assert len(depth) == SECONDS // 2
    assert all(r["reason"] == R.DEPTH_IMPLAUSIBLE and "median valid depth" in r["detail"] for r in depth.values())


def test_depth_frames_entry_pointing_at_a_file(captures):
    b, _ = captures
    _assert_rest_kept(b, "dframesfile", lost="depth")
    depth = b.by_key("dframesfile", "depth")
    assert len(depth) == SECONDS // 2
    assert all(r["reason"] == R.NOT_A_REGULAR_FILE and r["source"] == "dframesfile/video.mp4" for r in depth.values())
    assert not any(r["reason"] == R.INTERNAL_ERROR for r in b.rejects)


def test_empty_file_cell_drops_that_row_only(captures):
    b, _ = captures
    kept = _assert_rest_kept(b, "demptycell", lost=None)
    (issue,) = [r for r in b.rows("demptycell", modality="depth") if r["key"] is None]
    assert issue["reason"] == R.BAD_TIMESTAMPS and issue["source"] == "demptycell/depth_timestamps.csv"
    assert "empty 'file' cell" in issue["detail"]
    assert all(row["has_depth"] for row in kept.values())


def test_one_unreadable_depth_frame_costs_only_the_window_that_picks_it(captures):
    b, _ = captures
    kept = _assert_rest_kept(b, "dunread", lost="depth")
    depth = b.by_key("dunread", "depth")
    assert list(depth) == [_key("dunread", 2)]
    r = depth[_key("dunread", 2)]
    picked = "dunread/depth/" + Path(b.samples(BASE)[_key(BASE, 2)]["source_depth"]).name  # the frame it picks
    assert r["reason"] == R.NOT_A_REGULAR_FILE and r["source"] == picked, r
    assert r["detail"].startswith(picked) and "folder" in r["detail"]
    assert [k for k, row in kept.items() if not row["has_depth"]] == [_key("dunread", 2)]


def test_decompression_bomb_and_gray_alpha_frames(captures):
    b, cases = captures
    kept = b.samples("dbomb")
    assert len(kept) == SECONDS // 2 and all(row["has_video"] for row in kept.values())
    assert sum(row["has_audio"] for row in kept.values()) == sum(row["has_audio"] for row in b.samples(BASE).values())
    depth = b.by_key("dbomb", "depth")
    assert list(depth) == [_key("dbomb", 3)]
    r = depth[_key("dbomb", 3)]
    assert r["reason"] == R.DECODED_SIZE_OVER_BUDGET and r["source"] in cases["dbomb"], r
    assert "16384x16384" in r["detail"] and "RGBA, 16-bit" in r["detail"] and "2,048 MiB" in r["detail"]
    thermal = b.by_key("dbomb", "thermal")
    assert list(thermal) == [_key("dbomb", 4)]
    r = thermal[_key("dbomb", 4)]
    assert r["reason"] == R.CORRUPT_IMAGE and r["source"] in cases["dbomb_alpha"], r
    assert "gray+alpha, 8-bit" in r["detail"] and "4 channels" not in r["detail"]


def _others(b: Built, session: str, lost: str) -> list[tuple]:
    """The session's reject rows of the other modalities, as (reason, modality, window start, file name)."""
    rows = [r for r in b.rows(session) if r["modality"] != lost]
    return sorted((r["reason"], r["modality"] or "", r["start_s"] or -1.0, r["source"].split("/")[-1]) for r in rows)


def test_nan_intrinsics_costs_only_depth(captures):
    b, _ = captures
    _assert_rest_kept(b, "dnan", lost="depth")
    depth = b.by_key("dnan", "depth")
    # one readable manifest reject per window, for depth only; the depth files count as its inputs
    assert sorted(depth) == [_key("dnan", k) for k in range(SECONDS // 2)]
    assert _others(b, "dnan", "depth") == _others(b, BASE, "depth")
    for r in depth.values():
        assert r["reason"] == R.MANIFEST_INVALID and r["source"] == "dnan/manifest.json", r
        assert "streams.depth.intrinsics.cx: not a finite number" in r["detail"], r
    assert not any(r["has_depth"] for r in b.samples("dnan").values())
    assert not any(r["reason"] == R.INTERNAL_ERROR for r in b.rejects)


def test_frames_outside_the_session_costs_only_depth(captures):
    b, _ = captures
    _assert_rest_kept(b, "doutside", lost="depth")
    depth = b.by_key("doutside", "depth")
    assert sorted(depth) == [_key("doutside", k) for k in range(SECONDS // 2)]
    assert _others(b, "doutside", "depth") == _others(b, BASE, "depth")
    for r in depth.values():  # named RAW-relative, as joined to the session folder
        assert r["reason"] == R.PATH_ESCAPES_ROOT and r["source"] == "../outside", r
        assert "streams.depth.frames: path '../../outside' escapes the session folder" in r["detail"], r
    # the depth timestamps table, still inside, is accounted for by those rows; the depth/ folder that the
    # manifest no longer names holds unused files, each a reject of its own
    unused = {r["source"] for r in b.rejects if r["source"].startswith("doutside/") and r["reason"] == R.UNUSED_FILE}
    assert unused == {f"doutside/depth/{f.name}" for f in (b.raw / "doutside" / "depth").iterdir()}


def test_video_that_is_a_folder_is_blamed_on_the_video(captures):
    b, _ = captures
    rows = b.rows("videodir")
    assert rows and all(r["source"] == "videodir/video.mp4" for r in rows if r["key"] is None and not r["modality"])
    assert {r["reason"] for r in rows if r["source"] == "videodir/video.mp4"} == {R.NOT_A_REGULAR_FILE}
    assert not any(r["source"].endswith("/depth") for r in rows)


def test_imu_clock_step_rejects_the_windows_past_it(captures):
    b, _ = captures
    kept = _assert_rest_kept(b, "imustep", lost="imu")
    base = b.samples(BASE)
    imu = b.by_key("imustep", "imu")
    # window 0's span [-1.5, 3.5] s starts before the recording, as in the intact session; window 1's
    # [0.5, 5.5] s lies wholly before the step: stored, and identical to the intact session's
    assert imu.pop(_key("imustep", 0))["reason"] == R.IMU_OUT_OF_RANGE
    assert kept[_key("imustep", 1)]["sha256_imu_npy"] == base[_key(BASE, 1)]["sha256_imu_npy"]
    # windows 2 and 3 overlap the step; 4 and 5 lie after it, on a clock nothing in the file pins down
    assert sorted(imu) == [_key("imustep", k) for k in (2, 3, 4, 5)]
    for r in imu.values():
        assert r["reason"] == R.IMU_CLOCK_STEP and r["source"] == "imustep/imu.csv", r
        assert "steps back 0.49" in r["detail"], r  # 0.5 s less the one sample period the jump spans
    (file_row,) = [r for r in b.rows("imustep", modality="imu") if r["key"] is None]
    assert file_row["reason"] == R.IMU_CLOCK_STEP and "not used" in file_row["detail"]


# ------------------------------------------------------------------------------------------ decompression bomb


def test_bomb_is_refused_before_decoding_peak_memory_stays_low(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 64 * 1024
    script = textwrap.dedent(
        f"""
        import resource
        from transforms.images import load_png16, load_depth_png_mm, read_rgb, ImageInputError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        reasons = []
        for read in (load_png16, load_depth_png_mm, read_rgb):
            try:
                read({str(path)!r}, name="RAW/bomb.png")
            except ImageInputError as exc:
                reasons.append(str(exc.reason))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(after - before, *reasons)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    grown_kib, *reasons = out.stdout.split()
    assert reasons == [R.DECODED_SIZE_OVER_BUDGET] * 3
    assert int(grown_kib) < 32 * 1024, f"peak RSS grew by {int(grown_kib) // 1024} MiB"


# ------------------------------------------------------------------------------------------ stills: orientation


@pytest.fixture(scope="module")
def sunrgbd(tmp_path_factory) -> tuple[Built, dict]:
    raw = tmp_path_factory.mktemp("sun") / "raw"
    synth(raw, SynthConfig(layout="sunrgbd", sessions=2, seconds=6, seed=7, **SMALL))
    shutil.rmtree(raw / "_truth")
    scenes = sorted(p.parent for p in raw.rglob("intrinsics.txt"))
    assert len(scenes) >= 4
    cases: dict = {}
    # scene 0: the RGB JPEG carries EXIF orientation 6 (rotate 90° clockwise); its depth PNG none
    rot = scenes[0]
    (img,) = (rot / "image").glob("*.jpg")
    (dep,) = (rot / "depth").glob("*.png")
    rgb = _read_rgb_file(img)
    img.write_bytes(jpeg_with_orientation(rgb, 6))
    fx, _, cx, _, fy, cy = (float(v) for v in (rot / "intrinsics.txt").read_text().split()[:6])
    cases["rot"] = dict(rgb=_read_rgb_file(img), depth_mm=sunrgbd_depth_mm(cv2.imread(str(dep), -1)),
                        intrinsics=dict(fx=fx, fy=fy, cx=cx, cy=cy))  # fmt: skip
    # scene 1: 8-bit depth PNG (the raw bits, as some exports write it)
    (dep,) = (scenes[1] / "depth").glob("*.png")
    cv2.imwrite(str(dep), (cv2.imread(str(dep), -1) >> 8).astype(np.uint8))
    cases["8bit"] = dep.relative_to(raw).as_posix()
    # scene 2: depth bomb; scene 3: gray+alpha depth
    (dep,) = (scenes[2] / "depth").glob("*.png")
    dep.write_bytes(bomb_png())
    cases["bomb"] = dep.relative_to(raw).as_posix()
    (dep,) = (scenes[3] / "depth").glob("*.png")
    dep.write_bytes(gray_alpha_png())
    cases["alpha"] = dep.relative_to(raw).as_posix()
    cases["scenes"] = [s.relative_to(raw).as_posix() for s in scenes]
    data = raw.parent / "data"
    build(raw, data, BuildConfig(layout="sunrgbd"), EngineConfig("local"))
    return Built(raw, data), cases


def _by_source(b: Built, column: str, source: str) -> dict:
    (row,) = [r for r in b.index if r[column] == source]
    return row


def test_sunrgbd_exif_rotation_turns_image_and_depth_together(sunrgbd):
    b, cases = sunrgbd
    scene = cases["scenes"][0]
    (row,) = [r for r in b.index if r["source_video"].startswith(scene + "/")]
    jpg = cv2.imdecode(np.frombuffer(b.member(row, "jpg"), np.uint8), cv2.IMREAD_UNCHANGED)
    depth = cv2.imdecode(np.frombuffer(b.member(row, "depth.png"), np.uint8), cv2.IMREAD_UNCHANGED)
    coded = cases["rot"]["rgb"]
    assert jpg.shape[:2] == coded.shape[1::-1]  # stored upright: width and height swapped
    # the stored image is the coded one rotated 90° clockwise (JPEG re-encoding: compare coarsely)
    upright = orient(coded, 6)
    assert np.abs(cv2.cvtColor(jpg, cv2.COLOR_BGR2RGB).astype(int) - upright.astype(int)).mean() < 6
    # the depth turned with it, exactly
    np.testing.assert_array_equal(depth, orient(cases["rot"]["depth_mm"], 6))
    meta = json.loads(b.member(row, "json"))
    assert meta["orientation"] == {"exif": 6, "applied": "rotated 90° clockwise"}
    # the principal point moved with its pixel and the focal lengths swapped axes (coded image h x w)
    h = cases["rot"]["depth_mm"].shape[0]
    coded = cases["rot"]["intrinsics"]
    intr = meta["depth_intrinsics"]
    assert (intr["fx"], intr["fy"]) == (coded["fy"], coded["fx"])
    assert (intr["cx"], intr["cy"]) == (h - 1 - coded["cy"], coded["cx"])


def test_sunrgbd_bad_depth_costs_only_depth(sunrgbd):
    b, cases = sunrgbd
    expected = {
        cases["8bit"]: (R.DEPTH_BIT_DEPTH, "PNG gray, 8-bit"),
        cases["bomb"]: (R.DECODED_SIZE_OVER_BUDGET, "16384x16384"),
        cases["alpha"]: (R.CORRUPT_IMAGE, "gray+alpha, 8-bit"),
    }
    for source, (reason, text) in expected.items():
        (r,) = [r for r in b.rejects if r["source"] == source]
        assert r["reason"] == reason and r["modality"] == "depth" and text in r["detail"], r
        assert r["detail"].startswith(source) and "4 channels" not in r["detail"]
        row = _by_source(b, "source_depth", source)
        assert row["has_video"] and not row["has_depth"]


@pytest.fixture(scope="module")
def llvip(tmp_path_factory) -> tuple[Built, dict]:
    raw = tmp_path_factory.mktemp("llvip") / "raw"
    synth(raw, SynthConfig(layout="llvip", sessions=2, seconds=6, seed=7, **SMALL))
    shutil.rmtree(raw / "_truth")
    names = sorted(p.relative_to(raw / "visible").as_posix() for p in (raw / "visible").rglob("*.jpg"))
    assert len(names) >= 2
    cases = {"names": names}
    # pair 0: visible tagged 8 (rotate 90° counter-clockwise), infrared untagged: both turn
    vis, ir = raw / "visible" / names[0], raw / "infrared" / names[0]
    vis.write_bytes(jpeg_with_orientation(_read_rgb_file(vis), 8))
    cases["turned"] = dict(vis=_read_rgb_file(vis), ir=_read_rgb_file(ir)[..., 0])
    # pair 1: visible tagged 6, infrared tagged 3: they disagree
    vis, ir = raw / "visible" / names[1], raw / "infrared" / names[1]
    vis.write_bytes(jpeg_with_orientation(_read_rgb_file(vis), 6))
    ir.write_bytes(jpeg_with_orientation(_read_rgb_file(ir), 3))
    data = raw.parent / "data"
    build(raw, data, BuildConfig(layout="llvip"), EngineConfig("local"))
    return Built(raw, data), cases


def test_llvip_partner_follows_the_visible_orientation(llvip):
    b, cases = llvip
    row = _by_source(b, "source_video", f"visible/{cases['names'][0]}")
    thermal = cv2.imdecode(np.frombuffer(b.member(row, "thermal.png"), np.uint8), cv2.IMREAD_UNCHANGED)
    jpg = cv2.imdecode(np.frombuffer(b.member(row, "jpg"), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(thermal, orient(cases["turned"]["ir"], 8))
    assert jpg.shape[:2] == thermal.shape == cases["turned"]["vis"].shape[1::-1]
    assert json.loads(b.member(row, "json"))["orientation"]["exif"] == 8


def test_llvip_disagreeing_orientations_reject_the_partner(llvip):
    b, cases = llvip
    name = cases["names"][1]
    row = _by_source(b, "source_video", f"visible/{name}")
    assert row["has_video"] and not row["has_thermal"]
    (r,) = [r for r in b.rejects if r["source"] == f"infrared/{name}"]
    assert r["reason"] == R.ORIENTATION_MISMATCH and r["modality"] == "thermal"
    assert "EXIF orientation 3" in r["detail"] and "its image's 6" in r["detail"]
