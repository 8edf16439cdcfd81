"""`publish` with DATA_ROOT on object storage (issue 17, point 2), against the moto S3 server of tests/s3server.py:
immutable versions under ``versions/<id>/`` (VERSION.json written last), ``current.json`` as the pointer
replaced by one PUT, readers of ``current`` that see one whole version or the other, and the Airflow build
steps (find_changes -> run_build -> run_validation -> publish) run as plain functions on ``s3://``."""

from __future__ import annotations

import json
import threading

import pytest

from bindset.synth.generate import SynthConfig, synth
from orchestration import build_steps
from orchestration.publish import (
    CURRENT,
    PUBLISH_LOG,
    VERSION_JSON,
    VERSIONS,
    PublishRefused,
    current_manifest,
    publish_version,
    read_pointer,
    switch_pointer,
    version_id,
    version_path,
)
from orchestration.settings import DictSource, resolve_build_settings
from pipelines import storage

WRITES = ("pipe_file", "put_file", "copy", "rm_file", "rm")


def _fake_build(folder: storage.Location, index: bytes = b"index-1", published: bool = True) -> None:
    """A committed build on the store as publish.py sees it (as tests/test_orchestration.py's ``_fake_build``)."""
    for name, data in (("index.parquet", index), ("rejects.parquet", b"rejects"), ("shards/sizes.json", b"{}"),
                       ("shards/train-000000.tar", b"tar-" + index), ("quality/report.html", b"<html>")):  # fmt: skip
        storage.put_atomic(folder / name, data)
    validation = {"status": "passed" if published else "failed", "published": published}
    storage.put_json(folder / "manifest.json", {"version": "b1", "counts": {"samples": 3}, "validation": validation})


def _objects(prefix: storage.Location) -> dict[str, tuple[bytes, tuple]]:
    """name -> (bytes, identity: size and ETag) of every object under ``prefix``."""
    fs = storage.filesystem("s3")
    return {p[len(prefix.path) + 1 :]: (fs.cat_file(p), storage.stat(f"s3://{p}").identity)
            for p in fs.find(prefix.path)}  # fmt: skip


class _WriteSpy:
    """Records every write or delete the s3 filesystem object is asked for (the real call still runs)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str]] = []
        fs = storage.filesystem("s3")
        for name in WRITES:
            real = getattr(fs, name)

            def spy(path, *args, _name=name, _real=real, **kwargs):
                paths = path if isinstance(path, list) else [path]
                self.calls += [(_name, str(p)) for p in paths]
                return _real(path, *args, **kwargs)

            monkeypatch.setattr(fs, name, spy)

    def touching(self, fragment: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if fragment in c[1]]


def test_publish_on_s3_keeps_versions_immutable_and_switches_current_with_one_put(s3_bucket, monkeypatch):
    root = storage.location(f"{s3_bucket.url}/dr")
    build = root / "build"
    _fake_build(build)
    assert read_pointer(root / CURRENT) is None and current_manifest(root) is None

    first = publish_version(root, build)
    v1 = root / VERSIONS / first.version_id
    assert first.created and first.switched and first.previous is None and first.version_id == version_id(build)
    assert first.path == v1 and first.samples == 3
    pointer = json.loads(storage.read_bytes(root / "current.json"))
    assert pointer == {"target": f"{VERSIONS}/{first.version_id}", "version_id": first.version_id}
    assert not storage.exists(root / CURRENT)  # no object named like the local symlink
    assert storage.read_bytes(v1 / "shards" / "train-000000.tar") == b"tar-index-1"
    assert storage.read_bytes(v1 / "quality" / "report.html") == b"<html>"
    assert json.loads(storage.read_bytes(v1 / VERSION_JSON))["version_id"] == first.version_id
    assert current_manifest(root)["version"] == "b1"
    v1_objects = _objects(v1)
    assert sorted(v1_objects) == ["VERSION.json", "index.parquet", "manifest.json", "quality/report.html",
                                  "rejects.parquet", "shards/sizes.json", "shards/train-000000.tar"]  # fmt: skip

    spy = _WriteSpy(monkeypatch)
    again = publish_version(root, build)  # the same content: nothing is written, the pointer stays
    assert (again.version_id, again.created, again.switched) == (first.version_id, False, False)
    assert spy.calls == []
    assert len(storage.read_text(root / PUBLISH_LOG).splitlines()) == 1

    _fake_build(build, index=b"index-2")  # a rebuild replaces objects under the same names
    spy.calls.clear()
    second = publish_version(root, build)
    assert second.switched and second.previous == first.version_id != second.version_id
    assert read_pointer(root / CURRENT) == second.version_id
    # the switch is one PUT of the pointer object; nothing under the old version was written or deleted
    assert spy.touching("/current.json") == [("pipe_file", f"{root.path}/current.json")]
    assert spy.touching(f"/{first.version_id}/") == []
    # VERSION.json is the last object of the new version, and the pointer comes after it
    names = [p for _, p in spy.calls]
    assert names.index(f"{root.path}/{VERSIONS}/{second.version_id}/{VERSION_JSON}") < names.index(
        f"{root.path}/current.json"
    )
    assert _objects(v1) == v1_objects  # the old version: same objects, bytes and ETags
    log = [json.loads(x) for x in storage.read_text(root / PUBLISH_LOG).splitlines()]
    assert [(e["version_id"], e["previous"]) for e in log] == [(first.version_id, None),
                                                                (second.version_id, first.version_id)]  # fmt: skip
    assert version_path(root, first.version_id) == v1
    with pytest.raises(FileNotFoundError, match="ds-0000000000000000 is not published.*published: \\['ds-"):
        version_path(root, "ds-0000000000000000")

    # a rollback is one more switch; a target without VERSION.json (an interrupted publication) is refused
    switch_pointer(root / CURRENT, f"{VERSIONS}/{first.version_id}")
    assert current_manifest(root) == json.loads(storage.read_bytes(v1 / "manifest.json"))
    storage.put_atomic(root / VERSIONS / "ds-half" / "index.parquet", b"partial")
    with pytest.raises(FileNotFoundError, match="pointer target does not exist"):
        switch_pointer(root / CURRENT, f"{VERSIONS}/ds-half")
    assert read_pointer(root / CURRENT) == first.version_id


def test_readers_of_current_on_s3_see_one_whole_version_or_the_other(s3_bucket):
    """A reader resolves ``current.json`` once and reads that version; while the pointer flips between two
    versions, every read is consistent: the manifest, the index and VERSION.json all belong to one version."""
    root = storage.location(f"{s3_bucket.url}/dr")
    vids = []
    for index in (b"index-A", b"index-B"):
        _fake_build(root / f"build-{index.decode()}", index=index)
        vids.append(publish_version(root, root / f"build-{index.decode()}").version_id)
    expected = {vid: storage.read_bytes(root / VERSIONS / vid / "index.parquet") for vid in vids}
    assert expected[vids[0]] == b"index-A" and expected[vids[1]] == b"index-B"

    stop, seen, errors = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                vid = read_pointer(root / CURRENT)
                folder = version_path(root, vid)
                got = (vid, json.loads(storage.read_bytes(folder / VERSION_JSON))["version_id"],
                       storage.read_bytes(folder / "index.parquet"))  # fmt: skip
                seen.append(got)
            except Exception as exc:  # noqa: BLE001 - any failed read is a finding
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(12):
            switch_pointer(root / CURRENT, f"{VERSIONS}/{vids[i % 2]}")
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert seen and all(vid == recorded and index == expected[vid] for vid, recorded, index in seen)


def test_publish_on_s3_refuses_a_failed_build_and_a_build_on_another_bucket(s3_bucket, tmp_path):
    root = storage.location(f"{s3_bucket.url}/dr")
    _fake_build(root / "build", published=False)
    with pytest.raises(PublishRefused, match="validation failed"):
        publish_version(root, root / "build")
    with pytest.raises(PublishRefused, match="no committed build"):
        publish_version(root, root / "nothing")
    with pytest.raises(ValueError, match="same store"):
        publish_version(tmp_path / "local-root", root / "build")
    assert storage.listdir(root) == ["build"]  # nothing published


def test_build_steps_find_changes_build_validate_and_publish_on_s3(s3_bucket, tmp_path):
    """The DAG's steps as plain functions (no Airflow) with DATA_ROOT on s3://: a first run publishes, a rerun
    finds nothing new, a new session is found against the published version."""
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=2, seed=5, seconds=2.0, width=64, height=48, workers=1, layout="videos"))
    url = f"{s3_bucket.url}/dr"
    params = {"landing_path": str(raw), "data_root": url, "engine": "local"}
    s = resolve_build_settings(params, DictSource())
    assert s.data_root == storage.location(url) and str(s.build_dir) == f"{url}/build"
    assert type(s).from_dict(json.loads(json.dumps(s.to_dict())), DictSource()).data_root == s.data_root

    changes = build_steps.find_changes(s)
    assert changes.published is None and len(changes.new) == 2 == changes.units
    outcome = build_steps.run_build(s)
    assert outcome.processed == 2 and outcome.samples > 0
    assert build_steps.run_validation(s).passed
    published = publish_version(s.data_root, s.build_dir)
    assert published.switched and published.samples == outcome.samples

    again = build_steps.find_changes(s)
    assert not again and again.published == published.version_id and again.units == 2

    synth(tmp_path / "more", SynthConfig(sessions=1, seed=9, seconds=2.0, width=64, height=48, workers=1,
                                         layout="videos"))  # fmt: skip
    new = [p for p in (tmp_path / "more").iterdir() if p.is_file()]
    for p in new:
        p.rename(raw / f"extra-{p.name}")
    changed = build_steps.find_changes(s)
    assert changed.published == published.version_id and len(changed.new) == 1 and changed.units == 3
    assert not (tmp_path / "dr").exists() and not any(p.name.startswith("s3:") for p in tmp_path.iterdir())
