"""FAISS inner-product indexes over a modality's embedding parts, built with bounded memory, and their recall.

    built = build_index(chunks, n, dim, IndexParams())   # chunks(): a fresh iterator of (rows x dim) float32
    built.index.search(queries, 10)                      # ids are row numbers in the parts' order

Up to ``exact_max`` rows the index is exact (``IndexFlatIP``). Above it, an inverted-file index: the coarse
quantizer (``nlist`` centroids) is trained by k-means on a random sample of the rows (``train_per_list`` per
list, FAISS's guideline is 39..256), and the rows are added part by part, in batches of ``add_batch``, so
building never holds more than the index itself plus one batch. ``ivf_flat`` stores the vectors exactly
(recall is limited only by ``nprobe``); ``ivf_pq`` stores ``pq_m`` bytes per vector (8-bit codes) for
archives whose vectors no longer fit in memory, at some recall.

Recall@k of an approximate index is measured against exact search on held-out queries (rows not in the
k-means sample), with the query's own row left out of both result lists, and ties counted as hits: a
returned row counts when its exact score reaches the k-th best exact score (text rows repeat one caption's
vector, so ids alone would be ambiguous). ``nprobe`` starts at ``nprobe`` and doubles until the recall
reaches ``target_recall`` or every list is probed; the chosen value is stored in the index file and in
``IndexInfo``. Sources: FAISS wiki "Guidelines to choose an index" (nlist ~ sqrt(N) .. 16 sqrt(N), 39..256
training points per centroid) and "Faster search" (nprobe trades speed for recall).

Fallback to exact: an inverted file pays off only when a query scans a small share of the lists. When the
sample gives fewer than ``min_train_per_list`` rows per list (k-means on fewer than FAISS's 39 per centroid
gives meaningless lists), or when ``ivf_flat`` needs ``nprobe >= max_probe_fraction * nlist`` to reach the
target recall (no cluster structure for the lists to follow: random vectors need every list), the exact
index is built instead: it is then faster to search, as accurate, and no larger. ``IndexInfo.fallback``
says why, with the numbers (meta.json). ``ivf_pq`` keeps its index (it is chosen when the vectors do not
fit in memory, which the exact index would need); a recall short of the target is logged.

IVF-PQ's training rows: each of its ``pq_m`` sub-quantizers is a k-means with 256 centroids (8-bit codes), which
FAISS cannot train on fewer than 256 rows (``Clustering``: "nx >= k"): below ``PQ_HARD_MIN_TRAIN`` sample rows
the exact index is built instead (``IndexInfo.fallback``). The sample asks for ``PQ_MIN_TRAIN`` = 39 x 256 rows
(FAISS warns below 39 per centroid); between the two the index is built, with a warning, at a lower recall.
``check_params`` rejects a ``pq_m`` that does not divide the dimension before any vector is made.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from schemas.config import StrictConfig
from schemas.errors import InputError

log = logging.getLogger(__name__)

Chunks = Callable[[], Iterator[np.ndarray]]

# IVF-PQ's sub-quantizers have 256 centroids each (8-bit codes); FAISS warns below 39 training rows per centroid
PQ_MIN_TRAIN = 39 * 256
# ... and cannot train them on fewer rows than centroids (faiss/Clustering.cpp: "nx >= k")
PQ_HARD_MIN_TRAIN = 256


class IndexParams(StrictConfig):
    """How a modality's index is chosen and built (recorded in EMB/meta.json next to what was built)."""

    exact_max: int = Field(200_000, ge=0, description="rows up to which the index is exact (FAISS IndexFlatIP)")
    kind: Literal["ivf_flat", "ivf_pq"] = Field("ivf_flat", description="the approximate index above exact_max")
    nlist: int | None = Field(None, ge=1, description="inverted lists; none: round(sqrt(rows))")
    train_per_list: int = Field(64, ge=1, description="k-means sample rows per list (FAISS: 39..256)")
    nprobe: int = Field(8, ge=1, description="lists probed at first; doubled until target_recall is reached")
    target_recall: float = Field(0.95, gt=0, le=1, description="recall@k against exact search to tune nprobe to")
    pq_m: int | None = Field(None, ge=1, description="ivf_pq: bytes per vector, dividing the dimension; none: dim/8")
    queries: int = Field(500, ge=1, description="held-out query rows for recall@k")
    k: int = Field(10, ge=1, description="the k of recall@k")
    add_batch: int = Field(65_536, ge=1, description="rows per index.add call")
    seed: int = Field(0, description="seed of the query and training samples")
    min_train_per_list: int = Field(39, ge=1, description="fewer sample rows per list: the exact index instead")
    max_probe_fraction: float = Field(0.5, gt=0, le=1, description="ivf_flat whose tuned nprobe reaches this "
                                      "share of nlist: the exact index instead (1: never)")  # fmt: skip


@dataclass
class IndexInfo:
    """What was built: recorded per modality in EMB/meta.json."""

    kind: str  # flat_ip | ivf_flat | ivf_pq
    rows: int
    dim: int
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    train_rows: int | None = None
    recall_at_k: float | None = None  # None for the exact index (1 by definition)
    k: int | None = None
    queries: int | None = None
    tried: list[tuple[int, float]] = field(default_factory=list)  # (nprobe, recall) on the way
    build_s: float = 0.0
    fallback: str | None = None  # why the exact index was built where an approximate one was asked for

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tried"] = [list(t) for t in self.tried]
        return d


@dataclass
class BuiltIndex:
    index: object  # faiss.Index
    info: IndexInfo


def take_rows(chunks: Chunks, ids: np.ndarray) -> np.ndarray:
    """The rows ``ids`` (sorted, unique) in one pass over the chunks: (len(ids) x dim) float32."""
    out, offset, j = [], 0, 0
    for chunk in chunks():
        end = offset + len(chunk)
        stop = j + int(np.searchsorted(ids[j:], end))
        if stop > j:
            out.append(np.ascontiguousarray(chunk[ids[j:stop] - offset], np.float32))
        j, offset = stop, end
    if j != len(ids):
        raise ValueError(f"rows {ids[j : j + 3].tolist()}... are past the end ({offset} rows)")
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def exact_truth(chunks: Chunks, queries: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, list[set]]:
    """Exact search, streamed over the chunks: each query's k-th best score (its own row left out) and the
    rows that reach it (more than k where scores tie). Two passes; memory: queries x one chunk."""
    q = len(queries)
    best = np.full((q, k), -np.inf, np.float32)
    offset = 0
    for chunk in chunks():
        s = queries @ chunk.T
        own = (self_ids >= offset) & (self_ids < offset + len(chunk))
        s[np.nonzero(own)[0], self_ids[own] - offset] = -np.inf
        both = np.concatenate([best, s], axis=1)
        best = np.partition(both, both.shape[1] - k, axis=1)[:, -k:]
        offset += len(chunk)
    kth = best.min(axis=1) - 1e-5  # float32 sums differ by a few ulps between FAISS and numpy
    hits: list[set] = [set() for _ in range(q)]
    offset = 0
    for chunk in chunks():
        s = queries @ chunk.T
        for i, col in zip(*np.nonzero(s >= kth[:, None]), strict=True):
            if offset + col != self_ids[i]:
                hits[i].add(int(offset + col))
        offset += len(chunk)
    return kth, hits


def recall_at_k(index, queries: np.ndarray, self_ids: np.ndarray, truth: list[set], k: int) -> float:
    """Share of the approximate top k (own row left out) that the exact search also ranks in its top k."""
    _, ids = index.search(queries, k + 1)
    got = 0
    for i, row in enumerate(ids):
        mine = [int(x) for x in row if x >= 0 and x != self_ids[i]][:k]
        got += len(set(mine) & truth[i])
    return got / (k * len(queries))


def _flat(dim: int):
    import faiss

    return faiss.IndexFlatIP(dim)


def _build_flat(chunks: Chunks, n: int, dim: int, t0: float, fallback: str | None = None) -> BuiltIndex:
    if fallback:
        log.info("index of %d rows: exact (%s)", n, fallback)
    index = _flat(dim)
    added = 0
    for chunk in chunks():
        index.add(np.ascontiguousarray(chunk, np.float32))
        added += len(chunk)
    if added != n:
        raise ValueError(f"expected {n} rows, the parts hold {added}")
    return BuiltIndex(index, IndexInfo("flat_ip", n, dim, build_s=time.perf_counter() - t0, fallback=fallback))


def pq_m(params: IndexParams, dim: int) -> int:
    """IVF-PQ's sub-quantizers (bytes per vector): ``params.pq_m``, else the largest divisor of ``dim`` up to
    ``dim / 8`` (8 dimensions a byte; 128 at 1,024). Raises ``InputError`` (exit 2) when ``params.pq_m`` does not
    divide ``dim`` (FAISS's ProductQuantizer splits the vector into ``pq_m`` equal sub-vectors)."""
    if params.pq_m is not None:
        if dim % params.pq_m:
            raise InputError(f"index pq_m {params.pq_m} (--index-pq-m) must divide the embedding dimension {dim} "
                             f"(e.g. {', '.join(str(d) for d in _divisors(dim)[-4:])})")  # fmt: skip
        return params.pq_m
    return max(d for d in _divisors(dim) if d <= max(1, dim // 8))


def _divisors(dim: int) -> list[int]:
    return [d for d in range(1, dim + 1) if dim % d == 0]


def check_params(params: IndexParams, dim: int) -> None:
    """Reject index parameters that cannot build an index of ``dim``-dimensional vectors, before any vector is
    made: a ``pq_m`` that does not divide ``dim`` (``InputError``, exit 2; checked whatever ``kind`` and the
    data's size, so that a run that happens to fall back to exact does not hide it)."""
    if dim >= 1:
        pq_m(params, dim)


def build_index(chunks: Chunks, n: int, dim: int, params: IndexParams | None = None) -> BuiltIndex:
    """An inner-product index over the ``n`` rows that ``chunks()`` yields (row i = id i).

    Exact up to ``params.exact_max`` rows, else ``params.kind`` trained on a sample and tuned to
    ``params.target_recall``, or exact again where the approximate index would not pay off or cannot be
    trained (``IndexInfo.fallback``; module docstring). Raises ``ValueError`` when the chunks hold fewer than
    ``n`` rows, ``InputError`` for parameters ``check_params`` rejects.
    """
    import faiss

    params = params or IndexParams()
    check_params(params, dim)
    t0 = time.perf_counter()
    if n <= params.exact_max:
        return _build_flat(chunks, n, dim, t0)

    rng = np.random.default_rng(params.seed)
    nlist = params.nlist or max(1, round(math.sqrt(n)))
    n_q = min(params.queries, max(1, n // 10))
    order = rng.permutation(n)
    query_ids = np.sort(order[:n_q])
    want = params.train_per_list * nlist
    if params.kind == "ivf_pq":
        want = max(want, PQ_MIN_TRAIN)
    train_ids = np.sort(order[n_q : n_q + min(n - n_q, want)])
    if len(train_ids) < params.min_train_per_list * nlist:
        why = (f"{len(train_ids)} sample rows for {nlist} lists: fewer than min_train_per_list "
               f"{params.min_train_per_list} per list to train {params.kind} on")  # fmt: skip
        return _build_flat(chunks, n, dim, t0, why)
    if params.kind == "ivf_pq" and len(train_ids) < PQ_HARD_MIN_TRAIN:
        why = (f"{len(train_ids)} sample rows: ivf_pq's 256-centroid sub-quantizers need at least "
               f"{PQ_HARD_MIN_TRAIN} to train on")  # fmt: skip
        return _build_flat(chunks, n, dim, t0, why)
    if params.kind == "ivf_pq" and len(train_ids) < PQ_MIN_TRAIN:
        log.warning("ivf_pq trained on %d sample rows, fewer than 39 x 256 = %d: lower recall", len(train_ids),
                    PQ_MIN_TRAIN)  # fmt: skip
    quantizer = _flat(dim)
    if params.kind == "ivf_pq":
        m = pq_m(params, dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        m = None
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(take_rows(chunks, train_ids))
    added = 0
    for chunk in chunks():
        for i in range(0, len(chunk), params.add_batch):
            part = np.ascontiguousarray(chunk[i : i + params.add_batch], np.float32)
            index.add(part)  # ids continue from ntotal: row numbers in the parts' order
            added += len(part)
    if added != n:
        raise ValueError(f"expected {n} rows, the parts hold {added}")
    info = IndexInfo(params.kind, n, dim, nlist=nlist, pq_m=m, train_rows=len(train_ids))
    k = min(params.k, n - 1)
    queries = take_rows(chunks, query_ids)
    _, truth = exact_truth(chunks, queries, query_ids, k)
    nprobe = min(params.nprobe, nlist)
    frac = params.max_probe_fraction
    may_fall_back = params.kind == "ivf_flat" and frac < 1
    while True:
        index.nprobe = nprobe
        r = recall_at_k(index, queries, query_ids, truth, k)
        info.tried.append((nprobe, round(r, 4)))
        # past max_probe_fraction the exact index is built whatever the recall: probing further would only cost
        if r >= params.target_recall or nprobe >= nlist or (may_fall_back and nprobe >= frac * nlist):
            break
        nprobe = min(2 * nprobe, nlist)
    info.nprobe, info.recall_at_k, info.k, info.queries = nprobe, r, k, len(query_ids)
    if may_fall_back and nprobe >= frac * nlist:
        del index
        why = (f"ivf_flat needed nprobe {nprobe} of nlist {nlist} (>= max_probe_fraction {frac:g}) for recall@{k} "
               f"{r:.3f}: an exact search is as fast")  # fmt: skip
        built = _build_flat(chunks, n, dim, t0, why)
        built.info.tried = info.tried
        return built
    info.build_s = time.perf_counter() - t0
    if r < params.target_recall:
        log.warning("%s index of %d rows: recall@%d %.3f < %.2f even with every list probed", params.kind, n, k, r,
                    params.target_recall)  # fmt: skip
    return BuiltIndex(index, info)


def write_index(index, path) -> None:
    """Write a FAISS index atomically (tmp + fsync + rename, pipelines/storage.py); ``path`` may be an object-store
    Location/URL: FAISS writes a local temp file, which is uploaded with one PUT."""
    import tempfile

    import faiss

    from pipelines import storage

    loc = storage.location(path)
    if loc.is_local:
        storage.atomic_write_with(loc.path, lambda tmp: faiss.write_index(index, str(tmp)))
        return
    with tempfile.TemporaryDirectory(prefix="bindset-index-") as tmp:
        faiss.write_index(index, f"{tmp}/index.faiss")
        storage.upload(f"{tmp}/index.faiss", loc)


def index_cache_dir() -> Path:
    """Where indexes read from object storage are kept: ``$BINDSET_CACHE_DIR/faiss``, else under the temp folder."""
    import os
    import tempfile

    root = os.environ.get("BINDSET_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "bindset-cache")
    return Path(root) / "faiss"


def local_index(path) -> Path:
    """A local file holding the index at ``path``: ``path`` itself, or for an object a cached download named by
    the URL and the object's identity (size and ETag/generation), so a rewritten index is fetched again and an
    unchanged one is downloaded once."""
    import hashlib

    from pipelines import storage

    loc = storage.location(path)
    if loc.is_local:
        return Path(loc.path)
    info = storage.stat(loc)
    key = hashlib.sha256(f"{loc.url} {info.identity}".encode()).hexdigest()[:32]
    cached = index_cache_dir() / f"{key}.faiss"
    if not cached.exists():
        storage.download(loc, cached)  # atomic: a concurrent reader sees the whole file or none
    return cached


def read_index(path, nprobe: int | None = None):
    """Read a FAISS index (a local file, or an object through ``local_index``'s cache); ``nprobe`` (from
    meta.json) is set again on IVF indexes."""
    import faiss

    index = faiss.read_index(str(local_index(path)))
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    return index
