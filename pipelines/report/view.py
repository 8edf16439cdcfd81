"""The report's view model: everything the page shows, as numbers and short strings in dataclasses.

``load`` reads a finished build (manifest.json, index.parquet, rejects.parquet, and for the gallery the few
tar members it shows, through the storage seam's tar reader); ``build_view`` turns it into a ``ReportView``
that ``templates/report.html.j2`` lays out. Nothing here writes HTML. Work is bounded for big builds:
histograms see a deterministic random sample of the index, the timeline draws the first sessions only, and
tables keep their top rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.report import charts
from pipelines.report.charts import COLORS, Svg
from pipelines.report.clocks import SYNC_TABLE, ClockSync, clock_sync
from pipelines.report.fmt import data_uri, nbytes, num, pct, short
from schemas import modalities as M
from schemas.reasons import QUALITY_FILTER
from transforms.clockcheck import SYNC_COLUMNS

HIST_MAX_ROWS = 200_000  # index rows sampled for the histograms
TIMELINE_MAX_SESSIONS = 30
TABLE_MAX_ROWS = 15

KIND_COLORS = {"input": "#7f1d1d", "repair": "#64748b", "window": "#dc2626", "modality": "#f59e0b"}
KIND_NAMES = {"input": "whole input", "repair": "input repaired", "window": "whole window", "modality": "one modality"}
#: Reasons the per-sample quality filters give, shown together with their rate against the gate's bound.
FILTER_REASONS = frozenset(r.value for r in QUALITY_FILTER)
FILTER_DETAILS = 5  # detail lines shown per filter reason
SPLIT_COLORS = ("#3b6fb6", "#e07b24", "#3f9b57", "#8a5bb0")
REASON_PALETTE = ("#6366f1", "#0ea5e9", "#14b8a6", "#a855f7", "#64748b", "#ec4899", "#84cc16", "#f97316")
SECTIONS = (
    ("headline", "Overview"),
    ("rejects", "Rejects"),
    ("sync", "Clock sync"),
    ("timeline", "Timeline"),
    ("distributions", "Distributions"),
    ("gallery", "Gallery"),
)
_INDEX_LIGHT = ["key", "shard", "split", "session", "clip_start_s", "clip_end_s", *(m.has_column for m in M.REGISTRY)]
_SYNCED = tuple(m.name for m in M.REGISTRY if m.has_sync)

# (index column, title, unit, modality): one histogram each, in this order
DISTRIBUTIONS = (
    ("audio_rms_dbfs", "loudness", "dBFS", "audio"),
    ("audio_clipped_frac", "clipped samples", "fraction", "audio"),
    ("frame_brightness", "brightness", "0–255", "video"),
    ("frame_sharpness", "sharpness", "Laplacian var", "video"),
    ("frame_diff", "first vs last frame", "mean abs diff", "video"),
    ("depth_valid_frac", "depth valid pixels", "fraction", "depth"),
    ("thermal_range", "thermal range (max − min)", "raw units", "thermal"),
    ("imu_max_gap_ms", "largest IMU gap", "ms", "imu"),
    ("imu_rate_hz", "IMU input rate", "Hz", "imu"),
    *[(f"sync_err_{m}_ms", f"sync error: {m}", "ms", m) for m in _SYNCED],
)

# ------------------------------------------------------------------------------------------------ loading


@dataclass
class Dataset:
    """What the report reads of a build."""

    root: Path
    manifest: dict
    index: pd.DataFrame  # light columns of every row
    rejects: pd.DataFrame  # every row, plus "kind": input | repair | window | modality
    hist: dict[str, np.ndarray]  # numeric column -> values of the sampled rows (NaN kept)
    hist_rows: int  # rows behind ``hist``
    last_build: dict | None  # the last line of _work/builds.jsonl
    built_at: float  # manifest.json's mtime: when the build was committed
    reason_bounds: pd.DataFrame | None = None  # the gate's per-reason table (reason, rate, max_rate), if validated
    sync: pd.DataFrame | None = None  # sync.parquet (one row per session and stream); None: the build has none
    sync_problem: str | None = None  # why sync.parquet could not be read
    shards_at: storage.Location | None = None  # where the shards are when not root/shards (object storage)
    shown_root: str | None = None  # DATA as the page names it (a URL), when root is a local copy


def reject_kind(key, modality) -> str:
    """What a rejects.parquet row stands for, from its key and modality (schemas/expectations.py, rejects suite).

    input (no key, no modality): a whole input; repair (no key, a modality): one modality's file repaired or
    partly dropped as a whole, such as a duplicated IMU row (no time range, never rated); window (a key, no
    modality): the sample is lost; modality (a key and a modality): one modality of a kept sample.
    """
    keyed = isinstance(key, str)
    if isinstance(modality, str):
        return "modality" if keyed else "repair"
    return "window" if keyed else "input"


def read_reason_bounds(data: Path, version) -> pd.DataFrame | None:
    """The gate's per-reason table (reason, rate, max_rate) that ``bindset validate`` wrote beside
    DATA/quality/validation.json (``quality/tables/reasons.parquet``, pipelines/validate.py), or None when
    this version was not validated (no validation.json, or one of another dataset version)."""
    vpath, tpath = data / "quality" / "validation.json", data / "quality" / "tables" / "reasons.parquet"
    if not (vpath.exists() and tpath.exists()):
        return None
    try:
        if json.loads(vpath.read_text()).get("dataset_version") != version:
            return None  # a stale validation of an earlier build: its rates are not this build's
        table = pq.read_table(tpath, columns=["reason", "rate", "max_rate"]).to_pandas()
    except (ValueError, KeyError, OSError, pa.ArrowException):
        return None  # unreadable: the page says "not validated" rather than failing
    return table.set_index("reason")


def load(data: Path, seed: int) -> Dataset:
    """Read a finished build. Raises FileNotFoundError when DATA has no manifest.json (no finished build)."""
    mpath = data / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{data}: no manifest.json, so no finished build to report on")
    manifest = json.loads(mpath.read_text())
    ipath = data / "index.parquet"
    index = pq.read_table(ipath, columns=_INDEX_LIGHT).to_pandas()
    rpath = data / "rejects.parquet"
    rejects = (
        pq.read_table(rpath).to_pandas()
        if rpath.exists()
        else pd.DataFrame(columns=["source", "session", "key", "start_s", "end_s", "modality", "reason", "detail"])
    )
    rejects["kind"] = [reject_kind(k, m) for k, m in zip(rejects["key"], rejects["modality"], strict=True)]

    numeric = [f.name for f in pq.read_schema(ipath) if pa.types.is_floating(f.type)]
    numeric = [c for c in numeric if c not in ("clip_start_s", "clip_end_s", "frame0_t_s", "frame1_t_s")]
    n = len(index)
    take = None
    if n > HIST_MAX_ROWS:
        take = np.sort(np.random.default_rng(seed).choice(n, HIST_MAX_ROWS, replace=False))
    hist = {}
    for c in numeric:  # one column at a time keeps peak memory at one column
        col = pq.read_table(ipath, columns=[c]).column(0)
        if take is not None:
            col = col.take(take)
        hist[c] = col.to_numpy(zero_copy_only=False).astype(np.float64)

    last_build = None
    builds = data / "_work" / "builds.jsonl"
    if builds.exists():
        lines = [ln for ln in builds.read_text().splitlines() if ln.strip()]
        if lines:
            last_build = json.loads(lines[-1])
    bounds = read_reason_bounds(data, manifest.get("version"))
    sync, sync_problem = read_sync(data, manifest)
    return Dataset(data, manifest, index, rejects, hist, min(n, HIST_MAX_ROWS), last_build, mpath.stat().st_mtime,
                   bounds, sync, sync_problem)  # fmt: skip


def read_sync(data: Path, manifest: dict | None = None) -> tuple[pd.DataFrame | None, str | None]:
    """DATA/sync.parquet, read beside index.parquet under the same committed manifest (the commit writes it
    and the manifest's ``sync`` entry gives its sha256): ``(table, None)``, ``(None, None)`` when there is
    none (a dataset built before clocks were checked), or ``(None, why)`` when it is unreadable or is not
    the table this build committed."""
    path = data / SYNC_TABLE
    if not path.exists():
        return None, None
    want = ((manifest or {}).get("sync") or {}).get("sha256")
    if want and hashlib.sha256(path.read_bytes()).hexdigest() != want:
        return None, "sync.parquet is not the table this build committed (sha256 differs from manifest.json)"
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:  # the page says so rather than failing
        return None, f"{type(exc).__name__}: {short(exc, 160)}"
    missing = [c for c in SYNC_COLUMNS if c not in table.column_names]
    if missing:
        return None, f"no column {', '.join(missing)}"
    return table.to_pandas(), None


# --------------------------------------------------------------------------------------------- the view


@dataclass(frozen=True)
class Header:
    version: str
    layout: str
    code_version: str | None
    built: str  # "built 2026-01-01 12:00 UTC on beam in 12.3 s (…)"
    root: str


@dataclass(frozen=True)
class StatCard:
    label: str
    value: str
    detail: str
    style: str = "plain"  # plain | badge | mono
    badge: str = ""  # badge class: ok | bad | warn | muted


@dataclass(frozen=True)
class Validation:
    status: str
    badge: str  # ok | bad | warn | muted
    expectations: int | None
    failed: int
    published: bool | None
    data_docs: str | None  # relative link from DATA/quality/


@dataclass(frozen=True)
class Coverage:
    modality: str
    color: str
    present: int
    of: int
    top_reason: str | None  # the commonest reason it is missing


@dataclass(frozen=True)
class SplitShare:
    split: str
    color: str
    samples: int
    sessions: int
    share: float  # of all samples, 0..1


@dataclass(frozen=True)
class Finding:
    severity: str  # bad | warn | ok
    text: str
    strong: str = ""  # a word shown in bold between ``text`` and ``after``
    after: str = ""


@dataclass(frozen=True)
class Overview:
    samples: int
    stats: list[StatCard]
    validation: Validation
    coverage: list[Coverage]
    splits: list[SplitShare]
    findings: list[Finding]


@dataclass(frozen=True)
class ReasonRow:
    """One reject reason code: where it struck, how often, an example. The data behind the rejects views."""

    reason: str
    rows: int
    by_kind: dict[str, int]  # input | window | modality -> rows
    by_where: dict[str, int]  # "(input)", "(repair)", "(window)" and each modality -> rows
    sessions: int
    example: str
    rate: float | None = None  # the gate's rate (window + modality rows / windows planned); None: not validated
    bound: float | None = None  # the gate's bound for it

    @property
    def over(self) -> bool:
        return self.rate is not None and self.bound is not None and self.rate > self.bound


@dataclass(frozen=True)
class FilterRow:
    """One quality-filter reason (schemas/reasons.py QUALITY_FILTER): its rejects, rate, bound and detail lines."""

    reason: str
    where: str  # the modality it rejected, or "(window)": a whole window (a frame filter: the anchor image)
    rows: int  # rows of rejects.parquet with this reason
    sessions: int
    rate: float | None
    bound: float | None
    details: list[tuple[str, str]]  # (sample key, the filter's figure against its threshold), first few

    @property
    def over(self) -> bool:
        return self.rate is not None and self.bound is not None and self.rate > self.bound


@dataclass(frozen=True)
class QualityFilters:
    rows: list[FilterRow]  # filter reasons that rejected something, most rows first
    total: int  # rejects.parquet rows of all filter reasons
    validated: bool  # rates and bounds are the gate's (quality/tables/reasons.parquet of this version)


@dataclass(frozen=True)
class SessionRejects:
    session: str  # "(none)" for rejects without a session
    rows: int
    reasons: list[tuple[str, int]]


@dataclass(frozen=True)
class Rejects:
    total: int
    reasons: list[ReasonRow]  # every reason, most rows first
    where_columns: list[str]  # "(input)", "(window)", then the modalities
    where_max: int  # the largest cell, for the heat shading
    by_reason_chart: Svg | None
    by_modality_chart: Svg | None
    reason_colors: dict[str, str]  # modality rejects: reason -> colour
    sessions: list[SessionRejects]
    more_reasons: int  # reasons beyond the table's rows
    filters: QualityFilters = field(default_factory=lambda: QualityFilters([], 0, False))
    validated: bool = False  # the reasons table carries the gate's rates and bounds
    table_rows: int = TABLE_MAX_ROWS

    def shade(self, value: int) -> str:
        return f"{0.08 + 0.5 * value / max(self.where_max, 1):.2f}"


@dataclass(frozen=True)
class Timeline:
    svg: Svg | None
    message: str | None  # instead of a chart: stills, or no sessions
    shown: int
    sessions: int


@dataclass(frozen=True)
class HistCard:
    column: str
    title: str
    unit: str
    modality: str
    color: str
    chart: charts.Histogram


@dataclass(frozen=True)
class Tile:
    """One gallery tile: an image member, or a dashed box naming a missing modality (and why)."""

    modality: str
    member: str | None = None
    src: str | None = None  # data URI
    alt: str = ""
    caption: str = ""
    pixelated: bool = False
    reason: str | None = None  # missing: the reject reason, if any


@dataclass(frozen=True)
class SampleCard:
    key: str
    members: list[str] = field(default_factory=list)
    split: str = ""
    session: str = ""
    clip: str = ""  # "0–2 s"
    label: str | None = None
    not_found_in: str | None = None  # the shard, when none of its members were found
    tiles: list[Tile] = field(default_factory=list)
    imu: list[Svg] | None = None
    imu_caption: str = ""
    imu_missing: Tile | None = None
    text: str | None = None
    text_missing: Tile | None = None
    sync: str = ""
    error: str | None = None  # cannot render: the exception, in one line
    imu_member: str = M.IMU.member
    text_member: str = M.TEXT.member


@dataclass(frozen=True)
class ReportView:
    title: str
    header: Header
    sections: tuple[tuple[str, str], ...]
    overview: Overview
    rejects: Rejects
    sync: ClockSync
    timeline: Timeline
    distributions: list[HistCard]
    hist_rows: int
    samples: int
    gallery: list[SampleCard]
    gallery_lead: str
    kind_colors: dict[str, str] = field(default_factory=lambda: dict(KIND_COLORS))
    kind_names: dict[str, str] = field(default_factory=lambda: dict(KIND_NAMES))
    colors: dict[str, str] = field(default_factory=lambda: dict(COLORS))


def build_view(ds: Dataset, *, gallery: int, seed: int) -> ReportView:
    m = ds.manifest
    return ReportView(
        title=f"bindset quality · {m.get('version', '?')}",
        header=_header(ds),
        sections=SECTIONS,
        overview=_overview(ds),
        rejects=_rejects(ds),
        sync=clock_sync(ds.sync, ds.rejects, ds.manifest, ds.sync_problem),
        timeline=_timeline(ds),
        distributions=_distributions(ds),
        hist_rows=ds.hist_rows,
        samples=len(ds.index),
        gallery=_gallery(ds, gallery, seed),
        gallery_lead=f"{min(gallery, len(ds.index))} random samples (seed {seed}), read back from the shards, "
        "every modality they carry.",
    )


def _header(ds: Dataset) -> Header:
    m = ds.manifest
    built = f"built {datetime.fromtimestamp(ds.built_at, UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    if ds.last_build:
        b = ds.last_build
        built += (
            f" on {b.get('engine', '?')} in {num(b.get('seconds', float('nan')))} s "
            f"({num(b.get('processed', 0))} unit(s) processed, {num(b.get('reused', 0))} reused)"
        )
    return Header(str(m.get("version", "?")), str(m.get("layout", "?")), m.get("code_version") or None, built,
                  ds.shown_root or str(ds.root.resolve()))  # fmt: skip


# -------------------------------------------------------------------------------------------- overview


def _overview(ds: Dataset) -> Overview:
    m, idx, rej = ds.manifest, ds.index, ds.rejects
    counts = m.get("counts", {})
    n = len(idx)
    planned = int(counts.get("windows_planned", n + int((rej["kind"] == "window").sum())))
    wrej = int(counts.get("window_rejects", (rej["kind"] == "window").sum()))
    by_split = idx.groupby("split").agg(samples=("key", "size"), sessions=("session", "nunique"))
    input_sessions = set(rej.loc[rej["kind"] == "input", "session"].dropna())
    kinds = rej["kind"].value_counts()
    if ds.shards_at is not None:  # on object storage: listed and sized through the seam
        tars = [n for n in storage.listdir(ds.shards_at) if n.endswith(".tar")]
        shards = [ds.shards_at / n for n in tars]
        shard_bytes = sum(storage.stat(p).size for p in shards)
    else:
        shards = sorted((ds.root / "shards").glob("*.tar"))
        shard_bytes = sum(p.stat().st_size for p in shards)

    def split_text(col):
        return " · ".join(f"{s} {num(int(r[col]))}" for s, r in by_split.iterrows()) or "–"

    v = _validation(m.get("validation") or {}, ds.root)
    rejected_whole = f" · {len(input_sessions)} rejected whole" if input_sessions else ""
    stats = [
        StatCard("Samples", num(n), split_text("samples")),
        StatCard("Sessions", num(idx["session"].nunique()), split_text("sessions") + rejected_whole),
        StatCard("Windows planned", num(planned), f"{num(wrej)} window rejects"),
        StatCard("Window reject rate", pct(wrej, planned), f"{num(planned - wrej)} windows kept"),
        StatCard("Reject rows", num(len(rej)), " · ".join(f"{num(int(kinds.get(k, 0)))} {k}" for k in KIND_NAMES)),
        StatCard("Shards", num(len(shards)), f"{nbytes(shard_bytes)} on disk"),
        StatCard("Validation", v.status, "", style="badge", badge=v.badge),
        StatCard(
            "Dataset version",
            str(m.get("version", "?")),
            f"code {m.get('code_version', '?')} · {m.get('layout', '?')}",
            style="mono",
        ),  # fmt: skip
    ]
    mod_rej = rej[rej["kind"] == "modality"]
    coverage = []
    for mod in M.REGISTRY:
        have = int(idx[mod.has_column].sum()) if n else 0
        top = mod_rej.loc[mod_rej["modality"] == mod.name, "reason"].value_counts()
        coverage.append(Coverage(mod.name, COLORS[mod.name], have, n, str(top.index[0]) if len(top) else None))
    splits = [
        SplitShare(
            str(s), SPLIT_COLORS[i % len(SPLIT_COLORS)], int(r["samples"]), int(r["sessions"]), r["samples"] / max(n, 1)
        )  # fmt: skip
        for i, (s, r) in enumerate(by_split.iterrows())
    ]
    findings = _findings(ds, n, planned, wrej, by_split, input_sessions)
    return Overview(n, stats, v, coverage, splits, findings)


def _validation(v: dict, root: Path) -> Validation:
    """manifest.json "validation" (written by pipelines/validate.py)."""
    status = str(v.get("status", "absent"))
    badge = {"passed": "ok", "failed": "bad", "error": "bad"}.get(status, "muted" if status == "not_run" else "warn")
    expectations = v["expectations"] if isinstance(v.get("expectations"), int) else None
    failed = len(v.get("failed_expectations") or [])
    href = None
    if isinstance(v.get("data_docs"), str):  # a relative link to a local file, from DATA/quality/
        href = Path(os.path.relpath(root / v["data_docs"], root / "quality")).as_posix()
    return Validation(status, badge, expectations, failed, v.get("published"), href)


def _findings(ds: Dataset, n, planned, wrej, by_split, input_sessions) -> list[Finding]:
    out: list[Finding] = []
    validation = ds.manifest.get("validation") or {}
    if validation.get("status") in ("failed", "error"):
        failed = validation.get("failed_expectations") or []
        out.append(Finding("bad", "Validation ", str(validation["status"]), f": {len(failed)} expectation(s) failed."))
        for f in failed[:5]:
            if isinstance(f, dict):
                where = f" ({f['column']})" if f.get("column") else ""
                out.append(Finding("bad", f"{f.get('suite', '?')}{where}: {f.get('rule') or f.get('expectation')}"))
    if input_sessions:
        names = ", ".join(sorted(input_sessions)[:5]) + (" …" if len(input_sessions) > 5 else "")
        reasons = ds.rejects.loc[ds.rejects["kind"] == "input", "reason"].value_counts()
        why = ", ".join(f"{r} ×{c}" for r, c in reasons.items())
        out.append(Finding("bad", f"{len(input_sessions)} input(s) rejected whole ({why}): {names}."))
    if wrej:
        sev = "warn" if wrej / max(planned, 1) < 0.05 else "bad"
        out.append(Finding(sev, f"{num(wrej)} of {num(planned)} windows rejected ({pct(wrej, planned)})."))
    for mod in M.TRAINABLE:
        have = int(ds.index[M.BY_NAME[mod].has_column].sum()) if n else 0
        rej = ds.rejects[
            (ds.rejects["kind"] == "modality") & (ds.rejects["modality"] == mod) & ds.rejects["key"].notna()
        ]
        if n and have < n and len(rej):
            why = ", ".join(f"{r} ×{c}" for r, c in rej["reason"].value_counts().head(3).items())
            sev = "bad" if have / n < 0.8 else "warn"
            out.append(Finding(sev, f"{mod} missing from {num(n - have)} samples ({pct(n - have, n)}): {why}."))
    if "val" not in by_split.index or not n:
        out.append(Finding("bad", "No validation samples." if n else "No samples at all."))
    config = ds.manifest.get("config", {})
    for mod in ("audio", "depth", "thermal"):
        tol_s = config.get(f"{mod}_tolerance_s")  # null: half a frame period, which the index does not record
        v = ds.hist.get(f"sync_err_{mod}_ms")
        if tol_s is not None and v is not None and np.isfinite(v).any():
            p99 = float(np.nanpercentile(np.abs(v), 99))
            if p99 > 0.5 * tol_s * 1000:
                text = f"{mod} sync error p99 is {p99:.1f} ms, over half the {tol_s * 1000:.0f} ms tolerance."
                out.append(Finding("warn", text))
    if ds.sync is not None and len(ds.sync):
        for status, what in (("mismatch", "declare a clock their content disagrees with (their windows are "
                              "clock_mismatch rejects)"), ("estimated", "were built on a clock estimated from "
                              "their content, not the declared one")):  # fmt: skip
            off = ds.sync[ds.sync["status"] == status]
            if len(off):
                kinds = ", ".join(f"{k} ×{c}" for k, c in off["stream"].value_counts().items())
                out.append(Finding("warn", f"{len(off)} stream(s) {what}: {kinds}. See Clock sync."))
    if not out:
        out.append(Finding("ok", "Nothing stands out: no input or window rejects, every modality present."))
    return out


# --------------------------------------------------------------------------------------------- rejects


def _bound(ds: Dataset, reason: str) -> tuple[float | None, float | None]:
    """(rate, bound) of one reason from the gate's per-reason table; (None, None) when not validated."""
    b = ds.reason_bounds
    if b is None or reason not in b.index:
        return None, None
    return float(b.at[reason, "rate"]), float(b.at[reason, "max_rate"])


def _filters(ds: Dataset) -> QualityFilters:
    rej = ds.rejects
    sub = rej[rej["reason"].isin(FILTER_REASONS)]
    counts = sub["reason"].value_counts()
    rows = []
    for reason in sorted(counts.index, key=lambda r: (-counts[r], r)):
        n = counts[reason]
        mine = sub[sub["reason"] == reason]
        rate, bound = _bound(ds, str(reason))
        details = [(str(k) if isinstance(k, str) else "(input)", str(d))
                   for k, d in zip(mine["key"], mine["detail"], strict=True)][:FILTER_DETAILS]  # fmt: skip
        where = ", ".join(sorted(mine["modality"].dropna().unique())) or "(window)"
        rows.append(FilterRow(str(reason), where, int(n),
                              int(mine["session"].nunique()), rate, bound, details))  # fmt: skip
    return QualityFilters(rows, len(sub), ds.reason_bounds is not None)


def _rejects(ds: Dataset) -> Rejects:
    rej = ds.rejects
    where_columns = ["(input)", "(repair)", "(window)", *M.NAMES]
    if rej.empty:
        return Rejects(0, [], where_columns, 1, None, None, {}, [], 0, validated=ds.reason_bounds is not None)
    where = np.where(
        rej["kind"] == "modality",
        rej["modality"].fillna(""),
        np.where(rej["kind"] == "input", "(input)", np.where(rej["kind"] == "repair", "(repair)", "(window)")),
    )
    by_kind = rej.groupby(["reason", "kind"]).size().unstack(fill_value=0)
    order = list(by_kind.sum(axis=1).sort_values(ascending=False, kind="stable").index)
    tab = pd.crosstab(rej["reason"], where).reindex(columns=where_columns, fill_value=0).loc[order]
    reasons = []
    for reason in order:
        rows = rej[rej["reason"] == reason]
        reasons.append(ReasonRow(
            reason=str(reason), rows=len(rows),
            by_kind={k: int(by_kind.loc[reason].get(k, 0)) for k in KIND_NAMES},
            by_where={c: int(tab.loc[reason, c]) for c in where_columns},
            sessions=int(rows["session"].nunique()), example=str(rows["detail"].iloc[0]),
            rate=_bound(ds, str(reason))[0], bound=_bound(ds, str(reason))[1],
        ))  # fmt: skip
    chart = charts.hbar_chart([(r.reason, r.by_kind) for r in reasons[:TABLE_MAX_ROWS]], KIND_COLORS, KIND_NAMES)

    mrej = rej[rej["kind"] == "modality"]
    rcolors = {r: REASON_PALETTE[i % len(REASON_PALETTE)] for i, r in enumerate(mrej["reason"].value_counts().index)}
    mitems = []
    for mod in M.NAMES:
        sub = mrej.loc[mrej["modality"] == mod, "reason"].value_counts()
        if len(sub):
            mitems.append((mod, {r: int(c) for r, c in sub.items()}))
    mchart = charts.hbar_chart(mitems, rcolors, KIND_NAMES)

    per_session = rej.groupby("session", dropna=False).agg(n=("reason", "size"))
    per_session = per_session.sort_values("n", ascending=False, kind="stable")  # ties stay in name order
    sessions = []
    for s, r in per_session.head(10).iterrows():
        sub = rej[rej["session"] == s] if isinstance(s, str) else rej[rej["session"].isna()]
        counts = [(str(k), int(v)) for k, v in sub["reason"].value_counts().items()]
        sessions.append(SessionRejects(s if isinstance(s, str) else "(none)", int(r["n"]), counts))
    return Rejects(len(rej), reasons, where_columns, max(int(tab.to_numpy().max()), 1), chart, mchart, rcolors,
                   sessions, max(len(reasons) - TABLE_MAX_ROWS, 0), _filters(ds),
                   ds.reason_bounds is not None)  # fmt: skip


# -------------------------------------------------------------------------------------------- timeline


def _timeline(ds: Dataset) -> Timeline:
    idx, rej = ds.index, ds.rejects
    all_sessions = sorted(set(idx["session"].unique()) | set(rej["session"].dropna().unique()))
    shown = all_sessions[:TIMELINE_MAX_SESSIONS]
    stride = float(ds.manifest.get("config", {}).get("stride_s", 2.0))
    if len(idx) and float((idx["clip_end_s"] - idx["clip_start_s"]).max()) <= 0:
        return Timeline(None, "This layout pairs still images: there is no time axis to draw.", 0, len(all_sessions))
    if not shown:
        return Timeline(None, "No sessions.", 0, 0)
    svg = charts.timeline_chart(idx[idx["session"].isin(shown)], rej[rej["session"].isin(shown)], shown, stride)
    return Timeline(svg, None, len(shown), len(all_sessions))


# --------------------------------------------------------------------------------------- distributions


def _distributions(ds: Dataset) -> list[HistCard]:
    values = dict(ds.hist)
    if "thermal_max" in values and "thermal_min" in values:
        values["thermal_range"] = values["thermal_max"] - values["thermal_min"]
    gap_limit = ds.manifest.get("config", {}).get("imu_max_gap_s")
    marks = {"imu_max_gap_ms": [(float(gap_limit) * 1000, "reject")] if gap_limit else []}
    return [
        HistCard(col, title, unit, mod, COLORS[mod], charts.histogram(values[col], COLORS[mod], marks.get(col, ())))
        for col, title, unit, mod in DISTRIBUTIONS
        if col in values
    ]


# --------------------------------------------------------------------------------------------- gallery


def _png(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data_uri(buf.tobytes(), "image/png")


def mel_image(mel: np.ndarray) -> str:
    """A log-mel (1 x bins x frames) as a magma-coloured PNG data URI, low frequencies at the bottom."""
    m = np.asarray(mel[0] if mel.ndim == 3 else mel, np.float32)
    lo, hi = np.percentile(m, [1, 99])
    u8 = (np.clip((m - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return _png(cv2.applyColorMap(np.flipud(u8), cv2.COLORMAP_MAGMA))


def scalar_image(arr: np.ndarray, cmap: int, near_is_hot: bool) -> tuple[str, tuple[float, float] | None]:
    """16-bit map as colours; 0 is invalid and drawn black. Returns the data URI and the valid range."""
    a = arr.astype(np.float64)
    valid = a > 0
    if not valid.any():
        return _png(np.zeros((*a.shape, 3), np.uint8)), None
    lo, hi = np.percentile(a[valid], [2, 98])
    t = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    if near_is_hot:
        t = 1 - t
    rgb = cv2.applyColorMap((t * 255).astype(np.uint8), cmap)
    rgb[~valid] = 0
    return _png(rgb), (float(a[valid].min()), float(a[valid].max()))


def read_members(
    root: Path, picks: pd.DataFrame, shards_at: storage.Location | None = None
) -> dict[str, dict[str, bytes]]:
    """key -> member -> bytes for the picked samples (key, shard), opening each shard once.

    ``shards_at``: the shards' folder or object-store prefix when it is not ``root/shards``.
    """
    out: dict[str, dict[str, bytes]] = {k: {} for k in picks["key"]}
    for shard, group in picks.groupby("shard"):
        wanted = set(group["key"])
        path = root / "shards" / str(shard) if shards_at is None else shards_at / str(shard)
        if not storage.exists(path):
            continue  # the cards say "not found in <shard>"
        with storage.TarReader(path) as tar:
            for m in tar.members():
                if m.key in wanted:
                    out[m.key][m.suffix] = tar.read(m)
    return out


def _gallery(ds: Dataset, count: int, seed: int) -> list[SampleCard]:
    idx = ds.index.sort_values("key", kind="stable").reset_index(drop=True)
    if not len(idx) or count <= 0:
        return []
    rows = np.sort(np.random.default_rng(seed).choice(len(idx), min(count, len(idx)), replace=False))
    picks = idx.iloc[rows]
    ipath = ds.root / "index.parquet"
    cols = [c for c in pq.read_schema(ipath).names if not c.startswith("sha256_")]  # hashes are most of the bytes
    full = pq.read_table(ipath, columns=cols, filters=[("key", "in", list(picks["key"]))]).to_pandas()
    full = full.set_index("key")
    blobs = read_members(ds.root, picks, ds.shards_at)
    mrej = ds.rejects[(ds.rejects["kind"] == "modality") & ds.rejects["key"].isin(picks["key"])]
    why = {(k, m): r for k, m, r in zip(mrej["key"], mrej["modality"], mrej["reason"], strict=True)}
    cards = []
    for key in picks["key"]:
        try:
            cards.append(_sample_card(key, full.loc[key], blobs[key], why))
        except (ValueError, KeyError, cv2.error) as exc:  # a damaged member: say so, keep the rest of the page
            cards.append(SampleCard(key, error=f"{type(exc).__name__}: {short(exc, 200)}"))
    return cards


def _missing(mod: str, reason: str | None) -> Tile:
    return Tile(mod, reason=reason)


def _sample_card(key: str, row: pd.Series, blobs: dict[str, bytes], why: dict) -> SampleCard:
    meta = json.loads(blobs["json"]) if "json" in blobs else {}
    tiles: list[Tile] = []
    video = M.VIDEO
    if video.member in blobs:
        times = meta.get("frame_times_s", [None, None])
        for i, (member, label) in enumerate(zip(video.members, ("first frame", "last frame"), strict=True)):
            if member in blobs:
                t = times[i] if i < len(times) else None
                cap = f"{label}{f' · {t:.2f} s' if t is not None else ''}"
                tiles.append(Tile("video", member, data_uri(blobs[member], "image/jpeg"), label, cap))
    else:
        tiles.append(_missing("video", why.get((key, "video"))))
    if M.AUDIO.member in blobs:
        mel = np.load(io.BytesIO(blobs[M.AUDIO.member]), allow_pickle=False)
        cap = f"log-mel {'×'.join(map(str, mel.shape))} · {num(row.get('audio_rms_dbfs'))} dBFS"
        tiles.append(Tile("audio", M.AUDIO.member, mel_image(mel), "mel", cap, pixelated=True))
    else:
        tiles.append(_missing("audio", why.get((key, "audio"))))
    for mod, cmap, near_hot in ((M.DEPTH, cv2.COLORMAP_TURBO, True), (M.THERMAL, cv2.COLORMAP_INFERNO, False)):
        if mod.member not in blobs:
            tiles.append(_missing(mod.name, why.get((key, mod.name))))
            continue
        arr = cv2.imdecode(np.frombuffer(blobs[mod.member], np.uint8), cv2.IMREAD_UNCHANGED)
        uri, rng = scalar_image(arr, cmap, near_hot)
        if mod is M.DEPTH:
            cap = f"depth · {pct(row.get('depth_valid_frac') or 0, 1)} valid"
            if rng:
                cap += f" · {rng[0] / 1000:.2f}–{rng[1] / 1000:.2f} m"
        else:
            units = meta.get("thermal_units", "")
            cap = "thermal"
            if rng and units == "centikelvin":
                cap += f" · {rng[0] / 100 - 273.15:.1f}–{rng[1] / 100 - 273.15:.1f} °C"
            elif rng:
                cap += f" · {rng[0]:.0f}–{rng[1]:.0f} {units}"
        tiles.append(Tile(mod.name, mod.member, uri, mod.name, cap))
    card = dict(
        key=key,
        members=[m for m in M.MEMBERS if m in blobs],
        split=str(row.get("split")),
        session=str(row.get("session")),
        clip=f"{num(row.get('clip_start_s'))}–{num(row.get('clip_end_s'))} s",
        label=row.get("label") if isinstance(row.get("label"), str) else None,
        not_found_in=None if blobs else str(row.get("shard")),
        tiles=tiles,
    )
    if M.IMU.member in blobs:
        imu = np.load(io.BytesIO(blobs[M.IMU.member]), allow_pickle=False)
        clip, win = meta.get("clip"), meta.get("imu_window_s")
        frac = None
        if clip and win and win[1] > 0:
            frac = ((clip[0] - win[0]) / win[1], (clip[1] - win[0]) / win[1])
            frac = (min(max(frac[0], 0), 1), min(max(frac[1], 0), 1))
        card["imu"] = charts.imu_charts(imu, frac)
        card["imu_caption"] = (f"IMU {imu.shape[0]}×{imu.shape[1]} · max gap {num(row.get('imu_max_gap_ms'))} ms · "
                               f"input {num(row.get('imu_rate_hz'))} Hz")  # fmt: skip
    else:
        card["imu_missing"] = _missing("imu", why.get((key, "imu")))
    if M.TEXT.member in blobs:
        card["text"] = blobs[M.TEXT.member].decode("utf-8", "replace")
    else:
        card["text_missing"] = _missing("text", why.get((key, "text")))
    card["sync"] = " · ".join(
        f"{m} {row.get(f'sync_err_{m}_ms'):+.1f} ms" for m in _SYNCED if pd.notna(row.get(f"sync_err_{m}_ms"))
    )
    return SampleCard(**card)
