"""The unit of work: one recording (or a chunk of still pairs) in, samples and rejects out.

Every planned window ends as exactly one of: a sample in a tar part, or a window reject (key set,
modality null). A modality that is invalid inside a kept sample gets a modality reject; whole-input
problems get an input reject (key null). Engines only map ``process_unit`` over units.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from schemas import modalities
from schemas.manifest import ImuUnits
from schemas.reasons import RejectReason
from transforms import filters as F
from transforms import imu as I
from transforms.activity import ActivityTaps
from transforms.clockcheck import check_clocks, side_activities
from transforms.config import BuildConfig
from transforms.framestream import FrameTable, FrameTableError, load_frame_table, pick_frame, read_still_partner
from transforms.images import (
    ORIENTATION_NAMES,
    ImageInputError,
    depth_quality,
    encode_frame_jpeg,
    encode_png16,
    frame_quality,
    load_rgb,
    orient,
    orient_intrinsics,
    shrink_to_short_side,
    thermal_quality,
)
from transforms.layouts import MEDIA_SUFFIXES, ClockSpec, MediaUnit, StillUnit
from transforms.media import (
    DamagedUnderThreads,
    MediaEvent,
    MediaInfo,
    MediaInputError,
    decode_media,
    helper_thread,
    one_decode_thread,
    probe,
)
from transforms.paths import PathRejected, check_file
from transforms.plan import Window, plan_windows, sample_key, split_for
from transforms.records import Reject, UnitSink, UnitSummary, json_bytes, npy_bytes

Heartbeat = Callable[[str], None]


class Sink(Protocol):
    """Where an input's results go: ``records.UnitSink``, or pipelines/work.py's pipe to the unit's writer."""

    def planned(self, n: int) -> None: ...

    def reject(self, r: Reject) -> None: ...

    def sample(self, split: str, key: str, members: dict[str, bytes], row: dict) -> None: ...

    def sync(self, rows: list[dict]) -> None: ...

    def begin_input(self) -> None:
        """An input starts: what it records from now on can be withdrawn."""

    def withdraw_input(self) -> None:
        """Withdraw everything recorded since ``begin_input`` (a second pass over the input follows)."""


# Samples handed to the writing thread and not yet written, before the decoding thread waits for it.
_MAX_PENDING_SAMPLES = 8


def _none(_: str) -> None:
    return None


def process_unit(
    root: Path, unit: MediaUnit | StillUnit, cfg: BuildConfig, sink: UnitSink, heartbeat: Heartbeat = _none
) -> UnitSummary:
    """One input alone into ``sink``, closed: its summary. (A unit of work of several inputs calls
    ``process_input`` once per input on one sink; pipelines/work.py.)"""
    process_input(root, unit, cfg, sink, heartbeat)
    return sink.close()


def process_input(
    root: Path, unit: MediaUnit | StillUnit, cfg: BuildConfig, sink: Sink, heartbeat: Heartbeat = _none
) -> None:
    """Record one input's windows in ``sink`` (``planned``, then a ``sample`` or ``reject`` per window, in
    window order) without closing it, so that the inputs of a unit of work share its tar parts."""
    # OpenCV's own thread pool splits even a 320p colour conversion across cores and then spin-waits
    # for more (tens of thousands of sched_yield calls per minute of video), taking CPU from the
    # decoder for no gain on frames this small. Results do not depend on it either way.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    sink.begin_input()
    try:
        if isinstance(unit, StillUnit):
            _process_stills(root, unit, cfg, sink, heartbeat)
        else:
            try:
                _process_media(root, unit, cfg, sink, heartbeat)
                damaged = False
            except DamagedUnderThreads:
                damaged = True
            if damaged:  # out of the except: its traceback would keep the first pass's decoders alive
                # damage decodes differently with other thread counts: with one, the input's samples and
                # rejects are the same whatever engine, worker count or machine built it (transforms/media.py)
                sink.withdraw_input()
                with one_decode_thread():
                    _process_media(root, unit, cfg, sink, heartbeat)
    finally:
        cv2.setNumThreads(cv2_threads)


# --------------------------------------------------------------------------------------- side streams


@dataclass
class _Side:
    """A depth or thermal table, or an IMU track, or the reason it is unusable for every window."""

    name: str
    table: FrameTable | None = None
    track: I.ImuTrack | None = None
    clock: ClockSpec | None = None
    source: str | None = None
    reason: RejectReason | None = None
    detail: str = ""


def _load_frames(root: Path, unit: MediaUnit, name: str, sink: UnitSink) -> _Side | None:
    spec = getattr(unit, name)
    if spec is None:
        return None
    try:
        table = load_frame_table(root, spec)
    except FrameTableError as exc:
        return _Side(name, source=exc.source, reason=exc.reason, detail=exc.detail)
    for issue in table.issues:
        sink.reject(Reject(spec.timestamps_csv, issue.reason, issue.detail, unit.session, modality=name))
    return _Side(name, table=table, source=spec.frames_dir)


def _load_imu(root: Path, unit: MediaUnit, sink: UnitSink) -> _Side | None:
    spec = unit.imu
    if spec is None:
        return None
    units = ImuUnits(accel=spec.accel_units, gyro=spec.gyro_units)
    clock = spec.clock
    try:  # inside RAW and a regular file, before anything opens it (a FIFO would block the open)
        imu_path = check_file(root, spec.path).path
    except PathRejected as exc:
        return _Side("imu", source=exc.source, reason=exc.reason, detail=exc.detail)
    try:
        try:
            track = I.read_imu_csv(
                imu_path, time_column=spec.time_column, time_unit_s=spec.time_unit_s, units=units,
                source_name=spec.path,
            )  # fmt: skip
        except I.ImuFormatError as exc:
            if spec.fallback_time_column is None or exc.reason is not RejectReason.BAD_TIMESTAMPS:
                raise
            # no canonical (video-clock) times: take the device clock and assume it starts with the video
            track = I.read_imu_csv(
                imu_path, time_column=spec.fallback_time_column, time_unit_s=spec.time_unit_s, units=units,
                source_name=spec.path,
            )  # fmt: skip
            clock = ClockSpec(offset_s=clock.offset_s - (float(track.t[0]) if len(track) else 0.0))
    except I.ImuFormatError as exc:
        return _Side("imu", source=spec.path, reason=exc.reason, detail=str(exc))
    report = track.report
    if report is not None:
        for reason, n in (
            (RejectReason.IMU_NAN, report.nan_rows),
            (RejectReason.DUPLICATE_TIMESTAMPS, report.duplicate_rows),
            (RejectReason.NON_MONOTONIC_TIMESTAMPS, report.non_monotonic_steps),
        ):
            if n:
                sink.reject(Reject(spec.path, reason, f"{n} row(s) repaired or dropped", unit.session, modality="imu"))
    if track.clock_step is not None:  # the windows that need the rows past it are rejected one by one
        sink.reject(Reject(spec.path, RejectReason.IMU_CLOCK_STEP, track.clock_step.describe(), unit.session,
                           modality="imu"))  # fmt: skip
    return _Side("imu", track=track, clock=clock, source=spec.path)


# --------------------------------------------------------------------------------------- recordings


def _label_for(unit: MediaUnit, w: Window) -> tuple[str | None, str | None, bool]:
    overlaps: dict[str, float] = {}
    captions: dict[str, str | None] = {}
    for lb in unit.labels:
        ov = min(lb.end_s, w.end_s) - max(lb.start_s, w.start_s)
        if ov > 1e-6:
            overlaps[lb.label] = overlaps.get(lb.label, 0.0) + ov
            captions.setdefault(lb.label, lb.caption)
    if not overlaps:
        return None, unit.caption, False
    label = max(sorted(overlaps), key=lambda k: overlaps[k])
    return label, captions[label] or label, len(overlaps) > 1


def _merge(streams: list[Iterator[MediaEvent]]) -> Iterator[MediaEvent]:
    # Two files (video + separate audio) are decoded side by side in session-time order, so that
    # neither side's finished windows pile up while the other file is still being read.
    return heapq.merge(*streams, key=lambda e: e.t_s) if len(streams) > 1 else streams[0]


def _process_media(root: Path, unit: MediaUnit, cfg: BuildConfig, sink: UnitSink, heartbeat: Heartbeat) -> None:
    session = unit.session
    if unit.video is None:
        src = unit.audio or unit.unit_id
        sink.reject(Reject(src, RejectReason.NO_VIDEO_STREAM, "no video stream: no paired image", session))
        return
    try:
        video_path = check_file(root, unit.video).path
        # announced before the probe and the clock check read it: its decode budget covers them too
        heartbeat(str(video_path))
        info = probe(video_path, cfg.max_image_side)
    except PathRejected as exc:
        sink.reject(Reject(exc.source, exc.reason, exc.detail, session))
        return
    except MediaInputError as exc:
        sink.reject(Reject(unit.video, _open_failure(unit.video, exc.reason), exc.detail, session))
        return
    if not info.has_video:
        sink.reject(Reject(unit.video, RejectReason.NO_VIDEO_STREAM, "file has no video stream", session))
        return
    if info.video_end_s is None:
        sink.reject(Reject(unit.video, RejectReason.BAD_TIMESTAMPS, "video declares no duration", session))
        return
    # the grid follows where the video's timestamps start (an MKV starting at pts 45 s), see plan_windows
    start_s, end_s = (float(unit.video_clock.to_session(t)) for t in (info.video_start_s, info.video_end_s))
    windows = plan_windows(end_s, cfg, start_s, own_timeline=unit.layout in ("videos", "ego4d"))
    if not windows:
        sink.reject(Reject(unit.video, RejectReason.PARTIAL_WINDOW, "recording is shorter than one clip", session))
        return
    if unit.layout == "ego4d" and unit.imu is not None and start_s:
        # Ego4D's IMU times count from the start of its video, which is start_s on the video's timestamps
        # (a container's offset: MPEG-TS 1.4 s, an MKV at 45 s), not from timestamp 0
        unit = replace(unit, imu=replace(unit.imu, clock=ClockSpec(offset_s=start_s)))
    rows: list[dict] = []
    if cfg.clocks == "declared":
        unit, clock_fail = check_clocks(root, unit, cfg.clocks, on_rows=rows.extend)
        _decode_windows(root, unit, cfg, sink, heartbeat, video_path, info, windows, clock_fail)
    else:
        # --clocks verify|estimate: the decoding pass on the declared clocks also measures the video and
        # audio activity; the clocks are checked after it. Only when a stream's clock is rejected (verify)
        # or replaced (estimate) does the input go again, its first pass withdrawn from the sink: what is
        # stored is what a single pass with those clocks gives, and clocks that agree cost no second decode.
        taps = ActivityTaps()
        # the depth, thermal and IMU activity (their files, which the pass does not read) meanwhile
        with helper_thread("bindset-sides") as reader:
            sides = reader.submit(side_activities, root, unit)
            _decode_windows(root, unit, cfg, sink, heartbeat, video_path, info, windows, {}, taps)
            measured = sides.result()
        used, clock_fail = check_clocks(root, unit, cfg.clocks, on_rows=rows.extend, taps=taps, sides=measured)
        if clock_fail or used is not unit:
            sink.withdraw_input()
            _decode_windows(root, used, cfg, sink, heartbeat, video_path, info, windows, clock_fail)
    sink.sync(rows)


def _decode_windows(root: Path, unit: MediaUnit, cfg: BuildConfig, sink: Sink, heartbeat: Heartbeat,
                    video_path: Path, info: MediaInfo, windows: list[Window], clock_fail: dict[str, str],
                    taps: ActivityTaps | None = None) -> None:  # fmt: skip
    """One decoding pass over a session's media and side streams: ``planned``, then each window's sample or
    reject, in window order. ``clock_fail``: streams whose every window is a ``clock_mismatch`` reject.
    ``taps``: fed the video's and audio's decoded frames (the clock check's activity signals)."""
    session = unit.session
    sink.planned(len(windows))
    # audio: in the video container, in a file of its own, or unusable for every window
    audio_fail: tuple[RejectReason, str, str] | None = None
    if "audio" in clock_fail:  # every window rejects it: not decoded at all
        audio_fail = (RejectReason.CLOCK_MISMATCH, unit.audio, clock_fail["audio"])
    for err in unit.stream_errors:  # declared invalidly in the manifest: not decoded either
        if err.name == "audio":
            audio_fail = (err.reason, err.source, err.detail)
    streams = []
    audio_in_video = unit.audio is not None and unit.audio == unit.video
    if unit.audio is not None and not audio_in_video and audio_fail is None:
        try:
            audio_path = check_file(root, unit.audio).path
            ainfo = probe(audio_path, cfg.max_image_side)
            if not ainfo.has_audio:
                audio_fail = (RejectReason.NO_AUDIO_STREAM, unit.audio, "file has no audio stream")
            else:
                streams.append(
                    decode_media(audio_path, video_windows=None, video_clock=unit.video_clock,
                                 audio_windows=windows, audio_clock=unit.audio_clock, cfg=cfg, heartbeat=heartbeat,
                                 taps=taps)
                )  # fmt: skip
        except PathRejected as exc:
            audio_fail = (exc.reason, exc.source, exc.detail)
        except MediaInputError as exc:
            audio_fail = (_open_failure(unit.audio, exc.reason), unit.audio, exc.detail)
    elif audio_in_video and not info.has_audio and audio_fail is None:
        audio_fail = (RejectReason.NO_AUDIO_STREAM, unit.video, "video has no audio track")
    want_audio = unit.audio is not None and audio_fail is None
    streams.insert(
        0,
        decode_media(video_path, video_windows=windows, video_clock=unit.video_clock,
                     audio_windows=windows if (audio_in_video and want_audio) else None,
                     audio_clock=unit.audio_clock, cfg=cfg, heartbeat=heartbeat, taps=taps),
    )  # fmt: skip

    split = split_for(session, cfg)
    video_res: dict[int, object] = {}
    audio_res: dict[int, object] = {}
    nxt = 0
    # Writing a sample (depth/thermal PNGs, IMU resampling, tar members, hashes) runs on a thread of its
    # own, in window order, so that this thread goes back to feeding the decoders at once; the sink is
    # only touched from there until it has caught up.
    with helper_thread("bindset-emit") as emitter:
        # depth/thermal tables and the IMU track load there too, first, while decoding starts here
        sides = emitter.submit(_load_sides, root, unit, sink, clock_fail)
        pending: deque[Future] = deque([sides])

        def submit(fn, *args) -> None:
            pending.append(emitter.submit(fn, *args))
            while pending and (len(pending) > _MAX_PENDING_SAMPLES or pending[0].done()):
                pending.popleft().result()  # re-raises what the job raised

        try:
            for ev in _merge(streams):
                if ev.video is not None:
                    video_res[ev.video.index] = ev.video
                if ev.audio is not None:
                    audio_res[ev.audio.id] = ev.audio
                while nxt < len(windows) and nxt in video_res and (not want_audio or nxt in audio_res):
                    submit(_emit, root, unit, windows[nxt], video_res.pop(nxt), audio_res.pop(nxt, None),
                           audio_fail, sides, split, cfg, sink, info.frame_period_s)  # fmt: skip
                    nxt += 1
            while nxt < len(windows):  # cannot happen unless a decoder reported fewer windows than asked
                vw = video_res.pop(nxt, None)
                if vw is None:
                    w = windows[nxt]
                    submit(sink.reject, Reject(unit.video, RejectReason.INTERNAL_ERROR,
                                               "window never reported by the decoder", session, w.key(session),
                                               w.start_s, w.end_s))  # fmt: skip
                else:
                    submit(_emit, root, unit, windows[nxt], vw, audio_res.pop(nxt, None), audio_fail, sides,
                           split, cfg, sink, info.frame_period_s)  # fmt: skip
                nxt += 1
            while pending:
                pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _open_failure(rel: str, reason: RejectReason) -> RejectReason:
    """FFmpeg decides what is media: a file it cannot open whose suffix names no media container is of a
    format it does not read (``unsupported_format``); a media file it cannot open is damaged."""
    if reason is RejectReason.DECODE_ERROR and Path(rel).suffix.lower() not in MEDIA_SUFFIXES:
        return RejectReason.UNSUPPORTED_FORMAT
    return reason


def _load_sides(root: Path, unit: MediaUnit, sink: UnitSink, clock_fail: dict[str, str] | None = None) -> list[_Side]:
    sides = (_load_frames(root, unit, "depth", sink), _load_frames(root, unit, "thermal", sink),
             _load_imu(root, unit, sink))  # fmt: skip
    # a side stream the manifest declares invalidly (schemas/manifest.parse_manifest_streams) has no spec
    declared_bad = {e.name: _Side(e.name, source=e.source, reason=e.reason, detail=e.detail)
                    for e in unit.stream_errors if e.name != "audio"}  # fmt: skip
    sides = tuple(declared_bad.get(name, s) for name, s in zip(("depth", "thermal", "imu"), sides, strict=True))
    fail = clock_fail or {}
    return [
        _Side(s.name, source=s.source, reason=RejectReason.CLOCK_MISMATCH, detail=fail[s.name])
        if s.name in fail and s.reason is None
        else s
        for s in sides
        if s is not None
    ]


def _emit(root, unit: MediaUnit, w: Window, vw, aw, audio_fail, sides_future: Future, split, cfg: BuildConfig,
          sink: UnitSink, video_period_s: float | None = None):  # fmt: skip
    """One window's sample or reject; runs on the writing thread, after ``_load_sides`` there.

    The quality filters (``cfg.filters``) run here, on the figures of what would be stored: a frame figure
    beyond its threshold rejects the window, any other rejects its modality only.
    """
    session = unit.session
    sides: list[_Side] = sides_future.result()
    key = w.key(session)

    def modality_reject(source, reason, detail, modality):
        sink.reject(Reject(source or unit.video, reason, detail, session, key, w.start_s, w.end_s, modality))

    if vw.first is None:
        sink.reject(Reject(unit.video, vw.reason, vw.detail, session, key, w.start_s, w.end_s))
        return
    # one frame in the window (first is last): nothing to compare, so it cannot be called frozen
    diff = vw.diff if vw.last.t_s != vw.first.t_s else None
    bad = F.frame_filter(vw.first.brightness, vw.first.sharpness, diff, cfg.filters)
    if bad is not None:
        sink.reject(Reject(unit.video, bad.reason, bad.detail, session, key, w.start_s, w.end_s))
        return
    members = dict(zip(modalities.VIDEO.members, (vw.first.jpg, vw.last.jpg), strict=True))  # first, last frame
    row: dict = {
        "session": session,
        "layout": unit.layout,
        "clip_start_s": w.start_s,
        "clip_end_s": w.end_s,
        "source_video": unit.video,
        "frame0_t_s": vw.first.t_s,
        "frame1_t_s": vw.last.t_s,
        "frame_brightness": vw.first.brightness,
        "frame_sharpness": vw.first.sharpness,
        "frame_diff": vw.diff,
        "sync_err_video_ms": (vw.first.t_s - w.start_s) * 1000.0,
        "video_frame_period_ms": None if video_period_s is None else video_period_s * 1000.0,
        "video_rotation_deg": vw.rotation_deg,
        "video_sar": vw.sar,
    }
    meta: dict = {"frame_times_s": [vw.first.t_s, vw.last.t_s]}
    if vw.orientation != 1 or vw.sar != 1.0:
        # frames are stored upright at display aspect; this says what was done to the coded pixels
        meta["video_orientation"] = {"exif": vw.orientation, "rotation_ccw_deg": vw.rotation_deg,
                                     "sar": vw.sar}  # fmt: skip
    # audio
    if unit.audio is not None or audio_fail is not None:
        row["source_audio"] = unit.audio or audio_fail[1]
        if audio_fail is not None:
            modality_reject(audio_fail[1], audio_fail[0], audio_fail[2], "audio")
        elif aw.mel is None:
            modality_reject(unit.audio, aw.reject_reason, aw.detail, "audio")
        elif (bad := F.audio_filter(aw.quality.rms_dbfs, aw.quality.clipped_frac, cfg.filters)) is not None:
            modality_reject(unit.audio, bad.reason, bad.detail, "audio")
        else:
            members[modalities.AUDIO.member] = npy_bytes(aw.mel)
            row["audio_rms_dbfs"] = aw.quality.rms_dbfs
            row["audio_clipped_frac"] = aw.quality.clipped_frac
            row["sync_err_audio_ms"] = (float(unit.audio_clock.to_session(aw.first_sample_s)) - w.start_s) * 1000.0
    # depth, thermal, IMU
    for side in sides:
        row[f"source_{side.name}"] = side.source
        if side.reason is not None:
            modality_reject(side.source, side.reason, side.detail, side.name)
            continue
        if side.name == "imu":
            _imu_part(side, w, cfg, row, members, meta, modality_reject)
            continue
        missing = modalities.BY_NAME[side.name].missing_reason
        tol = cfg.depth_tolerance_s if side.name == "depth" else cfg.thermal_tolerance_s
        pick = pick_frame(root, side.table, vw.first.t_s, tol, missing, cfg.max_image_side)
        if pick.png is None:
            modality_reject(pick.source or side.source, pick.reason, pick.detail, side.name)
            continue
        figures = _side_figures(side.name, pick.array)
        bad = _side_filter(side.name, figures, cfg)
        if bad is not None:
            modality_reject(pick.source, bad.reason, bad.detail, side.name)
            continue
        row.update(figures)
        png = pick.png
        if vw.orientation != 1:
            # a rig's depth/thermal frames share the camera's sensor orientation (they carry no display
            # matrix of their own): turned with the video so that a pair is never rotated against itself
            png = encode_png16(orient(pick.array, vw.orientation))
            meta[f"{side.name}_orientation"] = vw.orientation
        members[modalities.BY_NAME[side.name].member] = png
        row[f"source_{side.name}"] = pick.source
        row[f"sync_err_{side.name}_ms"] = pick.delta_ms
        row[f"{side.name}_frame_period_ms"] = side.table.period_s * 1000.0 if side.table.period_s > 0 else None
        meta[f"{side.name}_t_s"] = pick.t_s
        spec = getattr(unit, side.name)
        if side.name == "depth":
            meta["depth_units"] = "mm"
            if spec.intrinsics:
                h, w_px = pick.array.shape[:2]
                meta["depth_intrinsics"] = (
                    orient_intrinsics(spec.intrinsics, w_px, h, vw.orientation)
                    if vw.orientation != 1 and {"cx", "cy", "fx", "fy"} <= set(spec.intrinsics)
                    else spec.intrinsics
                )
        else:
            meta["thermal_units"] = spec.units
    label, caption, change = _label_for(unit, w)
    if caption:
        members[modalities.TEXT.member] = caption.encode()
    row.update(label=label, caption=caption, label_change=change)
    _finish_sample(sink, split, key, members, row, meta, session, unit.layout, w.start_s, w.end_s)


def _side_figures(name: str, arr: np.ndarray) -> dict[str, float]:
    """The index's quality figures of a stored depth or thermal frame."""
    if name == "depth":
        return {"depth_valid_frac": depth_quality(arr)}
    q = thermal_quality(arr)
    return {"thermal_min": q.min, "thermal_max": q.max}


def _side_filter(name: str, figures: dict[str, float], cfg: BuildConfig) -> F.FilterReject | None:
    if name == "depth":
        return F.depth_filter(figures["depth_valid_frac"], cfg.filters)
    return F.thermal_filter(figures["thermal_min"], figures["thermal_max"], cfg.filters)


def _imu_part(side: _Side, w: Window, cfg: BuildConfig, row, members, meta, modality_reject) -> None:
    center = float(side.clock.to_stream(w.center_s))
    iw = I.imu_window(
        side.track, center, length_s=cfg.imu_window_s, rate_hz=cfg.imu_rate_hz, max_gap_s=cfg.imu_max_gap_s
    )
    row["imu_rate_hz"] = iw.input_rate_hz
    row["imu_max_gap_ms"] = None if np.isnan(iw.max_gap_ms) else iw.max_gap_ms
    if not iw.ok:
        modality_reject(side.source, iw.reason, iw.detail, "imu")
        return
    saturated = F.imu_saturated_frac(iw.data)
    if (bad := F.imu_filter(saturated, cfg.filters)) is not None:
        modality_reject(side.source, bad.reason, bad.detail, "imu")
        return
    row["imu_saturated_frac"] = saturated
    members[modalities.IMU.member] = npy_bytes(iw.data)
    t = side.track.t
    i = int(np.clip(np.searchsorted(t, center), 1, len(t) - 1))
    nearest = t[i - 1] if center - t[i - 1] <= t[i] - center else t[i]
    row["sync_err_imu_ms"] = (float(side.clock.to_session(nearest)) - w.center_s) * 1000.0
    meta["imu_window_s"] = [float(side.clock.to_session(iw.start_s)), cfg.imu_window_s]
    meta["imu_units"] = ["m/s^2"] * 3 + ["rad/s"] * 3


def _finish_sample(sink, split, key, members, row, meta, session, layout, start_s, end_s) -> None:
    present = modalities.present(members)
    for m, ok in present.items():
        row[modalities.BY_NAME[m].has_column] = ok
    meta.update(
        key=key, session=session, layout=layout, split=split, clip=[start_s, end_s],
        present=sorted(m for m, ok in present.items() if ok),
        label=row.get("label"), caption=row.get("caption"),
    )  # fmt: skip
    members[modalities.META_MEMBER] = json_bytes(meta)
    row.setdefault("label_change", False)
    sink.sample(split, key, members, row)


# --------------------------------------------------------------------------------------- stills


def _process_stills(root: Path, unit: StillUnit, cfg: BuildConfig, sink: UnitSink, heartbeat: Heartbeat) -> None:
    sink.planned(len(unit.pairs))
    for pair in unit.pairs:
        heartbeat(pair.image)
        key = sample_key(pair.session, 0.0)
        try:
            rgb, header = load_rgb(check_file(root, pair.image).path, max_side=cfg.max_image_side, name=pair.image)
        except PathRejected as exc:
            sink.reject(Reject(exc.source, exc.reason, exc.detail, pair.session, key))
            continue
        except FileNotFoundError:
            sink.reject(Reject(pair.image, RejectReason.FILE_MISSING, "image not found", pair.session, key))
            continue
        except ImageInputError as exc:
            sink.reject(Reject(pair.image, exc.reason, str(exc), pair.session, key))
            continue
        # stored as meant to be seen; the partner follows the image's tag (framestream, "Still pairs")
        rgb = orient(rgb, header.orientation)
        rgb = shrink_to_short_side(rgb, cfg.max_short_side)  # the figures describe the stored image
        q = frame_quality(rgb)
        bad = F.frame_filter(q.brightness, q.sharpness, None, cfg.filters)
        if bad is not None:
            sink.reject(Reject(pair.image, bad.reason, bad.detail, pair.session, key))
            continue
        jpg = encode_frame_jpeg(rgb, max_short_side=cfg.max_short_side, quality=cfg.jpeg_quality)
        members = {modalities.PAIRED_IMAGE.member: jpg}
        row = {
            "session": pair.session, "layout": unit.layout, "clip_start_s": 0.0, "clip_end_s": 0.0,
            "source_video": pair.image, f"source_{pair.kind}": pair.partner,
            "frame_brightness": q.brightness, "frame_sharpness": q.sharpness,
        }  # fmt: skip
        meta: dict = {}
        if header.orientation != 1:
            meta["orientation"] = {"exif": header.orientation, "applied": ORIENTATION_NAMES[header.orientation]}
        try:
            partner = read_still_partner(root, pair.partner, pair.kind, cfg.max_image_side, header.orientation)
            arr = partner.pixels
        except FileNotFoundError:
            arr = None
            sink.reject(
                Reject(pair.partner, RejectReason.FILE_MISSING, "not found", pair.session, key, modality=pair.kind)
            )
        except PathRejected as exc:
            arr = None
            sink.reject(Reject(exc.source, exc.reason, exc.detail, pair.session, key, modality=pair.kind))
        except ImageInputError as exc:
            arr = None
            sink.reject(Reject(pair.partner, exc.reason, str(exc), pair.session, key, modality=pair.kind))
        if arr is not None:
            figures = _side_figures(pair.kind, arr)
            bad = _side_filter(pair.kind, figures, cfg)
            if bad is not None:
                sink.reject(Reject(pair.partner, bad.reason, bad.detail, pair.session, key, modality=pair.kind))
                arr = None
        if arr is not None:
            row.update(figures)
            members[modalities.BY_NAME[pair.kind].member] = encode_png16(arr)
            if pair.kind == "depth":
                meta["depth_units"] = "mm"
                if pair.intrinsics:
                    # SUN RGB-D's intrinsics.txt is for the image's coded grid, which the depth is registered to
                    meta["depth_intrinsics"] = orient_intrinsics(
                        pair.intrinsics, header.width, header.height, partner.orientation
                    )
            else:
                meta["thermal_units"] = "gray8"
        if pair.caption:
            members[modalities.TEXT.member] = pair.caption.encode()
        row.update(label=pair.caption, caption=pair.caption, label_change=False)
        split = split_for(pair.session, cfg, pair.split)
        _finish_sample(sink, split, key, members, row, meta, pair.session, unit.layout, 0.0, 0.0)
