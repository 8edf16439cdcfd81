"""Ray adapter: run the units on Ray.

    bindset build RAW DATA --engine ray [--ray-address ray://head:10001]

Without an address a local Ray instance is started (and stopped), and its units run in one Ray actor,
``UnitRunner``, as many at once as the instance has CPUs, each on a thread feeding a decode process of its
own, as the local engine runs them: one worker process, one decode server (the forkserver that imports torch,
scipy, ...: ~3 CPU-s) and one import of the unit code for the whole node, where a task per unit paid them
once per CPU (300 six-second videos on 2 cores: the whole Ray build used 33-35 CPU-s instead of 37-39, the
local engine 26-28). Ray restarts the actor if its process dies and runs the units it held again
(``max_task_retries``). With ``--ray-address`` each unit is a Ray task, spread over the cluster's nodes (and
whatever nodes its autoscaler adds); a task is retried on worker loss.

DATA must be a path every node can write, or an object-store URL (``s3://``): then each unit uploads its
result itself. A local instance's workers get this process's client environment (endpoint, credentials)
through the runtime environment; the nodes of a cluster given by ``--ray-address`` bring their own (IAM
roles, workload identity, or the AWS variables of the environment ``ray start`` ran in): no credential of
the driver is shipped to them. A unit's own failures are already records, not exceptions.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace

from pipelines import storage
from pipelines.ray_start import init_ray, stop_ray, worker_logs_to_driver
from pipelines.work import WorkContext, run_unit_json, start_decode_server

#: tries of a unit whose Ray worker died under it (tasks: ``max_retries``; the actor: ``max_task_retries``)
RETRIES = 2
#: how long a local instance's UnitRunner may take to start (a loaded machine: seconds) before the build fails
ACTOR_START_S = 300.0
#: what a unit imports in the worker on first use (~1.5 s): the clock check's modules (scipy) for its sync
#: rows, and pandas, which pyarrow imports at a unit's first ``Table.from_pylist`` (as pipelines/build.py
#: ``_warm_up`` does for the local engine)
_WARM_MODULES = ("pipelines.sync", "pandas")


class _Lines(logging.Handler):
    """The unit logger's records, kept per thread: units running side by side on threads (``UnitRunner``)
    each get their own lines (a unit logs from the thread that runs it, pipelines/work.py ``run_unit``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._lines: dict[int, list[tuple[int, str]]] = {}

    def start(self) -> None:
        self._lines[threading.get_ident()] = []

    def take(self) -> list[tuple[int, str]]:
        return self._lines.pop(threading.get_ident(), [])

    def emit(self, record: logging.LogRecord) -> None:
        lines = self._lines.get(record.thread)
        if lines is not None:
            lines.append((record.levelno, record.getMessage()))


def _capture_unit_log() -> _Lines:
    """Route the unit logger (INFO and up) of this worker process to a ``_Lines``, not to Ray's relay: a Ray
    worker's root logger passes only WARNING, and the relay drops what the last unit printed when the driver
    shuts Ray down right after it returns."""
    unit_log = logging.getLogger(run_unit_json.__module__)
    handler = _Lines()
    unit_log.addHandler(handler)
    unit_log.setLevel(logging.INFO)
    unit_log.propagate = False
    return handler


def _run_logged(handler: _Lines, ctx_json: str, unit_json: str) -> dict:
    handler.start()
    try:
        out = run_unit_json(ctx_json, unit_json)
    finally:
        lines = handler.take()
    return dict(out, log=lines)


def unit_task(ctx_json: str, unit_json: str) -> dict:
    """The Ray task (a cluster's units): ``run_unit_json``, returning its result with the unit's log lines
    (start, end, seconds, rejects by reason) under ``"log"`` as (level, message) pairs, for the driver to log.
    The worker process's unit logger is left as the task found it."""
    unit_log = logging.getLogger(run_unit_json.__module__)
    before = (unit_log.level, unit_log.propagate)
    handler = _capture_unit_log()
    try:
        return _run_logged(handler, ctx_json, unit_json)
    finally:
        unit_log.removeHandler(handler)
        unit_log.setLevel(before[0])
        unit_log.propagate = before[1]


class UnitRunner:
    """The Ray actor of a local instance: runs units on Ray's threads of this actor (``max_concurrency``, one
    per CPU), each thread with a decode process of its own that it keeps from unit to unit
    (pipelines/work.py ``DecodeWorker``). ``run`` returns what ``unit_task`` returns.

    On creation it starts the decode server and imports the unit code's later imports in the background, so
    they come up while the driver submits the units rather than inside the first ones.
    """

    def __init__(self) -> None:
        self._log = _capture_unit_log()
        start_decode_server()
        threading.Thread(target=_import_warm, name="bindset-warm-up", daemon=True).start()

    def run(self, ctx_json: str, unit_json: str) -> dict:
        return _run_logged(self._log, ctx_json, unit_json)

    def ready(self) -> bool:
        """True once ``__init__`` has run: the driver's check that the actor can start at all."""
        return True


def _import_warm() -> None:
    for name in _WARM_MODULES:
        # pandas is optional to pyarrow: where it is missing, nothing imports it later either
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


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
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    started = init_ray(log_to_driver=relay, configure_logging=False, **kwargs)
    try:
        from pipelines.build import decode_threads  # not at the top: pipelines.build imports this module lazily

        # each task's video decoders get their share of the cores: cpus // tasks running at once (for a
        # cluster the same share per node, as its tasks spread over its nodes' CPUs)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ctx = replace(ctx, decode_threads=decode_threads(min(len(units_json), cpus), cpus))
        ctx_json = ctx.to_json()
        if address:
            task = ray.remote(num_cpus=1, max_retries=RETRIES)(unit_task)
            call = functools.partial(task.remote, ctx_json)
            at_once = len(units_json)  # all at once: the cluster schedules them (and may add nodes for them)
        else:
            # a fixed-size node of our own: the actor is restarted when its process dies, and each unit runs
            # at most 1 + RETRIES times, as a task would (a unit that kills its worker every time fails the
            # build). Unlike tasks, a death costs a try of every unit running at that moment. Restarts are
            # bounded (a process that dies in __init__ fails no call, so Ray would restart it forever):
            # RETRIES a unit is as many as deaths inside units can use up.
            runner = ray.remote(UnitRunner).options(num_cpus=cpus, max_concurrency=cpus,
                                                    max_restarts=RETRIES * max(1, len(units_json)),
                                                    max_task_retries=RETRIES).remote()  # fmt: skip
            try:
                ray.get(runner.ready.remote(), timeout=ACTOR_START_S)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
                how = (f"did not start within {ACTOR_START_S:.0f} s" if isinstance(exc, ray.exceptions.GetTimeoutError)
                       else f"died as it started ({str(exc).strip().splitlines()[0][:300]})")  # fmt: skip
                raise RuntimeError(f"the Ray worker that runs the units {how}; see Ray's logs "
                                   f"(/tmp/ray/session_latest/logs)") from exc  # fmt: skip
            call = functools.partial(runner.run.remote, ctx_json)
            # as many as it has threads: a threaded actor runs what it holds in no set order; fed one at a
            # time, the units start in the caller's order (largest first, so that the threads end together)
            at_once = cpus
        queue = iter(units_json)
        unit_of: dict = {}  # ObjectRef -> unit id, for a failure's message

        def submit(units) -> list:
            refs = []
            for u in units:
                ref = call(u)
                unit_of[ref] = json.loads(u).get("unit_id", "?")
                refs.append(ref)
            return refs

        pending = submit(itertools.islice(queue, at_once))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            pending += submit(itertools.islice(queue, 1))
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError:
                raise  # the unit's own code raised (a full disk, a refused upload): that error, as it is
            except ray.exceptions.RayError as exc:  # its worker died on every try
                raise RuntimeError(f"unit {unit_of[done[0]]}: its Ray worker died while it ran (it, or a unit "
                                   f"running beside it on the same worker), {1 + RETRIES} times "
                                   f"({type(exc).__name__}); the next build runs it again") from exc  # fmt: skip
            unit_of.pop(done[0], None)
            for level, message in result.get("log", []):
                logging.getLogger(run_unit_json.__module__).log(level, "%s", message)
            if on_done:
                on_done()
    finally:
        if started:
            stop_ray()
