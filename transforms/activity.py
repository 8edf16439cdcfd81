"""Activity signals: how much each stream changes over time, the common currency of clock synchronisation.

Every function takes arrays and their timestamps (seconds, on the session timeline as the declared clock puts
them) and returns ``(times_s, values)``: one value per change between consecutive frames or analysis windows,
timed at the midpoint between them (the unbiased estimate of when a change between them happened).
``transforms/sync.py:to_grid`` puts them on a common grid. Which signal each stream gives:

- video, depth, thermal: frame-difference energy (mean absolute difference of consecutive frames, in the
  frames' units per pixel). Scene cuts, impacts and motion starts show as peaks in every camera at once.
- video where the camera moves: global motion (``camera_rotation_rate``: median optical-flow speed over the
  focal length, rad/s), the visual counterpart of the gyro, as camera-IMU calibration tools use
  (e.g. Kalibr; Furgale et al., IROS 2013).
- audio: spectral flux (sum over bins of the absolute change of the magnitude spectrum between adjacent
  40 ms windows; Bello et al., "A Tutorial on Onset Detection in Music Signals", IEEE TSAP 2005).
- IMU: gyro magnitude ``|ω|`` (rad/s), and the multichannel flux of the gyro (the same flux as audio, over
  the three axes): a change of motion (a class change, a start or stop) is a peak there.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

# No scipy.signal here (get_window): this module is in the import chain of transforms.unit, which the decode
# worker's forkserver preloads before a local build can start, and importing scipy.signal costs ~0.6 s there.


def _midpoints(times_s: np.ndarray) -> np.ndarray:
    return 0.5 * (times_s[1:] + times_s[:-1])


def frame_difference_energy(frames: Iterable[np.ndarray], times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute difference of consecutive frames, timed between them.

    ``frames``: N arrays of one shape (H, W) or (H, W, C), any numeric dtype (compared as float32);
    ``times_s``: (N,) seconds, increasing. Returns ``(times (N-1,), energy (N-1,))`` in the frames' units.
    Raises ValueError on fewer than two frames, a count that differs from ``times_s`` or a shape change.
    """
    times_s = np.asarray(times_s, np.float64)
    out = []
    prev = None
    n = 0
    for f in frames:
        cur = np.asarray(f, np.float32)
        if prev is not None:
            if cur.shape != prev.shape:
                raise ValueError(f"frame_difference_energy: frame {n} has shape {cur.shape}, not {prev.shape}")
            out.append(float(np.mean(np.abs(cur - prev))))
        prev = cur
        n += 1
    if n < 2 or n != times_s.shape[0]:
        raise ValueError(f"frame_difference_energy: {n} frames for {times_s.shape[0]} timestamps (need >= 2)")
    return _midpoints(times_s), np.asarray(out, np.float64)


def camera_rotation_rate(frames: Iterable[np.ndarray], times_s: np.ndarray, focal_px: float
                         ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Camera rotation speed (rad/s) from dense optical flow between consecutive grayscale frames.

    For a rotating camera, image motion at the centre is ``f · ω · dt`` pixels (pinhole model; small angles),
    so ``ω ≈ median |flow| / (f · dt)``. Flow: OpenCV's Farnebäck (``cv2.calcOpticalFlowFarneback``; Farnebäck,
    SCIA 2003). The median ignores independently moving objects. ``frames``: N (H, W) uint8 arrays;
    ``focal_px``: focal length in pixels at the frames' resolution. Returns ``(times (N-1,), rad/s (N-1,))``.
    """
    times_s = np.asarray(times_s, np.float64)
    speeds = []
    prev = None
    for f in frames:
        g = np.asarray(f)
        if g.ndim == 3:
            g = cv2.cvtColor(g, cv2.COLOR_RGB2GRAY)
        g = np.ascontiguousarray(g, np.uint8)
        if prev is not None:
            flow = cv2.calcOpticalFlowFarneback(prev, g, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            speeds.append(float(np.median(np.hypot(flow[..., 0], flow[..., 1]))))
        prev = g
    if len(speeds) + 1 != times_s.shape[0] or not speeds:
        raise ValueError(f"camera_rotation_rate: {len(speeds) + 1} frames for {times_s.shape[0]} timestamps")
    dt = np.diff(times_s)
    return _midpoints(times_s), np.asarray(speeds) / (focal_px * np.where(dt > 0, dt, np.nan))


class SpectralFlux:
    """Spectral flux computed as samples arrive, in blocks: memory is a block, not the recording.

    The STFT of ``scipy.signal.stft`` (periodic Hann window of ``win_s``, hop ``hop_s``, no boundary padding,
    'spectrum' scaling: ``|rfft(segment * window)| / sum(window)``, here ``scipy.fft.rfft`` on blocks of
    ``block`` frames). Flux at each hop is the sum over bins and channels of ``| |X(t + win/2)| -
    |X(t - win/2)| |`` between adjacent windows, timed at their boundary t (full-wave: a sound or motion that
    stops is as much an event as one that starts). Adjacent, non-overlapping windows, magnitudes not
    log-compressed: the difference is largest when the change sits exactly on their boundary; overlapping
    windows on a log scale peak as soon as the leading window touches an onset, half a window early, which
    would bias every audio lag. (Bello et al., "A Tutorial on Onset Detection in Music Signals", IEEE TSAP
    2005.)

    ``push((C, n) or (n,) samples)`` any number of times, then ``result()``.
    """

    def __init__(self, rate_hz: float, win_s: float = 0.04, hop_s: float = 0.01, t0_s: float = 0.0,
                 block: int = 2048):  # fmt: skip
        self.rate_hz, self.t0_s, self.block = rate_hz, t0_s, block
        self.nper = max(4, int(round(win_s * rate_hz)))
        self.hop = max(1, int(round(hop_s * rate_hz)))
        self.m = max(1, self.nper // self.hop)
        # periodic Hann, bit for bit scipy.signal.get_window("hann", nper) (fftbins=True): scipy's general_cosine
        # formula over the symmetric window one longer, its last point dropped (np.hanning differs by an ulp
        # at most sizes); scipy.signal itself is not imported, for the decode worker's start-up
        self.window = 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, self.nper + 1))[:-1]
        self.scale = 1.0 / self.window.sum()
        self._buf: np.ndarray | None = None  # samples from the first frame not yet transformed
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._frames = 0  # frames transformed so far
        self._tail: np.ndarray | None = None  # magnitudes of the last m frames
        self._flux: list[np.ndarray] = []
        self.samples = 0

    def push(self, x: np.ndarray) -> None:
        x = np.atleast_2d(np.asarray(x))
        self._pending.append(x)
        self._pending_n += x.shape[1]
        self.samples += x.shape[1]
        if self._pending_n >= self.block * self.hop + self.nper:
            self._run(final=False)

    def _run(self, final: bool) -> None:
        from scipy import fft

        parts = ([self._buf] if self._buf is not None else []) + self._pending
        if not parts:
            return
        buf = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        self._pending, self._pending_n = [], 0
        n = (buf.shape[1] - self.nper) // self.hop + 1 if buf.shape[1] >= self.nper else 0
        if not final:
            n = (n // self.block) * self.block
        # the frames as a strided view of the samples, multiplied by the window straight from it (float32 samples
        # promote to float64 as astype did): gathering them with an index array first cost 2/3 of the flux
        frames = np.lib.stride_tricks.sliding_window_view(buf, self.nper, axis=1)[:, :: self.hop] if n else None
        for k0 in range(0, n, self.block):
            k1 = min(n, k0 + self.block)
            seg = frames[:, k0:k1] * self.window
            mag = np.abs(fft.rfft(seg, axis=-1)) * self.scale  # (C, K, F)
            mag = mag.transpose(1, 0, 2).reshape(k1 - k0, -1)
            both = mag if self._tail is None else np.concatenate([self._tail, mag])
            if both.shape[0] > self.m:
                self._flux.append(np.abs(both[self.m :] - both[: -self.m]).sum(axis=1))
            self._tail = both[-self.m :]
        self._frames += n
        self._buf = buf[:, n * self.hop :]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(times (M,), flux (M,))``, times in seconds from ``t0_s`` at the first sample. Raises
        ValueError when fewer than ``m + 1`` frames fit (the signal is shorter than two windows)."""
        self._run(final=True)
        if self.samples < self.nper + self.hop or self._frames <= self.m:
            raise ValueError(f"spectral_flux: {self.samples} samples, need more than two windows")
        t = (self.nper / 2 + np.arange(self._frames) * self.hop) / self.rate_hz
        return self.t0_s + 0.5 * (t[self.m :] + t[: -self.m]), np.concatenate(self._flux)


def spectral_flux(x: np.ndarray, rate_hz: float, win_s: float = 0.04, hop_s: float = 0.01, t0_s: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Spectral flux of a (N,) or (C, N) regularly sampled signal (channels summed): ``SpectralFlux`` fed at
    once. ``t0_s``: session time of the first sample. Returns ``(times (M,), flux (M,))``; ValueError when the
    signal is shorter than two windows."""
    flux = SpectralFlux(rate_hz, win_s, hop_s, t0_s)
    flux.push(x)
    return flux.result()


def gyro_magnitude(gyro: np.ndarray) -> np.ndarray:
    """``|ω|`` of a (3, N) gyro in rad/s, (N,)."""
    g = np.asarray(gyro, np.float64)
    if g.ndim != 2 or g.shape[0] != 3:
        raise ValueError(f"gyro_magnitude: expected (3, N), got {g.shape}")
    return np.sqrt((g**2).sum(axis=0))


def regular(times_s: np.ndarray, x: np.ndarray, rate_hz: float) -> tuple[float, np.ndarray]:
    """Resample a (C, N) irregularly timed signal (jitter, dropped samples) onto ``t0 + k / rate_hz``.

    Linear interpolation per channel; returns ``(t0_s, (C, M))``. ValueError on fewer than two samples.
    """
    times_s = np.asarray(times_s, np.float64)
    x = np.atleast_2d(np.asarray(x, np.float64))
    if times_s.shape[0] < 2 or x.shape[1] != times_s.shape[0]:
        raise ValueError("regular: need at least two samples, one time per sample")
    grid = times_s[0] + np.arange(int(np.floor((times_s[-1] - times_s[0]) * rate_hz)) + 1) / rate_hz
    return float(times_s[0]), np.stack([np.interp(grid, times_s, c) for c in x])


def imu_flux(times_s: np.ndarray, gyro: np.ndarray, rate_hz: float = 200.0, win_s: float = 0.04,
             hop_s: float = 0.01) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Multichannel spectral flux of a (C, N) IMU signal sampled at ``times_s`` (irregular allowed).

    Gyro (rad/s) alone, or accel and gyro together ((6, N), m/s² and rad/s): jolts, steps and starts of
    motion are sharp peaks; the steady rhythm of walking is not (its spectrum does not change)."""
    t0, g = regular(times_s, gyro, rate_hz)
    return spectral_flux(g, rate_hz, win_s, hop_s, t0)


def novelty(times_s: np.ndarray, x: np.ndarray, rate_hz: float = 100.0, rms_s: float = 0.04, half_s: float = 0.5
            ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Change of a (C, N) signal's short-time level: where its statistics switch (a motion starts or stops).

    Each channel (median removed) becomes a log RMS envelope over ``rms_s`` on a ``rate_hz`` grid; the
    novelty at t is the distance between the mean envelope over ``[t, t + half_s)`` and over
    ``[t - half_s, t)`` (Foote, "Automatic audio segmentation using a measure of audio novelty", ICME 2000,
    with a box kernel). A switch at t gives a triangular peak whose apex is t, however long the segments.
    Periodic motion (walking, vibration) inside a segment averages out over ``half_s``.
    Returns ``(times (M,), novelty (M,))`` in log-units.
    """
    from scipy.ndimage import uniform_filter1d

    t0, g = regular(times_s, x, rate_hz)
    g = g - np.median(g, axis=1, keepdims=True)
    n = max(1, int(round(rms_s * rate_hz)))
    env = np.log(np.sqrt(uniform_filter1d(g * g, n, axis=1, mode="nearest")) + 1e-6)
    h = max(1, int(round(half_s * rate_hz)))
    c = np.concatenate([np.zeros((env.shape[0], 1)), np.cumsum(env, axis=1)], axis=1)
    k = np.arange(h, env.shape[1] - h + 1)  # change between sample k-1 and k
    after = (c[:, k + h] - c[:, k]) / h
    before = (c[:, k] - c[:, k - h]) / h
    nov = np.sqrt(((after - before) ** 2).sum(axis=0))
    return t0 + (k - 0.5) / rate_hz, nov


# --------------------------------------------------------------------------------- taps and readers
# The video and audio signals are taps on decoded frames: the build feeds them from its own decoding pass
# (transforms/media.py ``decode_media(..., taps=...)``), so checking clocks costs no second decode, and
# ``bindset sync`` feeds the same taps from a pass of its own (``read_video_activity``), so both see the same
# signals. Video: a thumbnail of the luma plane; audio: resampled to 8 kHz mono by libswresample. Frame
# streams (depth, thermal) are read as reduced images. Times come back on the session timeline through the
# given clock.

THUMB = (64, 48)  # video thumbnails (W, H): enough for frame differences and global motion
AUDIO_RATE = 8000

# Pixel formats whose first plane is the luma plane at full resolution (8 bits; or 16 with the bits used).
# Reading it in place costs nothing; converting the frame (libswscale, even to gray) costs 3-4x the decode
# of a 320x240 H.264 frame.
_LUMA_8BIT = frozenset(("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p",
                        "yuvj440p", "yuv411p", "yuv410p", "nv12", "nv21", "nv16", "gray"))  # fmt: skip
_LUMA_16BIT = {"yuv420p10le": 10, "yuv422p10le": 10, "yuv444p10le": 10, "yuv420p12le": 12, "yuv422p12le": 12,
               "yuv444p12le": 12, "gray10le": 10, "gray12le": 12, "gray16le": 16, "p010le": 16}  # fmt: skip


def luma_thumbnail(frame, thumb: tuple[int, int] = THUMB) -> np.ndarray:
    """A decoded video frame's luma as a (H, W) uint8 thumbnail of size ``thumb`` (W, H).

    Planar YUV/NV/gray frames are read in place (the luma plane, as coded: limited or full range; samples
    of 10-16 bits, right-aligned, or p010's left-aligned 16, are scaled to 8 bits); anything else (RGB,
    palette, ...) is converted to gray by libswscale first. The plane is point-sampled to twice the
    thumbnail's size (``cv2.INTER_NEAREST``, straight from the decoder's buffer, row padding and all), then
    halved with ``cv2.INTER_AREA`` (exact 2x2 pixel-area means). A point sample per block keeps what frame
    differences need, how much of the picture changes, and the 2x2 means take the sampled pixels' noise down
    by half. Cost: about 15 us per frame at any resolution, a third of a strided copy followed by a
    non-integer area filter (48 us at 320x240, the clock check's largest cost on small videos); an area
    filter over the whole frame costs 0.5-5 ms at 1080p, as much as decoding it. Raises ValueError on an
    empty frame.
    """
    width, height = frame.width, frame.height
    if width <= 0 or height <= 0:
        raise ValueError("luma_thumbnail: empty frame")
    name = frame.format.name
    bits = 8
    if name in _LUMA_8BIT or name in _LUMA_16BIT:
        plane = frame.planes[0]
        size = 1 if name in _LUMA_8BIT else 2
        row = plane.line_size // size
        y = np.frombuffer(plane, np.uint8 if size == 1 else "<u2", count=row * height).reshape(height, row)
        y = y[:, :width]  # the padding past each row's end stays out; OpenCV reads the rows in place
        bits = _LUMA_16BIT.get(name, 8)
    else:
        y = frame.to_ndarray(format="gray")
    double = (2 * thumb[0], 2 * thumb[1])
    sampled = cv2.resize(y, double, interpolation=cv2.INTER_NEAREST)
    small = cv2.resize(sampled, thumb, interpolation=cv2.INTER_AREA)
    if bits == 8:
        return small
    return np.round(small * (255.0 / ((1 << bits) - 1))).astype(np.uint8)


class VideoActivityTap:
    """Frame-difference energy of a video stream, fed frame by frame as they are decoded.

    ``push(frame, t_s)``: a decoded frame and its time on the stream's own clock (seconds; frames without a
    time are skipped by the caller). Differences are taken between consecutive pushed frames, in the order
    they come out of the decoder (presentation order), so memory stays at one thumbnail, unless
    ``keep_frames`` (camera rotation needs them all).
    """

    def __init__(self, thumb: tuple[int, int] = THUMB, keep_frames: bool = False):
        self.thumb, self.keep_frames = thumb, keep_frames
        self.times: list[float] = []
        self.energy: list[float] = []
        self.frames: list[np.ndarray] = []
        self._prev: np.ndarray | None = None
        self.error = ""

    def push(self, frame, t_s: float) -> None:
        """Never raises: the build's decoding pass feeds it, and a frame the tap cannot read must cost the
        clock check (``result`` then raises, the stream is unsynchronisable), never the input's windows."""
        if self.error:
            return
        try:
            cur = luma_thumbnail(frame, self.thumb)
        except Exception as exc:  # noqa: BLE001 - see above
            self.error = f"video activity: frame at {t_s:.3f} s unreadable ({exc})"
            return
        if self._prev is not None:  # mean absolute difference, in C (NORM_L1 sums |a - b| exactly in integers)
            self.energy.append(cv2.norm(cur, self._prev, cv2.NORM_L1) / cur.size)
        self._prev = cur
        self.times.append(float(t_s))
        if self.keep_frames:
            self.frames.append(cur)

    def result(self, clock) -> tuple[np.ndarray, np.ndarray]:
        """``(times (N-1,), energy (N-1,))`` on the session timeline (``clock.to_session``), sorted by time.
        Raises ValueError with fewer than two frames, or when a frame could not be read."""
        if self.error:
            raise ValueError(self.error)
        if len(self.times) < 2:
            raise ValueError(f"video activity: {len(self.times)} frame(s) with a time (need >= 2)")
        t = clock.to_session(_midpoints(np.asarray(self.times, np.float64)))
        e = np.asarray(self.energy, np.float64)
        order = np.argsort(t, kind="stable")
        return np.asarray(t)[order], e[order]


class AudioActivityTap:
    """Spectral flux of an audio stream (mono, resampled to ``AUDIO_RATE`` Hz), fed frame by frame.

    ``push(frame, start_s)``: a decoded ``av.AudioFrame`` and its start on the stream's clock (None when it
    has no pts). The first frame's start anchors the signal; later samples follow at the nominal rate, as a
    decoder plays them. The flux is computed as the samples arrive (``SpectralFlux``): memory stays at a
    block whatever the recording's length.
    """

    def __init__(self):
        self._resampler = None
        self._format: tuple | None = None
        self._flux = SpectralFlux(AUDIO_RATE)
        self.start_s: float | None = None
        self.error = ""

    def push(self, frame, start_s: float | None) -> None:
        """Never raises (a frame the tap cannot take costs the clock check, not the input's windows). A change
        of sample rate, layout or sample format mid-stream (glued files) flushes the resampler and starts a
        new one: its samples follow on at 8 kHz, as a decoder plays them."""
        if self.error:
            return
        try:
            import av

            fmt = (frame.sample_rate, frame.layout.name, frame.format.name)
            if fmt != self._format:
                self._drain()
                self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
                self._format = fmt
            if self.start_s is None:
                self.start_s = float(start_s) if start_s is not None else 0.0
            for out in self._resampler.resample(frame):
                self._flux.push(out.to_ndarray().reshape(1, -1))
        except Exception as exc:  # noqa: BLE001 - see above
            self.error = f"audio activity: frame at {start_s} s unreadable ({exc})"

    def _drain(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._flux.push(out.to_ndarray().reshape(1, -1))

    def result(self, clock) -> tuple[np.ndarray, np.ndarray]:
        """``(times (M,), flux (M,))`` on the session timeline. Raises ValueError when there is no audio or
        less than two analysis windows of it. Call once."""
        if self.error:
            raise ValueError(self.error)
        if self.start_s is None:
            raise ValueError("audio activity: no audio decoded")
        self._drain()
        t, flux = self._flux.result()
        # stream time of each flux value -> session time (the clock's drift applies to the stream's seconds)
        return clock.to_session(self.start_s + t), flux


@dataclass
class ActivityTaps:
    """The taps one input's decoding pass feeds: its video, and its audio (in the video's file or its own)."""

    video: VideoActivityTap = field(default_factory=VideoActivityTap)
    audio: AudioActivityTap | None = None

    def audio_tap(self) -> AudioActivityTap:
        if self.audio is None:
            self.audio = AudioActivityTap()
        return self.audio


def read_video_activity(path, clock, thumb: tuple[int, int] = THUMB, focal_px: float | None = None
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Frame-difference energy (gray levels) and, with ``focal_px`` (at thumbnail scale), camera rotation.

    The same ``VideoActivityTap`` as the build's, fed from a decoding pass of its own. ``clock``: anything
    with ``to_session(t)`` (the video's declared clock). Returns ``{"frames": (t, e)}`` plus ``"rotation"``
    when asked. Raises av.error.FFmpegError (unreadable file) or ValueError (< 2 frames).
    """
    import av

    tap = VideoActivityTap(thumb, keep_frames=bool(focal_px))
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.pts is not None:
                tap.push(frame, float(frame.pts * frame.time_base))
    out = {"frames": tap.result(clock)}
    if focal_px:
        t = clock.to_session(np.asarray(tap.times, np.float64))
        order = np.argsort(t, kind="stable")
        out["rotation"] = camera_rotation_rate([tap.frames[i] for i in order], np.asarray(t)[order], focal_px)
    return out


def read_audio_activity(path, clock) -> tuple[np.ndarray, np.ndarray]:
    """Spectral flux of the first audio stream of a file: ``AudioActivityTap`` fed from a pass of its own.

    Raises ValueError when there is no audio stream, av.error.FFmpegError when the file is unreadable.
    """
    import av

    tap = AudioActivityTap()
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        for frame in container.decode(container.streams.audio[0]):
            tap.push(frame, float(frame.pts * frame.time_base) if frame.pts is not None else None)
    return tap.result(clock)


def read_frames_activity(files: list, times_s: np.ndarray, reduce: int = 4, threads: int = 2
                         ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Frame-difference energy of a depth/thermal PNG sequence (16-bit values as stored), images shrunk.

    ``files``: readable paths in time order; ``times_s``: their session times. Unreadable frames are skipped
    (their neighbours are compared instead). Frames are read on ``threads`` threads (OpenCV decodes PNG with
    the GIL released), ahead of the differencing in chunks, so memory holds a chunk, not the sequence.
    Returns ``(times (N-1,), energy (N-1,))`` like ``frame_difference_energy``. Raises ValueError when
    fewer than two frames are readable or the frames change size.
    """
    times_s = np.asarray(times_s, np.float64)

    def load(path) -> np.ndarray | None:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            return None
        if img.ndim == 3:
            img = img.mean(axis=2)
        h, w = img.shape[:2]
        return cv2.resize(img.astype(np.float32), (max(1, w // reduce), max(1, h // reduce)),
                          interpolation=cv2.INTER_AREA)  # fmt: skip

    keep_t: list[float] = []
    energy: list[float] = []
    prev: np.ndarray | None = None
    chunk = 64
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="bindset-frames") as pool:
        for at in range(0, len(files), chunk):
            for img, t in zip(pool.map(load, files[at : at + chunk]), times_s[at : at + chunk], strict=True):
                if img is None:
                    continue
                if prev is not None:
                    if img.shape != prev.shape:
                        raise ValueError("frames change size")
                    energy.append(float(np.mean(np.abs(img - prev))))
                prev = img
                keep_t.append(float(t))
    if len(keep_t) < 2:
        raise ValueError(f"frame activity: {len(keep_t)} readable frame(s) (need >= 2)")
    return _midpoints(np.asarray(keep_t)), np.asarray(energy, np.float64)
