"""A failing or stopped S3 endpoint during a build (issue 17, "Bad input and failure"): calls retry with
backoff through a short outage and the build completes byte-identical; a longer one fails the build with one
line naming the URL, leaves no manifest (nothing half-committed), and the next build resumes, redoing only the
units that had not been uploaded. The endpoint is a forwarder in front of moto (tests/tcpproxy.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from tcpproxy import TcpProxy
from test_build_s3 import CFG, FLAGS, _local_files, _objects, local_build, videos  # noqa: F401 - fixtures

from pipelines.build import EngineConfig, build
from pipelines.lock_remote import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def proxy(s3_bucket, monkeypatch):
    """A forwarder to the test server; the AWS environment names the forwarder, not the server."""
    fwd = TcpProxy(urlparse(s3_bucket.endpoint).port).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", fwd.endpoint)
    yield fwd
    fwd.stop()


def _server_keys(s3_bucket, prefix: str) -> list[str]:
    """Keys under ``prefix`` as the server has them (straight to moto, past the forwarder)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_bucket.endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _wait(cond, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_short_outage_is_retried_through(videos, local_build, s3_bucket, proxy):  # noqa: F811
    url = f"{s3_bucket.url}/ds"
    done: dict = {}

    def run() -> None:
        try:
            done["out"] = build(videos, url, CFG, EngineConfig("local"))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            done["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    _wait(lambda: _server_keys(s3_bucket, f"ds/{LOCK_NAME}"))  # the build holds its lease: it is under way
    proxy.fail()  # every connection is reset until the build's calls have met the outage a few times
    t0 = time.monotonic()
    _wait(lambda: proxy.resets >= 3 or not worker.is_alive())
    assert worker.is_alive(), done  # nothing can finish without the store
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))  # and at least 2 s of it
    proxy.heal()
    worker.join(300)
    assert "error" not in done, done.get("error")
    assert proxy.resets > 0  # the client did call the broken endpoint, and retried
    out = done["out"]
    assert out.processed == out.units > 2
    remote, local = _objects(url), _local_files(local_build)
    assert sorted(remote) == sorted(local)
    assert all(remote[name] == local[name] for name in local)


@pytest.mark.slow
def test_a_long_outage_fails_cleanly_and_the_next_build_resumes(videos, local_build, s3_bucket, proxy,  # noqa: F811
                                                                 tmp_path, monkeypatch):  # fmt: skip
    url = f"{s3_bucket.url}/ds"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # give up fast: this outage outlasts the retries
    log_file = tmp_path / "b.log"
    cmd = [sys.executable, "-m", "bindset.cli", "build", str(videos), url, *FLAGS, "--engine", "local",
           "--quiet", "--log-file", str(log_file)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def a_unit_is_done() -> bool:
        return any(k.endswith("/summary.json") for k in _server_keys(s3_bucket, "ds/_work/units/"))

    _wait(lambda: a_unit_is_done() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1]
    proxy.stop()  # the endpoint is down: connections are refused
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and url in lines[0] and "cannot reach the storage endpoint" in lines[0], err
    keys = _server_keys(s3_bucket, "ds/")
    assert "ds/manifest.json" not in keys and not [k for k in keys if k.startswith("ds/shards/")]
    uploaded = {k.split("/")[3] for k in keys if k.endswith("/summary.json")}
    assert uploaded  # the units finished before the outage are kept...

    proxy.start()  # the endpoint is back, on the same address
    out = build(videos, url, CFG, EngineConfig("local"))
    assert set(out.processed_units).isdisjoint(uploaded)  # ...and not redone
    assert out.reused == len(uploaded) and out.processed == out.units - len(uploaded) > 0
    remote, local = _objects(url), _local_files(local_build)
    assert sorted(remote) == sorted(local)
    assert all(remote[name] == local[name] for name in local)
    assert json.loads(remote["manifest.json"]) == json.loads(local["manifest.json"])
