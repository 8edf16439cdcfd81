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
| `reasons`  | derived: `REASONS_COLUMNS`              | reject reason code (rows, rate and its bound)   |
| `columns`  | derived: `COLUMNS_COLUMNS`              | float column of index/rejects (non-finite count)|

Every expectation carries ``meta["rule"]``, the promise it checks in words, and ``meta["kind"]``:
``structure`` rules are exact (one bad row fails the dataset); ``rate`` rules bound how often a reject reason
occurs; ``quality`` rules (pairing within the stream's own frame period) tolerate a few outliers (``mostly``).

Filters on samples, gates on datasets: a per-sample quality figure beyond its threshold (a silent window, a
black frame) is not a gate failure but a reject with a reason, made by ``transforms/filters.py`` during the
build; the gate fails once a reason's rate passes its bound. Input-level rows (key null) are inputs that
could not be used, or repairs of one modality's file (a duplicated IMU row): reported, never rated.
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from schemas import modalities
from schemas.config import StrictConfig
from schemas.modalities import MEMBERS
from schemas.reasons import RejectReason
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA, member_column
from transforms.filters import FilterThresholds

# GX reads this when a context is created; set before the import so no usage statistics are ever sent.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
from great_expectations.expectations.row_conditions import Column  # noqa: E402

E = gx.expectations

INDEX, REJECTS, CLIPS, SHARDS, SESSIONS, BUILD, REASONS, COLUMNS = (
    "index", "rejects", "clips", "shards", "sessions", "build", "reasons", "columns",
)  # fmt: skip
SUITES = (INDEX, REJECTS, CLIPS, SHARDS, SESSIONS, BUILD, REASONS, COLUMNS)

#: Column that names a row of each table in failure reports.
ROW_ID = {INDEX: "key", REJECTS: "source", CLIPS: "key", SHARDS: "shard", SESSIONS: "session",
          BUILD: "version", REASONS: "reason", COLUMNS: "column"}  # fmt: skip

#: Streams paired with the clip, and their pairing error in the stream's own frame periods (null when absent).
PAIRED_STREAMS = ("video", "depth", "thermal", "imu")
CLIPS_COLUMNS = (
    "key", "session", "split", "shard", "shard_split", "layout", "clip_duration_s", "clip_start_s",
    "sync_err_video_ms",  # the first frame's lag into its clip (the first window: the camera's start lag)
    *(f"sync_{s}_periods" for s in PAIRED_STREAMS),  # sync_err_<s>_ms / <s>_frame_period_ms (IMU: 1/imu_rate_hz)
)  # fmt: skip
REASONS_COLUMNS = (
    "reason",  # every code of schemas/reasons.py, one row each, present or not
    "window_rows",  # rows of rejects.parquet with this reason that reject a whole window (the sample is lost)
    "modality_rows",  # ... that reject one modality of a kept sample
    "input_rows",  # ... without a sample key: a whole input, or an input-level repair of one modality's file
    "rate",  # (window_rows + modality_rows) / windows planned
    "max_rate",  # the gate's bound for this reason (QualityThresholds.reason_rate)
)
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

# Pairing tolerances are in each stream's own frame periods (``<stream>_frame_period_ms`` in the index): a
# 15 fps webcam's first frame in a window lies up to 66.7 ms in, a 60 fps camera's up to 16.7 ms. The margins
# above one period (video: the first frame is less than one period in) or half a period (depth and thermal:
# the nearest frame) cover timestamp rounding and capture jitter.
VIDEO_SYNC_PERIODS = 1.05
SIDE_SYNC_PERIODS = 0.55
IMU_SYNC_PERIODS = 1.05  # nearest sample; one dropped sample moves it a full period
#: Reasons a window gets at a recording's edges by design (the 5 s IMU window or the audio reaching past the
#: track), not because the input is bad: bounded by ``edge_reason_rate`` (default: not bounded).
EDGE_REASONS = frozenset({RejectReason.IMU_OUT_OF_RANGE.value, RejectReason.AUDIO_OUT_OF_RANGE.value})
MEL_HOP_MS = 10.0  # the audio cut is on the 16 kHz grid; half a mel hop is far below what a listener notices


class QualityThresholds(StrictConfig):
    """The dataset gate's bounds: structure is exact; reject rates per reason and overall are bounded.

    Per-sample figures are not gated here: the filters (``transforms/filters.py``, ``FilterThresholds``)
    turn a figure beyond its threshold into a reject with a reason, and the gate bounds how often each
    reason occurs. Strict (``schemas/config.py``): a typo or a wrong type raises ``ConfigError`` naming the key.
    """

    mostly: float = Field(0.98, gt=0, le=1, description="share of samples the pairing (sync) rules must hold for")
    min_samples: int = Field(1, ge=0, description="the dataset has at least this many samples")
    # Rates are rows of rejects.parquet that name a sample (window or modality rejects) over planned windows.
    # A window reject loses the sample; a modality reject keeps it without that modality. One silent video
    # among a few good ones is a normal dataset: audio_silent is bounded per reason, not per sample.
    max_reject_rate: float = Field(0.2, ge=0, le=1, description="planned windows rejected whole, at most")
    max_reason_rate: float = Field(
        0.5, ge=0, le=1, description="windows rejected (whole or one modality) for any one reason, at most"
    )
    # A clip's 5 s IMU window, or its audio, reaches past a recording's edges at its first and last clips by
    # design; in a short recording those are most of its windows. Such reasons get this bound instead.
    edge_reason_rate: float = Field(
        1.0, ge=0, le=1, description=f"bound for the edge reasons ({', '.join(sorted(EDGE_REASONS))}), at most"
    )
    reason_rates: dict[str, float] = Field(
        default_factory=dict,
        description='per-reason bounds overriding max_reason_rate/edge_reason_rate, e.g. {"audio_silent": 0.1}',
    )
    # pairing, in the stream's own frame periods (audio: on the 16 kHz grid, in ms)
    sync_video_periods: float = Field(
        VIDEO_SYNC_PERIODS, ge=0, description="first frame's lag into its clip, in video frame periods"
    )
    sync_depth_periods: float = Field(
        SIDE_SYNC_PERIODS, ge=0, description="|depth pairing error| in depth frame periods"
    )
    sync_thermal_periods: float = Field(
        SIDE_SYNC_PERIODS, ge=0, description="|thermal pairing error| in thermal frame periods"
    )
    sync_imu_periods: float = Field(IMU_SYNC_PERIODS, ge=0, description="|IMU centre error| in IMU sample periods")
    sync_audio_ms: float = Field(MEL_HOP_MS / 2, ge=0, description="|audio pairing error| (ms)")
    # A camera that starts after the session's clock zero leaves the first window's first frame late by
    # its start lag; that window gets this bound instead of sync_video_periods.
    video_start_lag_ms: float = Field(500.0, ge=0, description="first window's first frame may lag this much (ms)")
    # clips (non-still layouts)
    clip_duration_s: float = Field(2.0, gt=0, description="clip length of recordings (s)")
    clip_duration_tol_s: float = Field(1e-6, ge=0, description="tolerance on the clip length (s)")

    @field_validator("reason_rates")
    @classmethod
    def _known_reasons(cls, value: dict[str, float]) -> dict[str, float]:
        known = {r.value for r in RejectReason}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown reject reason(s) {', '.join(unknown)} (codes of schemas/reasons.py)")
        bad = sorted(k for k, v in value.items() if not 0 <= v <= 1)
        if bad:
            raise ValueError(f"rates must be within [0, 1]: {', '.join(bad)}")
        return dict(sorted(value.items()))

    def reason_rate(self, reason: str) -> float:
        """The bound on one reason's rate: its own, else ``edge_reason_rate`` or ``max_reason_rate``."""
        if reason in self.reason_rates:
            return float(self.reason_rates[reason])
        return float(self.edge_reason_rate if reason in EDGE_REASONS else self.max_reason_rate)

    @classmethod
    def from_file(cls, path: os.PathLike | str) -> QualityThresholds:
        """The ``gate`` part of a thresholds file (see :class:`Thresholds`)."""
        return Thresholds.from_file(path).gate


class Thresholds(StrictConfig):
    """A ``--thresholds`` file: the per-sample filters and the dataset gate, each optional.

        {"filters": {"frame_sharpness_min": 5.0}, "gate": {"reason_rates": {"audio_silent": 0.3}}}

    JSON or YAML. ``bindset build`` takes ``filters`` into ``BuildConfig.filters`` (part of the unit
    fingerprint: a changed filter rebuilds the units) and ``gate`` into the validation after the build;
    ``bindset validate`` reads only ``gate``.
    """

    filters: FilterThresholds = Field(default_factory=FilterThresholds, description="per-sample quality filters")
    gate: QualityThresholds = Field(default_factory=QualityThresholds, description="dataset gate bounds")


# ------------------------------------------------------------------------------------------ helpers


def _meta(rule: str, kind: str) -> dict:
    return {"rule": rule, "kind": kind}


# `notes` shows the rule on the suite pages of Data Docs; `meta` carries it into the results.
def _exact(cls, rule: str, **kw):
    return cls(meta=_meta(rule, "structure"), notes=rule, **kw)


def _quality(cls, rule: str, t: QualityThresholds, **kw):
    return cls(meta=_meta(rule, "quality"), notes=rule, mostly=t.mostly, **kw)


def _rate(cls, rule: str, **kw):
    return cls(meta=_meta(rule, "rate"), notes=rule, **kw)


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
    # audio pairing, on the 16 kHz grid (the other streams' pairing is in frame periods: the clips suite)
    tol = t.sync_audio_ms
    ex.append(_quality(E.ExpectColumnValuesToBeBetween, f"audio is paired within {tol:g} ms", t,
                       column="sync_err_audio_ms", min_value=-tol, max_value=tol))  # fmt: skip
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
        # key null: a whole input (modality null), or one modality's file as a whole (a repair such as a
        # dropped duplicate IMU row, or a stream unusable for every window); such rows have no time range.
        # key set: a window (modality null) or one modality of it.
        _exact(E.ExpectColumnValuesToNotBeNull, "a modality reject of a time range names its sample",
               column="key", row_condition=Column("modality").is_not_null() & Column("start_s").is_not_null()),
        _exact(E.ExpectColumnValuesToMatchRegex, "reject keys are sample keys", column="key", regex=KEY_REGEX),
        _exact(E.ExpectColumnPairValuesAToBeGreaterThanB, "a rejected window does not end before it starts",
               column_A="end_s", column_B="start_s", or_equal=True, ignore_row_if="either_value_is_missing"),
    ])  # fmt: skip


def clips_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    lo, hi = t.clip_duration_s - t.clip_duration_tol_s, t.clip_duration_s + t.clip_duration_tol_s
    v, lag = t.sync_video_periods, t.video_start_lag_ms
    ex = [
        _exact(E.ExpectColumnPairValuesToBeEqual, "a sample sits in a shard of its own split",
               column_A="split", column_B="shard_split"),
        _exact(E.ExpectColumnValuesToBeBetween, f"clips last exactly {t.clip_duration_s:g} s (recordings)",
               column="clip_duration_s", min_value=lo, max_value=hi),
        # pairing: each stream's paired item within its tolerance, in the stream's own frame periods
        _quality(E.ExpectColumnValuesToBeBetween, f"the first frame is at most {v:g} of its frame periods into "
                 "its clip", t, column="sync_video_periods", min_value=0.0, max_value=v,
                 row_condition=Column("clip_start_s") > 0),
        _quality(E.ExpectColumnValuesToBeBetween, f"the camera starts at most {lag:g} ms late", t,
                 column="sync_err_video_ms", min_value=0.0, max_value=lag, row_condition=_is("clip_start_s", 0.0)),
    ]  # fmt: skip
    for stream in PAIRED_STREAMS[1:]:
        tol = float(getattr(t, f"sync_{stream}_periods"))
        ex.append(_quality(E.ExpectColumnValuesToBeBetween, f"{stream} is paired within {tol:g} of its periods", t,
                           column=f"sync_{stream}_periods", min_value=-tol, max_value=tol))  # fmt: skip
    return _suite(CLIPS, ex)


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
        _rate(E.ExpectColumnMaxToBeBetween, f"at most {t.max_reject_rate:.0%} of planned windows are rejected",
              column="reject_rate", min_value=0.0, max_value=t.max_reject_rate),
    ])  # fmt: skip


def reasons_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    return _suite(REASONS, [
        _exact(E.ExpectColumnValuesToBeUnique, "one row per reason code", column="reason"),
        _rate(E.ExpectColumnPairValuesAToBeGreaterThanB, "no reject reason occurs more often than its bound "
              f"(default {t.max_reason_rate:.0%} of planned windows; gate.reason_rates overrides)",
              column_A="max_rate", column_B="rate", or_equal=True),
    ])  # fmt: skip


def columns_suite(t: QualityThresholds) -> gx.ExpectationSuite:
    return _suite(COLUMNS, [
        _exact(E.ExpectColumnValuesToBeInSet, "numbers are finite (absent is null, never NaN or inf)",
               column="nonfinite", value_set=[0]),
    ])  # fmt: skip


def build_suites(t: QualityThresholds | None = None) -> dict[str, gx.ExpectationSuite]:
    """Every suite, by the name of the table it validates."""
    t = t or QualityThresholds()
    makers = (
        index_suite,
        rejects_suite,
        clips_suite,
        shards_suite,
        sessions_suite,
        build_suite,
        reasons_suite,
        columns_suite,
    )
    return {s.name: s for s in (make(t) for make in makers)}


__all__ = [
    "QualityThresholds",
    "Thresholds",
    "REASONS_COLUMNS",
    "PAIRED_STREAMS",
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
