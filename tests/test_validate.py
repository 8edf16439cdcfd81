"""The data-quality gate: clean synthetic data passes every contract; each planted defect breaks its own.

Two builds in all: the clean captures, and a copy of them with every RAW defect planted, each in a session
of its own. DATA defects go into copies of the clean build.
"""

from __future__ import annotations

import json
import shutil
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
from schemas.expectations import QualityThresholds, build_suites
from transforms.config import BuildConfig

SESSIONS = [f"s000_{i:03d}" for i in range(5)]
# session -> (defect, session-time range); the 8 s sessions have clips at 0, 2, 4 and 6 s
RAW_DEFECTS = {
    "silence_audio": (SESSIONS[0], 1.5, 6.5),  # audio in the video container: AAC re-encoded, video copied
    "black_video": (SESSIONS[1], 2.0, 6.0),
    "freeze_video": (SESSIONS[2], 2.0, 6.0),  # the variable-frame-rate session
    "depth_dropout": (SESSIONS[3], 2.0, 6.0),
    "imu_gap": (SESSIONS[4], 3.8, 4.2),  # inside the 5 s IMU windows of the clips at 2 and 4 s
}
# defect -> (suite, expectation type, column) that must fail, on the defect's session only
RAW_CAUGHT_BY = {
    "silence_audio": ("index", "expect_column_values_to_be_between", "audio_rms_dbfs"),
    "black_video": ("index", "expect_column_values_to_be_between", "frame_brightness"),
    "freeze_video": ("index", "expect_column_values_to_be_between", "frame_diff"),
    "depth_dropout": ("index", "expect_column_values_to_be_between", "depth_valid_frac"),
    "imu_gap": ("index", "expect_column_values_to_be_between", "imu_max_gap_ms"),
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
    planted = {name: getattr(D, name)(bad_raw, s, a, b) for name, (s, a, b) in RAW_DEFECTS.items()}
    data = bad_raw.parent / "data"
    build(bad_raw, data, BuildConfig(), EngineConfig("local"))
    return data, validate(data), planted


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
def test_raw_defect_fails_its_expectation(defective, defect):
    data, outcome, _ = defective
    session = RAW_DEFECTS[defect][0]
    (result,) = [r for r in _result(outcome, *RAW_CAUGHT_BY[defect]) if r.kind == "quality"]
    assert not result.success, result
    assert result.failing_rows, result
    keys = set(pd.read_parquet(data / "index.parquet", columns=["key", "session"]).query("session == @session").key)
    # the expectation fails on the planted session's clips at 2 and 4 s...
    assert {f"{session}_000002000", f"{session}_000004000"} <= set(result.failing_rows), result
    if defect != "freeze_video":  # ...and only there (a black clip is frozen too: frame_diff also sees it)
        assert set(result.failing_rows) <= keys, result


def test_failing_dataset_is_kept_but_not_published(defective):
    data, outcome, _ = defective
    assert not outcome.passed
    v = json.loads((data / "manifest.json").read_text())["validation"]
    assert v["status"] == "failed" and v["published"] is False
    listed = {(f["suite"], f["expectation"], f["column"]) for f in v["failed_expectations"]}
    assert set(RAW_CAUGHT_BY.values()) <= listed == _failed(outcome)
    assert (data / "index.parquet").exists() and list((data / "shards").glob("*.tar"))
    assert outcome.docs_index.exists()


def test_raw_defects_break_nothing_structural(defective):
    # every failure is a quality figure: the build stayed consistent with its shards and manifest
    _, outcome, _ = defective
    assert {r.kind for r in outcome.failed} == {"quality"}, [r.line() for r in outcome.failed]


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
    outcome = validate(clean_copy, QualityThresholds(frame_sharpness_min=1e9, mostly=0.5))
    assert _failed(outcome) == {("index", "expect_column_values_to_be_between", "frame_sharpness")}
    v = json.loads((clean_copy / "manifest.json").read_text())["validation"]
    assert v["thresholds"]["frame_sharpness_min"] == 1e9 and v["published"] is False


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
    t = QualityThresholds(sync_depth_ms=7.0, audio_rms_dbfs_min=-40.0, mostly=0.9)
    index = build_suites(t)["index"]
    by_column = {(e.expectation_type, getattr(e, "column", None)): e for e in index.expectations}
    depth = by_column[("expect_column_values_to_be_between", "sync_err_depth_ms")]
    assert (depth.min_value, depth.max_value, depth.mostly) == (-7.0, 7.0, 0.9)
    assert by_column[("expect_column_values_to_be_between", "audio_rms_dbfs")].min_value == -40.0
    assert all(e.meta["rule"] and e.meta["kind"] in ("structure", "quality") for e in index.expectations)
    with pytest.raises(ValueError, match="unknown quality threshold"):
        QualityThresholds.from_dict({"frame_sharpness": 3})


def test_cli_validate_exit_codes_and_thresholds_file(clean_copy, tmp_path, capsys):
    from bindset.cli import main

    assert main(["validate", str(clean_copy)]) == 0
    assert "validate: PASSED" in capsys.readouterr().out
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"min_samples": 10**9}))
    assert main(["validate", str(clean_copy), "--thresholds", str(strict)]) == 1
    out = capsys.readouterr().out
    assert "validate: FAILED" in out
    v = json.loads((clean_copy / "manifest.json").read_text())["validation"]
    assert v["status"] == "failed" and v["published"] is False
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"max_reject_rat": 0.1}))
    assert main(["validate", str(clean_copy), "--thresholds", str(typo)]) == 2
    assert "unknown quality threshold(s): max_reject_rat" in capsys.readouterr().err


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
