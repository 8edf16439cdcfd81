"""Ray adapter: map the unit of work over units as Ray tasks.

    bindset build RAW DATA --engine ray [--ray-address ray://head:10001]

Without an address a local Ray instance is started (and stopped). DATA must be a path every node can
write. Tasks retry on worker loss; a unit's own failures are already records, not exceptions.
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.ray_start import init_ray, worker_logs_to_driver
from pipelines.work import WorkContext, run_unit_json


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
    started = init_ray(log_to_driver=worker_logs_to_driver(), configure_logging=False, **kwargs)
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(run_unit_json)
        ctx_json = ctx.to_json()
        pending = [task.remote(ctx_json, u) for u in units_json]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            if on_done:
                on_done()
    finally:
        if started:
            ray.shutdown()
