"""A cluster engine given this machine's folders is refused before any work (issue 17, point 5): workers on
other machines cannot read or write the driver's local RAW and DATA. No cluster is needed: the check runs
before the lock, the discovery and any engine start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bindset.cli import main
from pipelines.build import EngineConfig, _remote_ray_host, build, refuse_cluster_with_local_paths
from schemas.errors import UserError
from transforms.config import BuildConfig

#: TEST-NET-1 (RFC 5737): an address no machine has, so nothing is ever reached
REMOTE = "192.0.2.77:6379"


def _cli(raw: Path, data: str, tmp_path: Path, *flags: str) -> int:
    return main(["build", str(raw), data, "--quiet", "--log-file", str(tmp_path / "b.log"), *flags])


def _one_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    hits = [line for line in lines if all(f in line for f in fragments)]
    assert len(hits) == 1, err
    return hits[0]


@pytest.fixture
def raw(tmp_path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "not-a-video.mp4").write_bytes(b"never opened: the refusal comes before discovery")
    return folder


def test_a_remote_ray_address_with_a_local_data_or_raw_exits_2_before_any_work(raw, tmp_path, capsys):
    data = tmp_path / "data"
    t0 = time.monotonic()
    assert _cli(raw, str(data), tmp_path, "--engine", "ray", "--ray-address", REMOTE) == 2
    line = _one_line(capsys.readouterr().err, f"--ray-address {REMOTE}", f"local DATA {data}",
                     "cannot read or write this machine's folders")  # fmt: skip
    assert "192.0.2.77" in line
    assert not data.exists()  # no lock, no _work/: nothing was written
    # a ray:// client address too, and RAW local while DATA is on object storage (named: RAW)
    assert _cli(raw, str(data), tmp_path, "--engine", "ray", "--ray-address", "ray://192.0.2.77:10001") == 2
    _one_line(capsys.readouterr().err, "ray://192.0.2.77:10001", f"local DATA {data}")
    with pytest.raises(UserError, match=f"local RAW {raw}: the cluster's workers on 192.0.2.77"):
        build(raw, "s3://some-bucket/ds", BuildConfig(), EngineConfig("ray", ray_address=REMOTE))
    assert not data.exists() and time.monotonic() - t0 < 30  # no connection was tried (it would hang)


@pytest.mark.parametrize("runner", ["DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner", "dataflow"])
def test_a_beam_cluster_runner_with_a_local_data_exits_2_before_any_work(raw, tmp_path, capsys, runner):
    data = tmp_path / "data"
    assert _cli(raw, str(data), tmp_path, "--engine", "beam", f"--runner={runner}") == 2
    _one_line(capsys.readouterr().err, f"--runner={runner} with a local DATA {data}",
              "cannot write this machine's folder")  # fmt: skip
    assert not data.exists()


def test_runners_and_addresses_on_this_machine_are_not_refused(raw, tmp_path):
    for address in ("auto", "local", "127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001"):
        assert _remote_ray_host(address) is None, address
    assert _remote_ray_host("head.example:6379") == "head.example"
    data = tmp_path / "data"
    for engine in (EngineConfig("ray", ray_address="auto"), EngineConfig("ray", ray_address="127.0.0.1:6379"),
                   EngineConfig("beam", ["--runner=DirectRunner"]), EngineConfig("beam", ["--runner", "direct"]),
                   EngineConfig("local")):  # fmt: skip
        refuse_cluster_with_local_paths(raw, data, engine)  # no exception
    # a remote address with everything on object storage passes the check (it is then up to the cluster)
    refuse_cluster_with_local_paths("s3://b/raw", "s3://b/ds", EngineConfig("ray", ray_address=REMOTE))
    refuse_cluster_with_local_paths("s3://b/raw", "s3://b/ds", EngineConfig("beam", ["--runner=DataflowRunner"]))
