"""The data-quality report: structure of the page, its charts as pure functions, and a headless-Chromium render.

uv run pytest tests/test_report.py -q
"""

from __future__ import annotations

import json
import re
import shutil
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bindset.synth import defects
from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build
from pipelines.report import SECTIONS, hist_svg, timeline_svg, write_report
from schemas.modalities import MEMBERS
from schemas.modalities import NAMES as MODALITIES
from schemas.reasons import QUALITY_FILTER
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA, member_column
from tests.browser import chromium, load_page
from transforms.config import BuildConfig

GALLERY = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four short sessions, one with thermal frames deleted (modality rejects), one with a broken manifest
    (an input reject)."""
    raw = tmp_path_factory.mktemp("raw")
    synth(raw, SynthConfig(sessions=4, seconds=6.0, width=160, height=120, seed=0))
    for png in sorted((raw / "s000_002" / "thermal").glob("*.png"))[10:40]:
        png.unlink()
    manifest = raw / "s000_001" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["streams"]["video"]["clock"]["drift_ppm"] = "fast"
    manifest.write_text(json.dumps(m))
    # quality-filter rejects (a silent window: audio dropped; a black one: window lost) and an input repair
    defects.silence_audio(raw, "s000_000", 1.5, 4.5)
    defects.black_video(raw, "s000_003", 2.0, 4.0)
    defects.duplicate_imu_row(raw, "s000_003", at_s=3.0)
    out = tmp_path_factory.mktemp("data") / "data"
    build(raw, out, BuildConfig(), EngineConfig("local"))
    return out


@pytest.fixture(scope="module")
def report(data) -> Path:
    return write_report(data, gallery=GALLERY, seed=1)


class _Page(HTMLParser):
    """Elements with their attributes, the open sections and gallery cards around each, and section text."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict, str | None, str | None]] = []  # tag, attrs, section, card key
        self.text: dict[str, list[str]] = {}
        self._stack: list[tuple[str, str | None, str | None]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        section = a["id"] if tag == "section" else (self._stack[-1][1] if self._stack else None)
        card = a.get("data-key") if tag == "article" else (self._stack[-1][2] if self._stack else None)
        self.elements.append((tag, a, section, card))
        if tag not in ("img", "br", "meta", "hr", "input", "wbr", "source"):  # HTML void elements; <x/> ends itself
            self._stack.append((tag, section, card))

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._stack and self._stack[-1][1] and data.strip():
            self.text.setdefault(self._stack[-1][1], []).append(data.strip())


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_sections_present_and_filled(report):
    page = _parse(report)
    ids = [a["id"] for tag, a, _, _ in page.elements if tag == "section"]
    assert ids == [sid for sid, _ in SECTIONS]
    for sid in ids:
        inside = [tag for tag, _, s, _ in page.elements if s == sid]
        assert len(" ".join(page.text.get(sid, []))) > 40, sid
        assert {"svg", "img", "table", "div"} & set(inside), sid
    for sid in ("rejects", "timeline", "distributions"):
        assert any(tag == "svg" and s == sid for tag, _, s, _ in page.elements), sid


def test_gallery_shows_every_member_of_each_sample(report, data):
    page = _parse(report)
    index = pq.read_table(data / "index.parquet").to_pandas().set_index("key")
    cards = [a["data-key"] for tag, a, s, _ in page.elements if tag == "article" and s == "gallery"]
    assert len(cards) == GALLERY == len(set(cards))
    for key in cards:
        row = index.loc[key]
        expected = {m for m in MEMBERS if m != "json" and isinstance(row[member_column(m)], str)}
        shown = {a["data-member"] for _, a, _, card in page.elements if card == key and "data-member" in a}
        assert shown == expected, key
        missing = {a["data-missing"] for _, a, _, card in page.elements if card == key and "data-missing" in a}
        assert missing == {m for m in MODALITIES if not row[f"has_{m}"]}, key
        imgs = [a for tag, a, _, card in page.elements if card == key and tag == "img"]
        assert len(imgs) == len(expected & {"jpg", "frame1.jpg", "mel.npy", "depth.png", "thermal.png"})
        assert all(a["src"].startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for a in imgs)
    # the seed picks the samples, deterministically
    assert write_report(data, gallery=GALLERY, seed=1).read_bytes() == report.read_bytes()


def test_self_contained(report):
    html = report.read_text()
    page = _parse(report)
    for tag, a, _, _ in page.elements:
        for attr in ("src", "href", "xlink:href", "action"):
            value = a.get(attr) or ""
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, attr, value[:80])
        assert tag not in ("script", "link", "iframe", "object", "embed")
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", html)
    assert "@import" not in html


def test_rejects_are_visible_with_their_reasons(report, data):
    html = report.read_text()
    rejects = pq.read_table(data / "rejects.parquet").to_pandas()
    assert {"manifest_invalid", "file_missing", "imu_out_of_range"} <= set(rejects["reason"])
    for reason in set(rejects["reason"]):
        assert f"<code>{reason}</code>" in html  # the reasons table
    titles = re.findall(r"<title>(.*?)</title>", html.split("id='timeline'")[1].split("id='distributions'")[0], re.S)
    assert any("thermal rejected: file_missing" in t for t in titles)
    assert any("s000_001: manifest_invalid" in t for t in titles)  # the whole session is one bar


def test_timeline_marks_window_rejects_and_merges_runs():
    samples = pd.DataFrame(
        {
            "key": [f"s_{i:09d}" for i in (0, 2000, 4000, 8000)],
            "session": "s",
            "split": "train",
            "clip_start_s": [0.0, 2.0, 4.0, 8.0],
            "clip_end_s": [2.0, 4.0, 6.0, 10.0],
            **{f"has_{m}": True for m in MODALITIES},
        }
    )
    samples.loc[3, "has_depth"] = False
    rejects = pd.DataFrame(
        {
            "source": ["v.mp4", "d/7.png"],
            "session": ["s", "s"],
            "key": ["s_000006000", "s_000008000"],
            "start_s": [6.0, 8.0],
            "end_s": [8.0, 10.0],
            "modality": [None, "depth"],
            "reason": ["no_frames_in_window", "file_missing"],
            "detail": ["no frame <between> 6 and 8 s", "d/7.png: not found"],
            "kind": ["window", "modality"],
        }
    )
    svg = timeline_svg(samples, rejects, ["s"], stride_s=2.0)
    titles = re.findall(r"<title>(.*?)</title>", svg, re.S)
    assert sum("window rejected: no_frames_in_window" in t for t in titles) == len(MODALITIES)
    assert "no frame &lt;between&gt; 6 and 8 s" in svg  # detail escaped
    assert any("depth rejected: file_missing" in t for t in titles)
    # the first three windows of each lane are one bar
    assert sum("0–6 s, 3 window(s)" in t for t in titles) == len(MODALITIES)


def test_histogram_clips_long_tails_and_survives_no_values():
    values = np.concatenate([np.random.default_rng(0).normal(10, 1, 1000), [1e6, np.nan]])
    svg, stats = hist_svg(values, "#000")
    assert svg.startswith("<svg") and "n 1,001" in stats and "1 missing" in stats and "clipped" in stats
    svg, stats = hist_svg(np.array([np.nan, np.nan]), "#000")
    assert "no values" in svg and "2 missing" in stats
    svg, _ = hist_svg(np.full(5, 3.0), "#000")  # one value: a padded range, no division by zero
    assert "<rect" in svg


def test_a_build_with_no_samples_still_reports(data, tmp_path):
    empty = tmp_path / "data"
    (empty / "shards").mkdir(parents=True)
    shutil.copy(data / "manifest.json", empty / "manifest.json")
    pq.write_table(INDEX_SCHEMA.empty_table(), empty / "index.parquet")
    pq.write_table(REJECTS_SCHEMA.empty_table(), empty / "rejects.parquet")
    page = _parse(write_report(empty))
    assert [a["id"] for tag, a, _, _ in page.elements if tag == "section"] == [sid for sid, _ in SECTIONS]
    assert "No samples at all." in page.text["headline"]


@pytest.fixture(scope="module")
def browser() -> str:
    binary = chromium()
    if binary is None:
        # the report's promise is that it renders in a real browser: no browser is a failed check, not a skip
        pytest.fail("no Chromium, and installing Debian's chromium failed (needs root and apt-get)")
    return binary


def test_renders_in_chromium_without_errors(report, browser, tmp_path):
    shot = tmp_path / "report.png"
    broken = "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
    result = load_page(browser, report, shot, evaluate={"broken": broken, "images": "document.images.length"})
    assert result.errors == []
    assert result.values["images"] > GALLERY and result.values["broken"] == 0
    img = cv2.imread(str(shot))
    assert img.shape[:2] == (3000, 1400)
    colours = np.unique(img.reshape(-1, 3).astype(np.uint32) @ np.array([1, 256, 65536], np.uint32)).size
    assert img.std() > 20 and colours > 500, (img.std(), colours)


def test_chromium_check_catches_network_use(report, browser, tmp_path):
    # proves the check above can fail: the page's Content-Security-Policy blocks any fetch and says so
    page = tmp_path / "leaky.html"
    page.write_text(report.read_text().replace("</main>", "<img src='https://example.invalid/x.png'></main>", 1))
    result = load_page(browser, page, None)
    assert result.errors and any("example.invalid" in e for e in result.errors), result.errors


def test_rejects_by_reason_are_data_in_the_view_model(data, report):
    from pipelines.report.view import build_view, load

    view = build_view(load(data, 0), gallery=0, seed=0)
    rejects = pq.read_table(data / "rejects.parquet").to_pandas()
    counts = rejects["reason"].value_counts()
    rows = view.rejects.reasons
    assert {r.reason: r.rows for r in rows} == counts.to_dict()
    assert [r.rows for r in rows] == sorted(counts, reverse=True)
    for r in rows:
        assert sum(r.by_kind.values()) == r.rows == sum(r.by_where.values()), r
        assert r.sessions == rejects.loc[rejects["reason"] == r.reason, "session"].nunique()
    assert view.rejects.total == len(rejects)
    # every reason is a table row the page can address
    assert set(re.findall(r"<tr data-reason='([a-z_]+)'>", report.read_text())) == set(counts.index)


def test_text_from_the_data_is_escaped_never_markup(data, tmp_path):
    import pyarrow as pa

    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("quality"))
    rejects = pq.read_table(copy / "rejects.parquet").to_pandas()
    rejects.loc[0, "detail"] = "<script>alert('x')</script> & more"
    pq.write_table(pa.Table.from_pandas(rejects, schema=REJECTS_SCHEMA, preserve_index=False), copy / "rejects.parquet")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["code_version"] = "<b>v1</b>"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    html = write_report(copy, gallery=1).read_text()
    assert "<script" not in html and "<b>v1</b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert "&lt;b&gt;v1&lt;/b&gt;" in html


def test_reject_kinds_tell_repairs_from_modality_rejects():
    from pipelines.report.view import reject_kind

    assert reject_kind(None, None) == "input"
    assert reject_kind(None, "imu") == "repair"  # input-level repair: key null, modality set, no time range
    assert reject_kind("s_000000000", None) == "window"
    assert reject_kind("s_000000000", "audio") == "modality"


def test_quality_filters_repairs_and_rates_against_bounds(data, tmp_path):
    from pipelines.report.view import build_view, load
    from pipelines.validate import validate

    rejects = pq.read_table(data / "rejects.parquet").to_pandas()
    filters = rejects[rejects["reason"].isin({r.value for r in QUALITY_FILTER})]
    assert set(filters["reason"]) == {"audio_silent", "frame_black"}, rejects["reason"].value_counts()
    repairs = rejects[rejects["key"].isna() & rejects["modality"].notna()]
    assert len(repairs) >= 1 and set(repairs["modality"]) == {"imu"}

    # before validation: the filter group is there, with no rates
    view = build_view(load(data, 0), gallery=0, seed=0)
    f = view.rejects.filters
    assert not f.validated and not view.rejects.validated and f.total == len(filters)
    assert {r.reason: r.rows for r in f.rows} == filters["reason"].value_counts().to_dict()
    assert all(r.rate is None and r.bound is None for r in f.rows)
    black = next(r for r in f.rows if r.reason == "frame_black")
    silent = next(r for r in f.rows if r.reason == "audio_silent")
    assert black.where == "(window)" and silent.where == "audio"
    assert black.details == [(k, d) for k, d in zip(filters.loc[filters["reason"] == "frame_black", "key"],
                                                      filters.loc[filters["reason"] == "frame_black", "detail"],
                                                      strict=True)][:5]  # fmt: skip
    assert all("luma" in d for _, d in black.details) and all("dBFS" in d for _, d in silent.details)
    # repairs are their own kind: counted neither as a modality reject nor as a whole input
    rows = {r.reason: r for r in view.rejects.reasons}
    for reason, n in repairs["reason"].value_counts().items():
        assert rows[reason].by_kind["repair"] == n and rows[reason].by_where["(repair)"] == n
    kinds = load(data, 0).rejects["kind"]
    assert (kinds == "repair").sum() == len(repairs)
    assert (kinds == "modality").sum() == int((rejects["key"].notna() & rejects["modality"].notna()).sum())
    assert (kinds == "input").sum() == int((rejects["key"].isna() & rejects["modality"].isna()).sum())

    # after validation: every reason's rate and bound are the gate's own table's
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    validate(copy, verify_hashes=False)
    table = pq.read_table(copy / "quality" / "tables" / "reasons.parquet").to_pandas().set_index("reason")
    view = build_view(load(copy, 0), gallery=0, seed=0)
    assert view.rejects.validated and view.rejects.filters.validated
    planned = json.loads((copy / "manifest.json").read_text())["counts"]["windows_planned"]
    for r in view.rejects.reasons:
        assert r.rate == pytest.approx(float(table.at[r.reason, "rate"])), r.reason
        assert r.bound == pytest.approx(float(table.at[r.reason, "max_rate"])), r.reason
    for r in view.rejects.filters.rows:
        assert r.rate == pytest.approx(r.rows / planned) and r.bound == pytest.approx(0.5), r
        assert not r.over
    html = write_report(copy, gallery=0).read_text()
    section = html.split("id='quality-filters'")[1].split("</table>")[0]
    assert set(re.findall(r"<tr data-filter='([a-z_]+)'>", section)) == {"audio_silent", "frame_black"}
    got = dict(re.findall(r"<tr data-filter='([a-z_]+)'>.*?data-rate='([0-9.]+)'", section, re.S))
    assert {k: float(v) for k, v in got.items()} == pytest.approx(
        {k: float(table.at[k, "rate"]) for k in got}, abs=1e-6
    )
    assert f"{black.details[0][0]}</span>: {html_escape(black.details[0][1])}" in section  # the filter's detail
    assert "Not validated" not in html and "Not validated" in write_report(data, gallery=0).read_text()
    # a validation of another dataset version is stale: no rates from it
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = "other"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert not build_view(load(copy, 0), gallery=0, seed=0).rejects.validated
