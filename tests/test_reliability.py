"""Reliability of the build (issue 15 items 3-7, 12, 14; issue 13 item 4): one build per DATA, workers of a
killed build write nothing, transient failures retried, per-file decode budgets, inputs that change during a
build, an all-rejected input, readers during rebuilds, caches that notice library upgrades."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bindset.cli import main
from bindset.synth.generate import SynthConfig, synth
from pipelines import work
from pipelines.build import EngineConfig, build
from pipelines.dataset import DatasetChanged, DatasetNotCommitted, open_dataset
from pipelines.lock import BuildLock, BuildLocked, build_alive, read_holder
from pipelines.storage import TarReader
from pipelines.work import FAULT_ENV, WorkContext, decode_budget
from schemas.reasons import TRANSIENT, RejectReason
from schemas.tables import INDEX_SCHEMA
from transforms.config import BuildConfig
from transforms.layouts import discover, unit_to_dict

REPO = Path(__file__).resolve().parents[1]
TINY = dict(seconds=4.0, width=64, height=48, workers=2)
A, B = "s003_000", "s003_001"  # the two sessions of the `raw` fixture, in build order


def _digest(data: Path) -> dict[str, str]:
    files = sorted((data / "shards").iterdir()) + [data / "index.parquet", data / "rejects.parquet"]
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _listing(data: Path, folder_mtimes: bool = True) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of everything under ``data``; folders as (0, 0) unless ``folder_mtimes``
    (a folder's mtime changes when an entry in it goes)."""
    out = {}
    for p in sorted(data.rglob("*")):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if p.name != "build.lock":  # its mtime is the holder's heartbeat
            folder = stat.S_ISDIR(st.st_mode) and not folder_mtimes
            out[p.relative_to(data).as_posix()] = (0, 0) if folder else (st.st_size, st.st_mtime_ns)
    return out


# The CLI as a terminal's foreground job starts it: SIGINT raises KeyboardInterrupt. A test runner started in
# the background by a non-interactive shell (`cmd &`, as CI may be) has SIGINT ignored, and Python keeps an
# ignored SIGINT ignored in every child: a Ctrl-C test would then wait for a build that never sees it.
_AS_FROM_A_TERMINAL = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "sys.argv[0] = 'bindset'; runpy.run_module('bindset.cli', run_name='__main__')")  # fmt: skip


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _AS_FROM_A_TERMINAL, *args]
    return subprocess.Popen(cmd, cwd=REPO, start_new_session=True, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    synth(root, SynthConfig(sessions=2, seed=3, **TINY))
    return root


@pytest.fixture(scope="module")
def clean(raw, tmp_path_factory) -> Path:
    """The reference: one clean local build of `raw`."""
    data = tmp_path_factory.mktemp("clean") / "data"
    build(raw, data, BuildConfig(), EngineConfig("local"))
    return data


# ------------------------------------------------------------------------------------- one build per DATA


def test_lock_names_its_holder_and_is_released(tmp_path):
    with BuildLock(tmp_path) as held:
        holder = read_holder(tmp_path)
        assert (holder.build_id, holder.pid, holder.host) == (held.build_id, os.getpid(), socket.gethostname())
        assert build_alive(tmp_path, held.build_id) and not build_alive(tmp_path, "another-build")
        with pytest.raises(BuildLocked, match=f"host {socket.gethostname()}, pid {os.getpid()}"):
            BuildLock(tmp_path).__enter__()
        assert read_holder(tmp_path) == holder  # a refused build leaves the holder's name in place
    assert read_holder(tmp_path) is None and not build_alive(tmp_path, held.build_id)
    with BuildLock(tmp_path):  # free again
        pass


def test_concurrent_build_exits_2_naming_the_holder(raw, tmp_path):
    data = tmp_path / "data"
    # the first build hangs in a decoder, holding the lock, until it is killed
    first = _cli("build", str(raw), str(data), "--engine", "local", "--quiet", "--no-validate",
                 env={FAULT_ENV: f"hang:{A}/"})  # fmt: skip
    try:
        _wait_for(lambda: (h := read_holder(data)) is not None and h.pid == first.pid, first)
        second = _cli("build", str(raw), str(data), "--engine", "local", "--quiet")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"host {socket.gethostname()}, pid {first.pid}" in err and err.count("\n") <= 2
        assert first.poll() is None  # untouched by the refused build
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_build_killed_holding_the_lock_is_taken_over(raw, clean, tmp_path):
    data = tmp_path / "data"
    first = _cli("build", str(raw), str(data), "--engine", "local", "--quiet", env={FAULT_ENV: f"hang:{B}/"})
    _wait_for(lambda: (data / "_work" / "units" / A / "summary.json").exists(), first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert read_holder(data).pid == first.pid  # the dead build's name is still in the file
    result = build(raw, data, BuildConfig(), EngineConfig("local"))
    assert (result.processed_units, result.reused) == ([B], 1)
    assert _digest(data) == _digest(clean)
    assert (data / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    assert read_holder(data) is None  # released, and nothing of the dead build's left in _work/tmp
    assert not (data / "_work" / "tmp").exists() or not any((data / "_work" / "tmp").iterdir())


def test_worker_of_a_gone_build_writes_nothing(raw, tmp_path):
    data = tmp_path / "data"
    unit = discover(raw, "auto").units[0]
    with BuildLock(data):
        pass  # the build is over: the lock file is empty, the build id is nobody's
    ctx = WorkContext(str(raw), str(data), BuildConfig().to_dict(), build_id="gone")
    before = _listing(data)
    out = work.run_unit(ctx, json.dumps(unit_to_dict(unit), sort_keys=True))
    assert out["abandoned"] and not out["processed"]
    assert _listing(data) == before


_DRIVER = """
import sys, time
from pipelines.lock import BuildLock
lock = BuildLock(sys.argv[1]).__enter__()
print(lock.build_id, flush=True)
time.sleep(600)
"""

_WORKER = """
import json, sys
from pathlib import Path
from pipelines import work
from transforms.layouts import discover, unit_to_dict
ctx = work.WorkContext.from_json(sys.argv[1])
for unit in discover(Path(ctx.raw), "auto").units:  # like an engine worker with queued tasks
    print(json.dumps(work.run_unit(ctx, json.dumps(unit_to_dict(unit), sort_keys=True))), flush=True)
"""


@pytest.mark.slow
def test_worker_stops_writing_when_its_driver_is_killed(tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "data"
    synth(raw, SynthConfig(sessions=4, seed=4, **TINY))
    py = lambda code, *a: subprocess.Popen([sys.executable, "-c", code, *a], cwd=REPO, start_new_session=True,  # noqa: E731
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    driver = py(_DRIVER, str(data))
    build_id = driver.stdout.readline().strip()
    ctx = WorkContext(str(raw), str(data), BuildConfig().to_dict(), build_id=build_id)
    worker = py(_WORKER, ctx.to_json())  # its own session: the driver's death does not kill it
    units = data / "_work" / "units"
    _wait_for(lambda: units.exists() and any(units.glob("*/summary.json")), worker)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(0.5)
    before = _listing(data)
    out, err = worker.communicate(timeout=60)
    time.sleep(1.0)
    assert [p for p in _listing(data) if p not in before] == []
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 4 and results[-1]["abandoned"] and not results[-1]["processed"], err
    assert sum(r["processed"] for r in results) < 4
    assert len(list(units.glob("*/summary.json"))) == sum(r["processed"] for r in results)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray"])
def test_workers_of_a_killed_driver_write_nothing(tmp_path, engine):
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=4, seed=4, **TINY))
    data = tmp_path / "data"
    # one session hangs, so workers are mid-unit whenever the driver dies
    proc = _cli("build", str(raw), str(data), "--engine", engine, "--workers", "2", "--quiet",
                env={FAULT_ENV: "hang:s004_003/"})  # fmt: skip
    tmp = data / "_work" / "tmp"
    _wait_for(lambda: tmp.exists() and any(tmp.iterdir()), proc, timeout=300)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # a worker notices within 0.25 s
    before = _listing(data, folder_mtimes=False)
    seen = [before]
    for _ in range(200):  # 4 s, looked at every 20 ms: a short-lived file counts as written too
        time.sleep(0.02)
        seen.append(_listing(data, folder_mtimes=False))
    # a worker may still delete its own staging folder (late under load: that changes _work/tmp's mtime);
    # it may not create anything, nor change a file that was there
    assert sorted({p for s in seen for p in s} - set(before)) == []
    assert all(s[p] == before[p] for s in seen for p in s)


# ------------------------------------------------------------------------------------- transient failures


def test_reasons_are_classified():
    assert {RejectReason.DECODE_TIMEOUT, RejectReason.DECODER_CRASH, RejectReason.INTERNAL_ERROR,
            RejectReason.IO_ERROR, RejectReason.INPUT_CHANGED} == TRANSIENT  # fmt: skip
    assert RejectReason.DECODE_ERROR not in TRANSIENT and RejectReason.EMPTY_FILE not in TRANSIENT


def _attempt(data: Path, unit: str) -> int:
    return json.loads((data / "_work" / "units" / unit / "attempt.json").read_text())["attempt"]


def test_transient_failure_is_retried_and_gives_clean_bytes(raw, clean, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv(FAULT_ENV, f"segv:{B}/")
    first = build(raw, data, BuildConfig(), EngineConfig("local"))
    rejects = pq.read_table(data / "rejects.parquet").to_pylist()
    assert [(r["session"], r["reason"]) for r in rejects if r["reason"] == "decoder_crash"] == [(B, "decoder_crash")]
    assert first.commit.samples < clean_samples(clean)
    monkeypatch.delenv(FAULT_ENV)
    second = build(raw, data, BuildConfig(), EngineConfig("local"))
    assert (second.processed_units, second.retried_units, second.reused) == ([B], [B], 1)
    assert _attempt(data, B) == 2
    assert _digest(data) == _digest(clean)
    assert (data / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    # the version names the content: caches keyed on it (training's image cache) must not take one for the other
    assert first.commit.version != second.commit.version
    third = build(raw, data, BuildConfig(), EngineConfig("local"))
    assert third.processed == 0  # a success is final


def clean_samples(clean: Path) -> int:
    return json.loads((clean / "manifest.json").read_text())["counts"]["samples"]


def test_attempts_are_bounded_and_retry_failed_ignores_the_bound(raw, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    monkeypatch.setenv(FAULT_ENV, f"segv:{B}/")
    runs = [build(raw, data, BuildConfig(), EngineConfig("local"), max_attempts=2) for _ in range(3)]
    assert [r.processed_units for r in runs] == [[A, B], [B], []]
    assert _attempt(data, B) == 2 and _attempt(data, A) == 1
    forced = build(raw, data, BuildConfig(), EngineConfig("local"), max_attempts=2, retry_failed=True)
    assert forced.retried_units == [B] and _attempt(data, B) == 3
    assert forced.commit.reasons.get("decoder_crash") == 1  # still failing: the reject stays
    # the command line: 3 attempts by default, then only --retry-failed runs the unit again
    args = ["build", str(raw), str(data), "--engine", "local", "--quiet", "--no-validate"]
    assert main(args) == 0 and _attempt(data, B) == 3
    assert main([*args, "--retry-failed"]) == 0 and _attempt(data, B) == 4
    assert f"retried after a transient failure: {B}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- decode budget


def test_decode_budget_grows_with_duration_and_size_above_a_floor():
    assert decode_budget(600.0, 10_000, 2.0) == 600.0  # small files: the floor
    assert decode_budget(1.0, 0, 100.0) == pytest.approx(work.DECODE_S_PER_MEDIA_S * 100)
    assert decode_budget(1.0, 50_000_000, None) == pytest.approx(work.DECODE_S_PER_MB * 50)
    assert decode_budget(1.0, 5_000_000, 30.0) == pytest.approx(4.0 * 30 + 2.0 * 5)


@pytest.mark.slow
def test_hung_decoder_gets_its_files_budget_not_a_fixed_clock(raw, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"hang:{A}/video")
    data = tmp_path / "data"
    t0 = time.monotonic()
    build(raw, data, BuildConfig(decode_timeout_s=0.5), EngineConfig("local"))
    took = time.monotonic() - t0
    (row,) = [r for r in pq.read_table(data / "rejects.parquet").to_pylist() if r["reason"] == "decode_timeout"]
    assert row["source"] == f"{A}/video.mp4"
    unit = next(u for u in discover(raw, "auto").units if u.unit_id == A)
    import av

    with av.open(str(raw / A / "video.mp4")) as c:
        duration = c.duration / av.time_base
    size = (raw / A / "video.mp4").stat().st_size + work._extra_bytes(raw, unit)
    budget = decode_budget(0.5, size, duration)
    assert budget > 4 * duration > 0.5  # the duration, not the 0.5 s floor, set the clock
    assert f"budget of {budget:g} s" in row["detail"]
    assert took >= budget


# ------------------------------------------------------------------------------------- inputs that change


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# one decode worker: these tests touch a file between two units, which needs them one after the other
SERIAL = EngineConfig("local", num_workers=1)


def _touching(monkeypatch, rule) -> list[str]:
    """Wrap run_unit: after each run, ``rule(unit_id, n)`` names a file to touch (n: runs of that unit so far)."""
    real, runs = work.run_unit, []

    def wrapped(ctx, unit_json):
        out = real(ctx, unit_json)
        uid = json.loads(unit_json)["unit_id"]
        runs.append(uid)
        target = rule(uid, runs.count(uid))
        if target is not None:
            _touch(target)
        return out

    monkeypatch.setattr(work, "run_unit", wrapped)
    return runs


def test_later_session_touched_after_discovery(raw, clean, tmp_path, monkeypatch):
    src = tmp_path / "raw"
    shutil.copytree(raw, src)
    runs = _touching(monkeypatch, lambda uid, n: src / B / "video.mp4" if uid == A else None)
    result = build(src, tmp_path / "data", BuildConfig(), SERIAL)
    assert runs == [A, B] and result.changed_units == []
    assert _digest(tmp_path / "data") == _digest(clean)


def test_input_changed_after_its_unit_ran_is_built_again(raw, clean, tmp_path, monkeypatch):
    src = tmp_path / "raw"
    shutil.copytree(raw, src)
    data = tmp_path / "data"
    runs = _touching(monkeypatch, lambda uid, n: src / B / "imu.csv" if (uid, n) == (B, 1) else None)
    result = build(src, data, BuildConfig(), SERIAL)
    assert runs == [A, B, B] and result.changed_units == [B]
    assert _digest(data) == _digest(clean)
    monkeypatch.undo()
    assert build(src, data, BuildConfig(), SERIAL).processed == 0  # the manifest has the new stats


def test_input_that_keeps_changing_is_rejected_as_input_changed(raw, clean, tmp_path, monkeypatch):
    src = tmp_path / "raw"
    shutil.copytree(raw, src)
    data = tmp_path / "data"
    _touching(monkeypatch, lambda uid, n: src / B / "imu.csv" if uid == B else None)
    result = build(src, data, BuildConfig(), SERIAL)
    assert result.changed_units == [B]
    rows = [r for r in pq.read_table(data / "rejects.parquet").to_pylist() if r["reason"] == "input_changed"]
    assert [(r["session"], r["source"]) for r in rows] == [(B, f"{B}/imu.csv")]
    m = json.loads((data / "manifest.json").read_text())["counts"]
    assert m["samples"] == clean_samples(clean) // 2 and m["units_failed"] == 1
    monkeypatch.undo()
    again = build(src, data, BuildConfig(), SERIAL)  # transient: taken up again
    assert again.processed_units == [B] and _digest(data) == _digest(clean)


# ------------------------------------------------------------------------------------- empty dataset


def test_all_inputs_rejected_is_a_valid_empty_dataset(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.mp4").write_bytes(b"not a video at all" * 10)
    (raw / "b.mp4").write_bytes(b"")
    data = tmp_path / "data"
    code = main(["build", str(raw), str(data), "--engine", "local", "--quiet"])
    out = capsys.readouterr().out
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 0 and manifest["counts"]["reject_rows"] == 2
    assert pq.read_table(data / "index.parquet").schema.equals(INDEX_SCHEMA)
    reasons = sorted(r["reason"] for r in pq.read_table(data / "rejects.parquet").to_pylist())
    assert reasons == ["decode_error", "empty_file"]
    log = [json.loads(line) for line in (data / "_work" / "builds.jsonl").read_text().splitlines()]
    assert log[-1]["samples"] == 0 and log[-1]["units"] == 2
    assert code == (0 if manifest["validation"]["status"] == "passed" else 1), out  # the gate decides
    assert open_dataset(data).index.num_rows == 0


# ------------------------------------------------------------------------------------- library versions


def test_library_upgrade_invalidates_cached_units(raw, clean, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    assert build(raw, data, BuildConfig(), EngineConfig("local")).processed == 0
    real = work.library_versions()
    assert {"av", "numpy", "torch", "pyarrow", "ffmpeg.libavcodec", "cv2.jpeg"} <= set(real)
    monkeypatch.setattr(work, "library_versions", lambda: {**real, "ffmpeg.libavcodec": "99.0.0"})
    again = build(raw, data, BuildConfig(), EngineConfig("local"))
    assert again.processed_units == [A, B]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["libraries"]["ffmpeg.libavcodec"] == "99.0.0"
    assert manifest["version"] != json.loads((clean / "manifest.json").read_text())["version"]


# ------------------------------------------------------------------------------------- readers


def test_open_dataset_without_a_commit_raises(tmp_path):
    with pytest.raises(DatasetNotCommitted, match="manifest.json"):
        open_dataset(tmp_path, wait_s=0.2)


def test_snapshot_refuses_a_shard_replaced_by_a_rebuild(raw, clean, tmp_path):
    src, data = tmp_path / "raw", tmp_path / "data"
    shutil.copytree(raw, src)
    shutil.copytree(clean, data)
    snap = open_dataset(data)
    names = sorted(snap.shards)
    synth(src, SynthConfig(sessions=1, seed=0, **TINY))  # s000_000 sorts first: existing names change content
    build(src, data, BuildConfig(), EngineConfig("local"))
    with pytest.raises(DatasetChanged, match=names[0]):
        snap.open_shard(names[0]).close()


def _read_all(snap, pause_s: float = 0.0) -> int:
    """Read every sample's frame through the snapshot and check it against the index; returns rows read.
    ``pause_s`` before each shard: a slow reader, so that commits land in the middle of its reads."""
    want = {(r["shard"], r["key"]): r["sha256_jpg"] for r in snap.index.select(["shard", "key", "sha256_jpg"])
            .to_pylist()}  # fmt: skip
    for name in sorted(snap.shards):
        time.sleep(pause_s)
        with snap.open_shard(name) as f:
            with TarReader(snap.shards[name].path) as tar:
                got = {(name, m.key): m for m in tar.members() if m.suffix == "jpg"}
                for key, m in got.items():
                    f.seek(m.offset)
                    blob = f.read(m.size)
                    assert hashlib.sha256(blob).hexdigest() == want[key], f"{key}: bytes disagree with the index"
            snap.pins.check_path(name)  # the tar headers came from the snapshot's file too
        assert len(got) == snap.shards[name].samples
    return len(want)


@pytest.mark.slow
def test_reader_looping_during_rebuilds_sees_one_version(raw, tmp_path):
    src, data = tmp_path / "raw", tmp_path / "data"
    shutil.copytree(raw, src)
    build(src, data, BuildConfig(shard_max_samples=1), EngineConfig("local"))
    stop, seen, changed, errors = threading.Event(), [], [], []

    def reader():
        while not stop.is_set():
            try:
                snap = open_dataset(data, wait_s=120)
                n = _read_all(snap, pause_s=0.01)
                seen.append((snap.version, n))
            except DatasetChanged:
                changed.append(1)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(repr(exc))
                return

    thread = threading.Thread(target=reader)
    thread.start()
    versions = []
    try:
        for seed in (9, 0, 5):  # s000_000 sorts first: every shard name then holds another sample
            synth(src, SynthConfig(sessions=1, seed=seed, **TINY))
            versions.append(build(src, data, BuildConfig(shard_max_samples=1), EngineConfig("local")).commit)
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert {v for v, _ in seen} >= {versions[-1].version}  # it kept reading, up to the last version
    counts = {c.version: c.samples for c in versions}
    assert all(n == counts[v] for v, n in seen if v in counts)  # each read saw its version's samples, no mix
    assert len(seen) >= 4 and len(seen) + len(changed) > 20


# ------------------------------------------------------------------------------- local engine's unit threads


@pytest.mark.parametrize("engine", ["local", "beam"])
def test_builds_in_one_process_leave_no_decode_process_behind(raw, tmp_path, engine):
    """Each unit thread's decode process ends with the build (the local engine's threads, Beam's worker threads
    in process): builds one after another in one process (an Airflow worker, a notebook) do not pile up idle
    decoders, two per build on two workers."""
    import psutil

    me = psutil.Process()
    engine_cfg = EngineConfig("local", num_workers=2) if engine == "local" else EngineConfig(
        "beam", pipeline_args=["--direct_num_workers=2"])  # fmt: skip
    build(raw, tmp_path / "d1", BuildConfig(clocks="declared"), engine_cfg)
    after_one = {p.pid for p in me.children(recursive=True)}
    for i in (2, 3):
        build(raw, tmp_path / f"d{i}", BuildConfig(clocks="declared"), engine_cfg)
    after_three = {p.pid for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
    assert after_three <= after_one, (after_one, after_three)


@pytest.mark.parametrize("target", ["group", "driver"])
def test_ctrl_c_stops_a_parallel_local_build_writing_nothing_of_its_running_units(raw, tmp_path, target):
    """Ctrl-C (SIGINT to the process group) or a SIGINT to the driver alone, while one of two unit threads is
    in a decoder that hangs: the build exits 130 within seconds, the interrupted unit is not committed (no
    false `internal_error` or `decode_timeout` reject that would count as an attempt), nothing is left in
    _work/tmp."""
    data = tmp_path / "data"
    proc = _cli("build", str(raw), str(data), "--engine", "local", "--workers", "2", "--quiet", "--no-validate",
                "--clocks", "declared", "--decode-timeout", "120", env={FAULT_ENV: f"hang:{B}/"})  # fmt: skip
    try:
        _wait_for(lambda: (data / "_work" / "units" / A / "summary.json").exists(), proc)
        time.sleep(1.0)  # B's decoder is hanging now
        t0 = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and took < 15, (proc.returncode, took)
    assert not (data / "_work" / "units" / B).exists()
    tmp = data / "_work" / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())
