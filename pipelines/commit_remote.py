"""The commit on object storage (issue 17, point 2): units' results under ``DATA/_work/units/`` become the
dataset, with ``manifest.json`` written last as the commit point.

There is no rename and no hard link on an object store, so the commit runs in two halves:

1. **Locally, in a temporary folder** (under the system temp, removed afterwards): each unit's small files
   (its index and rejects tables, ``pipelines/unit_tables.py``, and ``sync.json``) are fetched, and
   ``pipelines.commit._commit``, the local commit's own code, writes ``index.parquet``, ``rejects.parquet``,
   ``shards/sizes.json``, ``sync.parquet`` and ``manifest.json`` there, with shard placement recorded instead
   of linked. Same code, same inputs: the bytes are those of a local build of the same inputs.
2. **On the store**, in this order: ``manifest.json`` is deleted (readers now see "not committed" and wait:
   ``pipelines.dataset``); each shard ``shards/{split}-NNNNNN.tar`` is copied server-side from its unit part
   (S3 CopyObject: no bytes through this machine); the tables and ``sizes.json`` are uploaded (one PUT each);
   ``manifest.json`` is uploaded with one PUT. A kill anywhere before that leaves no manifest: never a
   mix of two builds. Then **orphans** (``shards/*.tar`` of an older build that ``sizes.json`` does not name)
   are deleted; a kill before that leaves them, unnamed by the manifest and so never read, and the next
   commit deletes them.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pipelines import storage
from pipelines.commit import CommitResult, _commit
from pipelines.storage import Location
from pipelines.unit_tables import TABLE_FILES
from transforms.config import BuildConfig
from transforms.layouts import Discovery
from transforms.records import UnitSummary

log = logging.getLogger(__name__)

#: the small files of a unit that the commit reads (its tar parts stay on the store)
_UNIT_TABLES = (*TABLE_FILES, "sync.json")
#: units whose small files are fetched in one concurrent batch
_BATCH = 256
#: the dataset's files besides shards and the manifest, uploaded before the manifest
_TABLES = ("index.parquet", "rejects.parquet", "sync.parquet", "shards/sizes.json")


def _fetch_unit_tables(units: list[tuple[str, Location, UnitSummary]],
                       into: Path) -> list[tuple[str, Path, UnitSummary]]:  # fmt: skip
    """Copy each unit's small files to ``into/<unit>/``: the local mirror the commit code reads."""
    out = []
    for i in range(0, len(units), _BATCH):
        batch = units[i : i + _BATCH]
        urls = [(unit_id, folder / name) for unit_id, folder, _ in batch for name in _UNIT_TABLES]
        scheme = batch[0][1].scheme
        fs = storage.filesystem(scheme)
        # one concurrent round of GETs; a unit without clock rows has no sync.json (omitted, not an error)
        got = storage._remote(batch[0][1], lambda u=urls, fs=fs: fs.cat([loc.path for _, loc in u], on_error="omit"))
        for unit_id, folder, summary in batch:
            local = into / unit_id
            local.mkdir(parents=True)
            for name in _UNIT_TABLES:
                data = got.get((folder / name).path)
                if data is not None:
                    (local / name).write_bytes(data)
                elif name != "sync.json":
                    raise FileNotFoundError(f"{folder / name}: a finished unit's file is missing")
            out.append((unit_id, local, summary))
    return out


def commit_remote(data: Location, discovery: Discovery, units: list[tuple[str, Location, UnitSummary]],
                  cfg: BuildConfig, code_version: str, input_fingerprints: dict[str, str]) -> CommitResult:  # fmt: skip
    """Publish the units' results (folders on the store) as the dataset at ``data``; the caller holds the lease.

    Returns the same ``CommitResult`` as ``pipelines.commit.commit``. Raises ``StorageError`` (one line,
    naming the URL) when the store refuses; the dataset then has no manifest until a build commits again.
    """
    fs = storage.filesystem(data.scheme)
    with tempfile.TemporaryDirectory(prefix="bindset-commit-") as tmp:
        stage = Path(tmp) / "data"
        stage.mkdir()
        mirror = _fetch_unit_tables(units, Path(tmp) / "units")
        folders = {unit_id: folder for unit_id, folder, _ in units}
        copies: list[tuple[Location, Location]] = []  # (unit part, shard)

        def place(src: Path, dst: Path) -> None:
            copies.append((folders[src.parent.name] / src.name, data / "shards" / dst.name))

        result = _commit(stage, discovery, mirror, cfg, code_version, input_fingerprints, place=place)

        storage.delete(data / "manifest.json")  # from here on readers see no committed dataset
        if copies:
            storage._remote(data, lambda: fs.copy([s.path for s, _ in copies], [d.path for _, d in copies]))
        for name in _TABLES:
            storage.upload(stage / name, data / name)
        storage.upload(stage / "manifest.json", data / "manifest.json")  # the commit point: one PUT

    keep = {d.name for _, d in copies}
    orphans = [n for n in storage.listdir(data / "shards") if n.endswith(".tar") and n not in keep]
    for name in orphans:
        storage.delete(data / "shards" / name)
    if orphans:
        log.info("deleted %d shard(s) of an older build: %s", len(orphans), ", ".join(orphans[:10]))
    return result
