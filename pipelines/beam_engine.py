"""Apache Beam adapter: map the unit of work over units.

    bindset build RAW DATA --engine beam [--runner=DataflowRunner --project=... ...]

Runner flags pass through untouched to PipelineOptions. Without a runner, the DirectRunner runs in
multi-threading mode with one worker per core (``--direct_running_mode=multi_processing`` for processes).
DATA must be a path every worker can write (on a cluster: a shared or mounted filesystem).

Logging: Beam's workers log at its default level (INFO, ``--default_sdk_harness_log_level``), so their per-unit
lines are kept. Worker threads log here directly; worker processes (multi-processing mode) write to the stderr
they inherit, and their WARNING lines also come back through the Fn logging API to the ``apache_beam``
loggers here; under the `bindset` CLI both end in the run's log file (bindset/logs.py points stderr at it),
never on the console.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace

from pipelines.build import decode_threads, usable_cores
from pipelines.work import WorkContext, release_thread_decoder, run_unit_json
from schemas.errors import UserError

# Beam's names for its in-process batch runner, as ``--runner`` spells them (Beam lower-cases a name and adds
# "runner" when missing: apache_beam/runners/runner.py ``create_runner``). bindset runs these on the
# FnApiRunner itself (``_in_process_runner``).
_DIRECT = {"directrunner", "switchingdirectrunner", "fnapirunner"}


def _runner_name(args_or_options) -> str | None:
    """``--runner`` as Beam reads it, normalised (``DirectRunner``, ``direct`` and the class path all give
    "directrunner"); None when no runner is named."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = args_or_options if isinstance(args_or_options, PipelineOptions) else PipelineOptions(args_or_options)
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        return None
    name = (runner if isinstance(runner, str) else type(runner).__name__).rsplit(".", 1)[-1].lower()
    return name if name.endswith("runner") else name + "runner"


def in_process(args_or_options) -> bool:
    """Whether Beam flags (a list, or PipelineOptions) run the pipeline in this process: no ``--runner``, or
    one of the DirectRunner's spellings (run on the FnApiRunner, ``_in_process_runner``)."""
    return _runner_name(args_or_options) in (None, *_DIRECT)


def _default_flags(args: list[str]) -> list[str]:
    names = {a.split("=")[0] for a in args}
    if not in_process(list(args)):  # another runner's workers are not this machine's threads
        return list(args)
    extra = []
    if "--direct_num_workers" not in names:
        extra.append(f"--direct_num_workers={usable_cores()}")
    if "--direct_running_mode" not in names and usable_cores() > 1:
        # threads, not processes: a unit's CPU work runs in its decode process (pipelines/work.py: one per
        # worker thread, forked from one warm forkserver), so worker processes would only add their start-up
        # (a Python interpreter, bindset's imports and a forkserver of their own each: ~10 s of a
        # 300-video build on 2 cores, benchmarks/many_inputs.py). A decoder crash still costs one input.
        extra.append("--direct_running_mode=multi_threading")
    return list(args) + extra


def unknown_flags(pipeline_args: list[str]) -> list[str]:
    """The ``--flags`` of ``pipeline_args`` that no Beam PipelineOptions class defines.

    Beam drops those with only a warning ("Discarding unparseable args"), which the CLI keeps in the log file,
    so a typo (``--stride-s`` for ``--stride``) would be silently ignored; the CLI refuses them instead.
    Names are compared as Beam does: ``get_all_options(retain_unknown_options=True)`` adds each unknown flag.
    Raises UserError (one line) for a bad value of a Beam option (``--direct_num_workers=abc``), which Beam's
    argparse would report as a usage text on stderr and ``SystemExit``.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(pipeline_args)
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    except SystemExit:
        message = (usage.getvalue().strip().splitlines() or ["invalid Beam pipeline options"])[-1]
        raise UserError(message.split("error: ", 1)[-1]) from None
    return [a for a in pipeline_args if a.startswith("--") and a[2:].split("=", 1)[0].replace("-", "_") in unknown]


def _decode_threads(options, units: int) -> int:
    """FFmpeg threads per video decoder (pipelines/build.py ``decode_threads``): in process (no ``--runner``,
    or a DirectRunner spelling), the workers share this machine's cores (``--direct_num_workers=0`` means one
    per core, as Beam reads it; ``in_memory`` mode runs one at a time); another runner's workers are machines
    of their own, whose decoders keep FFmpeg's default (0)."""
    from apache_beam.options.pipeline_options import DirectOptions

    if not in_process(options):
        return 0
    direct = options.view_as(DirectOptions)
    workers = usable_cores() if direct.direct_num_workers == 0 else (direct.direct_num_workers or 1)
    if direct.direct_running_mode == "in_memory":
        workers = 1
    return decode_threads(min(workers, units))


def _in_process_runner(options):
    """Beam's FnApiRunner, set up as its DirectRunner sets it up for a batch pipeline like this one
    (apache_beam/runners/direct/direct_runner.py, ``SwitchingDirectRunner.run_pipeline``). Named here because
    that DirectRunner (Beam 2.77) first tries the Prism runner, which downloads its binary from GitHub at run
    time (a build makes no network call but to the object store a user names) and then ignores
    ``--direct_num_workers``; without network it falls back to the FnApiRunner anyway."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def run_beam(ctx: WorkContext, units_json: list[str], pipeline_args: list[str]) -> None:
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as exc:  # pragma: no cover - the locked environment has Beam
        raise RuntimeError("the beam engine needs apache-beam installed") from exc

    options = PipelineOptions(_default_flags(pipeline_args))
    ctx_json = replace(ctx, decode_threads=_decode_threads(options, len(units_json))).to_json()

    class ProcessUnit(beam.DoFn):
        def process(self, unit_json: str):
            yield run_unit_json(ctx_json, unit_json)

        def finish_bundle(self):
            # on the bundle's thread: its decode process ends with the bundle (Beam's in-process workers are
            # threads of a pool shared by the whole process, which would keep one per thread until the
            # interpreter exits, and builds in one process would pile them up); the next bundle on the
            # thread forks a fresh one from the warm forkserver (milliseconds)
            release_thread_decoder()

    runner = _in_process_runner(options) if in_process(options) else None
    with beam.Pipeline(runner=runner, options=options) as p:
        _ = (
            p
            | "Units" >> beam.Create(units_json)
            | "Spread" >> beam.Reshuffle()
            | "Process" >> beam.ParDo(ProcessUnit())
        )
