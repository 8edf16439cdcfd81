"""Starting a local Ray instance again when its node does not come up in Ray's fixed 30 s."""

from __future__ import annotations

import pytest
import ray

from pipelines import ray_start

_TIMEOUT = "The current node timed out during startup. This could happen because some of the raylet failed"


def _flaky_init(failures: int, message: str = _TIMEOUT):
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) <= failures:
            raise Exception(message)  # what ray/_private/node.py raises

    return init, calls


@pytest.mark.parametrize("message", [_TIMEOUT, "Timed out waiting for file /tmp/ray/session_x/gcs_server_port_ab"])
def test_a_local_start_that_times_out_is_tried_again(monkeypatch, message):
    init, calls = _flaky_init(failures=2, message=message)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray_start.time, "sleep", lambda s: None)
    assert ray_start.init_ray(address="local", num_cpus=1) is True
    assert len(calls) == 3 and all(c["address"] == "local" for c in calls)


def test_the_last_timeout_and_other_failures_propagate(monkeypatch):
    monkeypatch.setattr(ray_start.time, "sleep", lambda s: None)
    init, calls = _flaky_init(failures=ray_start.LOCAL_START_TRIES)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(Exception, match="timed out during startup"):
        ray_start.init_ray(address="local")
    assert len(calls) == ray_start.LOCAL_START_TRIES
    init, calls = _flaky_init(failures=1, message="Permission denied: /tmp/ray")
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(Exception, match="Permission denied"):
        ray_start.init_ray(address="local")
    assert len(calls) == 1
    init, calls = _flaky_init(failures=1)  # a cluster's address: its nodes are not ours to restart
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(Exception, match="timed out during startup"):
        ray_start.init_ray(address="ray://head:10001")
    assert len(calls) == 1
