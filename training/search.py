"""`bindset search`: cross-modal nearest neighbours over materialised embeddings.

    bindset search EMB --text "birds singing" --to audio -k 5
    bindset search EMB --audio clip.wav --to depth
    bindset search EMB --image photo.jpg            # --to image by default
    bindset search EMB --key s000_003_000004000 --from audio --to depth

The query is embedded with the run that made EMB (its path is in EMB/meta.json): text by the frozen text
tower, an image by the frozen image tower, an audio file's first 2 s by the audio encoder (ImageBind's
log-mel), a depth or thermal PNG by its encoder; ``--key`` reuses a stored vector. The search goes to the
modality's FAISS index (exact, or IVF with the ``nprobe`` meta.json records) and reads back only the parts
that hold the hits (training/emb_store.py).

EMB (and the RUN that meta.json names) may be ``s3://`` / ``gs://`` URLs: parts are read through the storage
seam, and an index is downloaded once to a local cache keyed by its URL and ETag (vector_index.local_index).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas import modalities as M
from schemas.errors import InputError, MissingInputError
from training import emb_store as S
from training.embed import load_run
from training.vector_index import read_index

QUERY_KINDS = ("text", "image", "audio", "depth", "thermal", "key")


@dataclass(frozen=True)
class Hit:
    rank: int
    key: str
    score: float
    split: str
    label: str | None


def _audio_mel(path: Path) -> np.ndarray:
    """The first 2 s window through the build's own audio path (decode, 16 kHz resample, cut, log-mel).
    A query shorter than 2 s is zero-padded, as a track edge is in the build."""
    from transforms.audio import WINDOW_S, WindowRequest, decode_windows

    (result,) = decode_windows(path, [WindowRequest("query", 0.0)], tolerance_s=WINDOW_S)
    if result.mel is None:
        raise InputError(f"{path}: no usable audio ({result.detail})")
    return result.mel


def _read_image(path: Path, flags: int) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.fromfile(path, np.uint8), flags)
    if img is None:
        raise InputError(f"{path}: not a readable image")
    return img


def query_vector(emb, kind: str, value: str, source: str | None = None) -> np.ndarray:
    import cv2

    from training.inputs import collate

    emb = S.emb_root(emb)
    if kind == "key":
        if not source:
            raise InputError("--key needs --from MODALITY (which of the sample's embeddings to query with)")
        vector = S.find_key(emb, source, value)
        if vector is None:
            raise InputError(f"no {source} embedding for key {value!r} in {emb}")
        return vector
    meta = S.read_meta(emb)
    lr = load_run(meta["run"])
    with torch.no_grad():
        if kind == "text":
            return lr.towers.encode_text([value], lr.device)[0].cpu().numpy()
        path = Path(value)
        if kind == "image":
            rgb = _read_image(path, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
            sample = {"index": 0, "loader_worker": 0, M.PAIRED_IMAGE.member: rgb}
            frames = lr.inputs.frames(collate([sample]), lr.device, train=False)
            return lr.towers.image_embedding(frames, "first")[0].cpu().numpy()
        if kind not in lr.cfg.modalities:
            raise InputError(f"run {meta['run_id']} has no {kind} encoder (it trained {', '.join(lr.cfg.modalities)})")
        value_in = _audio_mel(path) if kind == "audio" else _read_image(path, cv2.IMREAD_UNCHANGED)
        sample = {"index": 0, "loader_worker": 0, M.TRAINABLE_MEMBER[kind]: value_in}
        enc_in, _ = lr.inputs.encoders(collate([sample]), lr.device, (kind,))
        return lr.model(enc_in)[kind][0].cpu().numpy()


def search(emb: Path | str, kind: str, value: str, *, to: str = "image", k: int = 5,
           source: str | None = None) -> list[Hit]:  # fmt: skip
    """The ``k`` nearest ``to`` rows of a query (module docstring), best first.

    Raises ``EmbNotCommitted`` (no committed EMB), ``MissingInputError`` (``to`` was not embedded) and
    ``InputError`` (an unusable query, ``k`` < 1)."""
    if k < 1:
        raise InputError(f"-k {k}: must be at least 1")  # FAISS asserts k > 0 (exit 3 otherwise)
    emb = S.emb_root(emb)
    meta = S.read_meta(emb)
    if to not in meta["modalities"]:
        raise MissingInputError(f"{emb}: no {to} embeddings (it has {', '.join(meta['modalities'])})")
    q = query_vector(emb, kind, value, source).astype(np.float32)[None]
    index = read_index(S.index_path(emb, to), meta["index"][to].get("nprobe"))
    scores, ids = index.search(q / np.linalg.norm(q), k)
    found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
    rows = S.rows_at(emb, to, [i for _, i in found], ("key", "split", "label"))
    return [Hit(r + 1, row["key"], s, row["split"], row["label"])
            for r, ((s, _), row) in enumerate(zip(found, rows, strict=True))]  # fmt: skip
