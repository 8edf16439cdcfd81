"""The decode floor the build benchmarks divide by: PyAV alone demuxing and decoding what the build decodes.

Used by ``benchmarks.build_throughput`` (one long file) and ``benchmarks.many_inputs`` (every file of a
videos layout); each runs it in a fresh process of its own, so that imports and warm caches of the other
measurements do not leak into it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DecodeFloor:
    seconds: float  # wall time of opening, demuxing and decoding every file
    frames: int  # video frames decoded
    audio_frames: int  # audio frames (codec packets' worth) decoded
    audio_samples: int  # audio samples per channel decoded


def decode_floor(paths: Iterable[Path | str]) -> DecodeFloor:
    """Time PyAV demuxing and decoding every frame of the first video stream and of the first audio stream
    (when there is one) of each file in ``paths``, in order, with the video decoder's ``thread_type`` "AUTO"
    as the build decodes. Raises what ``av.open`` raises on a file it cannot read."""
    import av

    t0 = time.perf_counter()
    frames = audio_frames = samples = 0
    for path in paths:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"  # as the build decodes
            for packet in c.demux(vs, *c.streams.audio[:1]):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        frames += 1
                    else:
                        audio_frames += 1
                        samples += frame.samples
    return DecodeFloor(time.perf_counter() - t0, frames, audio_frames, samples)
