"""The modality registry: the one list every per-modality table in bindset is built from.

Each sample carries up to six modalities (SPEC §3–4). Which tar member holds each, which ``index.parquet``
columns describe it, which reject reasons are its own, and whether training learns an encoder for it are
facts of the output contract; they live here once, and the unit (``transforms/unit.py``), the shard
reader (``training/shards.py``), the expectations (``schemas/expectations.py``), the index schema
(``schemas/tables.py``) and the report (``pipelines/report/``) read them from here.

Words used across the code base:

- ``NAMES``: all six modalities, in index column order (``has_video`` … ``has_text``).
- ``TRAINABLE``: the four that get an encoder, trained against the frozen image tower (ImageBind's
  audio, depth, thermal and IMU; arXiv 2305.05665 §3).
- ``PAIRED_IMAGE``: the modality every sample is anchored on (the clip's frames, or a still image).

Pure stdlib: the training loop imports this on machines that have only torch, numpy and pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.reasons import RejectReason


@dataclass(frozen=True)
class Modality:
    """One modality of a sample.

    ``member``: the tar member suffix (``KEY.<member>``) whose presence defines ``has_<name>``.
    ``extra_members``: further members that belong to the modality but are not always present
    (a recording's last frame ``frame1.jpg``; still pairs have one image).
    ``has_source``/``has_sync``: whether the index has ``source_<name>`` / ``sync_err_<name>_ms``.
    ``missing_reason``: the reject reason when the stream exists but has nothing for a window.
    ``reasons``: the reject codes specific to this modality (besides the generic decode/file codes).
    """

    name: str
    member: str
    extra_members: tuple[str, ...] = ()
    trainable: bool = False
    has_source: bool = True
    has_sync: bool = True
    missing_reason: RejectReason | None = None
    reasons: tuple[RejectReason, ...] = ()

    @property
    def has_column(self) -> str:
        return f"has_{self.name}"

    @property
    def source_column(self) -> str | None:
        return f"source_{self.name}" if self.has_source else None

    @property
    def sync_column(self) -> str | None:
        return f"sync_err_{self.name}_ms" if self.has_sync else None

    @property
    def members(self) -> tuple[str, ...]:
        """Every tar member of this modality, primary first."""
        return (self.member, *self.extra_members)


VIDEO = Modality(
    "video",
    "jpg",
    extra_members=("frame1.jpg",),
    reasons=(
        RejectReason.NO_VIDEO_STREAM,
        RejectReason.NO_FRAMES_IN_WINDOW,
        RejectReason.FRAME_BLACK,
        RejectReason.FRAME_WHITE,
        RejectReason.FRAME_BLURRED,
        RejectReason.FRAME_FROZEN,
    ),
)
AUDIO = Modality(
    "audio",
    "mel.npy",
    trainable=True,
    reasons=(
        RejectReason.NO_AUDIO_STREAM,
        RejectReason.AUDIO_OUT_OF_RANGE,
        RejectReason.AUDIO_GAP,
        RejectReason.AUDIO_FORMAT_CHANGE,
        RejectReason.AUDIO_SILENT,
        RejectReason.AUDIO_CLIPPED,
    ),
)
DEPTH = Modality(
    "depth",
    "depth.png",
    trainable=True,
    missing_reason=RejectReason.DEPTH_MISSING,
    reasons=(
        RejectReason.DEPTH_MISSING,
        RejectReason.DEPTH_BIT_DEPTH,
        RejectReason.DEPTH_IMPLAUSIBLE,
        RejectReason.DEPTH_INVALID,
    ),
)
THERMAL = Modality(
    "thermal",
    "thermal.png",
    trainable=True,
    missing_reason=RejectReason.THERMAL_MISSING,
    reasons=(RejectReason.THERMAL_MISSING, RejectReason.THERMAL_IMPLAUSIBLE, RejectReason.THERMAL_FLAT),
)
IMU = Modality(
    "imu",
    "imu.npy",
    trainable=True,
    reasons=(
        RejectReason.IMU_OUT_OF_RANGE,
        RejectReason.IMU_GAP,
        RejectReason.IMU_NAN,
        RejectReason.IMU_CLOCK_STEP,
        RejectReason.IMU_SATURATED,
    ),
)
TEXT = Modality("text", "txt", has_source=False, has_sync=False)

#: All modalities, in index column order.
REGISTRY: tuple[Modality, ...] = (VIDEO, AUDIO, DEPTH, THERMAL, IMU, TEXT)
BY_NAME: dict[str, Modality] = {m.name: m for m in REGISTRY}
NAMES: tuple[str, ...] = tuple(m.name for m in REGISTRY)
#: The modalities training learns an encoder for.
TRAINABLE: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.trainable)
#: The modality every sample is paired with (frames of the clip, or the still image).
PAIRED_IMAGE: Modality = VIDEO
#: Trainable modality -> the member that carries it.
TRAINABLE_MEMBER: dict[str, str] = {m.name: m.member for m in REGISTRY if m.trainable}
#: Codes of a window, or of any one stream, rather than of one modality's content: the window is too short, its
#: packets were damaged (video or audio), a stream's clock or timestamps are wrong, a still pair disagrees, a
#: stream's image is corrupt, or bindset failed. Rows name the modality they struck in their ``modality`` column.
#: Every other code is input-level (schemas/reasons.py INPUT_LEVEL) or one modality's (``Modality.reasons``).
WINDOW_LEVEL = frozenset(
    {
        RejectReason.PARTIAL_WINDOW,
        RejectReason.CORRUPT_PACKETS,
        RejectReason.CLOCK_MISMATCH,
        RejectReason.ORIENTATION_MISMATCH,
        RejectReason.CORRUPT_IMAGE,
        RejectReason.BAD_TIMESTAMPS,
        RejectReason.DUPLICATE_TIMESTAMPS,
        RejectReason.NON_MONOTONIC_TIMESTAMPS,
        RejectReason.INTERNAL_ERROR,
    }
)
#: The per-sample metadata member, not a modality.
META_MEMBER = "json"
#: Sample members in the order they are written into a tar.
MEMBERS: tuple[str, ...] = (
    VIDEO.member,
    *VIDEO.extra_members,
    *(m for mod in REGISTRY[1:] for m in mod.members),
    META_MEMBER,
)


def present(members: dict[str, bytes] | set[str] | frozenset[str]) -> dict[str, bool]:
    """Modality name -> whether its primary member is among ``members`` (the sample's tar members)."""
    return {m.name: m.member in members for m in REGISTRY}
