"""Frames, depth and thermal images: safe reading, deterministic encoding, quality figures, frame picks.

Untrusted image files are checked at the header before any pixel is decoded: a PNG or JPEG that
declares 100000×100000 pixels, or whose decoded size (width × height × channels × bytes per sample,
all read from the header) passes ``MAX_DECODED_BYTES``, is refused from its first few hundred bytes
instead of allocating gigabytes; channel count and bit depth are checked there too. Messages name a
file as the caller names it (RAW-relative in a build: ``name=``) and describe it as its header does
("gray+alpha, 8-bit"), not as a decoder happened to expand it.

Orientation: a JPEG's EXIF orientation tag (APP1) or a PNG's ``eXIf`` chunk (before IDAT) is read from
the header; ``orient`` applies it to decoded pixels as Pillow's ``ImageOps.exif_transpose`` does.

Encoders (OpenCV's libjpeg/libpng with fixed parameters) give the same bytes for the same pixels
on every run, which byte-identical shards rely on; a depth/thermal PNG that already is a plain
grayscale PNG is stored as it is (``store_png16``), which depends on the input only as well.

Frame picks follow SPEC §3: times are presentation times on the session timeline, sorted.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from schemas.reasons import RejectReason

MAX_SIDE = 16_384
# Decoded-size budget for one image, from its header: 256 MiB holds an 8K RGB frame (~100 MB), a
# 16384x16384 8-bit gray image, and every real SUN RGB-D / LLVIP / depth / thermal frame by orders of
# magnitude, while a 16384x16384 RGBA16 "bomb" (2 GiB from a ~2 MB file) is refused from its header.
MAX_DECODED_BYTES = 256 * 2**20
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


class DecodedSizeOverBudget(ImageInputError):
    reason = RejectReason.DECODED_SIZE_OVER_BUDGET


class DepthBitDepth(ImageInputError):
    reason = RejectReason.DEPTH_BIT_DEPTH


class DepthImplausible(ImageInputError):
    reason = RejectReason.DEPTH_IMPLAUSIBLE


class ThermalImplausible(ImageInputError):
    reason = RejectReason.THERMAL_IMPLAUSIBLE


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int
    format: str  # "png" or "jpeg"


# PNG colour types (PNG spec, IHDR): samples per pixel as stored.
_PNG_COLOR = {0: ("gray", 1), 2: ("RGB", 3), 3: ("palette", 1), 4: ("gray+alpha", 2), 6: ("RGBA", 4)}
_JPEG_COLOR = {1: "gray", 3: "YCbCr", 4: "CMYK"}


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding a pixel."""

    width: int
    height: int
    format: str  # "png" or "jpeg"
    color: str  # "gray", "gray+alpha", "RGB", "RGBA", "palette" (PNG); "gray", "YCbCr", "CMYK" (JPEG)
    channels: int  # samples per pixel as stored (a palette PNG: 1 index)
    bit_depth: int  # bits per sample (PNG 1..16; JPEG precision 8 or 12)
    orientation: int = 1  # EXIF orientation 1..8 (1 = as stored); 1 when there is no tag

    @property
    def size(self) -> ImageSize:
        return ImageSize(self.width, self.height, self.format)

    @property
    def decoded_channels(self) -> int:
        """Channels a decoder hands back: a palette expands to RGBA at most."""
        return 4 if self.color == "palette" else self.channels

    @property
    def decoded_bytes(self) -> int:
        return self.decoded_bytes_as(self.decoded_channels)

    def decoded_bytes_as(self, channels: int) -> int:
        """Bytes of the pixels decoded to at least ``channels`` samples per pixel."""
        return self.width * self.height * max(channels, self.decoded_channels) * (2 if self.bit_depth > 8 else 1)

    def describe(self) -> str:
        """E.g. "PNG gray+alpha, 8-bit, 64x48": the file as it is, not as a decoder expands it."""
        return f"{self.format.upper()} {self.color}, {self.bit_depth}-bit, {self.width}x{self.height}"


ImageSource = str | Path | bytes


def _load(source: ImageSource, name: str | None = None) -> tuple[bytes, str]:
    """The file's bytes and the name messages use: ``name`` when given (a build passes the RAW-relative
    path, so reject details never carry absolute paths), else the path as given."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), name or "<bytes>"
    path = Path(source)
    return path.read_bytes(), name or str(path)


# ---------------------------------------------------------------------------------------------
# Header checks (no pixel decoding)


def _png_header(data: bytes, name: str) -> ImageHeader:
    # IHDR must be the first chunk: length (13), "IHDR", width, height (big-endian uint32), bit depth,
    # colour type, compression, filter, interlace (one byte each).
    if len(data) < 8 + 8 + 13:
        raise CorruptImage(f"{name}: truncated PNG header ({len(data)} bytes)")
    length, kind, width, height, bits, color = struct.unpack(">I4sIIBB", data[8:26])
    if kind != b"IHDR" or length != 13:
        raise CorruptImage(f"{name}: PNG does not start with an IHDR chunk")
    if color not in _PNG_COLOR or bits not in (1, 2, 4, 8, 16):
        raise CorruptImage(f"{name}: PNG header declares colour type {color} with bit depth {bits}")
    label, channels = _PNG_COLOR[color]
    return ImageHeader(width, height, "png", label, channels, bits, _png_orientation(data))


def _png_orientation(data: bytes) -> int:
    # An eXIf chunk must come before the first IDAT (PNG 3rd edition); one after it is not looked for.
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf":
            return _exif_orientation(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return 1


def _exif_orientation(payload: bytes) -> int:
    """The Orientation tag (0x0112) of a TIFF-structured EXIF block; 1 when absent or unusable."""
    try:
        with warnings.catch_warnings():  # Pillow warns about a damaged block; the answer (1) says enough
            warnings.simplefilter("ignore")
            value = Image.Exif()
            value.load(payload)
            orientation = int(value.get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block carries no usable tag; the pixels may still be fine
        return 1
    return orientation if 1 <= orientation <= 8 else 1


_EXIF_ORIENTATION = 0x0112


# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) share the range but don't.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_header(data: bytes, name: str) -> ImageHeader:
    pos = 2
    orientation = 1
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
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\0\0":  # APP1 Exif comes before the frame header
            orientation = _exif_orientation(data[pos + 10 : pos + 2 + length])
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                break
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            color = _JPEG_COLOR.get(components, f"{components}-component")
            return ImageHeader(width, height, "jpeg", color, components, precision, orientation)
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / start of scan before any frame header
            break
        pos += 2 + length
    raise CorruptImage(f"{name}: no JPEG frame header found")


def image_size(source: ImageSource) -> ImageSize:
    """Width and height from a PNG or JPEG header, without decoding pixels."""
    return image_header(source).size


def image_header(source: ImageSource, *, name: str | None = None) -> ImageHeader:
    """Size, colour, channels, bit depth and EXIF orientation from a PNG or JPEG header.

    Raises CorruptImage when the header is missing or damaged."""
    data, name = _load(source, name)
    return _header_of(data, name)


def _header_of(data: bytes, name: str) -> ImageHeader:
    if data.startswith(PNG_SIGNATURE):
        return _png_header(data, name)
    if data.startswith(JPEG_SOI):
        return _jpeg_header(data, name)
    if not data:
        raise CorruptImage(f"{name}: empty file")
    raise CorruptImage(f"{name}: neither PNG nor JPEG (starts with {data[:8]!r})")


def check_dimensions(size: ImageSize, name: str, *, max_side: int = MAX_SIDE) -> None:
    if size.width == 0 or size.height == 0 or size.width > max_side or size.height > max_side:
        raise AbsurdDimensions(
            f"{name}: {size.format} declares {size.width}x{size.height} pixels (allowed 1..{max_side} a side)"
        )


def check_budget(
    header: ImageHeader, name: str, *, max_side: int = MAX_SIDE, max_bytes: int = MAX_DECODED_BYTES, channels: int = 1
) -> None:
    """Refuse, from the header alone, an image whose sides or decoded size are beyond the limits.

    ``channels``: samples per pixel the caller converts to (3 for RGB), when more than the file holds.
    Raises AbsurdDimensions (a side of 0 or above ``max_side``) or DecodedSizeOverBudget (width × height ×
    channels × bytes per sample above ``max_bytes``)."""
    check_dimensions(header.size, name, max_side=max_side)
    need = header.decoded_bytes_as(channels)
    if need > max_bytes:
        raise DecodedSizeOverBudget(
            f"{name}: {header.describe()} decodes to {need / 2**20:,.0f} MiB, over the "
            f"{max_bytes / 2**20:,.0f} MiB budget for one image"
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


def read_png16(source: ImageSource, *, max_side: int = MAX_SIDE, name: str | None = None) -> np.ndarray:
    """A single-channel PNG (16-bit depth/thermal, or 8-bit) as (H, W) uint16 or uint8."""
    return load_png16(source, max_side=max_side, name=name)[0]


def load_png16(
    source: ImageSource, *, max_side: int = MAX_SIDE, name: str | None = None, max_bytes: int = MAX_DECODED_BYTES
) -> tuple[np.ndarray, bytes]:
    """``read_png16``, also handing back the file's bytes.

    Everything that can be judged from the header is judged before decoding: sides, decoded size,
    grayscale (colour type 0) and a bit depth of 8 or 16. Raises CorruptImage, AbsurdDimensions or
    DecodedSizeOverBudget; messages name the file as ``name`` (default: the path as given)."""
    return _load_gray_png(*_load(source, name), max_side=max_side, max_bytes=max_bytes)[:2]


def _load_gray_png(data: bytes, name: str, *, max_side: int, max_bytes: int) -> tuple[np.ndarray, bytes, ImageHeader]:
    if not data.startswith(PNG_SIGNATURE):
        raise CorruptImage(f"{name}: not a PNG file" if data else f"{name}: empty file")
    header = _png_header(data, name)
    check_budget(header, name, max_side=max_side, max_bytes=max_bytes)
    if header.color != "gray" or header.bit_depth not in (8, 16):
        raise CorruptImage(f"{name}: expected a single-channel (grayscale) 8- or 16-bit PNG, got {header.describe()}")
    if not _png_complete(data):
        raise CorruptImage(f"{name}: truncated PNG (no complete IEND chunk)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CorruptImage(f"{name}: PNG data cannot be decoded")
    if arr.ndim != 2:  # cannot happen for a gray IHDR; kept so a decoder surprise is never stored
        raise CorruptImage(f"{name}: expected a single-channel PNG, decoded {arr.shape[2]} channels")
    return arr, data, header


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


def read_rgb(
    source: ImageSource, *, max_side: int = MAX_SIDE, name: str | None = None, max_bytes: int = MAX_DECODED_BYTES
) -> np.ndarray:
    """A PNG or JPEG as (H, W, 3) uint8 RGB, decoded the way ImageBind does (PIL ``convert("RGB")``).

    Pixels come as stored: EXIF orientation is *not* applied here (``load_rgb`` gives the header too,
    ``orient`` applies it). Raises CorruptImage, AbsurdDimensions or DecodedSizeOverBudget."""
    return load_rgb(source, max_side=max_side, name=name, max_bytes=max_bytes)[0]


def load_rgb(
    source: ImageSource, *, max_side: int = MAX_SIDE, name: str | None = None, max_bytes: int = MAX_DECODED_BYTES
) -> tuple[np.ndarray, ImageHeader]:
    """``read_rgb``, also handing back the header (orientation included)."""
    data, name = _load(source, name)
    header = _header_of(data, name)
    check_budget(header, name, max_side=max_side, max_bytes=max_bytes, channels=3)
    return _decode_rgb(data, name), header


def _decode_rgb(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            # PIL raises on a truncated file here (LOAD_TRUNCATED_IMAGES is off), cv2 would gray-fill it.
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise AbsurdDimensions(f"{name}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"{name}: cannot decode image: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Orientation (EXIF tag 0x0112, values 1..8; TIFF/EXIF 2.32 §4.6.4, as Pillow's ImageOps.exif_transpose)

ORIENTATION_NAMES = {
    1: "as stored",
    2: "mirrored left-right",
    3: "rotated 180°",
    4: "mirrored top-bottom",
    5: "transposed (mirrored and rotated 90° counter-clockwise)",
    6: "rotated 90° clockwise",
    7: "transversed (mirrored and rotated 90° clockwise)",
    8: "rotated 90° counter-clockwise",
}


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels (H, W) or (H, W, C) turned to how EXIF ``orientation`` says they are meant to be seen.

    Same result as Pillow's ``ImageOps.exif_transpose`` on the same pixels; 5..8 swap width and height.
    Returns a C-contiguous array (the input itself for 1)."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: a[::-1].swapaxes(0, 1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: a[:, ::-1].swapaxes(0, 1),
    }
    if orientation not in ops:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return np.ascontiguousarray(ops[orientation](arr))


def orient_point(x: float, y: float, width: int, height: int, orientation: int) -> tuple[float, float]:
    """Where pixel-centre coordinates (x, y) of a stored ``width`` × ``height`` image land after ``orient``."""
    w1, h1 = width - 1, height - 1
    return {
        1: (x, y),
        2: (w1 - x, y),
        3: (w1 - x, h1 - y),
        4: (x, h1 - y),
        5: (y, x),
        6: (h1 - y, x),
        7: (h1 - y, w1 - x),
        8: (y, w1 - x),
    }[orientation]


def orient_intrinsics(intrinsics: dict, width: int, height: int, orientation: int) -> dict:
    """Pinhole intrinsics (fx, fy, cx, cy in pixels of the stored ``width`` × ``height`` image) for the
    image after ``orient``: the principal point moves with its pixel, fx and fy swap when axes swap."""
    out = dict(intrinsics)
    if orientation == 1:
        return out
    out["cx"], out["cy"] = orient_point(float(intrinsics["cx"]), float(intrinsics["cy"]), width, height, orientation)
    if orientation >= 5:
        out["fx"], out["fy"] = intrinsics["fy"], intrinsics["fx"]
    return out


# ---------------------------------------------------------------------------------------------
# Depth in millimetres: bit depth and plausible range

# No depth sensor measures most of a scene closer than 10 cm (Kinect v1/v2 from ~0.5 m, RealSense D4xx
# from ~0.1-0.3 m, ToF modules from ~0.1 m): a median below this is not millimetres (e.g. 8-bit data
# scaled down, mm >> 4, in a 16-bit file).
DEPTH_MIN_MEDIAN_MM = 100
# SUN RGB-D's four sensors (Kinect v1/v2, RealSense F200, Xtion) are indoor, reading up to ~8-10 m; a
# median beyond 20 m means the bits were not SUN RGB-D's rotation of millimetres.
SUNRGBD_MAX_MEDIAN_MM = 20_000


def check_depth_mm(depth_mm: np.ndarray, name: str, *, max_median_mm: float | None = None) -> None:
    """Raise DepthImplausible when the valid (non-zero) values of a depth map in mm cannot be millimetres.

    The median of the valid pixels must be at least ``DEPTH_MIN_MEDIAN_MM`` and, when given, at most
    ``max_median_mm``. A map with no valid pixel passes (its valid fraction, 0, says it)."""
    valid = depth_mm[depth_mm > 0]
    if valid.size == 0:
        return
    median = float(np.median(valid))
    if median < DEPTH_MIN_MEDIAN_MM:
        raise DepthImplausible(
            f"{name}: median valid depth {median:g} mm is below any depth sensor's minimum range "
            f"({DEPTH_MIN_MEDIAN_MM} mm): the values are not millimetres (scaled or 8-bit data?)"
        )
    if max_median_mm is not None and median > max_median_mm:
        raise DepthImplausible(
            f"{name}: median valid depth {median:g} mm is beyond the sensors' range ({max_median_mm:g} mm): "
            "the values are not millimetres"
        )


def load_depth_png_mm(
    source: ImageSource,
    *,
    name: str | None = None,
    sunrgbd: bool = False,
    max_side: int = MAX_SIDE,
    max_bytes: int = MAX_DECODED_BYTES,
) -> tuple[np.ndarray, bytes]:
    """A depth PNG as (H, W) uint16 millimetres (0 = invalid), and the file's bytes.

    ``sunrgbd``: the file holds SUN RGB-D's bit-rotated values (``sunrgbd_depth_mm``). The header must
    declare 16-bit grayscale - millimetres need 16 bits; an 8-bit depth PNG is scaled data that would
    come out as nonsense (rotated: 4 to 57,374 "mm") - and the values must pass ``check_depth_mm``.
    Raises DepthBitDepth, DepthImplausible, or what ``load_png16`` raises."""
    data, name = _load(source, name)
    arr, data, header = _load_gray_png(data, name, max_side=max_side, max_bytes=max_bytes)
    if header.bit_depth != 16:
        raise DepthBitDepth(
            f"{name}: {header.describe()}; depth in millimetres needs a 16-bit PNG (8-bit depth is scaled, "
            "e.g. mm >> 4, and cannot be read as mm)"
        )
    mm = sunrgbd_depth_mm(arr) if sunrgbd else arr
    check_depth_mm(mm, name, max_median_mm=SUNRGBD_MAX_MEDIAN_MM if sunrgbd else None)
    return mm, data


# Radiometric LWIR cameras that write centikelvin (FLIR Lepton/Boson "TLinear", 0.01 K per count) report
# scene temperatures; nothing such a camera images sits mostly below -100 °C (173.15 K), and 16 bits of
# centikelvin hold up to 655.35 K. A lower median is not centikelvin (raw sensor counts, or 8-bit grey).
THERMAL_MIN_MEDIAN_CK = 17315


def load_thermal_png(
    source: ImageSource,
    *,
    units: str,
    name: str | None = None,
    max_side: int = MAX_SIDE,
    max_bytes: int = MAX_DECODED_BYTES,
) -> tuple[np.ndarray, bytes]:
    """A thermal PNG (H, W) in its declared ``units`` (schemas/manifest.py ThermalStream), and the file's bytes.

    ``centikelvin`` needs a 16-bit PNG whose valid (non-zero) median is at least ``THERMAL_MIN_MEDIAN_CK``
    (an 8-bit file would be read as at most 2.55 K); ``gray8`` needs an 8-bit PNG; ``raw_counts`` takes
    either. Raises ThermalImplausible, or what ``load_png16`` raises."""
    data, name = _load(source, name)
    arr, data, header = _load_gray_png(data, name, max_side=max_side, max_bytes=max_bytes)
    if units == "centikelvin" and header.bit_depth != 16:
        raise ThermalImplausible(
            f"{name}: {header.describe()}; thermal in centikelvin needs a 16-bit PNG (8-bit values would be at "
            "most 2.55 K)"
        )
    if units == "gray8" and header.bit_depth != 8:
        raise ThermalImplausible(f"{name}: {header.describe()}; declared gray8, which is an 8-bit PNG")
    valid = arr[arr > 0]
    if units == "centikelvin" and valid.size and float(np.median(valid)) < THERMAL_MIN_MEDIAN_CK:
        raise ThermalImplausible(
            f"{name}: median {float(np.median(valid)):g} cK ({float(np.median(valid)) / 100:.1f} K) is below any "
            f"scene a thermal camera images ({THERMAL_MIN_MEDIAN_CK / 100:.2f} K): the values are not "
            "centikelvin (raw counts?)"
        )
    return arr, data


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
