"""``transforms.images``: safe reads, deterministic encodes, quality figures, frame picks; and the depth input
training computes from the stored depth PNG."""

from __future__ import annotations

import math
import struct
import zlib
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

import transforms.images as images
from schemas.reasons import RejectReason
from training.config import DataConfig
from training.inputs import ModelInputs, collate
from transforms.images import (
    AbsurdDimensions,
    CorruptImage,
    FrameQuality,
    FrameRange,
    ImageSize,
    NearestMatch,
    ThermalQuality,
    depth_quality,
    encode_frame_jpeg,
    encode_png16,
    fit_short_side,
    frame_diff,
    frame_indices_in_window,
    frame_quality,
    image_size,
    nearest_frame,
    read_png16,
    read_rgb,
    store_png16,
    sunrgbd_depth_mm,
    thermal_quality,
)


def noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def crafted_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return images.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ JPEG frames


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((480, 640), (320, 427)), ((640, 480), (427, 320)), ((1080, 1920), (320, 569)), ((200, 300), (200, 300))],
)
def test_jpeg_resize_keeps_aspect_and_never_upscales(shape, expected):
    data = encode_frame_jpeg(noise_rgb(*shape))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == expected
    assert image_size(data) == ImageSize(expected[1], expected[0], "jpeg")


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (720, 1280), (320, 240)])
def test_stored_video_frame_is_area_shrunk_and_never_upscaled(width, height):
    """transforms.media shrinks picked frames inside swscale (YUV -> RGB with area averaging): the result
    stays close to a float reference (BT.601 limited range -> RGB, then cv2.INTER_AREA)."""
    import av

    from transforms.config import BuildConfig
    from transforms.media import _VideoTracker

    rgb = cv2.GaussianBlur(noise_rgb(height, width, seed=5), (0, 0), 2)  # detail at every scale, no moire
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    tracker = _VideoTracker([], None, BuildConfig(), None)
    got = tracker._rgb(frame)
    size = fit_short_side(width, height, 320)
    assert got.shape == (size.height, size.width, 3) and got.dtype == np.uint8
    if (size.width, size.height) == (width, height):
        np.testing.assert_array_equal(got, frame.to_ndarray(format="rgb24"))
        return
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes]
    y = planes[0][:height, :width].astype(np.float64)
    u, v = (cv2.resize(p[: height // 2, : width // 2].astype(np.float64), (width, height)) - 128 for p in planes[1:])
    y = 1.164383 * (y - 16)
    ref = np.clip(np.stack([y + 1.596027 * v, y - 0.391762 * u - 0.812968 * v, y + 2.017232 * u], -1), 0, 255)
    ref = cv2.resize(ref, (size.width, size.height), interpolation=cv2.INTER_AREA)
    assert np.abs(got - ref).mean() < 0.75
    assert abs(float((got - ref).mean())) < 0.25
    # the former route (full-size rgb24, then cv2.INTER_AREA) is further off: ~1.2 levels, biased dark
    former = cv2.resize(frame.to_ndarray(format="rgb24"), (size.width, size.height), interpolation=cv2.INTER_AREA)
    assert np.abs(got - ref).mean() < np.abs(former - ref).mean()


def test_fit_short_side():
    assert fit_short_side(640, 480, 320) == images.Resize(427, 320)
    assert fit_short_side(100, 5000, 320) == images.Resize(100, 5000)  # short side already small
    assert fit_short_side(3000, 321, 320) == images.Resize(2991, 320)


def test_jpeg_bytes_are_deterministic_and_colors_stay_rgb():
    rgb = noise_rgb(480, 640, seed=3)
    assert encode_frame_jpeg(rgb) == encode_frame_jpeg(rgb.copy())
    assert encode_frame_jpeg(rgb, quality=50) != encode_frame_jpeg(rgb)
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    back = read_rgb(encode_frame_jpeg(red))
    assert back[..., 0].mean() > 240 and back[..., 2].mean() < 15


def test_jpeg_rejects_non_rgb():
    with pytest.raises(ValueError):
        encode_frame_jpeg(np.zeros((10, 10), np.uint8))


# ----------------------------------------------------------------------------------- PNG reading


def test_png16_round_trip_and_determinism(tmp_path):
    arr = np.random.default_rng(1).integers(0, 65536, (48, 64), dtype=np.uint16)
    data = encode_png16(arr)
    assert data == encode_png16(arr.copy())
    np.testing.assert_array_equal(read_png16(data), arr)
    path = tmp_path / "d.png"
    path.write_bytes(data)
    out = read_png16(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)
    gray8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert read_png16(encode_png16(gray8)).dtype == np.uint8


def test_store_png16_keeps_a_plain_source_and_re_encodes_anything_else():
    arr = np.random.default_rng(3).integers(0, 65536, (40, 56), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 9])  # plain, other compression
    plain = buf.tobytes()
    assert plain != encode_png16(arr)
    assert store_png16(arr, plain) == plain
    np.testing.assert_array_equal(read_png16(store_png16(arr, plain)), arr)
    assert store_png16(arr) == encode_png16(arr)
    iend = plain.rindex(b"IEND") - 4
    with_text = plain[:iend] + png_chunk(b"tEXt", b"Comment\0hello") + plain[iend:]
    gray8 = (arr >> 8).astype(np.uint8)
    for source, pixels in (
        (with_text, arr),  # metadata: not carried over
        (plain + b"trailing", arr),  # bytes after IEND
        (plain, gray8),  # not the pixels (bit depth) the caller holds
        (plain, arr[:, :-1]),  # nor their size
    ):
        assert store_png16(pixels, source) == encode_png16(pixels)
    assert store_png16(gray8, encode_png16(gray8)) == encode_png16(gray8)


def test_png_corrupt_and_truncated():
    data = encode_png16(np.random.default_rng(2).integers(0, 65536, (64, 64), dtype=np.uint16))
    for bad in (b"", b"not a png at all", data[:20], data[: len(data) // 2], data[:-6]):
        with pytest.raises(CorruptImage) as err:
            read_png16(bad)
        assert err.value.reason is RejectReason.CORRUPT_IMAGE
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # damaged compressed data, CRC no longer matches
    with pytest.raises(CorruptImage):
        read_png16(bytes(flipped))


def test_png_color_is_not_single_channel():
    ok, buf = cv2.imencode(".png", noise_rgb(8, 8))
    with pytest.raises(CorruptImage, match="single-channel"):
        read_png16(buf.tobytes())


def test_png_absurd_dimensions_refused_before_decoding(monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded pixels of an absurd image")

    monkeypatch.setattr(images.cv2, "imdecode", no_decode)
    for w, h in ((100_000, 100_000), (0, 10), (10, 0), (16_385, 1)):
        with pytest.raises(AbsurdDimensions, match=f"{w}x{h}") as err:
            read_png16(crafted_png(w, h))
        assert err.value.reason is RejectReason.ABSURD_DIMENSIONS
    assert image_size(crafted_png(100_000, 100_000)) == ImageSize(100_000, 100_000, "png")
    with pytest.raises(AbsurdDimensions):
        read_png16(crafted_png(600, 400), max_side=512)


def test_jpeg_header_check():
    data = bytearray(encode_frame_jpeg(noise_rgb(40, 60)))
    assert image_size(bytes(data)) == ImageSize(60, 40, "jpeg")
    sof = data.index(b"\xff\xc0")  # baseline frame header: FF C0, length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    with pytest.raises(AbsurdDimensions, match="60000x60000"):
        read_rgb(bytes(data))


def test_jpeg_truncated_is_corrupt():
    data = encode_frame_jpeg(noise_rgb(120, 160))
    with pytest.raises(CorruptImage):
        read_rgb(data[: len(data) // 2])
    with pytest.raises(CorruptImage):
        read_rgb(data[:4])


# ------------------------------------------------------------------------------- depth / thermal


def test_sunrgbd_rotation_round_trip():
    mm = np.array([0, 1, 700, 1000, 8191, 9000, 65535], dtype=np.uint16)
    stored = (mm << np.uint16(3)) | (mm >> np.uint16(13))  # how SUN RGB-D writes its PNGs
    back = sunrgbd_depth_mm(stored)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, mm)
    assert sunrgbd_depth_mm(np.array([8], np.uint16))[0] == 1
    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(sunrgbd_depth_mm((every << np.uint16(3)) | (every >> np.uint16(13))), every)


def test_depth_and_thermal_quality():
    depth = np.zeros((10, 10), np.uint16)
    depth[:5] = 1200
    assert depth_quality(depth) == 0.5
    assert thermal_quality(np.array([[29000, 31000]], np.uint16)) == ThermalQuality(29000.0, 31000.0)


def test_depth_input_is_disparity_or_clipped_metric_as_training_computes_it():
    # The function training runs (training/inputs.py), on a 224x224 frame: the centre crop is the whole
    # frame and the resize samples pixel centres, so every band keeps its exact value.
    bands = [0, 5, 1000, 2000, 60000]  # mm: 0 invalid, 5 mm clips to 1 cm, 60 m clips to the 50 m limit
    mm = np.zeros((224, 224), np.uint16)
    for i, v in enumerate(bands):
        mm[:, i * 44 : (i + 1) * 44] = v
    centres = [i * 44 + 22 for i in range(len(bands))]
    metas = [{"depth_intrinsics": {"fx": 500.0, "baseline_m": 0.1}},
             {"depth_intrinsics": {"fx": 250.0, "baseline_m": 0.1}}, None]  # fmt: skip
    batch = collate([{"index": i, "loader_worker": 0, "depth.png": mm, "json": m} for i, m in enumerate(metas)])
    cfg = DataConfig(depth_norm=(0.0, 1.0), disparity_scale=1.0, depth_max_m=50.0)
    x, mask = ModelInputs(cfg).depth(batch, "cpu")
    assert x.dtype == torch.float32 and x.shape == (3, 1, 224, 224) and mask.tolist() == [True] * 3
    np.testing.assert_allclose(x[0, 0, 112, centres].numpy(), [0.0, 5000.0, 50.0, 25.0, 1.0], rtol=1e-5)
    # per-sample intrinsics, and the configured defaults where a sample has none
    np.testing.assert_allclose(x[1, 0, 112, centres].numpy(), [0.0, 2500.0, 25.0, 12.5, 0.5], rtol=1e-5)
    default = cfg.default_baseline_m * cfg.default_fx
    np.testing.assert_allclose(x[2, 0, 112, centres[2]].item(), default / 1.0, rtol=1e-5)

    metric_cfg = DataConfig(depth_norm=(0.0, 1.0), depth_mode="metric", depth_max_m=10.0)
    metric, _ = ModelInputs(metric_cfg).depth(batch, "cpu")
    np.testing.assert_allclose(metric[0, 0, 112, centres].numpy(), [0.0, 0.001, 0.1, 0.2, 1.0], rtol=1e-5)


# ---------------------------------------------------------------------------------- frame quality


def test_frame_quality_and_diff():
    flat = np.full((64, 64, 3), 128, np.uint8)
    quality = frame_quality(flat)
    assert quality == FrameQuality(brightness=128.0, sharpness=0.0)
    busy = noise_rgb(64, 64)
    assert frame_quality(busy).sharpness > 1000
    assert frame_quality(np.zeros_like(flat)).brightness == 0.0
    assert frame_diff(busy, busy.copy()) == 0.0
    assert frame_diff(flat, np.full_like(flat, 138)) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        frame_diff(flat, flat[:10])


# ---------------------------------------------------------------------------------- frame picks


def test_nearest_frame_tolerance_edges():
    times = np.array([0.0, 0.25, 0.5, 1.0])
    assert nearest_frame(times, 0.3, 0.1) == NearestMatch(1, -0.04999999999999999)
    assert nearest_frame(times, 0.125, 0.125).index == 0  # exactly midway: the earlier frame
    assert nearest_frame(times, 0.75, 0.25) == NearestMatch(2, -0.25)  # at the tolerance: included
    assert nearest_frame(times, 0.75, 0.2499).index is None
    assert nearest_frame(times, -0.25, 0.25) == NearestMatch(0, 0.25)
    assert nearest_frame(times, 1.5, 0.5) == NearestMatch(3, -0.5)
    assert nearest_frame(times, 1.5, 0.49) == NearestMatch(None, -0.5)
    empty = nearest_frame(np.zeros(0), 1.0, 1.0)
    assert empty.index is None and math.isnan(empty.delta_s)
    # half a 30 fps period, the depth default: the midpoint survives ms -> s rounding
    frames = np.arange(10) * 1001 / 30000
    mid = (frames[3] + frames[4]) / 2
    assert nearest_frame(frames, mid, 1001 / 30000 / 2).index == 3


def test_frame_indices_in_window_basics():
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert frame_indices_in_window(times, 0.0, 2.0) == FrameRange(0, 3)  # end is exclusive
    assert frame_indices_in_window(times, 0.1, 2.1) == FrameRange(1, 4)
    assert frame_indices_in_window(times, 2.6, 4.6) is None
    assert frame_indices_in_window(times, 1.1, 1.4) is None


def imagebind_rule(fps: Fraction, s: Fraction, n: int) -> FrameRange | None:
    # pytorchvideo's frame-index selection that ImageBind uses, in exact arithmetic.
    first = math.ceil(fps * s)
    last = min(math.ceil(fps * (s + 2)), n) - 1
    return FrameRange(first, last) if first <= last else None


@pytest.mark.parametrize("fps", [Fraction(30), Fraction(2997, 100), Fraction(25)])
def test_frame_indices_match_imagebind_rule(fps):
    seconds = 60
    n = int(fps * seconds)
    # Presentation times as a decoder gives them: pts * time_base, time_base = 1/fps, correctly rounded.
    times = np.array([float(Fraction(k) / fps) for k in range(n)])
    rng = np.random.default_rng(0)
    starts = [Fraction(2 * m) for m in range(32)]  # the default stride: many starts sit exactly on a frame
    starts += [Fraction(m, 2) for m in range(130)]
    starts += [Fraction(float(s)) for s in rng.uniform(0, seconds + 1, 300)]
    for s in starts:
        got = frame_indices_in_window(times, float(s), float(s + 2))
        assert got == imagebind_rule(fps, s, n), (float(fps), float(s))


# ------------------------------------------------------------------------------- headers, budget, orientation


def png_header_only(width: int, height: int, bits: int, color: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bits, color, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return images.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + idat + png_chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("bits", "color", "described", "decoded"),
    [
        (16, 0, "PNG gray, 16-bit, 640x480", 640 * 480 * 2),
        (8, 4, "PNG gray+alpha, 8-bit, 640x480", 640 * 480 * 2),
        (8, 2, "PNG RGB, 8-bit, 640x480", 640 * 480 * 3),
        (16, 6, "PNG RGBA, 16-bit, 640x480", 640 * 480 * 8),
        (4, 3, "PNG palette, 4-bit, 640x480", 640 * 480 * 4),
    ],
)
def test_png_header_describes_the_file_as_it_is(bits, color, described, decoded):
    header = images.image_header(png_header_only(640, 480, bits, color))
    assert header.describe() == described and header.decoded_bytes == decoded and header.orientation == 1


def test_gray_alpha_png_is_described_not_called_four_channels():
    from PIL import Image

    la = Image.fromarray(np.full((8, 8, 2), 200, np.uint8), "LA")._repr_png_()
    with pytest.raises(CorruptImage) as err:
        read_png16(la, name="s/thermal/000001.png")
    assert str(err.value) == (
        "s/thermal/000001.png: expected a single-channel (grayscale) 8- or 16-bit PNG, got PNG gray+alpha, 8-bit, 8x8"
    )


def test_decoded_size_budget_is_checked_from_the_header(monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded pixels of an image over budget")

    monkeypatch.setattr(images.cv2, "imdecode", no_decode)
    monkeypatch.setattr(images.Image, "open", no_decode)
    bomb = png_header_only(16_384, 16_384, 16, 6)
    for read in (read_png16, read_rgb, images.load_depth_png_mm):
        with pytest.raises(images.DecodedSizeOverBudget) as err:
            read(bomb, name="d/x.png")
        assert err.value.reason is RejectReason.DECODED_SIZE_OVER_BUDGET
        assert str(err.value) == (
            "d/x.png: PNG RGBA, 16-bit, 16384x16384 decodes to 2,048 MiB, over the 256 MiB budget for one image"
        )
    # RGB output counts: a gray JPEG-sized image is budgeted at 3 channels for read_rgb
    with pytest.raises(images.DecodedSizeOverBudget):
        read_rgb(png_header_only(1000, 1000, 8, 0), max_bytes=2_000_000)
    with pytest.raises(AssertionError, match="decoded pixels"):  # within budget: it gets to decoding
        images.load_png16(png_header_only(1000, 1000, 8, 0), max_bytes=2_000_000)


def _jpeg_tagged(rgb: np.ndarray, orientation: int) -> bytes:
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(orientation):
    import io

    from PIL import Image, ImageOps

    rgb = noise_rgb(5, 7, seed=orientation)
    data = _jpeg_tagged(rgb, orientation)
    header = images.image_header(data)
    assert header.orientation == orientation and header.describe() == "JPEG YCbCr, 8-bit, 7x5"
    coded, hdr = images.load_rgb(data)
    assert hdr == header
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(images.orient(coded, orientation), expected)
    # a marked pixel lands where orient_point says, and intrinsics follow it
    mark = np.zeros((5, 7), np.uint8)
    mark[1, 2] = 1
    y, x = np.argwhere(images.orient(mark, orientation))[0]
    assert images.orient_point(2, 1, 7, 5, orientation) == (x, y)
    intr = images.orient_intrinsics({"fx": 10.0, "fy": 20.0, "cx": 2.0, "cy": 1.0}, 7, 5, orientation)
    assert (intr["cx"], intr["cy"]) == (x, y)
    assert (intr["fx"], intr["fy"]) == ((20.0, 10.0) if orientation >= 5 else (10.0, 20.0))


def test_png_exif_chunk_orientation():
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 8
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()
    plain = encode_png16(np.ones((4, 6), np.uint16) * 1000)
    tagged = plain[:33] + png_chunk(b"eXIf", payload) + plain[33:]
    assert images.image_header(tagged).orientation == 8
    assert images.image_header(plain).orientation == 1
    broken = plain[:33] + png_chunk(b"eXIf", b"MM\0*garbage") + plain[33:]
    assert images.image_header(broken).orientation == 1  # a damaged EXIF block carries no usable tag


def test_depth_png_bit_depth_and_plausible_range():
    mm = np.random.default_rng(4).integers(500, 4000, (24, 32)).astype(np.uint16)
    mm[0, :5] = 0
    out, _ = images.load_depth_png_mm(encode_png16(mm), name="s/depth/1.png")
    np.testing.assert_array_equal(out, mm)
    with pytest.raises(images.DepthBitDepth, match=r"^s/depth/1.png: PNG gray, 8-bit, 32x24; depth in mill") as err:
        images.load_depth_png_mm(encode_png16((mm >> 4).astype(np.uint8)), name="s/depth/1.png")
    assert err.value.reason is RejectReason.DEPTH_BIT_DEPTH
    with pytest.raises(images.DepthImplausible, match="median valid depth 2 mm") as err:
        images.load_depth_png_mm(encode_png16(mm // 1000), name="s/depth/1.png")
    assert err.value.reason is RejectReason.DEPTH_IMPLAUSIBLE
    # SUN RGB-D: rotated bits; an 8-bit file is refused, a 16-bit one whose bits are not rotated mm too
    rotated = (mm << np.uint16(3)) | (mm >> np.uint16(13))
    out, _ = images.load_depth_png_mm(encode_png16(rotated), sunrgbd=True)
    np.testing.assert_array_equal(out, mm)
    with pytest.raises(images.DepthImplausible, match="beyond the sensors' range"):
        images.load_depth_png_mm(encode_png16(mm | np.uint16(7)), sunrgbd=True)  # low bits set: >57 m
    images.load_depth_png_mm(encode_png16(np.zeros((4, 4), np.uint16)))  # all invalid: the figures say so
