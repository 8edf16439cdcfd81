"""`bindset validate`: the data-quality gate, a Great Expectations Checkpoint over a built dataset.

    bindset validate DATA/

Runs the contracts of ``schemas/expectations.py`` over the published index and rejects and over small
tables derived here (the tars read back, sessions vs splits, manifest counts). Writes, under DATA/quality/:
``validation.json`` (every expectation's outcome), ``data_docs/index.html`` (GX Data Docs), ``gx/`` (the GX
project: suites, validation definitions, the checkpoint, raw results) and ``tables/`` (the derived tables
GX read). The outcome goes into ``manifest.json`` under "validation"; a failing dataset is kept on disk but
marked ``published: false``. Each run starts the GX project afresh, so it reflects the data as it is now.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.dataset import DatasetChanged, committed_manifest
from pipelines.lock import manifest_lock
from pipelines.storage import Location
from schemas.expectations import (
    BUILD,
    BUILD_COLUMNS,
    CLIPS,
    CLIPS_COLUMNS,
    COLUMNS,
    COLUMNS_COLUMNS,
    INDEX,
    PAIRED_STREAMS,
    REASONS,
    REASONS_COLUMNS,
    REJECTS,
    ROW_ID,
    SESSIONS,
    SESSIONS_COLUMNS,
    SHARDS,
    SHARDS_COLUMNS,
    STILL_LAYOUTS,
    QualityThresholds,
    build_suites,
)
from schemas.reasons import RejectReason
from schemas.tables import MEMBERS, member_column

QUALITY = "quality"
GX_DIR = "gx"
DOCS_DIR = "data_docs"
TABLES_DIR = "tables"
VALIDATION_JSON = "validation.json"
SITE = "local_site"
CHECKPOINT = "bindset_quality"
EXAMPLES = 20  # failing values and row ids kept per expectation


@dataclass(frozen=True)
class ExpectationResult:
    suite: str
    expectation: str  # GX type, e.g. "expect_column_values_to_be_between"
    column: str | None  # "A,B" for a column pair; None for a table-level expectation
    rule: str  # the contract in words (the expectation's meta)
    kind: str  # "structure" (exact) or "quality" (mostly)
    success: bool
    observed: Any  # GX's observed_value, or {"unexpected": n, "of": m, "values": [...]}
    failing_rows: list[str] = field(default_factory=list)  # ids (key, shard, session...) of failing rows

    def line(self) -> str:
        where = f"({self.column})" if self.column else ""
        rows = f" e.g. {', '.join(self.failing_rows[:3])}" if self.failing_rows else ""
        return f"{self.suite}: {self.expectation}{where} [{self.rule}] observed {_short(self.observed)}{rows}"


@dataclass(frozen=True)
class ValidationOutcome:
    passed: bool
    results: list[ExpectationResult]
    data: Path | Location  # Locations when DATA is on object storage
    validation_json: Path | Location
    docs_index: Path | Location
    gx_root: Path | Location
    manifest: Path | Location

    @property
    def failed(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]

    def summary_lines(self) -> list[str]:
        n, bad = len(self.results), self.failed
        head = "PASSED" if self.passed else "FAILED"
        lines = [f"validate: {head}: {n - len(bad)}/{n} expectations met; dataset published: {self.passed}"]
        lines += [f"  x {r.line()}" for r in bad]
        lines += [f"  results {self.validation_json}", f"  data docs {self.docs_index}"]
        return lines


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------- derived tables


@dataclass(frozen=True)
class _ShardCount:
    samples: int  # runs of one key, as a WebDataset reader groups them
    members: int
    unmatched: int  # members the index has no hash for, or whose bytes hash differently


def _read_shard(path: Path | Location, hashes: dict[tuple[str, str], str], verify: bool) -> _ShardCount:
    samples = members = unmatched = 0
    last = None
    with storage.TarReader(path) as tar:
        for m in tar.members():
            members += 1
            if m.key != last:
                samples, last = samples + 1, m.key
            want = hashes.get((m.key, m.suffix))
            if want is None:
                unmatched += 1
            elif verify:
                try:
                    unmatched += hashlib.sha256(tar.read(m)).hexdigest() != want
                except EOFError:  # the tar ends inside this member: its bytes are not the indexed ones
                    unmatched += 1
    return _ShardCount(samples, members, unmatched)


def _shards_table(
    data: Path, index: pd.DataFrame, verify_hashes: bool, shards_at: Location | None = None
) -> pd.DataFrame:
    shards_dir: Path | Location
    if shards_at is not None and not shards_at.is_local:  # on object storage: listed and read through the seam
        shards_dir = shards_at
        sizes_text = storage.read_text(shards_at / "sizes.json") if storage.exists(shards_at / "sizes.json") else ""
        sizes = json.loads(sizes_text) if sizes_text else {}
        on_disk = {n for n in storage.listdir(shards_at) if n.endswith(".tar")}
    else:
        shards_dir = data / "shards"
        sizes_path = shards_dir / "sizes.json"
        sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
        on_disk = {p.name for p in shards_dir.glob("*.tar")}
    names = sorted(on_disk | set(index["shard"].dropna()) | set(sizes))
    cols = [member_column(m) for m in MEMBERS]
    rows = []
    for name in names:
        part = index[index["shard"] == name]
        hashes = {
            (key, m): sha
            for key, *shas in part[["key", *cols]].itertuples(index=False)
            for m, sha in zip(MEMBERS, shas, strict=True)
            if isinstance(sha, str)
        }
        count = _read_shard(shards_dir / name, hashes, verify_hashes) if name in on_disk else _ShardCount(0, 0, 0)
        rows.append((name, count.samples, len(part), int(sizes.get(name, -1)), count.members,
                     int(part[cols].notna().to_numpy().sum()), count.unmatched))  # fmt: skip
    return pd.DataFrame(rows, columns=list(SHARDS_COLUMNS)).astype({c: "int64" for c in SHARDS_COLUMNS[1:]})


def _clips_table(index: pd.DataFrame) -> pd.DataFrame:
    still = index["layout"].isin(STILL_LAYOUTS)
    duration = (index["clip_end_s"] - index["clip_start_s"]).where(~still)
    out = pd.DataFrame(
        {
            "key": index["key"],
            "session": index["session"],
            "split": index["split"],
            "shard": index["shard"],
            "shard_split": index["shard"].str.split("-", n=1).str[0],  # (partition() fails on an empty index)
            "layout": index["layout"],
            "clip_duration_s": duration.astype("float64"),
            "clip_start_s": index["clip_start_s"].astype("float64"),
            "sync_err_video_ms": _column(index, "sync_err_video_ms"),
        }
    )
    # pairing errors in each stream's own frame periods (IMU: its sample period); null where either is absent
    for stream in PAIRED_STREAMS:
        err = _column(index, f"sync_err_{stream}_ms")
        if stream == "imu":
            period = 1000.0 / _column(index, "imu_rate_hz")
        else:
            period = _column(index, f"{stream}_frame_period_ms")
        out[f"sync_{stream}_periods"] = (err / period.where(period > 0)).astype("float64")
    return out[list(CLIPS_COLUMNS)]


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A float column, all null when the table predates it (the index suite reports the schema mismatch)."""
    if name in df:
        return df[name].astype("float64")
    return pd.Series(float("nan"), index=df.index, dtype="float64")


def _reasons_table(manifest: dict, rejects: pd.DataFrame, t: QualityThresholds) -> pd.DataFrame:
    """One row per reject reason code: how many windows it rejected whole or in one modality, and its bound."""
    planned = int(manifest.get("counts", {}).get("windows_planned", 0))
    keyed, modality = rejects["key"].notna(), rejects["modality"].notna()
    codes = sorted({r.value for r in RejectReason} | set(rejects["reason"].dropna()))
    rows = []
    for code in codes:
        mine = rejects["reason"] == code
        window_rows = int((mine & keyed & ~modality).sum())
        modality_rows = int((mine & keyed & modality).sum())
        rate = (window_rows + modality_rows) / planned if planned else 0.0
        rows.append((code, window_rows, modality_rows, int((mine & ~keyed).sum()), rate, t.reason_rate(code)))
    return pd.DataFrame(rows, columns=list(REASONS_COLUMNS))


def _sessions_table(index: pd.DataFrame) -> pd.DataFrame:
    g = index.groupby("session", sort=True)["split"]
    out = pd.DataFrame(
        {
            "n_splits": g.nunique(),
            "splits": g.agg(lambda s: ",".join(sorted(set(s.dropna())))),
            "samples": g.size(),
        }
    ).reset_index()
    return out[list(SESSIONS_COLUMNS)].astype({"n_splits": "int64", "samples": "int64"})


def _build_table(manifest: dict, index: pd.DataFrame, rejects: pd.DataFrame) -> pd.DataFrame:
    counts = manifest.get("counts", {})
    planned = int(counts.get("windows_planned", 0))
    samples = int(counts.get("samples", 0))
    window_rejects = int(counts.get("window_rejects", 0))
    row = {
        "version": str(manifest.get("version", "")),
        "windows_planned": planned,
        "samples": samples,
        "window_rejects": window_rejects,
        "reject_rows": int(counts.get("reject_rows", 0)),
        "index_rows": len(index),
        "window_reject_rows": int((rejects["key"].notna() & rejects["modality"].isna()).sum()),
        "rejects_rows": len(rejects),
        "accounted": samples + window_rejects,
        "reject_rate": window_rejects / planned if planned else 0.0,
    }
    return pd.DataFrame([row], columns=list(BUILD_COLUMNS))


def _columns_table(tables: dict[str, pa.Table]) -> pd.DataFrame:
    rows = []
    for name, table in tables.items():
        for f in table.schema:
            if pa.types.is_floating(f.type):
                finite = pc.is_finite(table.column(f.name))  # null stays null and is not counted
                rows.append((f"{name}.{f.name}", int(pc.sum(pc.invert(finite)).as_py() or 0)))
    return pd.DataFrame(rows, columns=list(COLUMNS_COLUMNS)).astype({"nonfinite": "int64"})


def derive_tables(
    data: Path,
    verify_hashes: bool = True,
    thresholds: QualityThresholds | None = None,
    *,
    shards_at: Location | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table the suites run over, by suite name, as GX will read them.

    ``thresholds`` gives the per-reason rate bounds the ``reasons`` table carries (default: the defaults).
    ``shards_at``: where the shards are when not in ``data/shards`` (an object-store prefix; ``data`` then
    holds local copies of the manifest, index and rejects).
    """
    data = Path(data)
    thresholds = thresholds or QualityThresholds()
    index_pa, rejects_pa = pq.read_table(data / "index.parquet"), pq.read_table(data / "rejects.parquet")
    index, rejects = pd.read_parquet(data / "index.parquet"), pd.read_parquet(data / "rejects.parquet")
    manifest = json.loads((data / "manifest.json").read_text())
    return {
        INDEX: index,
        REJECTS: rejects,
        CLIPS: _clips_table(index),
        SHARDS: _shards_table(data, index, verify_hashes, shards_at),
        SESSIONS: _sessions_table(index),
        BUILD: _build_table(manifest, index, rejects),
        REASONS: _reasons_table(manifest, rejects, thresholds),
        COLUMNS: _columns_table({INDEX: index_pa, REJECTS: rejects_pa}),
    }


# ------------------------------------------------------------------------------------------ GX run

_SITE_CONFIG = {
    "class_name": "SiteBuilder",
    "show_how_to_buttons": False,
    # relative to the GX project root (quality/gx): the site sits beside it, in quality/data_docs
    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": f"../{DOCS_DIR}/"},
    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
}


def _run_checkpoint(data: Path, quality: Path, suites: dict, run_name: str):
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for sub in (GX_DIR, DOCS_DIR):
        shutil.rmtree(quality / sub, ignore_errors=True)
    ctx = gx.get_context(mode="file", project_root_dir=str(quality))
    ctx.enable_analytics(False)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    ctx.variables.save()
    ctx.update_data_docs_site(SITE, _SITE_CONFIG)

    # Two sources, each globbing only its own folder: DATA's top level holds the published tables.
    published = ctx.data_sources.add_pandas_filesystem("dataset", base_directory=data)
    derived = ctx.data_sources.add_pandas_filesystem("derived", base_directory=quality / TABLES_DIR)
    definitions = []
    for name, suite in suites.items():
        source = published if name in (INDEX, REJECTS) else derived
        asset = source.add_parquet_asset(name, glob_directive="*.parquet")
        batch = asset.add_batch_definition_path(name, path=f"{name}.parquet")
        suite = ctx.suites.add(suite)
        definitions.append(ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite)))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=CHECKPOINT,
            validation_definitions=definitions,
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=[SITE])],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES},
        )
    )
    # GX logs through `logging` and may print; neither belongs on the CLI's stdout.
    with contextlib.redirect_stdout(sys.stderr):
        return checkpoint.run(run_id=RunIdentifier(run_name=run_name))


def _observed(result: dict) -> Any:
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_count" in result:
        return {
            "unexpected": result["unexpected_count"],
            "of": result.get("element_count"),
            "missing": result.get("missing_count", 0),
            "values": result.get("partial_unexpected_list", [])[:EXAMPLES],
        }
    return result


def _collect(checkpoint_result, tables: dict[str, pd.DataFrame]) -> list[ExpectationResult]:
    out = []
    for suite_result in checkpoint_result.run_results.values():
        suite = suite_result.suite_name
        ids = tables[suite].get(ROW_ID[suite])
        for r in suite_result.results:
            cfg = r.expectation_config
            kw = cfg.kwargs
            column = kw.get("column") or (f"{kw['column_A']},{kw['column_B']}" if "column_A" in kw else None)
            result = _strict(json.loads(json.dumps(r.result or {}, default=_jsonable)))
            failing = []
            if not r.success and ids is not None:
                rows = [i for i in result.get("partial_unexpected_index_list") or [] if isinstance(i, int)]
                failing = [str(ids.iloc[i]) if i < len(ids) else str(i) for i in rows[:EXAMPLES]]
            if r.exception_info and r.exception_info.get("raised_exception"):
                result = {"exception": r.exception_info.get("exception_message")}
            meta = cfg.meta or {}
            out.append(
                ExpectationResult(suite=suite, expectation=cfg.type, column=column, rule=meta.get("rule", ""),
                                  kind=meta.get("kind", ""), success=bool(r.success), observed=_observed(result),
                                  failing_rows=failing)
            )  # fmt: skip
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _strict(value: Any) -> Any:
    """NaN and inf (GX reports missing values as NaN) become null: validation.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def _atomic_json(path: Path, obj: dict) -> None:
    storage.atomic_write_json(path, _strict(obj), default=_jsonable)


# ------------------------------------------------------------------------------------------- entry


def validate(
    data: Path | str, thresholds: QualityThresholds | None = None, *, verify_hashes: bool = True
) -> ValidationOutcome:
    """Run the data contracts over DATA and record the outcome in its manifest.

    Bad data is an outcome (``passed`` false), not an exception. Starts from a committed manifest, waiting
    for a commit in progress (``pipelines.dataset.committed_manifest``); a folder without one raises
    DatasetNotCommitted (a UserError).
    ``verify_hashes`` re-hashes every tar member against the index (reads all shard bytes).
    ``data`` may be an ``s3://``/``gs://`` URL: see ``_validate_remote``.
    """
    thresholds = thresholds or QualityThresholds()
    if storage.is_url(data):
        return _validate_remote(storage.location(data), thresholds, verify_hashes)
    data = Path(data).resolve()
    manifest_path = data / "manifest.json"
    opened = committed_manifest(data)  # the version validated: checked again before the verdict
    passed, results, verdict = _check(data, thresholds, verify_hashes)
    # re-read: the manifest is the build's; only "validation" is ours. Under the manifest lock, and only when
    # no build committed another version meanwhile (pipelines/lock.py: manifest_lock).
    with manifest_lock(data):
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if any(manifest.get(k) != opened.get(k) for k in ("version", "counts")):
            raise DatasetChanged(f"{data}: a build committed another version during validation; validate again")
        manifest["validation"] = verdict
        _atomic_json(manifest_path, manifest)
    return _outcome(passed, results, data, manifest_path)


def _validate_remote(loc: Location, thresholds: QualityThresholds, verify_hashes: bool) -> ValidationOutcome:
    """``validate`` of a dataset on object storage.

    The manifest, index and rejects are copied to a local scratch folder (GX reads local files), the shards
    are read in place by byte range, the GX run writes DATA/quality/ locally, and its files are uploaded
    to ``loc/quality/``. The verdict goes into the manifest object with one PUT, and only into the version
    validated: the manifest is re-read with its version and replaced only while it is that version
    (``storage.put_if_unchanged``: ``If-Match`` on the ETag on S3, ``ifGenerationMatch`` on GCS), so a commit that
    lands between that read and the PUT makes the PUT fail (``DatasetChanged``) instead of being overwritten.
    """
    opened = committed_manifest(loc)
    with tempfile.TemporaryDirectory(prefix="bindset-validate-") as tmp:
        local = Path(tmp) / "data"
        for name in ("manifest.json", "index.parquet", "rejects.parquet"):
            storage.download(loc / name, local / name)
        passed, results, verdict = _check(local, thresholds, verify_hashes, shards_at=loc / "shards")
        for path in sorted((local / QUALITY).rglob("*")):
            if path.is_file():
                storage.upload(path, loc / path.relative_to(local).as_posix())
    changed = DatasetChanged(f"{loc}: a build committed another version during validation; validate again")
    try:
        body, version = storage.read_versioned(loc / "manifest.json")
    except FileNotFoundError:  # a commit is under way (it deletes the manifest first)
        raise changed from None
    manifest = json.loads(body)
    if any(manifest.get(k) != opened.get(k) for k in ("version", "counts")):
        raise changed
    manifest["validation"] = verdict
    text = json.dumps(_strict(manifest), indent=2, sort_keys=True, allow_nan=False, default=_jsonable) + "\n"
    if not storage.put_if_unchanged(loc / "manifest.json", text.encode("utf-8"), version):
        raise changed  # a commit replaced or removed the manifest between the read and this PUT
    return _outcome(passed, results, loc, loc / "manifest.json")


def _outcome(passed: bool, results, data, manifest) -> ValidationOutcome:
    """Where a validation of ``data`` (a folder or an object-store location) left its verdict and reports."""
    quality = data / QUALITY
    return ValidationOutcome(
        passed=passed,
        results=results,
        data=data,
        validation_json=quality / VALIDATION_JSON,
        docs_index=quality / DOCS_DIR / "index.html",
        gx_root=quality / GX_DIR,
        manifest=manifest,
    )


def _check(
    data: Path, thresholds: QualityThresholds, verify_hashes: bool, shards_at: Location | None = None
) -> tuple[bool, list[ExpectationResult], dict]:
    """Run the suites over local DATA (shards at ``shards_at`` when given); write DATA/quality/.

    Returns (passed, every result, the manifest's "validation" entry).
    """
    manifest_path = data / "manifest.json"
    quality = data / QUALITY
    tables_dir = quality / TABLES_DIR
    tables_dir.mkdir(parents=True, exist_ok=True)

    tables = derive_tables(data, verify_hashes, thresholds, shards_at=shards_at)
    for name, df in tables.items():
        if name not in (INDEX, REJECTS):
            df.to_parquet(tables_dir / f"{name}.parquet", index=False)
    manifest = json.loads(manifest_path.read_text())
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:  # quiet unless someone configured it
        gx_logger.setLevel(logging.ERROR)
    checkpoint_result = _run_checkpoint(data, quality, build_suites(thresholds), str(manifest.get("version", "")))
    results = _collect(checkpoint_result, tables)
    passed = bool(checkpoint_result.success) and all(r.success for r in results)

    failed = [{"suite": r.suite, "expectation": r.expectation, "column": r.column, "rule": r.rule}
              for r in results if not r.success]  # fmt: skip
    docs_index = quality / DOCS_DIR / "index.html"
    _atomic_json(
        quality / VALIDATION_JSON,
        {
            "passed": passed,
            "dataset_version": manifest.get("version"),
            "validated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "great_expectations": metadata.version("great_expectations"),
            "thresholds": thresholds.to_dict(),
            "verify_hashes": verify_hashes,
            "statistics": {"expectations": len(results), "failed": len(failed)},
            "results": [asdict(r) for r in results],
            "data_docs": docs_index.relative_to(data).as_posix(),
        },
    )
    verdict = {
        "status": "passed" if passed else "failed",
        "published": passed,
        "failed_expectations": failed,
        "thresholds": thresholds.to_dict(),
        "expectations": len(results),
        "report": (quality / VALIDATION_JSON).relative_to(data).as_posix(),
        "data_docs": docs_index.relative_to(data).as_posix(),
    }
    return passed, results, verdict


__all__ = ["validate", "ValidationOutcome", "ExpectationResult", "QualityThresholds", "derive_tables"]
