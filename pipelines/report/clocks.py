"""The report's Clock sync section: what ``DATA/sync.parquet`` says about each stream's clock (issue 14).

``clock_sync`` turns the build's sync table (one row per session and stream, transforms/clockcheck.py
``SYNC_COLUMNS`` plus ``lag_s``), its ``clock_mismatch`` rejects and the manifest's ``config.clocks`` into a
``ClockSync`` of numbers and short strings; ``templates/_sync.html.j2`` lays it out. A dataset built with
``--clocks declared``, or before clocks were checked (no sync.parquet), gets one line instead of tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.report.charts import COLORS
from schemas import modalities as M
from schemas.reasons import RejectReason
from transforms.clockcheck import MIN_MISMATCH_S, STATUSES

SYNC_TABLE = "sync.parquet"
OFF_MAX_ROWS = 50  # mismatched / estimated streams listed, the worst first
#: |lag| histogram bin edges (ms): a frame period (33 ms at 30 fps) and the 100 ms mismatch floor are edges
LAG_EDGES_MS = (0.0, 5.0, 10.0, 20.0, 33.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, math.inf)
REFERENCE = M.VIDEO.name  # the reference stream: its row is its own clock, never estimated against itself
CLOCK_MISMATCH = RejectReason.CLOCK_MISMATCH.value
OFF_STATUSES = ("mismatch", "estimated")
DECLARED_LINE = (
    "Built with --clocks declared: no clock was checked against the content; every stream uses the clock its "
    "manifest declares."
)
NO_TABLE_LINE = (
    "This dataset has no sync.parquet (built before clocks were checked): every stream used its declared clock. "
    "Rebuild with --clocks verify or estimate to check them."
)
NO_ROWS_LINE = (
    "sync.parquet has no rows: no session here has streams whose clocks can be checked (stills, or no video to "
    "check them against)."
)


@dataclass(frozen=True)
class StreamStatus:
    """One stream kind (a modality): how many sessions' streams ended in each status, and what it cost."""

    stream: str
    color: str
    counts: dict[str, int]  # status -> streams, every status of STATUSES
    total: int
    reject_rows: int  # rejects.parquet rows of reason clock_mismatch for this modality (windows that lost it)
    reject_share: float  # reject_rows over the windows planned (0..1)
    reference: bool = False


@dataclass(frozen=True)
class OffStream:
    """A stream whose confident estimate disagrees with its declared clock (``mismatch`` or ``estimated``)."""

    session: str
    stream: str
    status: str
    declared_offset_ms: float
    estimated_offset_ms: float | None
    used_offset_ms: float
    declared_drift_ppm: float
    estimated_drift_ppm: float | None
    used_drift_ppm: float
    lag_ms: float  # the estimate minus the declared clock at the stream's middle
    confidence: float


@dataclass(frozen=True)
class LagBin:
    lo_ms: float
    hi_ms: float  # inf for the last bin
    count: int
    width: float  # the bar's length, 0..1 of the fullest bin
    over_floor: bool  # at or past the mismatch floor (transforms/clockcheck.py MIN_MISMATCH_S)

    @property
    def label(self) -> str:
        return f"≥ {self.lo_ms:g} ms" if math.isinf(self.hi_ms) else f"{self.lo_ms:g}–{self.hi_ms:g} ms"


@dataclass(frozen=True)
class ClockSync:
    """The section's figures; ``message`` alone when there is nothing to tabulate."""

    mode: str  # the build's --clocks, "?" when the manifest does not say
    message: str | None = None  # one line instead of the tables
    statuses: tuple[str, ...] = STATUSES
    streams: list[StreamStatus] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)  # status -> streams, all kinds
    sessions: int = 0
    windows_planned: int = 0
    reject_rows: int = 0  # clock_mismatch rows, all modalities
    reject_windows: int = 0  # windows that lost at least one modality as clock_mismatch
    off: list[OffStream] = field(default_factory=list)  # the worst OFF_MAX_ROWS
    off_total: int = 0
    lag_bins: list[LagBin] = field(default_factory=list)
    confident: int = 0  # confident estimates behind the histogram (reference rows excluded)
    lag_median_ms: float | None = None
    lag_max_ms: float | None = None
    floor_ms: float = MIN_MISMATCH_S * 1000.0

    @property
    def more(self) -> int:
        """Mismatched or estimated streams beyond the table's rows."""
        return max(self.off_total - len(self.off), 0)


def _lag_s(table: pd.DataFrame) -> pd.Series:
    """Each row's estimate minus its declared clock (s): ``lag_s`` (at the stream's middle) where the table has
    it, else the offsets' difference (tables of other writers)."""
    diff = table["estimated_offset_s"] - table["declared_offset_s"]
    if "lag_s" in table:
        return table["lag_s"].where(table["lag_s"].notna(), diff)
    return diff


def clock_sync(sync: pd.DataFrame | None, rejects: pd.DataFrame, manifest: dict, problem: str | None = None
               ) -> ClockSync:  # fmt: skip
    """The Clock sync section of a build.

    ``sync``: DATA/sync.parquet as a frame (None when the build has none); ``rejects``: rejects.parquet (with
    ``reason`` and ``modality``); ``manifest``: manifest.json (``config.clocks``, ``counts.windows_planned``);
    ``problem``: why sync.parquet could not be read, if it could not. Offsets are shown in ms, drift in ppm.
    """
    mode = str((manifest.get("config") or {}).get("clocks") or "?")
    if problem:
        return ClockSync(mode, f"sync.parquet could not be read ({problem}): no clock figures.")
    if mode == "declared":
        return ClockSync(mode, DECLARED_LINE)
    if sync is None:
        return ClockSync(mode, NO_TABLE_LINE)
    if not len(sync):
        return ClockSync(mode, NO_ROWS_LINE)

    planned = int((manifest.get("counts") or {}).get("windows_planned") or 0)
    mism = rejects[(rejects["reason"] == CLOCK_MISMATCH) & rejects["modality"].notna()]
    mism_rows = mism["modality"].value_counts()
    kinds = [n for n in M.NAMES if n in set(sync["stream"])]
    kinds += sorted(set(sync["stream"]) - set(kinds))  # a stream name outside the registry still shows
    by = sync.groupby(["stream", "status"]).size()
    streams = []
    for kind in kinds:
        counts = {s: int(by.get((kind, s), 0)) for s in STATUSES}
        rows = int(mism_rows.get(kind, 0))
        streams.append(StreamStatus(kind, COLORS.get(kind, "#64748b"), counts, int((sync["stream"] == kind).sum()),
                                    rows, rows / planned if planned else 0.0, kind == REFERENCE))  # fmt: skip
    totals = {s: int((sync["status"] == s).sum()) for s in STATUSES}

    lag = _lag_s(sync)
    off_mask = sync["status"].isin(OFF_STATUSES)
    off_rows = sync[off_mask].assign(lag_of_row=lag[off_mask], lag_abs=lag[off_mask].abs())
    off_rows = off_rows.sort_values(["lag_abs", "session", "stream"], ascending=[False, True, True], kind="stable")
    off = [_off(r) for r in off_rows.head(OFF_MAX_ROWS).itertuples(index=False)]

    confident = sync["estimated_offset_s"].notna() & (sync["stream"] != REFERENCE)
    lags_ms = np.abs(lag[confident].to_numpy(np.float64)) * 1000.0
    lags_ms = lags_ms[np.isfinite(lags_ms)]
    return ClockSync(
        mode=mode,
        streams=streams,
        totals=totals,
        sessions=int(sync["session"].nunique()),
        windows_planned=planned,
        reject_rows=len(mism),
        reject_windows=int(mism["key"].nunique()),
        off=off,
        off_total=int(off_mask.sum()),
        lag_bins=lag_histogram(lags_ms),
        confident=len(lags_ms),
        lag_median_ms=float(np.median(lags_ms)) if len(lags_ms) else None,
        lag_max_ms=float(lags_ms.max()) if len(lags_ms) else None,
    )


def lag_histogram(lags_ms: np.ndarray, edges: tuple[float, ...] = LAG_EDGES_MS) -> list[LagBin]:
    """Counts of |lag| (ms, finite, ≥ 0) in the bins [edges[i], edges[i+1]); the last bin is open-ended."""
    counts = [int(((lags_ms >= lo) & (lags_ms < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    top = max(counts, default=0)
    floor = MIN_MISMATCH_S * 1000.0
    return [LagBin(lo, hi, c, c / top if top else 0.0, lo >= floor)
            for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)]  # fmt: skip


def _ms(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x) * 1000.0


def _ppm(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _off(r) -> OffStream:
    return OffStream(str(r.session), str(r.stream), str(r.status), float(r.declared_offset_s) * 1000.0,
                     _ms(r.estimated_offset_s), float(r.used_offset_s) * 1000.0, float(r.declared_drift_ppm),
                     _ppm(r.estimated_drift_ppm), float(r.used_drift_ppm), float(r.lag_of_row) * 1000.0,
                     float(r.confidence))  # fmt: skip
