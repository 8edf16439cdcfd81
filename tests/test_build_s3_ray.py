"""`bindset build RAW s3://… --engine ray` against the moto S3 server (issue 17, point 5): each Ray task uploads
its unit's result itself, so a local Ray instance and a real two-node Ray cluster (`ray start --head` plus a
second `ray start --address …`, each with its own temp dir: no shared filesystem between the nodes' Ray state,
DATA only on S3) both end byte-identical to a local build of the same RAW."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.build import EngineConfig, build
from tests import test_build_s3 as base
from tests.s3server import _free_port
from tests.test_build_s3 import CFG, FLAGS, _local_files, _no_local_data, _objects

# the same RAW and local reference build as tests/test_build_s3.py: its module fixtures, reused as they are
videos, local_build = base.videos, base.local_build


def _assert_identical(url: str, local: Path) -> None:
    remote, reference = _objects(url), _local_files(local)
    assert sorted(remote) == sorted(reference)
    assert len([n for n in reference if n.startswith("shards/") and n.endswith(".tar")]) >= 3
    for name in reference:
        assert remote[name] == reference[name], name  # byte-identical, the manifest included


def test_local_ray_builds_into_s3_byte_identical_to_a_local_build(videos, local_build, s3_bucket, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = f"{s3_bucket.url}/ds"
    result = build(videos, url, CFG, EngineConfig("ray", num_workers=1))
    assert result.units > 2 and result.processed == result.units
    _assert_identical(url, local_build)
    fs = storage.filesystem("s3")
    assert len(fs.glob(f"{s3_bucket.name}/ds/_work/units/*/summary.json")) == result.units
    assert not fs.exists(f"{s3_bucket.name}/ds/_work/build.lock")
    _no_local_data(s3_bucket.name, cwd)


@pytest.mark.slow
def test_two_node_ray_cluster_builds_into_s3_byte_identical_to_a_local_build(videos, local_build, s3_bucket,
                                                                             tmp_path):  # fmt: skip
    """Two raylets (`ray start`), one CPU each, separate temp dirs; the driver is the CLI in another process.
    The nodes get the S3 endpoint and keys from the environment `ray start` runs in, as cluster nodes do
    (the driver ships no credentials to a cluster given by address)."""
    venv_bin = Path(sys.executable).parent
    ray_bin = str(venv_bin / "ray")
    # token authentication (Ray 2.60's default) is for clusters reachable by others: this one listens on 127.0.0.1
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "disabled",
           "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    # Ray's AF_UNIX socket paths must stay short: temp dirs directly under /tmp
    head_tmp, node_tmp = tempfile.mkdtemp(prefix="bsr1", dir="/tmp"), tempfile.mkdtemp(prefix="bsr2", dir="/tmp")
    port = _free_port()
    url = f"{s3_bucket.url}/ds"
    log = tmp_path / "ray.log"
    nodes: list[subprocess.Popen] = []

    def ray_start(*args: str) -> None:
        # --block: the node lives in this process group, so the test stops exactly the processes it started
        # (``ray stop --force`` would stop every Ray of this user on the machine)
        with open(log, "a") as out:
            nodes.append(subprocess.Popen([ray_bin, "start", "--block", "--num-cpus=1", "--disable-usage-stats",
                                           "--node-ip-address=127.0.0.1", f"--node-manager-port={_free_port()}",
                                           f"--object-manager-port={_free_port()}", *args],
                                          env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip

    probe_err: list[str] = []

    def alive_nodes() -> list[bool]:
        probe = subprocess.run([sys.executable, "-c", f"import ray, json; ray.init(address='127.0.0.1:{port}'); "
                                "print(json.dumps([n['Alive'] for n in ray.nodes()]))"],
                               env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        if probe.returncode != 0:
            probe_err[:] = [probe.stderr[-2000:]]
            return []
        return json.loads(probe.stdout.strip().splitlines()[-1])

    try:
        ray_start("--head", f"--port={port}", f"--temp-dir={head_tmp}", "--include-dashboard=false",
                  f"--ray-client-server-port={_free_port()}")  # fmt: skip
        deadline = time.monotonic() + 120
        while alive_nodes() != [True]:
            assert nodes[0].poll() is None and time.monotonic() < deadline, (log.read_text()[-2000:], probe_err)
            time.sleep(1)
        ray_start(f"--address=127.0.0.1:{port}", f"--temp-dir={node_tmp}")
        while alive_nodes() != [True, True]:  # two live nodes
            assert nodes[1].poll() is None and time.monotonic() < deadline, (log.read_text()[-2000:], probe_err)
            time.sleep(1)

        cli = subprocess.run([sys.executable, "-m", "bindset.cli", "build", str(videos), url, "--engine", "ray",
                              "--ray-address", f"127.0.0.1:{port}", "--no-validate", "--quiet",
                              "--log-file", str(tmp_path / "build.log"), *FLAGS],
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert cli.returncode == 0, (cli.stderr[-3000:], (tmp_path / "build.log").read_text()[-3000:])
        worker_logs = {t: list(Path(t).glob("session_*/logs/worker-*")) for t in (head_tmp, node_tmp)}
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)  # the node and every process it started, nothing else
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(30)
        for temp in (head_tmp, node_tmp):
            shutil.rmtree(temp, ignore_errors=True)
    _assert_identical(url, local_build)
    # both nodes started task workers (each node's workers log under its own temp dir)
    assert all(worker_logs.values()), {t: len(v) for t, v in worker_logs.items()}
