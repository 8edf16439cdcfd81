"""Audio track -> ImageBind log-mel windows, streamed so memory stays bounded on any file length.

The chain is decode (PyAV, sequential, no seeking) -> resample to 16 kHz (bit-for-bit the same
arithmetic as ``torchaudio.functional.resample`` on the whole track, up to float32 summation order)
-> cut 2 s windows out of a small rolling buffer -> ``log_mel`` (SPEC §3, ImageBind's
``waveform2melspec``). Every requested window comes out exactly once, with data or flagged.

Times are seconds on the audio stream's own clock: sample ``i`` of the decoded track sits at
``start_s + i / sample_rate`` where ``start_s`` is the first decoded frame's ``pts * time_base``
(AAC in MP4/MKV may start before or after 0; samples before 0 are kept with their true times).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import av
import numpy as np
import torch
from torchaudio.compliance import kaldi
from torchaudio.functional.functional import _get_sinc_resample_kernel

from schemas.reasons import RejectReason

TARGET_SR = 16_000
WINDOW_S = 2.0
WINDOW_SAMPLES = 32_000
MEL_BINS = 128
MEL_FRAMES = 204
MEL_MEAN = -4.268
MEL_STD = 9.138
CLIP_LEVEL = 0.999
RMS_FLOOR_DBFS = -120.0

ChannelMode = Literal["first", "mean"]


# ---------------------------------------------------------------------------------------------
# Errors: each carries the reject code the caller records for the whole input.


class AudioInputError(Exception):
    reason: RejectReason = RejectReason.DECODE_ERROR


class AudioDecodeError(AudioInputError):
    reason = RejectReason.DECODE_ERROR


class EmptyMediaFile(AudioInputError):
    reason = RejectReason.EMPTY_FILE


class NoAudioStream(AudioInputError):
    reason = RejectReason.NO_AUDIO_STREAM


# ---------------------------------------------------------------------------------------------
# 1. Streaming decode


@dataclass(frozen=True)
class AudioChunk:
    samples: np.ndarray  # float32 (channels, n), native rate
    sample_rate: int
    start_s: float  # stream-clock time of samples[:, 0]

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])


# Integer PCM -> float in [-1, 1) with the same scale factors libswresample uses, so a WAV decoded
# here equals what ffmpeg/torchaudio would hand ImageBind.
_INT_SCALE = {"u8": 2.0**7, "s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


def frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """Any PyAV audio frame (planar or packed, int or float) as float32 (channels, n)."""
    fmt = frame.format
    channels = frame.layout.nb_channels
    raw = frame.to_ndarray()
    # Packed formats come back as (1, n * channels), interleaved.
    arr = raw if fmt.is_planar else raw.reshape(-1, channels).T
    base = fmt.name.rstrip("p")
    if base == "u8":
        return ((arr.astype(np.float32) - 128.0) / _INT_SCALE["u8"]).astype(np.float32)
    if base in _INT_SCALE:
        return (arr.astype(np.float64) / _INT_SCALE[base]).astype(np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    # ffmpeg reports a zero-byte file as "invalid data"; callers want to tell it apart.
    if os.path.getsize(path) == 0:
        raise EmptyMediaFile(f"zero-byte file: {os.fspath(path)}")
    try:
        return av.open(os.fspath(path))
    except av.error.FFmpegError as e:
        raise AudioDecodeError(f"cannot open {os.fspath(path)}: {e}") from e


def iter_audio_chunks(
    path: str | os.PathLike[str], *, stream_index: int | None = None, chunk_s: float = 1.0
) -> Iterator[AudioChunk]:
    """Decode one audio stream front to back, yielding ~chunk_s of contiguous samples at a time.

    ``stream_index`` indexes ``container.streams.audio`` (default: the first audio stream).
    Chunks are contiguous: their times follow from the first frame's pts and the sample count,
    so pts jitter in the container does not move samples around.
    """
    container = _open(path)
    try:
        audio_streams = container.streams.audio
        if not audio_streams:
            raise NoAudioStream(f"no audio stream in {os.fspath(path)}")
        stream = audio_streams[stream_index or 0]
        yield from _decode_stream(container, stream, chunk_s)
    finally:
        container.close()


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, chunk_s: float
) -> Iterator[AudioChunk]:
    pending: list[np.ndarray] = []
    pending_n = 0
    sample_rate = 0
    channels = 0
    start_s = 0.0
    emitted = 0
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                samples = frame_to_float(frame)
                if not sample_rate:
                    sample_rate, channels = frame.sample_rate, samples.shape[0]
                    # WAV-like demuxers may leave pts unset; such streams start at 0 by definition.
                    if frame.pts is not None and frame.time_base is not None:
                        start_s = float(frame.pts * frame.time_base)
                    chunk_n = max(1, round(chunk_s * sample_rate))
                elif frame.sample_rate != sample_rate or samples.shape[0] != channels:
                    raise AudioDecodeError(
                        f"audio format changed mid-stream: {sample_rate} Hz x{channels} -> "
                        f"{frame.sample_rate} Hz x{samples.shape[0]}"
                    )
                pending.append(samples)
                pending_n += samples.shape[1]
                if pending_n >= chunk_n:
                    yield AudioChunk(np.concatenate(pending, axis=1), sample_rate, start_s + emitted / sample_rate)
                    emitted += pending_n
                    pending, pending_n = [], 0
    except av.error.FFmpegError as e:
        raise AudioDecodeError(f"decode failed after {emitted + pending_n} samples: {e}") from e
    if pending_n:
        yield AudioChunk(np.concatenate(pending, axis=1), sample_rate, start_s + emitted / sample_rate)


# ---------------------------------------------------------------------------------------------
# 2. Streaming resample, equal to torchaudio.functional.resample on the whole track


@functools.lru_cache(maxsize=16)
def _resample_kernel(orig_sr: int, new_sr: int) -> tuple[torch.Tensor, int]:
    """torchaudio's sinc kernel (and its width) for ``orig_sr -> new_sr`` Hz, built once per pair of rates.

    Building it costs about 1 ms (a few hundred thousand sin/cos at 48 -> 16 kHz), once per stream: on a
    corpus of short clips that was a tenth of the resampling's time. Read-only afterwards (conv1d never
    writes its weight), so one tensor serves every stream. dtype float32 exactly as ``resample()`` passes
    ``waveform.dtype``: the kernel values depend on it.
    """
    g = math.gcd(orig_sr, new_sr)
    kernel, width = _get_sinc_resample_kernel(orig_sr, new_sr, g, dtype=torch.float32)
    return kernel, width


class StreamingResampler:
    """Chunked ``torchaudio.functional.resample`` (default args) with O(chunk + kernel) memory.

    torchaudio zero-pads the whole track by ``width`` on the left and ``width + orig`` on the
    right, then runs a conv1d with stride ``orig`` (rates reduced by their gcd), each step giving
    ``new`` output samples, and keeps the first ``ceil(new * L / orig)``. Here the padded signal
    arrives piecewise: every conv step whose input span is complete is computed, and only the
    tail that later steps still need (< kernel length + stride) is kept.
    """

    def __init__(self, orig_sr: int, new_sr: int = TARGET_SR) -> None:
        if orig_sr <= 0 or new_sr <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
        self.orig_sr, self.new_sr = int(orig_sr), int(new_sr)
        g = math.gcd(self.orig_sr, self.new_sr)
        self._orig, self._new = self.orig_sr // g, self.new_sr // g
        self._passthrough = self.orig_sr == self.new_sr
        if not self._passthrough:
            self._kernel, self._width = _resample_kernel(self.orig_sr, self.new_sr)
            self._klen = self._kernel.shape[-1]
        self._tail: torch.Tensor | None = None  # padded-signal samples not yet fully consumed
        self._in_len = 0
        self._out_len = 0
        self._finished = False

    @property
    def buffered(self) -> int:
        return 0 if self._tail is None else int(self._tail.shape[-1])

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed (channels, n) float32 samples; returns the output samples now determined."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        self._in_len += x.shape[-1]
        if self._passthrough:
            return x.numpy()
        if self._tail is None:
            self._tail = x.new_zeros((x.shape[0], self._width))
        return self._run(torch.cat([self._tail, x], dim=-1), final=False)

    def finish(self) -> np.ndarray:
        """Flush: the right zero padding, then truncation to torchaudio's target length."""
        self._finished = True
        if self._passthrough or self._tail is None:
            return np.zeros((0 if self._tail is None else self._tail.shape[0], 0), np.float32)
        pad = self._tail.new_zeros((self._tail.shape[0], self._width + self._orig))
        return self._run(torch.cat([self._tail, pad], dim=-1), final=True)

    def _run(self, buf: torch.Tensor, *, final: bool) -> np.ndarray:
        steps = (buf.shape[-1] - self._klen) // self._orig + 1 if buf.shape[-1] >= self._klen else 0
        channels = buf.shape[0]
        if steps:
            used = buf[:, : (steps - 1) * self._orig + self._klen]
            # A one-row conv1d takes a backend path whose summation order depends on the input
            # length; with >= 2 rows the chunked result has been bit-identical to torchaudio's
            # whole-track call. Cheap, so mono rides along duplicated (the contract is still 1e-5).
            rows = used.expand(2, -1) if channels == 1 else used
            out = torch.nn.functional.conv1d(rows[:, None], self._kernel, stride=self._orig)
            out = out[:channels].transpose(1, 2).reshape(channels, -1)
        else:
            out = buf.new_zeros((channels, 0))
        self._tail = buf[:, steps * self._orig :].clone()
        if final:
            # torchaudio computes this in float32 (torch.as_tensor of a float); copy it, because past
            # ~2**24 output samples float32 rounding can change the length by a few samples.
            target = int(torch.ceil(torch.as_tensor(self._new * self._in_len / self._orig)).long())
            out = out[:, : max(0, target - self._out_len)]
        self._out_len += out.shape[-1]
        return out.numpy()


# ---------------------------------------------------------------------------------------------
# 3. Window extraction


@dataclass(frozen=True)
class WindowRequest:
    id: Hashable
    start_s: float  # on the audio stream's clock


class WindowStatus(StrEnum):
    OK = "ok"
    PADDED = "padded"  # partly outside the track by <= tolerance; the gap is zeros
    OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class CutWindow:
    id: Hashable
    start_s: float
    status: WindowStatus
    samples: np.ndarray | None  # float32 (channels, window_samples); None when out of range
    missing_s: float  # how much of the window lies outside the track
    first_sample_s: float = 0.0  # stream time of the window's first sample, as actually cut

    @property
    def reject_reason(self) -> RejectReason | None:
        return RejectReason.AUDIO_OUT_OF_RANGE if self.status is WindowStatus.OUT_OF_RANGE else None


@dataclass(frozen=True)
class _Pending:
    request: WindowRequest
    first: int  # index of the window's first sample in the track (may be negative)


class WindowCutter:
    """Cuts fixed-length windows out of a pushed sample stream, keeping only what is still needed.

    The buffer starts at the earliest window not yet emitted, so it never holds more than
    ``window_samples + len(largest pushed chunk)`` samples, whatever the stride or overlap.
    Windows come out in start order; ``finish()`` emits all the rest, so each requested window
    is emitted exactly once.
    """

    def __init__(
        self,
        windows: Sequence[WindowRequest],
        *,
        stream_start_s: float = 0.0,
        sample_rate: int = TARGET_SR,
        window_samples: int = WINDOW_SAMPLES,
        tolerance_s: float = 0.05,
    ) -> None:
        self.sample_rate = sample_rate
        self.window_samples = window_samples
        self._tolerance = round(tolerance_s * sample_rate)
        ordered = sorted(windows, key=lambda w: w.start_s)
        self._stream_start_s = stream_start_s
        self._pending = [_Pending(w, round((w.start_s - stream_start_s) * sample_rate)) for w in ordered]
        self._next = 0
        self._buf: np.ndarray | None = None  # (channels, n); channels known from the first push
        self._buf_first = 0  # track index of self._buf[:, 0]
        self._total = 0  # samples pushed so far
        self.max_buffered = 0  # peak buffer length, for tests and memory accounting

    @property
    def buffered(self) -> int:
        return 0 if self._buf is None else int(self._buf.shape[-1])

    def push(self, samples: np.ndarray) -> list[CutWindow]:
        if samples.shape[-1] == 0:
            return []
        samples = samples.astype(np.float32, copy=False)
        self._buf = samples.copy() if self._buf is None else np.concatenate([self._buf, samples], axis=1)
        self._total += samples.shape[-1]
        self.max_buffered = max(self.max_buffered, self.buffered)
        out = self._emit(final=False)
        self._trim()
        return out

    def finish(self) -> list[CutWindow]:
        out = self._emit(final=True)
        self._buf = None if self._buf is None else self._buf[:, :0]
        return out

    def finish_segment(self) -> tuple[list[CutWindow], list[WindowRequest]]:
        """End the track here, but only for windows that start before its end; the rest are handed back.

        For a track that continues after a break (a format change, a timestamp gap): the windows that
        start inside this piece come out as they would at the end of a track (OUT_OF_RANGE when more
        than the tolerance is missing); those starting at or after its end are returned, not emitted,
        for the cutter of the next piece.
        """
        out = self._emit(final=True, starting_before=self._total)
        rest = [p.request for p in self._pending[self._next :]]
        self._next = len(self._pending)
        self._buf = None if self._buf is None else self._buf[:, :0]
        return out, rest

    def _emit(self, *, final: bool, starting_before: int | None = None) -> list[CutWindow]:
        out: list[CutWindow] = []
        while self._next < len(self._pending):
            pending = self._pending[self._next]
            if starting_before is not None and pending.first >= starting_before:
                break
            before = max(0, -pending.first)
            end = pending.first + self.window_samples
            # Missing-before is known at once; the end is known once the stream passed it or ended.
            if not (final or end <= self._total or before > self._tolerance):
                break
            # emitted early for a bad start: the tail is still unknown, so only what is surely missing counts
            after = max(0, end - self._total) if (final or end <= self._total) else 0
            out.append(self._cut(pending, before, after))
            self._next += 1
        return out

    def _cut(self, pending: _Pending, before: int, after: int) -> CutWindow:
        req = pending.request
        missing = min(self.window_samples, before + after)
        missing_s = missing / self.sample_rate
        first_s = self._stream_start_s + pending.first / self.sample_rate
        if missing > self._tolerance or self._buf is None:
            return CutWindow(req.id, req.start_s, WindowStatus.OUT_OF_RANGE, None, missing_s, first_s)
        lo = max(pending.first, 0) - self._buf_first
        hi = min(pending.first + self.window_samples, self._total) - self._buf_first
        window = np.zeros((self._buf.shape[0], self.window_samples), np.float32)
        window[:, before : before + (hi - lo)] = self._buf[:, lo:hi]
        status = WindowStatus.PADDED if missing else WindowStatus.OK
        return CutWindow(req.id, req.start_s, status, window, missing_s, first_s)

    def _trim(self) -> None:
        keep_from = max(self._pending[self._next].first, 0) if self._next < len(self._pending) else self._total
        drop = min(max(0, keep_from - self._buf_first), self.buffered)
        if drop:
            # Copy so the dropped prefix is actually freed, not kept alive by a view.
            self._buf = self._buf[:, drop:].copy()
            self._buf_first += drop


# ---------------------------------------------------------------------------------------------
# 4. Log-mel (ImageBind waveform2melspec) and 5. quality


# torchaudio.compliance.kaldi.fbank with the arguments below (ImageBind's), taken apart so that what
# does not depend on the waveform - the window function and the mel filterbank, which fbank rebuilds
# on every call - is built once. The per-window arithmetic is the same torch ops on the same operands
# in the same order, so the result is bit-identical (tests/test_audio.py checks it against fbank);
# fbank's raw log-energy column is left out because use_energy=False drops it anyway.
_FBANK_ARGS = dict(
    htk_compat=True,
    sample_frequency=TARGET_SR,
    use_energy=False,
    window_type="hanning",
    num_mel_bins=MEL_BINS,
    dither=0.0,
    frame_length=25,
    frame_shift=10,
)
_FRAME_SHIFT = int(TARGET_SR * 10 * 0.001)  # 160 samples, as fbank derives it
_FRAME_LENGTH = int(TARGET_SR * 25 * 0.001)  # 400
_FFT_LENGTH = 512  # round_to_power_of_two
_PREEMPHASIS = 0.97  # fbank's default preemphasis_coefficient


@functools.cache
def _fbank_constants() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cpu, f32 = torch.device("cpu"), torch.float32
    window = kaldi._feature_window_function("hanning", _FRAME_LENGTH, 0.42, cpu, f32).unsqueeze(0)
    # fbank's defaults: low_freq 20, high_freq 0 (Nyquist), vtln_low 100, vtln_high -500, vtln_warp 1
    banks, _ = kaldi.get_mel_banks(MEL_BINS, _FFT_LENGTH, TARGET_SR, 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks.to(device=cpu, dtype=f32), (0, 1), mode="constant", value=0)
    return window, banks, kaldi._get_epsilon(cpu, f32)


def _fbank(waveform: torch.Tensor) -> torch.Tensor:
    """``kaldi.fbank(waveform, **_FBANK_ARGS)`` for a (C, n >= 400) float32 waveform: (frames, 128)."""
    if waveform.shape[-1] < _FRAME_LENGTH:  # shorter than one frame: let fbank itself refuse it
        return kaldi.fbank(waveform, **_FBANK_ARGS)
    window, banks, eps = _fbank_constants()
    frames = kaldi._get_strided(waveform[0, :], _FRAME_LENGTH, _FRAME_SHIFT, True)  # snip_edges
    frames = frames - torch.mean(frames, dim=1).unsqueeze(1)  # remove_dc_offset
    # preemphasis: x[j] -= 0.97 * x[max(0, j - 1)], the previous sample taken as fbank's replicate pad does
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - _PREEMPHASIS * previous
    frames = frames * window
    frames = torch.nn.functional.pad(frames.unsqueeze(0), (0, _FFT_LENGTH - _FRAME_LENGTH), mode="constant", value=0)
    spectrum = torch.fft.rfft(frames.squeeze(0)).abs().pow(2.0)
    return torch.max(torch.mm(spectrum, banks.T), eps).log()


def log_mel(window: np.ndarray, channels: ChannelMode = "first") -> np.ndarray:
    """(C, 32000) 16 kHz waveform -> normalised log-mel, float32 (1, 128, 204), per SPEC §3."""
    w = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
    if channels == "mean":
        w = w.mean(dim=0, keepdim=True)
    elif channels != "first":
        raise ValueError(f"channels must be 'first' or 'mean', got {channels!r}")
    w = w - w.mean()
    # fbank reads channel 0 only; that is ImageBind's behaviour for "first".
    fbank = _fbank(w).T
    # Padding happens in the log-mel domain with 0.0, before normalisation, as ImageBind does.
    frames = fbank.shape[1]
    if frames < MEL_FRAMES:
        fbank = torch.nn.functional.pad(fbank, (0, MEL_FRAMES - frames), value=0.0)
    else:
        fbank = fbank[:, :MEL_FRAMES]
    return ((fbank - MEL_MEAN) / MEL_STD)[None].numpy().astype(np.float32, copy=False)


@dataclass(frozen=True)
class AudioQuality:
    rms_dbfs: float
    clipped_frac: float


def mel_channels(window: np.ndarray, channels: ChannelMode) -> np.ndarray:
    """The (1, n) signal the mel is built from: channel 0 (``first``, what fbank reads) or the channel mean."""
    if channels == "mean":
        return np.asarray(window, np.float32).mean(axis=0, keepdims=True)
    if channels != "first":
        raise ValueError(f"channels must be 'first' or 'mean', got {channels!r}")
    return np.asarray(window)[:1]


def audio_quality(window: np.ndarray) -> AudioQuality:
    """Loudness and clipping of the raw window, over the channels given, before mean removal.

    Callers pass ``mel_channels(window, mode)`` so the figures describe exactly what the mel is built
    from: a 5.1 track with sound only in its centre channel is silent under ``first``.
    """
    x = np.asarray(window, dtype=np.float64)
    if x.size == 0:
        return AudioQuality(RMS_FLOOR_DBFS, 0.0)
    rms = float(np.sqrt(np.mean(x * x)))
    dbfs = 20.0 * math.log10(rms) if rms > 0 else RMS_FLOOR_DBFS
    return AudioQuality(max(RMS_FLOOR_DBFS, dbfs), float(np.mean(np.abs(x) >= CLIP_LEVEL)))


# ---------------------------------------------------------------------------------------------
# 6. One file, decoded once: windows -> mel + quality + status


@dataclass(frozen=True)
class AudioWindowResult:
    id: Hashable
    start_s: float
    status: WindowStatus
    mel: np.ndarray | None  # float32 (1, 128, 204)
    quality: AudioQuality | None
    reject_reason: RejectReason | None
    detail: str
    first_sample_s: float = 0.0  # stream time of the first sample used (the cut is on the 16 kHz grid)


def decode_windows(
    path: str | os.PathLike[str],
    windows: Sequence[WindowRequest],
    *,
    channels: ChannelMode = "first",
    tolerance_s: float = 0.05,
    stream_index: int | None = None,
    chunk_s: float = 1.0,
) -> Iterator[AudioWindowResult]:
    """Decode -> resample -> cut -> mel for one file; yields every window exactly once.

    Whole-input problems raise an ``AudioInputError`` subclass (its ``.reason`` is the reject
    code); per-window problems are yielded as results with ``reject_reason`` set.
    """
    chunks = iter_audio_chunks(path, stream_index=stream_index, chunk_s=chunk_s)
    first = next(chunks, None)
    if first is None:
        # An audio stream with no decodable samples: every window is outside the (empty) track.
        cutter = WindowCutter(windows, tolerance_s=tolerance_s)
        yield from (finish_window(w, channels) for w in cutter.finish())
        return
    resampler = StreamingResampler(first.sample_rate)
    cutter = WindowCutter(windows, stream_start_s=first.start_s, tolerance_s=tolerance_s)
    for chunk in _prepend(first, chunks):
        for cut in cutter.push(resampler.push(chunk.samples)):
            yield finish_window(cut, channels)
    for cut in cutter.push(resampler.finish()) + cutter.finish():
        yield finish_window(cut, channels)


def _prepend(first: AudioChunk, rest: Iterator[AudioChunk]) -> Iterator[AudioChunk]:
    yield first
    yield from rest


def finish_window(cut: CutWindow, channels: ChannelMode) -> AudioWindowResult:
    if cut.samples is None:
        detail = f"{cut.missing_s:.3f}s of the window lies outside the audio track"
        return AudioWindowResult(
            cut.id, cut.start_s, cut.status, None, None, cut.reject_reason, detail, cut.first_sample_s
        )
    detail = f"zero-padded {cut.missing_s:.3f}s" if cut.status is WindowStatus.PADDED else ""
    return AudioWindowResult(
        id=cut.id,
        start_s=cut.start_s,
        status=cut.status,
        mel=log_mel(cut.samples, channels),
        quality=audio_quality(mel_channels(cut.samples, channels)),
        reject_reason=None,
        detail=detail,
        first_sample_s=cut.first_sample_s,
    )
