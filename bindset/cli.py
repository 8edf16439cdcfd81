"""The `bindset` command line: thin wrappers over importable functions.

bindset synth RAW/ --sessions 8 --seconds 30 --seed 0
bindset build RAW/ DATA/ [--engine beam|ray|local] [--no-validate] [runner flags]
bindset validate DATA/ [--thresholds FILE]
bindset report DATA/
bindset train DATA/ RUN/ [--preset tiny|proof|imagebind] [--config FILE] [--workers N] [--gpu]
bindset embed DATA/ RUN/ EMB/
bindset search EMB/ --text "..." | --audio x.wav | --image y.jpg [--to depth] [-k 5]
bindset eval EMB/ [--split val]
bindset schema [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bindset.synth.generate import LAYOUTS, SynthConfig, synth
from transforms.layouts import LayoutError


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

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
    )
    t0 = time.perf_counter()
    with tqdm(total=cfg.sessions, desc=f"synth {cfg.layout}", unit="session", disable=args.quiet) as bar:
        result = synth(args.raw, cfg, progress=bar.update)
    took = time.perf_counter() - t0
    print(f"synth: {len(result.sessions)} {result.layout} session(s) x {cfg.seconds:g} s, seed {cfg.seed}")
    print(f"  wrote {result.files} files, {result.bytes / 1e6:.1f} MB under {result.raw} in {took:.1f} s")
    print(f"  sessions: {', '.join(result.sessions)}")
    print(f"  ground truth: {result.raw / '_truth'} (never read by the pipeline)")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from schemas.manifest import SCHEMA_FILE, write_json_schema

    path = write_json_schema(Path(args.out) if args.out else SCHEMA_FILE)
    print(f"wrote the captures manifest JSON Schema to {path}")
    return 0


def _cmd_build(args: argparse.Namespace, extra: list[str]) -> int:
    from tqdm import tqdm

    from pipelines.build import EngineConfig, build
    from transforms.config import BuildConfig

    cfg = BuildConfig(
        layout=args.layout, stride_s=args.stride, jpeg_quality=args.jpeg_quality, max_short_side=args.max_short_side,
        audio_channels=args.audio_channels, shard_max_samples=args.shard_max_samples,
        shard_max_bytes=args.shard_max_bytes, val_fraction=args.val_fraction, decode_timeout_s=args.decode_timeout,
        imu_max_gap_s=args.imu_max_gap,
    )  # fmt: skip
    engine = EngineConfig(args.engine, extra, args.ray_address, args.workers or None)

    def progress(total: int):
        return tqdm(total=total, desc=f"build ({args.engine})", unit="unit", disable=args.quiet)

    result = build(args.raw, args.data, cfg, engine, progress=progress)
    print("\n".join(result.summary_lines(args.data)))
    if args.no_validate:
        print("  validation skipped (--no-validate): the dataset is not published")
        return 0
    # A build is gated like `bindset validate`: a failing dataset stays on disk, marked unpublished.
    return _validate_and_print(args.data, args.thresholds)


def _load_thresholds(path: Path | None):
    from schemas.expectations import QualityThresholds

    if path is None:
        return QualityThresholds()
    return QualityThresholds.from_file(path)


def _validate_and_print(data: Path, thresholds: Path | None) -> int:
    from pipelines.validate import validate

    outcome = validate(data, _load_thresholds(thresholds))
    print("\n".join(outcome.summary_lines()))
    return 0 if outcome.passed else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    return _validate_and_print(args.data, args.thresholds)


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from pipelines.report import write_report

    out = write_report(args.data, gallery=args.gallery, seed=args.seed)
    manifest = json.loads((Path(args.data) / "manifest.json").read_text())
    verdict = manifest.get("validation", {}).get("status", "not_run")
    print(f"report: {out}")
    print(f"  validation: {verdict} (published: {manifest.get('validation', {}).get('published', False)})")
    return 0


def _bar(desc: str, quiet: bool):
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=desc, unit="batch", disable=quiet)


def _train_config(args: argparse.Namespace):
    from dataclasses import replace

    from training.config import PRESETS, TrainConfig

    cfg = TrainConfig.from_file(args.config) if args.config else PRESETS[args.preset]
    names = ("epochs", "max_steps", "batch_size", "seed")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.checkpoint_every is not None:
        overrides["checkpoint_every"] = args.checkpoint_every
    if args.tower_checkpoint is not None:
        overrides["tower"] = replace(cfg.tower, checkpoint=args.tower_checkpoint)
    return replace(cfg, **overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from training.run import train

    cfg = _train_config(args)
    result = train(args.data, args.run, cfg, workers=args.workers, gpu=args.gpu, engine=args.engine,
                   ray_address=args.ray_address, progress=_bar("image cache", args.quiet))  # fmt: skip
    print("\n".join(result.summary_lines()))
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from training.embed import embed

    result = embed(args.data, args.run, args.emb, batch_size=args.batch_size, gpu=args.gpu,
                   progress=_bar("embed", args.quiet))  # fmt: skip
    print("\n".join(result.summary_lines()))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from training.search import QUERY_KINDS, search

    given = [(k, getattr(args, k)) for k in QUERY_KINDS if getattr(args, k) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one query: {', '.join('--' + k for k in QUERY_KINDS)}")
    kind, value = given[0]
    hits = search(args.emb, kind, value, to=args.to, k=args.k, source=args.source)
    print(f"search: {kind} {value!r} -> {args.to}, top {len(hits)}")
    for h in hits:
        print(f"  {h.rank:>3}  {h.score:+.4f}  {h.key}  [{h.split}]  {h.label or ''}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    report = evaluate(args.emb, args.split, args.out)
    print(report.markdown())
    out = Path(args.out) if args.out else Path(args.emb)
    print(f"eval: wrote {out / 'eval.md'} and {out / 'eval.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bindset", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "synth",
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
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    b = sub.add_parser(
        "build",
        help="build WebDataset shards, index.parquet and rejects.parquet from raw captures",
        description="Cut every input into 2 s clips with ImageBind-exact features and write DATA/shards/*.tar, "
        "sizes.json, index.parquet, rejects.parquet and manifest.json. Unknown --flags go to Beam's "
        "PipelineOptions untouched (e.g. --runner=FlinkRunner).",
    )
    b.add_argument("raw", type=Path)
    b.add_argument("data", type=Path)
    b.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    b.add_argument("--engine", default="beam", choices=("beam", "ray", "local"))
    b.add_argument("--ray-address", default=None, help="attach to a Ray cluster (default: start a local one)")
    b.add_argument("--workers", type=int, default=0, help="ray: CPUs of the local instance (default: all)")
    b.add_argument("--stride", type=float, default=2.0, help="seconds between clip starts")
    b.add_argument("--jpeg-quality", type=int, default=95)
    b.add_argument("--max-short-side", type=int, default=320)
    b.add_argument("--audio-channels", choices=("first", "mean"), default="first")
    b.add_argument("--shard-max-samples", type=int, default=1000)
    b.add_argument("--shard-max-bytes", type=int, default=512 * 1024 * 1024)
    b.add_argument("--val-fraction", type=float, default=0.2)
    b.add_argument("--imu-max-gap", type=float, default=0.1, help="seconds; a longer IMU gap voids the IMU part")
    b.add_argument("--decode-timeout", type=float, default=600.0, help="seconds per file before a decoder is killed")
    b.add_argument("--no-validate", action="store_true", help="skip the quality gate (the dataset stays unpublished)")
    b.add_argument("--thresholds", type=Path, default=None, help="JSON file of quality thresholds for the gate")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_build, passthrough=True)

    v = sub.add_parser(
        "validate",
        help="run the Great Expectations quality gate over a built dataset",
        description="Run the data contracts (schemas/expectations.py) as a Great Expectations Checkpoint over "
        "DATA's index, rejects and shards. Writes DATA/quality/validation.json and GX Data Docs, records the "
        "verdict in manifest.json (a failing dataset is kept but marked unpublished) and exits 1 on failure.",
    )
    v.add_argument("data", type=Path)
    v.add_argument("--thresholds", type=Path, default=None,
                   help="JSON object overriding QualityThresholds fields, e.g. {\"max_reject_rate\": 0.1}")  # fmt: skip
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser(
        "report",
        help="write the self-contained HTML data quality report",
        description="Write DATA/quality/report.html: headline numbers, rejects by reason, a per-session "
        "timeline of modalities, quality distributions and a gallery of random samples. No network needed.",
    )
    r.add_argument("data", type=Path)
    r.add_argument("--gallery", type=int, default=12, help="samples shown in the gallery")
    r.add_argument("--seed", type=int, default=0, help="seed of the gallery's random pick")
    r.set_defaults(func=_cmd_report)

    t = sub.add_parser(
        "train",
        help="train the modality encoders against the frozen OpenCLIP tower",
        description="Train audio/depth/thermal/IMU encoders with a symmetric InfoNCE loss against a frozen "
        "OpenCLIP image tower, on a Ray Train TorchTrainer (or one process without Ray). Checkpoints every N "
        "steps and each epoch; a rerun resumes from the latest one. The final model goes to RUN/model/.",
    )
    t.add_argument("data", type=Path)
    t.add_argument("run", type=Path)
    t.add_argument("--preset", default="tiny", choices=("tiny", "proof", "imagebind"), help="named config")
    t.add_argument("--config", type=Path, help="JSON/YAML file of TrainConfig fields (overrides --preset)")
    t.add_argument("--workers", type=int, default=1, help="training workers (Ray Train)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker")
    t.add_argument("--engine", choices=("ray", "local"), default="ray", help="local: one process, no Ray")
    t.add_argument("--ray-address", default=None, help="attach to a Ray cluster (default: start a local one)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int, help="per worker")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    t.add_argument("--tower-checkpoint", help="local OpenCLIP checkpoint file for the frozen towers")
    t.add_argument("--seed", type=int)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "embed",
        help="materialise embeddings of every sample and modality, with FAISS indexes",
        description="Run a trained model over every sample of DATA: EMB/<modality>.parquet (key, modality, "
        "split, vector, run id) and EMB/index/<modality>.faiss.",
    )
    e.add_argument("data", type=Path)
    e.add_argument("run", type=Path)
    e.add_argument("emb", type=Path)
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--gpu", action="store_true")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_embed)

    q = sub.add_parser("search", help="cross-modal nearest neighbours from a file, text or a sample key")
    q.add_argument("emb", type=Path)
    q.add_argument("--text")
    q.add_argument("--image", help="an image file (the frozen image tower)")
    q.add_argument("--audio", help="an audio or video file: its first 2 s")
    q.add_argument("--depth", help="a 16-bit depth PNG in mm")
    q.add_argument("--thermal", help="a thermal PNG")
    q.add_argument("--key", help="a sample key of EMB (with --from)")
    q.add_argument("--from", dest="source", help="with --key: which of its embeddings to query with")
    q.add_argument("--to", default="image", help="the modality to search (default image)")
    q.add_argument("-k", type=int, default=5)
    q.set_defaults(func=_cmd_search)

    ev = sub.add_parser("eval", help="retrieval, emergent retrieval and zero-shot tables (Markdown + JSON)")
    ev.add_argument("emb", type=Path)
    ev.add_argument("--split", default="val")
    ev.add_argument("--out", type=Path, help="folder for eval.md/eval.json (default EMB)")
    ev.set_defaults(func=_cmd_eval)

    sc = sub.add_parser("schema", help="export the captures manifest JSON Schema")
    sc.add_argument("--out", help="file to write (default: schemas/manifest.schema.json)")
    sc.set_defaults(func=_cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) if getattr(args, "passthrough", False) else args.func(args)
    except (ValueError, FileNotFoundError, LayoutError) as exc:
        # user errors (a bad manifest, a missing folder) get one readable message, never a traceback
        print(f"bindset {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
