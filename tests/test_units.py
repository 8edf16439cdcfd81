"""Units of work decoupled from inputs (issue 16): the planner's grouping, shards of the target size across
inputs, byte-identical fresh / incremental / engine builds, and isolation inside a unit of many inputs."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bindset.synth.generate import SynthConfig, synth
from pipelines import unit_tables, work
from pipelines.build import EngineConfig, build
from pipelines.work import FAULT_ENV, WorkContext
from schemas.tables import INDEX_SCHEMA
from transforms.config import BuildConfig
from transforms.grouping import BYTES_PER_WINDOW, WorkUnit, plan_units, target_windows
from transforms.layouts import MediaUnit, discover
from transforms.records import UnitSummary

TINY = dict(width=64, height=48, workers=2, layout="videos")


def _inputs(names: list[str]) -> tuple[list[MediaUnit], dict[str, int]]:
    """Media inputs of 1-8 planned windows each (by their byte sizes), for the pure planner tests."""
    ins = [MediaUnit(n, "videos", n, f"{n}.mp4", audio=f"{n}.mp4") for n in names]
    sizes = {f"{n}.mp4": (1 + int(hashlib.sha256(n.encode()).hexdigest(), 16) % 8) * BYTES_PER_WINDOW for n in names}
    return ins, sizes


def _members(plan: list[WorkUnit]) -> dict[str, tuple[str, ...]]:
    return {u.unit_id: tuple(i.unit_id for i in u.inputs) for u in plan}


# ------------------------------------------------------------------------------------- the planner


def test_grouping_is_a_function_of_inputs_and_config_alone():
    ins, sizes = _inputs([f"v{i:04d}" for i in range(200)])
    cfg = BuildConfig()
    plan = plan_units(ins, sizes, cfg)
    shuffled = ins[:]
    random.Random(1).shuffle(shuffled)
    assert _members(plan_units(shuffled, dict(reversed(sizes.items())), cfg)) == _members(plan)
    # every input in exactly one unit, whole; units in id order
    flat = [i.unit_id for u in plan for i in u.inputs]
    assert sorted(flat) == sorted(i.unit_id for i in ins) and len(set(flat)) == len(flat)
    assert [u.unit_id for u in plan] == sorted(u.unit_id for u in plan)
    # ~900 planned windows / 16 -> a target of 32 windows: enough units for the workers, none past 4x
    total = sum(sizes.values()) // BYTES_PER_WINDOW
    assert target_windows(total, cfg) == 32
    est = {u.unit_id: sum(sizes[i.video] // BYTES_PER_WINDOW for i in u.inputs) for u in plan}
    assert len(plan) >= cfg.unit_min_count and max(est.values()) <= 4 * 32
    assert sum(len(u.inputs) > 1 for u in plan) > len(plan) // 2


def test_adding_inputs_rewrites_only_the_units_they_fall_into():
    names = [f"v{i:04d}" for i in range(0, 400, 2)]  # 200 inputs; new ones fall between them
    ins, sizes = _inputs(names)
    cfg = BuildConfig()
    before = _members(plan_units(ins, sizes, cfg))
    for k, new in ((1, ["v0101"]), (3, ["v0011", "v0203", "v0355"])):
        more, more_sizes = _inputs(names + new)
        after = _members(plan_units(more, more_sizes, cfg))
        rewritten = [u for u in after if u not in before]
        # each new input changes the unit it lands in, and (via the 4x cap) rarely the one after it
        assert 1 <= len(rewritten) <= 2 * k, rewritten
        assert len(set(before) - set(after)) <= 2 * k


def test_long_inputs_are_units_of_their_own_and_targets_adapt():
    ins, sizes = _inputs([f"v{i:03d}" for i in range(40)])
    sizes["v007.mp4"] = 5000 * BYTES_PER_WINDOW  # a long recording
    plan = plan_units(ins, sizes, BuildConfig())
    (long,) = [u for u in plan if any(i.unit_id == "v007" for i in u.inputs)]
    assert long.unit_id == "v007" and len(long.inputs) == 1
    assert target_windows(10, BuildConfig()) == 1  # a tiny corpus: every input its own unit
    assert target_windows(10_000_000, BuildConfig()) == 1500  # an archive: the configured target
    assert target_windows(10_000_000, BuildConfig(unit_windows=2000, unit_min_count=64)) == 2000


# ------------------------------------------------------------------------------------- builds


def _digest(data: Path) -> dict[str, str]:
    files = sorted((data / "shards").iterdir()) + [data / "index.parquet", data / "rejects.parquet"]
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# 10 inputs of 3 windows: a target of 2, so units of several inputs; shards of 4 samples across inputs
GROUPED = dict(unit_min_count=2, unit_windows=4, shard_max_samples=4)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    synth(root, SynthConfig(sessions=10, seed=6, seconds=6.0, **TINY))
    return root


def test_units_pack_inputs_and_shards_fill_across_them(videos, tmp_path):
    cfg = BuildConfig(**GROUPED)
    data = tmp_path / "data"
    result = build(videos, data, cfg, EngineConfig("local"))
    assert 1 < result.units < 10  # several inputs per unit
    index = pq.read_table(data / "index.parquet").to_pylist()
    assert len(index) == result.commit.windows_planned == 30
    sizes = json.loads((data / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 30 and max(sizes.values()) == 4
    # a shard holds samples of several inputs; at most one short shard per unit and split
    sessions_per_shard = defaultdict(set)
    for r in index:
        sessions_per_shard[r["shard"]].add(r["session"])
    assert max(len(s) for s in sessions_per_shard.values()) > 1
    for folder in (data / "_work" / "units").iterdir():
        summary = UnitSummary.from_json((folder / "summary.json").read_text())
        by_split = defaultdict(list)
        for part in summary.parts:
            by_split[part["split"]].append(part["samples"])
        assert all(all(n == 4 for n in counts[:-1]) and counts[-1] <= 4 for counts in by_split.values())
    # every shard's samples are what sizes.json and the index say
    for name, n in sizes.items():
        with tarfile.open(data / "shards" / name) as tf:
            keys = {m.name.split(".", 1)[0] for m in tf.getmembers()}
        assert len(keys) == n and keys == {r["key"] for r in index if r["shard"] == name}


@pytest.mark.slow
def test_fresh_incremental_and_ray_builds_are_byte_identical(videos, tmp_path):
    cfg = BuildConfig(**GROUPED)
    fresh = tmp_path / "fresh"
    full = build(videos, fresh, cfg, EngineConfig("local"))
    # incremental: the corpus without one input first, then with it
    src = tmp_path / "src"
    shutil.copytree(videos, src)
    held = sorted(src.glob("*.mp4"))[4]
    shutil.move(held, tmp_path / held.name)
    inc = tmp_path / "inc"
    first = build(src, inc, cfg, EngineConfig("local"))
    shutil.move(tmp_path / held.name, held)
    second = build(src, inc, cfg, EngineConfig("local"))
    assert second.processed == 1 and second.reused == second.units - 1  # only the unit it falls into
    assert second.units == full.units and first.units >= full.units - 1
    assert _digest(inc) == _digest(fresh)
    ray = tmp_path / "ray"
    build(videos, ray, cfg, EngineConfig("ray", num_workers=2))
    assert _digest(ray) == _digest(fresh)
    assert (ray / "manifest.json").read_bytes() == (fresh / "manifest.json").read_bytes()


@pytest.mark.slow
def test_a_crash_and_a_hang_cost_only_their_inputs(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(sessions=5, seed=7, seconds=2.0, **TINY))
    inputs = discover(raw, "videos").units
    names = [i.unit_id for i in inputs]
    cfg = BuildConfig(decode_timeout_s=0.5)

    def run(data: Path, unit: WorkUnit) -> UnitSummary:
        ctx = WorkContext(str(raw), str(data), cfg.to_dict())
        assert work.run_unit(ctx, json.dumps(unit.to_dict()))["processed"]
        return UnitSummary.from_json((data / "_work" / "units" / unit.unit_id / "summary.json").read_text())

    good = [i for i in inputs if i.unit_id not in (names[1], names[3])]
    clean = run(tmp_path / "clean", WorkUnit("u", tuple(good)))
    monkeypatch.setenv(FAULT_ENV, f"segv:{names[1]}.mp4,hang:{names[3]}.mp4")
    mixed = run(tmp_path / "mixed", WorkUnit("u", tuple(inputs)))
    assert mixed.failed and mixed.reasons == {"decode_timeout": 1, "decoder_crash": 1}
    rejects = unit_tables.read_rejects(tmp_path / "mixed" / "_work" / "units" / "u").to_pylist()
    assert sorted((r["session"], r["reason"], r["source"]) for r in rejects) == [
        (names[1], "decoder_crash", f"{names[1]}.mp4"),
        (names[3], "decode_timeout", f"{names[3]}.mp4"),
    ]
    # the unit-mates' samples are all there, byte for byte as in a unit without the two bad inputs
    assert (mixed.samples, mixed.windows_planned) == (clean.samples, clean.windows_planned) == (3, 3)
    assert [p["samples"] for p in mixed.parts] == [p["samples"] for p in clean.parts]
    for part in clean.parts:
        a = (tmp_path / "clean" / "_work" / "units" / "u" / part["file"]).read_bytes()
        assert (tmp_path / "mixed" / "_work" / "units" / "u" / part["file"]).read_bytes() == a
    idx = [unit_tables.read_index(tmp_path / d / "_work" / "units" / "u", split).to_pylist()
           for d in ("clean", "mixed") for split in ("train", "val")]  # fmt: skip
    assert idx[:2] == idx[2:] and len(idx[0] + idx[1]) == 3


def test_sink_rollback_withdraws_an_input_across_parts(tmp_path):
    from transforms.records import UnitSink

    cfg = BuildConfig(shard_max_samples=3)
    blob = lambda k: {"jpg": hashlib.sha256(k.encode()).digest() * 40, "txt": k.encode()}  # noqa: E731
    has = {f.name: False for f in INDEX_SCHEMA if f.name.startswith("has_")}
    row = lambda k: {"session": k[0], "layout": "videos", "clip_start_s": 0.0, "clip_end_s": 2.0,  # noqa: E731
                     "label_change": False, **has}  # fmt: skip
    ref = UnitSink(tmp_path / "ref", "u", "fp", cfg)
    got = UnitSink(tmp_path / "got", "u", "fp", cfg)
    for sink, keys in ((ref, ["a0", "a1", "c0", "c1", "c2"]), (got, ["a0", "a1"])):
        sink.planned(len(keys))
        for k in keys:
            sink.sample("train", k, blob(k), row(k))
    mark = got.mark()
    got.planned(5)
    for k in ["b0", "b1", "b2", "b3", "b4"]:  # rolls into a second and third part, and opens a val part
        got.sample("train", k, blob(k), row(k))
    got.sample("val", "b9", blob("b9"), row("b9"))
    got.rollback(mark)
    got.planned(3)
    for k in ["c0", "c1", "c2"]:
        got.sample("train", k, blob(k), row(k))
    a, b = ref.close(), got.close()
    assert (a.samples, a.windows_planned, a.parts) == (b.samples, b.windows_planned, b.parts)
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    for part in a.parts:
        assert (tmp_path / "got" / part["file"]).read_bytes() == (tmp_path / "ref" / part["file"]).read_bytes()


@pytest.mark.slow
def test_sigkill_then_resume_redoes_only_the_unfinished_units(videos, tmp_path):
    """A build killed (SIGKILL, whole process group) inside a unit of several inputs: the rerun redoes that
    unit and the ones after it, reuses every finished one, and gives the bytes of an uninterrupted build."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = BuildConfig(unit_min_count=3, unit_windows=4, shard_max_samples=4)  # units of 1-3 inputs here
    plan = plan_units(discover(videos, "videos").units, {p.name: p.stat().st_size for p in videos.glob("*.mp4")}, cfg)
    k = next(i for i, u in enumerate(plan) if i >= 1 and len(u.inputs) > 1)  # finished units before it
    stuck = plan[k].inputs[-1].unit_id  # the unit's first inputs decode, then its last one hangs
    data = tmp_path / "data"
    # one decode worker: the units after the hanging one must not finish while it hangs
    flags = ["--unit-min-count", "3", "--unit-windows", "4", "--shard-max-samples", "4", "--workers", "1"]
    first = subprocess.Popen([sys.executable, "-m", "bindset.cli", "build", str(videos), str(data), "--engine",
                              "local", "--quiet", "--no-validate", *flags], start_new_session=True,
                             env={**os.environ, FAULT_ENV: f"hang:{stuck}.mp4"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    done = [data / "_work" / "units" / u.unit_id / "summary.json" for u in plan[:k]]
    deadline = time.monotonic() + 240
    while not all(p.exists() for p in done):
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline, "the first build never got to the hanging unit"
        time.sleep(0.1)
    time.sleep(1.0)  # inside the hanging unit now
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (data / "_work" / "units" / plan[k].unit_id).exists()  # nothing of the killed unit committed
    resumed = build(videos, data, cfg, EngineConfig("local"))
    assert resumed.processed_units == sorted(u.unit_id for u in plan[k:])
    assert resumed.reused == k
    fresh = tmp_path / "fresh"
    build(videos, fresh, cfg, EngineConfig("local"))
    assert _digest(data) == _digest(fresh)
    assert (data / "manifest.json").read_bytes() == (fresh / "manifest.json").read_bytes()
