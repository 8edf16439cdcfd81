"""`bindset embed` / `search` arguments that used to crash or hang (issue 18's tester): IVF-PQ on too few rows,
a ``pq_m`` that does not divide the dimension, ``-k`` < 1, ``--gpu`` without a GPU, an unreachable
``--ray-address``, ``--workers 0`` (training/vector_index.py, bindset/cli.py, pipelines/ray_start.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from schemas.errors import InputError
from training.vector_index import PQ_HARD_MIN_TRAIN, IndexParams, build_index, check_params, pq_m


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ index


@pytest.mark.parametrize("n", [100, 250])
def test_ivf_pq_on_fewer_rows_than_its_sub_quantizers_need_falls_back_to_exact(n):
    x = _unit(n, 16)
    params = IndexParams(exact_max=0, kind="ivf_pq", min_train_per_list=1, nlist=2, queries=10)
    built = build_index(lambda: iter(np.array_split(x, 3)), n, 16, params)
    train = n - min(10, n // 10)  # every row not held out as a query
    assert built.info.kind == "flat_ip" and built.index.ntotal == n
    assert built.info.fallback == (f"{train} sample rows: ivf_pq's 256-centroid sub-quantizers need at least "
                                   f"{PQ_HARD_MIN_TRAIN} to train on")  # fmt: skip
    _, ids = built.index.search(x[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]  # exact: each row finds itself


def test_ivf_pq_from_256_training_rows_is_built():
    x = _unit(300, 16)
    params = IndexParams(exact_max=0, kind="ivf_pq", min_train_per_list=1, nlist=2, queries=10, pq_m=4)
    built = build_index(lambda: iter([x]), 300, 16, params)
    assert built.info.kind == "ivf_pq" and built.info.fallback is None
    assert built.info.train_rows == 290 and built.info.pq_m == 4 and built.index.ntotal == 300


def test_pq_m_must_divide_the_dimension_and_is_checked_before_any_index_work():
    with pytest.raises(InputError, match=r"pq_m 5 \(--index-pq-m\) must divide the embedding dimension 32"):
        check_params(IndexParams(kind="ivf_pq", pq_m=5), 32)
    check_params(IndexParams(kind="ivf_pq", pq_m=8), 32)
    check_params(IndexParams(), 32)
    # rejected even where the data would have fallen back to exact (it used to pass there silently)
    x = _unit(20, 32)
    calls = []

    def chunks():
        calls.append(1)
        return iter([x])

    with pytest.raises(InputError, match="pq_m 5"):
        build_index(chunks, 20, 32, IndexParams(kind="ivf_pq", pq_m=5))
    assert calls == []  # before reading a single row
    # the default divides any dimension: the largest divisor up to dim / 8
    assert [pq_m(IndexParams(), d) for d in (1024, 32, 44, 13)] == [128, 4, 4, 1]
