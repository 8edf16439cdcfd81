"""Input layouts: detect which one RAW is, and enumerate its units of work.

A unit of work is what one worker processes start to finish: one recording session (captures), one
video (videos, ego4d) or a chunk of still pairs (sunrgbd, llvip). Units are plain JSON-able dataclasses
so that they cross process boundaries without pickled data, and so their descriptions fingerprint the
work for incremental rebuilds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import UserError
from schemas.manifest import ManifestError, SessionManifest, find_manifest, load_manifest
from schemas.reasons import RejectReason

LAYOUTS = ("captures", "videos", "ego4d", "sunrgbd", "llvip")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
AUDIO_SUFFIXES = (".m4a", ".wav", ".mp3", ".flac", ".ogg", ".aac")
STILLS_PER_UNIT = 500


class LayoutError(UserError, ValueError):
    """RAW cannot be read as the requested (or any) layout; the message names the offending path."""


@dataclass(frozen=True)
class ClockSpec:
    offset_s: float = 0.0
    drift_ppm: float = 0.0

    def to_session(self, t):
        return t * (1.0 + self.drift_ppm * 1e-6) + self.offset_s

    def to_stream(self, t):
        return (t - self.offset_s) / (1.0 + self.drift_ppm * 1e-6)


@dataclass(frozen=True)
class FrameStreamSpec:
    """A folder of PNG frames with a timestamps CSV (depth or thermal)."""

    frames_dir: str
    timestamps_csv: str
    file_column: str = "file"
    time_column: str = "timestamp"
    time_unit_s: float = 1e-3
    clock: ClockSpec = ClockSpec()
    units: str = "mm"
    intrinsics: dict | None = None


@dataclass(frozen=True)
class ImuSpec:
    path: str
    time_column: str = "component_timestamp_ms"
    time_unit_s: float = 1e-3
    clock: ClockSpec = ClockSpec()
    accel_units: str = "m/s^2"
    gyro_units: str = "rad/s"
    # Ego4D: canonical_timestamp_ms is on the video's clock when present; otherwise the device clock is
    # assumed to start with the video (the only alignment such a file allows).
    fallback_time_column: str | None = None


@dataclass(frozen=True)
class LabelSpan:
    start_s: float
    end_s: float
    label: str
    caption: str | None = None


@dataclass(frozen=True)
class MediaUnit:
    """One recording on one session timeline."""

    unit_id: str
    layout: str
    session: str
    video: str | None
    video_clock: ClockSpec = ClockSpec()
    audio: str | None = None  # a file of its own, or the video path when audio rides in the video
    audio_clock: ClockSpec = ClockSpec()
    depth: FrameStreamSpec | None = None
    thermal: FrameStreamSpec | None = None
    imu: ImuSpec | None = None
    labels: tuple[LabelSpan, ...] = ()
    caption: str | None = None

    def input_paths(self) -> list[str]:
        paths = [p for p in (self.video, self.audio) if p]
        for fs in (self.depth, self.thermal):
            if fs:
                paths += [fs.frames_dir, fs.timestamps_csv]
        if self.imu:
            paths.append(self.imu.path)
        return sorted(set(paths))


@dataclass(frozen=True)
class StillPair:
    """An image and its depth or thermal partner (SUN RGB-D, LLVIP): one sample."""

    session: str
    image: str
    partner: str
    kind: str  # "depth" (SUN RGB-D, bit-rotated mm) or "thermal" (LLVIP 8-bit)
    caption: str | None = None
    intrinsics: dict | None = None
    split: str | None = None  # the dataset's own split, when it has one


@dataclass(frozen=True)
class StillUnit:
    unit_id: str
    layout: str
    pairs: tuple[StillPair, ...]

    def input_paths(self) -> list[str]:
        return sorted({p for pair in self.pairs for p in (pair.image, pair.partner)})


@dataclass(frozen=True)
class InputReject:
    source: str
    reason: RejectReason
    detail: str
    session: str | None = None


@dataclass
class Discovery:
    layout: str
    detected: bool
    units: list[MediaUnit | StillUnit] = field(default_factory=list)
    rejects: list[InputReject] = field(default_factory=list)


def safe_name(text: str) -> str:
    """Session names become sample keys: no dots (WebDataset splits keys at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def _visible(p: Path) -> bool:
    return not p.name.startswith(("_", "."))


def _rel(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


# ------------------------------------------------------------------------------------------ detection


def detect_layout(root: Path) -> str:
    """The layout of RAW, or a LayoutError naming what does not fit."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: input folder does not exist")
    entries = sorted(p for p in root.iterdir() if _visible(p))
    if not entries:
        raise LayoutError(f"{root}: input folder is empty")
    names = {p.name for p in entries}
    if {"visible", "infrared"} <= names:
        candidates = [("llvip", {"visible", "infrared"})]
    elif {"full_scale", "imu"} <= names:
        candidates = [("ego4d", {"full_scale", "imu"})]
    elif any(p.is_dir() and find_manifest(p) for p in entries):
        candidates = [("captures", {p.name for p in entries if p.is_dir() and find_manifest(p)})]
    elif any(p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + AUDIO_SUFFIXES for p in entries):
        media = {p.name for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + AUDIO_SUFFIXES}
        # captions beside videos (NAME.txt) belong to the videos layout
        captions = {p.name for p in entries if p.suffix == ".txt" and any(m.startswith(p.stem + ".") for m in media)}
        candidates = [("videos", media | captions)]
    elif any(root.rglob("intrinsics.txt")):
        sensors = {p.relative_to(root).parts[0] for p in root.rglob("intrinsics.txt")}
        candidates = [("sunrgbd", sensors)]
    else:
        raise LayoutError(f"{root}: no known layout (expected {', '.join(LAYOUTS)}); first entry: {entries[0]}")
    layout, owned = candidates[0]
    strays = [p for p in entries if p.name not in owned]
    if layout == "captures":
        # a session folder without a manifest is reported per session (a reject), not a layout error
        strays = [p for p in strays if not p.is_dir()]
    if strays:
        raise LayoutError(f"{strays[0]}: does not belong to the detected {layout} layout (mixed content)")
    return layout


# ------------------------------------------------------------------------------------------ enumeration


def discover(root: Path, layout: str = "auto") -> Discovery:
    root = Path(root)
    detected = layout == "auto"
    if detected:
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    elif not root.is_dir():
        raise LayoutError(f"{root}: input folder does not exist")
    out = Discovery(layout, detected)
    {
        "captures": _captures,
        "videos": _videos,
        "ego4d": _ego4d,
        "sunrgbd": _sunrgbd,
        "llvip": _llvip,
    }[layout](root, out)
    out.units.sort(key=lambda u: u.unit_id)
    ids = [u.unit_id for u in out.units]
    if len(ids) != len(set(ids)):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise LayoutError(f"{root}: two inputs map to the same session id {dup!r}")
    return out


def _clock(c) -> ClockSpec:
    return ClockSpec(c.offset_s, c.drift_ppm)


def _inside(root: Path, session_dir: Path, rel: str) -> str:
    """Relative path from RAW to a manifest path, refusing one that leaves the session (symlinks too)."""
    base = session_dir.resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise _Escape(f"path {rel!r} resolves outside the session folder {session_dir}")
    return _rel(root, session_dir / rel)


class _Escape(Exception):
    pass


def _captures(root: Path, out: Discovery) -> None:
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        mpath = find_manifest(d)
        if mpath is None:
            out.rejects.append(InputReject(_rel(root, d), RejectReason.MANIFEST_INVALID, "no manifest.json/yaml"))
            continue
        try:
            m = load_manifest(mpath)
            out.units.append(_captures_unit(root, d, m))
        except ManifestError as exc:
            escape = "escapes the session folder" in str(exc) or "must be relative" in str(exc)
            reason = RejectReason.PATH_ESCAPES_ROOT if escape else RejectReason.MANIFEST_INVALID
            out.rejects.append(InputReject(_rel(root, mpath), reason, str(exc), session=safe_name(d.name)))
        except _Escape as exc:
            out.rejects.append(
                InputReject(_rel(root, mpath), RejectReason.PATH_ESCAPES_ROOT, str(exc), safe_name(d.name))
            )


def _frames(root: Path, d: Path, s) -> FrameStreamSpec:
    return FrameStreamSpec(
        frames_dir=_inside(root, d, s.frames),
        timestamps_csv=_inside(root, d, s.timestamps.path),
        file_column=s.timestamps.file_column,
        time_column=s.timestamps.time_column,
        time_unit_s=s.timestamps.unit.seconds,
        clock=_clock(s.clock),
        units=s.units,
        intrinsics=s.intrinsics.model_dump() if s.intrinsics else None,
    )


def _captures_unit(root: Path, d: Path, m: SessionManifest) -> MediaUnit:
    st = m.streams
    video = _inside(root, d, st.video.path) if st.video else None
    audio = None
    if st.audio is not None:
        audio = video if st.audio.track == "video" else _inside(root, d, st.audio.path)
    imu = None
    if st.imu is not None:
        imu = ImuSpec(
            path=_inside(root, d, st.imu.path),
            time_column=st.imu.timestamps.column,
            time_unit_s=st.imu.timestamps.unit.seconds,
            clock=_clock(st.imu.clock),
            accel_units=st.imu.units.accel,
            gyro_units=st.imu.units.gyro,
        )
    session = safe_name(m.session_id)
    return MediaUnit(
        unit_id=session,
        layout="captures",
        session=session,
        video=video,
        video_clock=_clock(st.video.clock) if st.video else ClockSpec(),
        audio=audio,
        audio_clock=_clock(st.audio.clock) if st.audio else ClockSpec(),
        depth=_frames(root, d, st.depth) if st.depth else None,
        thermal=_frames(root, d, st.thermal) if st.thermal else None,
        imu=imu,
        labels=tuple(LabelSpan(lb.start_s, lb.end_s, lb.label, lb.caption) for lb in m.labels),
    )


def _videos(root: Path, out: Discovery) -> None:
    for p in sorted(root.iterdir()):
        if not (p.is_file() and _visible(p) and p.suffix.lower() in VIDEO_SUFFIXES + AUDIO_SUFFIXES):
            continue
        cap = p.with_suffix(".txt")
        caption = cap.read_text(encoding="utf-8", errors="replace").strip() if cap.is_file() else None
        session = safe_name(p.stem)
        rel = _rel(root, p)
        out.units.append(
            MediaUnit(unit_id=session, layout="videos", session=session, video=rel, audio=rel, caption=caption)
        )


def _ego4d(root: Path, out: Discovery) -> None:
    imus = {p.stem: p for p in (root / "imu").glob("*.csv")}
    for p in sorted((root / "full_scale").iterdir()):
        if not (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
            continue
        session = safe_name(p.stem)
        rel = _rel(root, p)
        imu = None
        if p.stem in imus:
            imu = ImuSpec(
                path=_rel(root, imus.pop(p.stem)),
                time_column="canonical_timestamp_ms",
                fallback_time_column="component_timestamp_ms",
            )
        out.units.append(MediaUnit(unit_id=session, layout="ego4d", session=session, video=rel, audio=rel, imu=imu))
    for stem, p in sorted(imus.items()):
        out.rejects.append(InputReject(_rel(root, p), RejectReason.NO_VIDEO_STREAM, f"IMU without a video {stem}.mp4"))


def _chunks(layout: str, prefix: str, pairs: list[StillPair]) -> list[StillUnit]:
    return [
        StillUnit(
            f"{layout}-{safe_name(prefix)}-{i // STILLS_PER_UNIT:05d}", layout, tuple(pairs[i : i + STILLS_PER_UNIT])
        )
        for i in range(0, len(pairs), STILLS_PER_UNIT)
    ]


def _read_intrinsics(path: Path) -> dict | None:
    try:
        vals = [float(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return None
    if len(vals) < 9:
        return None
    return {"fx": vals[0], "fy": vals[4], "cx": vals[2], "cy": vals[5], "baseline_m": None}


def _sunrgbd(root: Path, out: Discovery) -> None:
    groups: dict[str, list[StillPair]] = {}
    for intr in sorted(root.rglob("intrinsics.txt")):
        scene = intr.parent
        images = sorted((scene / "image").glob("*.jpg"))
        depths = sorted((scene / "depth").glob("*.png"))
        rel_scene = _rel(root, scene)
        if not images or not depths:
            what = "image/*.jpg" if not images else "depth/*.png"
            out.rejects.append(InputReject(rel_scene, RejectReason.FILE_MISSING, f"scene has no {what}"))
            continue
        scene_txt = scene / "scene.txt"
        caption = scene_txt.read_text(errors="replace").strip() if scene_txt.is_file() else None
        group = "/".join(Path(rel_scene).parts[:-1]) or "root"
        groups.setdefault(group, []).append(
            StillPair(
                session=safe_name(rel_scene),
                image=_rel(root, images[0]),
                partner=_rel(root, depths[0]),
                kind="depth",
                caption=caption,
                intrinsics=_read_intrinsics(intr),
            )
        )
    for group, pairs in sorted(groups.items()):
        out.units.extend(_chunks("sunrgbd", group, pairs))


def _llvip(root: Path, out: Discovery) -> None:
    vis_root, ir_root = root / "visible", root / "infrared"
    vis = {_rel(vis_root, p) for p in vis_root.rglob("*.jpg")}
    ir = {_rel(ir_root, p) for p in ir_root.rglob("*.jpg")}
    for lonely in sorted(vis ^ ir):
        side = "visible" if lonely in vis else "infrared"
        out.rejects.append(
            InputReject(f"{side}/{lonely}", RejectReason.FILE_MISSING, "no partner image with this name")
        )
    by_split: dict[str, list[StillPair]] = {}
    for rel in sorted(vis & ir):
        split = Path(rel).parts[0] if len(Path(rel).parts) > 1 else "train"
        by_split.setdefault(split, []).append(
            StillPair(
                session=safe_name(f"llvip_{Path(rel).with_suffix('').as_posix()}"),
                image=f"visible/{rel}",
                partner=f"infrared/{rel}",
                kind="thermal",
                caption="a person at night",
                split="val" if split in ("test", "val") else "train",
            )
        )
    for split, pairs in sorted(by_split.items()):
        out.units.extend(_chunks("llvip", split, pairs))


# ------------------------------------------------------------------------------------------ (de)serialization


def unit_to_dict(unit: MediaUnit | StillUnit) -> dict:
    from dataclasses import asdict

    return {"kind": "stills" if isinstance(unit, StillUnit) else "media", **asdict(unit)}


def unit_from_dict(d: dict) -> MediaUnit | StillUnit:
    """Units cross process boundaries as JSON, never pickled."""
    d = dict(d)
    kind = d.pop("kind")
    if kind == "stills":
        return StillUnit(d["unit_id"], d["layout"], tuple(StillPair(**p) for p in d["pairs"]))

    def clock(c):
        return ClockSpec(**c)

    def frames(f):
        return None if f is None else FrameStreamSpec(**{**f, "clock": clock(f["clock"])})

    return MediaUnit(
        **{
            **d,
            "video_clock": clock(d["video_clock"]),
            "audio_clock": clock(d["audio_clock"]),
            "depth": frames(d["depth"]),
            "thermal": frames(d["thermal"]),
            "imu": None if d["imu"] is None else ImuSpec(**{**d["imu"], "clock": clock(d["imu"]["clock"])}),
            "labels": tuple(LabelSpan(**lb) for lb in d["labels"]),
        }
    )
