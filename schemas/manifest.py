"""The ``captures`` session manifest: how one rig recording's streams map onto one timeline.

Each stream keeps its own clock. A stream timestamp ``t`` (seconds, on the stream's clock) maps to the
session timeline as ``t * (1 + drift_ppm * 1e-6) + offset_s``. Paths are relative to the session folder
and may not leave it: a manifest is user input and must not be able to point the build at arbitrary files.
This module checks their text (nothing absolute, no ``..``); where a path leads after symlinks is checked
where it is opened, by ``transforms/paths.py``, the one home of that check.

The JSON Schema exported from these models is committed as ``schemas/manifest.schema.json``
(``bindset schema``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import UserError

MANIFEST_NAMES = ("manifest.json", "manifest.yaml", "manifest.yml")
SCHEMA_VERSION = 1

SessionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")]


class _Strict(BaseModel):
    # Unknown keys are almost always typos ("ofset_s"); silently ignoring them would hide a wrong clock.
    # NaN and infinities are refused in every float field ("not a finite number"): NaN compares false with
    # every bound, so a ``le=3600`` check alone would let it through or name the wrong problem.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PathEscapeError(ValueError):
    """A manifest path that is absolute or climbs out of the session folder (reject ``path_escapes_root``)."""


def _relative_inside(value: str) -> str:
    p = PurePosixPath(value.replace("\\", "/"))
    if not value or p.is_absolute() or value.startswith("~"):
        raise PathEscapeError(f"path {value!r} must be relative to the session folder")
    if ".." in p.parts:
        raise PathEscapeError(f"path {value!r} escapes the session folder")
    return value


RelPath = Annotated[str, Field(min_length=1), AfterValidator(_relative_inside)]


class Clock(_Strict):
    """How a stream's clock maps to the session timeline."""

    offset_s: float = Field(0.0, ge=-3600.0, le=3600.0, description="added after drift correction")
    drift_ppm: float = Field(0.0, ge=-10000.0, le=10000.0, description="stream clock rate error")

    def to_session(self, t_stream):
        return t_stream * (1.0 + self.drift_ppm * 1e-6) + self.offset_s

    def to_stream(self, t_session):
        return (t_session - self.offset_s) / (1.0 + self.drift_ppm * 1e-6)


class TimeUnit(StrEnum):
    s = "s"
    ms = "ms"
    us = "us"
    ns = "ns"

    @property
    def seconds(self) -> float:
        return {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[self.value]


class ContainerTimestamps(_Strict):
    """Timestamps are the presentation times stored in the media container."""

    source: Literal["container"] = "container"


class CsvTimestamps(_Strict):
    """Timestamps come from a CSV with one row per frame: a file name column and a time column."""

    source: Literal["csv"] = "csv"
    path: RelPath
    file_column: str = "file"
    time_column: str = "timestamp"
    unit: TimeUnit = TimeUnit.ms


class ColumnTimestamps(_Strict):
    """Timestamps are a column of the stream's own table (IMU)."""

    source: Literal["column"] = "column"
    column: str = "component_timestamp_ms"
    unit: TimeUnit = TimeUnit.ms


class Intrinsics(_Strict):
    fx: float = Field(gt=0)
    fy: float = Field(gt=0)
    cx: float
    cy: float
    baseline_m: float | None = Field(None, gt=0, description="stereo/ToF baseline, for disparity")


class VideoStream(_Strict):
    path: RelPath
    timestamps: ContainerTimestamps = ContainerTimestamps()
    clock: Clock = Clock()


class AudioStream(_Strict):
    """Audio either rides in the video container (``path`` omitted) or is a file of its own."""

    path: RelPath | None = None
    track: Literal["video", "file"] = "video"
    timestamps: ContainerTimestamps = ContainerTimestamps()
    clock: Clock = Clock()

    @model_validator(mode="after")
    def _track_matches_path(self) -> AudioStream:
        if self.track == "file" and self.path is None:
            raise ValueError("track 'file' needs a path")
        if self.track == "video" and self.path is not None:
            raise ValueError("track 'video' takes its audio from the video file; drop 'path' or set track 'file'")
        return self


class DepthStream(_Strict):
    frames: RelPath = Field(description="folder of 16-bit PNG frames")
    timestamps: CsvTimestamps
    clock: Clock = Clock()
    units: Literal["mm"] = "mm"
    intrinsics: Intrinsics | None = None


class ThermalStream(_Strict):
    frames: RelPath = Field(description="folder of 16-bit (or 8-bit) PNG frames")
    timestamps: CsvTimestamps
    clock: Clock = Clock()
    units: Literal["centikelvin", "raw_counts", "gray8"] = "centikelvin"
    intrinsics: Intrinsics | None = None


class ImuUnits(_Strict):
    accel: Literal["m/s^2", "g"] = "m/s^2"
    gyro: Literal["rad/s", "deg/s"] = "rad/s"


class ImuStream(_Strict):
    path: RelPath = Field(description="CSV in the Ego4D column layout")
    timestamps: ColumnTimestamps = ColumnTimestamps()
    clock: Clock = Clock()
    units: ImuUnits = ImuUnits()


class Streams(_Strict):
    video: VideoStream | None = None
    audio: AudioStream | None = None
    depth: DepthStream | None = None
    thermal: ThermalStream | None = None
    imu: ImuStream | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Streams:
        if not any((self.video, self.audio, self.depth, self.thermal, self.imu)):
            raise ValueError("a session needs at least one stream")
        if self.audio is not None and self.audio.track == "video" and self.video is None:
            raise ValueError("audio track 'video' needs a video stream")
        return self


class Label(_Strict):
    """A label or caption over a range of the session timeline."""

    start_s: float = Field(ge=0)
    end_s: float
    label: str = Field(min_length=1)
    caption: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Label:
        if not self.end_s > self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class SessionManifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    session_id: SessionId
    streams: Streams
    labels: list[Label] = Field(default_factory=list)


class ManifestError(UserError, ValueError):
    """A manifest that cannot be used, with a message naming the file, the field and the problem."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: invalid session manifest"]
        lines += [f"  - {field or '<root>'}: {msg}" for field, msg in problems]
        super().__init__("\n".join(lines))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(errors: list[dict]) -> list[tuple[str, str]]:
    problems = []
    for err in errors:
        # Union members add their class names to the location; they say nothing to a user.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        elif err["type"] == "finite_number":
            msg = f"not a finite number (got {err['input']!r})"
        elif loc == ("schema_version",):
            msg = f"unsupported schema_version {err['input']!r} (this bindset reads {SCHEMA_VERSION})"
        problems.append((_loc(loc), msg))
    return problems


def parse_manifest(data: object, path: Path | str = "<manifest>") -> SessionManifest:
    """The whole manifest, every stream valid, or a ManifestError listing every problem."""
    try:
        return SessionManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(path, _problems(exc.errors(include_url=False))) from None


SIDE_STREAMS = ("audio", "depth", "thermal", "imu")


@dataclass(frozen=True)
class StreamProblem:
    """One side stream that is invalid on its own (a NaN intrinsic, a path leaving the session folder):
    it costs only its modality, the rest of the manifest is used."""

    stream: str  # one of SIDE_STREAMS
    error: ManifestError  # names the file and each of the stream's bad fields
    escaping_path: str | None = None  # the path as written, when one leaves the session folder
    paths: tuple[str, ...] = ()  # the stream's paths that stay inside the session folder (still its inputs)


@dataclass(frozen=True)
class LoadedManifest:
    manifest: SessionManifest  # without the streams in ``problems``
    problems: tuple[StreamProblem, ...] = ()


def _stream_paths(stream: object) -> tuple[str, ...]:
    if not isinstance(stream, dict):
        return ()
    ts = stream.get("timestamps")
    candidates = [stream.get("frames"), stream.get("path"), ts.get("path") if isinstance(ts, dict) else None]
    out = []
    for value in candidates:
        try:
            if isinstance(value, str):
                out.append(_relative_inside(value))
        except ValueError:
            continue
    return tuple(out)


def parse_manifest_streams(data: object, path: Path | str = "<manifest>") -> LoadedManifest:
    """Like ``parse_manifest``, but a side stream (audio, depth, thermal, IMU) whose own fields are invalid
    is left out and reported in ``problems`` instead of failing the manifest.

    Raises ManifestError only for the manifest as a whole: its top level, ``session_id``, labels, the video
    stream, or a rest that is invalid without the bad side streams (no stream left).
    """
    try:
        return LoadedManifest(SessionManifest.model_validate(data))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    by_stream: dict[str, list[dict]] = {}
    for err in errors:
        loc = err["loc"]
        if len(loc) < 2 or loc[0] != "streams" or loc[1] not in SIDE_STREAMS:
            raise ManifestError(path, _problems(errors))
        by_stream.setdefault(loc[1], []).append(err)
    streams = {k: v for k, v in data["streams"].items() if k not in by_stream}
    try:
        manifest = SessionManifest.model_validate({**data, "streams": streams})
    except ValidationError as exc:
        raise ManifestError(path, _problems(errors) + _problems(exc.errors(include_url=False))) from None
    problems = []
    for name in SIDE_STREAMS:
        if name not in by_stream:
            continue
        escaping = next(
            (e["input"] for e in by_stream[name] if isinstance(e.get("ctx", {}).get("error"), PathEscapeError)), None
        )
        problems.append(
            StreamProblem(name, ManifestError(path, _problems(by_stream[name])), escaping,
                          _stream_paths(data["streams"][name]))
        )  # fmt: skip
    return LoadedManifest(manifest, tuple(problems))


def _read_manifest_data(path: Path, label: Path | str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(label, [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(label, [("", f"cannot read: {exc}")]) from None
    if not text.strip():
        raise ManifestError(label, [("", "file is empty")])
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        msg = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ManifestError(label, [("", msg)]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(label, [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ManifestError(label, [("", f"top level must be an object, got {type(data).__name__}")])
    return data


def load_manifest(path: Path | str, name: str | None = None) -> SessionManifest:
    """Read a JSON or YAML manifest; every failure is a ManifestError naming the file as ``name`` (a build
    passes the RAW-relative path, so reject details carry no absolute path), default the path."""
    path = Path(path)
    label = name or path
    return parse_manifest(_read_manifest_data(path, label), label)


def load_manifest_streams(path: Path | str, name: str | None = None) -> LoadedManifest:
    """``load_manifest`` for a build: a side stream invalid on its own is left out and reported (see
    ``parse_manifest_streams``); ManifestError only for the manifest as a whole."""
    path = Path(path)
    label = name or path
    return parse_manifest_streams(_read_manifest_data(path, label), label)


def manifest_json_schema() -> dict:
    schema = SessionManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bindset captures session manifest"
    return schema


SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


def write_json_schema(path: Path = SCHEMA_FILE) -> Path:
    path.write_text(json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n")
    return path
