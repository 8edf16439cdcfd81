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

BUILD = "build"
VERSIONS = "versions"
CURRENT = "current"
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
    path: Path  # DATA_ROOT/versions/<version-id>
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


def _sha256_files(root: Path, names: tuple[str, ...]) -> str:
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


def version_id(data: Path | str) -> str:
    """Content id of a committed dataset folder: ``ds-`` + 16 hex digits of the content files' sha256."""
    return "ds-" + _sha256_files(Path(data), CONTENT_FILES)[:16]


def read_pointer(link: Path | str) -> str | None:
    """The name of the folder a pointer designates (``versions/ds-…`` -> ``ds-…``), or None without one."""
    link = Path(link)
    if not link.is_symlink():
        if link.exists():
            raise ValueError(f"{link} exists but is not a symlink; move it away so it can be a version pointer")
        return None
    return Path(os.readlink(link)).name


def switch_pointer(link: Path | str, target: Path | str) -> None:
    """Point ``link`` at ``target`` (relative to the link's folder) atomically: a new symlink renamed over it."""
    link = Path(link)
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
        record = {
            "version_id": vid,
            "build_version": manifest.get("version"),
            "samples": manifest.get("counts", {}).get("samples"),
            "published_from": str(build),
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        storage.write_synced(tmp / VERSION_JSON, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        if version_id(tmp) != vid:  # the build folder changed under us: never publish a mix
            raise RuntimeError(f"{build} changed while it was being published; rerun the publication")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # False: a concurrent publisher of the same content won the rename (its folder records the version)
    return storage.commit_new_dir(tmp, final)


def _check_existing(final: Path, vid: str) -> None:
    try:
        recorded = json.loads((final / VERSION_JSON).read_text()).get("version_id")
    except (OSError, ValueError):
        recorded = None
    if recorded != vid:
        raise RuntimeError(f"{final} exists but does not record version {vid} in {VERSION_JSON}; remove it by hand")


def publishable_manifest(build: Path | str) -> dict:
    """The build's manifest, if its last validation passed; otherwise PublishRefused says why."""
    path = Path(build) / "manifest.json"
    if not path.is_file():
        raise PublishRefused(f"{path}: no committed build to publish")
    manifest = json.loads(path.read_text())
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


def publish_version(root: Path | str, build: Path | str) -> PublishResult:
    """Publish a validated build as ``root/versions/<id>`` and point ``root/current`` at it.

    Idempotent: the same content gets the same id; an existing version folder is reused, and the pointer
    only moves (and the log only grows) when the id differs from the current one.
    """
    root, build = Path(root).resolve(), Path(build).resolve()
    manifest = publishable_manifest(build)
    vid = version_id(build)
    final = root / VERSIONS / vid
    final.parent.mkdir(parents=True, exist_ok=True)
    created = False
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
        with open(root / PUBLISH_LOG, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
    return PublishResult(
        version_id=vid,
        path=final,
        previous=previous,
        created=created,
        switched=switched,
        samples=int(manifest.get("counts", {}).get("samples", 0)),
        build_version=str(manifest.get("version")),
    )


def current_manifest(root: Path | str) -> dict | None:
    """The manifest of the version ``root/current`` points at, or None before the first publication."""
    link = Path(root) / CURRENT
    if read_pointer(link) is None:
        return None
    return json.loads((link / "manifest.json").read_text())


def version_path(root: Path | str, vid: str) -> Path:
    """``root/versions/<vid>``, checked: a readable error lists the published versions when it is missing."""
    if not vid or "/" in vid or vid.startswith("."):
        raise ValueError(f"invalid dataset version id {vid!r}")
    path = Path(root).resolve() / VERSIONS / vid
    if not (path / VERSION_JSON).is_file():
        known = sorted(p.name for p in (Path(root) / VERSIONS).glob("ds-*")) if (Path(root) / VERSIONS).is_dir() else []
        raise FileNotFoundError(f"dataset version {vid} is not published under {root}; published: {known or 'none'}")
    return path
