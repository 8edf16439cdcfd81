"""The `bindset` command line: thin wrappers over importable functions.

bindset synth RAW/ --sessions 8 --seconds 30 --seed 0
bindset sync RAW/ [--layout captures|ego4d] [--out sync.parquet] [--write-manifest OUT/]
bindset build RAW/ DATA/ [--config FILE] [--engine beam|ray|local] [--no-validate] [runner flags]
bindset validate DATA/ [--thresholds FILE]
bindset report DATA/
bindset train DATA/ RUN/ [--preset tiny|proof|imagebind] [--config FILE] [--workers N] [--gpu]
bindset embed DATA/ RUN/ EMB/
bindset search EMB/ --text "..." | --audio x.wav | --image y.jpg [--to depth] [-k 5]
bindset eval EMB/ [--split val]
bindset schema [--out FILE]
bindset --version

Exit codes: 0 success; 1 the quality gate failed; 2 a usage, config or input error (one line naming the flag,
key or path); 3 an unexpected error (one line and the log file's path; the traceback is in the log).
Every command writes a log file (bindset/logs.py says where); -v / -q change what the console shows.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bindset.logs import EXIT_GATE, EXIT_OK, EXIT_USAGE, OneLineParser
from schemas.config import add_config_flags, given_flags, merge
from schemas.errors import UserError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- commands


def _need(path: Path | None, what: str, kind: str = "any") -> None:
    """A user-given input path that must exist (exit 2 naming it, before any work starts)."""
    if path is None:
        return
    p = Path(path)
    ok = p.is_dir() if kind == "dir" else p.is_file() if kind == "file" else p.exists()
    if not ok:
        noun = {"dir": "folder", "file": "file"}.get(kind, "path")
        raise UserError(f"{what} {p}: no such {noun}")


def _location(text: str) -> Path | str:
    """argparse type of a location: a Path, or an s3:// / gs:// URL kept as text (pipelines/storage.py)."""
    from pipelines.storage import cli_location

    try:
        return cli_location(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (``-k``, ``--workers``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _need_gpu(args: argparse.Namespace) -> None:
    """``--gpu`` where no GPU is (exit 2 before any work): on this machine for the local engine or a local Ray
    instance; an attached cluster's GPUs are checked once attached (pipelines/ray_start.require_gpus)."""
    if not args.gpu or (args.engine == "ray" and args.ray_address):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("--gpu: no CUDA GPU is usable on this machine (torch.cuda.is_available() is False); "
                        "run without --gpu")  # fmt: skip


def _progress(run, desc: str, unit: str, quiet: bool):
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=run.console, delay=0.5)


def _cmd_synth(args: argparse.Namespace, run) -> int:
    from tqdm import tqdm

    from bindset.synth.generate import SynthConfig, synth

    cfg = SynthConfig(
        sessions=args.sessions,
        seconds=args.seconds,
        seed=args.seed,
        layout=args.layout,
        width=args.width,
        height=args.height,
        depth_size=tuple(args.depth_size),
        thermal_size=tuple(args.thermal_size),
        workers=args.workers or SynthConfig().workers,
        clocks=args.clocks,
        impacts_per_minute=args.impacts,
        long_drift=args.long_drift,
    )
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.sessions, desc=f"synth {cfg.layout}", unit="session", disable=args.quiet, file=run.console, delay=0.5
    )
    with bar:
        result = synth(args.raw, cfg, progress=bar.update)
    took = time.perf_counter() - t0
    names = sorted(result.sessions)
    span = f" ({names[0]} .. {names[-1]})" if len(names) > 1 else f" ({names[0]})" if names else ""
    log.info("synth sessions: %s", ", ".join(names))
    print(f"synth: {len(names)} {result.layout} session(s){span} x {cfg.seconds:g} s, seed {cfg.seed}")
    print(f"  wrote {result.files} files, {result.bytes / 1e6:.1f} MB under {result.raw} in {took:.1f} s")
    print(f"  ground truth: {result.raw / '_truth'} (never read by the pipeline)")
    print(f"  log: {run.path}")
    return EXIT_OK


def _cmd_sync(args: argparse.Namespace, run) -> int:
    from collections import Counter

    from pipelines.sync import sync_raw
    from transforms.sync import SyncParams

    if not isinstance(args.raw, str):  # a URL (s3://, gs://) is checked by sync_raw, naming it
        _need(args.raw, "RAW", "dir")
    result = sync_raw(args.raw, args.layout, SyncParams(search_s=args.search_s), out=args.out,
                      write_manifest=args.write_manifest)  # fmt: skip
    for r in result.rows:
        est = "-" if r.estimated_offset_s is None else f"{r.estimated_offset_s:+.4f} s {r.estimated_drift_ppm:+.1f} ppm"
        lag = "" if r.lag_s is None else f" (moves it {r.lag_s * 1000:+.1f} ms)"
        print(f"{r.session:>16} {r.stream:<8} declared {r.declared_offset_s:+.4f} s {r.declared_drift_ppm:+.1f} ppm  "
              f"estimated {est}{lag}  confidence {r.confidence:.2f}  {r.status}  {r.reason}".rstrip())  # fmt: skip
    counts = Counter(r.status for r in result.rows)
    print(f"sync: {result.sessions} session(s) in {result.seconds:.1f} s; "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))  # fmt: skip
    print(f"  table: {args.out}")
    if args.write_manifest is not None:
        print(f"  corrected manifests: {args.write_manifest}")
    print(f"  log: {run.path}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace, run) -> int:
    import json

    from schemas.manifest import manifest_json_schema, write_json_schema

    # never into the installed package: stdout, or the file the user names
    if args.out is None:
        print(json.dumps(manifest_json_schema(), indent=2, sort_keys=True))
        return EXIT_OK
    path = write_json_schema(Path(args.out))
    print(f"wrote the captures manifest JSON Schema to {path}")
    return EXIT_OK


def build_config_from(args: argparse.Namespace):
    """BuildConfig from ``--config FILE`` (if given), then the ``filters`` of a ``--thresholds FILE``, then the
    typed flags; errors name the file and the key."""
    from schemas.config import read_mapping
    from transforms.config import BuildConfig

    values = read_mapping(args.config) if args.config else {}
    if getattr(args, "thresholds", None) is not None:
        from schemas.expectations import Thresholds

        Thresholds.from_file(args.thresholds)  # the whole file is checked, typos in "gate" included
        filters = read_mapping(args.thresholds).get("filters")
        if filters:
            values = merge(values, {"filters": filters})
    source = f"{args.config}" if args.config else "build flags"
    return BuildConfig.from_dict(merge(values, given_flags(args, BuildConfig, dest_prefix="cfg_")), source=source)


def _cmd_build(args: argparse.Namespace, run, extra: list[str]) -> int:
    from pipelines.build import EngineConfig, build

    _need(args.thresholds, "--thresholds", "file")
    cfg = build_config_from(args)
    if not isinstance(args.raw, str):  # a URL: build checks the bucket and prefix, naming it, before any work
        _need(args.raw, "input folder RAW", "dir")
    if extra:  # runner flags are Beam's; anything else (a typo of a build flag) must not be dropped silently
        from pipelines.beam_engine import unknown_flags

        bad = unknown_flags(extra) if args.engine == "beam" else extra
        if bad:
            where = "a build flag nor a Beam pipeline option" if args.engine == "beam" else "a build flag"
            raise UserError(f"{' '.join(bad)}: not {where} (see bindset build --help)")
    engine = EngineConfig(args.engine, extra, args.ray_address, args.workers or None)
    log.info("build config: %s", cfg.to_dict())
    bar = _progress(run, f"build ({args.engine})", "unit", args.quiet)
    result = build(args.raw, args.data, cfg, engine, progress=bar, retry_failed=args.retry_failed)
    print("\n".join(result.summary_lines(args.data)))
    print(f"  log: {run.path}")
    if args.no_validate:
        print("  validation skipped (--no-validate): the dataset is not published")
        return EXIT_OK
    # A build is gated like `bindset validate`: a failing dataset stays on disk, marked unpublished.
    return _validate_and_print(args.data, args.thresholds)


def _load_thresholds(path: Path | None):
    from schemas.expectations import QualityThresholds

    if path is None:
        return QualityThresholds()
    _need(path, "--thresholds", "file")
    return QualityThresholds.from_file(path)


def _validate_and_print(data: Path, thresholds: Path | None) -> int:
    from pipelines.validate import validate

    outcome = validate(data, _load_thresholds(thresholds))
    print("\n".join(outcome.summary_lines()))
    return EXIT_OK if outcome.passed else EXIT_GATE


def _need_dataset(data: Path, consistent: bool = True) -> None:
    from pipelines.dataset import DatasetNotCommitted, committed_manifest, open_dataset

    if not isinstance(data, str):  # a URL (cli_location keeps those as text) has no folder to check
        _need(data, "DATA", "dir")
    # a committed manifest only: a build committing beside this command removes it for a moment, so wait
    # for that commit (open_dataset's protocol) rather than call the folder unbuilt. The checkers
    # (validate, report) need only the manifest: whether index and shards agree is what they report on.
    try:
        open_dataset(data) if consistent else committed_manifest(data)
    except DatasetNotCommitted as exc:
        raise UserError(f"DATA {data}: not a built dataset: {exc}") from None


def _cmd_validate(args: argparse.Namespace, run) -> int:
    _need_dataset(args.data, consistent=False)
    code = _validate_and_print(args.data, args.thresholds)
    print(f"  log: {run.path}")
    return code


def _cmd_report(args: argparse.Namespace, run) -> int:
    import json

    from pipelines.report import write_report

    _need_dataset(args.data, consistent=False)
    from pipelines import storage

    out = write_report(args.data, gallery=args.gallery, seed=args.seed)
    manifest = json.loads(storage.read_bytes(storage.location(args.data) / "manifest.json"))
    verdict = manifest.get("validation", {}).get("status", "not_run")
    print(f"report: {out}")
    print(f"  validation: {verdict} (published: {manifest.get('validation', {}).get('published', False)})")
    print(f"  log: {run.path}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace, run) -> int:
    from training.config import train_config_from_args
    from training.run import train

    cfg = train_config_from_args(args)
    _need_dataset(args.data)
    bar = _progress(run, "image cache", "batch", args.quiet)
    result = train(args.data, args.run, cfg, workers=args.workers, gpu=args.gpu, engine=args.engine,
                   ray_address=args.ray_address, progress=bar)  # fmt: skip
    print("\n".join(result.summary_lines()))
    print(f"  log: {run.path}")
    return EXIT_OK


def _cmd_embed(args: argparse.Namespace, run) -> int:
    from training.embed import embed

    _need_gpu(args)
    if args.engine == "ray":
        from pipelines.ray_start import check_reachable

        check_reachable(args.ray_address)  # ray.init would retry for minutes, deaf to Ctrl-C
    _need_dataset(args.data)
    if not isinstance(args.run, str):  # a URL RUN: embed's own check names a missing model
        _need(args.run, "RUN", "dir")
    from training.vector_index import IndexParams

    index = IndexParams.from_dict(given_flags(args, IndexParams, dest_prefix="index_"), source="index flags")
    result = embed(args.data, args.run, args.emb, batch_size=args.batch_size, gpu=args.gpu, engine=args.engine,
                   ray_address=args.ray_address, workers=args.workers or None, index=index,
                   progress=_progress(run, "embed", "part", args.quiet))  # fmt: skip
    print("\n".join(result.summary_lines()))
    print(f"  log: {run.path}")
    return EXIT_OK


def _cmd_search(args: argparse.Namespace, run) -> int:
    from training.search import QUERY_KINDS, search

    given = [(k, getattr(args, k)) for k in QUERY_KINDS if getattr(args, k) is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one query: {', '.join('--' + k for k in QUERY_KINDS)}")
    if not isinstance(args.emb, str):  # a URL: read_meta names a missing commit
        _need(args.emb, "EMB", "dir")
    kind, value = given[0]
    if kind not in ("text", "key"):
        _need(Path(value), f"--{kind}", "file")
    hits = search(args.emb, kind, value, to=args.to, k=args.k, source=args.source)
    print(f"search: {kind} {value!r} -> {args.to}, top {len(hits)}")
    for h in hits:
        print(f"  {h.rank:>3}  {h.score:+.4f}  {h.key}  [{h.split}]  {h.label or ''}")
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace, run) -> int:
    from training.evaluate import evaluate

    if not isinstance(args.emb, str):  # a URL: read_meta names a missing commit
        _need(args.emb, "EMB", "dir")
    report = evaluate(args.emb, args.split, args.out)
    print(report.markdown())
    out = str(args.out or args.emb).rstrip("/")
    print(f"eval: wrote {out}/eval.md and {out}/eval.json")
    print(f"  log: {run.path}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ parser


def versions() -> dict[str, str]:
    """bindset's version and the decoding stack's (the libraries whose versions change output bytes)."""
    from importlib import metadata

    import bindset

    out = {"bindset": bindset.__version__, "python": sys.version.split()[0]}
    try:
        from pipelines.work import library_versions
    except ImportError:  # pragma: no cover - a partial install
        library_versions = None
    if library_versions is not None:
        out.update(library_versions())
    else:  # pragma: no cover
        for dist in ("av", "opencv-python-headless", "numpy", "torch", "torchaudio", "pillow", "pyarrow"):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return out


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        v = versions()
        width = max(map(len, v))
        print("\n".join(f"{k:<{width}}  {val}" for k, val in v.items()))
        parser.exit(EXIT_OK)


def _common() -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(add_help=False)
    g = c.add_argument_group("console and log")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="console: -v bindset's INFO lines, -vv DEBUG and third-party lines")  # fmt: skip
    g.add_argument("-q", "--quiet", action="store_true", help="console: no progress bar, errors and summary only")
    g.add_argument("--log-file", type=Path, default=None, help="the run's log file (default: see bindset --help)")
    return c


def build_parser() -> argparse.ArgumentParser:
    from bindset.synth.generate import CLOCK_MODES, LAYOUTS, SynthConfig
    from training.config import add_train_config_arguments
    from training.vector_index import IndexParams
    from transforms.config import BuildConfig

    parts = __doc__.split("\n\n")
    p = OneLineParser(prog="bindset", description=parts[0], epilog="\n\n".join(parts[2:]),
                      formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--version", action=_VersionAction, help="versions of bindset and its decoding stack")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    common = [_common()]

    s = sub.add_parser(
        "synth",
        parents=common,
        help="write realistic synthetic captures with ground truth",
        description="Write synthetic multimodal captures whose every stream follows one hidden "
        "class timeline, each on its own clock; ground truth goes to RAW/_truth/.",
    )
    s.add_argument("raw", type=Path, help="output folder (RAW)")
    s.add_argument("--sessions", type=int, default=8)
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--layout", choices=LAYOUTS, default="captures")
    s.add_argument("--width", type=int, default=320)
    s.add_argument("--height", type=int, default=240)
    s.add_argument("--depth-size", type=int, nargs=2, metavar=("W", "H"), default=SynthConfig().depth_size)
    s.add_argument("--thermal-size", type=int, nargs=2, metavar=("W", "H"), default=SynthConfig().thermal_size)
    s.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    s.add_argument("--clocks", choices=CLOCK_MODES, default="exact",
                   help="what captures manifests declare: exact (the truth), coarse (offsets off by up to 1.5 s, "
                   "no drift), wrong (some streams off by 0.2-1.5 s); the truth stays in RAW/_truth/")  # fmt: skip
    s.add_argument(
        "--impacts",
        type=float,
        default=0.0,
        metavar="PER_MIN",
        help="shared impacts per minute that every stream registers (events to synchronise on)",
    )
    s.add_argument(
        "--long-drift",
        action="store_true",
        help="depth, thermal and IMU clocks drift by 20-100 ppm (for long sessions)",
    )
    s.set_defaults(func=_cmd_synth)

    y = sub.add_parser(
        "sync",
        parents=common,
        help="estimate each stream's clock offset and drift from content and compare with the manifest",
        description="Per session and stream: the declared clock, the one estimated from content (activity "
        "cross-correlated against the video), a confidence and a status (agrees, mismatch, unsynchronisable). "
        "Writes a sync.parquet table; --write-manifest writes corrected manifests to a folder outside RAW.",
    )
    y.add_argument("raw", type=_location, help="the recordings: a folder, or an s3:// or gs:// URL")
    y.add_argument("--layout", default="auto", choices=("auto", "captures", "videos", "ego4d"))
    y.add_argument("--out", type=Path, default=Path("sync.parquet"), help="the table (default ./sync.parquet)")
    y.add_argument(
        "--write-manifest",
        type=Path,
        default=None,
        metavar="OUT",
        help="write corrected captures manifests to OUT/<session>/manifest.json (never into RAW)",
    )
    y.add_argument("--search-s", type=float, default=2.0, help="search range around the declared offset (s)")
    y.set_defaults(func=_cmd_sync)

    b = sub.add_parser(
        "build",
        parents=common,
        help="build WebDataset shards, index.parquet and rejects.parquet from raw captures",
        description="Cut every input into 2 s clips with ImageBind-exact features and write DATA/shards/*.tar, "
        "sizes.json, index.parquet, rejects.parquet and manifest.json. Settings come from --config FILE "
        "(JSON or YAML of the fields below, without dashes: stride_s, jpeg_quality, ...), then the flags "
        "given. Unknown --flags go to Beam's PipelineOptions untouched (e.g. --runner=FlinkRunner).",
    )
    b.add_argument("raw", type=_location, help="the recordings: a folder, or an s3:// or gs:// URL")
    b.add_argument("data", type=_location, help="the dataset to write: a folder, or an s3:// URL (--engine local)")
    b.add_argument("--config", type=Path, help="JSON/YAML file of build settings (flags given override it)")
    b.add_argument("--engine", default="beam", choices=("beam", "ray", "local"))
    b.add_argument("--ray-address", default=None, help="attach to a Ray cluster (default: start a local one)")
    b.add_argument("--workers", type=int, default=0,
                   help="local: decode workers; ray: CPUs of a local instance (default: one per core)")  # fmt: skip
    b.add_argument("--no-validate", action="store_true", help="skip the quality gate (the dataset stays unpublished)")
    b.add_argument(
        "--thresholds",
        type=Path,
        default=None,
        help='JSON/YAML file of thresholds: {"filters": {...per-sample...}, "gate": {...dataset...}}',
    )
    b.add_argument(
        "--retry-failed",
        action="store_true",
        help="run units with a transient reject (decode_timeout, decoder_crash, io_error, ...) again now, "
        "whatever their attempt count (default: up to 3 runs in all)",
    )
    add_config_flags(b.add_argument_group("build settings (BuildConfig)"), BuildConfig, dest_prefix="cfg_")
    b.set_defaults(func=_cmd_build, passthrough=True)

    v = sub.add_parser(
        "validate",
        parents=common,
        help="run the Great Expectations quality gate over a built dataset",
        description="Run the data contracts (schemas/expectations.py) as a Great Expectations Checkpoint over "
        "DATA's index, rejects and shards. Writes DATA/quality/validation.json and GX Data Docs, records the "
        "verdict in manifest.json (a failing dataset is kept but marked unpublished) and exits 1 on failure.",
    )
    v.add_argument("data", type=_location, help="the dataset: a folder, or an s3:// or gs:// URL")
    v.add_argument(
        "--thresholds",
        type=Path,
        default=None,
        help='JSON/YAML thresholds file; validate reads its "gate", e.g. {"gate": {"max_reject_rate": 0.1}}',
    )
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser(
        "report",
        parents=common,
        help="write the self-contained HTML data quality report",
        description="Write DATA/quality/report.html: headline numbers, rejects by reason, a per-session "
        "timeline of modalities, quality distributions and a gallery of random samples. No network needed.",
    )
    r.add_argument("data", type=_location, help="the dataset: a folder, or an s3:// or gs:// URL")
    r.add_argument("--gallery", type=int, default=12, help="samples shown in the gallery")
    r.add_argument("--seed", type=int, default=0, help="seed of the gallery's random pick")
    r.set_defaults(func=_cmd_report)

    t = sub.add_parser(
        "train",
        parents=common,
        help="train the modality encoders against the frozen OpenCLIP tower",
        description="Train audio/depth/thermal/IMU encoders with a symmetric InfoNCE loss against a frozen "
        "OpenCLIP image tower, on a Ray Train TorchTrainer (or one process without Ray). Checkpoints every N "
        "steps and each epoch; a rerun resumes from the latest one. The final model goes to RUN/model/.",
    )
    t.add_argument("data", type=_location, help="the dataset: a folder, or an s3:// or gs:// URL")
    t.add_argument("run", type=_location, help="the run folder, or an s3:// or gs:// URL")
    t.add_argument("--workers", type=int, default=1, help="training workers (Ray Train)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker")
    t.add_argument("--engine", choices=("ray", "local"), default="ray", help="local: one process, no Ray")
    t.add_argument("--ray-address", default=None, help="attach to a Ray cluster (default: start a local one)")
    add_train_config_arguments(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "embed",
        parents=common,
        help="materialise embeddings of every sample and modality, with FAISS indexes",
        description="Run a trained model over every sample of DATA, one part per shard: "
        "EMB/<modality>/part-NNNNNN.parquet (key, modality, split, session, label, run id, vector), "
        "EMB/index/<modality>.faiss and EMB/meta.json last. A rerun embeds only the parts that are unfinished "
        "or whose shard's content changed.",
    )
    e.add_argument("data", type=_location, help="the dataset: a folder, or an s3:// or gs:// URL")
    e.add_argument("run", type=_location, help="the trained run: a folder, or an s3:// or gs:// URL")
    e.add_argument("emb", type=_location, help="where the embeddings go: a folder, or an s3:// URL")
    e.add_argument("--batch-size", type=_positive_int, default=128)
    e.add_argument("--gpu", action="store_true", help="local: run on CUDA; ray: one GPU per actor")
    e.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: a pool of Ray actors over parts")
    e.add_argument("--ray-address", default=None, help="attach to a Ray cluster (default: start a local one)")
    e.add_argument("--workers", type=_positive_int, default=None,
                   help="ray: actors (default: one per free CPU, or GPU)")  # fmt: skip
    add_config_flags(e.add_argument_group("vector index (IndexParams)"), IndexParams,
                     ("exact_max", "kind", "nlist", "nprobe", "target_recall", "pq_m", "max_probe_fraction",
                      "min_train_per_list"), dest_prefix="index_",
                     flag_prefix="index-")  # fmt: skip
    e.set_defaults(func=_cmd_embed)

    q = sub.add_parser("search", parents=common, help="cross-modal nearest neighbours from a file, text or a key")
    q.add_argument("emb", type=_location, help="the embeddings: a folder, or an s3:// or gs:// URL")
    q.add_argument("--text")
    q.add_argument("--image", help="an image file (the frozen image tower)")
    q.add_argument("--audio", help="an audio or video file: its first 2 s")
    q.add_argument("--depth", help="a 16-bit depth PNG in mm")
    q.add_argument("--thermal", help="a thermal PNG")
    q.add_argument("--key", help="a sample key of EMB (with --from)")
    q.add_argument("--from", dest="source", help="with --key: which of its embeddings to query with")
    q.add_argument("--to", default="image", help="the modality to search (default image)")
    q.add_argument("-k", type=_positive_int, default=5, help="hits to return (default 5)")
    q.set_defaults(func=_cmd_search)

    ev = sub.add_parser("eval", parents=common, help="retrieval, emergent retrieval and zero-shot tables")
    ev.add_argument("emb", type=_location, help="the embeddings: a folder, or an s3:// or gs:// URL")
    ev.add_argument("--split", default="val")
    ev.add_argument("--out", type=_location, help="folder or URL for eval.md/eval.json (default EMB)")
    ev.set_defaults(func=_cmd_eval)

    sc = sub.add_parser("schema", parents=common, help="print (or --out: write) the captures manifest JSON Schema")
    sc.add_argument("--out", help="file to write (default: print to stdout)")
    sc.set_defaults(func=_cmd_schema)
    return p


# -------------------------------------------------------------------------------------------------- main


def _log_path(args: argparse.Namespace) -> Path:
    from bindset.logs import default_log_dir, log_file_name

    if args.log_file is not None:
        return Path(args.log_file)
    return default_log_dir(args.command, args) / log_file_name(args.command)


def _user_paths(args: argparse.Namespace) -> list[Path]:
    names = ("raw", "data", "run", "emb", "config", "thresholds", "out", "image", "audio", "depth", "thermal")
    return [Path(getattr(args, n)) for n in names if getattr(args, n, None) is not None]


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 1 gate failed, 2 usage/config/input error, 3 unexpected)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "passthrough", False):  # named as the subcommand's own errors are
            prog = f"{parser.prog} {args.command}"
            parser.exit(EXIT_USAGE, f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)\n")
    except SystemExit as exc:  # --help, --version, usage errors (already printed as one line)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    from bindset.logs import guarded, run_logging

    with run_logging(_log_path(args), verbose=args.verbose, quiet=args.quiet) as run:
        if getattr(args, "passthrough", False):
            return guarded(f"bindset {args.command}", run, lambda: args.func(args, run, extra), _user_paths(args))
        return guarded(f"bindset {args.command}", run, lambda: args.func(args, run), _user_paths(args))


if __name__ == "__main__":
    sys.exit(main())
