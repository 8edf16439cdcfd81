"""The report's Clock sync section (issue 14), and the index's sync_err_* columns on the clock used.

uv run pytest tests/test_report_sync.py -q

Builds one tiny ``synth --clocks wrong`` capture set (3 sessions of 8 s at 64x48, where some streams declare a
clock 0.2-1.5 s off) three times, with ``--clocks verify``, ``estimate`` and ``declared``, and reads the pages.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build
from pipelines.report import write_report
from pipelines.report.clocks import DECLARED_LINE, LAG_EDGES_MS, NO_TABLE_LINE, OFF_MAX_ROWS, clock_sync
from transforms.clockcheck import STATUSES
from transforms.config import BuildConfig

SESSIONS = ("s007_000", "s007_001", "s007_002")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    synth(raw, SynthConfig(sessions=3, seconds=8.0, seed=7, clocks="wrong", impacts_per_minute=30, width=64,
                           height=48, depth_size=(32, 24), thermal_size=(32, 24), workers=1))  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for mode in ("verify", "estimate", "declared"):
        data = tmp_path_factory.mktemp(mode) / "data"
        build(raw, data, BuildConfig(clocks=mode), EngineConfig("local"))
        write_report(data, gallery=0)
        out[mode] = data
    return out


def _truth(raw: Path, session: str) -> dict:
    return json.loads((raw / "_truth" / f"{session}.json").read_text())


def _wrong(raw: Path) -> set[tuple[str, str]]:
    """(session, stream) whose declared clock is not the true one."""
    return {(s, k) for s in SESSIONS for k, v in _truth(raw, s)["declared_clocks"].items()
            if v != _truth(raw, s)["clocks"][k]}  # fmt: skip


class _Section(HTMLParser):
    """The sync section's elements: (tag, attrs, the enclosing <tr>'s attrs, text) and its message line."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[str, dict, dict, str]] = []
        self.inside = False
        self._tr: dict = {}
        self._open: list[tuple[str, dict, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.inside = a.get("id") == "sync"
        if not self.inside:
            return
        if tag == "tr":
            self._tr = a
        self._open.append((tag, a, []))

    def handle_endtag(self, tag):
        if not self.inside or not self._open:
            return
        while self._open:
            t, a, text = self._open.pop()
            joined = " ".join(text)
            if self._open:
                self._open[-1][2].append(joined)
            self.cells.append((t, a, self._tr, joined))
            if t == tag:
                break

    def handle_data(self, data):
        if self.inside and self._open and data.strip():
            self._open[-1][2].append(data.strip())

    def find(self, tag: str | None = None, **attrs) -> list[tuple[str, dict, dict, str]]:
        return [c for c in self.cells if (tag is None or c[0] == tag) and all(c[1].get(k) == v
                                                                             for k, v in attrs.items())]  # fmt: skip


def _section(data: Path) -> _Section:
    page = _Section()
    page.feed((data / "quality" / "report.html").read_text())
    return page


def _status_cells(page: _Section) -> dict[tuple[str, str], int]:
    """(stream, status) -> the count the status table shows ("·" is 0)."""
    out = {}
    for _, a, tr, text in page.find("td"):
        if "data-status" in a:
            out[(tr["data-stream"], a["data-status"])] = 0 if text in ("·", "") else int(text.replace(",", ""))
    return out


def test_verify_counts_mismatches_and_clock_mismatch_rejects(built, raw):
    data = built["verify"]
    sync = pq.read_table(data / "sync.parquet").to_pandas()
    rejects = pq.read_table(data / "rejects.parquet").to_pandas()
    page = _section(data)
    assert page.find("section")[0][1]["data-clocks"] == "verify"
    cells = _status_cells(page)
    by = sync.groupby(["stream", "status"]).size()
    for stream in sync["stream"].unique():
        for status in STATUSES:
            assert cells[(stream, status)] == int(by.get((stream, status), 0)), (stream, status)
    for status in STATUSES:
        assert cells[("(all)", status)] == int((sync["status"] == status).sum())
    assert cells[("(all)", "mismatch")] > 0

    # every mismatched stream is listed (fewer than the cap here), and they are exactly the wrong ones
    listed = {tr["data-off"] for _, _, tr, _ in page.find("td") if "data-off" in tr}
    mism = sync[sync["status"] == "mismatch"]
    assert listed == {f"{s}/{k}" for s, k in zip(mism["session"], mism["stream"], strict=True)}
    assert {tuple(x.split("/")) for x in listed} <= _wrong(raw)  # no right stream flagged (test_sync: all wrong)
    shown_lag = {tr["data-off"]: float(tr["data-lag-ms"]) for _, _, tr, _ in page.find("td") if "data-off" in tr}
    for r in mism.itertuples():
        assert shown_lag[f"{r.session}/{r.stream}"] == pytest.approx(r.lag_s * 1000, abs=1e-3)

    # clock_mismatch windows per modality: the rejects' rows, and their share of the planned windows
    cm = rejects[rejects["reason"] == "clock_mismatch"]["modality"].value_counts()
    planned = json.loads((data / "manifest.json").read_text())["counts"]["windows_planned"]
    for _, a, tr, _text in page.find("td"):
        if "data-rejects" in a and tr["data-stream"] != "(all)":
            assert int(a["data-rejects"]) == int(cm.get(tr["data-stream"], 0)), tr
    assert sum(int(cm.get(m, 0)) for m in ("audio", "depth", "thermal", "imu")) == int(cm.sum()) > 0
    view = clock_sync(sync, rejects, json.loads((data / "manifest.json").read_text()))
    for row in view.streams:
        assert row.reject_share == pytest.approx(int(cm.get(row.stream, 0)) / planned)

    # the |lag| histogram: each confident estimate (video, the reference, excluded) in its bin
    conf = sync[sync["estimated_offset_s"].notna() & (sync["stream"] != "video")]
    lags = np.abs(conf["lag_s"].to_numpy()) * 1000
    bins = {float(a["data-bin"]): int(a["data-count"]) for _, a, _, _ in page.find("tr") if "data-bin" in a}
    assert sum(bins.values()) == len(conf) > 0
    for lo, hi in zip(LAG_EDGES_MS[:-1], LAG_EDGES_MS[1:], strict=True):
        assert bins[lo] == int(((lags >= lo) & (lags < hi)).sum()), lo


def test_estimate_lists_the_estimated_clocks_as_used(built, raw):
    data = built["estimate"]
    sync = pq.read_table(data / "sync.parquet").to_pandas()
    page = _section(data)
    cells = _status_cells(page)
    assert cells[("(all)", "estimated")] == int((sync["status"] == "estimated").sum()) > 0
    assert cells[("(all)", "mismatch")] == 0
    est = sync[sync["status"] == "estimated"]
    listed = {tr["data-off"] for _, _, tr, _ in page.find("td") if "data-off" in tr}
    assert listed == {f"{s}/{k}" for s, k in zip(est["session"], est["stream"], strict=True)}
    assert {tuple(x.split("/")) for x in listed} <= _wrong(raw)
    view = clock_sync(sync, pq.read_table(data / "rejects.parquet").to_pandas(),
                      json.loads((data / "manifest.json").read_text()))  # fmt: skip
    assert view.reject_rows == 0 and [r.status for r in view.off] == ["estimated"] * len(est)
    for r in view.off:  # the clock used is the estimate, in ms and ppm
        row = est[(est["session"] == r.session) & (est["stream"] == r.stream)].iloc[0]
        assert r.used_offset_ms == pytest.approx(row["estimated_offset_s"] * 1000)
        assert r.used_offset_ms != pytest.approx(r.declared_offset_ms, abs=100)
        assert r.used_drift_ppm == pytest.approx(row["estimated_drift_ppm"])
    lags = [abs(r.lag_ms) for r in view.off]
    assert lags == sorted(lags, reverse=True)  # the worst first


def test_declared_build_says_so_in_one_line(built):
    page = _section(built["declared"])
    assert page.find("section")[0][1]["data-clocks"] == "declared"
    (msg,) = page.find("p", **{"data-sync-message": "1"})
    assert msg[3] == DECLARED_LINE
    assert not page.find("table")


def test_older_dataset_without_sync_parquet_and_an_unreadable_one(built, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(built["verify"], copy)
    (copy / "sync.parquet").unlink()
    write_report(copy, gallery=0)
    (msg,) = _section(copy).find("p", **{"data-sync-message": "1"})
    assert msg[3] == NO_TABLE_LINE
    (copy / "sync.parquet").write_bytes(b"not parquet")
    write_report(copy, gallery=0)
    (msg,) = _section(copy).find("p", **{"data-sync-message": "1"})
    assert msg[3].startswith("sync.parquet could not be read (")


def test_index_sync_err_is_measured_on_the_clock_used(built, raw):
    """--clocks estimate on wrong manifests: a corrected stream's sync_err_*_ms is its stored frame (depth,
    thermal) or nearest sample (IMU) mapped by the *used* clock, and within one tolerance of the truth."""
    from schemas.manifest import ImuUnits
    from transforms.framestream import load_frame_table
    from transforms.imu import read_imu_csv
    from transforms.layouts import ClockSpec, discover

    data = built["estimate"]
    sync = pq.read_table(data / "sync.parquet").to_pandas()
    index = pq.read_table(data / "index.parquet").to_pandas()
    units = {u.session: u for u in discover(raw, "auto").units}
    checked = 0
    for r in sync[sync["status"] == "estimated"].itertuples():
        if r.stream == "audio":
            continue  # the audio residual has no stored sample time to check it against
        used = ClockSpec(r.used_offset_s, r.used_drift_ppm)
        true = _truth(raw, r.session)["clocks"][r.stream]
        true = ClockSpec(true["offset_s"], true["drift_ppm"])
        rows = index[(index["session"] == r.session) & index[f"sync_err_{r.stream}_ms"].notna()]
        assert len(rows), (r.session, r.stream)
        unit = units[r.session]
        if r.stream in ("depth", "thermal"):
            spec = getattr(unit, r.stream)
            table = load_frame_table(raw, dataclasses.replace(spec, clock=ClockSpec()))  # the stream's own times
            t_of = dict(zip(table.files, table.t, strict=True))
            for row in rows.itertuples():
                t = t_of[getattr(row, f"source_{r.stream}")]
                err_ms = getattr(row, f"sync_err_{r.stream}_ms")
                assert err_ms == pytest.approx((used.to_session(t) - row.frame0_t_s) * 1000, abs=1e-3)
                assert abs(err_ms - (true.to_session(t) - row.frame0_t_s) * 1000) <= r.tolerance_s * 1000
                assert abs(err_ms - (ClockSpec(r.declared_offset_s, r.declared_drift_ppm).to_session(t)
                                     - row.frame0_t_s) * 1000) > 100  # fmt: skip
                checked += 1
        else:
            units_ = ImuUnits(accel=unit.imu.accel_units, gyro=unit.imu.gyro_units)
            track = read_imu_csv(raw / unit.imu.path, time_column=unit.imu.time_column,
                                 time_unit_s=unit.imu.time_unit_s, units=units_)  # fmt: skip
            for row in rows.itertuples():
                center = (row.clip_start_s + row.clip_end_s) / 2
                t = used.to_stream(center + row.sync_err_imu_ms / 1000)  # the nearest sample, on the used clock
                assert np.min(np.abs(track.t - t)) < 1e-6
                assert abs(true.to_session(t) - center) * 1000 <= abs(row.sync_err_imu_ms) + r.tolerance_s * 1000
                checked += 1
    assert checked >= 4


def test_mismatch_table_is_capped_worst_first():
    n = OFF_MAX_ROWS + 7
    lag = np.linspace(0.2, 1.5, n)
    sync = pd.DataFrame({
        "session": [f"s{i:03d}" for i in range(n)], "stream": "imu", "declared_offset_s": 0.0,
        "declared_drift_ppm": 0.0, "estimated_offset_s": lag, "estimated_drift_ppm": 0.0, "confidence": 0.9,
        "status": "mismatch", "used_offset_s": 0.0, "used_drift_ppm": 0.0, "lag_s": lag,
    })  # fmt: skip
    rejects = pd.DataFrame({"reason": ["clock_mismatch"] * 3, "modality": ["imu"] * 3, "key": ["a", "a", "b"]})
    view = clock_sync(sync, rejects, {"config": {"clocks": "verify"}, "counts": {"windows_planned": 10}})
    assert len(view.off) == OFF_MAX_ROWS and view.more == 7 and view.off_total == n
    assert view.off[0].session == f"s{n - 1:03d}" and view.off[0].lag_ms == pytest.approx(1500)
    assert view.reject_rows == 3 and view.reject_windows == 2
    assert view.streams[0].reject_share == pytest.approx(0.3)
    assert sum(b.count for b in view.lag_bins) == n
    assert all(b.over_floor for b in view.lag_bins if b.count)  # all of them past the 100 ms floor
