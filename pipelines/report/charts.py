"""The report's charts as geometry: inline SVG made of a few primitives, laid out here, drawn by a template.

Each builder returns an ``Svg`` (a list of rectangles, lines, texts, polylines, circles with their hover
titles); ``templates/_svg.html.j2`` writes it out, with Jinja's autoescaping, so no text here is ever
escaped by hand. The builders are pure functions of numbers and strings, and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from pipelines.report.fmt import nice_ticks, num, short
from schemas.modalities import NAMES as MODALITIES

HIST_BINS = 32
COLORS = {
    "video": "#3b6fb6",
    "audio": "#e07b24",
    "depth": "#3f9b57",
    "thermal": "#d4a72c",
    "imu": "#2a9d9b",
    "text": "#8a5bb0",
}
INK, MUTE = "#1f2933", "#6b7785"

# ------------------------------------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Rect:
    kind: ClassVar[str] = "rect"
    x: float
    y: float
    w: float
    h: float
    fill: str
    rx: float | None = None
    opacity: float | None = None
    title: str = ""
    stroke: str | None = None


@dataclass(frozen=True)
class Line:
    kind: ClassVar[str] = "line"
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str
    width: float | None = None
    dash: str | None = None
    title: str = ""


@dataclass(frozen=True)
class Span:
    text: str
    fill: str | None = None
    weight: int | None = None


@dataclass(frozen=True)
class Text:
    kind: ClassVar[str] = "text"
    x: float
    y: float
    text: str
    size: float
    fill: str
    anchor: str | None = None  # start (default) | middle | end
    weight: int | None = None
    spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class Polyline:
    kind: ClassVar[str] = "polyline"
    points: tuple[tuple[float, float], ...]
    stroke: str
    width: float = 1.0
    opacity: float | None = None
    title: str = ""


@dataclass(frozen=True)
class Circle:
    kind: ClassVar[str] = "circle"
    cx: float
    cy: float
    r: float
    fill: str
    stroke: str | None = None
    title: str = ""


@dataclass
class Svg:
    """One ``<svg>``: ``width`` x ``height`` user units; ``css_width`` overrides the width attribute ("100%")."""

    width: float
    height: float
    elements: list = field(default_factory=list)
    css_width: str | None = None
    viewbox: bool = True
    label: str | None = None  # aria-label
    hatch: bool = False  # define the "rejected" hatch pattern (url(#hatch))


# ------------------------------------------------------------------------------------------------ axes


def _x_ticks(lo: float, hi: float, n: int, x0: float, sx: float, span: tuple[float, float], label_y: float,
             stroke: str, size: float, unit: str = "") -> list:  # fmt: skip
    """An x axis's ticks at ``nice_ticks(lo, hi, n)``: value ``t`` sits at ``x0 + (t - lo) * sx`` (user units),
    drawn as a vertical line from ``span[0]`` to ``span[1]`` and a centred label (``unit`` appended) at
    ``label_y``, ``size`` px."""
    out: list = []
    for t, label in nice_ticks(lo, hi, n):
        x = x0 + (t - lo) * sx
        out.append(Line(x, span[0], x, span[1], stroke))
        out.append(Text(x, label_y, f"{label}{unit}", size, MUTE, anchor="middle"))
    return out


# ------------------------------------------------------------------------------------------ bar charts


def hbar_chart(items: Sequence[tuple[str, dict[str, int]]], colors: dict[str, str], names: dict[str, str],
               width: int = 560) -> Svg | None:  # fmt: skip
    """Horizontal stacked bars: one row per label, segments keyed like ``colors`` (``names``: hover words).

    None when there are no items (the template says so instead)."""
    if not items:
        return None
    label_w, row_h, pad = 190, 22, 6
    total_max = max(sum(v.values()) for _, v in items)
    plot_w = width - label_w - 60
    svg = Svg(width, len(items) * row_h + pad * 2)
    for i, (label, segs) in enumerate(items):
        y = pad + i * row_h
        svg.elements.append(Text(label_w - 8, y + 15, label, 12, INK, anchor="end"))
        x = float(label_w)
        for k, c in segs.items():
            if not c:
                continue
            w = max(plot_w * c / total_max, 1.5)
            title = f"{label}: {c} ({names.get(k, k)})"
            svg.elements.append(Rect(x, y + 3, w, row_h - 7, colors.get(k, "#888"), rx=3, title=title))
            x += w
        svg.elements.append(Text(x + 6, y + 15, num(sum(segs.values())), 12, MUTE))
    return svg


# -------------------------------------------------------------------------------------------- timeline


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


def timeline_chart(samples: pd.DataFrame, rejects: pd.DataFrame, sessions: Sequence[str], stride_s: float,
                   width: int = 1240) -> Svg:  # fmt: skip
    """One row per session, one lane per modality over session time.

    ``samples``: key, session, split, clip_start_s, clip_end_s, has_*; ``rejects``: rejects.parquet rows with a
    ``kind`` column. Rejected windows and modalities carry their reason in a hover title.
    """
    label_w, lane_h, lane_gap, row_pad, axis_h = 190, 9, 1, 14, 26
    plot_w = width - label_w - 16
    row_h = len(MODALITIES) * (lane_h + lane_gap) + row_pad
    wrej = rejects[rejects["kind"] == "window"]
    mrej = rejects[(rejects["kind"] == "modality") & rejects["key"].notna()]
    srej = rejects[rejects["kind"] == "repair"]
    irej = rejects[rejects["kind"] == "input"]
    ends = [samples["clip_end_s"].max() if len(samples) else 0.0, wrej["end_s"].max() if len(wrej) else 0.0]
    t_max = max([float(x) for x in ends if pd.notna(x)] + [1e-9])
    sx = plot_w / t_max
    h = axis_h + len(sessions) * row_h + 4
    svg = Svg(width, h, label="timeline", hatch=True)
    el = svg.elements
    el += _x_ticks(0, t_max, 9, label_w, sx, (axis_h - 6, h), axis_h - 10, "#eef0f3", 11, unit=" s")
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
        el.append(Text(0, y0 + 14, session, 12.5, INK, weight=600))
        el.append(Text(0, y0 + 29, sub, 11, MUTE))
        if len(sw):
            el.append(Text(0, y0 + 43, f"{len(sw)} window(s) rejected", 11, "#b91c1c"))
        for i, mod in enumerate(MODALITIES):
            el.append(Text(label_w - 6, y0 + i * (lane_h + lane_gap) + 8, mod, 8.5, "#8792a0", anchor="end"))
        if len(si) and not len(ss) and not len(sw):
            r = si.iloc[0]
            el.append(Rect(label_w, y0, plot_w, row_h - row_pad, "#fde2e1", rx=4,
                           title=f"{session}: {r['reason']}\n{r['detail']}"))  # fmt: skip
            el.append(Text(label_w + 10, y0 + 30, f"whole input rejected: {r['reason']} — {short(r['detail'], 90)}",
                           12, "#8f1d17"))  # fmt: skip
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
                fill = {"present": COLORS[mod], "absent": "#e7eaee", "rejected": "url(#hatch)", "window": "#b91c1c"}
                span = f"{num(seg.start)}–{num(seg.end)} s, {seg.n} window(s)"
                what = {"present": "present", "absent": "absent (no stream or no caption)"}.get(
                    seg.state, f"{'window' if seg.state == 'window' else mod} rejected: {seg.reason}\n{seg.detail}"
                )
                el.append(Rect(x, y, w, lane_h, fill[seg.state], rx=1.5, title=f"{session} · {mod} · {span}\n{what}"))
        for j, (_, r) in enumerate(pd.concat([srej[srej["session"] == session], si]).iterrows()):
            if j >= 5:
                break
            mod = r["modality"] if isinstance(r["modality"], str) else None
            lane = MODALITIES.index(mod) if mod in MODALITIES else 0
            y = y0 + lane * (lane_h + lane_gap) + lane_h / 2
            x = label_w + plot_w - 6 - j * 12
            title = f"{session} · {mod or 'input'} · {r['reason']}: {r['detail']} ({r['source']})"
            el.append(Circle(x, y, 4.5, "#334155", stroke="#fff", title=title))
    return svg


# ------------------------------------------------------------------------------------------- histograms


@dataclass(frozen=True)
class Histogram:
    svg: Svg
    stats: str  # one line: n, median, p5–p95, missing, clipped


def histogram(values: np.ndarray, color: str, marks: Sequence[tuple[float, str]] = (), width: int = 300,
              height: int = 120) -> Histogram:  # fmt: skip
    """A histogram of the finite ``values`` and a one-line summary; long tails are clipped into the edge bins
    (and the summary says so) so that the bulk stays readable. ``marks``: (value, label) red lines."""
    v = values[np.isfinite(values)]
    missing = len(values) - len(v)
    if not len(v):
        svg = Svg(width, height, [Text(width / 2, height / 2, "no values", 12, MUTE, anchor="middle")], viewbox=False)
        return Histogram(svg, f"{num(missing)} missing")
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
    svg = Svg(width, height, css_width="100%")
    el = svg.elements
    el += [
        Line(ml, mt + ph, ml + pw, mt + ph, "#c9ced5"),
        Text(ml - 4, mt + 8, str(cmax), 10, MUTE, anchor="end"),
        Text(ml - 4, mt + ph, "0", 10, MUTE, anchor="end"),
    ]
    for i, c in enumerate(counts):
        if not c:
            continue
        bh = max(ph * c / cmax, 1.0)
        title = f"{num(float(edges[i]))} to {num(float(edges[i + 1]))}: {int(c)}"
        el.append(Rect(ml + i * bw + 0.5, mt + ph - bh, max(bw - 1, 0.5), bh, color, opacity=0.85, title=title))
    sx = pw / (hi - lo)
    el += _x_ticks(lo, hi, 5, ml, sx, (mt + ph, mt + ph + 4), height - 6, "#c9ced5", 10)
    med = float(np.median(v))
    if lo <= med <= hi:
        x = ml + (med - lo) * sx
        el.append(Line(x, mt, x, mt + ph, INK, dash="3 3", title=f"median {num(med)}"))
    for value, label in marks:
        if lo <= value <= hi:
            x = ml + (value - lo) * sx
            el.append(Line(x, mt, x, mt + ph, "#dc2626", width=1.5, title=label))
            el.append(Text(x - 3, mt + 9, label, 10, "#dc2626", anchor="end"))
    p5, p95 = np.percentile(v, [5, 95])
    stats = f"n {num(len(v))} · median {num(med)} · p5–p95 {num(float(p5))} to {num(float(p95))}"
    if missing:
        stats += f" · {num(missing)} missing"
    if clipped:
        extremes = f"min {num(float(v.min()))}, max {num(float(v.max()))}"
        stats += f" · {num(clipped)} outside, clipped to the edges ({extremes})"
    return Histogram(svg, stats)


# ------------------------------------------------------------------------------------------------- IMU


def imu_charts(imu: np.ndarray, clip_frac: tuple[float, float] | None = None, width: int = 340,
               height: int = 84) -> list[Svg]:  # fmt: skip
    """Accelerometer and gyroscope traces (rows 0-2 and 3-5 of a 6 x T window), at most 500 points a line.

    ``clip_frac``: where the 2 s clip lies inside the IMU window, as fractions of it (shaded)."""
    axes_c = ("#dc2626", "#16a34a", "#2563eb")
    out = []
    step = max(imu.shape[1] // 500, 1)
    for title, rows, unit in (("accel", (0, 1, 2), "m/s²"), ("gyro", (3, 4, 5), "rad/s")):
        block = imu[list(rows), ::step].astype(np.float64)
        lo, hi = float(np.nanmin(block)), float(np.nanmax(block))
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        ml, mt, mb = 4, 14, 4
        pw, ph = width - 2 * ml, height - mt - mb
        svg = Svg(width, height, [Rect(ml, mt, pw, ph, "#fafbfc", stroke="#e3e6ea")])
        if clip_frac:
            x0, x1 = ml + clip_frac[0] * pw, ml + clip_frac[1] * pw
            svg.elements.append(Rect(x0, mt, x1 - x0, ph, "#2a9d9b", opacity=0.1,
                                     title="the 2 s clip inside the 5 s IMU window"))  # fmt: skip
        if lo < 0 < hi:
            y = mt + ph * hi / (hi - lo)
            svg.elements.append(Line(ml, y, ml + pw, y, "#d5d9de"))
        for r, color, axis in zip(range(3), axes_c, "xyz", strict=True):
            ys = mt + ph * (hi - block[r]) / (hi - lo)
            xs = ml + np.arange(block.shape[1]) * pw / max(block.shape[1] - 1, 1)
            pts = tuple((float(x), float(y)) for x, y in zip(xs, ys, strict=True) if np.isfinite(y))
            svg.elements.append(Polyline(pts, color, 1.0, opacity=0.85, title=f"{title} {axis}"))
        spans = (Span(f"{unit} · {num(lo)} to {num(hi)} · ", MUTE, 400), Span("x", "#dc2626"), Span(" "),
                 Span("y", "#16a34a"), Span(" "), Span("z", "#2563eb"))  # fmt: skip
        svg.elements.append(Text(ml, 10, f"{title} ", 10.5, INK, weight=600, spans=spans))
        out.append(svg)
    return out
