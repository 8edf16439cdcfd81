"""The Ray engine on a local instance: units on the threads of one actor, their log lines kept apart, the
actor's process lost mid-build, and a cheap stop (pipelines/ray_engine.py, pipelines/ray_start.py)."""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

from bindset.synth.generate import SynthConfig, synth
from pipelines import ray_engine, ray_start
from pipelines.build import EngineConfig, build
from pipelines.work import run_unit_json
from transforms.config import BuildConfig


class _RunnerKiller:
    """A thread that SIGKILLs the UnitRunner actor's process whenever a unit is under way on it (one of its
    decode server's children, a decode process, runs): ``times`` kills (None: until the block ends). The
    context value is the list of ``note()``'s values at each kill."""

    def __init__(self, times: int | None, note=lambda: None):
        self.times, self.note = times, note
        self.kills: list = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set() and (self.times is None or len(self.kills) < self.times):
            for p in psutil.Process().children(recursive=True):
                try:
                    if p.name().startswith("ray::UnitRunner") and any(c.children() for c in p.children()):
                        noted = self.note()
                        p.kill()
                        self.kills.append(noted)
                        time.sleep(0.5)  # the restarted actor's next unit, not the same one twice at once
                        break
                except psutil.Error:
                    pass
            time.sleep(0.05)

    def __enter__(self) -> list:
        self.thread.start()
        return self.kills

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def _digest(data: Path) -> dict[str, str]:
    files = sorted((data / "shards").iterdir()) + [data / "index.parquet", data / "rejects.parquet"]
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_units_on_threads_side_by_side_keep_their_own_log_lines():
    unit_log = logging.getLogger(run_unit_json.__module__)
    before = (unit_log.level, unit_log.propagate, list(unit_log.handlers))
    lines = ray_engine._capture_unit_log()
    taken: dict[str, list] = {}
    both_started = threading.Barrier(2)

    def unit(name: str) -> None:
        lines.start()
        both_started.wait()
        for i in range(50):
            unit_log.info("unit %s: line %d", name, i)
        taken[name] = lines.take()

    try:
        threads = [threading.Thread(target=unit, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        unit_log.info("unit c: a line of no unit's thread")  # not started on this thread: kept by no one
        assert lines.take() == []
    finally:
        unit_log.removeHandler(lines)
        unit_log.setLevel(before[0])
        unit_log.propagate = before[1]
    assert unit_log.handlers == before[2]
    for name in ("a", "b"):
        assert taken[name] == [(logging.INFO, f"unit {name}: line {i}") for i in range(50)]


def test_stop_ray_kills_the_monitor_first_then_ends_every_process_of_the_instance():
    assert ray_start.init_ray(address="local", num_cpus=1, include_dashboard=False, configure_logging=False,
                              log_to_driver=False)  # fmt: skip
    node = ray._private.worker._global_node
    procs = {kind: infos[0].process for kind, infos in node.all_processes.items()}
    assert {"raylet", "gcs_server", "monitor"} <= set(procs)
    ray_start.stop_ray()
    assert not ray.is_initialized()
    # SIGKILL, not the SIGTERM that ray.shutdown sends: the monitor's handler would first try to report
    # "autoscaler failed" to the GCS, stopped by then, and hold the shutdown for a second
    assert procs["monitor"].returncode == -signal.SIGKILL
    assert all(p.poll() is not None for p in procs.values()), {k: p.pid for k, p in procs.items() if p.poll() is None}


@pytest.mark.slow
def test_a_killed_unit_runner_is_restarted_and_its_units_run_again(tmp_path):
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=4, seed=5, seconds=6.0, width=160, height=120, workers=2))
    cfg = BuildConfig(shard_max_samples=2)
    build(raw, tmp_path / "local", cfg, EngineConfig("local"))

    data = tmp_path / "ray"

    def finished() -> int:
        units = data / "_work" / "units"
        return len(list(units.glob("*/summary.json"))) if units.exists() else 0

    with _RunnerKiller(times=1, note=finished) as killed:
        result = build(raw, data, cfg, EngineConfig("ray", num_workers=2))
    assert killed and killed[0] < 4, killed  # killed while units were left to do
    assert result.units == 4 and result.commit.samples > 0
    assert _digest(data) == _digest(tmp_path / "local")


@pytest.mark.slow
def test_a_unit_whose_worker_always_dies_fails_the_build_naming_it(tmp_path):
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=2, seed=6, seconds=4.0, width=64, height=48, workers=1))
    died = r"unit s\d+_\d+: its Ray worker died while it ran .*, 3 times"
    with _RunnerKiller(times=None) as kills, pytest.raises(RuntimeError, match=died):
        build(raw, tmp_path / "data", BuildConfig(), EngineConfig("ray", num_workers=1))
    assert len(kills) >= 3


def test_a_unit_runner_that_cannot_start_fails_the_build_instead_of_restarting_forever(tmp_path, monkeypatch):
    import os

    class DiesAtStart(ray_engine.UnitRunner):
        def __init__(self):  # a worker that dies while the actor is created (a crash at import, an OOM kill)
            os._exit(1)

    monkeypatch.setattr(ray_engine, "UnitRunner", DiesAtStart)
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=2, seed=6, seconds=4.0, width=64, height=48, workers=1))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="the Ray worker that runs the units died as it started"):
        build(raw, tmp_path / "data", BuildConfig(), EngineConfig("ray", num_workers=1))
    assert time.monotonic() - t0 < ray_engine.ACTOR_START_S


@pytest.mark.slow
def test_decoder_crash_and_hang_inside_the_actor_cost_only_their_inputs(tmp_path, monkeypatch):
    """The actor's threads isolate inputs as the local engine's do: a segfaulting and a hanging decoder become
    those inputs' `decoder_crash` and `decode_timeout` rejects; their unit-mates and the other units are built
    and nothing is left running."""
    import pyarrow.parquet as pq

    from pipelines.work import FAULT_ENV

    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=4, seed=7, seconds=4.0, width=64, height=48, workers=1))
    monkeypatch.setenv(FAULT_ENV, "segv:s007_001/,hang:s007_003/")  # read by the actor's decode workers
    data = tmp_path / "data"
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # another test's forkserver, say
    build(raw, data, BuildConfig(decode_timeout_s=6), EngineConfig("ray", num_workers=2))
    rejects = pq.read_table(data / "rejects.parquet").to_pylist()
    by_session = {r["session"]: r["reason"] for r in rejects if r["key"] is None and r["modality"] is None}
    assert by_session.get("s007_001") == "decoder_crash" and by_session.get("s007_003") == "decode_timeout"
    sessions = {r["session"] for r in pq.read_table(data / "index.parquet").to_pylist()}
    assert sessions == {"s007_000", "s007_002"}
    time.sleep(0.5)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.status() != psutil.STATUS_ZOMBIE], left
