"""Planted defects: known faults put into synthetic captures (RAW) or into a built dataset (DATA).

Each one is what the quality gate (``bindset validate``) must catch, and each maps to one data contract:

| defect                         | where | caught by (suite: expectation on column)                              |
|--------------------------------|-------|-----------------------------------------------------------------------|
| ``silence_audio``              | RAW   | index: values between on ``audio_rms_dbfs``                           |
| ``black_video``                | RAW   | index: values between on ``frame_brightness``                         |
| ``freeze_video``               | RAW   | index: values between on ``frame_diff``                               |
| ``depth_dropout``              | RAW   | index: values between on ``depth_valid_frac``                         |
| ``imu_gap``                    | RAW   | index: values between on ``imu_max_gap_ms``                           |
| ``duplicate_key``              | DATA  | index: values unique on ``key``                                       |
| ``split_leak``                 | DATA  | sessions: values in set {1} on ``n_splits``                           |
| ``drop_index_row``             | DATA  | shards: pair equal ``tar_samples`` / ``index_samples``                |
| ``delete_tar_member``          | DATA  | shards: pair equal ``tar_members`` / ``index_members``                |

Times are on the session timeline (seconds), mapped to each stream's own clock through the session
manifest, as the pipeline maps them. RAW defects target the ``captures`` layout. Files are replaced
atomically, and DATA files through a new inode: shards are hard links to the build's unit parts, which
must keep their bytes.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
import wave
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bindset.synth.media import png_bytes
from pipelines.storage import write_parquet
from schemas.manifest import SessionManifest, load_manifest
from schemas.tables import INDEX_SCHEMA

# A second encoding generation should not blur the frames the defect leaves alone.
_X264 = {"preset": "veryfast", "crf": "18", "threads": "1", "bframes": "0"}

FrameEdit = Callable[[np.ndarray, float], np.ndarray]  # (rgb frame, session time) -> rgb frame


# ------------------------------------------------------------------------------------------ helpers


def _manifest(raw: Path, session: str) -> tuple[Path, SessionManifest]:
    folder = Path(raw) / session
    for name in ("manifest.json", "manifest.yaml", "manifest.yml"):
        if (folder / name).exists():
            return folder, load_manifest(folder / name)
    raise FileNotFoundError(f"{folder}: no session manifest (captures layout expected)")


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.defect.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _in(t: float, start_s: float, end_s: float) -> bool:
    return start_s <= t < end_s


def _rewrite_media(
    path: Path,
    *,
    video_clock,
    audio_clock,
    edit_video: FrameEdit | None = None,
    silence: tuple[float, float] | None = None,
) -> int:
    """Re-encode the video frames (edit_video) or the audio track (silence); copy the other's packets.

    Returns how many frames (or audio samples) were changed.
    """
    changed = 0
    tmp = path.with_name(f".{path.name}.defect.tmp.mp4")
    with av.open(str(path)) as inp, av.open(str(tmp), "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        vin = inp.streams.video[0] if inp.streams.video else None
        ain = inp.streams.audio[0] if inp.streams.audio else None
        streams = [s for s in (vin, ain) if s is not None]
        outs = {}
        for s in streams:
            if s is vin and edit_video is not None:
                o = out.add_stream("libx264", rate=s.average_rate or s.guessed_rate or 30, options=_X264)
                o.width, o.height, o.pix_fmt = s.codec_context.width, s.codec_context.height, "yuv420p"
                o.time_base = o.codec_context.time_base = s.time_base
            elif s is ain and silence is not None:
                rate = s.codec_context.sample_rate
                o = out.add_stream("aac", rate=rate, layout=s.codec_context.layout.name)
                o.time_base = o.codec_context.time_base = Fraction(1, rate)
            else:
                o = out.add_stream_from_template(s)
            outs[s.index] = o
        for packet in inp.demux(*streams):
            src = packet.stream
            o = outs[src.index]
            reencode = (src is vin and edit_video is not None) or (src is ain and silence is not None)
            if not reencode:
                if packet.dts is not None:
                    packet.stream = o
                    out.mux(packet)
                continue
            for frame in packet.decode():
                if src is vin:
                    t = float(video_clock.to_session(float(frame.pts * frame.time_base)))
                    rgb = frame.to_ndarray(format="rgb24")
                    new_rgb = edit_video(rgb, t)
                    changed += new_rgb is not rgb
                    new = av.VideoFrame.from_ndarray(np.ascontiguousarray(new_rgb), format="rgb24")
                else:
                    x = frame.to_ndarray()  # planar: (channels, n)
                    t0 = float(frame.pts * frame.time_base)
                    t = audio_clock.to_session(t0 + np.arange(x.shape[-1]) / frame.sample_rate)
                    mute = (t >= silence[0]) & (t < silence[1])
                    if mute.any():
                        x = x.copy()
                        x[..., mute] = 0
                        changed += int(mute.sum())
                    new = av.AudioFrame.from_ndarray(x, format=frame.format.name, layout=frame.layout.name)
                    new.sample_rate = frame.sample_rate
                new.pts, new.time_base = frame.pts, frame.time_base
                out.mux(o.encode(new))
        for s in streams:
            if (s is vin and edit_video is not None) or (s is ain and silence is not None):
                out.mux(outs[s.index].encode(None))
    os.replace(tmp, path)
    return changed


def _frames_in(folder: Path, stream, start_s: float, end_s: float) -> list[Path]:
    """The depth/thermal frame files whose timestamps fall in [start_s, end_s) on the session timeline."""
    ts = stream.timestamps
    unit = ts.unit.seconds
    with open(folder / ts.path, newline="") as f:
        rows = list(csv.DictReader(f))
    hits = []
    for row in rows:
        t = float(stream.clock.to_session(float(row[ts.time_column]) * unit))
        if _in(t, start_s, end_s):
            hits.append(folder / stream.frames / row[ts.file_column])
    return hits


# --------------------------------------------------------------------------------------- RAW defects


def silence_audio(raw: Path | str, session: str, start_s: float, end_s: float) -> int:
    """Zero the session's audio over [start_s, end_s); video packets are copied untouched.

    Audio in the video container is decoded and re-encoded (AAC); a separate WAV is rewritten in place.
    Returns the number of samples (per channel) zeroed.
    """
    folder, m = _manifest(Path(raw), session)
    audio = m.streams.audio
    if audio is None:
        raise ValueError(f"{session}: no audio stream")
    if audio.track == "video":
        return _rewrite_media(folder / m.streams.video.path, video_clock=m.streams.video.clock,
                              audio_clock=audio.clock, silence=(start_s, end_s))  # fmt: skip
    path = folder / audio.path
    if path.suffix.lower() != ".wav":
        raise ValueError(f"{path}: only WAV audio files can be silenced")
    with wave.open(str(path), "rb") as w:
        params, pcm = w.getparams(), w.readframes(w.getnframes())
    if params.sampwidth != 2:
        raise ValueError(f"{path}: only 16-bit PCM WAV can be silenced")
    x = np.frombuffer(pcm, "<i2").reshape(-1, params.nchannels).copy()
    t = audio.clock.to_session(np.arange(x.shape[0]) / params.framerate)
    mute = (t >= start_s) & (t < end_s)
    x[mute] = 0
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setparams(params)
        w.writeframes(x.tobytes())
    _replace(path, buf.getvalue())
    return int(mute.sum())


def _edit_video(raw: Path | str, session: str, edit: FrameEdit) -> int:
    folder, m = _manifest(Path(raw), session)
    audio_clock = m.streams.audio.clock if m.streams.audio else m.streams.video.clock
    return _rewrite_media(folder / m.streams.video.path, video_clock=m.streams.video.clock,
                          audio_clock=audio_clock, edit_video=edit)  # fmt: skip


def black_video(raw: Path | str, session: str, start_s: float, end_s: float) -> int:
    """Black frames over [start_s, end_s) (a covered lens); returns the number of frames changed."""

    def edit(rgb: np.ndarray, t: float) -> np.ndarray:
        return np.zeros_like(rgb) if _in(t, start_s, end_s) else rgb

    return _edit_video(raw, session, edit)


def freeze_video(raw: Path | str, session: str, start_s: float, end_s: float) -> int:
    """Repeat the first frame at or after start_s until end_s (a stalled camera); returns frames changed."""
    held: list[np.ndarray] = []

    def edit(rgb: np.ndarray, t: float) -> np.ndarray:
        if not _in(t, start_s, end_s):
            return rgb
        if not held:
            held.append(rgb)
            return rgb
        return held[0].copy()

    return _edit_video(raw, session, edit)


def depth_dropout(raw: Path | str, session: str, start_s: float, end_s: float, fraction: float = 0.9) -> int:
    """Zero (invalid) the top ``fraction`` of rows of every depth frame in range; returns frames changed."""
    folder, m = _manifest(Path(raw), session)
    if m.streams.depth is None:
        raise ValueError(f"{session}: no depth stream")
    frames = _frames_in(folder, m.streams.depth, start_s, end_s)
    for p in frames:
        depth = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        depth[: int(round(depth.shape[0] * fraction))] = 0
        _replace(p, png_bytes(depth))
    return len(frames)


def imu_gap(raw: Path | str, session: str, start_s: float, end_s: float) -> int:
    """Delete the IMU rows whose time falls in [start_s, end_s) (a logger stall); returns rows deleted."""
    folder, m = _manifest(Path(raw), session)
    imu = m.streams.imu
    if imu is None:
        raise ValueError(f"{session}: no IMU stream")
    path = folder / imu.path
    unit = imu.timestamps.unit.seconds
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    col = header.index(imu.timestamps.column)
    keep = [r for r in rows if not _in(float(imu.clock.to_session(float(r[col]) * unit)), start_s, end_s)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(keep)
    _replace(path, buf.getvalue().encode())
    return len(rows) - len(keep)


# -------------------------------------------------------------------------------------- DATA defects


def _read_index(data: Path) -> list[dict]:
    return pq.read_table(Path(data) / "index.parquet", schema=INDEX_SCHEMA).to_pylist()


def _write_index(data: Path, rows: list[dict]) -> None:
    path = Path(data) / "index.parquet"
    tmp = path.with_name(f".{path.name}.defect.tmp")
    write_parquet(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), tmp)
    os.replace(tmp, path)


def _pick(rows: list[dict], key: str | None) -> int:
    if key is None:
        return 0
    for i, r in enumerate(rows):
        if r["key"] == key:
            return i
    raise KeyError(f"no sample {key!r} in the index")


def duplicate_key(data: Path | str, key: str | None = None) -> str:
    """Append a copy of one index row (the first, or ``key``); returns the duplicated key."""
    rows = _read_index(Path(data))
    i = _pick(rows, key)
    rows.insert(i + 1, dict(rows[i]))
    _write_index(Path(data), rows)
    return rows[i]["key"]


def split_leak(data: Path | str, session: str | None = None, rows_to_flip: int = 1) -> str:
    """Move the last ``rows_to_flip`` index rows of a session to the other split; returns the session."""
    rows = _read_index(Path(data))
    session = session or rows[0]["session"]
    mine = [r for r in rows if r["session"] == session]
    if len(mine) < 2 or rows_to_flip >= len(mine):
        raise ValueError(f"session {session!r} needs more than {rows_to_flip} sample(s) to straddle two splits")
    for r in mine[-rows_to_flip:]:
        r["split"] = "val" if r["split"] == "train" else "train"
    _write_index(Path(data), rows)
    return session


def drop_index_row(data: Path | str, key: str | None = None) -> str:
    """Remove one sample's row from the index (its members stay in the shard); returns its key."""
    rows = _read_index(Path(data))
    dropped = rows.pop(_pick(rows, key))
    _write_index(Path(data), rows)
    return dropped["key"]


def delete_tar_member(data: Path | str, key: str | None = None, member: str = "json") -> tuple[str, str]:
    """Rewrite a sample's shard without one of its members; returns (shard, member file name)."""
    rows = _read_index(Path(data))
    row = rows[_pick(rows, key)]
    shard = Path(data) / "shards" / row["shard"]
    name = f"{row['key']}.{member}"
    buf = io.BytesIO()
    found = False
    with tarfile.open(shard, "r:") as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src:
            if info.name == name:
                found = True
                continue
            dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    if not found:
        raise KeyError(f"{shard.name} has no member {name}")
    _replace(shard, buf.getvalue())  # a new inode: the unit part this shard links to keeps its bytes
    return shard.name, name


RAW_DEFECTS = {
    "silence_audio": silence_audio,
    "black_video": black_video,
    "freeze_video": freeze_video,
    "depth_dropout": depth_dropout,
    "imu_gap": imu_gap,
}
DATA_DEFECTS = {
    "duplicate_key": duplicate_key,
    "split_leak": split_leak,
    "drop_index_row": drop_index_row,
    "delete_tar_member": delete_tar_member,
}
