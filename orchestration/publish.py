"""Published dataset versions and atomically switched `current` pointers (plain Python, no Airflow).

    DATA_ROOT/build/                  the incremental build folder (its _work/ unit cache makes builds incremental)
    DATA_ROOT/versions/<version-id>/  one immutable published version
    DATA_ROOT/current -> versions/<version-id>
    DATA_ROOT/publish_log.jsonl       one line per pointer switch (what was current before: the rollback target)

A version holds hard links to the build's shard files (no copy: the build never rewrites a file in place, it
renames new files over old names, so a linked inode keeps the published bytes) plus copies of the small
files (index, rejects, sizes, manifest, quality). The version id is a hash of the index, rejects and sizes
bytes; the index carries a sha256 of every tar member, so the id pins the shards' content too. The same
content therefore always gets the same id, whatever the run, and republishing it changes nothing.

Readers open ``current`` (or a version folder they were handed); the pointer is a relative symlink replaced
with one atomic rename (pipelines/storage.py), so a reader sees the old version or the new one, never a mix.

On an object store (``DATA_ROOT`` is ``s3://…`` or ``gs://…``; issue 17) there is no symlink and no rename:

    DATA_ROOT/versions/<version-id>/...   objects written once; VERSION.json last (a version without it is
                                          an interrupted publication: never pointed at, redone on the next one)
    DATA_ROOT/current.json                {"version_id": ..., "target": "versions/<version-id>"}: one PUT
                                          replaces it, and a single PUT is atomic (old object or new one)
    DATA_ROOT/publish_log.jsonl           rewritten whole after each switch (no append on object stores)

Shards are copied server-side from the build (S3 CopyObject: no bytes through this machine); the build
must be on the same store as DATA_ROOT. ``read_pointer``, ``current_manifest`` and ``version_path`` take
``DATA_ROOT/current`` as before and read the pointer object instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.storage import Location

BUILD = "build"
VERSIONS = "versions"
CURRENT = "current"
#: on an object store, the pointer ``DATA_ROOT/current`` is the object ``DATA_ROOT/current.json``
POINTER_SUFFIX = ".json"
PUBLISH_LOG = "publish_log.jsonl"
VERSION_JSON = "VERSION.json"
#: files whose bytes define a version (the index holds every member's sha256)
CONTENT_FILES = ("index.parquet", "rejects.parquet", "shards/sizes.json")
COPIED_FILES = ("index.parquet", "rejects.parquet", "manifest.json", "shards/sizes.json")


class PublishRefused(ValueError):
    """The build may not be published (it failed validation, or was never validated)."""


@dataclass(frozen=True)
class PublishResult:
    version_id: str
    path: Path | Location  # DATA_ROOT/versions/<version-id> (a Location on an object store)
    previous: str | None  # the version `current` pointed to before
    created: bool  # a new version folder was written
    switched: bool  # `current` moved (False: this content was already current)
    samples: int
    build_version: str  # the build manifest's own version (inputs, config and code)

    def to_dict(self) -> dict:
        return {
            "version_id": self.version_id,
            "path": str(self.path),
            "previous": self.previous,
            "created": self.created,
            "switched": self.switched,
            "samples": self.samples,
            "build_version": self.build_version,
        }


def _sha256_files(root: Path | Location, names: tuple[str, ...]) -> str:
    if isinstance(root, Location):
        return _sha256_objects(root, names)
    h = hashlib.sha256()
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {root} is not a committed build")
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _sha256_objects(root: Location, names: tuple[str, ...]) -> str:
    """``_sha256_files`` of objects: the same bytes hashed the same way, so the same content gets the same id."""
    h = hashlib.sha256()
    for name in names:
        try:
            data = storage.read_bytes(root / name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{root / name}: missing; {root} is not a committed build") from None
        h.update(name.encode() + b"\0")
        h.update(data)
        h.update(b"\0")
    return h.hexdigest()


def _where(place: Location | Path | str) -> Path | Location:
    """A local ``Path`` (as before, unresolved) or, for an ``s3://``/``gs://`` URL, a ``Location``."""
    if isinstance(place, Location):
        return place.local if place.is_local else place
    return storage.location(place) if storage.is_url(place) else Path(place)


def version_id(data: Path | Location | str) -> str:
    """Content id of a committed dataset folder: ``ds-`` + 16 hex digits of the content files' sha256."""
    return "ds-" + _sha256_files(_where(data), CONTENT_FILES)[:16]


def _pointer_object(link: Location) -> Location:
    return link.parent / (link.name + POINTER_SUFFIX)


def _read_pointer_object(link: Location) -> str | None:
    try:
        record = json.loads(storage.read_bytes(_pointer_object(link)))
    except FileNotFoundError:
        return None
    except ValueError:
        raise ValueError(f"{_pointer_object(link)} is not a version pointer (not JSON); move it away") from None
    target = record.get("target") if isinstance(record, dict) else None
    if not isinstance(target, str) or not target:
        raise ValueError(f"{_pointer_object(link)} is not a version pointer (no target); move it away")
    return target.rstrip("/").rsplit("/", 1)[-1]


def read_pointer(link: Path | Location | str) -> str | None:
    """The name of the folder a pointer designates (``versions/ds-…`` -> ``ds-…``), or None without one.

    On an object store ``link`` (``s3://…/current``) is read from the pointer object ``current.json``;
    raises ``ValueError`` when that object is not a pointer.
    """
    link = _where(link)
    if isinstance(link, Location):
        return _read_pointer_object(link)
    if not link.is_symlink():
        if link.exists():
            raise ValueError(f"{link} exists but is not a symlink; move it away so it can be a version pointer")
        return None
    return Path(os.readlink(link)).name


def switch_pointer(link: Path | Location | str, target: Path | str) -> None:
    """Point ``link`` at ``target`` (relative to the link's folder) atomically: a new symlink renamed over it.

    On an object store: one PUT of the pointer object ``<link>.json`` (``{"target": ..., "version_id": ...}``),
    after checking that the target's ``VERSION.json`` (the last object a publication writes) is there.
    """
    link = _where(link)
    if isinstance(link, Location):
        rel = Path(target).as_posix().strip("/")
        if not storage.exists(link.parent / rel / VERSION_JSON):
            raise FileNotFoundError(f"{link.parent / rel}: pointer target does not exist (no {VERSION_JSON})")
        record = {"target": rel, "version_id": rel.rsplit("/", 1)[-1]}
        storage.put_json(_pointer_object(link), record, indent=None)  # the switch: one PUT
        return
    if link.exists() and not link.is_symlink():
        raise ValueError(f"{link} exists but is not a symlink; move it away so it can be a version pointer")
    if not (link.parent / target).is_dir():
        raise FileNotFoundError(f"{link.parent / target}: pointer target does not exist")
    storage.replace_symlink(link, target)


def _materialize(build: Path, final: Path, vid: str, manifest: dict) -> bool:
    """Write the version folder under a temporary name, then rename it into place. False: it already exists."""
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    (tmp / "shards").mkdir(parents=True)
    try:
        for tar in sorted((build / "shards").glob("*.tar")):
            storage.link_or_copy(tar, tmp / "shards" / tar.name)
        for name in COPIED_FILES:
            storage.copy_synced(build / name, tmp / name)
        if (build / "quality").is_dir():
            shutil.copytree(build / "quality", tmp / "quality", symlinks=True)
        storage.write_synced(tmp / VERSION_JSON, _version_record(vid, manifest, build))
        if version_id(tmp) != vid:  # the build folder changed under us: never publish a mix
            raise RuntimeError(f"{build} changed while it was being published; rerun the publication")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # False: a concurrent publisher of the same content won the rename (its folder records the version)
    return storage.commit_new_dir(tmp, final)


def _materialize_remote(build: Location, final: Location, vid: str, manifest: dict) -> bool:
    """``_materialize`` on an object store: copy the build's objects under ``final/``, ``VERSION.json`` last.

    No object is written after ``VERSION.json``, and nothing is pointed at a version without it, so a
    publication killed midway leaves an unreferenced partial prefix that the next publication of the same
    content (same id, same bytes) completes. Raises ``ValueError`` when the build is on another store.
    """
    if build.scheme != final.scheme or build.bucket != final.bucket:
        raise ValueError(f"{build}: publishing to {final} needs the build on the same store and bucket "
                         "(shards are copied server-side)")  # fmt: skip
    fs = storage.filesystem(final.scheme)
    names = [f"shards/{n}" for n in storage.listdir(build / "shards") if n.endswith(".tar")]
    names += list(COPIED_FILES)
    quality = build / "quality"
    names += [f"quality/{p[len(quality.path) + 1 :]}" for p in storage._remote(quality, lambda: fs.find(quality.path))]
    # server-side copies (S3 CopyObject), all at once; the build's objects are never modified
    storage._remote(final, lambda: fs.copy([(build / n).path for n in names], [(final / n).path for n in names]))
    if version_id(final) != vid:  # the build changed under us (a commit ran): never publish a mix
        for n in names:
            storage.delete(final / n)
        raise RuntimeError(f"{build} changed while it was being published; rerun the publication")
    # written once: a concurrent publisher of the same content that got here first keeps its record
    return storage.write_once(final / VERSION_JSON, _version_record(vid, manifest, build))


def _version_record(vid: str, manifest: dict, build) -> bytes:
    """A version's ``VERSION.json``: its id, the build's version and sample count, where and when from."""
    record = {
        "version_id": vid,
        "build_version": manifest.get("version"),
        "samples": manifest.get("counts", {}).get("samples"),
        "published_from": str(build),
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def _append_log(root: Path | Location, entry: dict) -> None:
    line = json.dumps(entry, sort_keys=True) + "\n"
    if isinstance(root, Path):
        with open(root / PUBLISH_LOG, "a") as f:
            f.write(line)
        return
    # no append on an object store: read, extend, one PUT (the pointer switch itself is already done)
    try:
        before = storage.read_bytes(root / PUBLISH_LOG)
    except FileNotFoundError:
        before = b""
    storage.put_atomic(root / PUBLISH_LOG, before + line.encode())


def _check_existing(final: Path | Location, vid: str) -> None:
    try:
        recorded = json.loads(storage.read_bytes(final / VERSION_JSON)).get("version_id")
    except (OSError, ValueError):
        recorded = None
    if recorded != vid:
        raise RuntimeError(f"{final} exists but does not record version {vid} in {VERSION_JSON}; remove it by hand")


def publishable_manifest(build: Path | Location | str) -> dict:
    """The build's manifest, if its last validation passed; otherwise PublishRefused says why."""
    path = _where(build) / "manifest.json"
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (FileNotFoundError, IsADirectoryError):
        raise PublishRefused(f"{path}: no committed build to publish") from None
    validation = manifest.get("validation", {})
    if not validation.get("published", False):
        status = validation.get("status", "not_run")
        failures = validation.get("failed_expectations", ())
        failed = ", ".join(f"{f.get('suite')}:{f.get('expectation')}" for f in failures)
        raise PublishRefused(
            f"{path}: validation {status}; a dataset is only published when the quality gate passed"
            + (f" (failed: {failed})" if failed else "")
        )
    return manifest


def publish_version(root: Path | Location | str, build: Path | Location | str) -> PublishResult:
    """Publish a validated build as ``root/versions/<id>`` and point ``root/current`` at it.

    Idempotent: the same content gets the same id; an existing version folder is reused, and the pointer
    only moves (and the log only grows) when the id differs from the current one. ``root`` and ``build``
    may be ``s3://``/``gs://`` URLs on the same bucket (see the module docstring); a local root needs a
    local build.
    """
    root, build = _where(root), _where(build)
    if isinstance(root, Path) and isinstance(build, Location):
        raise ValueError(f"{build}: a build on object storage is published to a DATA_ROOT on the same store")
    manifest = publishable_manifest(build)
    vid = version_id(build)
    created = False
    if isinstance(root, Location):
        final: Path | Location = root / VERSIONS / vid
        if storage.exists(final / VERSION_JSON):
            _check_existing(final, vid)
        else:
            created = _materialize_remote(build, final, vid, manifest)
    else:
        root, build = root.resolve(), Path(build).resolve()
        final = root / VERSIONS / vid
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            _check_existing(final, vid)
        else:
            created = _materialize(build, final, vid, manifest)
    previous = read_pointer(root / CURRENT)
    switched = previous != vid
    if switched:
        switch_pointer(root / CURRENT, Path(VERSIONS) / vid)
        entry = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "version_id": vid,
                 "previous": previous, "samples": manifest.get("counts", {}).get("samples")}  # fmt: skip
        _append_log(root, entry)
    return PublishResult(
        version_id=vid,
        path=final,
        previous=previous,
        created=created,
        switched=switched,
        samples=int(manifest.get("counts", {}).get("samples", 0)),
        build_version=str(manifest.get("version")),
    )


def current_path(root: Path | Location | str) -> Path | Location | None:
    """Where the current version is read: ``root/current`` (the symlink) locally, ``root/versions/<id>`` on an
    object store (the pointer object resolved once: later reads stay in that version); None before the first
    publication."""
    root = _where(root)
    vid = read_pointer(root / CURRENT)
    return None if vid is None else version_folder(root, vid)


def version_folder(root: Path | Location | str, vid: str) -> Path | Location:
    """Where to read the version ``vid`` that ``root/current`` was found to name: ``root/current`` (the
    symlink, as readers always did) locally, ``root/versions/<vid>`` on an object store (no symlink there)."""
    root = _where(root)
    return root / CURRENT if isinstance(root, Path) else root / VERSIONS / vid


def current_manifest(root: Path | Location | str) -> dict | None:
    """The manifest of the version ``root/current`` points at, or None before the first publication."""
    where = current_path(root)
    if where is None:
        return None
    return json.loads(storage.read_bytes(where / "manifest.json"))


def version_path(root: Path | Location | str, vid: str) -> Path | Location:
    """``root/versions/<vid>``, checked: a readable error lists the published versions when it is missing."""
    if not vid or "/" in vid or vid.startswith("."):
        raise ValueError(f"invalid dataset version id {vid!r}")
    where = _where(root)
    if isinstance(where, Location):
        if not storage.exists(where / VERSIONS / vid / VERSION_JSON):
            known = [n for n in storage.listdir(where / VERSIONS) if n.startswith("ds-")]
            raise FileNotFoundError(f"dataset version {vid} is not published under {root}; "
                                    f"published: {known or 'none'}")  # fmt: skip
        return where / VERSIONS / vid
    path = Path(root).resolve() / VERSIONS / vid
    if not (path / VERSION_JSON).is_file():
        known = sorted(p.name for p in (Path(root) / VERSIONS).glob("ds-*")) if (Path(root) / VERSIONS).is_dir() else []
        raise FileNotFoundError(f"dataset version {vid} is not published under {root}; published: {known or 'none'}")
    return path
