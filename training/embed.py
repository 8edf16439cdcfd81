"""`bindset embed`: batch inference of a trained run over every sample and modality of a dataset.

    bindset embed DATA RUN EMB [--gpu] [--batch-size 128]
    bindset embed DATA RUN EMB --engine ray [--ray-address auto] [--workers 4] [--gpu]

Writes, per modality (image = the frozen tower on the paired frames, text = the frozen text tower on the
caption, and each trained encoder), one part per input shard, as the part is produced (layout:
training/emb_store.py):
    EMB/<modality>/part-NNNNNN.parquet  key, modality, split, session, label, run_id, vector (fixed-size list)
    EMB/_parts/part-NNNNNN.json         the part's commit marker: shard, content fingerprint, rows per modality
    EMB/index/<modality>.faiss          FAISS inner-product index over the modality's rows (training/vector_index.py)
    EMB/meta.json                       last, the commit point: run, dataset version, parts, counts, index
                                        parameters and recall (or why the index is exact), this run's counters
    EMB/_embed.lock                     flock held by the one run writing into EMB (a second one exits 2)

Memory is bounded by the batch and the model, not the dataset: a batch's vectors go to the part's Parquet
writers (one row group per batch) before the next batch is read; the index is built from the parts, one
modality at a time. A part's fingerprint hashes the run (model digest, config), the batch size and, per
sample of its shard, the index row (key, split, session, label, caption) and every member's sha256. A
rerun keeps each part whose marker carries the same fingerprint, so a killed run redoes only unfinished
parts, and a newer dataset version embeds only the shards whose content changed.

Engines: ``local`` (default) embeds part after part in this process while the next batches are read and
decoded ahead (DataLoader processes, or a thread) and the previous part is committed in a thread; ``ray``
runs a pool of Ray actors (the model loaded once per actor, ``num_gpus=1`` each with ``--gpu``) over the
parts to embed, each writing its parts through the same code, so the vectors equal the local engine's and
the rows are in the same order (part order is shard order, whichever actor finished first).

DATA, RUN and EMB may be ``s3://`` / ``gs://`` URLs (issue 17), read and written through the storage seam
(pipelines/storage.py): a part is staged in a local temp folder and its objects uploaded (the old marker
deleted first, the new marker last), the indexes are written locally and uploaded, meta.json is still the last
object and the commit point; the lock is a lease object (emb_store.EmbLease) instead of a ``flock``.

FAISS, not LanceDB: the vectors are already in Parquet, so what is missing is only a fast nearest-
neighbour structure; FAISS is one wheel with no service or storage format of its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import queue
import select
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines import storage
from pipelines.dataset import DatasetChanged, open_dataset
from schemas import modalities as M
from schemas.errors import InputError, MissingInputError
from schemas.tables import member_column
from training import emb_store as S
from training.checkpoint import MODEL, STATE
from training.config import TrainConfig
from training.encoders import BindingModel
from training.inputs import ModelInputs, collate
from training.run_store import read_run_file, remote_env, run_location
from training.shards import SampleReader, SampleTable, dataset_location, loader_context, loader_worker_init
from training.towers import tower_embed_dim
from training.vector_index import IndexParams, build_index, check_params, write_index

log = logging.getLogger(__name__)

ALL = ("image", "text", "audio", "depth", "thermal", "imu")
META = S.META
ENGINES = ("local", "ray")
#: fault injection for tests: "kill_after_parts:N" SIGKILLs the process once N parts are committed,
#: "stop_after_parts:N" SIGSTOPs it (a run that holds EMB's lock)
FAULT_ENV = "BINDSET_EMBED_FAULT"
_WANT = frozenset(M.MEMBERS) - {M.TEXT.member}


@dataclass
class LoadedRun:
    cfg: TrainConfig
    model: BindingModel
    towers: object  # FrozenTowers
    inputs: ModelInputs
    run_id: str
    device: torch.device


def run_identity(run: Path | str) -> tuple[TrainConfig, str]:
    """A trained run's config and id (``<run folder name>-<first 12 hex of the model's sha256>``).

    RUN may be a URL (training/run_store.py). Raises ``MissingInputError`` (a FileNotFoundError, exit 2) when RUN
    has no final model."""
    cfg, run_id, _ = _read_run(run)
    return cfg, run_id


def _read_run(run: Path | str) -> tuple[TrainConfig, str, bytes]:
    where = run_location(run)
    try:
        weights = read_run_file(where, f"model/{MODEL}")
        state = json.loads(read_run_file(where, f"model/{STATE}"))
    except FileNotFoundError:
        raise MissingInputError(f"{run}: no trained model ({where / 'model' / MODEL} missing); run `bindset train` "
                                "first") from None  # fmt: skip
    cfg = TrainConfig.from_dict(state["config"])
    return cfg, f"{where.name}-{hashlib.sha256(weights).hexdigest()[:12]}", weights


def load_run(run: Path | str, device: str | torch.device = "cpu") -> LoadedRun:
    from safetensors.torch import load as load_safetensors

    from training.towers import FrozenTowers

    cfg, run_id, weights = _read_run(run)
    device = torch.device(device)
    towers = FrozenTowers(cfg.tower, device)
    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, towers.embed_dim)
    model.load_state_dict(load_safetensors(weights))
    model.to(device).eval()
    inputs = ModelInputs(cfg.data, towers.image_size, towers.mean, towers.std)
    return LoadedRun(cfg, model, towers, inputs, run_id, device)


def produced_modalities(cfg: TrainConfig) -> tuple[str, ...]:
    """What a run embeds: image and text (the frozen towers) and its trained encoders, in ``ALL`` order."""
    return tuple(m for m in ALL if m in ("image", "text") or m in cfg.modalities)


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PartPlan:
    """Part ``number``: the samples of one shard (sample-table rows, in index order) and their fingerprint."""

    number: int
    shard: str
    rows: tuple[int, ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return S.part_name(self.number)

    def batches(self, batch_size: int) -> list[list[int]]:
        r = list(self.rows)
        return [r[i : i + batch_size] for i in range(0, len(r), batch_size)]

    def to_dict(self) -> dict:
        return {"number": self.number, "shard": self.shard, "rows": list(self.rows), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict) -> PartPlan:
        return cls(int(d["number"]), str(d["shard"]), tuple(int(i) for i in d["rows"]), str(d["fingerprint"]))


def plan_parts(index: pa.Table, shard_names: Iterable[str], header: dict) -> list[PartPlan]:
    """One part per shard (in name order): its rows of ``index`` and a sha256 over ``header`` and those rows'
    key, split, session, label, caption and member sha256 columns (SPEC §4: the index has each member's hash)."""
    names = sorted(shard_names)
    cols = ["key", "split", "session", "label", "caption"]
    cols += sorted(member_column(m) for m in M.MEMBERS if member_column(m) in index.column_names)
    values = {c: index.column(c).to_pylist() for c in cols}
    by_shard: dict[str, list[int]] = {n: [] for n in names}
    for i, s in enumerate(index.column("shard").to_pylist()):
        by_shard.setdefault(s, []).append(i)
    head = json.dumps(header, sort_keys=True).encode()
    parts = []
    for number, name in enumerate(names):
        h = hashlib.sha256(head)
        for i in by_shard[name]:
            h.update(json.dumps([values[c][i] for c in cols]).encode() + b"\n")
        parts.append(PartPlan(number, name, tuple(by_shard[name]), h.hexdigest()))
    return parts


# ------------------------------------------------------------------------------------ one part, streamed


@dataclass
class LiveRows:
    """Vectors computed but not yet handed to a Parquet writer: the embed loop's only growing state.
    ``peak`` stays at most one batch per modality whatever the dataset size (tests/test_embed.py)."""

    now: int = 0
    peak: int = 0

    def add(self, n: int) -> None:
        self.now += n
        self.peak = max(self.peak, self.now)

    def done(self, n: int) -> None:
        self.now -= n


class PartEmbedder:
    """Embeds the batches of one part and commits the part's files; the same code under both engines."""

    def __init__(self, lr: LoadedRun, table: SampleTable, emb: Path | storage.Location, produced: tuple[str, ...]):
        self.lr, self.table, self.emb, self.produced = lr, table, emb, produced
        self.dim = lr.towers.embed_dim
        self.schema = S.schema(self.dim)
        self.live = LiveRows()

    def _outputs(self, batch: dict, idx: np.ndarray, text_cache: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        lr = self.lr
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if "frame0" in batch:
            frames = lr.inputs.frames(batch, lr.device, train=False)
            out["image"] = (lr.towers.image_embedding(frames, lr.cfg.data.image_frames), frames["frame0_mask"])
        enc_in, masks = lr.inputs.encoders(batch, lr.device, lr.cfg.modalities)
        for m, e in lr.model(enc_in).items():
            out[m] = (e, masks[m])
        captions = [self.table.captions[i] for i in idx]
        # captions repeat (one per label, per file): the text tower sees each distinct one once per part
        new = sorted({c for c in captions if c and c not in text_cache})
        if new:
            text_cache.update(zip(new, lr.towers.encode_text(new, lr.device).cpu(), strict=True))
        have = [i for i, c in enumerate(captions) if c]
        if have:
            text = torch.zeros(len(idx), self.dim)
            text[have] = torch.stack([text_cache[captions[i]] for i in have])
            mask = torch.zeros(len(idx), dtype=torch.bool)
            mask[have] = True
            out["text"] = (text, mask)
        return out

    def _rows(self, m: str, rows: list[int], v: np.ndarray) -> pa.Table:
        t = self.table
        return pa.table({
            "key": [t.keys[i] for i in rows],
            "modality": [m] * len(rows),
            "split": [t.splits[i] for i in rows],
            "session": [t.sessions[i] for i in rows],
            "label": [t.labels[i] for i in rows],
            "run_id": [self.lr.run_id] * len(rows),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.float32()), self.dim),
        }, schema=self.schema)  # fmt: skip

    def embed_part(self, part: PartPlan, batches: Iterable[dict]) -> dict:
        """Run the model over ``batches`` (the part's, in order) into a staging folder, then commit the part
        (``write_part`` then ``commit``). Returns the part's marker."""
        return self.commit(self.write_part(part, batches))

    def write_part(self, part: PartPlan, batches: Iterable[dict]) -> StagedPart:
        """The model over ``batches`` (the part's, in order), each batch's vectors written as one row group of
        the part's staging files before the next batch is read. The files are closed by ``commit``."""
        # beside the part locally (renamed into place); a local temp folder for a URL EMB (uploaded)
        local = isinstance(self.emb, Path)
        stage = storage.staging_dir(self.emb / part.name) if local else Path(tempfile.mkdtemp(prefix="bindset-part-"))
        staged = StagedPart(part, stage, {}, dict.fromkeys(self.produced, 0))
        try:
            for m in self.produced:
                staged.writers[m] = pq.ParquetWriter(stage / f"{m}.parquet", self.schema, **storage.PARQUET_OPTS)
            text_cache: dict[str, torch.Tensor] = {}  # per part: a part's vectors never depend on other parts
            with torch.no_grad():
                for batch in batches:
                    idx = batch["index"].numpy()
                    for m, (e, mask) in self._outputs(batch, idx, text_cache).items():
                        ok = mask.cpu().numpy()
                        v = e.float().cpu().numpy()[ok]
                        self.live.add(len(v))
                        staged.writers[m].write_table(self._rows(m, idx[ok].tolist(), v))
                        self.live.done(len(v))
                        staged.counts[m] += len(v)
        except BaseException:
            staged.discard()
            raise
        return staged

    def commit(self, staged: StagedPart) -> dict:
        """Close and fsync the staged files, then commit the part: its old marker goes first, the files are
        renamed into place, the new marker last. Only file work (no model): the local engine runs it in a
        background thread while the next part is embedded. Returns the marker."""
        part, stage = staged.part, staged.stage
        try:
            for m, w in staged.writers.items():
                w.close()
                storage.fsync_file(stage / f"{m}.parquet")
            # the files' sizes: a rerun reuses the part only while its files still have them (_part_intact)
            sizes = {m: (stage / f"{m}.parquet").stat().st_size for m in staged.writers}
            marker = {"name": part.name, "shard": part.shard, "fingerprint": part.fingerprint,
                      "samples": len(part.rows), "rows": staged.counts, "bytes": sizes}  # fmt: skip
            storage.delete(S.marker_path(self.emb, part.name))
            for m in self.produced:
                target = S.part_path(self.emb, m, part.name)
                if isinstance(target, Path):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    storage.place_file(stage / f"{m}.parquet", target)
                    storage.fsync_dir(target.parent)
                else:
                    storage.upload(stage / f"{m}.parquet", target)  # one PUT per part file
            storage.put_json(S.marker_path(self.emb, part.name), marker, indent=None)
        finally:
            staged.discard()
        log.info("embed: %s (%s, %d samples) done", part.name, part.shard, len(part.rows))
        return marker


@dataclass
class StagedPart:
    """A part whose vectors are all in its staging folder's open Parquet writers, not yet committed."""

    part: PartPlan
    stage: Path
    writers: dict[str, pq.ParquetWriter]
    counts: dict[str, int]

    def discard(self) -> None:
        for w in self.writers.values():
            with contextlib.suppress(Exception):  # already closed, or failed: the folder goes either way
                w.close()
        shutil.rmtree(self.stage, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ engines


class PartReader(SampleReader):
    """A SampleReader that keeps one shard open: parts are read one after another, so a shard is not needed
    again once the next one starts, and an archive's many shards leave no open file or member table behind."""

    def _tar(self, shard: str):
        for name in [n for n in self._tars if n != shard]:
            self._tars.pop(name).close()
        return super()._tar(shard)


def _reader_batches(reader: SampleReader, batches: list[list[int]]) -> Iterator[dict]:
    for b in batches:
        yield collate([reader[i] for i in b])


class Prefetcher:
    """Iterates ``items`` in a background thread, at most ``depth`` ahead, so that reading and decoding the next
    batches overlaps the model's work on this one (decoding in OpenCV/numpy and torch's ops release the GIL).
    The producer's exception is raised in the consumer; ``close()`` stops the thread early."""

    _END = object()

    def __init__(self, items: Iterable, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="embed-prefetch", daemon=True)
        self._thread.start()

    def _run(self, items: Iterable) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(exc)
            return
        self._put(self._END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        try:
            while True:
                item = self._q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # also when the consumer drops the iterator early: the thread stops
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def cpu_threads(workers: int) -> int:
    """Torch threads for the model on CPU beside ``workers`` loader processes: the cores this process may use,
    less one per loader process (at least 1). Each loader process decodes on one thread; a model that also
    wants every core makes the two fight, and torch's thread pool waits at every op for its slowest thread."""
    return max(1, len(os.sched_getaffinity(0)) - workers)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loader_init(main_pid: int, worker_id: int) -> None:
    """A loader process: one thread (``loader_worker_init``: the model's threads keep their cores), and it exits
    when the embed process ``main_pid`` dies, SIGKILL included. Its parent is the forkserver, not the embed
    process, so torch's parent check never fires, and the forkserver waits for every process holding its
    "alive" pipe, the loader processes too: without this both would outlive a killed embed forever.
    Linux: a pidfd (5.3+) becomes readable when the process exits; elsewhere a poll once a second."""
    loader_worker_init(worker_id)
    try:
        fd = os.pidfd_open(main_pid)
    except ProcessLookupError:  # already gone
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(main_pid, 0)
                except ProcessLookupError:
                    break
        os._exit(1)  # nothing to flush: a loader process only reads

    threading.Thread(target=watch, name="embed-main-watch", daemon=True).start()


def start_local_batches(table: SampleTable, todo: list[PartPlan], batch_size: int, workers: int) -> Iterator[dict]:
    """The batches of ``todo``'s parts, in order (they never cross a part), read and decoded ahead of the
    model: by ``workers`` DataLoader processes (started here, so that they start while the model loads), or
    with ``workers`` 0 by one background thread of this process."""
    flat = [b for p in todo for b in p.batches(batch_size)]
    if not flat:
        return iter(())
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            PartReader(table, _WANT),
            batch_sampler=flat,
            collate_fn=collate,
            num_workers=workers,
            worker_init_fn=functools.partial(_loader_init, os.getpid()),
            multiprocessing_context=loader_context(workers),
        )
        return iter(loader)
    return iter(Prefetcher(_reader_batches(PartReader(table, _WANT), flat)))


def _run_local(
    embedder: PartEmbedder, todo: list[PartPlan], batch_size: int, batches: Iterator[dict]
) -> Iterator[dict]:
    """Parts one after another; a part's commit (closing, fsync, renames) runs in a background thread while
    the next part is embedded, at most one behind. Markers come out in part order, each once its part is
    committed."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-commit") as committer:
        pending = None
        try:
            for p in todo:
                staged = embedder.write_part(p, itertools.islice(batches, len(p.batches(batch_size))))
                if pending is not None:
                    yield pending.result()
                pending = committer.submit(embedder.commit, staged)
            if pending is not None:
                yield pending.result()
                pending = None
        finally:
            if pending is not None:
                pending.cancel()
                pending.exception()  # waits for a running commit: nothing writes into EMB after we return


class RayPartWorker:
    """A Ray actor: loads the run and the dataset snapshot once, then embeds the parts it is handed."""

    def __init__(self, data: str, run: str, emb: str, version: str, batch_size: int, gpu: bool):
        loader_worker_init(0)  # one thread per actor: the pool is the parallelism
        self.lr = load_run(run, "cuda" if gpu else "cpu")
        self.table = SampleTable.load(data, None)
        if self.table.version != version:
            raise DatasetChanged(f"{data}: a new version was committed while embedding; run `bindset embed` again")
        self.embedder = PartEmbedder(self.lr, self.table, S.emb_root(emb), produced_modalities(self.lr.cfg))
        self.reader = PartReader(self.table, _WANT)
        self.batch_size = batch_size

    def embed(self, part: dict) -> dict:
        p = PartPlan.from_dict(part)
        marker = self.embedder.embed_part(p, _reader_batches(self.reader, p.batches(self.batch_size)))
        return {**marker, "peak_live_rows": self.embedder.live.peak}


def _run_ray(args: dict, todo: list[PartPlan], workers: int | None, gpu: bool,
             address: str | None) -> Iterator[dict]:  # fmt: skip
    """``args``: RayPartWorker's. A local cluster's actors get this process's object-store client environment
    (endpoint, credentials; never logged) when DATA, RUN or EMB is a URL; a remote cluster brings its own."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as exc:  # pragma: no cover - the locked environment has Ray
        raise RuntimeError("--engine ray needs Ray installed; use --engine local") from exc
    from pipelines.ray_start import init_ray, require_gpus, worker_logs_to_driver

    # "local": a fresh instance even where `ray start` left a cluster running (None would attach to it)
    kwargs = {"address": address} if address else {"address": "local", "include_dashboard": False,
                                                    **({"num_cpus": workers} if workers else {})}  # fmt: skip
    if not address:
        env = remote_env(args["data"], args["run"], args["emb"])
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    started = init_ray(log_to_driver=worker_logs_to_driver(), configure_logging=False, **kwargs)
    try:
        if gpu:  # an attached cluster without a GPU would leave the actors waiting forever
            require_gpus(1)
        if not todo:
            return
        resources = ray.available_resources()
        slots = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1))
        n = max(1, min(len(todo), workers or slots))
        actor = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(RayPartWorker)
        pool = ActorPool([actor.remote(**args, gpu=gpu) for _ in range(n)])
        log.info("embed: %d parts on %d Ray actors", len(todo), n)
        yield from pool.map_unordered(lambda a, p: a.embed.remote(p.to_dict()), todo)
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class EmbedStats:
    """This run's counters (also in meta.json's ``last_run``): what it embedded, what it kept."""

    parts: int
    parts_embedded: int
    parts_kept: int
    samples_embedded: int
    peak_live_rows: int  # vectors held before their writer took them, at most one batch per modality
    index_built: list[str] = field(default_factory=list)
    index_kept: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole call
    embed_s: float = 0.0  # the parts loop: reading, inference, writing (model loading not included)
    index_s: float = 0.0  # building the indexes from the parts
    parts_moved: int = 0  # of parts_kept: finished parts of the same content under another part number


@dataclass(frozen=True)
class EmbedResult:
    emb: Path | storage.Location
    counts: dict[str, int]
    run_id: str
    stats: EmbedStats
    index: dict[str, dict]

    def summary_lines(self) -> list[str]:
        s = self.stats
        lines = [f"embed: run {self.run_id} -> {self.emb}",
                 f"  parts: {s.parts} ({s.parts_embedded} embedded, {s.parts_kept} kept, {s.parts_moved} moved), "
                 f"{s.samples_embedded} samples embedded in {s.seconds:.1f} s"]  # fmt: skip
        for m, n in self.counts.items():
            info = self.index.get(m, {})
            if info.get("recall_at_k") is not None:
                how = (f"{info['kind']} nlist {info['nlist']} nprobe {info['nprobe']}, recall@{info['k']} "
                       f"{info['recall_at_k']:.3f} on {info['queries']} held-out queries")  # fmt: skip
            elif info.get("fallback"):
                how = f"{info['kind']} ({info['fallback']})"
            else:
                how = info.get("kind", "-")
            lines.append(f"  {m}: {n} vectors, index {how}")
        return lines


def _fault(committed: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec.startswith("kill_after_parts:") and committed == int(spec.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.startswith("stop_after_parts:") and committed == int(spec.split(":")[1]):
        os.kill(os.getpid(), signal.SIGSTOP)  # alive and holding EMB's lock until the test kills it


def _read_marker(emb: Path | storage.Location, name: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(S.marker_path(emb, name)))
    except (FileNotFoundError, ValueError):
        return None


def _read_markers(emb: Path | storage.Location) -> dict[str, dict]:
    """Every part marker in EMB/_parts by part name, also those of part numbers the new plan no longer has."""
    names = [n[:-5] for n in storage.listdir(emb / S.PARTS) if n.startswith("part-") and n.endswith(".json")]
    found = {n: _read_marker(emb, n) for n in names}
    return {n: m for n, m in found.items() if m is not None and m.get("name") == n}


def _part_intact(emb: Path | storage.Location, marker: dict) -> bool:
    """Whether each file of a finished part is there as its marker recorded it: the same size (markers record
    it since sizes were added) and, on a local EMB, the row count in the Parquet footer (a few kB read; on a
    store the size alone, one HEAD per file). A part deleted, truncated or replaced after its commit is
    embedded again instead of being trusted."""
    sizes = marker.get("bytes") or {}
    for m, rows in (marker.get("rows") or {}).items():
        path = S.part_path(emb, m, marker["name"])
        try:
            if m in sizes and storage.stat(path).size != sizes[m]:
                return False
            if isinstance(path, Path) and pq.read_metadata(path).num_rows != rows:
                return False
        except (FileNotFoundError, NotADirectoryError, pa.ArrowException):
            return False
    return True


def _reuse_parts(emb: Path | storage.Location, plan: list[PartPlan]) -> tuple[dict[str, dict], int]:
    """The finished parts this run keeps, by the plan's part name, and how many of them were moved.

    Reuse follows content, not position: a part whose marker has the plan part's fingerprint is kept where
    it is; else an intact finished part elsewhere with that fingerprint (a shard renumbered because a shard
    was added or removed before it) is moved to the plan part's name. A part's rows hold no part name or
    shard, so a moved part is byte for byte what embedding the shard again would write."""
    intact = {n: m for n, m in _read_markers(emb).items() if _part_intact(emb, m)}
    kept = {p.name: intact[p.name] for p in plan if intact.get(p.name, {}).get("fingerprint") == p.fingerprint}
    spare: dict[str, dict] = {}
    for name, marker in sorted(intact.items()):
        if name not in kept:
            spare.setdefault(marker["fingerprint"], marker)
    moves = [(spare.pop(p.fingerprint), p) for p in plan if p.name not in kept and p.fingerprint in spare]
    moved = _move_parts(emb, moves) if moves else {}
    return {**kept, **moved}, len(moved)


def _move_parts(emb: Path | storage.Location, moves: list[tuple[dict, PartPlan]]) -> dict[str, dict]:
    """Give finished parts new part names: the markers of every name involved go first (a crash in between
    leaves parts to embed again, never a marker over other files), the files are moved aside into a staging
    folder (locally renamed, from a store downloaded), then placed at their new names, each new marker last.
    Two phases, so that a chain of renumbered parts (n -> n+1 -> n+2) never overwrites a source. Returns the
    new markers by part name."""
    for name in sorted({m["name"] for m, _ in moves} | {p.name for _, p in moves}):
        storage.delete(S.marker_path(emb, name))
    local = isinstance(emb, Path)
    stage = storage.staging_dir(emb / "reuse") if local else Path(tempfile.mkdtemp(prefix="bindset-reuse-"))
    out: dict[str, dict] = {}
    try:
        ready = []
        for marker, p in moves:
            staged = {m: stage / f"{p.name}.{m}.parquet" for m in marker["rows"]}
            ok = True
            for m, tmp in staged.items():
                src = S.part_path(emb, m, marker["name"])
                if local:
                    os.replace(src, tmp)
                else:
                    ok = storage.download(src, tmp) and ok
            if ok:
                ready.append((marker, p, staged))
        for marker, p, staged in ready:
            for m, tmp in staged.items():
                target = S.part_path(emb, m, p.name)
                if isinstance(target, Path):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    storage.place_file(tmp, target)
                    storage.fsync_dir(target.parent)
                else:
                    storage.upload(tmp, target)
            new = {**marker, "name": p.name, "shard": p.shard}
            storage.put_json(S.marker_path(emb, p.name), new, indent=None)
            out[p.name] = new
            log.info("embed: %s (%s) is %s of the last run, unchanged: moved", p.name, p.shard, marker["name"])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _remove_stale(emb: Path | storage.Location, keep: int) -> None:
    """Parts numbered ``keep`` and above (the dataset has fewer shards now) and leftover staging folders."""
    if isinstance(emb, storage.Location):  # no staging objects on a store: parts are staged in local temp folders
        for folder, suffix in [(S.PARTS, ".json"), *((m, ".parquet") for m in ALL)]:
            for name in storage.listdir(emb / folder):
                if name.startswith("part-") and name.endswith(suffix) and int(name[5:].split(".")[0]) >= keep:
                    storage.delete(emb / folder / name)
        return
    for tmp in [*emb.glob(".part-*.tmp"), *emb.glob(".reuse.*.tmp")]:
        shutil.rmtree(tmp, ignore_errors=True)
    if (emb / S.PARTS).is_dir():
        for marker in (emb / S.PARTS).glob("part-*.json"):
            if int(marker.stem.split("-")[1]) >= keep:
                marker.unlink()
    for m in ALL:
        for f in (emb / m).glob("part-*.parquet") if (emb / m).is_dir() else ():
            if int(f.stem.split("-")[1]) >= keep:
                f.unlink()


def embed(data: Path | str, run: Path | str, emb: Path | str, *, batch_size: int = 128, gpu: bool = False,
          engine: str = "local", ray_address: str | None = None, workers: int | None = None,
          index: IndexParams | None = None, progress=None) -> EmbedResult:  # fmt: skip
    """Embed every sample of DATA with RUN into EMB (module docstring), keeping finished, unchanged parts.

    ``engine``: local | ray; ``workers``: Ray actors (default: one per free CPU, or per GPU with ``gpu``).
    ``progress(total)`` returns a bar with ``update(n)``/``close()`` (counted in parts). Raises
    ``DatasetChanged`` when DATA is rebuilt during the run, ``MissingInputError`` without a trained model,
    ``InputError`` for an unknown engine, ``EmbLocked`` (exit 2) while another run writes into EMB.
    """
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    # before any work: a batch of 0 rows would uncommit EMB and then fail, a negative one commits empty parts
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be a whole number of at least 1")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise InputError(f"--workers {workers}: must be at least 1 (0 or none: one per free CPU, or GPU)")
    t0 = time.perf_counter()
    data, emb = dataset_location(data), S.emb_root(emb)  # local Paths, or s3:// / gs:// Locations
    if isinstance(data, Path):
        data = data.resolve()
    _refuse_emb_at(emb, data, run_location(run))
    index = index or IndexParams()
    cfg, run_id = run_identity(run)
    # index flags that cannot fit this run's vectors (pq_m not dividing the dimension): exit 2 before any work
    check_params(index, tower_embed_dim(cfg.tower))
    produced = produced_modalities(cfg)
    snap = open_dataset(data)
    table = SampleTable.load(data, None)
    if table.version != snap.version or table.pins != snap.pins:
        raise DatasetChanged(f"{data}: a new version was committed while it was opened; run `bindset embed` again")
    header = {"format": S.FORMAT, "run_id": run_id, "config": cfg.to_dict(), "batch_size": batch_size,
              "produced": produced}  # fmt: skip
    plan = plan_parts(snap.index, snap.shards, header)

    if isinstance(emb, Path):
        emb.mkdir(parents=True, exist_ok=True)
    with S.emb_lock(emb) as lock:  # one run per EMB: a second one exits 2 naming this one's host and pid
        try:
            old_meta = S.read_meta(emb)
        except S.EmbNotCommitted:
            old_meta = None
        # uncommit first: from here until the new meta.json, readers see "no committed embeddings", never a mix
        storage.delete(emb / META)
        # `bindset eval`'s report in EMB (its default out) describes the committed run and dataset version: it
        # goes unless this run embeds the same ones (nothing says which version an orphaned report was of)
        if old_meta is None or (old_meta.get("dataset_version"), old_meta.get("run_id")) != (table.version, run_id):
            for name in ("eval.json", "eval.md"):
                storage.delete(emb / name)
        if isinstance(emb, Path):
            storage.fsync_dir(emb)
        markers, moved = _reuse_parts(emb, plan)  # before _remove_stale: a part numbered past the plan may move
        _remove_stale(emb, len(plan))
        todo = [p for p in plan if p.name not in markers]
        log.info("embed: %d parts, %d to embed, %d kept (%d of them moved; %s engine)", len(plan), len(todo),
                 len(markers), moved, engine)  # fmt: skip

        bar = progress(len(todo)) if progress and todo else None
        peak, threads = 0, torch.get_num_threads()
        if engine == "local":
            workers_n = cfg.data.loader_workers
            batches = start_local_batches(table, todo, batch_size, workers_n)  # the loaders start while the model loads
            lr = load_run(run, "cuda" if gpu else "cpu")
            embedder = PartEmbedder(lr, table, emb, produced)
            if lr.device.type == "cpu" and workers_n:
                threads = cpu_threads(workers_n)
            t_loop = time.perf_counter()
            done = _run_local(embedder, todo, batch_size, batches)
        else:
            embedder = None
            args = {"data": str(data), "run": str(run_location(run)), "emb": str(emb), "version": table.version,
                    "batch_size": batch_size}  # fmt: skip
            done = _run_ray(args, todo, workers, gpu, ray_address)
            t_loop = time.perf_counter()
        with _threads(threads):
            for committed, marker in enumerate(done, 1):
                markers[marker["name"]] = marker
                peak = max(peak, marker.get("peak_live_rows", 0))
                if bar is not None:
                    bar.update(1)
                _fault(committed)
        if bar is not None:
            bar.close()
        embed_s = time.perf_counter() - t_loop
        if embedder is not None:
            peak = embedder.live.peak
            del embedder, lr  # the model is not needed for the index: free it first

        parts = [{k: markers[p.name][k] for k in ("name", "shard", "fingerprint", "samples", "rows")} for p in plan]
        counts = {m: sum(p["rows"].get(m, 0) for p in parts) for m in produced}
        counts = {m: n for m, n in counts.items() if n}
        dim = _dim(emb, parts, counts)
        meta = {"format": S.FORMAT, "run": str(run_location(run)), "run_id": run_id, "data": str(data),
                "dataset_version": table.version, "dim": dim, "modalities": list(counts), "counts": counts,
                "parts": parts, "index_params": index.to_dict(), "tower": cfg.to_dict()["tower"]}  # fmt: skip
        infos, built, kept = {}, [], []
        t_index = time.perf_counter()
        for m, n in counts.items():
            same = (old_meta is not None and m in old_meta.get("index", {}) and storage.exists(S.index_path(emb, m))
                    and old_meta.get("index_params") == meta["index_params"]
                    and [p["fingerprint"] for p in old_meta["parts"]] == [p["fingerprint"] for p in parts])  # fmt: skip
            if same:
                infos[m] = old_meta["index"][m]
                kept.append(m)
                continue
            b = build_index(lambda m=m: S.iter_vectors(emb, m, meta), n, dim, index)
            write_index(b.index, S.index_path(emb, m))
            infos[m] = b.info.to_dict()
            built.append(m)
            del b
        stats = EmbedStats(len(plan), len(todo), len(plan) - len(todo), sum(len(p.rows) for p in todo), peak,
                           built, kept, time.perf_counter() - t0, embed_s, time.perf_counter() - t_index,
                           moved)  # fmt: skip
        meta.update(index=infos, last_run={**asdict(stats), "engine": engine})
        if isinstance(lock, S.EmbLease):  # a lease lost in an outage, or overwritten on a store ignoring preconditions
            lock.require_held()
        storage.put_json(emb / META, meta, indent=1)  # last: its presence marks a complete EMB folder
        return EmbedResult(emb, counts, run_id, stats, infos)


#: the folders a run writes into itself (training/run_store.py, the loop's logs and Ray Train's storage): an EMB
#: there would mix its parts and meta.json with the run's; a folder of its own inside RUN (the train DAG's
#: RUN/emb) is fine
_RUN_OWN = ("checkpoints", "model", "logs", "ray")


def _refuse_emb_at(emb: Path | storage.Location, data: Path | storage.Location, run: Path | storage.Location) -> None:
    """Raise ``InputError`` (exit 2, before anything is written) for an EMB that is DATA or inside it, that is
    RUN or inside one of the run's own folders (``_RUN_OWN``), as build refuses DATA inside RAW: EMB's stale-part
    cleanup and meta.json would write into them; and for a local EMB that is a file or lies under one. URLs
    compare by scheme and key prefix."""

    def at(x: Path | storage.Location) -> tuple[str, str]:
        return ("", str(x.resolve())) if isinstance(x, Path) else (x.scheme, x.path.rstrip("/"))

    def inside(e: tuple[str, str], o: tuple[str, str]) -> bool:
        return e[0] == o[0] and (e[1] == o[1] or e[1].startswith(o[1].rstrip("/") + "/"))

    e, d, r = at(emb), at(data), at(run)
    if inside(e, d):
        raise InputError(f"EMB {emb} must not be DATA {data} or inside it; give a folder of its own")
    if e == r or any(inside(e, (r[0], f"{r[1]}/{own}")) for own in _RUN_OWN):
        raise InputError(f"EMB {emb} must not be RUN {run} or one of its own folders ({', '.join(_RUN_OWN)}); "
                         "give a folder of its own (RUN/emb is fine)")  # fmt: skip
    if isinstance(emb, Path):
        for p in [emb, *emb.parents]:
            if p.exists():
                if not p.is_dir():
                    raise InputError(f"EMB {emb}: {p} is a file, not a folder")
                break


def _dim(emb: Path | storage.Location, parts: list[dict], counts: dict[str, int]) -> int:
    for m in counts:
        for p in parts:
            if p["rows"].get(m):
                return storage.read_parquet_schema(S.part_path(emb, m, p["name"])).field("vector").type.list_size
    return 0


def read_vectors(emb: Path | str, modality: str, split: str | None = None) -> tuple[pa.Table, np.ndarray]:
    """A modality's rows (without the vector column) and vectors as an N x D float32 matrix (emb_store)."""
    return S.read_vectors(emb, modality, split)
