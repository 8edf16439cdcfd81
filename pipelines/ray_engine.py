"""Ray adapter: map the unit of work over units as Ray tasks.

    bindset build RAW DATA --engine ray [--ray-address ray://head:10001]

Without an address a local Ray instance is started (and stopped). DATA must be a path every node can
write, or an object-store URL (``s3://``): then each task uploads its unit's result itself. A local
instance's workers get this process's client environment (endpoint, credentials) through the runtime
environment; the nodes of a cluster given by ``--ray-address`` bring their own (IAM roles, workload identity,
or the AWS variables of the environment ``ray start`` ran in): no credential of the driver is shipped to them.
Tasks retry on worker loss; a unit's own failures are already records, not exceptions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from pipelines import storage
from pipelines.ray_start import init_ray, worker_logs_to_driver
from pipelines.work import WorkContext, run_unit_json


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def unit_task(ctx_json: str, unit_json: str) -> dict:
    """The Ray task: ``run_unit_json``, returning its result with the unit's log lines (start, end, seconds,
    rejects by reason) under ``"log"`` as (level, message) pairs, for the driver to log.

    Not left to Ray's relay of the worker's output: a Ray worker's root logger passes only WARNING, and
    the relay drops what the last task printed when the driver shuts Ray down right after it returns.
    """
    unit_log = logging.getLogger(run_unit_json.__module__)
    handler, before = _Lines(), (unit_log.level, unit_log.propagate)
    unit_log.addHandler(handler)
    unit_log.setLevel(logging.INFO)
    unit_log.propagate = False
    try:
        out = run_unit_json(ctx_json, unit_json)
    finally:
        unit_log.removeHandler(handler)
        unit_log.setLevel(before[0])
        unit_log.propagate = before[1]
    return dict(out, log=handler.lines)


def run_ray(
    ctx: WorkContext,
    units_json: list[str],
    address: str | None = None,
    num_cpus: int | None = None,
    on_done: Callable[[], None] | None = None,
) -> None:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - the locked environment has Ray
        raise RuntimeError("the ray engine needs ray installed") from exc

    # "local": a fresh instance even where `ray start` left a cluster running (None would attach to it)
    kwargs = {"address": address} if address else {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}
    relay = worker_logs_to_driver()
    if relay:  # the relayed lines go to a log file: no terminal colour codes around Ray's "(task pid=...)" prefix
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    schemes = sorted({loc.scheme for loc in (storage.location(ctx.data), storage.location(ctx.raw)) if loc.scheme})
    runtime_env: dict = {}
    if schemes and not address:
        # a local instance's workers use this process's endpoint and credentials (values never logged) for
        # DATA and for RAW on object storage; as training does (training/ray_trainer.py)
        runtime_env["env_vars"] = {k: v for s in schemes for k, v in storage.client_environment(s).items()}
    if not address:
        # each worker starts its decode server (the forkserver that imports torch, scipy, ...: ~2.5 CPU-s) as
        # it starts, while Ray is still bringing the instance up, not when its first unit begins
        runtime_env["worker_process_setup_hook"] = "pipelines.work.start_decode_server"
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    started = init_ray(log_to_driver=relay, configure_logging=False, **kwargs)
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(unit_task)
        ctx_json = ctx.to_json()
        pending = [task.remote(ctx_json, u) for u in units_json]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for level, message in ray.get(done[0]).get("log", []):
                logging.getLogger(run_unit_json.__module__).log(level, "%s", message)
            if on_done:
                on_done()
    finally:
        if started:
            ray.shutdown()
