"""Clock synchronisation end to end on the synthetic world (issue 14, point 5): drift on a 10-minute session,
through `bindset sync` and through `bindset build --clocks estimate`, and the class agreement of a build from
coarse manifests against one from exact manifests.

Held-back seeds: the estimators' settings were tuned on seeds 301, 302, 311 and 312.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.test_alignment import audio_templates, shard_members  # noqa: F401 - audio_templates: a fixture
from transforms import sync

LONG = dict(width=64, height=48, depth_size=(32, 24), thermal_size=(32, 24), workers=1)
DRIFT_PPM = 20.0  # issue 14: drift on 10-minute sessions within 20 ppm, every stream
# The 8.7 fps thermal stream's events are timed only to their 115 ms frame intervals. Its drift (and depth's)
# comes from transforms/drift.py's bounded-error fit of those intervals, not from windowed lags: on 8 held-back
# 10-minute sessions (seeds 503-509; 0, 6 and 20 impacts a minute) its errors were 12 ppm RMS, at most 17, against
# 21 ppm RMS, at most 33, for the windowed fit. The error is ~10 ppm (1 sigma), so a session beyond 20 ppm remains
# possible: one of 14 sessions (no impacts, class changes only) came out 21 ppm off.
STREAMS = ("audio", "depth", "thermal", "imu")


def _truth(raw: Path, session: str) -> dict:
    return json.loads((raw / "_truth" / f"{session}.json").read_text())


@pytest.fixture(scope="module")
def long_raw(tmp_path_factory):
    """One 10-minute captures session, `synth --clocks coarse --impacts 20 --long-drift`: session index 3 of its
    seed, the one whose audio is a file of its own on a drifting clock, so that all four streams drift. Only
    that session is written (`synth` writes sessions 0..3; the other three would triple the cost)."""
    from bindset.synth.generate import TRUTH_DIR, SynthConfig, write_captures_session

    raw = tmp_path_factory.mktemp("long")
    cfg = SynthConfig(sessions=4, seconds=600, seed=404, clocks="coarse", impacts_per_minute=20, long_drift=True,
                      **LONG)  # fmt: skip
    truth = write_captures_session(raw, cfg, 3)
    (raw / TRUTH_DIR).mkdir()
    (raw / TRUTH_DIR / f"{truth['session_id']}.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
    clocks = truth["clocks"]
    assert all(20 <= abs(clocks[k]["drift_ppm"]) <= 100 for k in STREAMS), clocks
    return raw


def _mid(truth: dict, stream: str) -> float:
    c = truth["clocks"][stream]
    return (truth["seconds"] / 2 - c["offset_s"]) / (1 + c["drift_ppm"] * 1e-6)


def _check_drift(raw: Path, rows: list[dict]) -> dict[str, float]:
    errs = {}
    for r in rows:
        if r["stream"] == "video":
            continue
        truth = _truth(raw, r["session"])
        c = truth["clocks"][r["stream"]]
        assert r["estimated_drift_ppm"] is not None, r
        errs[r["stream"]] = r["estimated_drift_ppm"] - c["drift_ppm"]
        err_s = sync.clock_error_s(r["estimated_offset_s"], r["estimated_drift_ppm"], c["offset_s"], c["drift_ppm"],
                                   _mid(truth, r["stream"]))  # fmt: skip
        assert abs(err_s) <= r["tolerance_s"], (r, err_s)
    assert sorted(errs) == sorted(STREAMS)
    print("\ndrift error (ppm):", {k: round(v, 1) for k, v in errs.items()})
    assert all(abs(e) < DRIFT_PPM for e in errs.values()), errs
    return errs


@pytest.mark.slow
def test_sync_estimates_drift_of_every_stream_kind_on_ten_minutes_within_20_ppm(long_raw):
    from dataclasses import asdict

    from pipelines.sync import sync_raw

    rows = [asdict(r) for r in sync_raw(long_raw).rows]
    assert {r["status"] for r in rows if r["stream"] != "video"} <= {"mismatch", "agrees"}
    _check_drift(long_raw, rows)


@pytest.mark.slow
def test_build_with_estimated_clocks_on_a_ten_minute_session(long_raw, tmp_path):
    """`bindset build --clocks estimate` on the 10-minute session: DATA/sync.parquet's drift of every stream
    within 20 ppm of the truth, and the clock used is the estimate where the coarse manifest was off."""
    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    data = tmp_path / "data"
    build(long_raw, data, BuildConfig(clocks="estimate"), EngineConfig("local"))
    rows = pq.read_table(data / "sync.parquet").to_pylist()
    assert len(rows) == 5
    truth = _truth(long_raw, rows[0]["session"])
    for r in rows:
        if r["stream"] == "video":
            continue
        assert r["status"] in ("estimated", "agrees"), r
        d, c = truth["declared_clocks"][r["stream"]], truth["clocks"][r["stream"]]
        mid = _mid(truth, r["stream"])
        off_s = sync.clock_error_s(d["offset_s"], d["drift_ppm"], c["offset_s"], c["drift_ppm"], mid)
        if abs(off_s) > 0.1:  # the manifest is off: the estimate is what the build used
            assert r["status"] == "estimated" and r["used_drift_ppm"] == r["estimated_drift_ppm"], r
    _check_drift(long_raw, rows)


# ------------------------------------------------------------------------ class agreement: coarse vs exact

AGREE = dict(sessions=3, seconds=30, seed=405, impacts_per_minute=20, width=160, height=120, depth_size=(80, 60),
             thermal_size=(80, 60), workers=1)  # fmt: skip


def _built(raw: Path, data: Path, clocks: str) -> tuple[dict, dict]:
    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    build(raw, data, BuildConfig(clocks=clocks), EngineConfig("local"))
    rows = {r["key"]: r for r in pq.read_table(data / "index.parquet").to_pylist()}
    return rows, shard_members(data)


def _classes(row: dict, mem: dict, templates) -> dict[str, int]:
    """The class each modality of one sample shows, judged from its member alone (test_alignment's classifiers)."""
    from tests.test_alignment import (
        _npy,
        _png16,
        _rgb,
        classify_audio,
        classify_depth,
        classify_frame,
        classify_imu,
        classify_thermal,
    )

    out = {"frame": classify_frame(_rgb(mem["jpg"]))}
    if row["has_audio"]:
        out["audio"] = classify_audio(_npy(mem["mel.npy"]), templates)
    if row["has_depth"]:
        out["depth"] = classify_depth(_png16(mem["depth.png"]))
    if row["has_thermal"]:
        out["thermal"] = classify_thermal(_png16(mem["thermal.png"]))
    if row["has_imu"]:
        out["imu"] = classify_imu(_npy(mem["imu.npy"]))
    return out


@pytest.mark.slow
def test_estimate_from_coarse_manifests_agrees_across_modalities_as_exact_manifests_do(tmp_path, audio_templates):  # noqa: F811
    """The same world (same seed) with exact and with coarse manifests; exact built with the default clocks,
    coarse with `--clocks estimate`. A sample agrees when every modality it has shows the class its first frame shows
    (samples whose window straddles a class change are left out, as test_alignment does). At least 99% of the
    samples agree or disagree alike in both builds. The coarse manifests built as declared are the control: the
    check fails there. (The classifiers are test_alignment's, made for a world without impacts: an impact's jolt
    can make the IMU look like another class, in both builds alike, so the exact build does not agree on every
    sample.)"""
    from bindset.synth.generate import SynthConfig, synth

    templates = audio_templates
    for clocks in ("exact", "coarse"):
        synth(tmp_path / clocks, SynthConfig(clocks=clocks, **AGREE))
    offs = [abs(_truth(tmp_path / "coarse", s)["declared_clocks"][k]["offset_s"]
                - _truth(tmp_path / "coarse", s)["clocks"][k]["offset_s"])
            for s in ("s405_000", "s405_001", "s405_002") for k in STREAMS]  # fmt: skip
    assert max(offs) > 0.5  # the coarse manifests are really off
    builds = {
        "exact": _built(tmp_path / "exact", tmp_path / "d-exact", "verify"),
        "estimate": _built(tmp_path / "coarse", tmp_path / "d-estimate", "estimate"),
        "declared": _built(tmp_path / "coarse", tmp_path / "d-declared", "declared"),
    }
    rows_x = builds["exact"][0]
    keys = sorted(k for k, r in rows_x.items() if not r["label_change"])
    assert len(keys) >= 24
    agree = {}
    for name, (rows, members) in builds.items():
        agree[name] = {}
        for k in keys:
            if k not in rows:
                agree[name][k] = False  # a window the exact build kept and this one lost
                continue
            cls = _classes(rows[k], members[k], templates)
            agree[name][k] = len(set(cls.values())) == 1 and len(cls) >= 3
    same = np.mean([agree["estimate"][k] == agree["exact"][k] for k in keys])
    control = np.mean([agree["declared"][k] == agree["exact"][k] for k in keys])
    rate = {name: float(np.mean(list(a.values()))) for name, a in agree.items()}
    print(f"\nclass agreement across modalities over {len(keys)} samples: {rate}; same as exact: {same:.1%} "
          f"(coarse as declared: {control:.1%})")  # fmt: skip
    assert same >= 0.99 and rate["estimate"] >= rate["exact"] - 0.01
    assert control < 0.99 and rate["declared"] < rate["exact"]  # the check can fail
    assert rate["exact"] >= 0.6
