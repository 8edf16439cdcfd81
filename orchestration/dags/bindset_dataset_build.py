"""bindset_dataset_build: the scheduled incremental dataset build, gated and published atomically.

    find_changes ─▶ build ─▶ validate ─▶ report ─▶ publish ─▶ announce  (Asset bindset_dataset)

    airflow dags trigger bindset_dataset_build --conf '{"landing_path": "/mnt/raw", "data_root": "/mnt/bindset"}'

- **find_changes** resolves the run's settings, then fingerprints the landing path (file stats, build config,
  code: no bytes read) against the published version. Nothing new: every later task is skipped, so nothing is
  built, nothing moves and no Asset event is recorded: rerunning a logical date changes nothing.
- **build** runs the incremental build in DATA_ROOT/build (only new or changed units are processed) on
  Beam (runner flags from `beam_pipeline_args`), locally, or on Ray: a Ray Job when the Ray Connection
  exists, else a Ray started on this worker.
- **validate** is the Great Expectations gate; a failure fails the run at once (no retry: the data will not
  change by retrying) and nothing is published.
- **report** writes DATA_ROOT/build/quality/report.html, also for a build that failed the gate.
- **publish** hard-links the build into DATA_ROOT/versions/<content id>/ and switches DATA_ROOT/current.
  Content already current: the task is skipped, so no Asset event.
- **announce** records the Asset event, with the version in its extra: it triggers `bindset_train`.

Settings: params > Airflow Variables > defaults (orchestration/settings.py), resolved once per run by
find_changes and handed on in its XCom: a Variable edited while a run is in flight applies from the next run,
and every later task (and retry) of this one uses the same paths. Schedule: `@daily`, or the
environment variable BINDSET_BUILD_SCHEDULE of the scheduler and DAG processor (a cron expression, a preset,
or `none` for manual runs only): it is read when the file is parsed, where a Variable would cost a metadata
database query on every parse.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from orchestration.assets import DATASET
from orchestration.settings import BUILD_PARAMS, AirflowSource, BuildSettings, airflow_params, resolve_build_settings

log = logging.getLogger(__name__)


def _schedule() -> str | None:
    value = os.environ.get("BINDSET_BUILD_SCHEDULE", "@daily").strip()
    return None if value.lower() in ("", "none") else value


def _settings(found: dict) -> BuildSettings:
    """The settings find_changes resolved for this run (only the Ray token is read again, from its Connection)."""
    return BuildSettings.from_dict(found["settings"], AirflowSource())


@dag(
    dag_id="bindset_dataset_build",
    schedule=_schedule(),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,  # the build is of the landing path as it is now, not of a date partition
    max_active_runs=1,  # one build folder: two runs must never build into it at once
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    params=airflow_params(BUILD_PARAMS),
    tags=["bindset"],
    doc_md=__doc__,
)
def bindset_dataset_build():
    @task.short_circuit
    def find_changes(params=None) -> dict | None:
        from orchestration.build_steps import find_changes

        s = resolve_build_settings(params or {}, AirflowSource())  # the run's one reading of the Variables
        log.info("settings: %s", s.summary())
        changes = find_changes(s)
        log.info("find_changes: %s", changes.summary())
        # falsy: skip every downstream task
        return {"settings": s.to_dict(), "changes": changes.to_dict()} if changes else None

    @task
    def build(found: dict, ti=None, run_id=None) -> dict:
        from orchestration.build_steps import run_build

        outcome = run_build(_settings(found), run_id or "manual", ti.try_number if ti else 1)
        log.info("build: %s", outcome.to_dict())
        return outcome.to_dict()

    @task
    def validate(found: dict, built: dict) -> dict:
        from orchestration.build_steps import run_validation

        outcome = run_validation(_settings(found))
        if not outcome.passed:
            raise AirflowFailException("\n".join(outcome.summary_lines()))
        return {"passed": True, "expectations": len(outcome.results), "results": str(outcome.validation_json)}

    # ALL_DONE_MIN_ONE_SUCCESS: a build that failed the gate gets its report too (that is when it is read);
    # a failed build gets none, since validate then never succeeds either
    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
    def report(found: dict, built: dict) -> str:
        from orchestration.build_steps import run_report

        return str(run_report(_settings(found)))

    @task
    def publish(found: dict, validated: dict, report_path: str) -> dict:
        from orchestration.publish import PublishRefused, publish_version

        s = _settings(found)
        try:
            result = publish_version(s.data_root, s.build_dir)
        except PublishRefused as exc:
            raise AirflowFailException(str(exc)) from None
        if not result.switched:
            # skipped, not succeeded: Airflow records an outlet's Asset event only for a successful task
            raise AirflowSkipException(f"dataset {result.version_id} is already current; nothing to publish")
        log.info("published %s (was %s) at %s", result.version_id, result.previous, result.path)
        return result.to_dict()

    @task(outlets=[DATASET])
    def announce(published: dict, outlet_events=None) -> dict:
        extra = {k: published[k] for k in ("version_id", "path", "previous", "samples", "build_version")}
        outlet_events[DATASET].extra = extra
        return extra

    found = find_changes()
    built = build(found)
    validated = validate(found, built)
    reported = report(found, built)
    validated >> reported
    announce(publish(found, validated, reported))


bindset_dataset_build()
