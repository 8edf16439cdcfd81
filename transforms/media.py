"""One pass over a media file: video frames picked per clip window, audio cut into log-mel windows.

Each file is demuxed once, sequentially, with no seeking; video and audio packets of the same container
are dispatched to their decoders as they come. Memory stays bounded: per open window we keep at most
the first frame's pixels and a reference to the latest frame, and the audio side keeps one window plus
a chunk (see transforms/audio.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from schemas.reasons import RejectReason
from transforms import audio as A
from transforms.config import BuildConfig
from transforms.images import encode_frame_jpeg, frame_diff, frame_quality, shrink_to_short_side
from transforms.layouts import ClockSpec
from transforms.plan import Window


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


@dataclass(frozen=True)
class FramePick:
    t_s: float  # session time
    jpg: bytes
    brightness: float
    sharpness: float


@dataclass(frozen=True)
class VideoWindow:
    index: int
    first: FramePick | None
    last: FramePick | None
    diff: float | None  # mean abs luma difference first vs last: ~0 for frozen video
    reason: RejectReason | None = None
    detail: str = ""


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


def probe(path: Path, max_side: int) -> MediaInfo:
    """Open a media file's header; whole-file problems become MediaInputError with a reason."""
    rel = str(path)
    if not path.exists():
        raise MediaInputError(rel, RejectReason.FILE_MISSING, "file not found")
    if path.stat().st_size == 0:
        raise MediaInputError(rel, RejectReason.EMPTY_FILE, "file is empty (0 bytes)")
    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[0] if c.streams.video else None
            has_audio = bool(c.streams.audio)
            end = None
            w = h = 0
            if vs is not None:
                w, h = vs.codec_context.width, vs.codec_context.height
                if w <= 0 or h <= 0 or w > max_side or h > max_side:
                    raise MediaInputError(rel, RejectReason.ABSURD_DIMENSIONS, f"video declares {w}x{h} pixels")
                if vs.duration is not None:
                    end = float((vs.start_time or 0) + vs.duration) * float(vs.time_base)
                elif c.duration is not None:
                    end = c.duration / av.time_base
            return MediaInfo(vs is not None, has_audio, end, w, h)
    except av.error.FFmpegError as exc:
        if _top_level_boxes_truncated(path):
            raise MediaInputError(rel, RejectReason.TRUNCATED_MEDIA, f"file is cut off: {exc}") from None
        raise MediaInputError(rel, RejectReason.DECODE_ERROR, f"cannot open: {exc}") from None


class _VideoTracker:
    """Assigns decoded frames to windows: the first and the last frame whose time is in [s, e)."""

    def __init__(self, windows: list[Window], clock: ClockSpec, cfg: BuildConfig):
        self.windows, self.clock, self.cfg = windows, clock, cfg
        self.lo = 0  # first window not yet finished
        self.first: dict[int, tuple[FramePick, np.ndarray]] = {}
        self.latest: dict[int, tuple[float, av.VideoFrame]] = {}

    def _pick(self, t: float, frame: av.VideoFrame) -> tuple[FramePick, np.ndarray]:
        # Quality figures describe the stored (shrunk) frame; on 720p+ sources this is also what keeps
        # per-window work far below the cost of decoding every frame.
        rgb = shrink_to_short_side(frame.to_ndarray(format="rgb24"), self.cfg.max_short_side)
        q = frame_quality(rgb)
        jpg = encode_frame_jpeg(rgb, max_short_side=self.cfg.max_short_side, quality=self.cfg.jpeg_quality)
        return FramePick(t, jpg, q.brightness, q.sharpness), rgb

    def push(self, frame: av.VideoFrame) -> list[VideoWindow]:
        t = float(self.clock.to_session(float(frame.pts * frame.time_base)))
        done = []
        while self.lo < len(self.windows) and t >= self.windows[self.lo].end_s:
            done.append(self._close(self.windows[self.lo]))
            self.lo += 1
        i = self.lo
        while i < len(self.windows) and self.windows[i].start_s <= t:
            w = self.windows[i]
            if t < w.end_s:
                if w.index not in self.first:
                    self.first[w.index] = self._pick(t, frame)
                self.latest[w.index] = (t, frame)
            i += 1
        return done

    def _close(self, w: Window, reason: RejectReason = RejectReason.NO_FRAMES_IN_WINDOW, why: str = "") -> VideoWindow:
        first = self.first.pop(w.index, None)
        latest = self.latest.pop(w.index, None)
        if first is None:
            return VideoWindow(w.index, None, None, None, reason, why or "no decoded frame falls in the window")
        pick, rgb = first
        if latest[0] == pick.t_s:
            last, diff = pick, 0.0
        else:
            last, last_rgb = self._pick(*latest)
            diff = frame_diff(rgb, last_rgb)
        return VideoWindow(w.index, pick, last, diff)

    def finish(self, reason: RejectReason, why: str) -> list[VideoWindow]:
        out = [self._close(w, reason, why) for w in self.windows[self.lo :]]
        self.lo = len(self.windows)
        return out


class _AudioTracker:
    def __init__(self, windows: list[Window], clock: ClockSpec, cfg: BuildConfig):
        self.requests = [A.WindowRequest(w.index, float(clock.to_stream(w.start_s))) for w in windows]
        self.clock, self.cfg = clock, cfg
        self.resampler: A.StreamingResampler | None = None
        self.cutter: A.WindowCutter | None = None

    # Codec frames hold ~1024 samples; resampling them one by one costs more in call overhead than in
    # arithmetic, so they are gathered into ~0.5 s blocks first.
    BLOCK = 24000

    def push(self, frame: av.AudioFrame) -> list[A.AudioWindowResult]:
        samples = A.frame_to_float(frame)
        if self.cutter is None:
            start = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
            self.resampler = A.StreamingResampler(frame.sample_rate)
            self.cutter = A.WindowCutter(self.requests, stream_start_s=start, tolerance_s=self.cfg.audio_tolerance_s)
            self.pending, self.pending_n = [], 0
        self.pending.append(samples)
        self.pending_n += samples.shape[1]
        return self._flush() if self.pending_n >= self.BLOCK else []

    def _flush(self) -> list[A.AudioWindowResult]:
        if not self.pending:
            return []
        block = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        self.pending, self.pending_n = [], 0
        return self._finish(self.cutter.push(self.resampler.push(block)))

    def _finish(self, cuts) -> list[A.AudioWindowResult]:
        return [A.finish_window(c, self.cfg.audio_channels) for c in cuts]

    def finish(self) -> list[A.AudioWindowResult]:
        if self.cutter is None:  # an audio stream without a single decodable frame
            self.cutter = A.WindowCutter(self.requests, tolerance_s=self.cfg.audio_tolerance_s)
            return self._finish(self.cutter.finish())
        out = self._flush()
        return out + self._finish(self.cutter.push(self.resampler.finish()) + self.cutter.finish())


def decode_media(
    path: Path,
    *,
    video_windows: list[Window] | None,
    video_clock: ClockSpec,
    audio_windows: list[Window] | None,
    audio_clock: ClockSpec,
    cfg: BuildConfig,
    heartbeat: Callable[[str], None] = lambda _: None,
) -> Iterator[MediaEvent]:
    """Decode the requested streams of one file once; every requested window is reported exactly once."""
    heartbeat(os.fspath(path))
    vt = _VideoTracker(video_windows, video_clock, cfg) if video_windows is not None else None
    at = _AudioTracker(audio_windows, audio_clock, cfg) if audio_windows is not None else None
    end_reason, end_detail = RejectReason.NO_FRAMES_IN_WINDOW, ""
    t_now = -1e18
    audio_end = -1e18  # stream time the audio decode reached
    try:
        with av.open(str(path)) as c:
            streams = []
            if vt is not None:
                vs = c.streams.video[0]
                vs.thread_type = "AUTO"  # frame threading: decode speed is the build's floor
                streams.append(vs)
            if at is not None:
                streams.append(c.streams.audio[0])
            for packet in c.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        t_now = float(video_clock.to_session(float(frame.pts * frame.time_base)))
                        for vw in vt.push(frame):
                            yield MediaEvent(t_now, video=vw)
                    else:
                        if frame.pts is not None:
                            t_now = max(t_now, float(audio_clock.to_session(float(frame.pts * frame.time_base))))
                            audio_end = float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate
                        for aw in at.push(frame):
                            yield MediaEvent(t_now, audio=aw)
    except av.error.FFmpegError as exc:
        truncated = _top_level_boxes_truncated(path)
        end_reason = RejectReason.TRUNCATED_MEDIA if truncated else RejectReason.DECODE_ERROR
        end_detail = f"decoding stopped: {exc}"
    if not end_detail and _top_level_boxes_truncated(path):
        end_reason, end_detail = RejectReason.TRUNCATED_MEDIA, "file is cut off before this window"
    if vt is not None:
        for vw in vt.finish(end_reason, end_detail):
            yield MediaEvent(t_now, video=vw)
    if at is not None:
        for aw in at.finish():
            if end_detail and aw.mel is None and aw.start_s + A.WINDOW_S > audio_end:
                # audio missing because the file stops early, not because the window lies off the track
                aw = replace(aw, reject_reason=end_reason, detail=f"{end_detail}: {aw.detail}")
            yield MediaEvent(t_now, audio=aw)
