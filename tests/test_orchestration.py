"""Orchestration: publishing and settings as plain Python, Ray Job specs through bindset's own CLI parser,
and both DAGs on the real Airflow 3 (metadata DB in a temporary AIRFLOW_HOME, `dag.test()`) over tiny
synthetic captures.

Airflow reads its configuration when first imported, so nothing here imports it at module level: the
`airflow` fixture sets AIRFLOW_HOME and friends, then imports it and creates the database.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pendulum
import pytest

from bindset.synth.generate import SynthConfig, synth
from orchestration.publish import (
    CURRENT,
    PUBLISH_LOG,
    VERSIONS,
    PublishRefused,
    publish_version,
    read_pointer,
    switch_pointer,
    version_id,
    version_path,
)
from orchestration.settings import (
    BuildSettings,
    ConnectionInfo,
    DictSource,
    RaySettings,
    TrainSettings,
    resolve_build_settings,
    resolve_train_settings,
)
from transforms.config import BuildConfig

DAGS = Path(__file__).resolve().parents[1] / "orchestration" / "dags"
SYNTH = dict(seconds=6.0, width=160, height=120)
BUILD_DAG, TRAIN_DAG = "bindset_dataset_build", "bindset_train"
BUILD_TASKS = ("find_changes", "build", "validate", "report", "publish", "announce")
TRAIN_TASKS = ("resolve", "train", "embed", "evaluate", "publish_report")


# ------------------------------------------------------------------------------------- publish.py


def _fake_build(folder: Path, index: bytes = b"index-1", published: bool = True) -> Path:
    """A committed build folder as publish.py sees it: its content files, one shard, a manifest, quality/."""
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "quality").mkdir(exist_ok=True)
    for name, data in (("index.parquet", index), ("rejects.parquet", b"rejects"), ("shards/sizes.json", b"{}"),
                       ("shards/train-000000.tar", b"tar-1"), ("quality/report.html", b"<html>")):  # fmt: skip
        tmp = folder / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)  # as commit.py does: a new file renamed over the old name
    validation = {"status": "passed" if published else "failed", "published": published,
                  "failed_expectations": [] if published else [{"suite": "build", "expectation": "x"}]}  # fmt: skip
    manifest = {"version": "b1", "counts": {"samples": 3}, "validation": validation}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_publish_links_shards_switches_current_and_is_idempotent(tmp_path):
    root, build = tmp_path / "root", _fake_build(tmp_path / "root" / "build")
    first = publish_version(root, build)
    v1 = first.path
    assert first.created and first.switched and first.previous is None and first.version_id == version_id(build)
    assert os.readlink(root / CURRENT) == f"{VERSIONS}/{first.version_id}"  # relative: the root may move
    assert os.path.samefile(v1 / "shards" / "train-000000.tar", build / "shards" / "train-000000.tar")
    assert (v1 / "quality" / "report.html").read_bytes() == b"<html>"
    assert json.loads((v1 / "VERSION.json").read_text())["version_id"] == first.version_id

    again = publish_version(root, build)  # the same content: nothing is written, the pointer stays
    assert (again.version_id, again.created, again.switched) == (first.version_id, False, False)
    assert len((root / PUBLISH_LOG).read_text().splitlines()) == 1

    _fake_build(build, index=b"index-2")  # a rebuild replaces files under the same names
    (build / "shards" / "train-000000.tar").unlink()
    (build / "shards" / "train-000000.tar").write_bytes(b"tar-2")
    second = publish_version(root, build)
    assert second.switched and second.previous == first.version_id != second.version_id
    assert read_pointer(root / CURRENT) == second.version_id
    assert (v1 / "shards" / "train-000000.tar").read_bytes() == b"tar-1"  # the old version kept its bytes
    assert (v1 / "index.parquet").read_bytes() == b"index-1"
    log = [json.loads(x) for x in (root / PUBLISH_LOG).read_text().splitlines()]
    assert [(e["version_id"], e["previous"]) for e in log] == [(first.version_id, None),
                                                                (second.version_id, first.version_id)]  # fmt: skip
    assert version_path(root, first.version_id) == v1.resolve()
    with pytest.raises(FileNotFoundError, match="ds-0000000000000000 is not published.*published: \\['ds-"):
        version_path(root, "ds-0000000000000000")


def test_publish_refuses_a_build_that_failed_validation(tmp_path):
    root, build = tmp_path / "root", _fake_build(tmp_path / "root" / "build", published=False)
    with pytest.raises(PublishRefused, match="validation failed.*build:x"):
        publish_version(root, build)
    assert not (root / VERSIONS).exists() and not (root / CURRENT).is_symlink()


def test_switch_pointer_replaces_the_link_and_refuses_a_real_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    switch_pointer(tmp_path / "cur", "a")
    switch_pointer(tmp_path / "cur", "b")
    assert (
        read_pointer(tmp_path / "cur") == "b" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    )
    with pytest.raises(FileNotFoundError, match="pointer target does not exist"):
        switch_pointer(tmp_path / "cur", "missing")
    (tmp_path / "real").mkdir()
    with pytest.raises(ValueError, match="is not a symlink"):
        switch_pointer(tmp_path / "real", "a")


# ------------------------------------------------------------------------------------ settings.py


def test_settings_come_from_params_then_variables_then_defaults(tmp_path):
    source = DictSource({"bindset_landing_path": str(tmp_path / "raw"), "bindset_data_root": str(tmp_path / "v"),
                         "bindset_beam_pipeline_args": "--runner=FlinkRunner --flink_master=host:8081",
                         "bindset_build_config": '{"stride_s": 1.0}'})  # fmt: skip
    s = resolve_build_settings({"data_root": str(tmp_path / "p"), "quality_thresholds": {"mostly": 0.9}}, source)
    assert (s.landing_path, s.data_root, s.build_dir) == (tmp_path / "raw", tmp_path / "p", tmp_path / "p" / "build")
    assert s.engine == "beam" and s.ray is None and not s.ray_jobs
    assert s.beam_pipeline_args == ("--runner=FlinkRunner", "--flink_master=host:8081")
    assert s.build_config.stride_s == 1.0 and s.thresholds.mostly == 0.9
    assert s.origin["data_root"] == "param" and s.origin["landing_path"] == "Variable bindset_landing_path"
    assert s.origin["engine"] == "default"

    with pytest.raises(ValueError, match="param 'landing_path' or set the Airflow Variable 'bindset_landing_path'"):
        resolve_build_settings({}, DictSource())
    bad = DictSource({**source.variables, "bindset_build_config": "{stride: 1}"})
    with pytest.raises(ValueError, match="Variable bindset_build_config: cannot read"):
        resolve_build_settings({}, bad)
    with pytest.raises(ValueError, match="unknown build config field\\(s\\): strid_s"):
        resolve_build_settings({"build_config": {"strid_s": 1}}, source)
    with pytest.raises(ValueError, match="must not be inside the landing path"):
        resolve_build_settings({"data_root": str(tmp_path / "raw" / "out")}, source)


def test_a_ray_connection_sends_builds_and_training_to_ray_jobs(tmp_path):
    conn = ConnectionInfo("bindset_ray", "http", "ray-head", None, None, {"runtime_env": {"env_vars": {"A": "1"}}})
    source = DictSource({"bindset_landing_path": str(tmp_path / "raw"), "bindset_data_root": str(tmp_path / "d"),
                         "bindset_run_root": str(tmp_path / "r")}, {"bindset_ray": conn})  # fmt: skip
    b = resolve_build_settings({}, source)
    assert b.ray_jobs and b.ray.address == "http://ray-head:8265" and b.ray.runtime_env == {"env_vars": {"A": "1"}}
    assert resolve_build_settings({"engine": "beam"}, source).ray_jobs is False  # an explicit engine wins
    assert resolve_build_settings({"ray_conn_id": "other"}, source).engine == "beam"  # no such Connection
    t = resolve_train_settings({"train_config": {"max_steps": 5, "data": {"loader_workers": 0}}}, source)
    assert t.ray_jobs and t.preset == "tiny" and t.train_config.max_steps == 5
    assert t.train_config.data.loader_workers == 0 and t.train_config.data.cache_image_embeddings  # merged
    forms = [("https", "h", 1234, None, {}), ("http", "h", None, "https", {}), (None, "http://h", 8265, None, {}),
             (None, "x", None, None, {"address": "http://y:1"})]  # fmt: skip
    urls = [RaySettings.from_connection(ConnectionInfo("c", t, h, p, s, e)).address for t, h, p, s, e in forms]
    assert urls == ["https://h:1234", "https://h:8265", "http://h:8265", "http://y:1"]
    secret = RaySettings.from_connection(ConnectionInfo("c", "http", "h", password="s3cret"))
    assert secret.headers() == {"Authorization": "Bearer s3cret"} and "s3cret" not in repr(secret)
    assert RaySettings.from_connection(conn).headers() is None  # a cluster without token authentication
    with pytest.raises(ValueError, match="epoch: unknown key"):
        resolve_train_settings({"train_config": {"epoch": 1}}, source)


def test_settings_resolved_once_come_back_from_json_whatever_the_variables_say_now(tmp_path):
    """What the first task of a run hands on (XCom: JSON) re-creates the same typed settings in later tasks,
    though the Variables changed meanwhile; the Ray token travels by Connection id, never in the JSON."""
    conn = ConnectionInfo("bindset_ray", "http", "ray-head", None, None, {"runtime_env": {"pip": ["x"]}}, "tok-1")
    variables = {"bindset_landing_path": str(tmp_path / "raw"), "bindset_data_root": str(tmp_path / "d1"),
                 "bindset_run_root": str(tmp_path / "r1"), "bindset_build_config": '{"stride_s": 1.0}',
                 "bindset_quality_thresholds": '{"mostly": 0.9}', "bindset_train_config": '{"max_steps": 7}',
                 "bindset_beam_pipeline_args": '["--direct_num_workers=2"]'}  # fmt: skip
    before = DictSource(variables, {"bindset_ray": conn})
    b = resolve_build_settings({"workers": 3}, before)
    t = resolve_train_settings({"gpu": True, "run_name": "r"}, before)
    sent_b, sent_t = json.dumps(b.to_dict()), json.dumps(t.to_dict())
    assert "tok-1" not in sent_b + sent_t  # the XCom is in the metadata DB and the UI

    edited = {**variables, "bindset_data_root": str(tmp_path / "d2"), "bindset_run_root": str(tmp_path / "r2"),
              "bindset_quality_thresholds": '{"mostly": 0.5}', "bindset_train_config": '{"max_steps": 8}'}  # fmt: skip
    after = DictSource(edited, {"bindset_ray": conn})
    assert resolve_build_settings({}, after).data_root == tmp_path / "d2"  # the edit is real...
    got_b = BuildSettings.from_dict(json.loads(sent_b), after)
    got_t = TrainSettings.from_dict(json.loads(sent_t), after)
    assert got_b == b and got_t == t  # ...and changes nothing in the run that resolved before it
    assert (got_b.data_root, got_b.build_config.stride_s, got_b.thresholds.mostly) == (tmp_path / "d1", 1.0, 0.9)
    assert (got_t.run_root, got_t.train_config.max_steps, got_t.workers) == (tmp_path / "r1", 7, 1)
    assert got_b.ray.headers() == {"Authorization": "Bearer tok-1"} and got_b.ray_jobs and got_b.workers == 3
    assert got_b.ray.runtime_env == {"pip": ["x"]} and got_b.origin["data_root"] == "Variable bindset_data_root"

    rotated = DictSource(edited, {"bindset_ray": replace(conn, password="tok-2")})  # a secret is read as it is now
    assert BuildSettings.from_dict(json.loads(sent_b), rotated).ray.token == "tok-2"
    with pytest.raises(ValueError, match="Connection 'bindset_ray' was resolved at the start of this run and no"):
        TrainSettings.from_dict(json.loads(sent_t), DictSource(edited))


def test_the_dataset_to_train_on_is_the_param_else_the_asset_event_else_current(tmp_path):
    from orchestration.train_steps import DatasetRef, resolve_dataset

    root = tmp_path / "root"
    first = publish_version(root, _fake_build(root / "build"))
    second = publish_version(root, _fake_build(root / "build", index=b"index-2"))
    source = DictSource({"bindset_data_root": str(root), "bindset_run_root": str(tmp_path / "runs")})
    s = resolve_train_settings({}, source)
    event = {"version_id": first.version_id, "path": str(first.path)}
    assert (
        resolve_dataset(s, None) == resolve_dataset(s, {}) == DatasetRef(second.version_id, str(second.path), "current")
    )
    assert resolve_dataset(s, event) == DatasetRef(first.version_id, str(first.path), "asset event")
    pinned = resolve_train_settings({"dataset_version": first.version_id}, source)
    assert resolve_dataset(pinned, {"version_id": second.version_id}).source == "param"
    with pytest.raises(FileNotFoundError, match="ds-x is not published"):
        resolve_dataset(resolve_train_settings({"dataset_version": "ds-x"}, source), None)
    with pytest.raises(FileNotFoundError, match="not a published version"):
        resolve_dataset(s, {"version_id": "ds-y", "path": str(tmp_path)})
    empty = resolve_train_settings({"data_root": str(tmp_path / "none")}, source)
    with pytest.raises(ValueError, match="no dataset version: pass the param dataset_version"):
        resolve_dataset(empty, None)


# ------------------------------------------------------------------------------------- ray_jobs.py


def test_ray_job_entrypoints_are_valid_bindset_commands(tmp_path):
    """No Ray Jobs server here (it needs ray[default]'s dashboard); each entrypoint is parsed back by
    bindset's own CLI parser, and the config it would build with must equal the resolved one."""
    from bindset.cli import build_config_from, build_parser
    from orchestration.ray_jobs import build_argv, embed_argv, eval_argv, job_spec, train_argv

    # every field travels, those without a short flag and the nested filters included
    cfg = BuildConfig(stride_s=1.5, jpeg_quality=90, val_fraction=0.3, layout="captures", clip_s=3.0,
                      depth_tolerance_s=0.01, filters={"audio_rms_dbfs_min": -50.0})  # fmt: skip
    argv = build_argv(tmp_path / "raw", tmp_path / "d" / "build", cfg)
    args, extra = build_parser().parse_known_args(argv[1:])
    assert extra == [] and (args.command, args.engine, args.ray_address, args.no_validate) == (
        "build",
        "ray",
        "auto",
        True,
    )
    assert build_config_from(args) == cfg
    for argv in (train_argv(tmp_path / "d", tmp_path / "r", tmp_path / "c.json", 4, True),
                 embed_argv(tmp_path / "d", tmp_path / "r", tmp_path / "e", False),
                 eval_argv(tmp_path / "e", "val", tmp_path / "o")):  # fmt: skip
        args, extra = build_parser().parse_known_args(argv[1:])
        assert extra == [] and args.command == argv[1]
    ray = RaySettings("http://h:8265", runtime_env={"pip": ["x"]})
    spec = job_spec("build", argv, ray, "scheduled__2026-01-01T00:00:00+00:00", 2)
    assert spec.submission_id == "bindset-build-scheduled__2026-01-01T00-00-00-00-00-2"
    assert spec.entrypoint.startswith("bindset eval ") and spec.runtime_env == {"pip": ["x"]}


class _JobsAPI:
    """A stand-in for the Ray Jobs REST server (which needs ray[default]); the test below checks that each
    method it offers exists on the real JobSubmissionClient with the same name."""

    def __init__(self, statuses, running=()):
        self.statuses, self.running, self.submitted, self.stopped = list(statuses), list(running), [], []

    def list_jobs(self):
        from types import SimpleNamespace

        return [SimpleNamespace(submission_id=sid, status="RUNNING") for sid in self.running]

    def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata):
        self.submitted.append((entrypoint, submission_id))
        return submission_id

    def get_job_status(self, job_id):
        return self.statuses.pop(0)

    def get_job_logs(self, job_id):
        return "\n".join(f"line {i}" for i in range(100))

    def get_job_info(self, job_id):
        from types import SimpleNamespace

        return SimpleNamespace(message="Job entrypoint command failed with exit code 1")

    def stop_job(self, job_id):
        self.stopped.append(job_id)


def test_ray_job_runner_polls_reattaches_and_reports_failures():
    from ray.job_submission import JobSubmissionClient

    from orchestration.ray_jobs import job_spec, run_ray_job

    for name in ("list_jobs", "submit_job", "get_job_status", "get_job_logs", "get_job_info", "stop_job"):
        assert callable(getattr(JobSubmissionClient, name)), name
    ray = RaySettings("http://h:8265", poll_s=0)
    spec = job_spec("build", ["bindset", "build", "a", "b"], ray, "run", 2)
    api = _JobsAPI(["PENDING", "RUNNING", "SUCCEEDED"])
    assert run_ray_job(ray, spec, client=api).endswith("line 99")
    assert api.submitted == [("bindset build a b", "bindset-build-run-2")]

    api = _JobsAPI(["RUNNING", "SUCCEEDED"], running=["bindset-build-run-1"])  # try 1's job outlived its task
    run_ray_job(ray, spec, client=api)
    assert api.submitted == []  # waited for it rather than racing it on the same folder

    api = _JobsAPI(["RUNNING", "FAILED"])
    with pytest.raises(RuntimeError, match="ended FAILED.*exit code 1\n--- last 60 log lines ---\nline 40"):
        run_ray_job(ray, spec, client=api)

    def killed(_):
        raise KeyboardInterrupt  # what a task timeout or a SIGTERM looks like from inside the wait

    api = _JobsAPI(["RUNNING"] * 3)
    with pytest.raises(KeyboardInterrupt):
        run_ray_job(ray, spec, client=api, sleep=killed)
    assert api.stopped == ["bindset-build-run-2"]


# ------------------------------------------------------------------------------------------ Airflow


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """A real Airflow 3: its own AIRFLOW_HOME, a SQLite metadata DB, the repository's DAG folder."""
    home = tmp_path_factory.mktemp("airflow_home")
    mp = pytest.MonkeyPatch()
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        # unpaused, so that an Asset event queues a bindset_train run, as the scheduler would see it
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    yield DagBag(dag_folder=str(DAGS))
    mp.undo()


def _run(bag, dag_id: str, day: int, conf: dict):
    from orchestration.settings import BUILD_PARAMS, TRAIN_PARAMS

    # dag.test() runs every task in this process on the one DAG object, and Airflow's ParamsDict writes a
    # run's conf values into that DAG's Param objects; naming every param keeps earlier runs' values out
    # (a deployed task parses the DAG afresh in its own process and never sees this)
    conf = {**dict.fromkeys(BUILD_PARAMS if dag_id == BUILD_DAG else TRAIN_PARAMS), **conf}
    dr = bag.dags[dag_id].test(logical_date=pendulum.datetime(2026, 1, day, tz="UTC"), run_conf=conf)
    return dr.state, {ti.task_id: ti.state for ti in dr.get_task_instances()}, dr


def _asset_events() -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        q = select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        return [dict(e.extra) for e in s.scalars(q.where(AssetModel.name == "bindset_dataset").order_by(AssetEvent.id))]


def _queued_train_runs(clear: bool = False) -> int:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete, func, select

    with create_session() as s:
        n = s.scalar(
            select(func.count()).select_from(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == TRAIN_DAG)
        )
        if clear:
            s.execute(delete(AssetDagRunQueue))
    return n


def _xcom(dr, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        q = select(XComModel).where(XComModel.dag_id == dr.dag_id, XComModel.run_id == dr.run_id,
                                    XComModel.task_id == task_id, XComModel.key == "return_value")  # fmt: skip
        row = s.scalars(q).one()
        return XComModel.deserialize_value(row)


def _builds(data_root: Path) -> list[dict]:
    return [json.loads(x) for x in (data_root / "build" / "_work" / "builds.jsonl").read_text().splitlines()]


def test_dag_folder_imports_cleanly_with_the_intended_schedules(airflow):
    from airflow.sdk.definitions.asset import AssetAll

    from orchestration.assets import DATASET

    assert airflow.import_errors == {}
    assert sorted(airflow.dags) == [BUILD_DAG, TRAIN_DAG]
    build_dag, train_dag = airflow.dags[BUILD_DAG], airflow.dags[TRAIN_DAG]
    assert build_dag.timetable.expression == "0 0 * * *" and build_dag.max_active_runs == 1
    assert [t.task_id for t in build_dag.tasks] == list(BUILD_TASKS)
    assert build_dag.get_task("announce").outlets == [DATASET]
    assert train_dag.timetable.asset_condition == AssetAll(DATASET)
    assert [t.task_id for t in train_dag.tasks] == list(TRAIN_TASKS)
    assert all(t.retries == 2 for t in train_dag.tasks)


def test_the_train_dag_reads_the_newest_triggering_asset_event(airflow):
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from orchestration.assets import DATASET
    from orchestration.train_steps import latest_event_extra

    def event(day: int, vid: str):
        return AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=DATASET.name, uri=DATASET.uri, extra={}),
            extra={"version_id": vid, "path": f"/d/versions/{vid}"}, source_task_id="announce",
            source_dag_id=BUILD_DAG, source_run_id="r", source_map_index=-1, source_aliases=[],
            timestamp=pendulum.datetime(2026, 1, day, tz="UTC"))  # fmt: skip

    events = TriggeringAssetEventsAccessor.build([event(3, "ds-b"), event(1, "ds-a")])
    assert latest_event_extra(events.get(DATASET, [])) == {"version_id": "ds-b", "path": "/d/versions/ds-b"}
    assert latest_event_extra(TriggeringAssetEventsAccessor.build([]).get(DATASET, [])) is None


# ------------------------------------------------------------------------------- the DAGs, end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    synth(root / "landing", SynthConfig(sessions=2, seed=2, **SYNTH))  # s002_000 (train), s002_001 (val)
    synth(root / "extra", SynthConfig(sessions=1, seed=3, **SYNTH))  # s003_000, landed later
    return root


@pytest.fixture(scope="module")
def first_build(airflow, world):
    """Run 1 of the build DAG on Beam; its paths come from Airflow Variables (here: the environment)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_VAR_BINDSET_LANDING_PATH", str(world / "landing"))
    mp.setenv("AIRFLOW_VAR_BINDSET_DATA_ROOT", str(world / "data"))
    conf = {"engine": "beam", "beam_pipeline_args": ["--direct_num_workers=2"]}
    state, tis, dr = _run(airflow, BUILD_DAG, 1, conf)
    yield {"state": state, "tis": tis, "dr": dr, "conf": conf, "data_root": world / "data"}
    mp.undo()


@pytest.mark.slow
def test_build_dag_publishes_a_version_then_a_rerun_changes_nothing(airflow, first_build):
    root, dr = first_build["data_root"], first_build["dr"]
    assert first_build["state"] == "success", first_build["tis"]
    assert first_build["tis"] == dict.fromkeys(BUILD_TASKS, "success")
    assert _xcom(dr, "find_changes")["changes"]["new"] == ["s002_000", "s002_001"]
    assert [(b["engine"], b["processed"]) for b in _builds(root)] == [("beam", 2)]

    vid = read_pointer(root / CURRENT)
    version = root / VERSIONS / vid
    assert vid == version_id(root / "build") == _xcom(dr, "publish")["version_id"]
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["validation"]["published"] is True and manifest["counts"]["samples"] == 6
    for tar in (root / "build" / "shards").glob("*.tar"):
        assert os.path.samefile(tar, version / "shards" / tar.name)  # linked, not copied
    assert (version / "quality" / "report.html").stat().st_size > 10_000
    assert [(e["version_id"], e["path"], e["previous"]) for e in _asset_events()] == [(vid, str(version), None)]
    assert _queued_train_runs(clear=True) == 1  # the scheduler would now start bindset_train

    # the same logical date again, nothing new in the landing path: everything after find_changes is skipped
    state, tis, _ = _run(airflow, BUILD_DAG, 1, first_build["conf"])
    assert state == "success" and tis == {"find_changes": "success", **dict.fromkeys(BUILD_TASKS[1:], "skipped")}
    assert read_pointer(root / CURRENT) == vid and [p.name for p in (root / VERSIONS).iterdir()] == [vid]
    assert len(_asset_events()) == 1 and _queued_train_runs() == 0
    assert len(_builds(root)) == 1  # not even a build with nothing to do


@pytest.mark.slow
def test_a_failed_gate_publishes_nothing_then_the_next_run_publishes_the_new_session(
    airflow, world, first_build, tmp_path, monkeypatch
):
    # a copy of the landing path and DATA_ROOT (copy2 keeps mtimes, so the unit cache still holds)
    landing, root = tmp_path / "landing", tmp_path / "data"
    shutil.copytree(world / "landing", landing)
    shutil.copytree(first_build["data_root"], root, symlinks=True)
    shutil.copytree(world / "extra" / "s003_000", landing / "s003_000")
    v1 = read_pointer(root / CURRENT)
    events = len(_asset_events())
    monkeypatch.setenv("AIRFLOW_VAR_BINDSET_BUILD_ENGINE", "local")
    conf = {"landing_path": str(landing), "data_root": str(root)}  # params win over the Variables

    state, tis, dr = _run(airflow, BUILD_DAG, 2, {**conf, "quality_thresholds": {"min_samples": 10_000}})
    assert state == "failed"
    assert tis == {"find_changes": "success", "build": "success", "validate": "failed", "report": "success",
                   "publish": "upstream_failed", "announce": "upstream_failed"}  # fmt: skip
    assert _xcom(dr, "find_changes")["changes"]["new"] == ["s003_000"]
    assert [(b["engine"], b["processed"]) for b in _builds(root)][-1] == ("local", 1)
    build_manifest = json.loads((root / "build" / "manifest.json").read_text())
    assert build_manifest["validation"]["status"] == "failed" and not build_manifest["validation"]["published"]
    assert (root / "build" / "quality" / "report.html").exists()  # the report of the failure, for a person
    assert read_pointer(root / CURRENT) == v1 and [p.name for p in (root / VERSIONS).iterdir()] == [v1]
    assert len(_asset_events()) == events

    state, tis, dr = _run(airflow, BUILD_DAG, 3, conf)  # the default gate
    assert state == "success" and tis == dict.fromkeys(BUILD_TASKS, "success")
    assert _builds(root)[-1]["processed"] == 0  # the failed run's units are reused: only the gate ran again
    v2 = read_pointer(root / CURRENT)
    assert v2 != v1 and sorted(p.name for p in (root / VERSIONS).iterdir()) == sorted([v1, v2])
    assert json.loads((root / VERSIONS / v2 / "manifest.json").read_text())["counts"]["samples"] == 9
    assert json.loads((root / VERSIONS / v1 / "manifest.json").read_text())["counts"]["samples"] == 6
    new = _asset_events()[events:]
    assert [(e["version_id"], e["previous"]) for e in new] == [(v2, v1)]

    # a touched file: the fingerprint changes, so the unit is rebuilt, but to the same bytes. The content id
    # is unchanged, publish is skipped, and a skipped outlet task records no Asset event.
    video = landing / "s003_000" / "video.mp4"
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))
    state, tis, dr = _run(airflow, BUILD_DAG, 4, conf)
    assert _xcom(dr, "find_changes")["changes"]["changed"] == ["s003_000"] and _builds(root)[-1]["processed"] == 1
    assert state == "success" and tis == {**dict.fromkeys(BUILD_TASKS[:4], "success"),
                                          "publish": "skipped", "announce": "skipped"}  # fmt: skip
    assert read_pointer(root / CURRENT) == v2 and len(_asset_events()) == events + 1


@pytest.mark.slow
def test_train_dag_trains_embeds_evaluates_and_publishes_the_run(airflow, first_build, tmp_path):
    root = first_build["data_root"]
    vid = read_pointer(root / CURRENT)
    runs = tmp_path / "runs"
    conf = {"dataset_version": vid, "data_root": str(root), "run_root": str(runs), "engine": "local",
            "train_config": {"epochs": 2, "max_steps": 2, "batch_size": 4, "data": {"loader_workers": 0}}}  # fmt: skip
    state, tis, dr = _run(airflow, TRAIN_DAG, 4, conf)
    assert state == "success" and tis == dict.fromkeys(TRAIN_TASKS, "success")

    trained = _xcom(dr, "train")
    assert trained["dataset"] == {"version_id": vid, "path": str(root / VERSIONS / vid), "source": "param"}
    assert trained["step"] == 2 and trained["run_name"].startswith(vid + "_")
    run = runs / "runs" / trained["run_name"]
    assert read_pointer(runs / CURRENT) == trained["run_name"]
    assert (run / "model" / "model.safetensors").exists() and (run / "emb" / "audio" / "part-000000.parquet").exists()
    assert "Image ↔ modality retrieval" in (run / "eval" / "eval.md").read_text()
    report = run / "report"
    assert (report / "eval.md").read_text() == (run / "eval" / "eval.md").read_text()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["dataset"]["version_id"] == vid and summary["train"]["step"] == 2
    assert summary["airflow"] == {"dag_id": TRAIN_DAG, "run_id": dr.run_id}
    assert summary["embeddings"]["counts"]["image"] == 6


def _variable_editor(task_id: str, variable: str, value: str, monkeypatch):
    """An Airflow listener (the hook plugins use) that edits a Variable the moment one task of a run has
    succeeded: between two tasks of the same run, as a person editing it in the UI would."""
    from airflow.listeners import hookimpl

    class EditVariable:
        seen: list[str] = []

        @hookimpl
        def on_task_instance_success(self, previous_state, task_instance):
            self.seen.append(task_instance.task_id)
            if task_instance.task_id == task_id:  # an environment Variable: the first place Airflow looks
                monkeypatch.setenv(f"AIRFLOW_VAR_{variable.upper()}", value)

    return EditVariable()


@pytest.mark.slow
def test_a_variable_edited_mid_run_changes_nothing_in_that_run(airflow, world, tmp_path, monkeypatch):
    from airflow.sdk import Variable
    from airflow.sdk.listener import get_listener_manager

    first, edited = tmp_path / "first", tmp_path / "edited"
    monkeypatch.setenv("AIRFLOW_VAR_BINDSET_DATA_ROOT", str(first))
    listener = _variable_editor("find_changes", "bindset_data_root", str(edited), monkeypatch)
    manager = get_listener_manager()
    manager.add_listener(listener)
    try:
        events = len(_asset_events())
        conf = {"landing_path": str(world / "landing"), "engine": "local"}
        state, tis, dr = _run(airflow, BUILD_DAG, 6, conf)
    finally:
        manager.pm.unregister(listener)
        _queued_train_runs(clear=True)
    assert listener.seen == list(BUILD_TASKS)  # it ran inside the run, after every task
    assert Variable.get("bindset_data_root") == str(edited)  # the edit is real and visible now
    assert state == "success" and tis == dict.fromkeys(BUILD_TASKS, "success")
    # every task after find_changes used the data_root find_changes resolved, not the edited Variable
    assert _xcom(dr, "find_changes")["settings"]["data_root"] == str(first)
    assert _xcom(dr, "build")["build_dir"] == str(first / "build") and not edited.exists()
    vid = read_pointer(first / CURRENT)
    assert _xcom(dr, "publish")["version_id"] == vid and (first / VERSIONS / vid / "manifest.json").is_file()
    assert [(e["version_id"], e["path"]) for e in _asset_events()[events:]] == [(vid, str(first / VERSIONS / vid))]


# ------------------------------------------------------------------------------ a real Ray Jobs server


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real single-node Ray cluster (`ray start --head`, dashboard = the Jobs API) with token authentication,
    as Ray 2.60 clusters have by default; bindset is installed on it (its PATH has this venv's scripts)."""
    import secrets
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from ray.job_submission import JobSubmissionClient

    token, venv_bin = secrets.token_hex(32), Path(sys.executable).parent
    temp = tempfile.mkdtemp(prefix="bsray", dir="/tmp")  # Ray's AF_UNIX socket paths must stay short
    dashboard = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    argv = [str(venv_bin / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={_free_port()}",
            f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
            f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
            "--include-dashboard=true", "--disable-usage-stats"]  # fmt: skip
    log = tmp_path_factory.mktemp("ray_cluster") / "ray.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address, deadline = f"http://127.0.0.1:{dashboard}", time.monotonic() + 120
    try:
        while True:
            try:
                JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not come up:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield {"host": "127.0.0.1", "port": dashboard, "token": token, "address": address}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the head and every process it started, nothing else
        proc.wait(60)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_build_dag_on_a_ray_cluster_through_the_jobs_api(airflow, world, first_build, ray_cluster, tmp_path,
                                                         monkeypatch):  # fmt: skip
    from orchestration.ray_jobs import job_spec, run_ray_job

    conn = {"conn_type": "http", "host": ray_cluster["host"], "port": ray_cluster["port"],
            "password": ray_cluster["token"], "extra": {"poll_seconds": 1}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_BINDSET_RAY", json.dumps(conn))
    root = tmp_path / "data"
    state, tis, dr = _run(airflow, BUILD_DAG, 5, {"landing_path": str(world / "landing"), "data_root": str(root)})
    assert state == "success" and tis == dict.fromkeys(BUILD_TASKS, "success")
    built = _xcom(dr, "build")
    assert (built["engine"], built["processed"], built["samples"]) == ("ray (job)", 2, 6)
    assert [(b["engine"], b["processed"]) for b in _builds(root)] == [("ray", 2)]  # written by the job's driver
    # the same landing path built by the Beam DirectRunner in this process and by Ray on the cluster: the same
    # bytes, so the same content id
    assert read_pointer(root / CURRENT) == read_pointer(first_build["data_root"] / CURRENT)

    # without the cluster's token the Jobs API refuses, and the task's error says so
    ray = RaySettings(ray_cluster["address"], poll_s=0)
    with pytest.raises(Exception, match="(?i)authentication"):
        run_ray_job(ray, job_spec("eval", ["bindset", "eval", "x"], ray, "no-token", 1))
