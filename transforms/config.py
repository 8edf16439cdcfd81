"""Job settings of a dataset build (engine settings live with the engines, in pipelines/)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal


@dataclass(frozen=True)
class BuildConfig:
    layout: str = "auto"
    clip_s: float = 2.0
    stride_s: float = 2.0
    # frames
    jpeg_quality: int = 95
    max_short_side: int = 320
    max_image_side: int = 16384  # larger declared dimensions are refused before decoding
    # audio
    audio_channels: Literal["first", "mean"] = "first"
    audio_tolerance_s: float = 0.05  # a window may miss this much audio at a track edge (zero-padded)
    # depth/thermal: None = half the stream's median frame period
    depth_tolerance_s: float | None = None
    thermal_tolerance_s: float | None = None
    # IMU
    imu_window_s: float = 5.0
    imu_rate_hz: float = 400.0
    imu_max_gap_s: float = 0.1
    # output
    shard_max_samples: int = 1000
    shard_max_bytes: int = 512 * 1024 * 1024
    val_fraction: float = 0.2
    split_salt: str = "bindset"
    # robustness
    decode_timeout_s: float = 600.0  # per file; a decoder that hangs longer is killed

    def __post_init__(self):
        if self.clip_s <= 0 or self.stride_s <= 0:
            raise ValueError("clip_s and stride_s must be positive")
        if not 0 <= self.val_fraction <= 1:
            raise ValueError("val_fraction must be within [0, 1]")
        if self.shard_max_samples < 1 or self.shard_max_bytes < 4096:
            raise ValueError("shard limits are too small")
        if self.audio_channels not in ("first", "mean"):
            raise ValueError("audio_channels must be 'first' or 'mean'")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BuildConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
