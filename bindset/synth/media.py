"""Byte-deterministic writers for synthetic media: H.264/AAC MP4, WAV, 16-bit PNG sequences, CSVs."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# Same bytes on every machine: no wall-clock metadata, and one encoder thread because x264's output
# depends on its thread count (which otherwise follows the core count).
_CONTAINER_OPTIONS = {"fflags": "+bitexact"}
_X264_OPTIONS = {"preset": "veryfast", "crf": "26", "threads": "1", "bframes": "0"}


@dataclass(frozen=True)
class VideoTiming:
    """Presentation times (seconds, video clock) of every frame, and the container's time base."""

    pts_s: np.ndarray
    time_base: Fraction
    rate: Fraction  # nominal rate written to the stream header


def constant_timing(rate: Fraction, duration_s: float) -> VideoTiming:
    n = int(np.ceil(float(duration_s * rate)))  # every frame whose time is < duration
    tb = 1 / rate
    return VideoTiming(np.arange(n, dtype=np.float64) * float(tb), tb, rate)


def variable_timing(rng: np.random.Generator, duration_s: float) -> VideoTiming:
    """Variable frame rate, as phones record: frame intervals wander between ~24 and ~36 fps."""
    tb = Fraction(1, 90000)
    ticks, t = [], 0
    while t / 90000 < duration_s:
        ticks.append(t)
        t += int(rng.integers(2500, 3751))  # 27.8 .. 41.7 ms
    return VideoTiming(np.asarray(ticks, np.float64) / 90000, tb, Fraction(30))


def write_mp4(
    path: Path,
    timing: VideoTiming,
    render: Callable[[float], np.ndarray],
    size: tuple[int, int],
    audio: np.ndarray | None,
    audio_rate: int = 48000,
    x264: dict | None = None,
) -> None:
    """Encode frames render(pts_s) and an optional (2, n) float32 audio track starting at pts 0."""
    width, height = size
    with av.open(str(path), "w", format="mp4", options=_CONTAINER_OPTIONS) as out:
        vs = out.add_stream("libx264", rate=timing.rate, options={**_X264_OPTIONS, **(x264 or {})})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.time_base = timing.time_base
        vs.time_base = timing.time_base
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=audio_rate, layout="stereo")
            astream.codec_context.time_base = Fraction(1, audio_rate)
            astream.time_base = Fraction(1, audio_rate)
        a_pos, hop = 0, 1024
        n_audio = 0 if audio is None else audio.shape[1]
        for pts_s in timing.pts_s:
            # keep the two encoders roughly in step so the muxer can interleave without buffering it all
            while astream is not None and a_pos < n_audio and a_pos / audio_rate <= pts_s:
                a_pos = _encode_audio(out, astream, audio, a_pos, hop, audio_rate)
            frame = av.VideoFrame.from_ndarray(render(float(pts_s)), format="rgb24")
            frame.pts = round(pts_s / timing.time_base)
            frame.time_base = timing.time_base
            out.mux(vs.encode(frame))
        while astream is not None and a_pos < n_audio:
            a_pos = _encode_audio(out, astream, audio, a_pos, hop, audio_rate)
        out.mux(vs.encode(None))
        if astream is not None:
            out.mux(astream.encode(None))


def _encode_audio(out, astream, audio: np.ndarray, pos: int, hop: int, rate: int) -> int:
    chunk = np.ascontiguousarray(audio[:, pos : pos + hop], dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
    frame.sample_rate = rate
    frame.pts = pos
    frame.time_base = Fraction(1, rate)
    out.mux(astream.encode(frame))
    return pos + chunk.shape[1]


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """16-bit PCM WAV of a (channels, n) float signal."""
    pcm = (np.clip(audio, -1, 1) * 32767).round().astype("<i2").T.copy()
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def png_bytes(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def jpg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def write_csv(path: Path, header: list[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue())
