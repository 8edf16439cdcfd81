"""Contracts of ``schemas/``: the captures session manifest, its JSON Schema, reject codes, table schemas."""

from __future__ import annotations

import copy
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from schemas.manifest import (
    SCHEMA_FILE,
    AudioStream,
    Clock,
    ColumnTimestamps,
    CsvTimestamps,
    DepthStream,
    ImuStream,
    ImuUnits,
    Intrinsics,
    Label,
    ManifestError,
    SessionManifest,
    Streams,
    ThermalStream,
    TimeUnit,
    VideoStream,
    load_manifest,
    load_manifest_streams,
    manifest_json_schema,
)
from schemas.reasons import INPUT_LEVEL, RejectReason
from schemas.tables import INDEX_SCHEMA, REASON_VALUES, REJECTS_SCHEMA

# --------------------------------------------------------------------------------------------------
# Round trips


def _full_manifest(audio: AudioStream) -> SessionManifest:
    return SessionManifest(
        session_id="rig-01_2024",
        streams=Streams(
            video=VideoStream(path="video/main.mp4", clock=Clock(offset_s=0.25, drift_ppm=-12.5)),
            audio=audio,
            depth=DepthStream(
                frames="depth",
                timestamps=CsvTimestamps(path="depth/times.csv", unit=TimeUnit.us),
                clock=Clock(offset_s=-0.04),
                intrinsics=Intrinsics(fx=525.0, fy=525.5, cx=319.5, cy=239.5, baseline_m=0.075),
            ),
            thermal=ThermalStream(
                frames="thermal",
                timestamps=CsvTimestamps(
                    path="thermal/times.csv", file_column="name", time_column="t", unit=TimeUnit.ns
                ),
                clock=Clock(drift_ppm=40.0),
                units="raw_counts",
                intrinsics=Intrinsics(fx=300.0, fy=300.0, cx=160.0, cy=120.0),
            ),
            imu=ImuStream(
                path="imu.csv",
                timestamps=ColumnTimestamps(column="t_ms", unit=TimeUnit.ms),
                clock=Clock(offset_s=1.5, drift_ppm=3.0),
                units=ImuUnits(accel="g", gyro="deg/s"),
            ),
        ),
        labels=[
            Label(start_s=0.0, end_s=2.5, label="walking"),
            Label(start_s=2.5, end_s=7.25, label="cooking", caption="someone stirs a pot"),
        ],
    )


AUDIO_VARIANTS = {
    "audio_from_video_track": AudioStream(),
    "audio_separate_file": AudioStream(path="audio/mic.wav", track="file", clock=Clock(offset_s=0.01)),
}


@pytest.fixture(params=sorted(AUDIO_VARIANTS))
def full_manifest(request) -> SessionManifest:
    return _full_manifest(AUDIO_VARIANTS[request.param])


def test_full_manifest_roundtrip_json(tmp_path, full_manifest):
    text = json.dumps(full_manifest.model_dump(mode="json"), indent=2)
    path = tmp_path / "manifest.json"
    path.write_text(text, encoding="utf-8")
    loaded = load_manifest(path)
    assert loaded == full_manifest
    assert loaded.streams.imu.units.accel == "g"
    assert loaded.streams.imu.units.gyro == "deg/s"
    assert loaded.streams.depth.intrinsics.baseline_m == 0.075


def test_full_manifest_roundtrip_yaml(tmp_path, full_manifest):
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(full_manifest.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    assert load_manifest(path) == full_manifest


def test_minimal_manifest_defaults(tmp_path):
    path = tmp_path / "manifest.yml"
    path.write_text("session_id: s1\nstreams:\n  video:\n    path: v.mp4\n", encoding="utf-8")
    m = load_manifest(path)
    assert m.schema_version == 1
    assert m.labels == []
    assert m.streams.video.clock == Clock(offset_s=0.0, drift_ppm=0.0)
    assert m.streams.audio is None


@pytest.mark.parametrize(
    ("offset_s", "drift_ppm"), [(0.0, 0.0), (1.25, 0.0), (-3.0, 250.0), (0.5, -80.0), (3600.0, 10000.0)]
)
def test_clock_drift_then_offset_and_inverse(offset_s, drift_ppm):
    clock = Clock(offset_s=offset_s, drift_ppm=drift_ppm)
    for t in (0.0, 0.001, 1.0, 59.5, 3600.0):
        expected = t * (1 + drift_ppm * 1e-6) + offset_s
        assert clock.to_session(t) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert clock.to_stream(clock.to_session(t)) == pytest.approx(t, rel=1e-12, abs=1e-9)
        assert clock.to_session(clock.to_stream(t)) == pytest.approx(t, rel=1e-12, abs=1e-9)


def test_clock_drift_is_applied_before_offset():
    # 100 ppm fast over 1000 s is 0.1 s, and the offset is not scaled by the drift.
    clock = Clock(offset_s=2.0, drift_ppm=100.0)
    assert clock.to_session(1000.0) == pytest.approx(1002.1)
    assert clock.to_session(0.0) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------------
# Malformed manifests: each one must fail with a message naming the file, the field and the problem

_BASE = {"schema_version": 1, "session_id": "s1", "streams": {"video": {"path": "video.mp4"}}}
_CSV = {"source": "csv", "path": "times.csv"}


def _with(**changes) -> dict:
    data = copy.deepcopy(_BASE)
    data.update(changes)
    return data


def _video(**video) -> dict:
    return _with(streams={"video": {"path": "video.mp4", **video}})


def _without(key: str) -> dict:
    data = copy.deepcopy(_BASE)
    del data[key]
    return data


def _one_label(**label) -> dict:
    return _with(labels=[{"label": "x", **label}])


# (id, file name, content: dict -> dumped as JSON/YAML by suffix, str -> written as is, None -> no file,
#  expected field path, expected fragment of the problem)
MALFORMED = [
    ("path_parent", "manifest.json", _video(path="../x.mp4"), "streams.video.path", "escapes the session"),
    ("path_absolute", "manifest.json", _video(path="/etc/x.mp4"), "streams.video.path", "must be relative"),
    (
        "path_traversal",
        "manifest.json",
        _video(path="a/../../b"),
        "streams.video.path",
        "escapes the session",
    ),
    ("path_home", "manifest.yaml", _video(path="~/x.mp4"), "streams.video.path", "must be relative"),
    (
        "path_backslash",
        "manifest.json",
        _video(path="..\\x.mp4"),
        "streams.video.path",
        "escapes the session",
    ),
    ("path_empty", "manifest.json", _video(path=""), "streams.video.path", "at least 1 character"),
    (
        "csv_path_escapes",
        "manifest.json",
        _with(streams={"depth": {"frames": "d", "timestamps": {"source": "csv", "path": "../t.csv"}}}),
        "streams.depth.timestamps.path",
        "escapes the session",
    ),
    ("missing_session_id", "manifest.json", _without("session_id"), "session_id", "Field required"),
    (
        "bad_session_id",
        "manifest.json",
        _with(session_id="bad id/../x"),
        "session_id",
        "should match pattern",
    ),
    (
        "misspelled_field",
        "manifest.yaml",
        _video(clock={"ofset_s": 1.0}),
        "streams.video.clock.ofset_s",
        "unknown field",
    ),
    ("unknown_top_field", "manifest.json", _with(sesion="x"), "sesion", "unknown field"),
    (
        "wrong_type",
        "manifest.json",
        _video(clock={"offset_s": "abc"}),
        "streams.video.clock.offset_s",
        "valid number",
    ),
    (
        "offset_out_of_range",
        "manifest.json",
        _video(clock={"offset_s": 1e6}),
        "streams.video.clock.offset_s",
        "less than or equal to 3600",
    ),
    ("label_end_before_start", "manifest.json", _one_label(start_s=5.0, end_s=4.0), "labels[0]", "end_s"),
    (
        "label_end_equals_start",
        "manifest.yaml",
        _one_label(start_s=5.0, end_s=5.0),
        "labels[0]",
        "after start_s",
    ),
    (
        "label_negative_start",
        "manifest.json",
        _one_label(start_s=-1.0, end_s=4.0),
        "labels[0].start_s",
        "greater than or equal to 0",
    ),
    (
        "label_empty_text",
        "manifest.json",
        _one_label(start_s=0, end_s=1, label=""),
        "labels[0].label",
        "at least 1",
    ),
    ("no_streams", "manifest.json", _with(streams={}), "streams", "at least one stream"),
    ("streams_missing", "manifest.json", _without("streams"), "streams", "Field required"),
    (
        "audio_file_without_path",
        "manifest.json",
        _with(streams={"video": {"path": "v.mp4"}, "audio": {"track": "file"}}),
        "streams.audio",
        "needs a path",
    ),
    (
        "audio_video_track_with_path",
        "manifest.json",
        _with(streams={"video": {"path": "v.mp4"}, "audio": {"track": "video", "path": "a.wav"}}),
        "streams.audio",
        "drop 'path'",
    ),
    (
        "audio_video_track_without_video",
        "manifest.json",
        _with(streams={"audio": {"track": "video"}}),
        "streams",
        "needs a video stream",
    ),
    (
        "depth_without_timestamps",
        "manifest.json",
        _with(streams={"depth": {"frames": "depth"}}),
        "streams.depth.timestamps",
        "Field required",
    ),
    (
        "depth_bad_intrinsics",
        "manifest.json",
        _with(
            streams={
                "depth": {
                    "frames": "d",
                    "timestamps": _CSV,
                    "intrinsics": {"fx": 0, "fy": 1, "cx": 0, "cy": 0},
                }
            }
        ),
        "streams.depth.intrinsics.fx",
        "greater than 0",
    ),
    (
        "thermal_bad_units",
        "manifest.json",
        _with(streams={"thermal": {"frames": "t", "timestamps": _CSV, "units": "kelvin"}}),
        "streams.thermal.units",
        "centikelvin",
    ),
    (
        "imu_bad_units",
        "manifest.yaml",
        _with(streams={"imu": {"path": "imu.csv", "units": {"accel": "m/s2"}}}),
        "streams.imu.units.accel",
        "m/s^2",
    ),
    (
        "timestamp_bad_unit",
        "manifest.json",
        _with(streams={"depth": {"frames": "d", "timestamps": {**_CSV, "unit": "sec"}}}),
        "streams.depth.timestamps.unit",
        "'ms'",
    ),
    ("schema_version_unsupported", "manifest.json", _with(schema_version=2), "schema_version", "unsupported"),
    ("schema_version_string", "manifest.yaml", _with(schema_version="v1"), "schema_version", "'v1'"),
    ("invalid_json", "manifest.json", '{"session_id": "s1",\n  "streams": }', "<root>", "line 2 column"),
    ("invalid_yaml", "manifest.yaml", "session_id: [s1\nstreams: {", "<root>", "not valid YAML"),
    ("empty_file", "manifest.json", "  \n\n", "<root>", "empty"),
    ("empty_yaml", "manifest.yaml", "", "<root>", "empty"),
    ("yaml_top_level_list", "manifest.yaml", "- session_id: s1\n- streams: {}\n", "<root>", "got list"),
    ("json_top_level_string", "manifest.json", '"s1"', "<root>", "must be an object"),
    ("yaml_top_level_scalar", "manifest.yml", "just text\n", "<root>", "must be an object"),
    ("missing_file", "manifest.json", None, "<root>", "not found"),
    ("not_utf8", "manifest.yaml", b"session_id: \xff\xfe\n", "<root>", "cannot read"),
]


def _write(path, content) -> None:
    if content is None:
        return
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(content), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content), encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "content", "field", "fragment"), [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_manifest_is_a_readable_error(tmp_path, name, content, field, fragment):
    session = tmp_path / "session-a"
    session.mkdir()
    path = session / name
    _write(path, content)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    err = info.value
    msg = str(err)
    assert str(path) in msg
    assert msg.startswith(f"{path}:")
    assert err.path == str(path)
    assert f"  - {field}: " in msg, msg
    assert fragment in msg, msg
    assert any(f == field or (field == "<root>" and f == "") for f, _ in err.problems)
    assert "Traceback" not in msg
    assert "pydantic" not in msg.lower()
    assert "errors.pydantic.dev" not in msg
    # Union member class names are stripped from field paths
    assert not re.search(r"\.[A-Z]", msg.splitlines()[1].split(":")[0])


def test_malformed_cases_are_many_and_distinct():
    ids = [c[0] for c in MALFORMED]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 12


def test_manifest_error_is_value_error_and_lists_every_problem(tmp_path):
    path = tmp_path / "manifest.json"
    bad = _with(session_id="", labels=[{"start_s": -1, "end_s": 1, "label": "x"}])
    bad["streams"]["video"]["path"] = "/abs.mp4"
    _write(path, bad)
    with pytest.raises(ValueError) as info:
        load_manifest(path)
    assert isinstance(info.value, ManifestError)
    fields = [f for f, _ in info.value.problems]
    assert fields == ["session_id", "streams.video.path", "labels[0].start_s"]
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_a_bad_side_stream_is_left_out_and_reported_alone(tmp_path):
    path = tmp_path / "manifest.yaml"
    data = _with(streams={
        "video": {"path": "video.mp4"},
        "audio": {"track": "file", "path": "a.wav", "clock": {"offset_s": float("nan")}},
        "depth": {"frames": "../../outside", "timestamps": {"source": "csv", "path": "depth.csv"}},
        "imu": {"path": "imu.csv"},
    })  # fmt: skip
    _write(path, data)
    loaded = load_manifest_streams(path, name="s/manifest.yaml")
    st = loaded.manifest.streams
    assert st.video.path == "video.mp4" and st.imu.path == "imu.csv" and st.audio is None and st.depth is None
    audio, depth = loaded.problems
    assert (audio.stream, audio.escaping_path, audio.paths) == ("audio", None, ("a.wav",))
    assert audio.error.problems == [("streams.audio.clock.offset_s", "not a finite number (got nan)")]
    assert (depth.stream, depth.escaping_path, depth.paths) == ("depth", "../../outside", ("depth.csv",))
    assert str(depth.error).startswith("s/manifest.yaml: invalid session manifest")
    # the strict reader still refuses the whole manifest; a bad video or id stays a whole-manifest error
    with pytest.raises(ManifestError):
        load_manifest(path)
    data["streams"]["video"]["path"] = "../v.mp4"
    _write(path, data)
    with pytest.raises(ManifestError) as info:
        load_manifest_streams(path)
    assert [f for f, _ in info.value.problems] == ["streams.video.path", "streams.audio.clock.offset_s",
                                                  "streams.depth.frames"]  # fmt: skip


def test_manifest_models_are_frozen():
    m = _full_manifest(AudioStream())
    with pytest.raises(ValueError):
        m.session_id = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Committed JSON Schema


def test_committed_json_schema_is_current():
    assert SCHEMA_FILE.name == "manifest.schema.json"
    assert SCHEMA_FILE.is_file(), "run: python -c 'from schemas.manifest import write_json_schema; ...'"
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == manifest_json_schema(), "schemas/manifest.schema.json is stale; regenerate it"
    assert committed["$schema"].startswith("https://json-schema.org/")
    assert committed["type"] == "object"
    assert committed["additionalProperties"] is False
    assert set(committed["required"]) == {"session_id", "streams"}
    assert set(committed["$defs"]["Streams"]["properties"]) == {"video", "audio", "depth", "thermal", "imu"}


def test_committed_json_schema_is_byte_identical_to_writer(tmp_path):
    from schemas.manifest import write_json_schema

    fresh = write_json_schema(tmp_path / "manifest.schema.json")
    assert fresh.read_bytes() == SCHEMA_FILE.read_bytes()


# --------------------------------------------------------------------------------------------------
# Reject reasons and table schemas


def test_reject_reasons_are_unique_snake_case():
    values = [r.value for r in RejectReason]
    assert len(values) == len(set(values))
    for r in RejectReason:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", r.value), r.value
        assert r.value == r.name.lower()
        assert isinstance(r, str) and r == r.value
    assert set(values) == REASON_VALUES
    assert set(INPUT_LEVEL) <= set(RejectReason)


@pytest.mark.parametrize("schema", [INDEX_SCHEMA, REJECTS_SCHEMA], ids=["index", "rejects"])
def test_table_columns_unique(schema):
    assert len(schema.names) == len(set(schema.names))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in schema.names)


@pytest.mark.parametrize("schema", [INDEX_SCHEMA, REJECTS_SCHEMA], ids=["index", "rejects"])
def test_empty_table_roundtrips_parquet(tmp_path, schema):
    table = schema.empty_table()
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.num_rows == 0
    assert back.schema.equals(schema, check_metadata=False)
    for name in schema.names:
        assert back.schema.field(name).nullable == schema.field(name).nullable, name
        assert back.schema.field(name).type == schema.field(name).type, name


def test_rejects_reason_column_not_nullable():
    field = REJECTS_SCHEMA.field("reason")
    assert field.type == pa.string()
    assert field.nullable is False
    assert REJECTS_SCHEMA.field("source").nullable is False


def test_index_has_spec_columns():
    names = set(INDEX_SCHEMA.names)
    for col in ("key", "shard", "split", "session", "clip_start_s", "clip_end_s", "caption", "sha256_jpg"):
        assert col in names
    assert INDEX_SCHEMA.field("key").nullable is False
