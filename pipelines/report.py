"""The nightly data-quality report: one self-contained HTML page over a finished build.

    bindset report DATA/            ->  DATA/quality/report.html

The page needs no network: CSS is inline, charts are SVG drawn here, images are data URIs, there is no
script, and a Content-Security-Policy forbids fetching anything. It reads manifest.json, index.parquet,
rejects.parquet and, for the gallery only, the few tar members it shows. Work is bounded for big builds:
histograms see a deterministic random sample of the index, the timeline draws the first sessions only
(runs of equal windows merged into one bar), and tables show their top rows. The same DATA and arguments
give the same bytes.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from schemas.modalities import MEMBERS
from schemas.modalities import NAMES as MODALITIES

HIST_MAX_ROWS = 200_000  # index rows sampled for the histograms
TIMELINE_MAX_SESSIONS = 30
TABLE_MAX_ROWS = 15
HIST_BINS = 32

COLORS = {
    "video": "#3b6fb6",
    "audio": "#e07b24",
    "depth": "#3f9b57",
    "thermal": "#d4a72c",
    "imu": "#2a9d9b",
    "text": "#8a5bb0",
}
KIND_COLORS = {"input": "#7f1d1d", "window": "#dc2626", "modality": "#f59e0b"}
KIND_NAMES = {"input": "whole input", "window": "whole window", "modality": "one modality"}
SECTIONS = (
    ("headline", "Overview"),
    ("rejects", "Rejects"),
    ("timeline", "Timeline"),
    ("distributions", "Distributions"),
    ("gallery", "Gallery"),
)
_INDEX_LIGHT = ["key", "shard", "split", "session", "clip_start_s", "clip_end_s", *[f"has_{m}" for m in MODALITIES]]


def write_report(data: Path, *, gallery: int = 12, seed: int = 0) -> Path:
    """Write DATA/quality/report.html (atomically) and return its path."""
    data = Path(data)
    ds = _load(data, seed)
    body = "".join(
        [
            _header(ds),
            _headline(ds),
            _rejects_section(ds),
            _timeline_section(ds),
            _distributions_section(ds),
            _gallery_section(ds, gallery, seed),
            _footer(ds),
        ]
    )
    page = _page(f"bindset quality · {ds.manifest.get('version', '?')}", body)
    out = data / "quality" / "report.html"
    storage.atomic_write_text(out, page)
    return out


# --------------------------------------------------------------------------------------- loading


@dataclass
class _Dataset:
    root: Path
    manifest: dict
    index: pd.DataFrame  # light columns of every row
    rejects: pd.DataFrame  # every row, plus "kind": input | window | modality
    hist: dict[str, np.ndarray]  # numeric column -> values of the sampled rows (NaN kept)
    hist_rows: int  # rows behind ``hist``
    last_build: dict | None  # the last line of _work/builds.jsonl
    built_at: float  # manifest.json's mtime: when the build was committed


def _load(data: Path, seed: int) -> _Dataset:
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
    rejects["kind"] = [_reject_kind(k, m) for k, m in zip(rejects["key"], rejects["modality"], strict=True)]

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
    built_at = mpath.stat().st_mtime
    return _Dataset(data, manifest, index, rejects, hist, min(n, HIST_MAX_ROWS), last_build, built_at)


def _reject_kind(key, modality) -> str:
    if isinstance(modality, str):
        return "modality"
    return "window" if isinstance(key, str) else "input"


# --------------------------------------------------------------------------------------- formatting


def _e(x) -> str:
    return escape(str(x), quote=True)


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int | np.integer) or float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 1:
        return f"{x:.{max(digits - len(str(int(ax))), 0)}f}"
    return f"{x:.{digits}g}"


def _pct(a: float, b: float) -> str:
    return "–" if not b else f"{100.0 * a / b:.1f}%"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _short(text: str, n: int = 140) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[tuple[float, str]]:
    """Round tick values in [lo, hi] and their labels, with as many decimals as the step needs."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [(lo, _num(lo))]
    raw = (hi - lo) / max(n - 1, 1)
    exp = math.floor(math.log10(raw))
    mult = next(m for m in (1, 2, 2.5, 5, 10) if m * 10**exp >= raw)
    step = mult * 10**exp
    decimals = max(0, -exp + (1 if mult == 2.5 else 0) - (1 if mult == 10 else 0))
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [(t, f"{0.0 if abs(t) < step * 1e-9 else t:,.{decimals}f}") for t in ticks]


def _uri(blob: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode()}"


# --------------------------------------------------------------------------------------- page frame

_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1f2933;--mute:#6b7785;--line:#e3e6ea;--accent:#3b6fb6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
 "Helvetica Neue",Arial,sans-serif}
header.top{background:#16202c;color:#fff;padding:22px 0 18px}
header.top .wrap{display:flex;justify-content:space-between;align-items:flex-end;gap:24px;flex-wrap:wrap}
header.top h1{margin:0;font-size:22px;font-weight:650;letter-spacing:.2px}
header.top .sub{color:#b7c2cf;font-size:13px;margin-top:4px}
a{color:var(--accent)}
header.top code{color:#fff;background:#2a3644;padding:1px 6px;border-radius:4px}
nav{position:sticky;top:0;z-index:5;background:#fffffff0;border-bottom:1px solid var(--line)}
nav .wrap{display:flex;gap:4px;padding:6px 24px}
nav a{color:var(--ink);text-decoration:none;padding:6px 12px;border-radius:6px;font-weight:550;font-size:13px}
nav a:hover{background:#eef2f7}
.wrap{max-width:1320px;margin:0 auto;padding:0 24px}
section{margin:26px 0}
section>h2{font-size:18px;margin:0 0 4px;font-weight:650}
section>p.lead{margin:0 0 14px;color:var(--mute)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;
 box-shadow:0 1px 2px #0000000a}
.grid{display:grid;gap:14px}
.stats{grid-template-columns:repeat(auto-fill,minmax(280px,1fr))}
.stat .label{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.6px}
.stat .value{font-size:28px;font-weight:650;margin:2px 0;font-variant-numeric:tabular-nums}
.stat .detail{color:var(--mute);font-size:12.5px}
.two{grid-template-columns:minmax(0,1fr) minmax(0,1fr)}
@media (max-width:900px){.two{grid-template-columns:1fr}}
h3{font-size:14px;margin:0 0 10px;font-weight:650}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{color:var(--mute);font-weight:600;font-size:12px;background:#fafbfc}
td.n,th.n{text-align:right}
td.detail{color:var(--mute);font-size:12px;max-width:380px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;background:#eef2f7}
.ok{background:#dcf5e3;color:#14632d}.bad{background:#fde2e1;color:#8f1d17}.warn{background:#fff1d6;color:#7a4b00}
.muted{background:#eceff3;color:#4a5561}
.cover{display:grid;grid-template-columns:70px 1fr 58px;gap:6px 10px;align-items:center;font-size:13px}
.bar{height:12px;background:#edf0f3;border-radius:6px;overflow:hidden}
.bar>span{display:block;height:100%;border-radius:6px}
.splitbar{display:flex;height:14px;border-radius:7px;overflow:hidden;margin:8px 0 4px}
.splitbar span{display:block;height:100%}
ul.findings{margin:0;padding-left:0;list-style:none}
ul.findings li{padding:5px 0 5px 26px;position:relative;border-bottom:1px dashed var(--line)}
ul.findings li:last-child{border:0}
ul.findings li:before{content:"";position:absolute;left:6px;top:11px;width:10px;height:10px;border-radius:50%}
ul.findings li.bad:before{background:#dc2626}ul.findings li.warn:before{background:#f59e0b}
ul.findings li.ok:before{background:#22a35a}
ul.findings li{background:none;color:inherit}
.legend{display:flex;flex-wrap:wrap;gap:14px;font-size:12.5px;color:var(--mute);margin:4px 0 10px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:3px;vertical-align:-2px;margin-right:5px}
.hists{grid-template-columns:repeat(auto-fill,minmax(300px,1fr))}
.hist .stat-line{color:var(--mute);font-size:12px;margin-top:2px}
.hist h3{margin:0}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:7px;vertical-align:1px}
.group{font-size:12px;text-transform:uppercase;letter-spacing:.6px;color:var(--mute);margin:18px 0 8px}
.scroll{overflow-x:auto}
.gallery{grid-template-columns:1fr}
.sample .body{display:grid;grid-template-columns:auto minmax(300px,1fr);gap:8px 22px;align-items:start}
@media (max-width:1100px){.sample .body{grid-template-columns:1fr}}
figure.imu svg{display:block;margin-bottom:4px}
.sample header{display:flex;justify-content:space-between;gap:10px;align-items:baseline;margin-bottom:10px}
.sample .key{font-weight:650}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0}
figure.tile{display:table}
figure.tile img{height:104px;display:block;border-radius:5px;background:#111}
figure.tile figcaption{display:table-caption;caption-side:bottom}
figure.tile img.px{image-rendering:pixelated}
figure.tile figcaption,figure.imu figcaption{font-size:11.5px;color:var(--mute);margin-top:3px;max-width:210px}
figure.missing{width:120px;height:104px;border:1.5px dashed #d6dbe1;border-radius:5px;display:flex;
 align-items:center;justify-content:center;text-align:center;color:var(--mute);font-size:11.5px;padding:6px}
figure.imu{margin:0}
blockquote{margin:8px 0 0;padding:6px 12px;border-left:3px solid #8a5bb0;background:#f7f3fb;border-radius:0 6px 6px 0}
.sync{font-size:12px;color:var(--mute);margin-top:8px}
footer{color:var(--mute);font-size:12.5px;padding:10px 0 40px}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif}
"""


def _page(title: str, body: str) -> str:
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def _header(ds: _Dataset) -> str:
    m = ds.manifest
    bits = [f"dataset <code>{_e(m.get('version', '?'))}</code>", f"layout {_e(m.get('layout', '?'))}"]
    if m.get("code_version"):
        bits.append(f"code <code>{_e(m['code_version'])}</code>")
    built = f"built {datetime.fromtimestamp(ds.built_at, UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    if ds.last_build:
        b = ds.last_build
        built += (
            f" on {_e(b.get('engine', '?'))} in {_num(b.get('seconds', float('nan')))} s "
            f"({_num(b.get('processed', 0))} unit(s) processed, {_num(b.get('reused', 0))} reused)"
        )
    bits.append(built)
    nav = "".join(f"<a href='#{sid}'>{_e(name)}</a>" for sid, name in SECTIONS)
    return (
        "<header class='top'><div class='wrap'><div><h1>Data quality report</h1>"
        f"<div class='sub'>{' · '.join(bits)}</div></div>"
        f"<div class='sub mono'>{_e(ds.root.resolve())}</div></div></header>"
        f"<nav><div class='wrap'>{nav}</div></nav><main class='wrap'>"
    )


def _footer(ds: _Dataset) -> str:
    n = len(ds.index)
    notes = [f"Histograms use {_num(ds.hist_rows)} of {_num(n)} index rows (a fixed random sample)."]
    notes.append("Regenerate with <code>bindset report DATA</code>. This page loads nothing from the network.")
    return f"</main><footer class='wrap'>{' '.join(notes)}</footer>"


def _section(sid: str, title: str, lead: str, inner: str) -> str:
    return f"<section id='{sid}'><h2>{_e(title)}</h2><p class='lead'>{lead}</p>{inner}</section>"


# --------------------------------------------------------------------------------------- headline


def _headline(ds: _Dataset) -> str:
    m, idx, rej = ds.manifest, ds.index, ds.rejects
    counts = m.get("counts", {})
    n = len(idx)
    planned = int(counts.get("windows_planned", n + int((rej["kind"] == "window").sum())))
    wrej = int(counts.get("window_rejects", (rej["kind"] == "window").sum()))
    by_split = idx.groupby("split").agg(samples=("key", "size"), sessions=("session", "nunique"))
    sessions = idx["session"].nunique()
    input_sessions = set(rej.loc[rej["kind"] == "input", "session"].dropna())
    kinds = rej["kind"].value_counts()
    shards = sorted((ds.root / "shards").glob("*.tar"))
    shard_bytes = sum(p.stat().st_size for p in shards)

    def split_text(col):
        return " · ".join(f"{_e(s)} {_num(int(r[col]))}" for s, r in by_split.iterrows()) or "–"

    status, vcls, vdetail = _validation_summary(m.get("validation") or {}, ds.root)
    stats = [
        ("Samples", _num(n), split_text("samples")),
        (
            "Sessions",
            _num(sessions),
            f"{split_text('sessions')}" + (f" · {len(input_sessions)} rejected whole" if input_sessions else ""),
        ),
        ("Windows planned", _num(planned), f"{_num(wrej)} window rejects"),
        ("Window reject rate", _pct(wrej, planned), f"{_num(planned - wrej)} windows kept"),
        ("Reject rows", _num(len(rej)), " · ".join(f"{_num(int(kinds.get(k, 0)))} {k}" for k in KIND_NAMES)),
        ("Shards", _num(len(shards)), f"{_bytes(shard_bytes)} on disk"),
        (
            "Validation",
            f"<span class='badge {vcls}' style='font-size:18px'>{_e(status)}</span>",
            vdetail or "from manifest.json",
        ),
        (
            "Dataset version",
            f"<span class='mono' style='font-size:20px'>{_e(m.get('version', '?'))}</span>",
            f"code {_e(m.get('code_version', '?'))} · {_e(m.get('layout', '?'))}",
        ),
    ]
    cards = "".join(
        f"<div class='card stat'><div class='label'>{_e(k)}</div><div class='value'>{v}</div>"
        f"<div class='detail'>{d}</div></div>"
        for k, v, d in stats
    )
    # split bar + coverage
    split_colors = ["#3b6fb6", "#e07b24", "#3f9b57", "#8a5bb0"]
    segs = "".join(
        f"<span style='width:{100 * r['samples'] / max(n, 1):.2f}%;background:{split_colors[i % 4]}' "
        f"title='{_e(s)}: {int(r['samples'])} samples'></span>"
        for i, (s, r) in enumerate(by_split.iterrows())
    )
    split_legend = "".join(
        f"<span><i style='background:{split_colors[i % 4]}'></i>{_e(s)} {_pct(r['samples'], n)} "
        f"({_num(int(r['samples']))} samples, {_num(int(r['sessions']))} sessions)</span>"
        for i, (s, r) in enumerate(by_split.iterrows())
    )
    mod_rej = rej[rej["kind"] == "modality"]
    rows = []
    for mod in MODALITIES:
        have = int(idx[f"has_{mod}"].sum()) if n else 0
        top = mod_rej.loc[mod_rej["modality"] == mod, "reason"].value_counts()
        why = f"mostly {_e(top.index[0])}" if len(top) else ""
        rows.append(
            f"<div>{_e(mod)}</div><div class='bar' title='{_e(mod)}: {have} of {n} samples. {why}'>"
            f"<span style='width:{100 * have / max(n, 1):.2f}%;background:{COLORS[mod]}'></span></div>"
            f"<div class='mono' style='text-align:right'>{_pct(have, n)}</div>"
        )
    coverage = (
        f"<div class='card'><h3>Modality coverage</h3><div class='cover'>{''.join(rows)}</div>"
        f"<h3 style='margin-top:16px'>Train / val split</h3><div class='splitbar'>{segs}</div>"
        f"<div class='legend'>{split_legend}</div></div>"
    )
    findings = _findings(ds, n, planned, wrej, by_split, input_sessions)
    inner = (
        f"<div class='grid stats'>{cards}</div><div class='grid two' style='margin-top:14px'>{coverage}"
        f"<div class='card'><h3>What to look at</h3><ul class='findings'>{findings}</ul></div></div>"
    )
    return _section("headline", "Overview", "The build at a glance, from manifest.json and index.parquet.", inner)


def _validation_summary(v: dict, root: Path) -> tuple[str, str, str]:
    """manifest.json "validation" (written by pipelines/validate.py) -> status, badge class, detail HTML."""
    status = str(v.get("status", "absent"))
    cls = {"passed": "ok", "failed": "bad", "error": "bad"}.get(status, "muted" if status == "not_run" else "warn")
    bits = []
    if isinstance(v.get("expectations"), int):
        failed = v.get("failed_expectations") or []
        bits.append(f"{v['expectations']} expectations, {len(failed)} failed")
    if "published" in v:
        bits.append("published" if v["published"] else "<b>not published</b>")
    if isinstance(v.get("data_docs"), str):  # a relative link to a local file, from DATA/quality/
        href = os.path.relpath(root / v["data_docs"], root / "quality")
        bits.append(f"<a href='{_e(Path(href).as_posix())}'>data docs</a>")
    return status, cls, " · ".join(bits) or "from manifest.json"


def _findings(ds: _Dataset, n, planned, wrej, by_split, input_sessions) -> str:
    out: list[tuple[str, str]] = []
    validation = ds.manifest.get("validation") or {}
    if validation.get("status") in ("failed", "error"):
        failed = validation.get("failed_expectations") or []
        out.append(("bad", f"Validation <b>{_e(validation['status'])}</b>: {len(failed)} expectation(s) failed."))
        for f in failed[:5]:
            if isinstance(f, dict):
                where = f" ({f['column']})" if f.get("column") else ""
                out.append(
                    ("bad", f"{_e(f.get('suite', '?'))}{_e(where)}: {_e(f.get('rule') or f.get('expectation'))}")
                )
    if input_sessions:
        names = ", ".join(sorted(input_sessions)[:5]) + (" …" if len(input_sessions) > 5 else "")
        reasons = ds.rejects.loc[ds.rejects["kind"] == "input", "reason"].value_counts()
        why = ", ".join(f"{_e(r)} ×{c}" for r, c in reasons.items())
        out.append(("bad", f"{len(input_sessions)} input(s) rejected whole ({why}): {_e(names)}."))
    if wrej:
        out.append(
            (
                "warn" if wrej / max(planned, 1) < 0.05 else "bad",
                f"{_num(wrej)} of {_num(planned)} windows rejected ({_pct(wrej, planned)}).",
            )
        )
    for mod in MODALITIES[1:5]:
        have = int(ds.index[f"has_{mod}"].sum()) if n else 0
        rej = ds.rejects[
            (ds.rejects["kind"] == "modality") & (ds.rejects["modality"] == mod) & ds.rejects["key"].notna()
        ]
        if n and have < n and len(rej):
            top = rej["reason"].value_counts()
            why = ", ".join(f"{_e(r)} ×{c}" for r, c in top.head(3).items())
            sev = "bad" if have / n < 0.8 else "warn"
            out.append((sev, f"{_e(mod)} missing from {_num(n - have)} samples ({_pct(n - have, n)}): {why}."))
    if "val" not in by_split.index or not n:
        out.append(("bad", "No validation samples." if n else "No samples at all."))
    config = ds.manifest.get("config", {})
    for mod in ("audio", "depth", "thermal"):
        tol_s = config.get(f"{mod}_tolerance_s")  # null: half a frame period, which the index does not record
        v = ds.hist.get(f"sync_err_{mod}_ms")
        if tol_s is not None and v is not None and np.isfinite(v).any():
            p99 = float(np.nanpercentile(np.abs(v), 99))
            if p99 > 0.5 * tol_s * 1000:
                out.append(
                    ("warn", f"{mod} sync error p99 is {p99:.1f} ms, over half the {tol_s * 1000:.0f} ms tolerance.")
                )
    if not out:
        out.append(("ok", "Nothing stands out: no input or window rejects, every modality present."))
    return "".join(f"<li class='{c}'>{t}</li>" for c, t in out)


# --------------------------------------------------------------------------------------- rejects


def _hbar_svg(items: Sequence[tuple[str, dict[str, int]]], colors: dict[str, str], width: int = 560) -> str:
    """Horizontal stacked bars: one row per label, segments keyed like ``colors``."""
    if not items:
        return "<p class='lead'>No rejects.</p>"
    label_w, row_h, pad = 190, 22, 6
    total_max = max(sum(v.values()) for _, v in items)
    plot_w = width - label_w - 60
    h = len(items) * row_h + pad * 2
    parts = [f"<svg width='{width}' height='{h}' viewBox='0 0 {width} {h}' role='img'>"]
    for i, (label, segs) in enumerate(items):
        y = pad + i * row_h
        parts.append(
            f"<text x='{label_w - 8}' y='{y + 15}' text-anchor='end' font-size='12' fill='#1f2933'>{_e(label)}</text>"
        )
        x = float(label_w)
        for k, c in segs.items():
            if not c:
                continue
            w = max(plot_w * c / total_max, 1.5)
            parts.append(
                f"<rect x='{x:.1f}' y='{y + 3}' width='{w:.1f}' height='{row_h - 7}' rx='3' "
                f"fill='{colors.get(k, '#888')}'><title>{_e(label)}: {c} ({_e(KIND_NAMES.get(k, k))})"
                "</title></rect>"
            )
            x += w
        parts.append(
            f"<text x='{x + 6:.1f}' y='{y + 15}' font-size='12' fill='#6b7785'>{_num(sum(segs.values()))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _rejects_section(ds: _Dataset) -> str:
    rej = ds.rejects
    lead = (
        "Every planned window is a sample or a window reject; a modality missing from a kept sample has its "
        "own row; whole-input problems have no key."
    )
    if rej.empty:
        return _section("rejects", "Rejects", lead, "<div class='card'><p>No rejects in this build.</p></div>")
    by = rej.groupby(["reason", "kind"]).size().unstack(fill_value=0)
    order = by.sum(axis=1).sort_values(ascending=False, kind="stable").index
    items = [(r, {k: int(by.loc[r].get(k, 0)) for k in KIND_NAMES}) for r in order[:TABLE_MAX_ROWS]]
    legend = "".join(f"<span><i style='background:{KIND_COLORS[k]}'></i>{_e(v)}</span>" for k, v in KIND_NAMES.items())
    chart = (
        f"<div class='card'><h3>Rejects by reason</h3><div class='legend'>{legend}</div>"
        f"{_hbar_svg(items, KIND_COLORS)}</div>"
    )

    # modality view: stacked by reason within each modality
    mrej = rej[rej["kind"] == "modality"]
    reasons = list(mrej["reason"].value_counts().index)
    palette = ["#6366f1", "#0ea5e9", "#14b8a6", "#a855f7", "#64748b", "#ec4899", "#84cc16", "#f97316"]
    rcolors = {r: palette[i % len(palette)] for i, r in enumerate(reasons)}
    mitems = []
    for mod in MODALITIES:
        sub = mrej.loc[mrej["modality"] == mod, "reason"].value_counts()
        if len(sub):
            mitems.append((mod, {r: int(c) for r, c in sub.items()}))
    mlegend = "".join(f"<span><i style='background:{c}'></i>{_e(r)}</span>" for r, c in rcolors.items())
    mchart = (
        f"<div class='card'><h3>Missing modalities, by reason</h3><div class='legend'>{mlegend}</div>"
        f"{_hbar_svg(mitems, rcolors) if mitems else '<p>No modality rejects.</p>'}</div>"
    )

    # table: reason x (kind/modality)
    cols = ["(input)", "(window)", *MODALITIES]
    rej_col = np.where(
        rej["kind"] == "modality", rej["modality"].fillna(""), np.where(rej["kind"] == "input", "(input)", "(window)")
    )
    tab = pd.crosstab(rej["reason"], rej_col).reindex(columns=cols, fill_value=0).loc[order]
    vmax = max(int(tab.to_numpy().max()), 1)
    head = "".join(f"<th class='n'>{_e(c)}</th>" for c in cols)
    body = []
    for reason in tab.index[:TABLE_MAX_ROWS]:
        rows = rej[rej["reason"] == reason]
        example = rows["detail"].iloc[0]
        level = " ".join(f"<span class='badge muted'>{k}</span>" for k in KIND_NAMES if k in set(rows["kind"]))
        cells = "".join(
            f"<td class='n' style='background:rgba(220,38,38,{0.08 + 0.5 * v / vmax:.2f})'>{_num(v)}</td>"
            if v
            else "<td class='n' style='color:#c4cad1'>·</td>"
            for v in tab.loc[reason]
        )
        body.append(
            f"<tr><td><code>{_e(reason)}</code> {level}</td>"
            f"<td class='n'><b>{_num(len(rows))}</b></td>{cells}<td class='n'>{rows['session'].nunique()}</td>"
            f"<td class='detail' title='{_e(example)}'>{_e(_short(example, 110))}</td></tr>"
        )
    more = len(tab) - TABLE_MAX_ROWS
    note = f"<p class='lead'>… and {more} more reason(s).</p>" if more > 0 else ""
    table = (
        "<div class='card scroll' style='margin-top:14px'><h3>Reasons × where</h3><table><thead><tr><th>reason</th>"
        f"<th class='n'>rows</th>{head}<th class='n'>sessions</th><th>example detail</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{note}</div>"
    )

    per_session = rej.groupby("session", dropna=False).agg(n=("reason", "size"))
    per_session = per_session.sort_values("n", ascending=False, kind="stable")  # ties stay in name order
    srows = []
    for s, r in per_session.head(10).iterrows():
        sub = rej[rej["session"] == s] if isinstance(s, str) else rej[rej["session"].isna()]
        reasons_s = ", ".join(f"{_e(k)} ×{v}" for k, v in sub["reason"].value_counts().items())
        srows.append(
            f"<tr><td class='mono'>{_e(s if isinstance(s, str) else '(none)')}</td>"
            f"<td class='n'>{int(r['n'])}</td><td>{reasons_s}</td></tr>"
        )
    worst = (
        "<div class='card scroll' style='margin-top:14px'><h3>Sessions with the most reject rows</h3><table>"
        f"<thead><tr><th>session</th><th class='n'>rows</th><th>reasons</th></tr></thead><tbody>{''.join(srows)}"
        "</tbody></table></div>"
    )
    inner = f"<div class='grid two'>{chart}{mchart}</div>{table}{worst}"
    return _section("rejects", "Rejects", lead, inner)


# --------------------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class _Seg:
    start: float
    end: float
    state: str  # present | absent | rejected | window
    reason: str = ""
    detail: str = ""
    n: int = 1


def _runs(cells: Iterable[_Seg], gap: float) -> list[_Seg]:
    """Merge touching segments with the same state and reason (bounds the SVG for long sessions)."""
    out: list[_Seg] = []
    for c in cells:
        last = out[-1] if out else None
        if last and last.state == c.state and last.reason == c.reason and c.start <= last.end + gap:
            out[-1] = _Seg(last.start, max(last.end, c.end), last.state, last.reason, last.detail, last.n + c.n)
        else:
            out.append(c)
    return out


def timeline_svg(
    samples: pd.DataFrame, rejects: pd.DataFrame, sessions: Sequence[str], stride_s: float, width: int = 1240
) -> str:
    """One row per session, one lane per modality over session time.

    ``samples``: key, session, split, clip_start_s, clip_end_s, has_*; ``rejects``: rejects.parquet rows with a
    ``kind`` column. Rejected windows and modalities carry their reason in an SVG <title> (shown on hover).
    """
    label_w, lane_h, lane_gap, row_pad, axis_h = 190, 9, 1, 14, 26
    plot_w = width - label_w - 16
    row_h = len(MODALITIES) * (lane_h + lane_gap) + row_pad
    wrej = rejects[rejects["kind"] == "window"]
    mrej = rejects[(rejects["kind"] == "modality") & rejects["key"].notna()]
    srej = rejects[(rejects["kind"] == "modality") & rejects["key"].isna()]
    irej = rejects[rejects["kind"] == "input"]
    ends = [samples["clip_end_s"].max() if len(samples) else 0.0, wrej["end_s"].max() if len(wrej) else 0.0]
    t_max = max([float(x) for x in ends if pd.notna(x)] + [1e-9])
    sx = plot_w / t_max
    h = axis_h + len(sessions) * row_h + 4
    p = [
        f"<svg width='{width}' height='{h}' viewBox='0 0 {width} {h}' role='img' aria-label='timeline'>",
        "<defs><pattern id='hatch' width='5' height='5' patternUnits='userSpaceOnUse' patternTransform='rotate(45)'>"
        "<rect width='5' height='5' fill='#fde2e1'/><rect width='2.2' height='5' fill='#dc2626'/></pattern></defs>",
    ]
    for t, label in _nice_ticks(0, t_max, 9):
        x = label_w + t * sx
        p.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{axis_h - 6}' y2='{h}' stroke='#eef0f3'/>"
            f"<text x='{x:.1f}' y='{axis_h - 10}' font-size='11' fill='#6b7785' text-anchor='middle'>"
            f"{label} s</text>"
        )
    mrej_by = {
        (k, m): (r, d) for k, m, r, d in zip(mrej["key"], mrej["modality"], mrej["reason"], mrej["detail"], strict=True)
    }
    for row, session in enumerate(sessions):
        y0 = axis_h + row * row_h
        ss = samples[samples["session"] == session]
        sw = wrej[wrej["session"] == session]
        si = irej[irej["session"] == session]
        split = ss["split"].iloc[0] if len(ss) else ""
        sub = " · ".join(x for x in (split, f"{len(ss)} samples") if x)
        p.append(
            f"<text x='0' y='{y0 + 14}' font-size='12.5' font-weight='600' fill='#1f2933'>{_e(session)}</text>"
            f"<text x='0' y='{y0 + 29}' font-size='11' fill='#6b7785'>{_e(sub)}</text>"
        )
        if len(sw):
            p.append(f"<text x='0' y='{y0 + 43}' font-size='11' fill='#b91c1c'>{len(sw)} window(s) rejected</text>")
        for i, mod in enumerate(MODALITIES):
            p.append(
                f"<text x='{label_w - 6}' y='{y0 + i * (lane_h + lane_gap) + 8}' font-size='8.5' "
                f"fill='#8792a0' text-anchor='end'>{mod}</text>"
            )
        if len(si) and not len(ss) and not len(sw):
            r = si.iloc[0]
            p.append(
                f"<rect x='{label_w}' y='{y0}' width='{plot_w}' height='{row_h - row_pad}' fill='#fde2e1' rx='4'>"
                f"<title>{_e(session)}: {_e(r['reason'])}\n{_e(r['detail'])}</title></rect>"
                f"<text x='{label_w + 10}' y='{y0 + 30}' font-size='12' fill='#8f1d17'>whole input rejected: "
                f"{_e(r['reason'])} — {_e(_short(r['detail'], 90))}</text>"
            )
            continue
        windows = [
            (float(s), float(e), k, None)
            for s, e, k in zip(ss["clip_start_s"], ss["clip_end_s"], ss["key"], strict=True)
        ]
        windows += [
            (float(s), float(e), k, (r, d))
            for s, e, k, r, d in zip(sw["start_s"], sw["end_s"], sw["key"], sw["reason"], sw["detail"], strict=True)
        ]
        windows.sort(key=lambda w: w[0])
        has = {
            k: {m: bool(v) for m, v in zip(MODALITIES, vals, strict=True)}
            for k, vals in zip(ss["key"], ss[[f"has_{m}" for m in MODALITIES]].itertuples(index=False), strict=True)
        }
        for i, mod in enumerate(MODALITIES):
            y = y0 + i * (lane_h + lane_gap)
            cells = []
            for s, e, key, wr in windows:
                e = s + min(e - s, stride_s) if e > s else s + stride_s
                if wr is not None:
                    cells.append(_Seg(s, e, "window", wr[0], wr[1]))
                elif has[key][mod]:
                    cells.append(_Seg(s, e, "present"))
                elif (key, mod) in mrej_by:
                    cells.append(_Seg(s, e, "rejected", *mrej_by[(key, mod)]))
                else:
                    cells.append(_Seg(s, e, "absent"))
            for seg in _runs(cells, gap=1e-6):
                x, w = label_w + seg.start * sx, max((seg.end - seg.start) * sx - 1, 1.0)
                fill = {"present": COLORS[mod], "absent": "#e7eaee", "rejected": "url(#hatch)", "window": "#b91c1c"}[
                    seg.state
                ]
                span = f"{_num(seg.start)}–{_num(seg.end)} s, {seg.n} window(s)"
                what = {"present": "present", "absent": "absent (no stream or no caption)"}.get(
                    seg.state, f"{'window' if seg.state == 'window' else mod} rejected: {seg.reason}\n{seg.detail}"
                )
                p.append(
                    f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{lane_h}' fill='{fill}' rx='1.5'>"
                    f"<title>{_e(session)} · {mod} · {span}\n{_e(what)}</title></rect>"
                )
        for j, (_, r) in enumerate(pd.concat([srej[srej["session"] == session], si]).iterrows()):
            if j >= 5:
                break
            mod = r["modality"] if isinstance(r["modality"], str) else None
            lane = MODALITIES.index(mod) if mod in MODALITIES else 0
            y = y0 + lane * (lane_h + lane_gap) + lane_h / 2
            x = label_w + plot_w - 6 - j * 12
            p.append(
                f"<circle cx='{x}' cy='{y}' r='4.5' fill='#334155' stroke='#fff'><title>{_e(session)} · "
                f"{_e(mod or 'input')} · {_e(r['reason'])}: {_e(r['detail'])} ({_e(r['source'])})</title>"
                "</circle>"
            )
    p.append("</svg>")
    return "".join(p)


def _timeline_section(ds: _Dataset) -> str:
    idx, rej = ds.index, ds.rejects
    all_sessions = sorted(set(idx["session"].unique()) | set(rej["session"].dropna().unique()))
    shown = all_sessions[:TIMELINE_MAX_SESSIONS]
    stride = float(ds.manifest.get("config", {}).get("stride_s", 2.0))
    lead = (
        "One row per session, one lane per modality over the session timeline (each window drawn for one stride). "
        "Hover a bar for its times, reason and detail."
    )
    legend = "".join(f"<span><i style='background:{c}'></i>{m}</span>" for m, c in COLORS.items()) + (
        "<span><i style='background:repeating-linear-gradient(45deg,#dc2626 0 2px,#fde2e1 2px 4px)'></i>"
        "modality rejected</span><span><i style='background:#b91c1c'></i>window rejected</span>"
        "<span><i style='background:#e7eaee'></i>absent</span>"
        "<span><i style='background:#334155;border-radius:50%'></i>stream or input issue</span>"
    )
    if len(idx) and float((idx["clip_end_s"] - idx["clip_start_s"]).max()) <= 0:
        body = "<p>This layout pairs still images: there is no time axis to draw.</p>"
    elif not shown:
        body = "<p>No sessions.</p>"
    else:
        samples = idx[idx["session"].isin(shown)]
        body = timeline_svg(samples, rej[rej["session"].isin(shown)], shown, stride)
    note = (
        f"<p class='lead'>Showing the first {len(shown)} of {len(all_sessions)} sessions (by name).</p>"
        if len(all_sessions) > len(shown)
        else ""
    )
    inner = f"<div class='card scroll'><div class='legend'>{legend}</div>{body}{note}</div>"
    return _section("timeline", "Timeline", lead, inner)


# --------------------------------------------------------------------------------------- distributions

# (index column, title, unit, modality): one histogram each, in this order
_DISTRIBUTIONS = (
    ("audio_rms_dbfs", "loudness", "dBFS", "audio"),
    ("audio_clipped_frac", "clipped samples", "fraction", "audio"),
    ("frame_brightness", "brightness", "0–255", "video"),
    ("frame_sharpness", "sharpness", "Laplacian var", "video"),
    ("frame_diff", "first vs last frame", "mean abs diff", "video"),
    ("depth_valid_frac", "depth valid pixels", "fraction", "depth"),
    ("thermal_range", "thermal range (max − min)", "raw units", "thermal"),
    ("imu_max_gap_ms", "largest IMU gap", "ms", "imu"),
    ("imu_rate_hz", "IMU input rate", "Hz", "imu"),
    *[(f"sync_err_{m}_ms", f"sync error: {m}", "ms", m) for m in ("video", "audio", "depth", "thermal", "imu")],
)


def hist_svg(
    values: np.ndarray, color: str, marks: Sequence[tuple[float, str]] = (), width: int = 300, height: int = 120
) -> tuple[str, str]:
    """An SVG histogram of the finite ``values`` and a one-line summary; long tails are clipped into the
    edge bins (and said so) so that the bulk stays readable."""
    v = values[np.isfinite(values)]
    missing = len(values) - len(v)
    if not len(v):
        return (
            f"<svg width='{width}' height='{height}'><text x='{width / 2}' y='{height / 2}' font-size='12' "
            f"fill='#6b7785' text-anchor='middle'>no values</text></svg>",
            f"{_num(missing)} missing",
        )
    lo, hi = float(v.min()), float(v.max())
    p_lo, p_hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
    clipped = 0
    if hi - lo > 8 * max(p_hi - p_lo, 1e-12):
        lo, hi = p_lo, p_hi
        clipped = int(((v < lo) | (v > hi)).sum())
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.05, 0.5)
        lo, hi = lo - pad, hi + pad
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=HIST_BINS, range=(lo, hi))
    ml, mr, mt, mb = 34, 8, 8, 22
    pw, ph = width - ml - mr, height - mt - mb
    cmax = max(int(counts.max()), 1)
    bw = pw / HIST_BINS
    p = [
        f"<svg width='100%' viewBox='0 0 {width} {height}' role='img'>",
        f"<line x1='{ml}' x2='{ml + pw}' y1='{mt + ph}' y2='{mt + ph}' stroke='#c9ced5'/>",
        f"<text x='{ml - 4}' y='{mt + 8}' font-size='10' fill='#6b7785' text-anchor='end'>{cmax}</text>",
        f"<text x='{ml - 4}' y='{mt + ph}' font-size='10' fill='#6b7785' text-anchor='end'>0</text>",
    ]
    for i, c in enumerate(counts):
        if not c:
            continue
        bh = max(ph * c / cmax, 1.0)
        p.append(
            f"<rect x='{ml + i * bw + 0.5:.1f}' y='{mt + ph - bh:.1f}' width='{max(bw - 1, 0.5):.1f}' "
            f"height='{bh:.1f}' fill='{color}' opacity='0.85'><title>{_num(float(edges[i]))} to "
            f"{_num(float(edges[i + 1]))}: {int(c)}</title></rect>"
        )
    sx = pw / (hi - lo)
    for t, label in _nice_ticks(lo, hi, 5):
        x = ml + (t - lo) * sx
        p.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{mt + ph}' y2='{mt + ph + 4}' stroke='#c9ced5'/>"
            f"<text x='{x:.1f}' y='{height - 6}' font-size='10' fill='#6b7785' text-anchor='middle'>"
            f"{label}</text>"
        )
    med = float(np.median(v))
    if lo <= med <= hi:
        x = ml + (med - lo) * sx
        p.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{mt}' y2='{mt + ph}' stroke='#1f2933' stroke-dasharray='3 3'>"
            f"<title>median {_num(med)}</title></line>"
        )
    for value, label in marks:
        if lo <= value <= hi:
            x = ml + (value - lo) * sx
            p.append(
                f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{mt}' y2='{mt + ph}' stroke='#dc2626' stroke-width='1.5'>"
                f"<title>{_e(label)}</title></line><text x='{x - 3:.1f}' y='{mt + 9}' font-size='10' "
                f"fill='#dc2626' text-anchor='end'>{_e(label)}</text>"
            )
    p.append("</svg>")
    p5, p95 = np.percentile(v, [5, 95])
    stats = f"n {_num(len(v))} · median {_num(med)} · p5–p95 {_num(float(p5))} to {_num(float(p95))}"
    if missing:
        stats += f" · {_num(missing)} missing"
    if clipped:
        stats += (
            f" · {_num(clipped)} outside, clipped to the edges (min {_num(float(v.min()))}, max {_num(float(v.max()))})"
        )
    return "".join(p), stats


def _distributions_section(ds: _Dataset) -> str:
    values = dict(ds.hist)
    if "thermal_max" in values and "thermal_min" in values:
        values["thermal_range"] = values["thermal_max"] - values["thermal_min"]
    gap_limit = ds.manifest.get("config", {}).get("imu_max_gap_s")
    marks = {"imu_max_gap_ms": [(float(gap_limit) * 1000, "reject")] if gap_limit else []}
    cards = []
    for col, title, unit, mod in _DISTRIBUTIONS:
        if col not in values:
            continue
        svg, stats = hist_svg(values[col], COLORS[mod], marks.get(col, ()))
        cards.append(
            f"<div class='card hist' data-column='{_e(col)}'><h3><i class='dot' style='background:{COLORS[mod]}' "
            f"title='{mod}'></i>{_e(title)} <span class='badge muted'>{_e(unit)}</span></h3>"
            f"<div class='stat-line'>{stats}</div>{svg}</div>"
        )
    n = len(ds.index)
    sample = f" (a fixed random sample of {_num(ds.hist_rows)} of {_num(n)} samples)" if ds.hist_rows < n else ""
    lead = (
        f"Per-sample quality figures from index.parquet{sample}. Dashed line: median; "
        "a missing value means the modality is absent from that sample."
    )
    inner = f"<div class='grid hists'>{''.join(cards)}</div>" if cards else "<p>No samples.</p>"
    return _section("distributions", "Distributions", lead, inner)


# --------------------------------------------------------------------------------------- gallery


def _png(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    return _uri(buf.tobytes(), "image/png")


def _mel_image(mel: np.ndarray) -> str:
    m = np.asarray(mel[0] if mel.ndim == 3 else mel, np.float32)  # (1, mel bins, frames): the first channel
    lo, hi = np.percentile(m, [1, 99])
    u8 = (np.clip((m - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return _png(cv2.applyColorMap(np.flipud(u8), cv2.COLORMAP_MAGMA))


def _scalar_image(arr: np.ndarray, cmap: int, near_is_hot: bool) -> tuple[str, tuple[float, float] | None]:
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


def imu_svg(imu: np.ndarray, clip_frac: tuple[float, float] | None = None, width: int = 340, height: int = 84) -> str:
    """Accelerometer and gyroscope traces (rows 0-2 and 3-5), decimated to at most 500 points per line."""
    axes_c = ("#dc2626", "#16a34a", "#2563eb")
    out = []
    n = imu.shape[1]
    step = max(n // 500, 1)
    for title, rows, unit in (("accel", (0, 1, 2), "m/s²"), ("gyro", (3, 4, 5), "rad/s")):
        block = imu[list(rows), ::step].astype(np.float64)
        lo, hi = float(np.nanmin(block)), float(np.nanmax(block))
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        ml, mt, mb = 4, 14, 4
        pw, ph = width - 2 * ml, height - mt - mb
        p = [
            f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img'>",
            f"<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='#fafbfc' stroke='#e3e6ea'/>",
        ]
        if clip_frac:
            x0, x1 = ml + clip_frac[0] * pw, ml + clip_frac[1] * pw
            p.append(
                f"<rect x='{x0:.1f}' y='{mt}' width='{x1 - x0:.1f}' height='{ph}' fill='#2a9d9b' opacity='0.1'>"
                "<title>the 2 s clip inside the 5 s IMU window</title></rect>"
            )
        if lo < 0 < hi:
            y = mt + ph * hi / (hi - lo)
            p.append(f"<line x1='{ml}' x2='{ml + pw}' y1='{y:.1f}' y2='{y:.1f}' stroke='#d5d9de'/>")
        for r, color, axis in zip(range(3), axes_c, "xyz", strict=True):
            ys = mt + ph * (hi - block[r]) / (hi - lo)
            xs = ml + np.arange(block.shape[1]) * pw / max(block.shape[1] - 1, 1)
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True) if np.isfinite(y))
            p.append(
                f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='1' opacity='0.85'>"
                f"<title>{title} {axis}</title></polyline>"
            )
        p.append(
            f"<text x='{ml}' y='10' font-size='10.5' fill='#1f2933' font-weight='600'>{title} "
            f"<tspan fill='#6b7785' font-weight='400'>{unit} · {_num(lo)} to {_num(hi)} · "
            "<tspan fill='#dc2626'>x</tspan> <tspan fill='#16a34a'>y</tspan> <tspan fill='#2563eb'>z</tspan>"
            "</tspan></text></svg>"
        )
        out.append("".join(p))
    return "".join(out)


def _read_members(root: Path, picks: pd.DataFrame) -> dict[str, dict[str, bytes]]:
    """key -> member -> bytes for the picked samples, opening each shard once."""
    out: dict[str, dict[str, bytes]] = {k: {} for k in picks["key"]}
    for shard, group in picks.groupby("shard"):
        wanted = set(group["key"])
        path = root / "shards" / str(shard)
        if not path.exists():
            continue  # the cards say "not found in <shard>"
        with storage.TarReader(path) as tar:
            for m in tar.members():
                if m.key in wanted:
                    out[m.key][m.suffix] = tar.read(m)
    return out


def _gallery_section(ds: _Dataset, count: int, seed: int) -> str:
    idx = ds.index.sort_values("key", kind="stable").reset_index(drop=True)
    lead = f"{min(count, len(idx))} random samples (seed {seed}), read back from the shards, every modality they carry."
    if not len(idx) or count <= 0:
        return _section("gallery", "Gallery", lead, "<p>No samples to show.</p>")
    rows = np.sort(np.random.default_rng(seed).choice(len(idx), min(count, len(idx)), replace=False))
    picks = idx.iloc[rows]
    ipath = ds.root / "index.parquet"
    cols = [c for c in pq.read_schema(ipath).names if not c.startswith("sha256_")]  # hashes are most of the bytes
    full = pq.read_table(ipath, columns=cols, filters=[("key", "in", list(picks["key"]))]).to_pandas()
    full = full.set_index("key")
    blobs = _read_members(ds.root, picks)
    mrej = ds.rejects[(ds.rejects["kind"] == "modality") & ds.rejects["key"].isin(picks["key"])]
    why = {(k, m): r for k, m, r in zip(mrej["key"], mrej["modality"], mrej["reason"], strict=True)}
    cards = []
    for key in picks["key"]:
        try:
            cards.append(_sample_card(key, full.loc[key], blobs[key], why))
        except (ValueError, KeyError, cv2.error) as exc:  # a damaged member: say so, keep the rest of the page
            cards.append(
                f"<article class='card sample' data-key='{_e(key)}' data-error='1'><span class='key mono'>{_e(key)}"
                f"</span> <span class='badge bad'>cannot render: {_e(type(exc).__name__)}: {_e(_short(exc, 200))}"
                "</span></article>"
            )
    return _section("gallery", "Gallery", lead, f"<div class='grid gallery'>{''.join(cards)}</div>")


def _missing(mod: str, reason: str | None) -> str:
    return (
        f"<figure class='missing' data-missing='{_e(mod)}'><div><b>no {_e(mod)}</b>"
        f"{'<br>' + _e(reason) if reason else ''}</div></figure>"
    )


def _sample_card(key: str, row: pd.Series, blobs: dict[str, bytes], why: dict) -> str:
    meta = json.loads(blobs["json"]) if "json" in blobs else {}
    members = [m for m in MEMBERS if m in blobs]
    lost = "" if blobs else f"<span class='badge bad'>not found in {_e(row.get('shard'))}</span>"
    tiles = []
    if "jpg" in blobs:
        for member, label in (("jpg", "first frame"), ("frame1.jpg", "last frame")):
            if member in blobs:
                t = meta.get("frame_times_s", [None, None])[0 if member == "jpg" else 1]
                cap = f"{label}{f' · {t:.2f} s' if t is not None else ''}"
                tiles.append(
                    f"<figure class='tile' data-member='{member}'><img alt='{_e(label)}' "
                    f"src='{_uri(blobs[member], 'image/jpeg')}'><figcaption>{_e(cap)}</figcaption></figure>"
                )
    else:
        tiles.append(_missing("video", why.get((key, "video"))))
    if "mel.npy" in blobs:
        mel = np.load(io.BytesIO(blobs["mel.npy"]), allow_pickle=False)
        cap = f"log-mel {'×'.join(map(str, mel.shape))} · {_num(row.get('audio_rms_dbfs'))} dBFS"
        tiles.append(
            f"<figure class='tile' data-member='mel.npy'><img class='px' alt='mel' src='{_mel_image(mel)}'>"
            f"<figcaption>{_e(cap)}</figcaption></figure>"
        )
    else:
        tiles.append(_missing("audio", why.get((key, "audio"))))
    for mod, cmap, near_hot in (("depth", cv2.COLORMAP_TURBO, True), ("thermal", cv2.COLORMAP_INFERNO, False)):
        member = f"{mod}.png"
        if member not in blobs:
            tiles.append(_missing(mod, why.get((key, mod))))
            continue
        arr = cv2.imdecode(np.frombuffer(blobs[member], np.uint8), cv2.IMREAD_UNCHANGED)
        uri, rng = _scalar_image(arr, cmap, near_hot)
        if mod == "depth":
            cap = f"depth · {_pct(row.get('depth_valid_frac') or 0, 1)} valid"
            if rng:
                cap += f" · {rng[0] / 1000:.2f}–{rng[1] / 1000:.2f} m"
        else:
            units = meta.get("thermal_units", "")
            cap = "thermal"
            if rng and units == "centikelvin":
                cap += f" · {rng[0] / 100 - 273.15:.1f}–{rng[1] / 100 - 273.15:.1f} °C"
            elif rng:
                cap += f" · {rng[0]:.0f}–{rng[1]:.0f} {units}"
        tiles.append(
            f"<figure class='tile' data-member='{member}'><img alt='{mod}' src='{uri}'>"
            f"<figcaption>{_e(cap)}</figcaption></figure>"
        )
    if "imu.npy" in blobs:
        imu = np.load(io.BytesIO(blobs["imu.npy"]), allow_pickle=False)
        clip = meta.get("clip")
        win = meta.get("imu_window_s")
        frac = None
        if clip and win and win[1] > 0:
            frac = ((clip[0] - win[0]) / win[1], (clip[1] - win[0]) / win[1])
            frac = (min(max(frac[0], 0), 1), min(max(frac[1], 0), 1))
        imu_html = (
            f"<figure class='imu' data-member='imu.npy'>{imu_svg(imu, frac)}<figcaption>IMU "
            f"{imu.shape[0]}×{imu.shape[1]} · max gap {_num(row.get('imu_max_gap_ms'))} ms · input "
            f"{_num(row.get('imu_rate_hz'))} Hz</figcaption></figure>"
        )
    else:
        imu_html = _missing("imu", why.get((key, "imu")))
    if "txt" in blobs:
        text = f"<blockquote data-member='txt'>{_e(blobs['txt'].decode('utf-8', 'replace'))}</blockquote>"
    else:
        text = f"<div style='margin-top:8px'>{_missing('text', why.get((key, 'text')))}</div>"
    sync = " · ".join(
        f"{m} {row.get(f'sync_err_{m}_ms'):+.1f} ms"
        for m in ("video", "audio", "depth", "thermal", "imu")
        if pd.notna(row.get(f"sync_err_{m}_ms"))
    )
    label = row.get("label")
    split = str(row.get("split"))
    return (
        f"<article class='card sample' data-key='{_e(key)}' data-members='{_e(' '.join(members))}'><header>"
        f"<div><span class='key mono'>{_e(key)}</span> <span class='badge {'ok' if split == 'train' else 'warn'}'>"
        f"{_e(split)}</span> {lost}</div><div class='mono' style='color:#6b7785'>{_e(row.get('session'))} · "
        f"{_num(row.get('clip_start_s'))}–{_num(row.get('clip_end_s'))} s"
        f"{' · ' + _e(label) if isinstance(label, str) else ''}</div></header>"
        f"<div class='body'><div class='tiles'>{''.join(tiles)}</div><div>{imu_html}{text}"
        f"<div class='sync'>sync error to the first frame: {_e(sync) or '–'}</div></div></div></article>"
    )
