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
from pipelines.work import WorkContext, run_unit_json
from schemas.errors import UserError


def _default_flags(args: list[str]) -> list[str]:
    names = {a.split("=")[0] for a in args}
    if "--runner" in names:
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
    """FFmpeg threads per video decoder (pipelines/build.py ``decode_threads``): on the DirectRunner (no
    ``--runner``, or ``--runner=DirectRunner``), its workers share this machine's cores; another runner's
    workers are machines of their own, whose decoders keep FFmpeg's default (0)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct"):
        return 0
    workers = options.view_as(DirectOptions).direct_num_workers or 1
    return decode_threads(min(workers, units))


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

    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | "Units" >> beam.Create(units_json)
            | "Spread" >> beam.Reshuffle()
            | "Process" >> beam.ParDo(ProcessUnit())
        )
