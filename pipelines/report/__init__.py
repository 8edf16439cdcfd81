"""The nightly data-quality report: one self-contained HTML page over a finished build.

    bindset report DATA/            ->  DATA/quality/report.html

Three parts: ``view.py`` reads the build and computes what the page shows (dataclasses of numbers and short
strings), ``charts.py`` lays out the inline-SVG charts as geometry, and the Jinja2 templates in
``templates/`` (autoescaped) write the page. The page needs no network: CSS is inline, charts are SVG,
images are data URIs, there is no script, and a Content-Security-Policy forbids fetching anything. The same
DATA and arguments give the same bytes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from pipelines import storage
from pipelines.report import charts, fmt
from pipelines.report.view import SECTIONS, build_view, load

__all__ = ["SECTIONS", "hist_svg", "render", "timeline_svg", "write_report"]

TEMPLATES = Path(__file__).parent / "templates"


def _coord(x) -> str:
    return f"{x:.1f}" if isinstance(x, float) else str(x)


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(num=fmt.num, pct=fmt.pct, short=fmt.short, c=_coord, c0=lambda x: f"{x:g}")
    return env


def render(view) -> str:
    """The page of a ``view.ReportView``."""
    css = Markup((TEMPLATES / "report.css").read_text())  # our own file, not data: no escaping
    return _env().get_template("report.html.j2").render(v=view, css=css)


#: What the page reads besides the shards, relative to DATA (copied to a scratch folder when DATA is a URL).
_REPORT_INPUTS = ("manifest.json", "index.parquet", "rejects.parquet", "_work/builds.jsonl",
                  "quality/validation.json", "quality/tables/reasons.parquet", "sync.parquet")  # fmt: skip


def write_report(data: Path | str, *, gallery: int = 12, seed: int = 0) -> Path | storage.Location:
    """Write DATA/quality/report.html (atomically) and return its path.

    ``gallery``: how many samples the gallery shows, picked with ``seed``. Raises FileNotFoundError when
    DATA holds no finished build (no manifest.json). ``data`` may be an ``s3://``/``gs://`` URL: the tables
    are copied to a scratch folder, the gallery's members are read from the shards by byte range, and the
    page is written with one PUT (the return value is then a ``storage.Location``).
    """
    if storage.is_url(data):
        loc = storage.location(data)
        with tempfile.TemporaryDirectory(prefix="bindset-report-") as tmp:
            local = Path(tmp) / "data"
            for rel in _REPORT_INPUTS:
                storage.download(loc / rel, local / rel)
            if (local / "manifest.json").exists():  # the page's "built" time is the commit's, not the copy's
                when = storage.stat(loc / "manifest.json").modified
                os.utime(local / "manifest.json", (when, when))
            ds = replace(load(local, seed), shards_at=loc / "shards", shown_root=str(loc))
            page = render(build_view(ds, gallery=gallery, seed=seed))
        out = loc / "quality" / "report.html"
        storage.put_atomic(out, page.encode("utf-8"))
        return out
    data = Path(data)
    page = render(build_view(load(data, seed), gallery=gallery, seed=seed))
    out = data / "quality" / "report.html"
    storage.atomic_write_text(out, page)
    return out


def svg_markup(chart: charts.Svg) -> str:
    """One chart as SVG text, drawn by the same template macro the page uses."""
    return str(_env().get_template("_svg.html.j2").module.svg(chart))


def hist_svg(values: np.ndarray, color: str, marks=(), width: int = 300, height: int = 120) -> tuple[str, str]:
    """An SVG histogram of the finite ``values`` and its one-line summary (see ``charts.histogram``)."""
    h = charts.histogram(values, color, marks, width, height)
    return svg_markup(h.svg), h.stats


def timeline_svg(samples: pd.DataFrame, rejects: pd.DataFrame, sessions, stride_s: float, width: int = 1240) -> str:
    """The sessions' timeline as SVG text (see ``charts.timeline_chart``)."""
    return svg_markup(charts.timeline_chart(samples, rejects, sessions, stride_s, width))
