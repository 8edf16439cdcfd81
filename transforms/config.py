"""Job settings of a dataset build (engine settings live with the engines, in pipelines/).

    bindset build RAW DATA --config build.yaml --stride 1     # a file of BuildConfig fields; flags override it

Each field's ``description`` is the help text of its ``bindset build`` flag, and the flag itself is the field
name with dashes (``shard_max_samples`` -> ``--shard-max-samples``) unless ``json_schema_extra["flag"]`` names
a shorter one (schemas/config.py:cli_flag). bindset/cli.py and orchestration/ray_jobs.py build their flags from
these definitions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config import StrictConfig
from transforms.filters import FilterThresholds
from transforms.layouts import LAYOUTS

LayoutChoice = Literal[("auto", *LAYOUTS)]


class BuildConfig(StrictConfig):
    """Settings that decide the bytes of a build. Strict: unknown keys and lossy types raise ConfigError."""

    layout: LayoutChoice = Field("auto", description="input layout; auto detects it and says which it chose")
    clip_s: float = Field(2.0, gt=0, description="seconds per clip window (ImageBind: 2)")
    stride_s: float = Field(
        2.0, gt=0, description="seconds between clip starts", json_schema_extra={"flag": "--stride"}
    )
    # frames
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the stored frames")
    max_short_side: int = Field(320, ge=1, description="frames are shrunk so the short side is at most this (px)")
    max_image_side: int = Field(
        16384, ge=1, description="larger declared image dimensions are refused before decoding (px)"
    )
    # audio
    audio_channels: Literal["first", "mean"] = Field(
        "first", description="channel(s) the mel reads: first (ImageBind) or the mean of all"
    )
    audio_tolerance_s: float = Field(0.05, ge=0, description="audio a window may miss at a track edge, zero-padded (s)")
    # depth/thermal: None = half the stream's median frame period
    depth_tolerance_s: float | None = Field(
        None, ge=0, description="max distance of the depth frame from the clip's first frame (s; none: half a period)"
    )
    thermal_tolerance_s: float | None = Field(
        None, ge=0, description="max distance of the thermal frame from the clip's first frame (s; none: half a period)"
    )
    # IMU
    imu_window_s: float = Field(5.0, gt=0, description="IMU window centred on the clip (s)")
    imu_rate_hz: float = Field(400.0, gt=0, description="IMU resampling rate (Hz)")
    imu_max_gap_s: float = Field(
        0.1, gt=0, description="a longer IMU gap voids the IMU part (s)", json_schema_extra={"flag": "--imu-max-gap"}
    )
    # output
    shard_max_samples: int = Field(1000, ge=1, description="samples per shard at most")
    shard_max_bytes: int = Field(512 * 1024 * 1024, ge=4096, description="bytes per shard at most")
    # units of work (transforms/grouping.py)
    unit_windows: int = Field(
        1500, ge=1, description="planned windows a unit of work aims at (inputs are grouped up to it)"
    )
    unit_min_count: int = Field(
        16, ge=1, description="the unit target shrinks (by powers of two) until a corpus has about this many units"
    )
    unit_max_bytes: int = Field(8 * 1024**3, ge=1, description="input bytes a unit of several inputs holds at most")
    val_fraction: float = Field(0.2, ge=0, le=1, description="fraction of sessions in the val split")
    split_salt: str = Field("bindset", description="salt of the session hash that picks the split")
    # robustness
    clocks: Literal["declared", "verify", "estimate"] = Field(
        "verify",
        description="stream clocks: declared (as the manifest says), verify (estimate from content; "
        "windows of a stream whose confident estimate disagrees are clock_mismatch rejects), estimate (use a "
        "confident estimate where it disagrees); DATA/sync.parquet records each (transforms/clockcheck.py)",
    )
    decode_timeout_s: float = Field(
        600.0, gt=0, description="floor of each file's decode budget (s): a decoder is killed after "
        "max(this, 4 s per media second + 2 s per MB) on one file (pipelines/work.py: decode_budget)",
        json_schema_extra={"flag": "--decode-timeout"},
    )  # fmt: skip
    # per-sample quality filters: a figure beyond its threshold rejects that modality or window with a reason;
    # part of the config, so a changed threshold changes the unit fingerprint. Set from a --thresholds file's
    # "filters" (schemas/expectations.py:Thresholds) or a --config file's "filters" mapping; no flag of its own.
    filters: FilterThresholds = Field(
        default_factory=FilterThresholds, description="per-sample quality filter thresholds (transforms/filters.py)"
    )
