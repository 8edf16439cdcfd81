"""The command line as an operator meets it: exit codes, one-line errors, --version, the log file and a quiet
console (bindset/cli.py, bindset/logs.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest

from bindset.cli import main
from bindset.logs import run_logging

BINDSET = [sys.executable, "-m", "bindset.cli"]
#: lines third-party libraries print on a plain Beam run; none may reach the console
THIRD_PARTY_NOISE = ("GCSFileSystem", "apitools", "Discarding unparseable", "INFO:", "WARNING:root", "sdk_worker",
                     "semi_persistent_directory", "Pipeline_options")  # fmt: skip


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_version_names_the_decoding_stack(capsys):
    assert main(["--version"]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["bindset"] == metadata.version("bindset")
    for dist in ("av", "numpy", "torch", "torchaudio", "pillow", "pyarrow"):
        assert lines[dist] == metadata.version(dist), dist
    assert lines["ffmpeg.libavcodec"].count(".") == 2  # FFmpeg's own libraries inside PyAV
    assert "cv2.jpeg" in lines and "pillow.jpg" in lines  # the JPEG codecs OpenCV and Pillow link


def test_usage_and_input_errors_exit_2_with_one_line(tmp_path, capsys):
    log = ["--log-file", str(tmp_path / "run.log")]
    missing = tmp_path / "no-such-raw"
    assert main(["build", str(missing), str(tmp_path / "d"), *log]) == 2
    assert capsys.readouterr().err.splitlines() == [f"bindset build: error: input folder RAW {missing}: no such folder"]

    assert main(["validate", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "nothing: no such folder" in err[0]
    assert not (tmp_path / "nothing").exists()  # the log of a read-only command never creates its input

    assert main(["build", str(tmp_path), "--engine", "spark"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "argument --engine: invalid choice: 'spark'" in err[0]

    # a typo of a build flag is not handed to Beam (which would drop it with a warning in the log only)
    (tmp_path / "raw").mkdir()
    for engine, flags, line in [
        ("beam", ["--stride-s", "1"], "--stride-s: not a build flag nor a Beam pipeline option"),
        ("local", ["--stride-s", "1"], "--stride-s 1: not a build flag"),
        ("ray", ["--runner=DirectRunner"], "--runner=DirectRunner: not a build flag"),
        ("beam", ["--direct_num_workers=x"], "argument --direct_num_workers: invalid int value: 'x'"),
    ]:
        argv = ["build", str(tmp_path / "raw"), str(tmp_path / "d"), "--engine", engine, *flags, *log]
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"bindset build: error: {line}"), err
    assert not (tmp_path / "d" / "manifest.json").exists()

    # DATA that is a file, or in a folder the user cannot write (root without its override capability)
    (tmp_path / "file").write_text("x")
    assert main(["build", str(tmp_path / "raw"), str(tmp_path / "file"), "--engine", "local", *log]) == 2
    assert capsys.readouterr().err.splitlines() == [f"bindset build: error: output {tmp_path / 'file'}: not a folder"]
    (tmp_path / "ro").mkdir(mode=0o555)
    drop_caps = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
    run = subprocess.run([*drop_caps, *BINDSET, "build", str(tmp_path / "raw"), str(tmp_path / "ro" / "data"),
                          "--engine", "local", *log], capture_output=True, text=True, env=_env())  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [f"bindset build: error: {tmp_path / 'ro' / 'data'}: permission denied"]

    # a build refused before it starts writes no log into DATA: not into a DATA inside RAW, nor a new DATA
    assert main(["build", str(missing), str(tmp_path / "d2")]) == 2
    assert main(["build", str(tmp_path / "raw"), str(tmp_path / "raw" / "data"), "--engine", "local"]) == 2
    assert "must not be inside the input" in capsys.readouterr().err
    assert not (tmp_path / "d2").exists() and list((tmp_path / "raw").iterdir()) == []

    assert main(["report", str(tmp_path), "--out", "x"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "bindset report: error: unrecognized arguments: --out x (see bindset report --help)"
    ]

    assert main(["synth", str(tmp_path / "raw"), "--seconds", "1", *log]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "bindset synth: error: --sessions/--seconds: need at least one session of at least 2 seconds"
    ]
    assert main(["search", str(tmp_path), "--text", "x", "--audio", "y.wav", *log]) == 2
    assert "give exactly one query" in capsys.readouterr().err


def test_an_unexpected_error_exits_3_with_one_line_and_the_traceback_in_the_log(tmp_path, capsys, monkeypatch):
    import pipelines.build

    def broken(*args, **kwargs):
        raise RuntimeError("kaboom: an internal invariant broke")

    monkeypatch.setattr(pipelines.build, "build", broken)
    raw, log = tmp_path / "raw", tmp_path / "run.log"
    raw.mkdir()
    assert main(["build", str(raw), str(tmp_path / "d"), "--engine", "local", "--log-file", str(log)]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"bindset build: unexpected error: RuntimeError: kaboom: an internal invariant broke (traceback in {log})"
    ]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text and "kaboom" in text

    # a missing file the user did not name is a bug (3), not an input error; one inside DATA is the user's (2)
    def missing_internal(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "elsewhere" / "table.parquet"))

    monkeypatch.setattr(pipelines.build, "build", missing_internal)
    assert main(["build", str(raw), str(tmp_path / "d"), "--engine", "local", "--log-file", str(log)]) == 3
    assert "unexpected error: FileNotFoundError" in capsys.readouterr().err

    def missing_in_data(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "d" / "manifest.json"))

    monkeypatch.setattr(pipelines.build, "build", missing_in_data)
    assert main(["build", str(raw), str(tmp_path / "d"), "--engine", "local", "--log-file", str(log)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"bindset build: error: {tmp_path / 'd' / 'manifest.json'}: no such file or folder"
    ]

    # ... but one in bindset's own bookkeeping inside DATA is a bug (issue 15: `_work/builds.jsonl` was exit 2)
    def missing_bookkeeping(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "d" / "_work" / "builds.jsonl"))

    monkeypatch.setattr(pipelines.build, "build", missing_bookkeeping)
    assert main(["build", str(raw), str(tmp_path / "d"), "--engine", "local", "--log-file", str(log)]) == 3
    assert "unexpected error: FileNotFoundError" in capsys.readouterr().err


def test_console_shows_own_warnings_and_the_log_file_holds_everything(tmp_path, capsys):
    before = list(logging.getLogger().handlers)
    own, beam = logging.getLogger("pipelines.some_module"), logging.getLogger("apache_beam.io.filesystems")
    for verbose, quiet, shown in ((0, False, {"own warning"}), (1, False, {"own warning", "own info"}),
                                  (0, True, set())):  # fmt: skip
        log = tmp_path / f"v{verbose}{quiet}.log"
        with run_logging(log, verbose=verbose, quiet=quiet):
            own.info("own info")
            own.warning("own warning")
            beam.warning("beam chatter")
            warnings.warn("a library's DeprecationWarning", DeprecationWarning, stacklevel=1)
        err = capsys.readouterr().err
        assert {m for m in ("own info", "own warning") if m in err} == shown
        assert "beam chatter" not in err and "DeprecationWarning" not in err
        text = log.read_text()
        for message in ("own info", "own warning", "beam chatter", "a library's DeprecationWarning"):
            assert message in text
    # an in-process caller gets its own handlers back (pytest's here), and none of ours stays behind
    files = {getattr(h, "baseFilename", None) for h in logging.getLogger().handlers}
    assert not files & {str(p) for p in tmp_path.glob("*.log")}
    assert logging.getLogger().handlers == before


def test_schema_prints_and_never_writes_into_the_package(tmp_path, capsys):
    from schemas.manifest import SCHEMA_FILE, manifest_json_schema

    before = (SCHEMA_FILE.read_bytes(), SCHEMA_FILE.stat().st_mtime_ns)
    assert main(["schema", "--log-file", str(tmp_path / "log")]) == 0
    assert json.loads(capsys.readouterr().out) == manifest_json_schema()
    assert (SCHEMA_FILE.read_bytes(), SCHEMA_FILE.stat().st_mtime_ns) == before
    out = tmp_path / "m.schema.json"
    assert main(["schema", "--out", str(out), "--log-file", str(tmp_path / "log")]) == 0
    assert json.loads(out.read_text()) == manifest_json_schema()


def test_synth_prints_a_count_not_every_session(tmp_path, capsys):
    raw = tmp_path / "raw"
    rc = main(["synth", str(raw), "--layout", "videos", "--sessions", "5", "--seconds", "2", "--width", "64",
               "--height", "48", "--quiet", "--log-file", str(tmp_path / "log")])  # fmt: skip
    out = capsys.readouterr().out
    names = sorted(p.stem for p in raw.glob("*.mp4"))
    assert rc == 0 and len(names) == 5 and "5 videos session(s)" in out
    assert names[2] not in out  # the first and last name only
    assert len(out.strip().splitlines()) <= 4


def test_torchrun_entry_does_not_import_the_cli(tmp_path):
    code = "import sys, training.torchrun; print('bindset.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.strip() == "False"
    from training.torchrun import main as torchrun_main

    assert torchrun_main([str(tmp_path / "data"), str(tmp_path / "run"), "--precision", "fp16"]) == 2
    assert torchrun_main([str(tmp_path / "data"), str(tmp_path / "run"), "--log-file", str(tmp_path / "t.log")]) == 2
    assert "not a built dataset" in (tmp_path / "t.log").read_text()


@pytest.mark.slow
def test_a_beam_build_console_is_clean_and_its_log_holds_the_engine_chatter(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    synth = subprocess.run([*BINDSET, "synth", str(raw), "--layout", "videos", "--sessions", "2", "--seconds", "3",
                            "--width", "64", "--height", "48"], capture_output=True, text=True, env=_env())  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    # two DirectRunner worker processes: the mode whose workers print their own start-up chatter
    run = subprocess.run([*BINDSET, "build", str(raw), str(data), "--engine", "beam", "--direct_num_workers=2",
                          "--direct_running_mode=multi_processing"], capture_output=True, env=_env())  # fmt: skip
    # terminal lines: tqdm redraws its bar on one line with "\r" (bytes: text mode would turn it into "\n")
    stdout, stderr = run.stdout.decode(), run.stderr.decode()
    console = [line for line in (stdout + stderr).split("\n") if line.strip()]
    assert run.returncode == 0, "\n".join(console)
    bars = [line for line in console if "build (beam)" in line]  # tqdm's redraws share one terminal line
    assert len(bars) == 1
    noisy = [line for line in console if any(n in line for n in THIRD_PARTY_NOISE)]
    assert noisy == [], noisy
    assert len(console) <= 12, console
    logs = list((data / "_work" / "logs").glob("build-*.log"))
    assert len(logs) == 1 and f"  log: {data / '_work' / 'logs' / logs[0].name}" in stdout
    text = logs[0].read_text()
    assert "apache_beam" in text and "sdk_worker" in text  # the runner's and its workers' chatter, in the log
    # Beam's own DirectRunner would first try Prism (a binary downloaded from GitHub): no network at run time
    assert "PrismRunner" not in text and "prism" not in text.lower(), [ln for ln in text.splitlines() if "rism" in ln]
    for session in ("s000_000", "s000_001"):  # the workers' lines per unit: start, end with seconds and rejects
        assert f"unit {session}: start" in text and f"unit {session}: end in " in text
    assert "validate: PASSED" in stdout

    # the same dataset against a gate it cannot pass: exit 1; a threshold typo: exit 2 naming the key
    strict, typo = tmp_path / "strict.json", tmp_path / "typo.json"
    strict.write_text(json.dumps({"gate": {"min_samples": 1000}}))
    typo.write_text(json.dumps({"gate": {"min_sample": 1000}}))
    assert main(["validate", str(data), "--thresholds", str(strict)]) == 1
    capsys.readouterr()
    assert main(["validate", str(data), "--thresholds", str(typo)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"bindset validate: error: {typo}: gate.min_sample: unknown key"]


@pytest.mark.slow
def test_a_ray_build_logs_each_unit_in_the_run_log(tmp_path):
    """A Ray worker's root logger passes only WARNING: the per-unit INFO lines must still reach the run's log."""
    raw, data = tmp_path / "raw", tmp_path / "data"
    synth = subprocess.run([*BINDSET, "synth", str(raw), "--layout", "videos", "--sessions", "2", "--seconds", "2",
                            "--width", "64", "--height", "48"], capture_output=True, text=True, env=_env())  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    run = subprocess.run([*BINDSET, "build", str(raw), str(data), "--engine", "ray", "--workers", "2", "-q",
                          "--no-validate"], capture_output=True, text=True, env=_env())  # fmt: skip
    console = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == 0, console
    assert not [line for line in console if any(n in line for n in THIRD_PARTY_NOISE) or "pid=" in line], console
    (log,) = (data / "_work" / "logs").glob("build-*.log")
    text = log.read_text()
    for session in ("s000_000", "s000_001"):
        assert f"unit {session}: start (attempt 1, 1 input(s))" in text and f"unit {session}: end in " in text
    assert "\x1b[" not in text  # no terminal colour codes in a file


def test_a_folder_given_in_the_wrong_place_gets_no_log_folder(tmp_path, capsys):
    """A RAW given as RUN (or any folder that is not a run, a dataset or an embeddings folder) is refused and
    left as it was: no logs/ folder the next build of that RAW would meet as an unknown input."""
    raw, data, other = tmp_path / "raw", tmp_path / "data", tmp_path / "notemb"
    for folder in (raw / "s000", data, other):
        folder.mkdir(parents=True)
    (raw / "s000" / "manifest.json").write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["embed", str(data), str(raw), str(tmp_path / "emb")]) == 2
    assert main(["eval", str(other)]) == 2
    assert main(["validate", str(other)]) == 2
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    capsys.readouterr()
