"""Planted defects: known faults put into synthetic captures (RAW) or into a built dataset (DATA).

RAW defects are per-sample faults: the build's filter that owns each turns the affected windows (or one
modality of them) into rejects with the defect's reason, and the gate (``bindset validate``) fails once that
reason's rate passes its bound (``reasons``: ``max_rate`` >= ``rate``). Repairs are routine input faults
the build fixes and reports (an input-level row: modality set, key null); they never fail the gate by
themselves. DATA defects break one data contract each.

| defect                         | where | caught by                                                             |
|--------------------------------|-------|-----------------------------------------------------------------------|
| ``silence_audio``              | RAW   | filter ``audio_silent`` (audio dropped from the sample)               |
| ``clip_audio``                 | RAW   | filter ``audio_clipped`` (audio dropped from the sample)              |
| ``black_video``                | RAW   | filter ``frame_black`` (window rejected)                              |
| ``blur_video``                 | RAW   | filter ``frame_blurred`` (window rejected)                            |
| ``freeze_video``               | RAW   | filter ``frame_frozen`` (window rejected)                             |
| ``depth_dropout``              | RAW   | filter ``depth_invalid`` (depth dropped from the sample)              |
| ``flat_thermal``               | RAW   | filter ``thermal_flat`` (thermal dropped from the sample)             |
| ``saturate_imu``               | RAW   | filter ``imu_saturated`` (IMU dropped from the sample)                |
| ``imu_gap``                    | RAW   | ``imu_gap`` (IMU dropped from the sample)                             |
| ``duplicate_imu_row``          | RAW   | repair: ``duplicate_timestamps`` row (imu, no key); gate passes       |
| ``duplicate_depth_timestamp``  | RAW   | repair: ``duplicate_timestamps`` row (depth, no key); gate passes     |
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
# (samples as float in [-1, 1] or int PCM, (channels, n) or (n, channels); session times (n,)) -> samples
AudioEdit = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
    edit_audio: AudioEdit | None = None,
) -> int:
    """Re-encode the video frames (edit_video) or the audio track (silence, edit_audio); copy the other's packets.

    Returns how many frames (or audio samples) were changed.
    """
    if silence is not None:
        edit_audio = _mute(*silence)
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
            elif s is ain and edit_audio is not None:
                rate = s.codec_context.sample_rate
                o = out.add_stream("aac", rate=rate, layout=s.codec_context.layout.name)
                o.time_base = o.codec_context.time_base = Fraction(1, rate)
            else:
                o = out.add_stream_from_template(s)
            outs[s.index] = o
        for packet in inp.demux(*streams):
            src = packet.stream
            o = outs[src.index]
            reencode = (src is vin and edit_video is not None) or (src is ain and edit_audio is not None)
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
                    y = edit_audio(x, t)
                    if y is not x:
                        changed += int(np.any(y != x, axis=0).sum())
                        x = np.ascontiguousarray(y, dtype=x.dtype)
                    new = av.AudioFrame.from_ndarray(x, format=frame.format.name, layout=frame.layout.name)
                    new.sample_rate = frame.sample_rate
                new.pts, new.time_base = frame.pts, frame.time_base
                out.mux(o.encode(new))
        for s in streams:
            if (s is vin and edit_video is not None) or (s is ain and edit_audio is not None):
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


def _mute(start_s: float, end_s: float) -> AudioEdit:
    def edit(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        mute = (t >= start_s) & (t < end_s)
        if not mute.any():
            return x
        y = x.copy()
        y[..., mute] = 0
        return y

    return edit


def _overdrive(start_s: float, end_s: float, gain: float) -> AudioEdit:
    """Amplify by ``gain`` and clip at full scale (a preamp driven into clipping)."""

    def edit(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        hot = (t >= start_s) & (t < end_s)
        if not hot.any():
            return x
        if np.issubdtype(x.dtype, np.integer):
            full = float(np.iinfo(x.dtype).max)
            lo, hi = -full - 1, full
        else:
            lo, hi = -1.0, 1.0
        y = x.astype(np.float64)
        y[..., hot] = np.clip(y[..., hot] * gain, lo, hi)
        return y.astype(x.dtype)

    return edit


def _edit_audio(raw: Path | str, session: str, edit: AudioEdit) -> int:
    folder, m = _manifest(Path(raw), session)
    audio = m.streams.audio
    if audio is None:
        raise ValueError(f"{session}: no audio stream")
    if audio.track == "video":
        return _rewrite_media(folder / m.streams.video.path, video_clock=m.streams.video.clock,
                              audio_clock=audio.clock, edit_audio=edit)  # fmt: skip
    path = folder / audio.path
    if path.suffix.lower() != ".wav":
        raise ValueError(f"{path}: only WAV audio files can be edited")
    with wave.open(str(path), "rb") as w:
        params, pcm = w.getparams(), w.readframes(w.getnframes())
    if params.sampwidth != 2:
        raise ValueError(f"{path}: only 16-bit PCM WAV can be edited")
    x = np.frombuffer(pcm, "<i2").reshape(-1, params.nchannels).T  # (channels, n), as the container path
    t = audio.clock.to_session(np.arange(x.shape[1]) / params.framerate)
    y = edit(x, t)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setparams(params)
        w.writeframes(np.ascontiguousarray(y.T).astype("<i2").tobytes())
    _replace(path, buf.getvalue())
    return int(np.any(y != x, axis=0).sum())


def silence_audio(raw: Path | str, session: str, start_s: float, end_s: float) -> int:
    """Zero the session's audio over [start_s, end_s); video packets are copied untouched.

    Audio in the video container is decoded and re-encoded (AAC); a separate WAV is rewritten in place.
    Returns the number of samples (per channel) zeroed.
    """
    return _edit_audio(raw, session, _mute(start_s, end_s))


def clip_audio(raw: Path | str, session: str, start_s: float, end_s: float, gain: float = 30.0) -> int:
    """Drive the audio over [start_s, end_s) into clipping (x ``gain``, clipped at full scale).

    Returns the number of samples (per channel) changed.
    """
    return _edit_audio(raw, session, _overdrive(start_s, end_s, gain))


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


def blur_video(raw: Path | str, session: str, start_s: float, end_s: float) -> int:
    """Frames over [start_s, end_s) lose all detail (a lens far out of focus, or fogged): a Gaussian blur as wide
    as the frame, which leaves its mean colour and a faint gradient; returns frames changed.

    Milder blur is not a planted defect: the variance of the Laplacian cannot tell it from a smooth real
    scene (README, calibration table), so the filter's default only rejects frames without detail.
    """

    def edit(rgb: np.ndarray, t: float) -> np.ndarray:
        if not _in(t, start_s, end_s):
            return rgb
        return cv2.GaussianBlur(rgb, (0, 0), float(max(rgb.shape[:2])))

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


def flat_thermal(raw: Path | str, session: str, start_s: float, end_s: float) -> int:
    """Every thermal frame in range becomes one constant value (a dead sensor); returns frames changed."""
    folder, m = _manifest(Path(raw), session)
    if m.streams.thermal is None:
        raise ValueError(f"{session}: no thermal stream")
    frames = _frames_in(folder, m.streams.thermal, start_s, end_s)
    for p in frames:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        _replace(p, png_bytes(np.full_like(img, int(np.median(img)))))
    return len(frames)


def _imu_rows(raw: Path | str, session: str) -> tuple[Path, object, list[str], list[list[str]]]:
    folder, m = _manifest(Path(raw), session)
    imu = m.streams.imu
    if imu is None:
        raise ValueError(f"{session}: no IMU stream")
    path = folder / imu.path
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    return path, imu, header, rows


def _write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    _replace(path, buf.getvalue().encode())


def saturate_imu(raw: Path | str, session: str, headroom: float = 0.2) -> int:
    """Clip every motion channel of the whole track at a full scale ``headroom`` of the way from its median to its
    extremes (a sensor whose range is too small for the motion); returns the number of values clipped."""
    path, _imu, header, rows = _imu_rows(raw, session)
    channels = [i for i, h in enumerate(header) if h.startswith(("gyro", "acc"))]
    x = np.array([[float(r[i]) for i in channels] for r in rows])
    med = np.median(x, axis=0)
    hi, lo = med + headroom * (x.max(axis=0) - med), med - headroom * (med - x.min(axis=0))
    changed = 0
    for r, values in zip(rows, x, strict=True):
        for j, i in enumerate(channels):
            v = min(max(values[j], lo[j]), hi[j])
            if v != values[j]:
                r[i] = f"{v:.6f}"  # every clipped value written alike, read back identical: a flat top
                changed += 1
    _write_rows(path, header, rows)
    return changed


def duplicate_imu_row(raw: Path | str, session: str, at_s: float = 4.0) -> int:
    """Write the IMU row nearest ``at_s`` twice (a logger that flushed a row again); returns 1."""
    path, imu, header, rows = _imu_rows(raw, session)
    unit = imu.timestamps.unit.seconds
    col = header.index(imu.timestamps.column)
    t = np.array([float(imu.clock.to_session(float(r[col]) * unit)) for r in rows])
    i = int(np.argmin(np.abs(t - at_s)))
    rows.insert(i + 1, list(rows[i]))
    _write_rows(path, header, rows)
    return 1


def duplicate_depth_timestamp(raw: Path | str, session: str, at_s: float = 4.0) -> int:
    """Write the depth timestamps row nearest ``at_s`` twice (the same frame listed again); returns 1."""
    folder, m = _manifest(Path(raw), session)
    depth = m.streams.depth
    if depth is None:
        raise ValueError(f"{session}: no depth stream")
    path = folder / depth.timestamps.path
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    col = header.index(depth.timestamps.time_column)
    unit = depth.timestamps.unit.seconds
    t = np.array([float(depth.clock.to_session(float(r[col]) * unit)) for r in rows])
    i = int(np.argmin(np.abs(t - at_s)))
    rows.insert(i + 1, list(rows[i]))
    _write_rows(path, header, rows)
    return 1


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
    "clip_audio": clip_audio,
    "black_video": black_video,
    "blur_video": blur_video,
    "freeze_video": freeze_video,
    "depth_dropout": depth_dropout,
    "flat_thermal": flat_thermal,
    "saturate_imu": saturate_imu,
    "imu_gap": imu_gap,
}
#: Routine input faults the build repairs and reports; (raw, session) -> rows changed.
RAW_REPAIRS = {
    "duplicate_imu_row": duplicate_imu_row,
    "duplicate_depth_timestamp": duplicate_depth_timestamp,
}
DATA_DEFECTS = {
    "duplicate_key": duplicate_key,
    "split_leak": split_leak,
    "drop_index_row": drop_index_row,
    "delete_tar_member": delete_tar_member,
}
