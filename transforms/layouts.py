"""Input layouts: detect which one RAW is, and enumerate its units of work.

A unit of work is what one worker processes start to finish: one recording session (captures), one
video (videos, ego4d) or a chunk of still pairs (sunrgbd, llvip). Units are plain JSON-able dataclasses
so that they cross process boundaries without pickled data, and so their descriptions fingerprint the
work for incremental rebuilds.

Nothing in RAW vanishes: discovery lists the whole tree once (``transforms/paths.walk``: no symlinked
folder followed, loops and unreadable folders reported, ``_*``/``.*`` folders and dot files skipped), and
every file is either an input of a unit or an input reject. Files that the detected layout has no use
for are ``unused_file`` rejects; the layout is still the one detected, so a few strays never stop a build.
Inside a ``captures`` session folder, files that the manifest does not name are such strays too (the
manifest is the session's whole description), except inside a declared frames folder, which is an input
as a whole. Which media FFmpeg can read is decided by FFmpeg: in ``videos`` and ``ego4d`` every file
(besides captions) becomes a unit, and one that FFmpeg cannot open is an ``unsupported_format`` reject.

Session keys are injective: names keep their (NFC-normalised) letters, non-ASCII ones included, and
inputs whose names would still coincide (``same.mp4`` beside ``same.mkv``, ``a b`` beside ``a_b``, or
names equal but for case) all get a short hash of their RAW-relative path appended. Two manifests
declaring one ``session_id`` are a ``duplicate_session`` reject of the later folder, naming both.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from schemas.errors import UserError
from schemas.manifest import MANIFEST_NAMES, LoadedManifest, ManifestError, load_manifest_streams
from schemas.reasons import RejectReason
from transforms.paths import Listing, PathRejected, check_file, check_files, join_rel, walk

LAYOUTS = ("captures", "videos", "ego4d", "sunrgbd", "llvip")
# Used only to recognise the videos layout and to name a failure to open: whether a file is media is
# FFmpeg's decision, in the unit (transforms/unit.py). The containers FFmpeg detects by content list no
# extension of their own in libavformat (MPEG-TS/PS, ASF, WAV, Ogg video), hence the explicit ones.
VIDEO_SUFFIXES = (
    ".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".ogv", ".flv", ".f4v", ".ts", ".mts", ".m2ts", ".mpg",
    ".mpeg", ".m2v", ".vob", ".3gp", ".3g2", ".wmv", ".asf", ".mxf", ".nut", ".y4m", ".dv", ".rm", ".rmvb",
    ".divx", ".mj2", ".h264", ".264", ".hevc", ".265", ".ivf", ".obu",
)  # fmt: skip
AUDIO_SUFFIXES = (".m4a", ".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".aac", ".wma", ".ac3", ".aiff", ".mka")
MEDIA_SUFFIXES = frozenset(VIDEO_SUFFIXES + AUDIO_SUFFIXES)
# Still images the image readers (transforms/images.py: header-checked PNG and JPEG) take; other image
# formats in an image folder are unsupported_format rejects.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png"})
STILLS_PER_UNIT = 500
# Tar member names are USTAR names of at most 100 bytes: KEY is the session, "_" and 9 digits, and the
# longest member extension is ".frame1.jpg"; a session name is kept well below what is left.
MAX_NAME_BYTES = 64
_HASH_CHARS = 8


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
class StreamError:
    """A side stream (audio, depth, thermal, imu) that the manifest declares but that cannot be used: an
    invalid field, or a path that leaves the session folder. Each window rejects that modality with it."""

    name: str
    reason: RejectReason
    source: str  # RAW-relative: the manifest, or the escaping path as joined to the session folder
    detail: str


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
    stream_errors: tuple[StreamError, ...] = ()

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
    # RAW-relative files and folders that a unit or a reject accounts for (besides unit inputs)
    claimed: set[str] = field(default_factory=set)


@dataclass
class RawTree:
    """RAW as discovery sees it when it is not a local folder (object storage: ``pipelines/raw_source.py``).

    ``name``: RAW as the user gave it, for messages (``s3://bucket/raw``). ``listing``: every file, listed
    once, as ``transforms.paths.walk`` would give it. ``files``: a local folder where ``fetch(rels)`` puts the
    few files discovery reads itself (manifests, captions, intrinsics), at their RAW-relative paths.
    """

    name: str
    listing: Listing
    files: Path
    fetch: Callable[[list[str]], None]


# ------------------------------------------------------------------------------------------ keys


def _short_hash(text: str, n: int = _HASH_CHARS) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def safe_name(text: str) -> str:
    """A session name from a file or folder name: letters (any script), digits, ``_`` and ``-``.

    No dots (WebDataset splits keys at the first dot), no path separators or control characters; NFC
    normalised, so that one name spelt in composed or decomposed Unicode (macOS) gives one key. A name
    longer than ``MAX_NAME_BYTES`` in UTF-8 is cut and gets a hash of the whole text, so it stays distinct.
    Not injective by itself (``a b`` and ``a_b`` agree): :func:`unique_keys` makes keys of a set distinct.
    """
    text = unicodedata.normalize("NFC", text)
    name = re.sub(r"[^\w-]+", "_", text).strip("_") or "x"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        cut = name
        while len(cut.encode("utf-8")) > MAX_NAME_BYTES - _HASH_CHARS - 1:
            cut = cut[:-1]
        name = f"{cut.rstrip('_-')}-{_short_hash(text)}"
    return name


def unique_keys(named: dict[str, str]) -> dict[str, str]:
    """Distinct, deterministic keys for inputs: ``{RAW-relative path: display name}`` -> ``{path: key}``.

    Each key is ``safe_name(name)``; inputs whose keys coincide, ignoring case (case-insensitive file
    systems and object-store mirrors), all get ``-`` and a short hash of their path, so adding or removing
    one of them never changes which key another input's samples carry except within that group.
    """
    base = {rel: safe_name(name) for rel, name in named.items()}
    groups: dict[str, list[str]] = defaultdict(list)
    for rel, key in base.items():
        groups[key.casefold()].append(rel)
    keys = {rel: (f"{base[rel]}-{_short_hash(rel)}" if len(groups[base[rel].casefold()]) > 1 else base[rel])
            for rel in named}  # fmt: skip
    n = _HASH_CHARS
    while len({k.casefold() for k in keys.values()}) < len(keys):  # a hashed key met a literal name
        n += 4
        seen: dict[str, list[str]] = defaultdict(list)
        for rel, k in keys.items():
            seen[k.casefold()].append(rel)
        for rels in seen.values():
            if len(rels) > 1:
                for rel in rels:
                    keys[rel] = f"{base[rel]}-{_short_hash(rel, n)}"
    return keys


def _suffix(rel: str) -> str:
    return PurePosixPath(rel).suffix.lower()


def _stem(rel: str) -> str:
    return PurePosixPath(rel).stem


def _parts(rel: str) -> tuple[str, ...]:
    return PurePosixPath(rel).parts


# ------------------------------------------------------------------------------------------ detection


def _signatures(listing: Listing) -> dict[str, set[str]]:
    """For each layout whose signature RAW shows, the top-level names that signature owns."""
    files = listing.files
    top_dirs = {_parts(f)[0] for f in files if len(_parts(f)) > 1} | {
        _parts(p.source)[0] for p in listing.problems if p.source not in (".", "")
    }
    found: dict[str, set[str]] = {}
    if {"visible", "infrared"} <= top_dirs:
        found["llvip"] = {"visible", "infrared"}
    if {"full_scale", "imu"} <= top_dirs:
        found["ego4d"] = {"full_scale", "imu"}
    sessions = {_parts(f)[0] for f in files if len(_parts(f)) == 2 and _parts(f)[1] in MANIFEST_NAMES}
    if sessions:
        found["captures"] = sessions
    media = {f for f in files if len(_parts(f)) == 1 and _suffix(f) in MEDIA_SUFFIXES}
    if media:
        found["videos"] = media
    scenes = {_parts(f)[0] for f in files if PurePosixPath(f).name == "intrinsics.txt"}
    if scenes:
        found["sunrgbd"] = scenes
    return found


_PRECEDENCE = ("llvip", "ego4d", "captures", "videos", "sunrgbd")


def _detect(root: Path | str, listing: Listing) -> str:
    if not listing.files and not listing.problems:
        raise LayoutError(f"{root}: input folder is empty")
    if [p.source for p in listing.problems] == ["."] and not listing.files:
        raise LayoutError(f"{root}: {listing.problems[0].detail}")
    found = _signatures(listing)
    for layout in _PRECEDENCE:
        if layout in found:
            return layout
    first = listing.files[0] if listing.files else listing.problems[0].source
    raise LayoutError(f"{root}: no known layout (expected {', '.join(LAYOUTS)}); first entry: {root}/{first}")


def detect_layout(root: Path) -> str:
    """The layout of RAW (first match of llvip, ego4d, captures, videos, sunrgbd), or a LayoutError.

    Entries that do not fit the detected layout do not make detection fail: discovery reports them as
    rejects. Unknown content, where no layout matches at all, is a LayoutError naming a path.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: input folder does not exist")
    return _detect(root, walk(root))


# ------------------------------------------------------------------------------------------ enumeration


def discover(root: Path, layout: str = "auto", tree: RawTree | None = None) -> Discovery:
    """The units of work of RAW and the input rejects of everything no unit takes.

    ``tree``: RAW elsewhere than the local folder ``root`` (object storage, ``pipelines/raw_source.py``): its
    listing replaces the walk, and ``root`` is ``tree.files``, where the files discovery reads are fetched.
    The result is the one a local folder of the same files gives.

    Raises:
        LayoutError: RAW does not exist, is empty, matches no layout, or ``layout`` is unknown.
    """
    root = Path(root)
    if layout != "auto" and layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    if tree is None and not root.is_dir():
        raise LayoutError(f"{root}: input folder does not exist")
    listing = walk(root) if tree is None else tree.listing
    detected = layout == "auto"
    if detected:
        layout = _detect(root if tree is None else tree.name, listing)
    out = Discovery(layout, detected)
    if tree is not None:
        tree.fetch(_read_by_discovery(layout, listing))
    {
        "captures": _captures,
        "videos": _videos,
        "ego4d": _ego4d,
        "sunrgbd": _sunrgbd,
        "llvip": _llvip,
    }[layout](root, listing, out)
    _account(root, listing, out, checked=tree is None)
    out.units.sort(key=lambda u: u.unit_id)
    out.rejects.sort(key=lambda r: (r.source, r.reason))
    ids = [u.unit_id for u in out.units]
    if len({i.casefold() for i in ids}) != len(ids):  # keys are made unique above: this is a bug, not input
        raise RuntimeError(f"two units share an id: {sorted(ids)}")
    return out


def _read_by_discovery(layout: str, listing: Listing) -> list[str]:
    """The files that discovery of ``layout`` reads itself (the rest only the units read)."""

    def wanted(rel: str) -> bool:
        parts = _parts(rel)
        if layout == "captures":
            return len(parts) == 2 and parts[1] in MANIFEST_NAMES
        if layout == "videos":
            return len(parts) == 1 and _suffix(rel) == ".txt"
        if layout == "sunrgbd":
            return parts[-1] in ("intrinsics.txt", "scene.txt")
        return False

    return [rel for rel in listing.files if wanted(rel)]


def _account(root: Path, listing: Listing, out: Discovery, checked: bool = True) -> None:
    """Every listed file and listing problem that no unit or reject covers becomes a reject of its own.

    ``checked``: whether each such file is checked (``check_files``: symlinks, FIFOs) first; an object in a
    store is always a regular file, so a listing of one is not."""
    covered = set(out.claimed) | {r.source for r in out.rejects}
    for u in out.units:
        covered.update(u.input_paths())

    def is_covered(rel: str) -> bool:  # the path itself or a folder above it (linear in the depth)
        parts = rel.split("/")
        return any("/".join(parts[:i]) in covered for i in range(1, len(parts) + 1))

    for problem in listing.problems:
        if not is_covered(problem.source):
            out.rejects.append(InputReject(problem.source, problem.reason, problem.detail))
    unused = [rel for rel in listing.files if not is_covered(rel)]
    for rel, res in zip(unused, check_files(root, unused) if checked else unused, strict=True):
        if isinstance(res, PathRejected):
            out.rejects.append(InputReject(rel, res.reason, res.detail))
            continue
        out.rejects.append(InputReject(rel, RejectReason.UNUSED_FILE, f"not an input of the {out.layout} layout"))


def _clock(c) -> ClockSpec:
    return ClockSpec(c.offset_s, c.drift_ppm)


def _captures(root: Path, listing: Listing, out: Discovery) -> None:
    by_dir: dict[str, list[str]] = defaultdict(list)
    for f in listing.files:
        parts = _parts(f)
        if len(parts) > 1:
            by_dir[parts[0]].append(f)
    folders = sorted(set(by_dir) | {_parts(p.source)[0] for p in listing.problems if "/" not in p.source})
    problems = {p.source: p for p in listing.problems}
    owner: dict[str, str] = {}  # session id (casefolded) -> manifest that declared it first
    for d in folders:
        if d in problems:  # the session folder itself cannot be listed (permission, loop)
            p = problems[d]
            out.rejects.append(InputReject(d, p.reason, p.detail, session=safe_name(d)))
            out.claimed.add(d)
            continue
        mpath = next((f"{d}/{n}" for n in MANIFEST_NAMES if f"{d}/{n}" in by_dir[d]), None)
        if mpath is None:
            out.rejects.append(InputReject(d, RejectReason.MANIFEST_INVALID, "no manifest.json/yaml"))
            out.claimed.add(d)
            continue
        session = safe_name(d)
        try:
            loaded = load_manifest_streams(check_file(root, mpath).path, name=mpath)
        except PathRejected as exc:
            out.rejects.append(InputReject(mpath, exc.reason, exc.detail, session=session))
            out.claimed.add(d)
            continue
        except ManifestError as exc:
            escape = "escapes the session folder" in str(exc) or "must be relative" in str(exc)
            reason = RejectReason.PATH_ESCAPES_ROOT if escape else RejectReason.MANIFEST_INVALID
            out.rejects.append(InputReject(mpath, reason, str(exc).replace(str(root) + "/", ""), session=session))
            out.claimed.add(d)
            continue
        m = loaded.manifest
        if m.session_id.casefold() in owner:  # ids equal but for case: one key on case-insensitive storage
            first = owner[m.session_id.casefold()]
            detail = f"session_id {m.session_id!r} is already declared by {first}; this session is skipped"
            out.rejects.append(InputReject(mpath, RejectReason.DUPLICATE_SESSION, detail, session=m.session_id))
            out.claimed.add(d)
            continue
        owner[m.session_id.casefold()] = mpath
        out.units.append(_captures_unit(d, loaded, mpath))
        out.claimed.add(mpath)
        for problem in loaded.problems:  # a bad stream's files are accounted for by its modality rejects
            out.claimed.update(join_rel(d, rel) for rel in problem.paths)


def _frames(d: str, s) -> FrameStreamSpec:
    return FrameStreamSpec(
        frames_dir=join_rel(d, s.frames),
        timestamps_csv=join_rel(d, s.timestamps.path),
        file_column=s.timestamps.file_column,
        time_column=s.timestamps.time_column,
        time_unit_s=s.timestamps.unit.seconds,
        clock=_clock(s.clock),
        units=s.units,
        intrinsics=s.intrinsics.model_dump() if s.intrinsics else None,
    )


def _stream_error(d: str, mpath: str, problem) -> StreamError:
    if problem.escaping_path is not None:
        source, reason = join_rel(d, problem.escaping_path), RejectReason.PATH_ESCAPES_ROOT
    else:
        source, reason = mpath, RejectReason.MANIFEST_INVALID
    return StreamError(problem.stream, reason, source, str(problem.error))


def _captures_unit(d: str, loaded: LoadedManifest, mpath: str) -> MediaUnit:
    # Manifest paths are RAW-relative from here on; where they lead (symlinks) is checked where each is
    # opened (transforms/paths.check_file), so that one bad side file costs only its modality. A side
    # stream the manifest declares invalidly is left out and carried as a StreamError, likewise.
    m = loaded.manifest
    st = m.streams
    video = join_rel(d, st.video.path) if st.video else None
    audio = None
    if st.audio is not None:
        audio = video if st.audio.track == "video" else join_rel(d, st.audio.path)
    imu = None
    if st.imu is not None:
        imu = ImuSpec(
            path=join_rel(d, st.imu.path),
            time_column=st.imu.timestamps.column,
            time_unit_s=st.imu.timestamps.unit.seconds,
            clock=_clock(st.imu.clock),
            accel_units=st.imu.units.accel,
            gyro_units=st.imu.units.gyro,
        )
    session = m.session_id  # the schema allows only key-safe ids
    return MediaUnit(
        unit_id=session,
        layout="captures",
        session=session,
        video=video,
        video_clock=_clock(st.video.clock) if st.video else ClockSpec(),
        audio=audio,
        audio_clock=_clock(st.audio.clock) if st.audio else ClockSpec(),
        depth=_frames(d, st.depth) if st.depth else None,
        thermal=_frames(d, st.thermal) if st.thermal else None,
        imu=imu,
        labels=tuple(LabelSpan(lb.start_s, lb.end_s, lb.label, lb.caption) for lb in m.labels),
        stream_errors=tuple(_stream_error(d, mpath, p) for p in loaded.problems),
    )


def _read_text(root: Path, rel: str, out: Discovery) -> str | None:
    """A small side file that discovery itself reads (caption, scene name), checked like any input."""
    try:
        return check_file(root, rel).path.read_text(encoding="utf-8", errors="replace").strip()
    except PathRejected as exc:
        out.rejects.append(InputReject(rel, exc.reason, exc.detail))
    except OSError as exc:
        out.rejects.append(InputReject(rel, RejectReason.PERMISSION_DENIED, f"cannot be read: {exc.strerror}"))
    return None


def _media_units(root: Path, layout: str, media: list[str], out: Discovery, captions: dict[str, str]) -> dict:
    """One unit per media file; returns ``{path: session key}``."""
    keys = unique_keys({rel: _stem(rel) for rel in media})
    for rel in media:
        caption = None
        if rel in captions:
            caption = _read_text(root, captions[rel], out)
            out.claimed.add(captions[rel])
        out.units.append(
            MediaUnit(unit_id=keys[rel], layout=layout, session=keys[rel], video=rel, audio=rel, caption=caption)
        )
    return keys


def _videos(root: Path, listing: Listing, out: Discovery) -> None:
    # Every top-level file but a caption is offered to FFmpeg (in the unit); a NAME.txt beside a media
    # file NAME.* is its caption. Files in subfolders are not inputs of this layout.
    top = [f for f in listing.files if "/" not in f]
    candidates = [f for f in top if _suffix(f) != ".txt"]
    stems = defaultdict(list)
    for f in candidates:
        stems[_stem(f)].append(f)
    captions = {m: t for t in top if _suffix(t) == ".txt" for m in stems.get(_stem(t), [])}
    _media_units(root, "videos", candidates, out, captions)


def _ego4d(root: Path, listing: Listing, out: Discovery) -> None:
    videos = [f for f in listing.files if len(_parts(f)) == 2 and _parts(f)[0] == "full_scale"]
    imus = {_stem(f): f for f in listing.files if _parts(f)[:1] == ("imu",) and len(_parts(f)) == 2
            and _suffix(f) == ".csv"}  # fmt: skip
    _media_units(root, "ego4d", videos, out, {})
    paired = set()
    for i, u in enumerate(out.units):
        stem = _stem(u.video)
        if u.layout == "ego4d" and stem in imus:
            # two videos of one uid (uid.mp4, uid.ogv) share its IMU file
            imu = ImuSpec(path=imus[stem], time_column="canonical_timestamp_ms",
                          fallback_time_column="component_timestamp_ms")  # fmt: skip
            out.units[i] = replace(u, imu=imu)
            paired.add(stem)
    for stem, f in sorted(imus.items()):
        if stem not in paired:
            out.rejects.append(InputReject(f, RejectReason.NO_VIDEO_STREAM, f"IMU without a video full_scale/{stem}.*"))


def _chunks(layout: str, groups: dict[str, list[StillPair]]) -> list[StillUnit]:
    names = unique_keys({g: g or "root" for g in groups})
    return [
        StillUnit(f"{layout}-{names[g]}-{i // STILLS_PER_UNIT:05d}", layout, tuple(pairs[i : i + STILLS_PER_UNIT]))
        for g, pairs in sorted(groups.items())
        for i in range(0, len(pairs), STILLS_PER_UNIT)
    ]


def _read_intrinsics(root: Path, rel: str, out: Discovery) -> dict | None:
    text = _read_text(root, rel, out)
    try:
        vals = [float(x) for x in (text or "").split()]
    except ValueError:
        return None
    if len(vals) < 9:
        return None
    return {"fx": vals[0], "fy": vals[4], "cx": vals[2], "cy": vals[5], "baseline_m": None}


def _children(by_folder: dict[str, list[str]], folder: str, suffixes) -> list[str]:
    """Files directly in RAW-relative ``folder`` whose suffix (any case) is one of ``suffixes``, sorted."""
    return sorted(f for f in by_folder.get(folder, ()) if _suffix(f) in suffixes)


def _sunrgbd(root: Path, listing: Listing, out: Discovery) -> None:
    files = set(listing.files)
    by_folder: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by_folder[str(PurePosixPath(f).parent)].append(f)
    scenes = sorted({str(PurePosixPath(f).parent) for f in files if PurePosixPath(f).name == "intrinsics.txt"})
    keys = unique_keys({s: s for s in scenes})
    groups: dict[str, list[StillPair]] = {}
    for scene in scenes:
        prefix = "" if scene == "." else f"{scene}/"
        rel_scene = scene
        images = _children(by_folder, f"{prefix}image", IMAGE_SUFFIXES)
        depths = _children(by_folder, f"{prefix}depth", {".png"})
        intr = f"{prefix}intrinsics.txt"
        out.claimed.add(intr)
        if not images or not depths:
            what = "image/*.jpg" if not images else "depth/*.png"
            out.rejects.append(InputReject(rel_scene, RejectReason.FILE_MISSING, f"scene has no {what}"))
            continue
        caption = None
        if f"{prefix}scene.txt" in files:
            caption = _read_text(root, f"{prefix}scene.txt", out)
            out.claimed.add(f"{prefix}scene.txt")
        group = "/".join(_parts(rel_scene)[:-1])
        groups.setdefault(group, []).append(
            StillPair(
                session=keys[scene],
                image=images[0],
                partner=depths[0],
                kind="depth",
                caption=caption,
                intrinsics=_read_intrinsics(root, intr, out),
            )
        )
    out.units.extend(_chunks("sunrgbd", groups))


def _llvip(root: Path, listing: Listing, out: Discovery) -> None:
    # Pairs share their path below visible/ and infrared/ up to the suffix (x.jpg with x.JPG or x.png).
    sides: dict[str, dict[str, list[str]]] = {"visible": defaultdict(list), "infrared": defaultdict(list)}
    for f in listing.files:
        parts = _parts(f)
        if parts[0] in sides and len(parts) > 1:
            if _suffix(f) in IMAGE_SUFFIXES:
                sides[parts[0]][str(PurePosixPath(*parts[1:]).with_suffix(""))].append(f)
            else:
                out.rejects.append(InputReject(f, RejectReason.UNSUPPORTED_FORMAT, "not a JPEG or PNG image"))
    vis, ir = sides["visible"], sides["infrared"]
    pairs: dict[str, tuple[str, str]] = {}
    for name in sorted(set(vis) | set(ir)):
        a, b = sorted(vis.get(name, [])), sorted(ir.get(name, []))
        if len(a) == 1 and len(b) == 1:
            pairs[name] = (a[0], b[0])
            continue
        # the same name on both sides (and suffix) pairs; what is left has no unambiguous partner
        same = {PurePosixPath(x).name for x in a} & {PurePosixPath(y).name for y in b}
        for n in sorted(same):
            left, right = (f"{PurePosixPath(x[0]).parent}/{n}" for x in (a, b))
            pairs[f"{name}{PurePosixPath(n).suffix}"] = (left, right)
        for lonely in [x for x in a + b if PurePosixPath(x).name not in same]:
            detail = "no partner image with this name" if not (a and b) else "several partner candidates, none chosen"
            out.rejects.append(InputReject(lonely, RejectReason.FILE_MISSING, detail))
    keys = unique_keys({name: f"llvip_{name}" for name in pairs})
    by_split: dict[str, list[StillPair]] = {}
    for name, (image, partner) in sorted(pairs.items()):
        split = _parts(name)[0] if len(_parts(name)) > 1 else "train"
        by_split.setdefault(split, []).append(
            StillPair(
                session=keys[name],
                image=image,
                partner=partner,
                kind="thermal",
                caption="a person at night",
                split="val" if split in ("test", "val") else "train",
            )
        )
    out.units.extend(_chunks("llvip", by_split))


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
            "stream_errors": tuple(
                StreamError(**{**e, "reason": RejectReason(e["reason"])}) for e in d.get("stream_errors", ())
            ),
        }
    )
