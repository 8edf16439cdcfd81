"""Strict configs (schemas/config.py): unknown keys and lossy types are errors that name the key; the CLI's
flags, defaults and help come from the field definitions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from bindset.cli import build_config_from, build_parser, main
from schemas.config import ConfigError, cli_flag
from schemas.expectations import QualityThresholds
from training.config import PRESETS, TRAIN_FLAGS, TrainConfig, train_config_from_args
from transforms.config import BuildConfig


def _raises(cls, data: dict, expected: str):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        cls.from_dict(data, source="cfg.yaml")


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"strid_s": 1.0}, "cfg.yaml: strid_s: unknown key"),
        ({"stride_s": "1"}, "stride_s: input should be a valid number (got '1')"),
        ({"jpeg_quality": 64.5}, "jpeg_quality: input should be a valid integer (got 64.5)"),
        ({"jpeg_quality": True}, "jpeg_quality: input should be a valid integer (got True)"),
        ({"audio_channels": "left"}, "audio_channels: input should be 'first' or 'mean' (got 'left')"),
        ({"val_fraction": 1.5}, "val_fraction: input should be less than or equal to 1 (got 1.5)"),
        ({"layout": "vidoes"}, "layout: input should be 'auto', 'captures'"),
        ({"filters": {"audio_rms_dbfs_mn": -50}}, "filters.audio_rms_dbfs_mn: unknown key"),
        # JSON's NaN/Infinity, YAML's .nan/.inf and argparse's float("nan") all parse: a NaN threshold would
        # switch its filter off (every comparison False), an infinite clip would plan nothing
        ({"filters": {"audio_rms_dbfs_min": float("nan")}}, "filters.audio_rms_dbfs_min: input should be a finite"),
        ({"clip_s": float("inf")}, "clip_s: input should be a finite number (got inf)"),
        ({"stride_s": float("nan")}, "stride_s: input should be a finite number (got nan)"),
    ],
)
def test_build_config_rejects_typos_and_wrong_types(data, expected):
    _raises(BuildConfig, data, expected)


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"optim": {"audio": {"lr": "0.001"}}}, "optim.audio.lr: input should be a valid number (got '0.001')"),
        ({"batch_size": 64.5}, "batch_size: input should be a valid integer (got 64.5)"),
        ({"precision": "fp16"}, "precision: input should be 'fp32' or 'bf16' (got 'fp16')"),
        ({"epoch": 3}, "epoch: unknown key"),
        ({"data": {"pairng": "joint"}}, "data.pairng: unknown key"),
        ({"tower": {"chekpoint": "x.pt"}}, "tower.chekpoint: unknown key"),
        ({"data": {"depth_norm": [0.0, 0.0]}}, "data.depth_norm: must be 'auto' or [mean, std] with std > 0"),
        ({"data": {"depth_norm": "mean"}}, "data.depth_norm: input should be a valid tuple or input should be 'auto'"),
        ({"modalities": ["audio", "smell"]}, "modalities: must be a non-empty subset of"),
        ({"batch_size": 1}, "batch_size: input should be greater than or equal to 2"),
        ({"optim": {"audio": {"lr": float("inf")}}}, "optim.audio.lr: input should be a finite number (got inf)"),
    ],
)
def test_train_config_rejects_typos_and_wrong_types(data, expected):
    _raises(TrainConfig, data, expected)


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"max_reject_rat": 0.1}, "max_reject_rat: unknown key"),
        ({"max_reject_rate": "0.1"}, "max_reject_rate: input should be a valid number (got '0.1')"),
        ({"min_samples": 2.5}, "min_samples: input should be a valid integer (got 2.5)"),
        ({"max_reject_rate": float("nan")}, "max_reject_rate: input should be a finite number (got nan)"),
    ],
)
def test_quality_thresholds_reject_typos_and_wrong_types(data, expected):
    _raises(QualityThresholds, data, expected)


def test_only_lossless_coercion_and_values_round_trip():
    cfg = BuildConfig.from_dict({"stride_s": 1, "decode_timeout_s": 30})  # an int is a float without loss
    assert cfg.stride_s == 1.0 and isinstance(cfg.stride_s, float) and cfg.decode_timeout_s == 30.0
    assert BuildConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # plain JSON values only
    for name, preset in PRESETS.items():
        assert TrainConfig.from_dict(preset.to_dict()) == preset, name
    # a file's lists become tuples; optim entries not given keep the paper's recipe
    t = TrainConfig.from_dict({"betas": [0.9, 0.99], "modalities": ["audio"], "optim": {"audio": {"lr": 1}}})
    assert t.betas == (0.9, 0.99) and t.modalities == ("audio",) and t.optim["audio"].lr == 1.0
    assert t.optim["depth"].lr == 1.6e-3
    with pytest.raises(ValidationError):
        cfg.stride_s = 3.0  # frozen
    with pytest.raises(ConfigError, match="batch_size"):
        PRESETS["tiny"].replace(batch_size=1)  # replace() validates again
    assert PRESETS["tiny"].replace(epochs=7).epochs == 7


def test_config_files_yaml_and_json(tmp_path):
    y = tmp_path / "b.yaml"
    y.write_text("stride_s: 1\njpeg_quality: 80\nfilters: {audio_rms_dbfs_min: -50}\n")
    j = tmp_path / "b.json"
    j.write_text(json.dumps({"stride_s": 1, "jpeg_quality": 80, "filters": {"audio_rms_dbfs_min": -50}}))
    assert BuildConfig.from_file(y) == BuildConfig.from_file(j)
    assert BuildConfig.from_file(y).filters.audio_rms_dbfs_min == -50.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("stride_s: [1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: not valid YAML")):
        BuildConfig.from_file(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of settings, not list"):
        BuildConfig.from_file(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        BuildConfig.from_file(tmp_path / "missing.yaml")


def test_build_flags_come_from_the_field_definitions(tmp_path):
    parser = build_parser()
    build = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "build")[1]
    by_flag = {s: a for a in build._actions for s in a.option_strings}
    for name, field in BuildConfig.model_fields.items():
        action = by_flag[cli_flag(BuildConfig, name)]
        assert action.help.startswith(field.description), name
    assert by_flag["--stride"].dest == "cfg_stride_s" and by_flag["--jpeg-quality"].type is int

    # --config FILE, then the flags given on top (a nested mapping merged key by key)
    y = tmp_path / "b.yaml"
    y.write_text("stride_s: 1\njpeg_quality: 80\nclip_s: 3\nfilters: {audio_rms_dbfs_min: -50}\n")
    argv = ["build", "r", "d", "--config", str(y), "--jpeg-quality", "70", "--filters", '{"frame_diff_min": 0.2}',
            "--runner=DirectRunner"]  # fmt: skip
    args, extra = parser.parse_known_args(argv)
    cfg = build_config_from(args)
    assert extra == ["--runner=DirectRunner"]
    assert (cfg.stride_s, cfg.jpeg_quality, cfg.clip_s) == (1.0, 70, 3.0)
    assert (cfg.filters.audio_rms_dbfs_min, cfg.filters.frame_diff_min) == (-50.0, 0.2)
    none = build_config_from(parser.parse_known_args(["build", "r", "d", "--depth-tolerance-s", "none"])[0])
    assert none == BuildConfig()

    # a --thresholds file's "filters" go into the build config (between --config and the flags)
    t = tmp_path / "t.yaml"
    t.write_text("filters: {frame_sharpness_min: 5, frame_diff_min: 0.3}\ngate: {max_reject_rate: 0.5}\n")
    args, _ = parser.parse_known_args(["build", "r", "d", "--config", str(y), "--thresholds", str(t), "--filters",
                                       '{"frame_diff_min": 0.2}'])  # fmt: skip
    cfg = build_config_from(args)
    assert (cfg.filters.audio_rms_dbfs_min, cfg.filters.frame_sharpness_min, cfg.filters.frame_diff_min) == (
        -50.0, 5.0, 0.2)  # fmt: skip
    t.write_text("gate: {max_reject_rat: 0.5}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{t}: gate.max_reject_rat: unknown key")):
        build_config_from(args)


def test_train_flags_come_from_the_field_definitions(tmp_path):
    parser = build_parser()
    args, _ = parser.parse_known_args(["train", "d", "r", "--preset", "proof", "--epochs", "3", "--tower-checkpoint",
                                       "w.safetensors", "--precision", "bf16"])  # fmt: skip
    cfg = train_config_from_args(args)
    assert (cfg.epochs, cfg.precision, cfg.tower.checkpoint) == (3, "bf16", "w.safetensors")
    assert cfg.max_steps == PRESETS["proof"].max_steps and cfg.tower.model == PRESETS["proof"].tower.model
    train = parser._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    for name in TRAIN_FLAGS:
        assert helps["cfg_" + name] == TrainConfig.model_fields[name].description


def test_cli_config_errors_exit_2_naming_the_key(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    log = ["--log-file", str(tmp_path / "log.txt")]
    y = tmp_path / "b.yaml"
    y.write_text("strid_s: 1\n")
    assert main(["build", str(raw), str(tmp_path / "d"), "--config", str(y), *log]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bindset build: error: {y}: strid_s: unknown key"]

    assert main(["build", str(raw), str(tmp_path / "d"), "--jpeg-quality", "64.5", *log]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --jpeg-quality: invalid int value: '64.5'" in err[0]

    t = tmp_path / "t.json"
    t.write_text(json.dumps({"lr": 0.001, "optim": {"audio": {"lr": "0.001"}}}))
    assert main(["train", str(tmp_path / "data"), str(tmp_path / "run"), "--config", str(t), *log]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr: unknown key" in err[0] and "optim.audio.lr: input should be a valid number" in err[0]

    assert main(["train", str(tmp_path / "data"), str(tmp_path / "run"), "--precision", "fp16", *log]) == 2
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err
    assert Path(tmp_path / "log.txt").is_file()
