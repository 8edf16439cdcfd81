"""Filters on samples, gates on datasets: clean data passes; each planted defect is caught by the filter that owns
it; the gate fails once a reason's rate passes its bound; routine repairs and one silent video do not fail it.

Three builds in all: the clean captures; a copy of them with every RAW defect planted (two or three per session,
on different modalities); a small `videos` folder (a 15 fps camera off the window grid, a silent video). DATA
defects go into copies of the clean build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bindset.synth import defects as D
from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build
from pipelines.validate import ValidationOutcome, derive_tables, validate
from schemas.config import ConfigError
from schemas.expectations import QualityThresholds, build_suites
from transforms.config import BuildConfig

SESSIONS = [f"s000_{i:03d}" for i in range(5)]
# defect -> (session, session-time range); the 8 s sessions have clips at 0, 2, 4 and 6 s, and IMU (5 s windows)
# only at 2 and 4 s. Defects that share a session touch different modalities.
RAW_DEFECTS = {
    "silence_audio": (SESSIONS[0], 1.5, 6.5),  # audio in the video container: AAC re-encoded, video copied
    "flat_thermal": (SESSIONS[0], 2.0, 6.0),
    "saturate_imu": (SESSIONS[0], None, None),  # the whole track: a sensor whose range is too small
    "black_video": (SESSIONS[1], 2.0, 6.0),
    "freeze_video": (SESSIONS[2], 2.0, 6.0),  # the variable-frame-rate session
    "depth_dropout": (SESSIONS[3], 2.0, 6.0),
    "clip_audio": (SESSIONS[3], 2.0, 6.0),
    "imu_gap": (SESSIONS[4], 3.8, 4.2),  # inside the 5 s IMU windows of the clips at 2 and 4 s
    "blur_video": (SESSIONS[4], 6.0, 8.0),
}
# defect -> (reason, modality rejected (None: the window), clip starts in ms that must carry it)
RAW_CAUGHT_BY = {
    "silence_audio": ("audio_silent", "audio", {2000, 4000}),
    "flat_thermal": ("thermal_flat", "thermal", {2000, 4000}),
    "saturate_imu": ("imu_saturated", "imu", {2000, 4000}),
    "black_video": ("frame_black", None, {2000, 4000}),
    "freeze_video": ("frame_frozen", None, {2000, 4000}),
    "depth_dropout": ("depth_invalid", "depth", {2000, 4000}),
    "clip_audio": ("audio_clipped", "audio", {2000, 4000}),
    "imu_gap": ("imu_gap", "imu", {2000, 4000}),
    "blur_video": ("frame_blurred", None, {6000}),
}
# routine input faults the build repairs: (session, the file named by the repair row, its modality)
RAW_REPAIRS = {
    "duplicate_imu_row": (SESSIONS[3], "imu.csv", "imu"),
    "duplicate_depth_timestamp": (SESSIONS[4], "depth_timestamps.csv", "depth"),
}


def _result(outcome: ValidationOutcome, suite: str, expectation: str, column: str):
    found = [r for r in outcome.results if (r.suite, r.expectation, r.column) == (suite, expectation, column)]
    assert found, f"no {suite}: {expectation}({column}) in the results"
    return found


def _failed(outcome: ValidationOutcome) -> set[tuple[str, str, str | None]]:
    return {(r.suite, r.expectation, r.column) for r in outcome.failed}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    synth(root, SynthConfig(sessions=len(SESSIONS), seconds=8.0, width=160, height=120, workers=len(SESSIONS)))
    return root


@pytest.fixture(scope="module")
def clean(raw, tmp_path_factory) -> tuple[Path, ValidationOutcome]:
    data = tmp_path_factory.mktemp("clean") / "data"
    build(raw, data, BuildConfig(), EngineConfig("local"))
    return data, validate(data)


@pytest.fixture(scope="module")
def defective(raw, tmp_path_factory) -> tuple[Path, ValidationOutcome, dict]:
    bad_raw = tmp_path_factory.mktemp("bad") / "raw"
    shutil.copytree(raw, bad_raw)
    planted = {
        name: getattr(D, name)(bad_raw, s) if a is None else getattr(D, name)(bad_raw, s, a, b)
        for name, (s, a, b) in RAW_DEFECTS.items()
    }
    planted |= {name: D.RAW_REPAIRS[name](bad_raw, s) for name, (s, _, _) in RAW_REPAIRS.items()}
    data = bad_raw.parent / "data"
    build(bad_raw, data, BuildConfig(), EngineConfig("local"))
    return data, validate(data), planted


def _rejects(data: Path) -> pd.DataFrame:
    return pd.read_parquet(data / "rejects.parquet")


@pytest.fixture
def clean_copy(clean, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(clean[0], data, ignore=shutil.ignore_patterns("quality", "_work"))
    return data


def test_clean_data_passes_every_expectation(clean):
    data, outcome = clean
    assert outcome.passed, "\n".join(outcome.summary_lines())
    assert outcome.results and all(r.success for r in outcome.results)
    assert {r.suite for r in outcome.results} == set(build_suites())
    manifest = json.loads((data / "manifest.json").read_text())
    v = manifest["validation"]
    assert v["status"] == "passed" and v["published"] is True and v["failed_expectations"] == []
    assert v["thresholds"] == QualityThresholds().to_dict()
    report = json.loads((data / "quality" / "validation.json").read_text())
    assert report["passed"] is True and len(report["results"]) == len(outcome.results)
    assert outcome.docs_index == data / "quality" / "data_docs" / "index.html" and outcome.docs_index.exists()
    assert (data / "quality" / "gx" / "great_expectations.yml").exists()
    # the checkpoint is real and on disk, next to the suites it ran
    assert list((data / "quality" / "gx" / "checkpoints").glob("*"))
    assert len(list((data / "quality" / "gx" / "expectations").glob("*.json"))) == len(build_suites())


def test_raw_defects_were_planted(defective):
    _, _, planted = defective
    assert all(n > 0 for n in planted.values()), planted


@pytest.mark.parametrize("defect", sorted(RAW_DEFECTS))
def test_each_planted_defect_is_caught_by_its_filter(defective, defect):
    data, _, _ = defective
    session = RAW_DEFECTS[defect][0]
    reason, modality, starts = RAW_CAUGHT_BY[defect]
    rejects = _rejects(data)
    mine = rejects[rejects.reason == reason]
    # the filter's reason on the planted session's windows...
    assert {f"{session}_{ms:09d}" for ms in starts} <= set(mine.key), mine
    # ...and only there, as a rejected modality (the sample is kept without it) or a rejected window
    assert set(mine.session) == {session}, mine
    index = pd.read_parquet(data / "index.parquet").set_index("key")
    if modality is None:
        assert mine.modality.isna().all() and not set(mine.key) & set(index.index)
    else:
        assert (mine.modality == modality).all()
        kept = index.loc[sorted(mine.key)]
        assert not kept[f"has_{modality}"].any() and kept.has_video.all()
    assert mine.detail.str.len().gt(0).all()


def test_defective_dataset_fails_on_rates_only(defective):
    data, outcome, _ = defective
    # five windows of twenty are rejected whole (black 2, frozen 2, blurred 1): 25 % > the 20 % bound
    assert not outcome.passed
    failed = {(r.suite, r.expectation, r.column): r for r in outcome.failed}
    assert set(failed) == {("build", "expect_column_max_to_be_between", "reject_rate")}, list(failed)
    assert failed[("build", "expect_column_max_to_be_between", "reject_rate")].observed == pytest.approx(0.25)
    assert {r.kind for r in outcome.failed} == {"rate"}
    v = json.loads((data / "manifest.json").read_text())["validation"]
    assert v["status"] == "failed" and v["published"] is False
    assert (data / "index.parquet").exists() and list((data / "shards").glob("*.tar"))
    assert outcome.docs_index.exists()


def test_gate_fails_once_a_reasons_rate_passes_its_bound(defective):
    data, _, _ = defective
    planted = {reason for reason, _, _ in RAW_CAUGHT_BY.values()}
    rates = derive_tables(data)["reasons"].set_index("reason")["rate"]
    # each planted reason occurs in 1..3 of the 20 planned windows
    assert all(0.05 <= rates[r] <= 0.15 for r in planted), rates[sorted(planted)]
    # bounds just above every planted rate: the defects are within them, the gate passes
    loose = QualityThresholds(max_reject_rate=0.3, reason_rates={r: rates[r] + 0.01 for r in planted})
    outcome = validate(data, loose)
    assert outcome.passed, "\n".join(outcome.summary_lines())
    # one bound just below each planted rate: exactly the planted reasons fail, by name
    tight = QualityThresholds(max_reject_rate=0.3, reason_rates={r: rates[r] - 0.01 for r in planted})
    outcome = validate(data, tight)
    (r,) = outcome.failed
    assert (r.suite, r.expectation, r.kind) == ("reasons", "expect_column_pair_values_a_to_be_greater_than_b", "rate")
    assert set(r.failing_rows) == planted


def test_repairs_are_reported_and_never_fail_the_gate(defective):
    data, outcome, planted = defective
    assert all(planted[name] == 1 for name in RAW_REPAIRS)
    rejects = _rejects(data)
    for session, file, modality in RAW_REPAIRS.values():
        row = rejects[(rejects.source == f"{session}/{file}") & (rejects.reason == "duplicate_timestamps")]
        assert len(row) == 1, rejects[rejects.session == session]
        # an input-level repair row: its modality and file, no sample key, no time range
        assert row.modality.item() == modality and row.key.isna().item() and row.start_s.isna().item()
    assert not [r for r in outcome.failed if r.suite == "rejects"], [r.line() for r in outcome.failed]
    reasons = derive_tables(data)["reasons"].set_index("reason")
    assert reasons.loc["duplicate_timestamps", "input_rows"] == 2 and reasons.loc["duplicate_timestamps", "rate"] == 0


def test_duplicated_key(clean_copy):
    key = D.duplicate_key(clean_copy)
    outcome = validate(clean_copy)
    (r,) = _result(outcome, "index", "expect_column_values_to_be_unique", "key")
    assert not r.success and r.failing_rows == [key, key]
    assert not outcome.passed


def test_session_in_two_splits(clean_copy):
    session = D.split_leak(clean_copy)
    outcome = validate(clean_copy)
    (r,) = _result(outcome, "sessions", "expect_column_values_to_be_in_set", "n_splits")
    assert not r.success and r.failing_rows == [session] and r.observed["values"] == [2]
    (r,) = _result(outcome, "clips", "expect_column_pair_values_to_be_equal", "split,shard_split")
    assert not r.success


def test_index_row_missing_from_index(clean_copy):
    D.drop_index_row(clean_copy)
    outcome = validate(clean_copy)
    (r,) = _result(outcome, "shards", "expect_column_pair_values_to_be_equal", "tar_samples,index_samples")
    assert not r.success and len(r.failing_rows) == 1
    (tar, index) = r.observed["values"][0]
    assert tar == index + 1
    assert ("build", "expect_column_pair_values_to_be_equal", "index_rows,samples") in _failed(outcome)


def test_member_missing_from_shard(clean_copy):
    shard, _ = D.delete_tar_member(clean_copy, member="depth.png")
    outcome = validate(clean_copy)
    (r,) = _result(outcome, "shards", "expect_column_pair_values_to_be_equal", "tar_members,index_members")
    assert not r.success and r.failing_rows == [shard]
    # the sample itself is still there: only the member count gives it away
    assert _failed(outcome) == {("shards", "expect_column_pair_values_to_be_equal", "tar_members,index_members")}


def test_thresholds_are_parameters(clean_copy):
    outcome = validate(clean_copy, QualityThresholds(sync_video_periods=0.1, mostly=0.5))
    # the synthetic cameras' first frames are 0.3..0.7 of a frame period into their clips
    assert _failed(outcome) == {("clips", "expect_column_values_to_be_between", "sync_video_periods")}
    v = json.loads((clean_copy / "manifest.json").read_text())["validation"]
    assert v["thresholds"]["sync_video_periods"] == 0.1 and v["published"] is False


def test_derived_tables_catch_nonfinite_and_reject_rate(clean_copy):
    index = pq.read_table(clean_copy / "index.parquet")
    col = index.schema.get_field_index("frame_diff")
    values = index.column(col).to_numpy(zero_copy_only=False).copy()
    values[0] = np.inf
    index = index.set_column(col, index.schema.field(col), pa.array(values, pa.float64()))
    pq.write_table(index, clean_copy / "index.parquet")
    manifest = json.loads((clean_copy / "manifest.json").read_text())
    manifest["counts"]["window_rejects"] = manifest["counts"]["windows_planned"] // 2
    (clean_copy / "manifest.json").write_text(json.dumps(manifest))

    tables = derive_tables(clean_copy)
    nonfinite = tables["columns"].set_index("column")["nonfinite"]
    assert nonfinite["index.frame_diff"] == 1 and nonfinite.drop("index.frame_diff").eq(0).all()
    build_row = tables["build"].iloc[0]
    assert build_row.reject_rate == pytest.approx(0.5, abs=0.05)
    assert build_row.reject_rate > QualityThresholds().max_reject_rate
    assert (tables["shards"].tar_samples == tables["shards"].index_samples).all()
    assert (tables["sessions"].n_splits == 1).all()


def test_suites_follow_thresholds():
    t = QualityThresholds(sync_depth_periods=0.3, sync_audio_ms=7.0, max_reject_rate=0.1, mostly=0.9)
    suites = build_suites(t)
    clips = {getattr(e, "column", None): e for e in suites["clips"].expectations}
    depth = clips["sync_depth_periods"]
    assert (depth.min_value, depth.max_value, depth.mostly) == (-0.3, 0.3, 0.9)
    index = {getattr(e, "column", None): e for e in suites["index"].expectations}
    assert index["sync_err_audio_ms"].max_value == 7.0
    build_rate = {getattr(e, "column", None): e for e in suites["build"].expectations}["reject_rate"]
    assert build_rate.max_value == 0.1 and build_rate.meta["kind"] == "rate"
    for suite in suites.values():
        assert all(e.meta["rule"] and e.meta["kind"] in ("structure", "quality", "rate") for e in suite.expectations)
    with pytest.raises(ConfigError, match="unknown key"):
        QualityThresholds.from_dict({"frame_sharpness": 3})


def test_cli_validate_exit_codes_and_thresholds_file(clean_copy, tmp_path, capsys):
    from bindset.cli import main

    assert main(["validate", str(clean_copy)]) == 0
    assert "validate: PASSED" in capsys.readouterr().out
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"gate": {"min_samples": 10**9}}))
    assert main(["validate", str(clean_copy), "--thresholds", str(strict)]) == 1
    out = capsys.readouterr().out
    assert "validate: FAILED" in out
    v = json.loads((clean_copy / "manifest.json").read_text())["validation"]
    assert v["status"] == "failed" and v["published"] is False
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"gate": {"max_reject_rat": 0.1}}))
    assert main(["validate", str(clean_copy), "--thresholds", str(typo)]) == 2
    assert "gate.max_reject_rat: unknown key" in capsys.readouterr().err


def test_cli_validate_and_report_wait_for_a_commit_in_progress(clean_copy, tmp_path, capsys):
    """A commit removes manifest.json under DATA's manifest lock and writes it last (pipelines/commit.py):
    `validate` or `report` started in that gap waits for the committed manifest instead of calling DATA
    unbuilt; a folder with no manifest and no commit in progress is refused at once."""
    import threading
    import time

    from bindset.cli import main
    from pipelines.lock import manifest_lock

    manifest = clean_copy / "manifest.json"
    for cmd in (["validate", str(clean_copy)], ["report", str(clean_copy), "--gallery", "2"]):
        codes: list[int] = []
        with manifest_lock(clean_copy):  # as the commit holds it
            committed = manifest.read_bytes()
            manifest.unlink()
            thread = threading.Thread(target=lambda cmd=cmd, codes=codes: codes.append(main(cmd)))
            thread.start()
            time.sleep(1.0)
            assert thread.is_alive() and codes == [], cmd  # waiting, not refused
            manifest.write_bytes(committed)
        thread.join(300)
        assert codes == [0], cmd
    out = capsys.readouterr().out
    assert "validate: PASSED" in out and "validation: passed (published: True)" in out
    assert json.loads(manifest.read_text())["validation"]["status"] == "passed"

    empty = tmp_path / "empty"
    empty.mkdir()
    t0 = time.monotonic()
    assert main(["validate", str(empty)]) == 2
    assert time.monotonic() - t0 < 30  # not open_dataset's whole 60 s wait
    err = capsys.readouterr().err
    assert "not a built dataset" in err and "no committed dataset here" in err
    assert not (empty / "_work" / "manifest.lock").exists()  # the probe for a commit in progress creates nothing


def test_cli_build_validates_by_default_and_report_prints_verdict(raw, tmp_path, capsys):
    from bindset.cli import main

    one = tmp_path / "raw"
    one.mkdir()
    shutil.copytree(raw / SESSIONS[0], one / SESSIONS[0])
    data = tmp_path / "data"
    assert main(["build", str(one), str(data), "--engine", "local", "--quiet"]) == 0
    assert "validate: PASSED" in capsys.readouterr().out
    assert json.loads((data / "manifest.json").read_text())["validation"]["published"] is True
    assert main(["report", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"report: {data / 'quality' / 'report.html'}" in out and "validation: passed (published: True)" in out

    skipped = tmp_path / "skipped"
    assert main(["build", str(one), str(skipped), "--engine", "local", "--quiet", "--no-validate"]) == 0
    assert "validation skipped" in capsys.readouterr().out
    v = json.loads((skipped / "manifest.json").read_text())["validation"]
    assert v["status"] == "not_run" and v.get("published", False) is False


# ------------------------------------------------------------------------------ real-world kinds, `videos`


def _ffmpeg(out: Path, *, fps: int, shift_ms: int, audio: str, seconds: float = 4.0) -> None:
    """A tiny MKV: a moving test pattern at ``fps`` whose frames after the first sit ``shift_ms`` off the 0,
    1/fps, ... grid (the first stays at 0, so the stream starts at 0 and the window grid with it; a whole
    stream that starts late gets its grid at its own start, as pytorchvideo counts clip time).

    Millisecond frame times (the shift survives encoding) and PCM audio (no encoder delay to shift the start).
    """
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-t", str(seconds), "-f", "lavfi", "-i", f"testsrc2=size=96x64:rate={fps}",
         "-t", str(seconds), "-f", "lavfi", "-i", audio,
         "-vf", f"settb=1/1000,setpts=if(eq(N\\,0)\\,PTS\\,PTS+{shift_ms})",
         "-c:v", "libx264", "-preset", "veryfast", "-g", str(fps), "-fps_mode", "passthrough",
         "-enc_time_base", "1:1000", "-c:a", "pcm_s16le", str(out)],
        check=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, ValidationOutcome]:
    raw = tmp_path_factory.mktemp("videos") / "raw"
    raw.mkdir()
    tone = "sine=frequency=440:sample_rate=16000"
    # a 15 fps webcam whose first frame in its 2 s window lies 60 ms in: nine tenths of its own frame period
    _ffmpeg(raw / "webcam15.mkv", fps=15, shift_ms=60, audio=tone)
    _ffmpeg(raw / "camera25.mkv", fps=25, shift_ms=0, audio=tone)
    _ffmpeg(raw / "silent.mkv", fps=25, shift_ms=0, audio="anullsrc=r=16000:cl=mono")  # a real silent video
    data = raw.parent / "data"
    build(raw, data, BuildConfig(), EngineConfig("local"))
    return data, validate(data)


def test_sync_tolerance_follows_each_streams_frame_period(videos):
    data, outcome = videos
    index = pd.read_parquet(data / "index.parquet").set_index("key")
    webcam = index[index.source_video == "webcam15.mkv"]
    assert len(webcam) == 2
    assert webcam.video_frame_period_ms.to_numpy() == pytest.approx(1000 / 15)
    # beyond the old fixed bound of one 24 fps period (41.7 ms), within the webcam's own period (66.7 ms)
    assert webcam.sync_err_video_ms.to_numpy() == pytest.approx([0.0, 60.0])
    clips = derive_tables(data)["clips"].set_index("key")
    assert clips.loc[webcam.index, "sync_video_periods"].to_numpy() == pytest.approx([0.0, 0.9])
    assert index[index.source_video == "camera25.mkv"].video_frame_period_ms.to_numpy() == pytest.approx(40.0)
    assert outcome.passed, "\n".join(outcome.summary_lines())
    # the bound is in frame periods: half a period is too tight for the webcam, and names its clip
    strict = validate(data, QualityThresholds(sync_video_periods=0.5, mostly=1.0))
    (r,) = strict.failed
    assert (r.suite, r.column, r.failing_rows) == ("clips", "sync_video_periods", ["webcam15_000002000"])


def test_one_silent_video_does_not_fail_the_dataset(videos):
    data, outcome = videos
    assert outcome.passed, "\n".join(outcome.summary_lines())
    rejects = _rejects(data)
    silent = rejects[rejects.reason == "audio_silent"]
    # every window of the silent video loses its audio, keeps its sample; the others keep their audio
    assert set(silent.source) == {"silent.mkv"} and len(silent) == 2 and (silent.modality == "audio").all()
    index = pd.read_parquet(data / "index.parquet")
    assert not index[index.source_video == "silent.mkv"].has_audio.any()
    assert index[index.source_video != "silent.mkv"].has_audio.all()
    assert index[index.source_video == "silent.mkv"].audio_rms_dbfs.isna().all()  # figures describe what is stored
    reasons = derive_tables(data)["reasons"].set_index("reason")
    assert reasons.loc["audio_silent", "rate"] == pytest.approx(2 / 6)
    # the gate bounds the reason's rate: a dataset that may not hold a silent video says so
    outcome = validate(data, QualityThresholds(reason_rates={"audio_silent": 0.2}))
    (r,) = outcome.failed
    assert r.suite == "reasons" and r.failing_rows == ["audio_silent"]
