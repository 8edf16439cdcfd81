"""Clock synchronisation from content: estimators on synthetic signals with known offsets and drifts."""

from __future__ import annotations

import numpy as np
import pytest

from transforms import activity as act
from transforms import sync

RATE = 100.0


def events_signal(times: np.ndarray, events: np.ndarray, rng, width_s: float = 0.02, noise: float = 0.05):
    """Activity of a scene with impacts at session times ``events``, seen at the given session times."""
    d = times[:, None] - events[None, :]
    clean = np.exp(-0.5 * (d / width_s) ** 2).sum(axis=1)
    return 0.2 + clean + noise * rng.random(times.shape[0])


def pair(lag_s: float, seconds: float = 30.0, seed: int = 0, n_events: int = 12, other_rate: float = 30.0):
    """(ref, other) activities where other(τ) = ref(τ + lag_s); other sampled irregularly at other_rate."""
    rng = np.random.default_rng(seed)
    events = np.sort(rng.uniform(1, seconds - 1, n_events))
    t_ref = np.arange(0, seconds, 1 / 30.0)
    t_other = np.arange(0, seconds, 1 / other_rate) + rng.uniform(-1e-3, 1e-3)
    ref = sync.to_grid(t_ref, events_signal(t_ref, events, rng), RATE)
    other = sync.to_grid(t_other, events_signal(t_other + lag_s, events, rng), RATE)
    return ref, other


@pytest.mark.parametrize("lag", [0.0, 0.3456, -1.2345, 1.9])
def test_offset_recovered_to_a_few_ms_with_subsample_refinement(lag):
    ref, other = pair(lag, seed=int(abs(lag) * 1000))
    est = sync.estimate_lag(ref, other)
    assert est.status == sync.CONFIDENT, est.reason
    assert abs(est.lag_s - lag) < 0.004
    assert est.confidence > 0.3 and est.psr > 6


def test_search_range_is_centred_on_the_declared_offset_and_configurable():
    ref, other = pair(3.2, seed=5)
    narrow = sync.estimate_lag(ref, other)  # ±2 s around 0 cannot contain 3.2 s
    assert narrow.status == sync.UNSYNCHRONISABLE
    wide = sync.estimate_lag(ref, other, sync.SyncParams(search_s=4.0))
    assert wide.status == sync.CONFIDENT and abs(wide.lag_s - 3.2) < 0.004
    centred = sync.estimate_lag(ref, other, center_s=3.0)
    assert centred.status == sync.CONFIDENT and abs(centred.lag_s - 3.2) < 0.004


def test_flat_stream_is_unsynchronisable():
    ref, _ = pair(0.0)
    flat = sync.Activity(0.0, RATE, np.full(3000, 4.0))
    est = sync.estimate_lag(ref, flat)
    assert est.status == sync.UNSYNCHRONISABLE and est.confidence == 0.0 and "activity" in est.reason


@pytest.mark.parametrize("seed", range(8))
def test_unrelated_streams_are_never_confident(seed):
    ref, _ = pair(0.0, seed=seed)
    _, other = pair(0.0, seed=seed + 100)  # different events: nothing in common
    est = sync.estimate_lag(ref, other)
    assert est.status == sync.UNSYNCHRONISABLE and est.confidence == 0.0


def test_periodic_activity_is_ambiguous_not_confident():
    t = np.arange(0, 30, 0.01)
    ref = sync.to_grid(t, 1.5 + np.sin(2 * np.pi * 1.0 * t), RATE)
    other = sync.to_grid(t, 1.5 + np.sin(2 * np.pi * 1.0 * (t + 0.2)), RATE)
    est = sync.estimate_lag(ref, other)
    assert est.status == sync.UNSYNCHRONISABLE


def test_to_grid_marks_gaps_and_outside_as_missing():
    t = np.array([0.0, 0.5, 1.0, 3.0, 3.5])
    a = sync.to_grid(t, np.arange(5.0), 10.0, max_gap_s=0.4)
    assert a.t0_s == 0.0 and len(a.values) == 36
    assert a.values[5] == pytest.approx(1.0)
    assert np.isnan(a.values[20])  # 2.0 s: 1 s from the nearest sample
    assert np.isfinite(a.values[30])


def test_corrected_clock_is_exact():
    # declared o=-400 s, d=0; truth o=-399.2 s, d=+55 ppm; lag line derived from the truth
    o_d, d_d, o_t, d_t = -400.0, 0.0, -399.2, 55.0
    t = np.array([400.0, 1000.0])  # stream times
    tau_d = t * (1 + d_d * 1e-6) + o_d
    tau = t * (1 + d_t * 1e-6) + o_t
    slope = (tau[1] - tau[0] - (tau_d[1] - tau_d[0])) / (tau_d[1] - tau_d[0])
    intercept = (tau[0] - tau_d[0]) - slope * tau_d[0]
    off, ppm = sync.corrected_clock(o_d, d_d, intercept, slope)
    assert off == pytest.approx(o_t, abs=1e-9) and ppm == pytest.approx(d_t, abs=1e-6)
    assert sync.clock_error_s(off, ppm, o_t, d_t, 700.0) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("true_ppm", [-80.0, 35.0])
def test_drift_over_ten_minutes_within_20_ppm(true_ppm):
    """A 10-minute stream on a clock with drift, declared without: offset and drift come back."""
    rng = np.random.default_rng(7)
    seconds = 600.0
    events = np.sort(rng.uniform(1, seconds - 1, 200))
    true_off, epoch = 0.6, 120.0  # device clock started 120 s before the session
    t_ref = np.arange(0, seconds, 1 / 30.0)
    ref = sync.to_grid(t_ref, events_signal(t_ref, events, rng), RATE)
    t_dev = epoch + np.arange(0, seconds, 1 / 30.0)  # the stream's own clock
    true_o = true_off - epoch * (1 + true_ppm * 1e-6)
    tau_true = t_dev * (1 + true_ppm * 1e-6) + true_o
    declared_o = -epoch  # drift undeclared, offset off by 0.6 s
    tau_decl = t_dev + declared_o
    other = sync.to_grid(tau_decl, events_signal(tau_true, events, rng), RATE)
    est = sync.estimate_clock(ref, other, declared_o, 0.0)
    assert est.status == sync.CONFIDENT and est.drift_estimated
    assert abs(est.drift_ppm - true_ppm) < 20
    for t in (t_dev[0], t_dev[-1]):
        assert abs(sync.clock_error_s(est.offset_s, est.drift_ppm, true_o, true_ppm, t)) < 0.005


def test_drift_fit_rejects_outlier_windows():
    rng = np.random.default_rng(3)
    seconds = 400.0
    events = np.sort(rng.uniform(1, seconds - 1, 150))
    t = np.arange(0, seconds, 1 / 30.0)
    ref = sync.to_grid(t, events_signal(t, events, rng), RATE)
    lag = 0.25 + 50e-6 * t
    glitch = (t >= 90) & (t < 180)
    lag[glitch] += 0.4  # a stretch on a stepped clock: confident windows, but off the line
    sig = events_signal(t + lag, events, rng)
    other = sync.to_grid(t, sig, RATE)
    fit, windows = sync.estimate_drift(ref, other, center_s=0.25)
    assert fit.status == sync.CONFIDENT
    assert abs(fit.slope * 1e6 - 50) < 20 and abs(fit.intercept_s - 0.25) < 0.005
    assert fit.inliers < fit.windows


# ------------------------------------------------------------------------------------------- activity


def test_frame_difference_energy_peaks_between_the_frames_of_a_cut():
    times = np.arange(10) / 10.0
    frames = [np.full((6, 8), 10 if k < 4 else 200, np.uint8) for k in range(10)]
    t, e = act.frame_difference_energy(frames, times)
    assert t[np.argmax(e)] == pytest.approx(0.35) and e.max() == pytest.approx(190.0)
    with pytest.raises(ValueError):
        act.frame_difference_energy(frames[:1], times[:1])


def test_spectral_flux_marks_an_onset_within_10_ms():
    sr = 16000
    t = np.arange(2 * sr) / sr
    rng = np.random.default_rng(0)
    # a scene change: hum and low noise, then a louder high hiss (as at a class change of the synthetic world)
    low = np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size)
    high = np.diff(rng.standard_normal(t.size + 1))
    x = np.where(t >= 1.237, high, low)
    ft, flux = act.spectral_flux(x, sr)
    assert abs(ft[np.argmax(flux)] - 1.237) < 0.01


def test_novelty_peaks_at_a_motion_start():
    rng = np.random.default_rng(1)
    t = np.arange(0, 6, 1 / 200)
    gyro = 0.01 * rng.standard_normal((3, t.size))
    gyro[1, t >= 2.5] += np.sin(2 * np.pi * 2.8 * t[t >= 2.5])  # walking starts at 2.5 s
    nt, nov = act.novelty(t, gyro)
    assert abs(nt[np.argmax(nov)] - 2.5) < 0.02


def test_camera_rotation_rate_from_optical_flow():
    """A camera panning over a texture: flow speed over focal length gives the rotation rate."""
    rng = np.random.default_rng(2)
    import cv2

    world = cv2.GaussianBlur((rng.random((120, 600)) * 255).astype(np.uint8), (5, 5), 1.5)
    focal = 100.0
    fps = 30.0
    omega = 0.6  # rad/s -> 2 px per frame
    times = np.arange(20) / fps
    frames = [world[:, int(round(focal * omega * t)) : int(round(focal * omega * t)) + 160] for t in times]
    _, w = act.camera_rotation_rate(frames, times, focal)
    assert np.median(w) == pytest.approx(omega, rel=0.1)


# ------------------------------------------------------------------------ synthetic ground truth (synth)

TINY = dict(width=64, height=48, depth_size=(32, 24), thermal_size=(32, 24), workers=1)
SMALL = dict(width=96, height=72, depth_size=(48, 36), thermal_size=(40, 30), workers=2)


def _truth(raw, session):
    import json

    return json.loads((raw / "_truth" / f"{session}.json").read_text())


def _declared(raw, session):
    import json

    m = json.loads((raw / session / "manifest.json").read_text())
    return {k: (v["clock"]["offset_s"], v["clock"]["drift_ppm"]) for k, v in m["streams"].items()}


def test_synth_clock_modes_declare_what_they_say(tmp_path):
    from bindset.synth.generate import SynthConfig, synth

    raws = {}
    for mode in ("exact", "coarse", "wrong"):
        raws[mode] = tmp_path / mode
        synth(raws[mode], SynthConfig(sessions=3, seconds=3, seed=41, clocks=mode, impacts_per_minute=40, **TINY))
    n_wrong = 0
    for i in range(3):
        sid = f"s041_{i:03d}"
        truth = _truth(raws["exact"], sid)
        assert "declared_clocks" not in truth and truth["impacts_s"]
        true = {k: (v["offset_s"], v["drift_ppm"]) for k, v in truth["clocks"].items()}
        assert _declared(raws["exact"], sid) == true
        coarse = _declared(raws["coarse"], sid)
        assert coarse["video"] == true["video"]
        for name in ("audio", "depth", "thermal", "imu"):
            err = coarse[name][0] - true[name][0]
            assert abs(err) <= 1.5 and coarse[name][1] == 0.0
        wrong = _declared(raws["wrong"], sid)
        errs = {k: wrong[k][0] - true[k][0] for k in true}
        bad = [k for k, e in errs.items() if e != 0]
        assert 1 <= len(bad) <= 3 and "video" not in bad
        assert all(0.2 <= abs(errs[k]) <= 1.5 for k in bad)
        n_wrong += len(bad)
        assert _truth(raws["wrong"], sid)["declared_clocks"][bad[0]]["offset_s"] == wrong[bad[0]][0]
    assert n_wrong >= 3


def test_impacts_jolt_the_imu_at_their_session_time(tmp_path):
    import csv

    from bindset.synth.generate import SynthConfig, synth

    synth(tmp_path, SynthConfig(sessions=1, seconds=4, seed=42, impacts_per_minute=30, **TINY))
    truth = _truth(tmp_path, "s042_000")
    imu = truth["clocks"]["imu"]
    rows = list(csv.DictReader((tmp_path / "s042_000" / "imu.csv").open()))
    t = np.array([float(r["component_timestamp_ms"]) / 1000 for r in rows]) * (1 + imu["drift_ppm"] * 1e-6)
    t = t + imu["offset_s"]  # session time
    acc = np.array([float(r["accl_x"]) for r in rows])
    scale = 9.80665 if _declared_units(tmp_path) == "g" else 1.0
    for e in truth["impacts_s"]:
        near = (t >= e) & (t < e + 0.01)
        before = (t > e - 0.2) & (t < e - 0.05)
        assert acc[near].max() * scale > acc[before].max() * scale + 15  # a jolt of ~25 m/s^2


def _declared_units(raw):
    import json

    return json.loads((raw / "s042_000" / "manifest.json").read_text())["streams"]["imu"]["units"]["accel"]


def _stream_mid(truth, stream):
    c = truth["clocks"][stream]
    return (truth["seconds"] / 2 - c["offset_s"]) / (1 + c["drift_ppm"] * 1e-6)


def _error_s(row, truth) -> float:
    c = truth["clocks"][row.stream]
    t = _stream_mid(truth, row.stream)
    return sync.clock_error_s(row.estimated_offset_s, row.estimated_drift_ppm, c["offset_s"], c["drift_ppm"], t)


@pytest.fixture(scope="module")
def coarse_raw(tmp_path_factory):
    from bindset.synth.generate import SynthConfig, synth

    raw = tmp_path_factory.mktemp("coarse")
    # held-back seed: the estimator's settings were tuned on other seeds
    synth(raw, SynthConfig(sessions=4, seconds=30, seed=101, clocks="coarse", impacts_per_minute=20, **SMALL))
    return raw


@pytest.mark.slow
def test_coarse_clocks_recovered_within_half_a_frame_on_held_back_seeds(coarse_raw, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.sync import SYNC_COLUMNS, sync_raw

    out = tmp_path / "sync.parquet"
    result = sync_raw(coarse_raw, out=out)
    rows = [r for r in result.rows if r.stream != "video"]
    assert len(rows) == 16
    confident = [r for r in rows if r.estimated_offset_s is not None]
    within = [r for r in confident if abs(_error_s(r, _truth(coarse_raw, r.session))) <= r.tolerance_s]
    assert len(within) >= 0.95 * len(rows), [(r.session, r.stream, r.status, r.reason) for r in rows]
    for r in confident:  # never confidently wrong by more than a frame period
        assert abs(_error_s(r, _truth(coarse_raw, r.session))) <= 2 * r.tolerance_s
    table = pq.read_table(out)
    assert tuple(table.column_names[: len(SYNC_COLUMNS)]) == SYNC_COLUMNS and table.num_rows == 20
    assert set(table.column("status").to_pylist()) <= {"agrees", "mismatch", "unsynchronisable"}


@pytest.mark.slow
def test_write_manifest_corrects_clocks_outside_raw(coarse_raw, tmp_path):
    from pipelines.sync import sync_raw
    from schemas.errors import UserError
    from schemas.manifest import load_manifest

    before = (coarse_raw / "s101_000" / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="outside RAW"):
        sync_raw(coarse_raw, write_manifest=coarse_raw / "fixed")
    out = tmp_path / "fixed"
    result = sync_raw(coarse_raw, write_manifest=out)
    assert (coarse_raw / "s101_000" / "manifest.json").read_bytes() == before
    fixed_ok = 0
    for r in result.rows:
        if r.stream == "video":
            continue
        truth = _truth(coarse_raw, r.session)
        clock = getattr(load_manifest(out / r.session / "manifest.json").streams, r.stream).clock
        c = truth["clocks"][r.stream]
        err = sync.clock_error_s(clock.offset_s, clock.drift_ppm, c["offset_s"], c["drift_ppm"],
                                 _stream_mid(truth, r.stream))  # fmt: skip
        if r.status == "mismatch":
            assert abs(err) <= r.tolerance_s
            fixed_ok += 1
    assert fixed_ok >= 12


@pytest.mark.slow
def test_verify_flags_every_wrong_stream_and_no_right_one(tmp_path):
    from bindset.synth.generate import SynthConfig, synth
    from pipelines.sync import sync_raw

    synth(tmp_path, SynthConfig(sessions=4, seconds=30, seed=202, clocks="wrong", impacts_per_minute=20, **SMALL))
    result = sync_raw(tmp_path)
    flagged, wrong = set(), set()
    for r in result.rows:
        truth = _truth(tmp_path, r.session)
        if truth["declared_clocks"][r.stream] != truth["clocks"][r.stream]:
            wrong.add((r.session, r.stream))
        if r.status == "mismatch":
            flagged.add((r.session, r.stream))
        assert r.status != "unsynchronisable", (r.session, r.stream, r.reason)
    assert wrong and flagged == wrong


def test_cli_sync_prints_rows_and_writes_the_table(tmp_path, capsys):
    import pyarrow.parquet as pq

    from bindset.cli import main
    from bindset.synth.generate import SynthConfig, synth

    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=1, seconds=12, seed=43, clocks="coarse", impacts_per_minute=30, **TINY))
    out = tmp_path / "sync.parquet"
    assert main(["sync", str(raw), "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "s043_000 imu" in text and "sync: 1 session(s)" in text
    assert pq.read_table(out).num_rows == 5
    assert main(["sync", str(tmp_path / "nope"), "--out", str(out), "-q"]) == 2


# ------------------------------------------------------------------------------- build --clocks (issue 14)


@pytest.mark.slow
def test_build_clocks_verify_rejects_wrong_streams_and_estimate_corrects_them(tmp_path):
    """One session with wrong clocks: verify rejects exactly the wrong streams' windows, estimate fixes them,
    declared does neither; DATA/sync.parquet records the clock used."""
    import pyarrow.parquet as pq

    from bindset.synth.generate import SynthConfig, synth
    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=2, seconds=20, seed=203, clocks="wrong", impacts_per_minute=20, **SMALL))
    wrong = {
        (sid, k)
        for sid in ("s203_000", "s203_001")
        for k, v in _truth(raw, sid)["declared_clocks"].items()
        if v != _truth(raw, sid)["clocks"][k]
    }
    assert wrong
    out = {}
    for mode in ("declared", "verify", "estimate"):
        data = tmp_path / mode
        build(raw, data, BuildConfig(clocks=mode), EngineConfig("local"))
        out[mode] = (pq.read_table(data / "sync.parquet").to_pylist(), pq.read_table(data / "rejects.parquet"),
                     pq.read_table(data / "index.parquet"))  # fmt: skip
    rows, rejects, index = out["verify"]
    assert {(r["session"], r["stream"]) for r in rows if r["status"] == "mismatch"} == wrong
    mism = [r for r in rejects.to_pylist() if r["reason"] == "clock_mismatch"]
    assert {(r["session"], r["modality"]) for r in mism} == wrong
    per_session = {s: index.filter(pa_eq(index, "session", s)).num_rows for s in ("s203_000", "s203_001")}
    for sid, stream in wrong:  # every window of a wrong stream, and nothing else
        assert sum(1 for r in mism if r["session"] == sid and r["modality"] == stream) == per_session[sid]
    rows, rejects, _ = out["declared"]
    assert {r["status"] for r in rows} == {"declared_only"}
    assert "clock_mismatch" not in rejects.column("reason").to_pylist()
    rows, rejects, _ = out["estimate"]
    assert {(r["session"], r["stream"]) for r in rows if r["status"] == "estimated"} == wrong
    assert "clock_mismatch" not in rejects.column("reason").to_pylist()
    for r in rows:
        if r["status"] == "estimated":
            truth = _truth(raw, r["session"])
            c = truth["clocks"][r["stream"]]
            err = sync.clock_error_s(r["used_offset_s"], r["used_drift_ppm"], c["offset_s"], c["drift_ppm"],
                                     _stream_mid(truth, r["stream"]))  # fmt: skip
            assert abs(err) <= r["tolerance_s"]


def pa_eq(table, column, value):
    import pyarrow.compute as pc

    return pc.equal(table.column(column), value)


def test_gopro_style_gyro_against_camera_rotation_recovers_a_known_shift():
    """A camera that pans in bursts (as a handheld GoPro does) and a gyro on the same clock: the offset is ~0;
    the same gyro with its timestamps shifted by a known amount gives that amount back."""
    import cv2

    rng = np.random.default_rng(9)
    fps, seconds, focal = 30.0, 20.0, 80.0
    t_rate = np.arange(0, seconds, 0.005)  # gyro at 200 Hz
    omega = np.zeros_like(t_rate)  # rad/s about the vertical axis: pans of 0.3-1.2 s, then rest
    for start in np.sort(rng.uniform(0.5, seconds - 2, 9)):
        m = (t_rate >= start) & (t_rate < start + rng.uniform(0.3, 1.2))
        omega[m] = rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
    angle = np.concatenate([[0.0], np.cumsum(omega[:-1] * 0.005)])
    world = cv2.GaussianBlur((rng.random((60, 2400)) * 255).astype(np.uint8), (5, 5), 1.2)
    times = np.arange(0, seconds, 1 / fps)
    x0 = 1100 + focal * np.interp(times, t_rate, angle)
    frames = [world[:, int(round(x)) : int(round(x)) + 96] for x in x0]
    video = sync.to_grid(*act.camera_rotation_rate(frames, times, focal), RATE)
    gyro = np.stack([0.01 * rng.standard_normal(t_rate.size), omega, 0.01 * rng.standard_normal(t_rate.size)])
    for shift in (0.0, 0.37):
        imu = sync.to_grid(t_rate - shift, act.gyro_magnitude(gyro), RATE)  # timestamps late by `shift`
        est = sync.estimate_lag(video, imu)
        assert est.status == sync.CONFIDENT, est.reason
        assert abs(est.lag_s - shift) < 1 / fps / 2


@pytest.mark.slow
def test_ego4d_without_canonical_times_is_checked_and_corrected_on_the_device_clock(tmp_path):
    """An Ego4D IMU without canonical_timestamp_ms whose device started 0.8 s after the video: the build's
    assumption (clocks start together) is 0.8 s off; the estimate says so and `estimate` builds on it."""
    import csv

    from bindset.synth.generate import SynthConfig, synth
    from transforms.clockcheck import sync_unit, with_used_clocks
    from transforms.layouts import discover

    synth(tmp_path, SynthConfig(layout="ego4d", sessions=3, seconds=20, seed=44, impacts_per_minute=20, **TINY))
    path = tmp_path / "imu" / "s044_002.csv"  # session 2 has no canonical times
    rows = list(csv.DictReader(path.open()))
    assert all(r["canonical_timestamp_ms"] == "" for r in rows)
    kept = [r for r in rows if float(r["component_timestamp_ms"]) >= 800.0]
    for r in kept:  # the device clock: 0 at session time 0.8 s, plus an arbitrary epoch
        r["component_timestamp_ms"] = f"{float(r['component_timestamp_ms']) - 800.0 + 123456.0:.3f}"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    units = {u.session: u for u in discover(tmp_path, "ego4d").units}
    for sid, u in sorted(units.items()):
        (row,) = [r for r in sync_unit(tmp_path, u, mode="estimate") if r.stream == "imu"]
        if sid == "s044_002":
            assert row.status == "estimated" and abs(row.lag_s - 0.8) < row.tolerance_s, row
            fixed = with_used_clocks(u, [row])
            assert fixed.imu.time_column == "component_timestamp_ms" and fixed.imu.fallback_time_column is None
            assert abs(fixed.imu.clock.to_session(123.456) - 0.8) < row.tolerance_s
        else:
            assert row.status == "agrees", row


@pytest.mark.slow
def test_clock_check_rides_on_the_decoding_pass_and_redoes_only_rejected_inputs(tmp_path):
    """verify: the decoding pass measures the activity; an input is withdrawn and decoded again only when a
    stream's clock is rejected, and then counts its windows once; clocks that agree cost no second pass."""
    from bindset.synth.generate import SynthConfig, synth
    from transforms.config import BuildConfig
    from transforms.layouts import discover
    from transforms.records import UnitSink
    from transforms.unit import process_input

    class Counting(UnitSink):
        withdrawn = 0

        def withdraw_input(self) -> None:
            Counting.withdrawn += 1
            super().withdraw_input()

    for clocks, seed in (("exact", 211), ("wrong", 203)):
        raw = tmp_path / clocks
        synth(raw, SynthConfig(sessions=2, seconds=20, seed=seed, clocks=clocks, impacts_per_minute=20, **SMALL))
        truths = {sid: _truth(raw, sid) for sid in (f"s{seed}_000", f"s{seed}_001")}
        wrong = {sid for sid, t in truths.items() if t.get("declared_clocks", t["clocks"]) != t["clocks"]}
        Counting.withdrawn = 0
        sink = Counting(tmp_path / f"sink-{clocks}", "u", "fp", BuildConfig(clocks="verify"))
        for unit in discover(raw).units:
            process_input(raw, unit, BuildConfig(clocks="verify"), sink)
        assert Counting.withdrawn == len(wrong), clocks
        mismatched = {r["session"] for r in sink.sync_rows if r["status"] == "mismatch"}
        assert mismatched == wrong
        s = sink.summary
        assert s.windows_planned == s.samples + s.window_rejects == len(sink.rows) + s.window_rejects
        assert len({r["key"] for r in sink.rows}) == len(sink.rows)  # no window stored twice
        assert len(sink.sync_rows) == len({(r["session"], r["stream"]) for r in sink.sync_rows})
        sink.close()


def crossed_pair(seed: int, lag_s: float, seconds: float = 6.0):
    """A short clip (6 s) whose two streams share two scene changes 1-2 s apart, the stronger one in ``ref`` the
    weaker one in ``other`` (a cut that is loud but barely visible, and the reverse); ``other`` also has
    events of its own (sound texture). other(τ) = ref(τ + lag_s) for the shared events. A lag that pairs the
    two strong events wrongly is then a candidate peak of its own, as on 6-s synthetic clips (issue 14)."""
    rng = np.random.default_rng(seed)
    t1 = rng.uniform(1.0, seconds - 3.2)
    shared = np.array([t1, t1 + rng.uniform(1.0, 2.0)])
    strong, weak = rng.uniform(6, 12, 2), rng.uniform(1, 3, 2)
    first_strong = rng.random() < 0.5
    amp_ref = np.array([strong[0], weak[0]]) if first_strong else np.array([weak[0], strong[0]])
    amp_other = np.array([weak[1], strong[1]]) if first_strong else np.array([strong[1], weak[1]])

    def stream(times, amp, own_n, width):
        own = rng.uniform(0, seconds, own_n)
        x = (amp * np.exp(-0.5 * ((times[:, None] - shared) / width) ** 2)).sum(1)
        x += (rng.uniform(0.5, 1.5, own_n) * np.exp(-0.5 * ((times[:, None] - own) / width) ** 2)).sum(1)
        return 0.2 + x + 0.05 * rng.random(times.size)

    t_video, t_audio = np.arange(0, seconds, 1 / 30), np.arange(0, seconds, 1 / 86.1)
    ref = sync.to_grid(t_video, stream(t_video, amp_ref, 1, 0.02), RATE)
    other = sync.to_grid(t_audio, stream(t_audio + lag_s, amp_other, int(rng.integers(3, 12)), 0.03), RATE)
    return ref, other


@pytest.mark.parametrize("lag", [0.0, 0.5])
def test_short_clips_with_two_events_are_never_confidently_wrong(lag):
    """Issue 14 on short clips: no confident estimate more than one frame period (1/30 s) off. Before the
    overlap weighting and the one-stretch check, 20 of the 21 confident estimates at lag 0 on these seeds (16
    of 53 at 0.5) were a wrong pairing, i.e. `verify` rejected good audio as `clock_mismatch`. Held-back
    seeds: the settings were chosen on 300 six-second synthetic videos and on other seeds of such pairs."""
    confident = []
    for seed in range(9000, 9200):
        est = sync.estimate_lag(*crossed_pair(seed, lag))
        if est.status == sync.CONFIDENT:
            confident.append((seed, est.lag_s))
    wrong = [(s, round(x, 3)) for s, x in confident if abs(x - lag) > 1 / 30]
    assert not wrong
    assert len(confident) >= 20  # still synchronised where both events pair (35 at lag 0, 34 at 0.5)


@pytest.mark.slow
def test_verify_on_short_videos_flags_a_shifted_audio_and_no_exact_one(tmp_path):
    """6-s videos with audio muxed on the same clock: no audio stream is a mismatch and no confident estimate is
    more than one frame period off; the same files with the audio delayed 0.5 s (ffmpeg ``-itsoffset``) are
    never said to agree, and are flagged with the lag recovered to one frame period (issue 14's bound)."""
    import shutil
    import subprocess

    from bindset.synth.generate import SynthConfig, synth
    from pipelines.sync import sync_raw

    raw, shifted = tmp_path / "raw", tmp_path / "shifted"
    synth(raw, SynthConfig(sessions=24, seconds=6, seed=3, layout="videos", width=64, height=48, workers=2))
    audio = [r for r in sync_raw(raw).rows if r.stream == "audio"]
    assert len(audio) == 24
    assert not [r.session for r in audio if r.status == "mismatch"]
    confident = [r for r in audio if r.status == "agrees"]
    assert len(confident) >= 6, [(r.session, r.reason) for r in audio]
    for r in confident:
        assert abs(r.lag_s) <= 2 * r.tolerance_s, (r.session, r.lag_s)

    shifted.mkdir()
    picked = [r.session for r in confident[:4]]
    for session in picked:
        src = str(raw / f"{session}.mp4")
        subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-i", src, "-itsoffset", "0.5", "-i", src,
                        "-map", "0:v", "-map", "1:a", "-c", "copy", str(shifted / f"{session}.mp4")],
                       check=True)  # fmt: skip
    rows = {r.session: r for r in sync_raw(shifted).rows if r.stream == "audio"}
    assert sorted(rows) == sorted(picked)
    assert all(r.status != "agrees" for r in rows.values()), [(r.session, r.status, r.lag_s) for r in rows.values()]
    flagged = [r for r in rows.values() if r.status == "mismatch"]
    assert len(flagged) >= len(picked) // 2
    for r in flagged:  # the audio shows at τ what the video shows at τ - 0.5
        assert abs(r.lag_s + 0.5) <= 2 * r.tolerance_s, (r.session, r.lag_s)


def test_spectral_flux_window_is_scipys_periodic_hann_bit_for_bit():
    # the decode worker does not import scipy.signal (start-up); its window must still be scipy's exactly
    from scipy.signal import get_window

    from transforms.activity import SpectralFlux

    for rate in (8000, 16000, 22050, 44100, 48000, 11025.0, 100.0):
        flux = SpectralFlux(rate)
        assert np.array_equal(flux.window, get_window("hann", flux.nper)), rate
