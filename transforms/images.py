"""Frames, depth and thermal images: safe reading, deterministic encoding, quality figures, frame picks.

Untrusted image files are checked at the header before any pixel is decoded: a PNG or JPEG that
declares 100000×100000 pixels is refused from its first few hundred bytes instead of allocating
tens of gigabytes. Encoders (OpenCV's libjpeg/libpng with fixed parameters) give the same bytes for
the same pixels on every run, which byte-identical shards rely on; a depth/thermal PNG that already is
a plain grayscale PNG is stored as it is (``store_png16``), which depends on the input only as well.

Frame picks follow SPEC §3: times are presentation times on the session timeline, sorted.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from schemas.reasons import RejectReason

MAX_SIDE = 16_384
JPEG_QUALITY = 95
MAX_SHORT_SIDE = 320
PNG_COMPRESSION = 3  # zlib level: fixed so the bytes never depend on a library default

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"

# A target exactly midway between two frames, or exactly at the tolerance, must not flip on the last
# bit of a ms->s conversion; 1 ns is far below any frame period.
_TIME_EPS_S = 1e-9


# ---------------------------------------------------------------------------------------------
# Errors: each carries the reject code the caller records for the input.


class ImageInputError(ValueError):
    reason: RejectReason = RejectReason.CORRUPT_IMAGE


class CorruptImage(ImageInputError):
    reason = RejectReason.CORRUPT_IMAGE


class AbsurdDimensions(ImageInputError):
    reason = RejectReason.ABSURD_DIMENSIONS


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int
    format: str  # "png" or "jpeg"


ImageSource = str | Path | bytes


def _load(source: ImageSource) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    path = Path(source)
    return path.read_bytes(), str(path)


# ---------------------------------------------------------------------------------------------
# Header checks (no pixel decoding)


def _png_size(data: bytes, name: str) -> ImageSize:
    # IHDR must be the first chunk: length (13), "IHDR", width, height (big-endian uint32).
    if len(data) < 8 + 8 + 13:
        raise CorruptImage(f"{name}: truncated PNG header ({len(data)} bytes)")
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    if kind != b"IHDR" or length != 13:
        raise CorruptImage(f"{name}: PNG does not start with an IHDR chunk")
    return ImageSize(width, height, "png")


# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) share the range but don't.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_size(data: bytes, name: str) -> ImageSize:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CorruptImage(f"{name}: JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return ImageSize(width, height, "jpeg")
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / start of scan before any frame header
            break
        pos += 2 + length
    raise CorruptImage(f"{name}: no JPEG frame header found")


def image_size(source: ImageSource) -> ImageSize:
    """Width and height from a PNG or JPEG header, without decoding pixels."""
    data, name = _load(source)
    return _size_of(data, name)


def _size_of(data: bytes, name: str) -> ImageSize:
    if data.startswith(PNG_SIGNATURE):
        return _png_size(data, name)
    if data.startswith(JPEG_SOI):
        return _jpeg_size(data, name)
    if not data:
        raise CorruptImage(f"{name}: empty file")
    raise CorruptImage(f"{name}: neither PNG nor JPEG (starts with {data[:8]!r})")


def check_dimensions(size: ImageSize, name: str, *, max_side: int = MAX_SIDE) -> None:
    if size.width == 0 or size.height == 0 or size.width > max_side or size.height > max_side:
        raise AbsurdDimensions(
            f"{name}: {size.format} declares {size.width}x{size.height} pixels (allowed 1..{max_side} a side)"
        )


def _png_complete(data: bytes) -> bool:
    # Walk the chunk lengths to IEND: a cut-off file never reaches it. libpng checks the CRCs while decoding.
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] == b"IEND":
            return end <= len(data)
        pos = end
    return False


# ---------------------------------------------------------------------------------------------
# Reading


def read_png16(source: ImageSource, *, max_side: int = MAX_SIDE) -> np.ndarray:
    """A single-channel PNG (16-bit depth/thermal, or 8-bit) as (H, W) uint16 or uint8."""
    return load_png16(source, max_side=max_side)[0]


def load_png16(source: ImageSource, *, max_side: int = MAX_SIDE) -> tuple[np.ndarray, bytes]:
    """``read_png16``, also handing back the file's bytes."""
    data, name = _load(source)
    if not data.startswith(PNG_SIGNATURE):
        raise CorruptImage(f"{name}: not a PNG file" if data else f"{name}: empty file")
    check_dimensions(_png_size(data, name), name, max_side=max_side)
    if not _png_complete(data):
        raise CorruptImage(f"{name}: truncated PNG (no complete IEND chunk)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CorruptImage(f"{name}: PNG data cannot be decoded")
    if arr.ndim != 2:
        raise CorruptImage(f"{name}: expected a single-channel PNG, got {arr.shape[2]} channels")
    return arr, data


def _plain_gray_png(data: bytes, arr: np.ndarray) -> bool:
    """True when ``data`` is a PNG that holds ``arr`` (decoded from it) and nothing else: grayscale of
    ``arr``'s bit depth, not interlaced, only IHDR, IDAT and IEND chunks, no bytes after IEND."""
    depth = {np.dtype(np.uint16): 16, np.dtype(np.uint8): 8}.get(arr.dtype)
    if depth is None or len(data) < 33 or data[12:16] != b"IHDR":
        return False
    width, height, bits, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (width, height) != (arr.shape[1], arr.shape[0]) or (bits, color, compression, filtering, interlace) != (
        depth,
        0,
        0,
        0,
        0,
    ):
        return False
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind not in (b"IHDR", b"IDAT", b"IEND"):
            return False
        pos += 12 + length
        if kind == b"IEND":
            return pos == len(data)
    return False


def store_png16(arr: np.ndarray, source: bytes | None = None) -> bytes:
    """The PNG stored for a single-channel frame: ``source`` itself (the file ``arr`` was read from)
    when it is a plain grayscale PNG of exactly these pixels - re-encoding it would only spend time on
    different compressed bytes of the same image - else ``encode_png16(arr)``. Either way the bytes
    depend on the input only."""
    if source is not None and _plain_gray_png(source, arr):
        return source
    return encode_png16(arr)


def read_rgb(source: ImageSource, *, max_side: int = MAX_SIDE) -> np.ndarray:
    """A PNG or JPEG as (H, W, 3) uint8 RGB, decoded the way ImageBind does (PIL ``convert("RGB")``)."""
    data, name = _load(source)
    check_dimensions(_size_of(data, name), name, max_side=max_side)
    try:
        with Image.open(io.BytesIO(data)) as im:
            # PIL raises on a truncated file here (LOAD_TRUNCATED_IMAGES is off), cv2 would gray-fill it.
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise AbsurdDimensions(f"{name}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"{name}: cannot decode image: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Encoding


@dataclass(frozen=True)
class Resize:
    width: int
    height: int


def fit_short_side(width: int, height: int, max_short_side: int) -> Resize:
    """Size with the short side at most ``max_short_side``, aspect kept, never larger than the input."""
    short = min(width, height)
    if short <= max_short_side:
        return Resize(width, height)
    scale = max_short_side / short
    if width <= height:
        return Resize(max_short_side, max(1, round(height * scale)))
    return Resize(max(1, round(width * scale)), max_short_side)


def shrink_to_short_side(rgb: np.ndarray, max_short_side: int) -> np.ndarray:
    """The stored frame size; INTER_AREA averages source pixels, so shrinking does not alias."""
    height, width = rgb.shape[:2]
    size = fit_short_side(width, height, max_short_side)
    if (size.width, size.height) == (width, height):
        return rgb
    return cv2.resize(rgb, (size.width, size.height), interpolation=cv2.INTER_AREA)


def encode_frame_jpeg(rgb: np.ndarray, *, max_short_side: int = MAX_SHORT_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    size = fit_short_side(width, height, max_short_side)
    if (size.width, size.height) != (width, height):
        # INTER_AREA averages source pixels: no aliasing/moire when shrinking, unlike bilinear.
        rgb = cv2.resize(rgb, (size.width, size.height), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_png16(arr: np.ndarray) -> bytes:
    """Single-channel uint16 (or uint8, LLVIP thermal) PNG with fixed compression."""
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.uint8):
        raise ValueError(f"expected (H, W) uint16 or uint8, got {arr.shape} {arr.dtype}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------
# Depth / thermal values and quality


def sunrgbd_depth_mm(raw: np.ndarray) -> np.ndarray:
    """SUN RGB-D's stored depth PNG -> millimetres.

    The dataset stores each depth value rotated left by 3 bits inside 16 bits (its toolbox's
    ``read3dPoints.m`` undoes it with ``bitor(bitshift(d, -3), bitshift(d, 16 - 3))``). Rotating right
    by 3 in uint16 - the left shift deliberately wraps, dropping the high bits - gives millimetres;
    0 stays 0 (invalid).
    """
    d = np.asarray(raw).astype(np.uint16, copy=False)
    return (d >> np.uint16(3)) | (d << np.uint16(13))


def depth_quality(depth_mm: np.ndarray) -> float:
    """Fraction of valid (non-zero) depth pixels."""
    if depth_mm.size == 0:
        return 0.0
    return float(np.count_nonzero(depth_mm)) / float(depth_mm.size)


@dataclass(frozen=True)
class ThermalQuality:
    min: float
    max: float


def thermal_quality(arr: np.ndarray) -> ThermalQuality:
    if arr.size == 0:
        raise ValueError("empty thermal frame")
    return ThermalQuality(float(arr.min()), float(arr.max()))


@dataclass(frozen=True)
class FrameQuality:
    brightness: float  # mean luma, 0..255
    sharpness: float  # variance of the Laplacian of luma; low = blurred or flat


def luma(rgb: np.ndarray) -> np.ndarray:
    """8-bit luma (OpenCV's RGB -> gray) that the quality figures and frame differences are taken on."""
    if rgb.ndim == 2:
        return rgb
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def frame_quality(rgb: np.ndarray) -> FrameQuality:
    return luma_quality(luma(rgb))


def luma_quality(gray: np.ndarray) -> FrameQuality:
    """frame_quality of a frame whose luma is already at hand."""
    return FrameQuality(
        brightness=float(gray.mean()),
        sharpness=float(cv2.Laplacian(gray, cv2.CV_64F).var()),
    )


def frame_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute luma difference, 0..255; ~0 between a window's two frames means frozen video."""
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    return luma_diff(luma(a), luma(b))


def luma_diff(a: np.ndarray, b: np.ndarray) -> float:
    """frame_diff of two frames' lumas."""
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    return float(cv2.absdiff(a, b).mean())


# ---------------------------------------------------------------------------------------------
# Picking frames by time


@dataclass(frozen=True)
class NearestMatch:
    index: int | None  # None when the nearest frame is farther than the tolerance (or there is none)
    delta_s: float  # time of the nearest frame minus the target; nan when there are no frames


def nearest_frame(times: np.ndarray, target: float, tolerance: float) -> NearestMatch:
    """The frame nearest ``target`` in sorted ``times``; on a tie the earlier one."""
    n = int(times.shape[0])
    if n == 0:
        return NearestMatch(None, math.nan)
    i = int(np.searchsorted(times, target, "left"))
    if i == 0:
        best = 0
    elif i == n:
        best = n - 1
    else:
        before, after = target - float(times[i - 1]), float(times[i]) - target
        best = i - 1 if before <= after + _TIME_EPS_S else i
    delta = float(times[best]) - target
    return NearestMatch(best if abs(delta) <= tolerance + _TIME_EPS_S else None, delta)


@dataclass(frozen=True)
class FrameRange:
    first: int
    last: int  # inclusive


def frame_indices_in_window(times: np.ndarray, start: float, end: float) -> FrameRange | None:
    """First and last frame whose time falls in ``[start, end)``; None when no frame does."""
    first = int(np.searchsorted(times, start, "left"))
    last = int(np.searchsorted(times, end, "left")) - 1
    return FrameRange(first, last) if first <= last else None
