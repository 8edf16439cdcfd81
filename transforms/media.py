"""One pass over a media file: video frames picked per clip window, audio cut into log-mel windows.

Each file is demuxed once, sequentially, with no seeking; video and audio packets of the same container
are dispatched to their decoders as they come. The decoding thread only does that and the bookkeeping;
turning picked frames into JPEGs and audio into log-mels runs on one helper thread per file, in order, so
results never depend on timing. Memory stays bounded: per open window we keep at most the first frame's
pick and a reference to the latest frame, the audio side keeps one window plus a block (see
transforms/audio.py), and at most a few windows' results are in flight between the two threads.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from schemas.reasons import RejectReason
from transforms import audio as A
from transforms.config import BuildConfig
from transforms.images import encode_frame_jpeg, fit_short_side, luma, luma_diff, luma_quality
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


def helper_thread(name: str) -> ThreadPoolExecutor:
    """One thread, so jobs run in the order submitted: results never depend on timing."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lower_priority)


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


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

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """The frame as stored: RGB with the short side at most max_short_side, never upscaled."""
        size = fit_short_side(frame.width, frame.height, self.cfg.max_short_side)
        if (size.width, size.height) == (frame.width, frame.height):
            return frame.to_ndarray(format="rgb24")
        small = self.reformatter.reformat(
            frame, width=size.width, height=size.height, format="gbrp", interpolation=_SHRINK, threads=1
        )
        return small.to_ndarray()  # (H, W, 3) RGB, contiguous

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

    def push(self, frame: av.VideoFrame, t: float) -> list[Future]:
        """``t``: the frame's session time. Runs for every decoded frame, so it stays lean."""
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

    def _close(self, w: Window, reason: RejectReason = RejectReason.NO_FRAMES_IN_WINDOW, why: str = "") -> Future:
        first = self.first.pop(w.index, None)
        latest = self.latest.pop(w.index, None)
        if first is None:
            return _done(VideoWindow(w.index, None, None, None, reason, why or "no decoded frame falls in the window"))
        return self.worker.submit(self._finish_window, w.index, first, latest)

    def _finish_window(self, index: int, first: Future, latest: tuple[float, av.VideoFrame]) -> VideoWindow:
        pick, gray = first.result()  # submitted earlier to this same single thread: already done
        if latest[0] == pick.t_s:
            last, diff = pick, 0.0
        else:
            # the index reports the first frame's quality figures only
            last, last_gray = self._pick(*latest, quality=False)
            diff = luma_diff(gray, last_gray)
        return VideoWindow(index, pick, last, diff)

    def finish(self, reason: RejectReason, why: str) -> list[Future]:
        out = [self._close(w, reason, why) for w in self.windows[self.lo :]]
        self.lo = len(self.windows)
        return out


class _AudioTracker:
    """Decoded audio frames -> 16 kHz -> windows -> log-mel, with a bounded buffer.

    Codec frames hold ~1024 samples; handling them one by one costs more in call overhead than in
    arithmetic. The decoding thread therefore only collects frames into ~2 s blocks; a block is
    converted (planar float frames, what AAC, Opus, MP3 and Vorbis decode to, by viewing their planes),
    resampled, cut and turned into log-mels on ``worker`` (one thread: blocks are processed in order),
    and comes back as a Future of the windows it completed. The resampler's output does not depend on
    the block sizes (see StreamingResampler), so the blocking is free to choose.
    """

    BLOCK = 96000

    def __init__(self, windows: list[Window], clock: ClockSpec, cfg: BuildConfig, worker: ThreadPoolExecutor):
        self.requests = [A.WindowRequest(w.index, float(clock.to_stream(w.start_s))) for w in windows]
        self.clock, self.cfg, self.worker = clock, cfg, worker
        self.resampler: A.StreamingResampler | None = None  # both used on the worker only
        self.cutter: A.WindowCutter | None = None
        self.pending: list[av.AudioFrame] = []  # decoded, not yet handed to the worker
        self.pending_n = 0
        self.channels = 0

    def push(self, frame: av.AudioFrame, start_s: float | None = None) -> list[Future]:
        """``start_s``: the frame's stream time (pts * time_base), when it has a pts."""
        if self.resampler is None:
            self.resampler = A.StreamingResampler(frame.sample_rate)
            self.cutter = A.WindowCutter(
                self.requests, stream_start_s=start_s or 0.0, tolerance_s=self.cfg.audio_tolerance_s
            )
            self.channels = frame.layout.nb_channels
        self.pending.append(frame)
        self.pending_n += frame.samples
        return self._flush() if self.pending_n >= self.BLOCK else []

    def _flush(self) -> list[Future]:
        if not self.pending:
            return []
        pending, self.pending, self.pending_n = self.pending, [], 0
        return [self.worker.submit(self._block, pending)]

    def _samples(self, frame: av.AudioFrame) -> np.ndarray | tuple[np.ndarray, ...]:
        """(channels, n) float32 samples, as views of the frame's planes where it is planar float."""
        if frame.format.name == "fltp" and frame.layout.nb_channels == self.channels:
            n = frame.samples
            return tuple(np.frombuffer(p, np.float32, n) for p in frame.planes)
        return A.frame_to_float(frame)

    def _block(self, frames: list[av.AudioFrame]) -> list[A.AudioWindowResult]:
        pending = [self._samples(f) for f in frames]
        channels = len(pending[0])
        if any(len(p) != channels for p in pending):  # the layout changed mid-stream: let concatenate say so
            block = np.concatenate([np.asarray(p) for p in pending], axis=1)
        else:
            block = np.empty((channels, sum(len(p[0]) for p in pending)), np.float32)
            for c in range(channels):
                np.concatenate([p[c] for p in pending], out=block[c])
        return self._finish(self.cutter.push(self.resampler.push(block)))

    def _finish(self, cuts) -> list[A.AudioWindowResult]:
        return [A.finish_window(c, self.cfg.audio_channels) for c in cuts]

    def finish(self) -> list[Future]:
        if self.resampler is None:  # an audio stream without a single decodable frame
            cutter = A.WindowCutter(self.requests, tolerance_s=self.cfg.audio_tolerance_s)
            return [_done(self._finish(cutter.finish()))]
        out = self._flush()
        return out + [self.worker.submit(self._final)]

    def _final(self) -> list[A.AudioWindowResult]:
        return self._finish(self.cutter.push(self.resampler.finish()) + self.cutter.finish())


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
    """Decode the requested streams of one file once; every requested window is reported exactly once.

    The calling thread only demuxes, decodes and assigns frames to windows; the per-window work runs
    on one worker thread of this file, so that decoding (whose frame threads wait on the caller) keeps
    going meanwhile. Events come out in the order and with the times they would have without it:
    each is held until its result is ready, the oldest first.
    """
    heartbeat(os.fspath(path))
    with helper_thread("bindset-media") as worker:
        try:
            yield from _decode_media(path, video_windows, video_clock, audio_windows, audio_clock, cfg, worker)
        finally:
            worker.shutdown(wait=True, cancel_futures=True)


def _decode_media(path, video_windows, video_clock, audio_windows, audio_clock, cfg, worker) -> Iterator[MediaEvent]:
    vt = _VideoTracker(video_windows, video_clock, cfg, worker) if video_windows is not None else None
    at = _AudioTracker(audio_windows, audio_clock, cfg, worker) if audio_windows is not None else None
    end_reason, end_detail = RejectReason.NO_FRAMES_IN_WINDOW, ""
    t_now = -1e18
    audio_end = -1e18  # stream time the audio decode reached
    queue: deque[tuple[float, bool, Future]] = deque()  # (event time, is video, result), oldest first

    def ready(wait_beyond: int) -> Iterator[MediaEvent]:
        while queue and (len(queue) > wait_beyond or queue[0][2].done()):
            t, is_video, fut = queue.popleft()
            if is_video:
                yield MediaEvent(t, video=fut.result())
            else:
                for aw in fut.result():
                    yield MediaEvent(t, audio=aw)

    try:
        with av.open(str(path)) as c:
            streams = []
            if vt is not None:
                vs = c.streams.video[0]
                vs.thread_type = "AUTO"  # frame threading: decode speed is the build's floor
                streams.append(vs)
                # pts * time_base in integers: int / int is correctly rounded, so this is exactly
                # float(pts * time_base) without a Fraction per frame. Decoded frames carry their
                # packet's time base, which demuxing sets to the stream's.
                v_num, v_den = vs.time_base.numerator, vs.time_base.denominator
            if at is not None:
                aud = c.streams.audio[0]
                streams.append(aud)
                a_num, a_den = aud.time_base.numerator, aud.time_base.denominator
            for packet in c.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        t_now = video_clock.to_session(frame.pts * v_num / v_den)
                        for fut in vt.push(frame, t_now):
                            queue.append((t_now, True, fut))
                    else:
                        start = None
                        if frame.pts is not None:
                            start = frame.pts * a_num / a_den
                            t_now = max(t_now, float(audio_clock.to_session(start)))
                            audio_end = start + frame.samples / frame.sample_rate
                        for fut in at.push(frame, start):
                            queue.append((t_now, False, fut))
                if queue:
                    yield from ready(_MAX_IN_FLIGHT)
    except av.error.FFmpegError as exc:
        truncated = _top_level_boxes_truncated(path)
        end_reason = RejectReason.TRUNCATED_MEDIA if truncated else RejectReason.DECODE_ERROR
        end_detail = f"decoding stopped: {exc}"
    if not end_detail and _top_level_boxes_truncated(path):
        end_reason, end_detail = RejectReason.TRUNCATED_MEDIA, "file is cut off before this window"
    if vt is not None:
        for fut in vt.finish(end_reason, end_detail):
            queue.append((t_now, True, fut))
    yield from ready(0)
    if at is not None:
        for fut in at.finish():
            for aw in fut.result():
                if end_detail and aw.mel is None and aw.start_s + A.WINDOW_S > audio_end:
                    # audio missing because the file stops early, not because the window lies off the track
                    aw = replace(aw, reject_reason=end_reason, detail=f"{end_detail}: {aw.detail}")
                yield MediaEvent(t_now, audio=aw)
