"""`bindset embed` / `search` arguments that used to crash or hang (issue 18's tester): IVF-PQ on too few rows,
a ``pq_m`` that does not divide the dimension, ``-k`` < 1, ``--gpu`` without a GPU, an unreachable
``--ray-address``, ``--workers 0`` (training/vector_index.py, bindset/cli.py, pipelines/ray_start.py).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from bindset.cli import main
from pipelines import ray_start
from schemas.errors import InputError, UserError
from training.search import search
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


# ------------------------------------------------------------------------------------------ command line


def _cli(tmp_path: Path, *argv: str) -> int:
    return main([*argv, "--log-file", str(tmp_path / "cli.log")])


def _one_line(err: str, *parts: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert all(p in lines[0] for p in parts), lines[0]
    return lines[0]


@pytest.mark.parametrize("k", ["0", "-3"])
def test_search_k_below_1_is_a_usage_error(tmp_path, capsys, k):
    assert _cli(tmp_path, "search", str(tmp_path / "emb"), "--text", "birds", "-k", k) == 2
    _one_line(capsys.readouterr().err, "bindset search: error: argument -k", f"must be at least 1, got {k}")
    with pytest.raises(InputError, match="-k 0: must be at least 1"):
        search(tmp_path / "emb", "text", "birds", k=0)  # the library call too, before opening EMB


@pytest.mark.parametrize("flag", ["--workers", "--batch-size"])
def test_embed_counts_below_1_are_usage_errors(tmp_path, capsys, flag):
    emb = [str(tmp_path / d) for d in ("data", "run", "emb")]
    assert _cli(tmp_path, "embed", *emb, "--engine", "ray", flag, "0") == 2
    _one_line(capsys.readouterr().err, f"argument {flag}", "must be at least 1, got 0")
    assert not (tmp_path / "emb").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for a machine without a GPU")
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_embed_gpu_without_a_gpu_exits_2_before_any_work(tmp_path, capsys, engine):
    emb = [str(tmp_path / d) for d in ("data", "run", "emb")]  # none exists: the GPU check comes first
    assert _cli(tmp_path, "embed", *emb, "--engine", engine, "--gpu") == 2
    _one_line(capsys.readouterr().err, "--gpu: no CUDA GPU is usable on this machine")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_an_unreachable_ray_address_exits_2_in_seconds(tmp_path, capsys):
    address = f"127.0.0.1:{_closed_port()}"
    emb = [str(tmp_path / d) for d in ("data", "run", "emb")]
    t0 = time.monotonic()
    assert _cli(tmp_path, "embed", *emb, "--engine", "ray", "--ray-address", address) == 2
    assert time.monotonic() - t0 < ray_start.PROBE_TIMEOUT_S + 30  # was > 11 min inside ray.init
    _one_line(capsys.readouterr().err, f"--ray-address {address}: no Ray cluster answers there")
    # builds and training attach through the same init_ray: refused before ray.init, Ray left down
    with pytest.raises(UserError, match=f"--ray-address {address}: no Ray cluster answers there"):
        ray_start.init_ray(address=address)
    assert not ray.is_initialized()
    with pytest.raises(UserError, match="expected HOST:PORT"):
        ray_start.check_reachable("head-without-port")
    with socket.socket() as listening:  # an address that answers passes the probe
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        ray_start.check_reachable(f"127.0.0.1:{listening.getsockname()[1]}", timeout_s=2)
    for not_probed in (None, "local", "auto", "ray://192.0.2.1:10001"):
        ray_start.check_reachable(not_probed)


def test_a_ray_cluster_without_gpus_is_refused_for_gpu_work():
    started = ray_start.init_ray(address="local", num_cpus=1, num_gpus=0, include_dashboard=False)
    try:
        with pytest.raises(UserError, match="--gpu: the Ray cluster has 0 GPUs"):
            ray_start.require_gpus(1)
        ray_start.require_gpus(0)
    finally:
        if started:
            ray.shutdown()
