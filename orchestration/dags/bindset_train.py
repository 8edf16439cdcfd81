"""bindset_train: train, embed, evaluate and publish a model whenever a dataset version is published.

    resolve ─▶ train ─▶ embed ─▶ evaluate ─▶ publish_report

Triggered by the Asset bindset_dataset (each event's extra names the version), or by hand with a conf:

    airflow dags trigger bindset_train --conf '{"dataset_version": "ds-…", "preset": "imagebind",
        "train_config": {"epochs": 16, "tower": {"checkpoint": "/models/vit-h-14.safetensors"}}, "workers": 8,
        "gpu": true, "engine": "ray"}'

The dataset is the conf's version, else the triggering event's, else what DATA_ROOT/current points at; the
run reads DATA_ROOT/versions/<id>, which never changes, whatever is published meanwhile. Outputs go to
RUN_ROOT/runs/<dataset version>_<config hash>/, so a retry resumes from the run's checkpoints; the report
(eval tables + summary.json) lands in its report/ folder and RUN_ROOT/current is switched to the run.
With the Ray Connection set (engine ray), every step is a Ray Job on the cluster.

**resolve** reads the settings (params > Airflow Variables > defaults, orchestration/settings.py) and picks
the dataset version, once per run; every later task, retries included, takes both from its XCom. So a
Variable edited, or a version published, while a run is in flight changes the next run, not this one.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from orchestration.assets import DATASET
from orchestration.settings import TRAIN_PARAMS, AirflowSource, TrainSettings, airflow_params, resolve_train_settings

log = logging.getLogger(__name__)


def _settings(resolved: dict) -> TrainSettings:
    """The settings resolve read for this run (only the Ray token is read again, from its Connection)."""
    return TrainSettings.from_dict(resolved["settings"], AirflowSource())


@dag(
    dag_id="bindset_train",
    schedule=[DATASET],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # training resumes from its latest checkpoint, so a retry after a lost worker costs little
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params=airflow_params(TRAIN_PARAMS),
    tags=["bindset"],
    doc_md=__doc__,
)
def bindset_train():
    @task
    def resolve(params=None, triggering_asset_events=None) -> dict:
        from orchestration.train_steps import latest_event_extra, resolve_dataset

        s = resolve_train_settings(params or {}, AirflowSource())  # the run's one reading of the Variables
        extra = latest_event_extra(triggering_asset_events.get(DATASET, [])) if triggering_asset_events else None
        dataset = resolve_dataset(s, extra)
        log.info("settings: %s", s.to_dict())
        log.info("training on dataset %s (%s) at %s", dataset.version_id, dataset.source, dataset.path)
        return {"settings": s.to_dict(), "dataset": dataset.to_dict()}

    @task
    def train(resolved: dict, ti=None, run_id=None) -> dict:
        from orchestration.train_steps import DatasetRef, run_train

        dataset = DatasetRef.from_dict(resolved["dataset"])
        return run_train(_settings(resolved), dataset, run_id or "manual", ti.try_number if ti else 1).to_dict()

    @task
    def embed(resolved: dict, trained: dict, ti=None, run_id=None) -> dict:
        from orchestration.train_steps import TrainOutcome, run_embed

        return run_embed(_settings(resolved), TrainOutcome.from_dict(trained), run_id or "manual",
                         ti.try_number if ti else 1)  # fmt: skip

    @task
    def evaluate(resolved: dict, trained: dict, embedded: dict, ti=None, run_id=None) -> dict:
        from orchestration.train_steps import TrainOutcome, run_eval

        return run_eval(_settings(resolved), TrainOutcome.from_dict(trained), embedded["emb"], run_id or "manual",
                        ti.try_number if ti else 1)  # fmt: skip

    @task
    def publish_report(resolved: dict, trained: dict, embedded: dict, evaluated: dict, dag_run=None) -> dict:
        from orchestration.train_steps import TrainOutcome, publish_run_report

        airflow = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id} if dag_run else {}
        return publish_run_report(_settings(resolved), TrainOutcome.from_dict(trained), embedded, evaluated, airflow)

    resolved = resolve()
    trained = train(resolved)
    embedded = embed(resolved, trained)
    evaluated = evaluate(resolved, trained, embedded)
    publish_report(resolved, trained, embedded, evaluated)


bindset_train()
