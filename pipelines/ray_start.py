"""One way to start (or attach to) Ray for both the build and training engines.

Ray >= 2.45 notices a driver launched by `uv run` and starts every worker through `uv run` as well, in a
copy of the working directory that leaves `.venv` out: on a fresh machine that means a re-sync per worker
(no network at run time) and workers that never start. Our workers run in the very interpreter and
environment of the driver, so that hook is switched off unless the user set it themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import Any

from schemas.errors import UserError

log = logging.getLogger(__name__)

UV_HOOK_ENV = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
#: tries at starting a local Ray instance: Ray gives its raylet a fixed 30 s to register with the GCS
#: (ray/_private/node.py, not configurable), which a loaded 2-core machine can miss once
LOCAL_START_TRIES = 3
#: set by the `bindset` CLI while a command runs (bindset/logs.py): the run's log file, which stderr points at
LOG_FILE_ENV = "BINDSET_LOG_FILE"
#: seconds a cluster's GCS address gets to accept a TCP connection before ray.init (a LAN answers in ms)
PROBE_TIMEOUT_S = 5.0


def worker_logs_to_driver() -> bool:
    """Whether Ray should relay its workers' output to this driver (``ray.init(log_to_driver=...)``).

    Yes under the `bindset` CLI, whose stderr is the run's log file: what workers print (warnings, native
    libraries' messages) then lands in that file, next to the driver's. The build's per-unit lines do not
    depend on it: they come back with each task's result (pipelines/ray_engine.py). No for library callers:
    there the relayed lines would flood the caller's console; they stay in Ray's session logs
    (``/tmp/ray/session_latest/logs``).
    """
    return bool(os.environ.get(LOG_FILE_ENV))


def _start_timed_out(exc: BaseException) -> bool:
    """Ray's start-up timeouts: the raylet not registered within 30 s ("The current node timed out during
    startup", ray/_private/node.py) or a port file the GCS did not write in time ("Timed out waiting for
    file .../gcs_server_port_...", ray/_raylet.pyx)."""
    text = str(exc)
    return "timed out during startup" in text or "Timed out waiting for file" in text


def check_reachable(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ``UserError`` (exit 2, naming the address) unless a cluster's GCS address ``host:port`` accepts a
    TCP connection within ``timeout_s``: ray.init on an unreachable address retries for many minutes and
    ignores SIGINT/SIGTERM meanwhile. Other addresses (None, "local", "auto", ``ray://`` client URLs, which
    fail on their own) are not probed."""
    if not address or "://" in address or address in ("local", "auto"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address {address!r}: expected HOST:PORT of a Ray cluster's head (or ray://, auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--ray-address {address}: no Ray cluster answers there within {timeout_s:g} s "
                        f"({exc.strerror or exc})") from None  # fmt: skip


def require_gpus(n: int = 1) -> None:
    """Raise ``UserError`` (exit 2) unless the Ray cluster this process is attached to has ``n`` GPUs or more
    (``ray.cluster_resources()``); a task asking for a GPU on a cluster without one waits forever."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if have < n:
        raise UserError(f"--gpu: the Ray cluster has {have:g} GPUs; run without --gpu or on a cluster with GPUs")


def init_ray(**kwargs: Any) -> bool:
    """ray.init(**kwargs) unless Ray is already up; returns True when this call started it (caller shuts down).

    A local instance (``address="local"``) whose node times out during start-up is started again, up to
    ``LOCAL_START_TRIES`` times; any other failure, and the last one, propagate as Ray raised them. A cluster
    address that does not answer raises ``UserError`` first (``check_reachable``).
    """
    os.environ.setdefault(UV_HOOK_ENV, "0")
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    check_reachable(kwargs.get("address"))
    # the constant is read once, when ray is first imported; honour the environment as it is now
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ[UV_HOOK_ENV].lower() in ("1", "true")
    tries = LOCAL_START_TRIES if kwargs.get("address") == "local" else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(**kwargs)
            return True
        except Exception as exc:  # Ray raises a bare Exception for a node that did not come up
            if attempt == tries or not _start_timed_out(exc):
                raise
            log.warning("local Ray did not start (%s); starting it again (try %d of %d)", exc, attempt + 1, tries)
            ray.shutdown()  # stops what the failed start left running
            time.sleep(2.0 * attempt)
    raise AssertionError("unreachable")


def stop_ray() -> None:
    """``ray.shutdown()``, stopping first the autoscaler monitor of a local instance this process started.

    ray.shutdown stops the raylet, then the GCS, then the other processes, each with SIGTERM and up to 1 s to
    exit (ray/_private/node.py ``kill_all_processes``). The monitor's SIGTERM handler reports the signal to
    the GCS, already gone by then, so it always takes its full second (ray/autoscaler/_private/monitor.py
    ``_signal_handler``): 1.0 of the 1.1-1.4 s ray.shutdown took here. A fixed-size local instance has
    nothing for it to scale, so it is killed (SIGKILL, no report) while the rest of Ray still runs. Where
    this process did not start the node (a cluster's address) ray.shutdown alone runs.
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # not public: tolerate its absence
    if node is not None and node.is_head() and hasattr(node, "kill_monitor"):
        with contextlib.suppress(Exception):  # already gone, or another Ray version: ray.shutdown stops it
            node.kill_monitor(check_alive=False)
    ray.shutdown()
