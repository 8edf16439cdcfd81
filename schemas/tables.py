"""Arrow schemas of ``index.parquet`` and ``rejects.parquet`` (SPEC §4).

Column order is part of the contract: the index is compared byte for byte across engines and reruns.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.modalities import MEMBERS, REGISTRY
from schemas.reasons import RejectReason

__all__ = ["INDEX_SCHEMA", "MEMBERS", "REASON_VALUES", "REJECTS_SCHEMA", "member_column"]


def member_column(member: str) -> str:
    return "sha256_" + member.replace(".", "_")


def _f64(name: str) -> pa.Field:
    return pa.field(name, pa.float64(), nullable=True)


INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("session", pa.string(), nullable=False),
        pa.field("layout", pa.string(), nullable=False),
        pa.field("clip_start_s", pa.float64(), nullable=False),
        pa.field("clip_end_s", pa.float64(), nullable=False),
        # where each modality came from (relative to the input root); null when absent
        *[pa.field(m.source_column, pa.string(), nullable=True) for m in REGISTRY if m.has_source],
        *[pa.field(m.has_column, pa.bool_(), nullable=False) for m in REGISTRY],
        # frame times on the session timeline
        _f64("frame0_t_s"),
        _f64("frame1_t_s"),
        # quality figures
        _f64("audio_rms_dbfs"),
        _f64("audio_clipped_frac"),
        _f64("frame_brightness"),
        _f64("frame_sharpness"),
        _f64("frame_diff"),
        _f64("depth_valid_frac"),
        _f64("thermal_min"),
        _f64("thermal_max"),
        _f64("imu_rate_hz"),
        _f64("imu_max_gap_ms"),
        _f64("imu_saturated_frac"),  # share of the stored IMU steps on a flat top at full scale (filters.py)
        # distance between the frame a modality was paired with and the first video frame
        *[_f64(m.sync_column) for m in REGISTRY if m.has_sync],
        # each paired frame stream's own frame period: the pairing tolerances are in these units
        *[_f64(f"{m}_frame_period_ms") for m in ("video", "depth", "thermal")],
        # video geometry applied to the coded frames (transforms/media.py): the counter-clockwise rotation
        # of the display matrix / rotate tag (0, 90, 180, 270), and the pixel aspect ratio (stored at 1:1)
        pa.field("video_rotation_deg", pa.int32(), nullable=True),
        _f64("video_sar"),
        pa.field("label", pa.string(), nullable=True),
        pa.field("caption", pa.string(), nullable=True),
        pa.field("label_change", pa.bool_(), nullable=False),
        *[pa.field(member_column(m), pa.string(), nullable=True) for m in MEMBERS],
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("session", pa.string(), nullable=True),
        pa.field("key", pa.string(), nullable=True),
        _f64("start_s"),
        _f64("end_s"),
        # null: the whole window or input was rejected; otherwise only this modality of the sample
        pa.field("modality", pa.string(), nullable=True),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)

REASON_VALUES = frozenset(r.value for r in RejectReason)
