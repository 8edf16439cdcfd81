"""The data contracts of a built dataset, as Great Expectations suites (SPEC §4; `bindset validate`).

One suite per table. Two tables are the published files themselves; the others are small tables that
``pipelines/validate.py`` derives, because a contract that spans files (tars vs index, sessions vs splits,
manifest counts vs tables) or needs arithmetic (a clip's duration) cannot be stated on one column:

| suite      | table                                   | one row per                                     |
|------------|-----------------------------------------|-------------------------------------------------|
| `index`    | DATA/index.parquet                      | sample                                          |
| `rejects`  | DATA/rejects.parquet                    | rejected window, modality or input              |
| `clips`    | derived: `CLIPS_COLUMNS`                | sample (split of its shard, clip duration)      |
| `shards`   | derived: `SHARDS_COLUMNS`, from the tars | shard file (tars read, vs index and sizes.json) |
| `sessions` | derived: `SESSIONS_COLUMNS`             | session (how many splits it landed in)          |
| `build`    | derived: `BUILD_COLUMNS`, manifest      | build (one row: counts, reject rate)            |
| `columns`  | derived: `COLUMNS_COLUMNS`              | float column of index/rejects (non-finite count)|

Every expectation carries ``meta["rule"]``, the promise it checks in words, and ``meta["kind"]``:
``structure`` rules are exact (one bad row fails the dataset); ``quality`` rules are per-sample figures that
tolerate a few outliers (``mostly``), because a real capture has the odd dark or silent clip.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from schemas import modalities
from schemas.modalities import MEMBERS
from schemas.reasons import RejectReason
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA, member_column

# GX reads this when a context is created; set before the import so no usage statistics are ever sent.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
from great_expectations.expectations.row_conditions import Column  # noqa: E402

E = gx.expectations

INDEX, REJECTS, CLIPS, SHARDS, SESSIONS, BUILD, COLUMNS = (
    "index", "rejects", "clips", "shards", "sessions", "build", "columns",
)  # fmt: skip
SUITES = (INDEX, REJECTS, CLIPS, SHARDS, SESSIONS, BUILD, COLUMNS)

#: Column that names a row of each table in failure reports.
ROW_ID = {INDEX: "key", REJECTS: "source", CLIPS: "key", SHARDS: "shard", SESSIONS: "session",
          BUILD: "version", COLUMNS: "column"}  # fmt: skip

CLIPS_COLUMNS = ("key", "session", "split", "shard", "shard_split", "layout", "clip_duration_s")
SHARDS_COLUMNS = (
    "shard",  # file name, from the tars on disk, the index and sizes.json together
    "tar_samples",  # samples a WebDataset reader sees (runs of one key), 0 when the file is missing
    "index_samples",  # index rows that name this shard
    "listed_samples",  # sizes.json's count, -1 when the shard is not listed
    "tar_members",  # files in the tar
    "index_members",  # non-null sha256_* cells of the shard's index rows
    "unmatched_members",  # tar members the index has no hash for, or whose content does not match it
)
SESSIONS_COLUMNS = ("session", "n_splits", "splits", "samples")
BUILD_COLUMNS = (
    "version",
    "windows_planned",  # manifest counts
    "samples",
    "window_rejects",
    "reject_rows",
    "index_rows",  # rows in the files
    "window_reject_rows",
    "rejects_rows",
    "accounted",  # samples + window_rejects
    "reject_rate",  # window_rejects / windows_planned
)
COLUMNS_COLUMNS = ("column", "nonfinite")  # "index.frame_diff", count of NaN (not null) or ±inf values

SPLITS = ("train", "val")
STILL_LAYOUTS = ("sunrgbd", "llvip")  # one sample per pair: no clip, no duration
KEY_REGEX = r"^[^.]+_[0-9]{9}$"  # {session}_{start_ms:09d}, no dots (a dot starts the member extension)
SHARD_REGEX = r"^(?:train|val)-[0-9]{6}\.tar$"

#: has_<modality> -> the members that must be in the tar exactly when it is true (frame1.jpg: recordings only).
MODALITY_MEMBERS = {m.name: (m.member,) for m in modalities.REGISTRY}
SYNC_STREAMS = tuple(m.name for m in modalities.REGISTRY if m.has_sync)

# Defaults for the pairing tolerances, from the stream rates they are meant for. A paired frame is the
# nearest one, so it lies within half a frame period; 1 ms on top covers capture-time jitter.
_JITTER_MS = 1.0
VIDEO_MIN_FPS = 24.0  # the first frame of a window is at most one frame period after its start
MEL_HOP_MS = 10.0  # the audio cut is on the 16 kHz grid; half a mel hop is far below what a listener notices
DEPTH_FPS = 15.0
THERMAL_FPS = 8.7  # the common uncooled-microbolometer rate
IMU_MIN_HZ = 150.0


@dataclass(frozen=True)
class QualityThresholds:
    """What a publishable dataset must satisfy. Quality figures hold for a ``mostly`` share of samples."""

    mostly: float = 0.98
    min_samples: int = 1
    # audio: silence and clipping
    audio_rms_dbfs_min: float = -60.0
    audio_clipped_frac_max: float = 0.01
    # frames: black/white, blur, frozen (first vs last frame of a clip)
    frame_brightness_min: float = 10.0
    frame_brightness_max: float = 245.0
    # variance of the Laplacian: clean synthetic frames sit at 250+ (160x120) and 430+ (320x240); a
    # Gaussian blur of sigma 1 px already brings them to 5..40, a black frame to 0
    frame_sharpness_min: float = 50.0
    frame_diff_min: float = 0.5
    # depth and thermal
    depth_valid_frac_min: float = 0.5
    thermal_value_min: float = 0.0  # 16-bit counts / centikelvin, or 8-bit grey
    thermal_value_max: float = 65535.0
    # IMU (where a sample has one)
    imu_rate_hz_min: float = IMU_MIN_HZ
    imu_rate_hz_max: float = 1000.0
    imu_max_gap_ms: float = 100.0
    # |sync error| per stream, ms
    sync_video_ms: float = 1000.0 / VIDEO_MIN_FPS
    sync_audio_ms: float = MEL_HOP_MS / 2
    sync_depth_ms: float = 1000.0 / DEPTH_FPS / 2 + _JITTER_MS
    sync_thermal_ms: float = 1000.0 / THERMAL_FPS / 2 + _JITTER_MS
    sync_imu_ms: float = 1000.0 / IMU_MIN_HZ  # nearest sample; one dropped sample moves it a full period
    # A camera that starts after the session's clock zero leaves the first window's first frame late by
    # its start lag; that window gets this bound instead of sync_video_ms.
    video_start_lag_ms: float = 500.0
    # clips (non-still layouts)
    clip_duration_s: float = 2.0
    clip_duration_tol_s: float = 1e-6
    # build
    max_reject_rate: float = 0.2

    def __post_init__(self):
        if not 0 < self.mostly <= 1:
            raise ValueError("mostly must be in (0, 1]")
        for f in fields(self):
            if f.name.startswith("sync_") and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must not be negative")

    def sync_tolerance_ms(self, stream: str) -> float:
        return float(getattr(self, f"sync_{stream}_ms"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, path: os.PathLike | str) -> QualityThresholds:
        """A JSON object of overrides; an unknown name is an error (a typo must not pass silently)."""
        import json

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read quality thresholds: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: quality thresholds must be a JSON object")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict) -> QualityThresholds:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown quality threshold(s): {', '.join(unknown)}")
        return cls(**data)


# ------------------------------------------------------------------------------------------ helpers


def _meta(rule: str, kind: str) -> dict:
    return {"rule": rule, "kind": kind}


# `notes` shows the rule on the suite pages of Data Docs; `meta` carries it into the results.
def _exact(cls, rule: str, **kw):
    return cls(meta=_meta(rule, "structure"), notes=rule, **kw)


def _quality(cls, rule: str, t: QualityThresholds, **kw):
    return cls(meta=_meta(rule, "quality"), notes=rule, mostly=t.mostly, **kw)


def _is(column: str, value):
    return Column(column) == value


def _suite(name: str, expectations: list) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(name=name, expectations=expectations, meta={"bindset": "data contract"})


# ------------------------------------------------------------------------------------------- suites


def index_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    ex = [
        _exact(E.ExpectTableColumnsToMatchOrderedList, "index columns are schemas/tables.py:INDEX_SCHEMA",
               column_list=list(INDEX_SCHEMA.names)),
        _exact(E.ExpectTableRowCountToBeBetween, f"the dataset has at least {t.min_samples} sample(s)",
               min_value=t.min_samples),
        _exact(E.ExpectColumnValuesToBeUnique, "sample keys are unique", column="key"),
        _exact(E.ExpectColumnValuesToMatchRegex, "keys are {session}_{start_ms:09d} without dots",
               column="key", regex=KEY_REGEX),
        _exact(E.ExpectColumnValuesToMatchRegex, "shards are named {split}-NNNNNN.tar", column="shard",
               regex=SHARD_REGEX),
        _exact(E.ExpectColumnValuesToBeInSet, "split is train or val", column="split", value_set=list(SPLITS)),
        _exact(E.ExpectColumnValuesToBeInSet, "every sample has its paired image",
               column=modalities.PAIRED_IMAGE.has_column, value_set=[True]),
    ]  # fmt: skip
    for col in ("key", "shard", "split", "session", "layout", "clip_start_s", "clip_end_s", "sha256_json"):
        ex.append(_exact(E.ExpectColumnValuesToNotBeNull, f"{col} is set on every sample", column=col))
    for modality, members in MODALITY_MEMBERS.items():
        for m in members:
            col = member_column(m)
            ex.append(_exact(E.ExpectColumnValuesToNotBeNull, f"has_{modality} implies {m} is in the shard",
                             column=col, row_condition=_is(f"has_{modality}", True)))  # fmt: skip
            ex.append(_exact(E.ExpectColumnValuesToBeNull, f"no {m} in the shard without has_{modality}",
                             column=col, row_condition=_is(f"has_{modality}", False)))  # fmt: skip
    # a recording's clip has a first and a last frame; a still pair has one image
    recording, still = Column("layout").is_not_in(STILL_LAYOUTS), Column("layout").is_in(STILL_LAYOUTS)
    last = member_column(modalities.VIDEO.extra_members[0])
    ex += [
        _exact(E.ExpectColumnValuesToNotBeNull, "a recording's sample has its clip's last frame", column=last,
               row_condition=recording),
        _exact(E.ExpectColumnValuesToBeNull, "a still pair has no last frame", column=last, row_condition=still),
    ]  # fmt: skip
    # clip timing: frames lie in their clip, in order
    ex += [
        _exact(E.ExpectColumnPairValuesAToBeGreaterThanB, "clips do not end before they start",
               column_A="clip_end_s", column_B="clip_start_s", or_equal=True),
        _exact(E.ExpectColumnPairValuesAToBeGreaterThanB, "the first frame is inside the clip",
               column_A="frame0_t_s", column_B="clip_start_s", or_equal=True, ignore_row_if="either_value_is_missing"),
        _exact(E.ExpectColumnPairValuesAToBeGreaterThanB, "the last frame is inside the clip",
               column_A="clip_end_s", column_B="frame1_t_s", or_equal=False, ignore_row_if="either_value_is_missing"),
        _exact(E.ExpectColumnPairValuesAToBeGreaterThanB, "the last frame does not precede the first",
               column_A="frame1_t_s", column_B="frame0_t_s", or_equal=True, ignore_row_if="either_value_is_missing"),
    ]  # fmt: skip
    # quality figures
    ex += [
        _quality(E.ExpectColumnValuesToBeBetween, "audio is not silent", t, column="audio_rms_dbfs",
                 min_value=t.audio_rms_dbfs_min),
        _quality(E.ExpectColumnValuesToBeBetween, "audio is not clipped", t, column="audio_clipped_frac",
                 min_value=0.0, max_value=t.audio_clipped_frac_max),
        _quality(E.ExpectColumnValuesToBeBetween, "frames are neither black nor white", t, column="frame_brightness",
                 min_value=t.frame_brightness_min, max_value=t.frame_brightness_max),
        _quality(E.ExpectColumnValuesToBeBetween, "frames are not blurred or flat", t, column="frame_sharpness",
                 min_value=t.frame_sharpness_min),
        _quality(E.ExpectColumnValuesToBeBetween, "video is not frozen (first and last frame differ)", t,
                 column="frame_diff", min_value=t.frame_diff_min),
        _quality(E.ExpectColumnValuesToBeBetween, "depth frames are mostly valid pixels", t,
                 column="depth_valid_frac", min_value=t.depth_valid_frac_min, max_value=1.0),
        _quality(E.ExpectColumnValuesToBeBetween, "thermal values are plausible counts", t, column="thermal_min",
                 min_value=t.thermal_value_min, max_value=t.thermal_value_max),
        _quality(E.ExpectColumnValuesToBeBetween, "thermal values are plausible counts", t, column="thermal_max",
                 min_value=t.thermal_value_min, max_value=t.thermal_value_max),
        _quality(E.ExpectColumnPairValuesAToBeGreaterThanB, "thermal frames are not flat (dead sensor)", t,
                 column_A="thermal_max", column_B="thermal_min", or_equal=False,
                 ignore_row_if="either_value_is_missing"),
        _quality(E.ExpectColumnValuesToBeBetween, "IMU rate is plausible where a sample has IMU", t,
                 column="imu_rate_hz", min_value=t.imu_rate_hz_min, max_value=t.imu_rate_hz_max,
                 row_condition=_is("has_imu", True)),
        _quality(E.ExpectColumnValuesToBeBetween, "the IMU track has no gap in a window", t,
                 column="imu_max_gap_ms", min_value=0.0, max_value=t.imu_max_gap_ms),
    ]  # fmt: skip
    # pairing: each stream's paired item lies within its tolerance of the clip's first video frame
    lag = t.video_start_lag_ms
    tol = t.sync_tolerance_ms("video")
    ex += [
        _quality(E.ExpectColumnValuesToBeBetween, "the first frame is at most one frame period into its clip", t,
                 column="sync_err_video_ms", min_value=-tol, max_value=tol, row_condition=Column("clip_start_s") > 0),
        _quality(E.ExpectColumnValuesToBeBetween, "the camera starts at most video_start_lag_ms late", t,
                 column="sync_err_video_ms", min_value=-tol, max_value=lag, row_condition=_is("clip_start_s", 0.0)),
    ]  # fmt: skip
    for stream in SYNC_STREAMS[1:]:
        tol = t.sync_tolerance_ms(stream)
        ex.append(
            _quality(E.ExpectColumnValuesToBeBetween, f"{stream} is paired within {tol:.3g} ms", t,
                     column=f"sync_err_{stream}_ms", min_value=-tol, max_value=tol)
        )  # fmt: skip
    return _suite(INDEX, ex)


def rejects_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    return _suite(REJECTS, [
        _exact(E.ExpectTableColumnsToMatchOrderedList, "rejects columns are schemas/tables.py:REJECTS_SCHEMA",
               column_list=list(REJECTS_SCHEMA.names)),
        *(_exact(E.ExpectColumnValuesToNotBeNull, f"every reject has a {c}", column=c)
          for c in ("source", "reason", "detail")),
        _exact(E.ExpectColumnValuesToBeInSet, "reasons are codes of schemas/reasons.py",
               column="reason", value_set=sorted(r.value for r in RejectReason)),
        _exact(E.ExpectColumnValuesToBeInSet, "a modality reject names a known modality",
               column="modality", value_set=list(modalities.NAMES)),
        _exact(E.ExpectColumnValuesToNotBeNull, "a modality reject names its sample",
               column="key", row_condition=Column("modality").is_not_null()),
        _exact(E.ExpectColumnValuesToMatchRegex, "reject keys are sample keys", column="key", regex=KEY_REGEX),
        _exact(E.ExpectColumnPairValuesAToBeGreaterThanB, "a rejected window does not end before it starts",
               column_A="end_s", column_B="start_s", or_equal=True, ignore_row_if="either_value_is_missing"),
    ])  # fmt: skip


def clips_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    lo, hi = t.clip_duration_s - t.clip_duration_tol_s, t.clip_duration_s + t.clip_duration_tol_s
    return _suite(CLIPS, [
        _exact(E.ExpectColumnPairValuesToBeEqual, "a sample sits in a shard of its own split",
               column_A="split", column_B="shard_split"),
        _exact(E.ExpectColumnValuesToBeBetween, f"clips last exactly {t.clip_duration_s:g} s (recordings)",
               column="clip_duration_s", min_value=lo, max_value=hi),
    ])  # fmt: skip


def shards_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    return _suite(SHARDS, [
        _exact(E.ExpectColumnValuesToMatchRegex, "shard files are named {split}-NNNNNN.tar", column="shard",
               regex=SHARD_REGEX),
        _exact(E.ExpectColumnPairValuesToBeEqual, "a shard holds exactly the samples the index lists for it",
               column_A="tar_samples", column_B="index_samples"),
        _exact(E.ExpectColumnPairValuesToBeEqual, "sizes.json counts the samples in each shard",
               column_A="tar_samples", column_B="listed_samples"),
        _exact(E.ExpectColumnPairValuesToBeEqual, "a shard holds exactly the members the index hashes",
               column_A="tar_members", column_B="index_members"),
        _exact(E.ExpectColumnValuesToBeInSet, "every member's content matches its sha256 in the index",
               column="unmatched_members", value_set=[0]),
    ])  # fmt: skip


def sessions_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    return _suite(SESSIONS, [
        _exact(E.ExpectColumnValuesToBeUnique, "one row per session", column="session"),
        _exact(E.ExpectColumnValuesToBeInSet, "a session is in one split only (split by session, never by clip)",
               column="n_splits", value_set=[1]),
    ])  # fmt: skip


def build_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    return _suite(BUILD, [
        _exact(E.ExpectTableRowCountToEqual, "one build row", value=1),
        _exact(E.ExpectColumnPairValuesToBeEqual, "the index has the manifest's sample count",
               column_A="index_rows", column_B="samples"),
        _exact(E.ExpectColumnPairValuesToBeEqual, "rejects.parquet has the manifest's window rejects",
               column_A="window_reject_rows", column_B="window_rejects"),
        _exact(E.ExpectColumnPairValuesToBeEqual, "rejects.parquet has the manifest's reject rows",
               column_A="rejects_rows", column_B="reject_rows"),
        _exact(E.ExpectColumnPairValuesToBeEqual, "every planned window is a sample or a window reject",
               column_A="accounted", column_B="windows_planned"),
        _exact(E.ExpectColumnMaxToBeBetween, f"at most {t.max_reject_rate:.0%} of planned windows are rejected",
               column="reject_rate", min_value=0.0, max_value=t.max_reject_rate),
    ])  # fmt: skip


def columns_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    return _suite(COLUMNS, [
        _exact(E.ExpectColumnValuesToBeInSet, "numbers are finite (absent is null, never NaN or inf)",
               column="nonfinite", value_set=[0]),
    ])  # fmt: skip


def build_suites(t: QualityThresholds | None = None) -> dict[str, gx.ExpectationSuite]:
    """Every suite, by the name of the table it validates."""
    t = t or QualityThresholds()
    makers = (index_suite, rejects_suite, clips_suite, shards_suite, sessions_suite, build_suite, columns_suite)
    return {s.name: s for s in (make(t) for make in makers)}


__all__ = [
    "QualityThresholds",
    "build_suites",
    "SUITES",
    "ROW_ID",
    "CLIPS_COLUMNS",
    "SHARDS_COLUMNS",
    "SESSIONS_COLUMNS",
    "BUILD_COLUMNS",
    "COLUMNS_COLUMNS",
    "MEMBERS",
]
