"""Typed settings of the two DAGs, resolved once per run: DAG params > Airflow Variables > defaults.

The first task of a run resolves them and hands them on as XCom (``to_dict``, a JSON object); every later
task, retries included, re-creates the typed settings from that (``from_dict``), so a Variable edited while
a run is in flight changes the next run, never the paths of the rest of this one. Secrets stay out of XCom
(it is stored in the metadata database and shown in the UI): the Ray token is read from the Connection
again, by the id the first task resolved.

Nothing here imports Airflow at module level: the resolution takes a ``SettingsSource`` (Variables and
Connections by name), so it runs the same against Airflow (``AirflowSource``) and against a dict in a test.
Paths have no defaults on purpose: a deployment names its landing path and roots, or the run fails saying
which param or Variable to set.

Variables (all optional except where a path is needed; JSON where the value is structured):

    bindset_landing_path          RAW captures to build from
    bindset_data_root             DATA_ROOT: build/, versions/<id>/, current
    bindset_run_root              RUN_ROOT: runs/<name>/, current
    bindset_build_engine          beam | ray | local   (default: ray when the Ray Connection exists, else beam)
    bindset_beam_pipeline_args    JSON list (or one shell-quoted string) of Beam runner flags
    bindset_build_config          JSON object of BuildConfig fields
    bindset_quality_thresholds    JSON object of QualityThresholds fields
    bindset_train_engine          local | ray          (default: ray when the Ray Connection exists, else local)
    bindset_train_preset          tiny | imagebind     (default: tiny, as `bindset train`)
    bindset_train_config          JSON object of TrainConfig fields, merged over the preset
    bindset_train_workers         training workers (Ray Train)
    bindset_ray_conn_id           the Ray Connection's id (default: bindset_ray)

The Connection (default id ``bindset_ray``) is the Ray cluster's dashboard / Jobs API address, e.g.
``AIRFLOW_CONN_BINDSET_RAY='http://ray-head:8265'``; its extra may hold ``runtime_env`` (a Ray runtime
environment for the jobs), ``address`` (a full URL that overrides host and port) and ``poll_seconds``; its
password is the cluster's authentication token (`ray get-auth-token`), which Ray >= 2.52 requires by default.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestration.publish import BUILD
from pipelines import storage
from pipelines.storage import Location
from training.config import PRESETS, TrainConfig
from transforms.config import BuildConfig

if TYPE_CHECKING:  # Great Expectations takes seconds to import: not at DAG parse time
    from schemas.expectations import QualityThresholds

DEFAULT_RAY_CONN_ID = "bindset_ray"
BUILD_ENGINES = ("beam", "ray", "local")
TRAIN_ENGINES = ("local", "ray")
RAY_JOBS_PORT = 8265  # the Ray dashboard, which serves the Jobs API


@dataclass(frozen=True)
class ConnectionInfo:
    """The fields of an Airflow Connection that bindset reads."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)  # a secret: never in a repr or a log line


class SettingsSource(Protocol):
    def variable(self, key: str) -> str | None: ...

    def connection(self, conn_id: str) -> ConnectionInfo | None: ...


@dataclass(frozen=True)
class DictSource:
    """Variables and Connections from plain dicts (tests, scripts)."""

    variables: Mapping[str, str] = field(default_factory=dict)
    connections: Mapping[str, ConnectionInfo] = field(default_factory=dict)

    def variable(self, key: str) -> str | None:
        return self.variables.get(key)

    def connection(self, conn_id: str) -> ConnectionInfo | None:
        return self.connections.get(conn_id)


class AirflowSource:
    """Airflow Variables and Connections (metadata DB, environment or secrets backend), read at run time."""

    def variable(self, key: str) -> str | None:
        from airflow.sdk import Variable

        value = Variable.get(key, default=None)
        return None if value is None else str(value)

    def connection(self, conn_id: str) -> ConnectionInfo | None:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = Connection.get(conn_id)
        except AirflowNotFoundException:
            return None
        extra = dict(conn.extra_dejson)
        return ConnectionInfo(conn_id, conn.conn_type, conn.host, conn.port, conn.schema, extra, conn.password)


# ------------------------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class RaySettings:
    """Where Ray Jobs go: the Jobs API address (the dashboard URL), its token and the jobs' runtime environment."""

    address: str
    conn_id: str = DEFAULT_RAY_CONN_ID
    runtime_env: Mapping[str, Any] | None = None
    poll_s: float = 10.0
    # Ray >= 2.52 clusters enable token authentication by default; the token is the Connection's password
    token: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {self.token}"} if self.token else None

    def to_dict(self) -> dict:
        """Everything but the token (a secret must not land in XCom): ``from_dict`` reads it again."""
        return {
            "address": self.address,
            "conn_id": self.conn_id,
            "runtime_env": self.runtime_env,
            "poll_s": self.poll_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: SettingsSource) -> RaySettings:
        """``to_dict``'s settings, with the token from the Connection ``d["conn_id"]`` as it is now.

        Raises ValueError when that Connection no longer exists (it did when the run resolved its settings).
        """
        conn = source.connection(d["conn_id"])
        if conn is None:
            raise ValueError(f"Connection {d['conn_id']!r} was resolved at the start of this run and no longer exists")
        return cls(d["address"], d["conn_id"], d["runtime_env"], float(d["poll_s"]), conn.password or None)

    @classmethod
    def from_connection(cls, conn: ConnectionInfo) -> RaySettings:
        extra = dict(conn.extra or {})
        if extra.get("address"):
            address = str(extra["address"])
        else:
            if not conn.host:
                raise ValueError(f"Connection {conn.conn_id!r} has no host; give the Ray dashboard's host (port 8265)")
            host = conn.host
            if "://" in host:  # a URL pasted into the host field
                address = host if conn.port is None else f"{host.rstrip('/')}:{conn.port}"
            else:
                # `--conn-uri https://head:8265` arrives as conn_type "https"; a form may put it in schema
                scheme = next((x for x in (conn.schema, conn.conn_type) if x in ("http", "https")), "http")
                address = f"{scheme}://{host}:{conn.port or RAY_JOBS_PORT}"
        runtime_env = extra.get("runtime_env")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise ValueError(f"Connection {conn.conn_id!r}: extra.runtime_env must be a JSON object")
        return cls(address, conn.conn_id, runtime_env, float(extra.get("poll_seconds", 10.0)), conn.password or None)


# ------------------------------------------------------------------------------------------ resolving


class _Resolver:
    """Reads each setting from the params, else a Variable, else a default, and records which one won."""

    def __init__(self, params: Mapping[str, Any], source: SettingsSource):
        self.params, self.source = params, source
        self.origin: dict[str, str] = {}

    def get(self, name: str, variable: str | None, default: Any, parse: Callable[[str], Any] = str) -> Any:
        value = self.params.get(name)
        if value is not None:
            self.origin[name] = "param"
            return value
        if variable is not None:
            raw = self.source.variable(variable)
            if raw is not None and raw != "":
                self.origin[name] = f"Variable {variable}"
                try:
                    return parse(raw)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"Airflow Variable {variable}: cannot read {raw!r}: {exc}") from None
        self.origin[name] = "default"
        return default

    def path(self, name: str, variable: str) -> Path:
        value = self.get(name, variable, None)
        if value is None:
            raise ValueError(f"no {name}: pass the DAG param {name!r} or set the Airflow Variable {variable!r}")
        return Path(value).expanduser().resolve()

    def place(self, name: str, variable: str) -> Path | Location:
        """``path``, or a ``Location`` for an ``s3://``/``gs://`` URL (DATA_ROOT on an object store, issue 17)."""
        value = self.get(name, variable, None)
        if value is not None and storage.is_url(str(value)):
            return storage.location(str(value))
        return self.path(name, variable)

    def ray(self) -> RaySettings | None:
        conn_id = self.get("ray_conn_id", "bindset_ray_conn_id", DEFAULT_RAY_CONN_ID)
        conn = self.source.connection(conn_id)
        return None if conn is None else RaySettings.from_connection(conn)


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _arg_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise ValueError("expected a JSON list of strings")
        return value
    return shlex.split(text)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


@dataclass(frozen=True)
class BuildSettings:
    landing_path: Path
    data_root: Path | Location  # a Location on an object store (s3://, gs://)
    engine: str  # beam | ray | local
    beam_pipeline_args: tuple[str, ...]
    build_config: BuildConfig
    thresholds: QualityThresholds
    ray: RaySettings | None  # with engine ray: submit Ray Jobs there; None: a Ray started on the worker
    workers: int | None  # engine ray without a cluster: CPUs of the local Ray
    origin: Mapping[str, str] = field(default_factory=dict)  # where each setting came from

    @property
    def build_dir(self) -> Path | Location:
        return self.data_root / BUILD

    @property
    def ray_jobs(self) -> bool:
        return self.engine == "ray" and self.ray is not None

    def summary(self) -> dict:
        return {
            "landing_path": str(self.landing_path),
            "data_root": str(self.data_root),
            "engine": self.engine + (f" (Ray Jobs at {self.ray.address})" if self.ray_jobs else ""),
            "beam_pipeline_args": list(self.beam_pipeline_args),
            "build_config": self.build_config.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "origin": dict(self.origin),
        }

    def to_dict(self) -> dict:
        """JSON values of every setting (the Ray token excepted): what the first task hands on as XCom."""
        return {
            "landing_path": str(self.landing_path),
            "data_root": str(self.data_root),
            "engine": self.engine,
            "beam_pipeline_args": list(self.beam_pipeline_args),
            "build_config": self.build_config.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "ray": None if self.ray is None else self.ray.to_dict(),
            "workers": self.workers,
            "origin": dict(self.origin),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: SettingsSource) -> BuildSettings:
        """The settings ``to_dict`` gave, re-created without reading a Variable (``source``: the Ray token)."""
        from schemas.expectations import QualityThresholds

        return cls(
            landing_path=Path(d["landing_path"]),
            data_root=storage.location(d["data_root"]) if storage.is_url(d["data_root"]) else Path(d["data_root"]),
            engine=d["engine"],
            beam_pipeline_args=tuple(d["beam_pipeline_args"]),
            build_config=BuildConfig.from_dict(d["build_config"]),
            thresholds=QualityThresholds.from_dict(d["thresholds"]),
            ray=None if d["ray"] is None else RaySettings.from_dict(d["ray"], source),
            workers=d["workers"],
            origin=dict(d["origin"]),
        )


def resolve_build_settings(params: Mapping[str, Any], source: SettingsSource) -> BuildSettings:
    from schemas.expectations import QualityThresholds

    r = _Resolver(params, source)
    landing = r.path("landing_path", "bindset_landing_path")
    data_root = r.place("data_root", "bindset_data_root")
    if isinstance(data_root, Path) and (data_root == landing or landing in data_root.parents):
        raise ValueError(f"data_root {data_root} must not be inside the landing path {landing}")
    ray = r.ray()
    engine = _choice("engine", r.get("engine", "bindset_build_engine", "ray" if ray else "beam"), BUILD_ENGINES)
    args = r.get("beam_pipeline_args", "bindset_beam_pipeline_args", [], _arg_list)
    if isinstance(args, str):
        args = _arg_list(args)
    cfg = r.get("build_config", "bindset_build_config", {}, _json_object)
    thresholds = r.get("quality_thresholds", "bindset_quality_thresholds", {}, _json_object)
    workers = r.get("workers", None, None)
    return BuildSettings(
        landing_path=landing,
        data_root=data_root,
        engine=engine,
        beam_pipeline_args=tuple(args),
        build_config=_build_config(cfg),
        thresholds=QualityThresholds.from_dict(thresholds),
        ray=ray,
        workers=int(workers) if workers else None,
        origin=r.origin,
    )


def _build_config(values: Mapping[str, Any]) -> BuildConfig:
    unknown = sorted(set(values) - set(BuildConfig.model_fields))
    if unknown:  # BuildConfig.from_dict drops unknown names; a typo in a nightly's config must not
        raise ValueError(f"unknown build config field(s): {', '.join(unknown)}")
    return BuildConfig.from_dict(dict(values))


# ------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSettings:
    data_root: Path | Location  # a Location on an object store (s3://, gs://)
    run_root: Path | Location
    dataset_version: str | None  # None: the triggering Asset event's, else DATA_ROOT/current
    preset: str
    train_config: TrainConfig
    engine: str  # local | ray
    workers: int
    gpu: bool
    eval_split: str
    run_name: str | None  # None: <dataset version>_<config hash>, so a retry resumes the same run
    ray: RaySettings | None
    origin: Mapping[str, str] = field(default_factory=dict)

    @property
    def ray_jobs(self) -> bool:
        return self.engine == "ray" and self.ray is not None

    def config_hash(self) -> str:
        blob = json.dumps(self.train_config.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def to_dict(self) -> dict:
        """JSON values of every setting (the Ray token excepted): what the first task hands on as XCom."""
        return {
            "data_root": str(self.data_root),
            "run_root": str(self.run_root),
            "dataset_version": self.dataset_version,
            "preset": self.preset,
            "train_config": self.train_config.to_dict(),
            "engine": self.engine,
            "workers": self.workers,
            "gpu": self.gpu,
            "eval_split": self.eval_split,
            "run_name": self.run_name,
            "ray": None if self.ray is None else self.ray.to_dict(),
            "origin": dict(self.origin),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: SettingsSource) -> TrainSettings:
        """The settings ``to_dict`` gave, re-created without reading a Variable (``source``: the Ray token)."""
        return cls(
            data_root=storage.location(d["data_root"]) if storage.is_url(d["data_root"]) else Path(d["data_root"]),
            run_root=storage.location(d["run_root"]) if storage.is_url(d["run_root"]) else Path(d["run_root"]),
            dataset_version=d["dataset_version"],
            preset=d["preset"],
            train_config=TrainConfig.from_dict(d["train_config"]),
            engine=d["engine"],
            workers=d["workers"],
            gpu=d["gpu"],
            eval_split=d["eval_split"],
            run_name=d["run_name"],
            ray=None if d["ray"] is None else RaySettings.from_dict(d["ray"], source),
            origin=dict(d["origin"]),
        )


def _deep_merge(base: dict, over: Mapping[str, Any]) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def train_config_from(preset: str, overrides: Mapping[str, Any]):
    """The named preset with ``overrides`` (TrainConfig fields, nested objects merged) on top."""
    if preset not in PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    try:
        return TrainConfig.from_dict(_deep_merge(PRESETS[preset].to_dict(), overrides))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid training config: {exc}") from None


def resolve_train_settings(params: Mapping[str, Any], source: SettingsSource) -> TrainSettings:
    r = _Resolver(params, source)
    data_root = r.place("data_root", "bindset_data_root")
    run_root = r.place("run_root", "bindset_run_root")
    ray = r.ray()
    engine = _choice("engine", r.get("engine", "bindset_train_engine", "ray" if ray else "local"), TRAIN_ENGINES)
    preset = r.get("preset", "bindset_train_preset", "tiny")
    overrides = r.get("train_config", "bindset_train_config", {}, _json_object)
    workers = int(r.get("workers", "bindset_train_workers", 1, int))
    if workers < 1:
        raise ValueError("workers must be at least 1")
    run_name = r.get("run_name", None, None)
    if run_name is not None and (not run_name or "/" in run_name or run_name.startswith(".")):
        raise ValueError(f"invalid run_name {run_name!r}")
    return TrainSettings(
        data_root=data_root,
        run_root=run_root,
        dataset_version=r.get("dataset_version", None, None),
        preset=preset,
        train_config=train_config_from(preset, overrides),
        engine=engine,
        workers=workers,
        gpu=bool(r.get("gpu", None, False)),
        eval_split=r.get("eval_split", None, "val"),
        run_name=run_name,
        ray=ray,
        origin=r.origin,
    )


# ------------------------------------------------------------------------------------------ DAG params

#: name -> (JSON Schema types, description); every default is None, meaning "Variable, else default"
BUILD_PARAMS: dict[str, tuple[list[str], str]] = {
    "landing_path": (["null", "string"], "RAW captures folder (else Variable bindset_landing_path)"),
    "data_root": (["null", "string"], "DATA_ROOT: build/, versions/, current (else Variable bindset_data_root)"),
    "engine": (["null", "string"], "beam | ray | local (else Variable bindset_build_engine)"),
    "beam_pipeline_args": (["null", "array"], 'Beam runner flags, e.g. ["--runner=DataflowRunner", ...]'),
    "build_config": (["null", "object"], "BuildConfig fields (else Variable bindset_build_config)"),
    "quality_thresholds": (["null", "object"], "QualityThresholds fields (else Variable bindset_quality_thresholds)"),
    "ray_conn_id": (["null", "string"], "Connection id of the Ray Jobs API (default bindset_ray)"),
    "workers": (["null", "integer"], "engine ray without a cluster: CPUs of the local Ray"),
}
TRAIN_PARAMS: dict[str, tuple[list[str], str]] = {
    "dataset_version": (["null", "string"], "ds-… id under DATA_ROOT/versions (else the Asset event's, else current)"),
    "data_root": (["null", "string"], "DATA_ROOT (else Variable bindset_data_root)"),
    "run_root": (["null", "string"], "RUN_ROOT: runs/<name>/, current (else Variable bindset_run_root)"),
    "preset": (["null", "string"], "tiny | imagebind (else Variable bindset_train_preset, else tiny)"),
    "train_config": (["null", "object"], "TrainConfig fields merged over the preset (else bindset_train_config)"),
    "engine": (["null", "string"], "local | ray (else Variable bindset_train_engine)"),
    "workers": (["null", "integer"], "training workers (Ray Train)"),
    "gpu": (["null", "boolean"], "one GPU per worker"),
    "eval_split": (["null", "string"], "split the eval tables are computed on (default val)"),
    "run_name": (["null", "string"], "folder under RUN_ROOT/runs (default <dataset version>_<config hash>)"),
    "ray_conn_id": (["null", "string"], "Connection id of the Ray Jobs API (default bindset_ray)"),
}


def airflow_params(spec: Mapping[str, tuple[list[str], str]]) -> dict:
    """Airflow ``Param`` objects for a spec (imported here: this module is also used without Airflow)."""
    from airflow.sdk import Param

    return {name: Param(None, type=types, description=text) for name, (types, text) in spec.items()}
