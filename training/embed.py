"""`bindset embed`: batch inference of a trained run over every sample and modality of a dataset.

    bindset embed DATA RUN EMB [--gpu] [--batch-size 128]

Writes, per modality (image = the frozen tower on the paired frames, text = the frozen text tower on
the caption, and each trained encoder):
    EMB/<modality>.parquet    key, modality, split, session, label, run_id, vector (fixed-size list)
    EMB/index/<modality>.faiss  a FAISS inner-product index over that file's rows (row i = id i)
    EMB/meta.json             the run, its id, the tower, the dataset version, counts and index types

FAISS, not LanceDB: the vectors are already in Parquet, so what is missing is only a fast nearest-
neighbour structure; FAISS is one wheel with no service or storage format of its own, is exact
(IndexFlatIP) at the sizes a test or a single dataset version has, and switches to an IVF index for
large files. LanceDB would duplicate the Parquet data in its own format for filtering we do not need.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines import storage
from schemas import modalities as M
from schemas.errors import MissingInputError
from training.checkpoint import MODEL, STATE
from training.config import TrainConfig
from training.encoders import BindingModel
from training.inputs import ModelInputs, collate
from training.shards import SampleReader, SampleTable, loader_context

ALL = ("image", "text", "audio", "depth", "thermal", "imu")
EXACT_MAX = 200_000  # rows up to which an exact flat index is used
META = "meta.json"


@dataclass
class LoadedRun:
    cfg: TrainConfig
    model: BindingModel
    towers: object  # FrozenTowers
    inputs: ModelInputs
    run_id: str
    device: torch.device


def load_run(run: Path | str, device: str | torch.device = "cpu") -> LoadedRun:
    from safetensors.torch import load_file

    from training.towers import FrozenTowers

    final = Path(run) / "model"
    if not (final / MODEL).exists():
        raise MissingInputError(f"{run}: no trained model ({final / MODEL} missing); run `bindset train` first")
    cfg = TrainConfig.from_dict(json.loads((final / STATE).read_text())["config"])
    device = torch.device(device)
    towers = FrozenTowers(cfg.tower, device)
    model = BindingModel({m: cfg.encoder(m) for m in cfg.modalities}, towers.embed_dim)
    model.load_state_dict(load_file(final / MODEL))
    model.to(device).eval()
    digest = hashlib.sha256((final / MODEL).read_bytes()).hexdigest()[:12]
    inputs = ModelInputs(cfg.data, towers.image_size, towers.mean, towers.std)
    return LoadedRun(cfg, model, towers, inputs, f"{Path(run).name}-{digest}", device)


@dataclass(frozen=True)
class EmbedResult:
    emb: Path
    counts: dict[str, int]
    run_id: str

    def summary_lines(self) -> list[str]:
        return [f"embed: run {self.run_id} -> {self.emb}",
                *(f"  {m}: {n} vectors" for m, n in self.counts.items())]  # fmt: skip


def _write_index(vectors: np.ndarray, path: Path) -> str:
    import faiss

    d = vectors.shape[1]
    if len(vectors) <= EXACT_MAX:
        index, kind = faiss.IndexFlatIP(d), "flat_ip"
    else:
        nlist = int(4 * np.sqrt(len(vectors)))
        index, kind = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT), f"ivf{nlist}"
        sample = vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 256 * nlist), False)]
        index.train(sample)
        index.nprobe = 16
    if len(vectors):
        index.add(vectors)
    storage.atomic_write_with(path, lambda tmp: faiss.write_index(index, str(tmp)))
    return kind


def embed(data: Path | str, run: Path | str, emb: Path | str, *, batch_size: int = 128, gpu: bool = False,
          progress=None) -> EmbedResult:  # fmt: skip
    data, emb = Path(data).resolve(), Path(emb).resolve()
    lr = load_run(run, "cuda" if gpu else "cpu")
    table = SampleTable.load(data, None)
    want = frozenset(M.MEMBERS) - {M.TEXT.member}
    batches = [list(range(i, min(i + batch_size, len(table)))) for i in range(0, len(table), batch_size)]
    workers = lr.cfg.data.loader_workers
    loader = torch.utils.data.DataLoader(
        SampleReader(table, want),
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=workers,
        multiprocessing_context=loader_context(workers),
    )
    rows: dict[str, list[int]] = {m: [] for m in ALL}
    vecs: dict[str, list[np.ndarray]] = {m: [] for m in ALL}
    text_cache: dict[str, torch.Tensor] = {}
    bar = progress(len(batches)) if progress else None
    with torch.no_grad():
        for batch in loader:
            idx = batch["index"].numpy()
            out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            if "frame0" in batch:
                frames = lr.inputs.frames(batch, lr.device, train=False)
                out["image"] = (lr.towers.image_embedding(frames, lr.cfg.data.image_frames), frames["frame0_mask"])
            enc_in, masks = lr.inputs.encoders(batch, lr.device, lr.cfg.modalities)
            for m, e in lr.model(enc_in).items():
                out[m] = (e, masks[m])
            captions = [table.captions[i] for i in idx]
            # captions repeat (one per label, per file): the text tower sees each distinct one once
            new = sorted({c for c in captions if c and c not in text_cache})
            if new:
                text_cache.update(zip(new, lr.towers.encode_text(new, lr.device).cpu(), strict=True))
            have = [i for i, c in enumerate(captions) if c]
            if have:
                text = torch.zeros(len(idx), lr.towers.embed_dim)
                text[have] = torch.stack([text_cache[captions[i]] for i in have])
                mask = torch.zeros(len(idx), dtype=torch.bool)
                mask[have] = True
                out["text"] = (text, mask)
            for m, (e, mask) in out.items():
                ok = mask.cpu().numpy()
                rows[m] += idx[ok].tolist()
                vecs[m].append(e.float().cpu().numpy()[ok])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    (emb / "index").mkdir(parents=True, exist_ok=True)
    dim = lr.towers.embed_dim
    counts, kinds = {}, {}
    for m in ALL:
        if not rows[m]:
            continue
        v = np.concatenate(vecs[m]).astype(np.float32)
        r = rows[m]
        table_out = pa.table({
            "key": [table.keys[i] for i in r],
            "modality": [m] * len(r),
            "split": [table.splits[i] for i in r],
            "session": [table.sessions[i] for i in r],
            "label": [table.labels[i] for i in r],
            "run_id": [lr.run_id] * len(r),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), dim),
        })  # fmt: skip
        storage.atomic_write_parquet(emb / f"{m}.parquet", table_out)
        kinds[m] = _write_index(v, emb / "index" / f"{m}.faiss")
        counts[m] = len(r)
    meta = {"run": str(Path(run).resolve()), "run_id": lr.run_id, "data": str(data),
            "dataset_version": table.version, "dim": dim, "counts": counts, "index": kinds,
            "tower": lr.cfg.to_dict()["tower"]}  # fmt: skip
    storage.atomic_write_json(emb / META, meta, indent=1)  # last: its presence marks a complete EMB folder
    return EmbedResult(emb, counts, lr.run_id)


def read_vectors(emb: Path | str, modality: str) -> tuple[pa.Table, np.ndarray]:
    """A modality's rows (without the vector column) and its vectors as an N x D float32 matrix."""
    path = Path(emb) / f"{modality}.parquet"
    if not path.exists():
        raise MissingInputError(f"{path}: no {modality} embeddings")
    t = pq.read_table(path)
    col = t.column("vector").combine_chunks()
    dim = col.type.list_size
    vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return t.drop(["vector"]), vectors
