"""Clip planning: which 2 s windows a recording yields, and which split a session belongs to."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from transforms.config import BuildConfig

_EPS = 1e-9


@dataclass(frozen=True)
class Window:
    index: int
    start_s: float  # session timeline
    end_s: float

    @property
    def center_s(self) -> float:
        return 0.5 * (self.start_s + self.end_s)

    def key(self, session: str) -> str:
        return sample_key(session, self.start_s)


def sample_key(session: str, start_s: float) -> str:
    return f"{session}_{round(start_s * 1000):09d}"


def plan_windows(end_s: float, cfg: BuildConfig, start_s: float = 0.0, own_timeline: bool = False) -> list[Window]:
    """Windows [s, s+clip) that end by ``end_s``, all times on the session timeline (seconds).

    The grid is anchored at session time 0, as ImageBind's clip sampler is for a video starting at 0;
    a recording that starts later than that (``start_s`` >= one stride: an MKV whose timestamps start at
    45 s, a camera that joined the session late) gets a grid anchored at its own start instead (rounded
    down to the millisecond, the keys' unit: rounded up, the first frame would fall before the first window
    and a last window would reach past the media by the same fraction of a millisecond), so no stretch of
    media before the first window is left out.

    ``own_timeline``: the file is the session (``videos``, ``ego4d``: no manifest puts it on a shared clock),
    so any start offset is the container's convention, not a camera that joined late: MPEG-TS starts at
    1.4 s, MPEG-PS at 0.5 s. The grid then starts at ``start_s`` (the stream's declared start) whenever it
    is after 0, as pytorchvideo, ImageBind's video loader, counts clip time from the stream's start_time.
    """
    late = start_s > _EPS if own_timeline else start_s >= cfg.stride_s - _EPS
    origin = math.floor(start_s * 1000 + 1e-6) / 1000 if late else 0.0
    out = []
    k = 0
    while origin + k * cfg.stride_s + cfg.clip_s <= end_s + _EPS:
        s = round(origin + k * cfg.stride_s, 6)
        out.append(Window(len(out), s, round(s + cfg.clip_s, 6)))
        k += 1
    return out


def split_for(session: str, cfg: BuildConfig, given: str | None = None) -> str:
    """Split by session, never by clip: a stable hash, so adding sessions never moves old ones."""
    if given is not None:
        return given
    h = int.from_bytes(hashlib.sha256(f"{cfg.split_salt}:{session}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < cfg.val_fraction else "train"
