"""Containment and file types: nothing from outside RAW reaches DATA, and no FIFO, loop or locked folder
stops a build (issue 15, items 1 and 9; transforms/paths.py).

One captures RAW holds a session for each way out of RAW (a ``..`` CSV cell, an absolute cell, symlinked
frames, a symlinked frames folder, a symlinked IMU table), a symlink chain that leaves RAW and comes back
(accepted: its final target is inside RAW, which is what is read), a FIFO IMU table, a self-looping IMU
link, a pair of top-level links that loop, and a control session whose depth frames are a marker PNG
inside RAW. The files outside RAW are PNGs with random pixels; every byte of DATA is searched for them,
and the control's bytes must be found, which shows that the search would see a leak.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from bindset.synth.generate import SynthConfig, synth
from pipelines.build import EngineConfig, build
from pipelines.work import fingerprint
from schemas.reasons import RejectReason as R
from transforms.config import BuildConfig
from transforms.layouts import discover
from transforms.paths import PathRejected, check_dir, check_file, check_files, join_rel, walk

REPO = Path(__file__).resolve().parents[1]
SECONDS = 6  # three windows; window 1's 5 s IMU span [0.5, 5.5] lies inside the recording
SYNTH = dict(sessions=1, seconds=SECONDS, seed=0, width=64, height=48, depth_size=(64, 48), thermal_size=(64, 48),
             workers=1)  # fmt: skip
BASE = "s000_000"


def _png16(path: Path, seed: int) -> bytes:
    """A 16-bit gray PNG of random pixels: its compressed bytes occur nowhere else."""
    arr = np.random.default_rng(seed).integers(500, 4000, size=(48, 64), dtype=np.uint16)
    assert cv2.imwrite(str(path), arr)
    return path.read_bytes()


def _marker(png: bytes) -> bytes:
    return png[41:-16]  # inside the IDAT chunk: pixels, not the shared header


def _copy_session(raw: Path, name: str) -> Path:
    folder = raw / name
    shutil.copytree(raw / BASE, folder, symlinks=True)
    m = json.loads((folder / "manifest.json").read_text())
    m["session_id"] = name
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def _set_cells(csv_path: Path, value: str) -> None:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "file": value} for r in rows)


def _data_bytes(data: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(data.rglob("*")) if p.is_file()]


def _make_hostile(base: Path) -> dict:
    raw, outside = base / "raw", base / "outside"
    synth(raw, SynthConfig(layout="captures", **SYNTH))
    shutil.rmtree(raw / "_truth")
    outside.mkdir()
    markers = {
        "depth_dotdot": _png16(outside / "dotdot.png", 1),
        "thermal_abs": _png16(outside / "abs.png", 2),
        "depth_link": _png16(outside / "linked.png", 3),
    }
    # '..' cells (from RAW/dotdot/depth/, three levels up is the folder holding RAW)
    _set_cells(_copy_session(raw, "dotdot") / "depth_timestamps.csv", "../../../outside/dotdot.png")
    # absolute cells
    _set_cells(_copy_session(raw, "abscell") / "thermal_timestamps.csv", str(outside / "abs.png"))
    # every depth frame a symlink to a file outside
    folder = _copy_session(raw, "linkfile")
    for f in (folder / "depth").iterdir():
        f.unlink()
        f.symlink_to(outside / "linked.png")
    # the declared thermal folder a symlink to a folder outside (same frame names, marker pixels)
    folder = _copy_session(raw, "linkdir")
    shutil.move(folder / "thermal", outside / "thermal")
    for i, f in enumerate(sorted((outside / "thermal").iterdir())):
        markers[f"thermal_dir_{i}"] = _png16(f, 100 + i)
    (folder / "thermal").symlink_to(outside / "thermal", target_is_directory=True)
    # the IMU table a symlink to a table outside
    folder = _copy_session(raw, "linkimu")
    shutil.move(folder / "imu.csv", outside / "imu.csv")
    (folder / "imu.csv").symlink_to(outside / "imu.csv")
    # a chain that leaves RAW and comes back: chain/imu.csv -> outside/hop.csv -> RAW/_store/imu.csv
    folder = _copy_session(raw, "chain")
    (raw / "_store").mkdir()
    shutil.move(folder / "imu.csv", raw / "_store" / "imu.csv")
    (outside / "hop.csv").symlink_to(raw / "_store" / "imu.csv")
    (folder / "imu.csv").symlink_to(outside / "hop.csv")
    # file types: a FIFO IMU table, an IMU link to itself, two top-level links to each other
    folder = _copy_session(raw, "fifo")
    (folder / "imu.csv").unlink()
    os.mkfifo(folder / "imu.csv")
    folder = _copy_session(raw, "selfloop")
    (folder / "imu.csv").unlink()
    (folder / "imu.csv").symlink_to("imu.csv")
    (raw / "loop_a").symlink_to(raw / "loop_b")
    (raw / "loop_b").symlink_to(raw / "loop_a")
    # a folder link inside a declared folder that points back up (a loop for a walker that follows links)
    (raw / BASE / "depth" / "again").symlink_to("..", target_is_directory=True)
    # a NUL character in a frames cell: that frame's windows lose depth, the session stays
    _set_cells(_copy_session(raw, "nulcell") / "depth_timestamps.csv", "a\x00b.png")
    # the control: depth frames inside RAW carrying a marker, which must be found in DATA
    control = _png16(base / "control.png", 7)
    for f in (raw / BASE / "depth").glob("*.png"):
        f.write_bytes(control)
    return {"raw": raw, "outside": outside, "markers": markers, "control": control}


class Built:
    def __init__(self, data: Path):
        self.data = data
        self.index = pq.read_table(data / "index.parquet").to_pylist()
        self.rejects = pq.read_table(data / "rejects.parquet").to_pylist()

    def samples(self, session: str) -> list[dict]:
        return [r for r in self.index if r["session"] == session]

    def modality(self, session: str, modality: str) -> list[dict]:
        return [r for r in self.rejects if r["session"] == session and r["modality"] == modality and r["key"]]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("containment")
    case = _make_hostile(base)
    build(case["raw"], base / "data", BuildConfig(layout="captures", decode_timeout_s=60), EngineConfig("local"))
    case["built"] = Built(base / "data")
    return case


# ------------------------------------------------------------------------------------------ containment


def test_no_byte_from_outside_raw_reaches_data(hostile):
    files = _data_bytes(hostile["built"].data)
    assert files
    for name, png in hostile["markers"].items():
        leaked = [str(p) for p, blob in files if _marker(png) in blob]
        assert not leaked, f"{name} leaked into {leaked}"
    # the search sees what a build stores: the control frame inside RAW is in a shard verbatim
    assert any(_marker(hostile["control"]) in blob for p, blob in files if p.suffix == ".tar")
    assert all(r["has_depth"] for r in hostile["built"].samples(BASE))


@pytest.mark.parametrize(
    ("session", "modality", "source"),
    [
        ("dotdot", "depth", "../outside/dotdot.png"),  # a '..' cell, named RAW-relative
        ("abscell", "thermal", "{outside}/abs.png"),  # an absolute cell, named as written
        ("linkfile", "depth", "linkfile/depth/000000.png"),  # a symlinked file
        ("linkdir", "thermal", "linkdir/thermal"),  # a symlinked folder
        ("linkimu", "imu", "linkimu/imu.csv"),  # a symlinked table
    ],
)
def test_each_way_out_is_a_modality_reject_and_the_session_stays(hostile, session, modality, source):
    b = hostile["built"]
    samples = b.samples(session)
    assert len(samples) == SECONDS // 2  # video and audio of every window kept
    assert not any(r[f"has_{modality}"] for r in samples)
    rows = b.modality(session, modality)
    assert {r["key"] for r in rows} == {r["key"] for r in samples}
    assert {r["reason"] for r in rows} == {R.PATH_ESCAPES_ROOT}
    sources = {r["source"] for r in rows}
    if session == "linkfile":
        assert all(s.startswith("linkfile/depth/") for s in sources)
    else:
        assert sources == {source.format(outside=hostile["outside"])}
    assert all(r["has_audio"] and r["has_video"] for r in samples)


def test_a_chain_that_leaves_and_reenters_raw_is_read(hostile):
    # documented choice: the final target decides; it is inside RAW, so the IMU is read
    chain = {r["key"]: r for r in hostile["built"].samples("chain")}
    assert chain[f"chain_{2000:09d}"]["has_imu"]
    assert [r["reason"] for r in hostile["built"].modality("chain", "imu")] == [R.IMU_OUT_OF_RANGE] * 2


def test_a_symlinked_top_level_video_is_rejected(tmp_path):
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    synth(raw, SynthConfig(layout="videos", sessions=1, seconds=2, seed=1, width=64, height=48, workers=1))
    shutil.rmtree(raw / "_truth")
    outside.mkdir()
    video = next(raw.glob("*.mp4"))
    shutil.copyfile(video, outside / "v.mp4")
    (raw / "link.mp4").symlink_to(outside / "v.mp4")
    build(raw, tmp_path / "data", BuildConfig(layout="videos"), EngineConfig("local"))
    b = Built(tmp_path / "data")
    (row,) = [r for r in b.rejects if r["source"] == "link.mp4"]
    assert row["reason"] == R.PATH_ESCAPES_ROOT and row["key"] is None and row["session"] == "link"
    assert not b.samples("link") and len(b.samples(video.stem)) == 1


# ------------------------------------------------------------------------------------------ file types


def test_fifo_imu_is_a_modality_reject_naming_it(hostile):
    b = hostile["built"]
    assert len(b.samples("fifo")) == SECONDS // 2
    rows = b.modality("fifo", "imu")
    assert len(rows) == SECONDS // 2
    assert {(r["reason"], r["source"]) for r in rows} == {(R.NOT_A_REGULAR_FILE, "fifo/imu.csv")}
    assert "FIFO" in rows[0]["detail"]
    assert not [r for r in b.rejects if r["source"] == "fifo/video.mp4"]


def test_symlink_loops_are_rejects_and_the_rest_builds(hostile):
    b = hostile["built"]
    rows = b.modality("selfloop", "imu")
    assert {(r["reason"], r["source"]) for r in rows} == {(R.SYMLINK_LOOP, "selfloop/imu.csv")}
    top = {r["source"]: r["reason"] for r in b.rejects if r["key"] is None and r["source"].startswith("loop_")}
    assert top == {"loop_a": R.SYMLINK_LOOP, "loop_b": R.SYMLINK_LOOP}
    sessions = {r["session"] for r in b.index}
    assert sessions == {BASE, "dotdot", "abscell", "linkfile", "linkdir", "linkimu", "chain", "fifo", "selfloop",
                        "nulcell"}  # fmt: skip


def test_a_nul_in_a_frames_cell_costs_only_that_modality(hostile):
    b = hostile["built"]
    assert len(b.samples("nulcell")) == SECONDS // 2 and not any(r["has_depth"] for r in b.samples("nulcell"))
    assert {r["reason"] for r in b.modality("nulcell", "depth")} == {R.FILE_MISSING}


def test_fingerprints_survive_loops_fifos_and_outside_links(hostile):
    raw = hostile["raw"]
    cfg = BuildConfig(layout="captures")
    for unit in discover(raw).units:
        assert len(fingerprint(raw, unit, cfg)) == 32


_DROP_CAPS = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]


def test_unreadable_folders_and_files_are_permission_denied_rejects(tmp_path):
    """Run as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so that mode 000 really denies."""
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(layout="captures", **{**SYNTH, "seconds": 2}))
    shutil.rmtree(raw / "_truth")
    _copy_session(raw, "locked")
    _copy_session(raw, "lockedimu")
    os.chmod(raw / "lockedimu" / "imu.csv", 0)
    os.chmod(raw / "locked", 0)
    try:
        proc = subprocess.run(
            [*_DROP_CAPS, sys.executable, "-m", "bindset.cli", "build", str(raw), str(tmp_path / "data"),
             "--engine", "local", "--no-validate"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        os.chmod(raw / "locked", 0o755)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    b = Built(tmp_path / "data")
    (row,) = [r for r in b.rejects if r["source"] == "locked"]
    assert row["reason"] == R.PERMISSION_DENIED and row["key"] is None
    assert {(r["reason"], r["source"]) for r in b.modality("lockedimu", "imu")} == {
        (R.PERMISSION_DENIED, "lockedimu/imu.csv")
    }
    assert len(b.samples("lockedimu")) == 1 and len(b.samples(BASE)) == 1


# ------------------------------------------------------------------------------------------ the check itself


def test_check_file_judges_where_a_path_leads(tmp_path):
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    (raw / "s" / "d").mkdir(parents=True)
    outside.mkdir()
    (raw / "s" / "d" / "a.png").write_bytes(b"a")
    (outside / "x.png").write_bytes(b"x")
    assert check_file(raw, "s/d/a.png").size == 1
    assert check_file(raw, join_rel("s/d", "../d/a.png")).rel == "s/d/a.png"
    (raw / "s" / "alias").symlink_to(raw / "s" / "d")
    assert check_file(raw, "s/alias/a.png").path == raw / "s" / "d" / "a.png"
    cases = {
        join_rel("s/d", "../../../outside/x.png"): R.PATH_ESCAPES_ROOT,
        str(outside / "x.png"): R.PATH_ESCAPES_ROOT,
        "s/d": R.NOT_A_REGULAR_FILE,
        "s/d/missing.png": R.FILE_MISSING,
    }
    (raw / "s" / "out").symlink_to(outside / "x.png")
    (raw / "s" / "dangling_out").symlink_to(outside / "gone.png")
    (raw / "s" / "loop").symlink_to("loop")
    os.mkfifo(raw / "s" / "pipe")
    cases.update({"s/out": R.PATH_ESCAPES_ROOT, "s/dangling_out": R.PATH_ESCAPES_ROOT, "s/loop": R.SYMLINK_LOOP,
                  "s/pipe": R.NOT_A_REGULAR_FILE})  # fmt: skip
    # names no file can have (CSV cells are free text): a reject, never a ValueError or "permission denied"
    cases.update({"s/d/a\x00b.png": R.FILE_MISSING, "s/d/" + "x" * 300 + ".png": R.FILE_MISSING})
    for rel, reason in cases.items():
        with pytest.raises(PathRejected) as info:
            check_file(raw, rel)
        assert (info.value.reason, info.value.source) == (reason, rel)
    with pytest.raises(PathRejected) as info:
        check_dir(raw, "s/d/a.png")
    assert info.value.reason == R.NOT_A_REGULAR_FILE
    assert info.value.detail == "is a file, not a folder"  # says what it is (a depth `frames` entry naming a file)


def _outcome(root, rel):
    try:
        c = check_file(root, rel)
        return ("ok", c.rel, c.path, c.size)
    except PathRejected as exc:
        return (exc.reason, exc.source, exc.detail)


def test_check_files_decides_as_check_file_does(hostile, tmp_path):
    """The batch check (one resolution per folder) gives check_file's result for every path: files of a
    plain folder, of a symlinked folder inside and outside RAW, file links out and back, loops, a FIFO, '..'
    and absolute cells, NUL and over-long names, missing files and folders, an unsearchable folder."""
    raw = hostile["raw"]
    rels = []
    for folder in sorted(p for p in raw.rglob("*") if p.is_dir() and not p.is_symlink()):
        rels += [str(p.relative_to(raw)) for p in sorted(folder.iterdir())]
    outside = hostile["outside"]
    rels += [
        "linkdir/thermal/" + sorted(os.listdir(outside / "thermal"))[0],  # a file of a folder linked outside
        join_rel(f"{BASE}/depth", "../../../outside/dotdot.png"), str(outside / "abs.png"),
        f"{BASE}/depth/missing.png", "no_such_folder/a.png", f"{BASE}/depth/a\x00b.png",
        f"{BASE}/depth/" + "x" * 300 + ".png", f"{BASE}/depth/.", f"{BASE}/depth/..", f"{BASE}/depth/again/imu.csv",
        "loop_a/x.png", "",
    ]  # fmt: skip
    locked = tmp_path / "raw"
    (locked / "closed").mkdir(parents=True)
    (locked / "closed" / "a.png").write_bytes(b"a")
    (locked / "open").mkdir()
    (locked / "open" / "b.png").write_bytes(b"bb")
    os.chmod(locked / "closed", 0o000)
    try:
        for root, names in ((raw, rels), (locked, ["closed/a.png", "open/b.png", "open/../closed/a.png"])):
            got = check_files(root, names)
            for rel, res in zip(names, got, strict=True):
                mine = (("ok", res.rel, res.path, res.size) if not isinstance(res, PathRejected)
                        else (res.reason, res.source, res.detail))  # fmt: skip
                assert mine == _outcome(root, rel), rel
        assert len(rels) > 100  # every frame of every copied session went through the batch path
    finally:
        os.chmod(locked / "closed", 0o755)


def test_walk_reports_instead_of_raising(tmp_path):
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    (raw / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (raw / "a" / "b" / "f.txt").write_text("f")
    (raw / "a" / "up").symlink_to("..", target_is_directory=True)  # loops for a walker that follows it
    (raw / "a" / "out").symlink_to(outside, target_is_directory=True)
    (raw / "_truth").mkdir()
    (raw / "_truth" / "t").write_text("t")
    (raw / ".DS_Store").write_text("x")
    listing = walk(raw)
    assert listing.files == ["a/b/f.txt"]
    assert [(p.source, p.reason) for p in listing.problems] == [("a/out", R.PATH_ESCAPES_ROOT)]


@pytest.mark.slow
def test_beam_builds_the_hostile_input_as_local_does(hostile, tmp_path):
    build(hostile["raw"], tmp_path / "data", BuildConfig(layout="captures", decode_timeout_s=60), EngineConfig("beam"))
    local = hostile["built"].data
    for name in ("index.parquet", "rejects.parquet"):
        assert (tmp_path / "data" / name).read_bytes() == (local / name).read_bytes(), name
    files = _data_bytes(tmp_path / "data")
    for name, png in hostile["markers"].items():
        assert not [str(p) for p, blob in files if _marker(png) in blob], name
