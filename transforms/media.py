"""One pass over a media file: video frames picked per clip window, audio cut into log-mel windows.

Each file is demuxed once, sequentially, with no seeking; video and audio packets of the same container
are dispatched to their decoders as they come. The decoding thread only does that and the bookkeeping;
turning picked frames into JPEGs runs on one helper thread per file, audio into log-mels on another, the
clock check's activity taps on a third, each in order, so results never depend on timing. Memory stays
bounded: per open window we keep at most the first frame's pick and a reference to the latest frame, the
audio side keeps one window plus a block (see transforms/audio.py), and at most a few windows' results are in
flight between the threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from schemas.reasons import RejectReason
from transforms import audio as A
from transforms.config import BuildConfig
from transforms.images import encode_frame_jpeg, fit_short_side, luma, luma_diff, luma_quality, orient
from transforms.layouts import ClockSpec
from transforms.plan import Window

if TYPE_CHECKING:
    from transforms.activity import ActivityTaps

logger = logging.getLogger(__name__)


class MediaInputError(Exception):
    """A media file that yields nothing usable; ``reason`` is its reject code."""

    def __init__(self, path: str, reason: RejectReason, detail: str):
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class MediaInfo:
    has_video: bool
    has_audio: bool
    video_end_s: float | None  # declared end of the video stream on its own clock
    width: int = 0
    height: int = 0
    frame_period_s: float | None = None  # 1 / the stream's average frame rate; None when it declares none
    video_start_s: float = 0.0  # first presentation time of the video stream on its own clock (late: MKV offsets)


@dataclass(frozen=True)
class FramePick:
    t_s: float  # session time
    jpg: bytes
    brightness: float | None  # None for a window's last frame: only the first frame's are reported
    sharpness: float | None


@dataclass(frozen=True)
class VideoWindow:
    index: int
    first: FramePick | None
    last: FramePick | None
    diff: float | None  # mean abs luma difference first vs last: ~0 for frozen video
    reason: RejectReason | None = None
    detail: str = ""
    orientation: int = 1  # EXIF-numbered orientation applied to the coded frames (1: none), see VideoGeometry
    rotation_deg: int = 0  # the counter-clockwise rotation in it (0, 90, 180, 270)
    sar: float = 1.0  # sample (pixel) aspect ratio of the coded frames; stored frames are at display aspect


@dataclass(frozen=True)
class MediaEvent:
    t_s: float  # session time the decode has reached; events of one file come in this order
    video: VideoWindow | None = None
    audio: A.AudioWindowResult | None = None


def _top_level_boxes_truncated(path: Path) -> bool:
    """True when an ISO-BMFF (MP4/MOV) file's top-level boxes run past its end, i.e. a cut-off file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 8 or head[4:8] not in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
            return False
        pos, seen_moov = 0, False
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(16)
            box = int.from_bytes(hdr[:4], "big")
            seen_moov |= hdr[4:8] == b"moov"
            if box == 1 and len(hdr) >= 16:
                box = int.from_bytes(hdr[8:16], "big")
            elif box == 0:
                return not seen_moov
            if box < 8:
                return True
            pos += box
        return pos != size or not seen_moov


def error_text(exc: BaseException) -> str:
    """An FFmpeg error for a reject's detail, without the file name PyAV appends (``...: '/abs/path'``): the
    reject names the file RAW-relatively already, and the path where it was read from (a RAW folder, or the
    scratch copy of an object, ``pipelines/raw_source.py``) must not change the output bytes."""
    import av

    if isinstance(exc, av.error.FFmpegError) and getattr(exc, "filename", None):
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc)


# Container durations the last probes read, by (path, size, mtime): the decode worker reports a file's duration to
# its parent (the decode budget) once the probe has read it, instead of opening the container once more
# (~1-2 ms a file, as much as decoding a few frames of a short clip). A handful: a worker probes a file and
# then decodes it.
_HEADER_DURATIONS: dict[tuple[str, int, int], float | None] = {}
_HEADER_DURATIONS_MAX = 16


def header_duration(path: Path | str, st: os.stat_result) -> tuple[bool, float | None]:
    """``(known, seconds)``: the container duration ``probe`` read for this file as ``st`` (its ``stat``) finds
    it (same size and modification time: a file rewritten since is not known), if it did."""
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    return (key in _HEADER_DURATIONS), _HEADER_DURATIONS.get(key)


def _remember_duration(path: Path, st: os.stat_result, c: av.container.InputContainer) -> None:
    if len(_HEADER_DURATIONS) >= _HEADER_DURATIONS_MAX:
        _HEADER_DURATIONS.clear()
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    _HEADER_DURATIONS[key] = c.duration / av.time_base if c.duration else None


def probe(path: Path, max_side: int) -> MediaInfo:
    """Open a media file's header; whole-file problems become MediaInputError with a reason. The container's
    duration is kept for ``header_duration``."""
    rel = str(path)
    if not path.exists():
        raise MediaInputError(rel, RejectReason.FILE_MISSING, "file not found")
    st = path.stat()
    if st.st_size == 0:
        raise MediaInputError(rel, RejectReason.EMPTY_FILE, "file is empty (0 bytes)")
    try:
        with av.open(str(path)) as c:
            _remember_duration(path, st, c)
            vs = c.streams.video[0] if c.streams.video else None
            has_audio = bool(c.streams.audio)
            end = None
            start = 0.0
            w = h = 0
            if vs is not None:
                w, h = vs.codec_context.width, vs.codec_context.height
                if w <= 0 or h <= 0 or w > max_side or h > max_side:
                    raise MediaInputError(rel, RejectReason.ABSURD_DIMENSIONS, f"video declares {w}x{h} pixels")
                if vs.start_time is not None:
                    start = float(vs.start_time * vs.time_base)
                if vs.duration is not None:
                    end = float((vs.start_time or 0) + vs.duration) * float(vs.time_base)
                else:
                    # Matroska/WebM declare no stream duration, and what the container declares is not
                    # reliably a duration (FFmpeg's muxer writes the last timestamp: 53 s for 8 s of media
                    # starting at 45 s); the last packets say where the stream really ends.
                    end = _scan_end(c, vs)
                    if end is None and c.duration is not None:
                        end = c.duration / av.time_base
            rate = (vs.average_rate or vs.guessed_rate) if vs is not None else None
            period = 1.0 / float(rate) if rate else None
            return MediaInfo(vs is not None, has_audio, end, w, h, period, start)
    except av.error.FFmpegError as exc:
        if _top_level_boxes_truncated(path):
            raise MediaInputError(rel, RejectReason.TRUNCATED_MEDIA, f"file is cut off: {error_text(exc)}") from None
        raise MediaInputError(rel, RejectReason.DECODE_ERROR, f"cannot open: {error_text(exc)}") from None


def _scan_end(c: av.container.InputContainer, vs: av.video.stream.VideoStream) -> float | None:
    """End (last pts + duration) of a video stream, from its packets after a seek to its last keyframe."""
    try:
        c.seek(2**62, backward=True, any_frame=False, stream=vs)
        end = None
        for i, packet in enumerate(c.demux(vs)):
            if i >= _SCAN_END_PACKETS:  # the seek did not get near the end (no index): keep what is declared
                return None
            if packet.pts is not None:
                t = packet.pts + (packet.duration or 0)
                end = t if end is None else max(end, t)
        return None if end is None else float(end * vs.time_base)
    except av.error.FFmpegError:
        return None


# A keyframe interval is rarely over a few hundred frames; a scan that reads more than this after seeking
# to the end has not been taken there, and stops rather than read the whole file.
_SCAN_END_PACKETS = 5000


# Shrinking happens inside libswscale while it converts YUV to RGB: box ("area") filtering, like
# cv2.INTER_AREA, and exact rounding; BITEXACT keeps the C reference arithmetic whatever SIMD the CPU
# has, and one thread keeps it off the decoder's cores. Planar RGB (gbrp) out of swscale is the same
# pixels as packed rgb24, only cheaper to produce. Converting the full frame to RGB first and shrinking
# it with cv2.INTER_AREA afterwards cost about three times as much, and measured against a float
# reference (BT.601 -> RGB, then area averaging) it is also the less accurate one (a mean error of
# about 1 level, against 0.3).
_SHRINK = Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.BITEXACT

# Results (a window's frames, a block's audio windows) still being computed by the file's worker
# thread before decode_media waits for the oldest: bounds the frames and samples held meanwhile.
_MAX_IN_FLIGHT = 8

# Video packets remembered while their frames are still inside a (frame-threaded) decoder; more than
# a decoder holds (threads + reorder delay), so the packet behind an error is among them.
_MAX_IN_FLIGHT_PACKETS = 64


# Helper threads run at a lower scheduling priority than the decoding thread and the decoder's own
# frame threads: they then fill the CPU time decoding leaves idle instead of competing with it. Where
# every core is busy anyway (a build runs one unit per core), this changes nothing.
_HELPER_NICE = 10


def _lower_priority() -> None:
    try:  # Linux: PRIO_PROCESS with a thread id sets that thread's nice value
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + _HELPER_NICE))
    except (AttributeError, OSError):
        pass  # elsewhere: same results, only without the priority hint


# FFmpeg's video decoding threads (``AVCodecContext.thread_count``), 0 = FFmpeg's own choice, one per core.
# Frame threading buys wall time at a CPU cost (~35% more CPU on 320x240 H.264: 8.9 vs 6.6 CPU-s for 300
# six-second videos), which is a loss when other units' decoders already keep every core busy; the engine
# says how many threads each decoder gets (pipelines/build.py ``decode_threads``). Intact streams decode to
# the same frames whatever the count (H.264 with B-frames, HEVC, VP8/9, AV1, MPEG-2/4, MJPEG, ProRes
# checked); damaged ones do not: how FFmpeg conceals a bad packet, which frames a failed packet takes
# with it and where it reports the error depend on the threading (and so, at FFmpeg's default, on the
# machine's core count). A video found damaged while decoded with several threads is therefore decoded
# again with one (``DamagedUnderThreads``): what is stored for it is the same on every engine and machine
# (tests/test_bad_inputs.py: damaged H.264, MPEG-2, AV1). Not for HEVC: FFmpeg's HEVC decoder conceals some
# damage from recycled memory, so even with one thread its frames there depend on what the process decoded
# before (measured: the same damaged file after an H.264 and an AV1 file gave 3 different samples).
_decode_threads = 0


def set_decode_threads(n: int) -> None:
    """Decode video with ``n`` FFmpeg threads in this process from now on (0: FFmpeg's default, one per
    core). Raises ValueError for a negative ``n``."""
    global _decode_threads
    if n < 0:
        raise ValueError(f"decode threads must be >= 0, got {n}")
    _decode_threads = int(n)


class DamagedUnderThreads(Exception):
    """A video decoded with several FFmpeg threads showed damage (a packet that failed to decode, a frame
    the decoder marked corrupt, decoding that stopped on an error): the caller withdraws what the input
    recorded and decodes it again inside ``one_decode_thread()``, where this is never raised."""


@contextlib.contextmanager
def one_decode_thread() -> Iterator[None]:
    """Decode video with one FFmpeg thread in this process inside the block (``DamagedUnderThreads``)."""
    global _decode_threads
    before, _decode_threads = _decode_threads, 1
    try:
        yield
    finally:
        _decode_threads = before


def helper_thread(name: str) -> ThreadPoolExecutor:
    """One thread, so jobs run in the order submitted: results never depend on timing."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lower_priority)


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


# A display matrix's 2x2 part, each entry -1/0/1 (x' = a x + c y, y' = b x + d y; FFmpeg's
# libavutil/display.h layout: a = m[0], b = m[1], c = m[3], d = m[4]) -> the EXIF orientation whose
# transform (transforms.images.orient) is the same pixel mapping. 90 degrees counter-clockwise, what
# `ffmpeg -metadata:s:v:0 rotate=90` writes, is (0, -1, 1, 0) -> 8, as FFmpeg's own autorotate shows it.
_MATRIX_TO_EXIF = {
    (1, 0, 0, 1): 1, (-1, 0, 0, 1): 2, (-1, 0, 0, -1): 3, (1, 0, 0, -1): 4,
    (0, 1, 1, 0): 5, (0, 1, -1, 0): 6, (0, -1, -1, 0): 7, (0, -1, 1, 0): 8,
}  # fmt: skip
# counter-clockwise degrees of each orientation's rotation part (the mirrored ones: after the mirror)
_EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 270, 6: 270, 7: 90, 8: 90}
# legacy `rotate` tags (FFmpeg < 5, some Matroska writers) give the clockwise rotation for display
_ROTATE_TAG_TO_EXIF = {0: 1, 90: 6, 180: 3, 270: 8}


@dataclass(frozen=True)
class VideoGeometry:
    """How coded frames become what is stored: pixel aspect first, then the orientation.

    ``orientation`` uses EXIF's numbering (1..8), the same transforms as still images, so stills and
    video frames are turned by one function. ``source`` says where it came from: "display_matrix",
    "rotate_tag" or "none"; ``unsupported`` notes a matrix that is not a multiple of 90 degrees (stored
    as decoded, and said so).
    """

    orientation: int = 1
    sar: float = 1.0
    source: str = "none"
    unsupported: str = ""

    @property
    def rotation_deg(self) -> int:
        return _EXIF_ROTATION[self.orientation]


def video_geometry(frame: av.VideoFrame, stream_metadata: dict[str, str], sar: float | None) -> VideoGeometry:
    """The geometry of a stream from its first decoded frame (display matrix side data), its metadata
    (a legacy ``rotate`` tag) and its sample aspect ratio. Pure: no state, no I/O."""
    sar_f = float(sar) if sar and float(sar) > 0 else 1.0
    for sd in frame.side_data:
        if sd.type is av.sidedata.sidedata.Type.DISPLAYMATRIX:
            m = np.frombuffer(bytes(sd), dtype=np.int32)
            if len(m) >= 9:
                unit = np.array([m[0], m[1], m[3], m[4]], np.float64) / 65536.0
                key = tuple(int(round(v)) for v in unit)
                if key in _MATRIX_TO_EXIF and np.allclose(unit, key, atol=1e-3):
                    return VideoGeometry(_MATRIX_TO_EXIF[key], sar_f, "display_matrix")
                why = f"display matrix {unit.tolist()} is not a multiple of 90°"
                return VideoGeometry(1, sar_f, "display_matrix", why)
    tag = next((v for k, v in stream_metadata.items() if k.lower() == "rotate"), None)
    if tag is not None:
        try:
            deg = int(round(float(tag))) % 360
        except ValueError:
            deg = -1
        if deg in _ROTATE_TAG_TO_EXIF:
            return VideoGeometry(_ROTATE_TAG_TO_EXIF[deg], sar_f, "rotate_tag")
        return VideoGeometry(1, sar_f, "rotate_tag", f"rotate tag {tag!r} is not a multiple of 90°")
    return VideoGeometry(1, sar_f)


def display_size(width: int, height: int, sar: float) -> tuple[int, int]:
    """Coded size -> display size (square pixels): the axis that non-square pixels shrink is widened, so
    no coded pixel is discarded (SAR 2:1 at 80x100 -> 160x100; SAR 1:2 at 160x50 -> 160x100)."""
    if abs(sar - 1.0) < 1e-6:
        return width, height
    if sar > 1.0:
        return max(1, round(width * sar)), height
    return width, max(1, round(height / sar))


class _FrameClock:
    """Presentation times of decoded video frames, chosen as FFmpeg's best-effort timestamp is.

    FFmpeg (libavcodec/decode.c, guess_correct_pts) counts how often the frames' pts and their packets'
    dts fail to increase and uses whichever fails less; a container without reliable pts (H.264 with
    B-frames in AVI) gives pts that come out of order, while the dts run in presentation order. FFmpeg
    decides frame by frame; here the counts of a few frames ahead are included (frames are held back
    that long), so the first frames of such a file get the same clock as the rest. Where pts never
    fail (MP4, MKV, WebM) the pts are used, as before.
    """

    LOOKAHEAD = 8

    def __init__(self):
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = None
        self.held: deque[tuple[av.VideoFrame, str]] = deque()
        self.released: int | None = None  # ticks given to the last frame let out, and the step before it
        self.step: int | None = None

    def push(self, frame: av.VideoFrame, note: str = "") -> list[tuple[av.VideoFrame, int | None, str]]:
        """``note`` travels with the frame (why it is damaged, if it is)."""
        pts, dts = frame.pts, frame.dts
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        self.held.append((frame, note))
        return self._release(self.LOOKAHEAD)

    def flush(self) -> list[tuple[av.VideoFrame, int | None, str]]:
        return self._release(0)

    def _release(self, keep: int) -> list[tuple[av.VideoFrame, int | None, str]]:
        out = []
        while len(self.held) > keep:
            f, note = self.held.popleft()
            if f.pts is not None and self.faulty_pts <= self.faulty_dts:
                ticks = f.pts
            elif f.dts is not None:
                ticks = f.dts
            elif self.released is not None:
                # the frames drained from the decoder at the end carry no dts (FFmpeg reports no
                # best-effort time for them): they follow the last one at the stream's frame step
                ticks = self.released + (self.step or 0)
            else:
                ticks = f.pts
            if ticks is not None and self.released is not None and ticks > self.released:
                self.step = ticks - self.released
            self.released = ticks if ticks is not None else self.released
            out.append((f, ticks, note))
        return out


class _VideoTracker:
    """Assigns decoded frames to windows: the first and the last frame whose time is in [s, e).

    ``push`` runs on the decoding thread for every frame and only does the bookkeeping; turning a
    picked frame into pixels, quality figures and a JPEG runs on ``worker`` (one thread, so jobs run
    in the order submitted), and each finished window comes back as a Future of its VideoWindow.
    """

    def __init__(self, windows: list[Window], clock: ClockSpec, cfg: BuildConfig, worker: ThreadPoolExecutor):
        self.windows, self.clock, self.cfg, self.worker = windows, clock, cfg, worker
        self.lo = 0  # first window not yet finished
        self.first: dict[int, Future] = {}  # window index -> Future of (FramePick, luma)
        self.latest: dict[int, tuple[float, av.VideoFrame]] = {}
        self.reformatter = VideoReformatter()  # used on the worker only
        # frames stored at their coded size: converted to RGB by a reformatter of our own, not by
        # frame.to_ndarray(format="rgb24"), which builds a new SwsContext for every frame (~0.5 ms at
        # 320x240, 3-4x the conversion itself); the same conversion with the same arguments, so the same bytes
        self.rgb_reformatter = VideoReformatter()
        self.geometry = VideoGeometry()  # set by the caller from the first frame
        # damage: windows with a packet that failed to decode, or a frame decoded from damaged references
        self.tainted: dict[int, str] = {}

    def damage(self, lo: float, hi: float, detail: str) -> None:
        """Video packets somewhere in session times [lo, hi] failed to decode: the windows there are damaged.

        With frame threading the decoder reports an error a few packets after the bad one, so the
        caller passes the span of the packets still in flight. The frames decoded after it, from
        missing references, come in through ``push(..., damaged=True)`` until the next keyframe.
        """
        for w in self.windows[self.lo :]:
            if w.start_s > hi:
                break
            if lo < w.end_s:
                self.tainted.setdefault(w.index, detail)

    def _taint(self, t: float, detail: str) -> None:
        self.damage(t, t, detail)

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """The frame as stored: at display aspect (square pixels), RGB with the short side at most
        max_short_side (never upscaled beyond the display size), turned as its orientation says."""
        geo = self.geometry
        dw, dh = display_size(frame.width, frame.height, geo.sar)
        size = fit_short_side(dw, dh, self.cfg.max_short_side)
        if (size.width, size.height) == (frame.width, frame.height):
            rgb = self.rgb_reformatter.reformat(frame, format="rgb24").to_ndarray()
        else:
            small = self.reformatter.reformat(
                frame, width=size.width, height=size.height, format="gbrp", interpolation=_SHRINK, threads=1
            )
            rgb = small.to_ndarray()  # (H, W, 3) RGB, contiguous
        return orient(rgb, geo.orientation) if geo.orientation != 1 else rgb

    def _pick(self, t: float, frame: av.VideoFrame, *, quality: bool = True) -> tuple[FramePick, np.ndarray]:
        """The stored JPEG and the luma of a picked frame; quality figures only where asked for.

        Quality figures describe the stored (shrunk) frame; on 720p+ sources this is also what keeps
        per-window work far below the cost of decoding every frame.
        """
        rgb = self._rgb(frame)
        gray = luma(rgb)
        q = luma_quality(gray) if quality else None
        jpg = encode_frame_jpeg(rgb, max_short_side=self.cfg.max_short_side, quality=self.cfg.jpeg_quality)
        return FramePick(t, jpg, q and q.brightness, q and q.sharpness), gray

    def push(self, frame: av.VideoFrame, t: float, damaged: str = "") -> list[Future]:
        """``t``: the frame's session time; ``damaged``: why the frame cannot be trusted, if so.
        Runs for every decoded frame, so it stays lean."""
        if damaged:
            self._taint(t, damaged)
        windows = self.windows
        n = len(windows)
        done = []
        while self.lo < n and t >= windows[self.lo].end_s:
            done.append(self._close(windows[self.lo]))
            self.lo += 1
        i = self.lo
        while i < n:
            w = windows[i]
            if w.start_s > t:
                break
            if t < w.end_s:
                if w.index not in self.first:
                    self.first[w.index] = self.worker.submit(self._pick, t, frame)
                self.latest[w.index] = (t, frame)
            i += 1
        return done

    def _close(
        self, w: Window, reason: RejectReason = RejectReason.NO_FRAMES_IN_WINDOW, why: str = "", final: bool = False
    ) -> Future:
        first = self.first.pop(w.index, None)
        latest = self.latest.pop(w.index, None)
        damage = self.tainted.pop(w.index, None)
        if damage is not None and not (final and reason is RejectReason.TRUNCATED_MEDIA):
            return _done(self._reject(w.index, RejectReason.CORRUPT_PACKETS, damage))
        if first is None:
            return _done(self._reject(w.index, reason, why or "no decoded frame falls in the window"))
        return self.worker.submit(self._finish_window, w.index, first, latest)

    def _reject(self, index: int, reason: RejectReason, detail: str) -> VideoWindow:
        g = self.geometry
        return VideoWindow(index, None, None, None, reason, detail, g.orientation, g.rotation_deg, g.sar)

    def _finish_window(self, index: int, first: Future, latest: tuple[float, av.VideoFrame]) -> VideoWindow:
        pick, gray = first.result()  # submitted earlier to this same single thread: already done
        if latest[0] == pick.t_s:
            last, diff = pick, 0.0
        else:
            # the index reports the first frame's quality figures only
            last, last_gray = self._pick(*latest, quality=False)
            diff = luma_diff(gray, last_gray)
        g = self.geometry
        return VideoWindow(index, pick, last, diff, None, "", g.orientation, g.rotation_deg, g.sar)

    def finish(self, reason: RejectReason, why: str) -> list[Future]:
        out = [self._close(w, reason, why, final=True) for w in self.windows[self.lo :]]
        self.lo = len(self.windows)
        return out


# Audio frames whose pts stray from where the previous samples end by less than this are taken as
# contiguous: container time bases round (Matroska's 1 ms ticks put AAC frames up to 0.5 ms off).
_AUDIO_JITTER_S = 0.002


@dataclass(frozen=True)
class _Break:
    """Why one stretch of audio ends and the next begins (a format change, a jump in the timestamps)."""

    reason: RejectReason
    detail: str


def _audio_guarded(job):
    """A bug or an unforeseen input in the audio work costs the audio of the windows still to come,
    never the session: the exception is logged and those windows are audio rejects (internal_error)."""

    @functools.wraps(job)
    def run(self, *args):
        if self.failed:
            return []
        try:
            out = job(self, *args)
        except Exception as exc:  # noqa: BLE001 - recorded as internal_error rejects, with the traceback logged
            logger.exception("audio processing failed; the remaining windows keep their video")
            self.failed = f"audio processing failed: {type(exc).__name__}: {exc}"
            return []
        self.emitted.update(r.id for r in out)
        return out

    return run


class _AudioTracker:
    """Decoded audio frames -> 16 kHz -> windows -> log-mel, with a bounded buffer.

    Codec frames hold ~1024 samples; handling them one by one costs more in call overhead than in
    arithmetic. The decoding thread therefore only collects frames into ~2 s blocks; a block is
    converted (planar float frames, what AAC, Opus, MP3 and Vorbis decode to, by viewing their planes),
    resampled, cut and turned into log-mels on ``worker`` (one thread: blocks are processed in order),
    and comes back as a Future of the windows it completed. The resampler's output does not depend on
    the block sizes (see StreamingResampler), so the blocking is free to choose.

    Audio is placed by its timestamps. A track is a series of stretches, each of one sample rate and
    channel count and contiguous in time; each stretch is resampled on its own (the whole-track
    torchaudio result when there is one stretch). Small pts deviations are absorbed: a hole up to the
    audio tolerance is filled with silence, an overlap that small is trimmed. A larger jump, a change of
    rate or layout, or a packet the decoder refused start a new stretch; the windows that reach across
    the break by more than the tolerance are rejected with the break's reason (``audio_gap``,
    ``audio_format_change``, ``corrupt_packets``), and the windows on either side are kept.
    """

    BLOCK = 96000

    def __init__(self, windows: list[Window], clock: ClockSpec, cfg: BuildConfig, worker: ThreadPoolExecutor):
        self.requests = [A.WindowRequest(w.index, float(clock.to_stream(w.start_s))) for w in windows]
        self.clock, self.cfg, self.worker = clock, cfg, worker
        self.tolerance = cfg.audio_tolerance_s
        # decoding thread: the current stretch
        self.fmt: tuple[int, int] | None = None  # (sample rate, channels)
        self.piece_start = 0.0  # stream time of its first sample
        self.piece_n = 0  # samples placed in it so far (fills included)
        self.bad_packets = 0  # packets the decoder refused since the last frame
        self.pending: list[av.AudioFrame | np.ndarray] = []  # decoded, not yet handed to the worker
        self.pending_n = 0
        self.channels = 0
        # worker thread: the current stretch's resampler and cutter, and the windows still to come
        self.resampler: A.StreamingResampler | None = None
        self.cutter: A.WindowCutter | None = None
        self.left: list[A.WindowRequest] = list(self.requests)
        self.cause: _Break | None = None  # what began the worker's current stretch
        self.cause_start = 0.0
        self.emitted: set = set()  # window ids reported so far
        self.failed = ""  # set when the audio work raised: the remaining windows lose their audio only

    def decode_error(self) -> None:
        """A packet of this stream failed to decode (skipped): its samples are a hole."""
        self.bad_packets += 1

    def push(self, frame: av.AudioFrame, start_s: float | None = None) -> list[Future]:
        """``start_s``: the frame's stream time (pts * time_base), when it has a pts."""
        rate, channels = frame.sample_rate, frame.layout.nb_channels
        data: av.AudioFrame | np.ndarray = frame
        n = frame.samples
        out: list[Future] = []
        if self.fmt is None:
            out += self._begin(rate, channels, start_s or 0.0, None)
        else:
            expected = self.piece_start + self.piece_n / self.fmt[0]
            gap = 0.0 if start_s is None else start_s - expected
            brk = None
            if (rate, channels) != self.fmt:
                brk = _Break(RejectReason.AUDIO_FORMAT_CHANGE,
                             f"audio format changes at {expected:.3f}s: {self.fmt[0]} Hz x{self.fmt[1]} -> "
                             f"{rate} Hz x{channels}")  # fmt: skip
            elif self.bad_packets and gap > _AUDIO_JITTER_S:
                lost = f"{self.bad_packets} audio packet(s) failed to decode: {gap:.3f}s lost at {expected:.3f}s"
                brk = _Break(RejectReason.CORRUPT_PACKETS, lost)
            elif abs(gap) > self.tolerance:
                what = "jump over a hole" if gap > 0 else "step back"
                brk = _Break(RejectReason.AUDIO_GAP, f"audio timestamps {what} of {abs(gap):.3f}s at {expected:.3f}s")
            elif gap > _AUDIO_JITTER_S:  # a small hole: silence, so later samples stay at their times
                fill = round(gap * rate)
                self.pending.append(np.zeros((channels, fill), np.float32))
                self.pending_n += fill
                self.piece_n += fill
            elif gap < -_AUDIO_JITTER_S:  # a small overlap: drop what was already placed
                cut = min(n, round(-gap * rate))
                data, n = A.frame_to_float(frame)[:, cut:], n - cut
            if brk is not None:
                out += self._flush()
                out += self._begin(rate, channels, start_s if start_s is not None else expected, brk)
        self.bad_packets = 0
        if n:
            self.pending.append(data)
            self.pending_n += n
            self.piece_n += n
        if self.pending_n >= self.BLOCK:
            out += self._flush()
        return out

    def _begin(self, rate: int, channels: int, start_s: float, cause: _Break | None) -> list[Future]:
        self.fmt, self.channels, self.piece_start, self.piece_n = (rate, channels), channels, start_s, 0
        return [self.worker.submit(self._open, rate, start_s, cause)]

    def _flush(self) -> list[Future]:
        if not self.pending:
            return []
        pending, self.pending, self.pending_n = self.pending, [], 0
        return [self.worker.submit(self._block, pending, self.channels)]

    @staticmethod
    def _samples(frame: av.AudioFrame | np.ndarray, channels: int) -> np.ndarray | tuple[np.ndarray, ...]:
        """(channels, n) float32 samples, as views of the frame's planes where it is planar float."""
        if isinstance(frame, np.ndarray):
            return frame
        if frame.format.name == "fltp" and frame.layout.nb_channels == channels:
            n = frame.samples
            return tuple(np.frombuffer(p, np.float32, n) for p in frame.planes)
        return A.frame_to_float(frame)

    # ---- worker thread

    @_audio_guarded
    def _open(self, rate: int, start_s: float, cause: _Break | None) -> list[A.AudioWindowResult]:
        """Start a stretch: close the previous one first (its windows reaching past its end are cut)."""
        out = []
        if self.cutter is not None:
            cuts = self.cutter.push(self.resampler.finish())
            more, self.left = self.cutter.finish_segment()
            out = self._finish(cuts + more, cause)
        self.resampler = A.StreamingResampler(rate)
        self.cutter = A.WindowCutter(self.left, stream_start_s=start_s, tolerance_s=self.tolerance)
        self.cause, self.cause_start = cause, start_s
        return out

    @_audio_guarded
    def _block(self, frames: list, channels: int) -> list[A.AudioWindowResult]:
        pending = [self._samples(f, channels) for f in frames]
        block = np.empty((channels, sum(len(p[0]) for p in pending)), np.float32)
        for c in range(channels):
            np.concatenate([p[c] for p in pending], out=block[c])
        return self._finish(self.cutter.push(self.resampler.push(block)))

    def _finish(self, cuts, end_cause: _Break | None = None) -> list[A.AudioWindowResult]:
        out = []
        for c in cuts:
            r = A.finish_window(c, self.cfg.audio_channels)
            if r.reject_reason is RejectReason.AUDIO_OUT_OF_RANGE:
                # missing before this stretch began, or past its end: say which break, if any, caused it
                cause = self.cause if c.start_s < self.cause_start - self.tolerance else end_cause
                if cause is not None:  # the window reaches across the break, not past the track's ends
                    detail = f"{cause.detail} ({c.missing_s:.3f}s of the window lies across it)"
                    r = replace(r, reject_reason=cause.reason, detail=detail)
            out.append(r)
        return out

    def finish(self) -> list[Future]:
        if self.fmt is None:  # an audio stream without a single decodable frame
            cutter = A.WindowCutter(self.requests, tolerance_s=self.cfg.audio_tolerance_s)
            return [_done(self._finish(cutter.finish()))]
        out = self._flush()
        return out + [self.worker.submit(self._final)]

    def _final(self) -> list[A.AudioWindowResult]:
        out = self._final_cuts()
        if self.failed:
            out += [A.AudioWindowResult(r.id, r.start_s, A.WindowStatus.OUT_OF_RANGE, None, None,
                                        RejectReason.INTERNAL_ERROR, self.failed)
                    for r in self.requests if r.id not in self.emitted]  # fmt: skip
        return out

    @_audio_guarded
    def _final_cuts(self) -> list[A.AudioWindowResult]:
        return self._finish(self.cutter.push(self.resampler.finish()) + self.cutter.finish())


class _TapFeeder:
    """Feeds the clock check's activity taps (transforms/activity.py) on a thread of their own.

    The taps cost about a third of the decoding thread's time at 320x240 (a luma thumbnail per video frame,
    an 8 kHz resampling of every audio frame); run beside the decoding they fill a core it leaves idle.
    Each tap still gets its frames in decode order from a single thread, so what it computes is what it
    computed fed inline. Frames go over in batches (one hand-over costs about what a frame's tap work does),
    and the frames handed over but not yet fed are bounded by their pixels, so memory stays bounded at any
    resolution. ``close`` returns once every frame is fed: only then may the taps be read.

    Consecutive audio frames of a batch go to the audio tap as one frame (``_merged``): its libswresample
    pass and spectral flux are streaming, so they give the same samples and flux whatever the frames' sizes
    (bit for bit; on every synth video and the media tests), for about half the resampler's per-frame cost.
    Only frames of a format the tap has already taken one by one are merged, so a format it cannot read
    still fails on that format's first frame, with that frame's time in the message, as it did.
    """

    BATCH_FRAMES = 32
    BATCH_BYTES = 4 << 20  # luma bytes (video) or sample bytes (audio) of one batch, roughly
    MAX_BYTES = 32 << 20  # handed over and not yet fed; the decoding thread waits beyond this

    def __init__(self, taps: ActivityTaps):
        self.taps = taps
        self.thread = helper_thread("bindset-taps")
        self.batch: list[tuple[Callable, object, float | None]] = []
        self.batch_bytes = 0
        self.in_flight: deque[tuple[Future, int]] = deque()
        self.in_flight_bytes = 0
        self.audio_format: tuple | None = None  # taps thread: the format the audio tap took a frame of alone

    def video(self, frame: av.VideoFrame, t_s: float) -> None:
        self._add(self.taps.video.push, frame, t_s, frame.width * frame.height)

    def audio(self, frame: av.AudioFrame, start_s: float | None) -> None:
        self._add(self.taps.audio_tap().push, frame, start_s, frame.samples * 8)

    def _add(self, push: Callable, frame, t: float | None, size: int) -> None:
        self.batch.append((push, frame, t))
        self.batch_bytes += size
        if len(self.batch) >= self.BATCH_FRAMES or self.batch_bytes >= self.BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.batch:
            return
        batch, size = self.batch, self.batch_bytes
        self.batch, self.batch_bytes = [], 0
        self.in_flight.append((self.thread.submit(self._feed, batch), size))
        self.in_flight_bytes += size
        while self.in_flight and (self.in_flight_bytes > self.MAX_BYTES or self.in_flight[0][0].done()):
            fut, n = self.in_flight.popleft()
            self.in_flight_bytes -= n
            fut.result()  # re-raises what a tap raised (they are written not to)

    def close(self) -> None:
        """Feed what is left and wait for all of it."""
        try:
            self._flush()
            while self.in_flight:
                self.in_flight.popleft()[0].result()
        finally:
            self.thread.shutdown(wait=True)

    def abandon(self) -> None:
        """The decoding stopped early (an exception, or its events no longer wanted): drop what is pending."""
        self.batch.clear()
        self.thread.shutdown(wait=True, cancel_futures=True)

    # ---- taps thread

    def _feed(self, batch: list[tuple[Callable, object, float | None]]) -> None:
        run: list[tuple[Callable, av.AudioFrame, float | None]] = []  # audio frames of one format, in order
        for push, frame, t in batch:
            if not isinstance(frame, av.AudioFrame):
                push(frame, t)  # the video tap: the audio tap's frames are a stream of their own
                continue
            fmt = (frame.sample_rate, frame.layout.name, frame.format.name)
            if run and fmt != self.audio_format:
                self._audio(run)
                run = []
            if fmt != self.audio_format or frame.format.name not in _MERGEABLE:
                push(frame, t)  # a format's first frame goes alone
                self.audio_format = fmt
            else:
                run.append((push, frame, t))
        self._audio(run)

    @staticmethod
    def _audio(run: list[tuple[Callable, av.AudioFrame, float | None]]) -> None:
        if not run:
            return
        push, first, t = run[0]
        merged = _merged([frame for _, frame, _ in run]) if len(run) > 1 else first
        if merged is None:
            for _, frame, start in run:
                push(frame, start)
        else:
            push(merged, t)  # the tap anchors its signal on its first frame's time only


# sample formats whose frames _merged joins: to_ndarray gives (channels, n) planar or (1, n * channels) packed
_MERGEABLE = frozenset(("fltp", "flt", "s16", "s16p", "s32", "s32p", "dbl", "dblp", "u8", "u8p"))


def _merged(frames: list[av.AudioFrame]) -> av.AudioFrame | None:
    """Audio frames of one format as one frame (their samples back to back, the first one's pts), or None
    where PyAV cannot build it (the caller then feeds them one by one)."""
    first = frames[0]
    try:
        # the planes copied into one array, as to_ndarray lays them out (its dtype and rows from the first
        # frame's): a to_ndarray per frame, then their concatenation, cost ~40% more (~1.4 us a frame more)
        ref = first.to_ndarray()
        per = ref.shape[1] // max(first.samples, 1)  # values per sample in a plane: the channels when packed
        samples = np.empty((ref.shape[0], per * sum(f.samples for f in frames)), ref.dtype)
        at = 0
        for f in frames:
            n = per * f.samples
            for row, plane in zip(samples, f.planes, strict=True):
                row[at : at + n] = np.frombuffer(plane, ref.dtype, n)
            at += n
        out = av.AudioFrame.from_ndarray(samples, format=first.format.name, layout=first.layout.name)
        out.sample_rate = first.sample_rate
        if first.pts is not None and first.time_base is not None:
            out.pts, out.time_base = first.pts, first.time_base
        return out
    except (ValueError, TypeError, av.error.FFmpegError):
        return None


def decode_media(
    path: Path,
    *,
    video_windows: list[Window] | None,
    video_clock: ClockSpec,
    audio_windows: list[Window] | None,
    audio_clock: ClockSpec,
    cfg: BuildConfig,
    heartbeat: Callable[[str], None] = lambda _: None,
    taps: ActivityTaps | None = None,
) -> Iterator[MediaEvent]:
    """Decode the requested streams of one file once; every requested window is reported exactly once.

    The calling thread only demuxes, decodes and assigns frames to windows; the per-window work runs
    on worker threads of this file (one for the video's picks, one for the audio's blocks: at the end of a
    file, when the decoding thread waits for both, they finish side by side), so that decoding (whose frame
    threads wait on the caller) keeps going meanwhile. Events come out in the order and with the times they
    would have without it: each is held until its result is ready, the oldest first.

    ``taps``: activity taps (transforms/activity.py) fed every decoded frame of the requested streams, on the
    stream's own clock, for the clock check (``--clocks verify|estimate``) without a second decode.
    """
    heartbeat(os.fspath(path))
    feed = _TapFeeder(taps) if taps is not None else None
    with helper_thread("bindset-media") as worker, helper_thread("bindset-audio") as audio_worker:
        try:
            yield from _decode_media(path, video_windows, video_clock, audio_windows, audio_clock, cfg, worker, feed,
                                     audio_worker)  # fmt: skip
            if feed is not None:
                feed.close()
        finally:
            worker.shutdown(wait=True, cancel_futures=True)
            audio_worker.shutdown(wait=True, cancel_futures=True)
            if feed is not None:
                feed.abandon()  # a no-op after close()


def _decode_media(path, video_windows, video_clock, audio_windows, audio_clock, cfg, worker,
                  taps: _TapFeeder | None = None, audio_worker: ThreadPoolExecutor | None = None
                  ) -> Iterator[MediaEvent]:  # fmt: skip
    vt = _VideoTracker(video_windows, video_clock, cfg, worker) if video_windows is not None else None
    at = _AudioTracker(audio_windows, audio_clock, cfg, audio_worker or worker) if audio_windows is not None else None
    end_reason, end_detail = RejectReason.NO_FRAMES_IN_WINDOW, ""
    t_now = -1e18
    audio_end = -1e18  # stream time the audio decode reached
    video_frames = bad_video = 0
    queue: deque[tuple[float, bool, Future]] = deque()  # (event time, is video, result), oldest first

    def ready(wait_beyond: int) -> Iterator[MediaEvent]:
        while queue and (len(queue) > wait_beyond or queue[0][2].done()):
            t, is_video, fut = queue.popleft()
            if is_video:
                yield MediaEvent(t, video=fut.result())
            else:
                for aw in fut.result():
                    yield MediaEvent(t, audio=aw)

    threaded = False  # video decoded with several FFmpeg threads: damage raises DamagedUnderThreads
    try:
        with av.open(str(path)) as c:
            streams = []
            if vt is not None:
                vs = c.streams.video[0]
                vs.thread_type = "AUTO"  # frame threading: decode speed is the build's floor
                if _decode_threads:  # the engine's share of the cores for this decoder (set_decode_threads)
                    vs.codec_context.thread_count = _decode_threads
                threaded = _decode_threads != 1
                streams.append(vs)
                # pts * time_base in integers: int / int is correctly rounded, so this is exactly
                # float(pts * time_base) without a Fraction per frame. Decoded frames carry their
                # packet's time base, which demuxing sets to the stream's.
                v_num, v_den = vs.time_base.numerator, vs.time_base.denominator
            if at is not None:
                aud = c.streams.audio[0]
                streams.append(aud)
                a_num, a_den = aud.time_base.numerator, aud.time_base.denominator
            frame_clock = _FrameClock()
            in_flight: dict[int, None] = {}  # pts of video packets sent whose frames have not come out
            damaged = ""  # why frames decoded now are untrustworthy (a bad packet before them), until a keyframe

            def push_video(released) -> None:
                nonlocal t_now, video_frames
                for frame, ticks, note in released:
                    if video_frames == 0:
                        vt.geometry = video_geometry(frame, dict(vs.metadata), vs.sample_aspect_ratio)
                        if vt.geometry.unsupported:
                            logger.warning("%s: %s; frames stored as decoded", path, vt.geometry.unsupported)
                    video_frames += 1
                    if ticks is not None:
                        t_now = video_clock.to_session(ticks * v_num / v_den)
                    for fut in vt.push(frame, t_now, note):
                        queue.append((t_now, True, fut))

            for packet in c.demux(*streams):
                if vt is not None and packet.stream.type == "video" and packet.pts is not None:
                    in_flight[packet.pts] = None
                    if len(in_flight) > _MAX_IN_FLIGHT_PACKETS:
                        del in_flight[next(iter(in_flight))]
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    # a damaged packet: skip it as FFmpeg does and keep decoding; the windows it
                    # touches are rejected (video) or see a hole (audio), the rest are kept
                    if vt is not None and packet.stream.type == "video":
                        if threaded:
                            raise DamagedUnderThreads(f"{path}: {error_text(exc)}") from None
                        bad_video += 1
                        # the bad packet is one of those sent whose frames have not come out yet
                        ticks = [*in_flight, *(t for t in (packet.pts, packet.dts) if t is not None)]
                        in_flight.clear()
                        if ticks:
                            lo, hi = (
                                float(video_clock.to_session(x * v_num / v_den)) for x in (min(ticks), max(ticks))
                            )
                            damaged = (f"video packet(s) between {lo:.3f}s and {hi:.3f}s failed to decode "
                                       f"({error_text(exc)})")  # fmt: skip
                            vt.damage(lo, hi, damaged)
                        else:
                            damaged = f"a video packet without timestamps failed to decode ({error_text(exc)})"
                    elif at is not None:
                        at.decode_error()
                    continue
                for frame in frames:
                    if isinstance(frame, av.VideoFrame):
                        if threaded and frame.is_corrupt:
                            raise DamagedUnderThreads(f"{path}: a frame marked corrupt")
                        if frame.pts is not None:
                            in_flight.pop(frame.pts, None)
                            if taps is not None:
                                taps.video(frame, frame.pts * v_num / v_den)
                        if damaged and frame.key_frame and not frame.is_corrupt:
                            damaged = ""  # a keyframe refers to nothing: the damage ends here
                        note = damaged and f"decoded after damage: {damaged}"
                        if frame.is_corrupt and not note:
                            note = "the decoder marked the frame corrupt"
                        push_video(frame_clock.push(frame, note))
                    else:
                        start = None
                        if frame.pts is not None:
                            start = frame.pts * a_num / a_den
                            t_now = max(t_now, float(audio_clock.to_session(start)))
                            audio_end = start + frame.samples / frame.sample_rate
                        if taps is not None:
                            taps.audio(frame, start)
                        for fut in at.push(frame, start):
                            queue.append((t_now, False, fut))
                if queue:
                    yield from ready(_MAX_IN_FLIGHT)
            if vt is not None:
                push_video(frame_clock.flush())
    except av.error.FFmpegError as exc:
        if threaded:  # frames in the decoder's threads when it stopped are lost: how many depends on them
            raise DamagedUnderThreads(f"{path}: {error_text(exc)}") from None
        truncated = _top_level_boxes_truncated(path)
        end_reason = RejectReason.TRUNCATED_MEDIA if truncated else RejectReason.DECODE_ERROR
        end_detail = f"decoding stopped: {error_text(exc)}"
    if not end_detail and _top_level_boxes_truncated(path):
        end_reason, end_detail = RejectReason.TRUNCATED_MEDIA, "file is cut off before this window"
    if vt is not None and video_frames == 0 and bad_video:
        vt.tainted.clear()  # nothing decoded at all: the stream is cut off or undecodable, not damaged in places
        if end_reason is not RejectReason.TRUNCATED_MEDIA:
            end_reason = RejectReason.DECODE_ERROR
            end_detail = end_detail or f"none of {bad_video} video packet(s) could be decoded"
    if vt is not None:
        for fut in vt.finish(end_reason, end_detail):
            queue.append((t_now, True, fut))
    yield from ready(0)
    if at is not None:
        for fut in at.finish():
            for aw in fut.result():
                if (
                    end_detail
                    and aw.reject_reason is RejectReason.AUDIO_OUT_OF_RANGE
                    and aw.start_s + A.WINDOW_S > audio_end
                ):
                    # audio missing because the file stops early, not because the window lies off the track
                    aw = replace(aw, reject_reason=end_reason, detail=f"{end_detail}: {aw.detail}")
                yield MediaEvent(t_now, audio=aw)
