"""`bindset sync`: estimate every stream's clock from content, compare it with the declared one.

    bindset sync RAW/ [--layout captures|ego4d|auto] [--out sync.parquet] [--write-manifest OUT/]
    bindset sync s3://bucket/raw ...

RAW on object storage is listed once and each session's files are downloaded to a scratch folder for its
pass, removed after it (``pipelines/raw_source.py``); the rows are those of a local copy of the same files.

A separate, cheap pass over decimated streams (``transforms/activity.py`` readers: video thumbnails, 8 kHz
mono audio, reduced depth/thermal frames, the IMU CSV); the build's decoding path is not involved. The
estimators are ``transforms/sync.py``'s. Per session and stream, one ``SyncRow``; ``sync.parquet`` holds
them (``SYNC_COLUMNS``). ``--write-manifest`` writes corrected captures manifests to a folder of its own,
never over RAW.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from schemas.errors import UserError
from schemas.manifest import MANIFEST_NAMES
from transforms import sync
from transforms.clockcheck import SYNC_COLUMNS, SYNC_FILE, SyncRow, sync_unit
from transforms.layouts import MediaUnit, discover
from transforms.paths import check_file

__all__ = ["SYNC_COLUMNS", "SyncResult", "rows_table", "sync_raw", "write_manifests", "write_sync_table"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    rows: list[SyncRow]
    sessions: int
    seconds: float


def rows_table(rows: list[SyncRow]) -> pa.Table:
    """``sync.parquet``'s table: SYNC_COLUMNS, then lag, tolerance and reason."""
    cols = {f: [getattr(r, f) for r in rows] for f in SyncRow.__dataclass_fields__}
    types = {"estimated_offset_s": pa.float64(), "estimated_drift_ppm": pa.float64(), "lag_s": pa.float64()}
    return pa.table({k: pa.array(v, type=types.get(k)) for k, v in cols.items()})


def _manifest_path(root: Path, unit: MediaUnit) -> str | None:
    folder = (unit.video or "").split("/")[0]
    return next((f"{folder}/{n}" for n in MANIFEST_NAMES if (root / folder / n).is_file()), None)


def _outside(root: Path, out: Path) -> None:
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise UserError(f"--write-manifest {out}: must be outside RAW ({root}); inputs are never overwritten")


def write_manifests(root: Path, out: Path, units: list[MediaUnit], rows: list[SyncRow],
                    manifests: dict[str, str] | None = None) -> list[Path]:  # fmt: skip
    """Captures manifests with each confident, disagreeing estimate in place of the declared clock.

    Written as ``OUT/<session folder>/manifest.json``; OUT must not be RAW or inside it (UserError).
    ``manifests``: ``{session: RAW-relative manifest}`` where ``root`` holds copies of some of RAW's files
    (object storage) rather than all of it; default: looked up in ``root``.
    """
    from pipelines.storage import atomic_write_json
    from schemas.manifest import load_manifest

    out = Path(out)
    if manifests is None:
        _outside(root, out)
    by = {(r.session, r.stream): r for r in rows}
    written = []
    for unit in units:
        if manifests is not None:
            rel = manifests.get(unit.session)
        else:
            rel = _manifest_path(root, unit) if unit.layout == "captures" else None
        if rel is None:
            continue
        if unit.stream_errors:  # rewriting it would drop the stream it declares invalidly; the user fixes it
            log.warning("%s: not rewritten: %s", rel, "; ".join(e.detail for e in unit.stream_errors))
            continue
        m = load_manifest(check_file(root, rel).path).model_dump(mode="json", exclude_none=True)
        for name, stream in m.get("streams", {}).items():
            r = by.get((unit.session, name))
            if r is not None and r.status in ("mismatch", "estimated") and r.estimated_offset_s is not None:
                stream["clock"] = {"offset_s": round(r.estimated_offset_s, 6),
                                   "drift_ppm": round(r.estimated_drift_ppm or 0.0, 3)}  # fmt: skip
        target = out / rel.split("/")[0] / "manifest.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_json(target, m))
    return written


def sync_raw(raw: Path | str, layout: str = "auto", params: sync.SyncParams | None = None,
             out: Path | str | None = None, write_manifest: Path | str | None = None, mode: str = "verify",
             progress=None) -> SyncResult:  # fmt: skip
    """Estimate every session's clocks; write ``out`` (sync.parquet) and corrected manifests when asked."""
    import time

    from pipelines.storage import atomic_write_parquet

    params = params or sync.SyncParams()
    t0 = time.perf_counter()
    from pipelines import storage

    if storage.is_url(raw):
        rows, units = _sync_remote(storage.location(raw), layout, params, write_manifest, mode, progress)
        if out is not None:
            atomic_write_parquet(out, rows_table(rows))
        return SyncResult(rows, units, time.perf_counter() - t0)
    root = Path(raw)
    if write_manifest is not None:
        _outside(root, Path(write_manifest))
    found = discover(root, layout)
    units = sorted((u for u in found.units if isinstance(u, MediaUnit)), key=lambda u: u.session)
    rows: list[SyncRow] = []
    for unit in units:
        rows += sync_unit(root, unit, params, mode)
        progress and progress(1)
    if out is not None:
        atomic_write_parquet(out, rows_table(rows))
    if write_manifest is not None:
        write_manifests(root, Path(write_manifest), units, rows)
    return SyncResult(rows, len(units), time.perf_counter() - t0)


def _sync_remote(raw, layout: str, params: sync.SyncParams, write_manifest: Path | str | None, mode: str,
                 progress) -> tuple[list[SyncRow], int]:  # fmt: skip
    """``sync_raw`` of RAW on object storage: one listing, then per session a scratch copy of its files (and
    its manifest, for ``write_manifest``), removed after its pass. Returns (rows, sessions)."""
    from pipelines.raw_source import RemoteRaw, discover_remote, scratch

    remote = RemoteRaw(raw)
    remote.require()
    found, objects = discover_remote(remote, layout)
    stats = remote.stats_from(objects)
    units = sorted((u for u in found.units if isinstance(u, MediaUnit)), key=lambda u: u.session)
    rows: list[SyncRow] = []
    for unit in units:
        folder_name = (unit.video or "").split("/")[0]
        manifest = next((f"{folder_name}/{n}" for n in MANIFEST_NAMES if f"{folder_name}/{n}" in objects), None)
        wanted = unit.input_paths() + ([manifest] if manifest and unit.layout == "captures" else [])
        with scratch() as folder:
            failed = remote.stage([e for rel in wanted for e in stats(rel)], folder)
            for rel in sorted(failed):  # read as missing, as a local file that cannot be opened
                log.warning("%s: cannot be read; its streams are reported as unreadable", remote.url(rel))
            unit_rows = sync_unit(folder, unit, params, mode)
            if write_manifest is not None and manifest:
                write_manifests(folder, Path(write_manifest), [unit], unit_rows, {unit.session: manifest})
        rows += unit_rows
        progress and progress(1)
    return rows, len(units)


def rows_as_dicts(rows: list[SyncRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def write_sync_table(data: Path | str, unit_folders: list[Path]) -> tuple[Path, int]:
    """``DATA/sync.parquet`` from the units' ``sync.json`` files (units without one add no rows): its path
    and row count. Written by the commit (pipelines/commit.py), which records it in the manifest."""
    from pipelines.storage import atomic_write_parquet

    rows = []
    for folder in unit_folders:
        f = Path(folder) / SYNC_FILE
        if f.is_file():
            rows += [SyncRow(**d) for d in json.loads(f.read_text())]
    rows.sort(key=lambda r: (r.session, r.stream))
    return atomic_write_parquet(Path(data) / "sync.parquet", rows_table(rows)), len(rows)
