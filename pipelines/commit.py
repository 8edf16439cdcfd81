"""Publishing a build: unit results become DATA/shards, index.parquet, rejects.parquet, manifest.json.

The manifest is removed first and written last, so a reader never takes a half-committed dataset for a
finished one; ``pipelines/dataset.py`` is the readers' side of this protocol. Shards are hard links to the
unit parts (no copy), each placed with an atomic rename.
Shard names are assigned in sorted unit order, so the same inputs always give the same names.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import storage, work
from pipelines.lock import manifest_lock
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA
from transforms.config import BuildConfig
from transforms.layouts import Discovery
from transforms.records import Reject, UnitSummary

SPLITS = ("train", "val")


@dataclass(frozen=True)
class CommitResult:
    samples: int
    windows_planned: int
    window_rejects: int
    rejects: int
    shards: dict[str, int]
    reasons: dict[str, int]
    version: str


def commit(
    data: Path,
    discovery: Discovery,
    units: list[tuple[str, Path, UnitSummary]],
    cfg: BuildConfig,
    code_version: str,
    input_fingerprints: dict[str, str],
) -> CommitResult:
    """Publish the units' results as DATA's dataset (the caller holds DATA's build lock).

    Holds the manifest lock throughout, so ``validate`` never writes its verdict into a half-committed
    dataset; readers use ``pipelines.dataset.open_dataset``, which detects a commit that ran under them.
    """
    with manifest_lock(data):
        return _commit(data, discovery, units, cfg, code_version, input_fingerprints)


def _commit(data: Path, discovery: Discovery, units: list[tuple[str, Path, UnitSummary]], cfg: BuildConfig,
            code_version: str, input_fingerprints: dict[str, str]) -> CommitResult:  # fmt: skip
    shards_dir = data / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    (data / "manifest.json").unlink(missing_ok=True)

    # final shard names, in (split, unit, part) order
    rename: dict[tuple[str, str], str] = {}
    counters = dict.fromkeys(SPLITS, 0)
    sizes: dict[str, int] = {}
    for split in SPLITS:
        for unit_id, folder, summary in units:
            for part in summary.parts:
                if part["split"] != split:
                    continue
                name = f"{split}-{counters[split]:06d}.tar"
                counters[split] += 1
                rename[(unit_id, part["file"])] = name
                sizes[name] = part["samples"]
                storage.place_file(folder / part["file"], shards_dir / name)
    for stale in shards_dir.glob("*.tar"):
        if stale.name not in sizes:
            stale.unlink()

    index_parts, reject_parts = [], []
    for unit_id, folder, _ in units:
        idx = pq.read_table(folder / "index.parquet", schema=INDEX_SCHEMA)
        if idx.num_rows:
            mapping = {local: final for (u, local), final in rename.items() if u == unit_id}
            shard = pa.array([mapping[s] for s in idx.column("shard").to_pylist()], pa.string())
            idx = idx.set_column(idx.schema.get_field_index("shard"), INDEX_SCHEMA.field("shard"), shard)
        index_parts.append(idx)
        reject_parts.append(pq.read_table(folder / "rejects.parquet", schema=REJECTS_SCHEMA))
    found = [Reject(r.source, r.reason, r.detail, r.session).row() for r in discovery.rejects]
    reject_parts.insert(0, pa.Table.from_pylist(found, schema=REJECTS_SCHEMA))
    index = pa.concat_tables(index_parts) if index_parts else INDEX_SCHEMA.empty_table()
    rejects = pa.concat_tables(reject_parts)
    # order the index as the shards are: split, then shard, then position (stable)
    if index.num_rows:
        order = pc.sort_indices(index, sort_keys=[("shard", "ascending")])
        index = index.take(order)

    storage.atomic_write_parquet(data / "index.parquet", index.combine_chunks())
    storage.atomic_write_parquet(data / "rejects.parquet", rejects.combine_chunks())
    storage.atomic_write_bytes(shards_dir / "sizes.json", (json.dumps(sizes, indent=1, sort_keys=True) + "\n").encode())

    reasons = Counter(rejects.column("reason").to_pylist())
    summaries = [s for _, _, s in units]
    # the units' outcomes too: a unit that failed transiently and succeeded on a retry has the same inputs,
    # config and code but other content, and readers' caches (training's image cache) are keyed on the version
    outcomes = [[s.unit_id, s.samples, s.failed, s.reasons] for s in summaries]
    version = hashlib.sha256(
        json.dumps([input_fingerprints, cfg.to_dict(), code_version, outcomes], sort_keys=True).encode()
    ).hexdigest()[:16]
    result = CommitResult(
        samples=index.num_rows,
        windows_planned=sum(s.windows_planned for s in summaries),
        window_rejects=sum(s.window_rejects for s in summaries),
        rejects=rejects.num_rows,
        shards={k: v for k, v in counters.items()},
        reasons=dict(sorted(reasons.items())),
        version=version,
    )
    manifest = {
        "version": version,
        "layout": discovery.layout,
        "code_version": code_version,
        "libraries": work.library_versions(),  # what the unit fingerprints hold too
        "config": cfg.to_dict(),
        "inputs": dict(sorted(input_fingerprints.items())),
        "counts": {
            "units": len(units),
            "units_failed": sum(1 for s in summaries if s.failed),
            "windows_planned": result.windows_planned,
            "samples": result.samples,
            "window_rejects": result.window_rejects,
            "reject_rows": result.rejects,
            "samples_by_split": dict(Counter(index.column("split").to_pylist())),
            "shards": result.shards,
        },
        "rejects_by_reason": result.reasons,
        "validation": {"status": "not_run", "published": False},
    }
    storage.atomic_write_bytes(data / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return result
