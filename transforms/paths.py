"""Containment and file types: the one place that decides whether the build may open a path.

Every file a build opens is named by a path relative to RAW: a manifest field joined to its session
folder, a cell of a timestamps CSV joined to its declared folder, a top-level input of a layout. Before
anything opens it, :func:`check_file` (or :func:`check_dir`) resolves the path, symlinks included, and
requires that

* the fully resolved target lies inside RAW (itself resolved): otherwise ``path_escapes_root``. The
  decision is on the final target: a symlink chain that leaves RAW and comes back ends inside RAW and
  is accepted, because the bytes read are RAW's; the resolved path is what the caller opens, so an
  intermediate link that is later pointed elsewhere cannot redirect the read;
* resolution ends (``symlink_loop`` for ``ELOOP``) and every folder on the way may be searched
  (``permission_denied``);
* the target is of the expected type (``not_a_regular_file`` for a FIFO, socket, device, or a folder
  where a file is expected): a FIFO is never opened, since opening one blocks until a writer appears;
* the file can be opened for reading (``permission_denied``). It is opened with ``O_NONBLOCK`` and
  checked again with ``fstat``, so a FIFO swapped in after the first check cannot hang the build.

Failures raise :class:`PathRejected`, which carries the reject reason and the RAW-relative path to
name in ``rejects.parquet``. :func:`walk` lists a folder tree without following symlinked folders and
without raising on loops or unreadable folders; the problems it meets come back as ``PathRejected``
values next to the files it found.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from schemas.reasons import RejectReason


class PathRejected(Exception):
    """A path the build must not open; ``source`` is RAW-relative (or as given, when it is not under RAW)."""

    def __init__(self, source: str, reason: RejectReason, detail: str):
        self.source, self.reason, self.detail = source, reason, detail
        super().__init__(f"{source}: {detail}")


@dataclass(frozen=True)
class CheckedPath:
    """A path that passed the checks: ``rel`` as named (RAW-relative), ``path`` the resolved file to open.

    ``path`` is RAW as the caller gave it joined with the target's place inside the resolved RAW, so
    messages that print it stay under RAW, and no symlink below RAW is followed again when it is opened.
    """

    rel: str
    path: Path
    size: int


def join_rel(base: str, rel: str) -> str:
    """``rel`` (a manifest field or CSV cell) below the RAW-relative folder ``base``, lexically normalised.

    ``..`` components are folded (``a/b/../c`` -> ``a/c``); a path that climbs above RAW keeps its leading
    ``..`` and an absolute one stays absolute, so that the check names it as written and rejects it.
    """
    rel = rel.replace("\\", "/")
    joined = rel if PurePosixPath(rel).is_absolute() else f"{base}/{rel}" if base else rel
    return os.path.normpath(joined).replace(os.sep, "/") if joined else joined


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "of an unknown file type"


def _os_reject(rel: str, exc: OSError) -> PathRejected:
    if exc.errno == errno.ELOOP:
        return PathRejected(rel, RejectReason.SYMLINK_LOOP, "symlinks loop (too many levels of symbolic links)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PathRejected(rel, RejectReason.PERMISSION_DENIED, f"permission denied ({exc.strerror})")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathRejected(rel, RejectReason.FILE_MISSING, "not found")
    if exc.errno == errno.ENAMETOOLONG:  # a CSV cell or manifest field no file can be named by
        return PathRejected(rel, RejectReason.FILE_MISSING, "not found: the name is too long for a file")
    # EIO and the like: the read failed, not the file; io_error is transient, so the next build tries again
    return PathRejected(rel, RejectReason.IO_ERROR, f"cannot be read: {exc.strerror or exc}")


def _resolve(root: Path, rel: str) -> tuple[Path, Path]:
    """(resolved RAW, resolved target), raising PathRejected when the target leaves RAW or loops."""
    if not rel or rel in (".",):
        raise PathRejected(rel or ".", RejectReason.FILE_MISSING, "empty path")
    if "\0" in rel:  # os functions raise ValueError on it; a CSV cell may hold one
        raise PathRejected(rel, RejectReason.FILE_MISSING, "not found: a NUL character in the name")
    real_root = Path(os.path.realpath(root))
    # Non-strict first: it resolves as far as it can, so a dangling link to a place outside RAW is
    # still an escape, and only then is a loop or a missing target reported.
    target = Path(os.path.realpath(Path(root) / rel))
    if target != real_root and not target.is_relative_to(real_root):
        where = "an absolute path" if PurePosixPath(rel).is_absolute() else "resolves outside the input folder"
        raise PathRejected(rel, RejectReason.PATH_ESCAPES_ROOT, f"{where} (after symlinks: {target})")
    try:
        strict = Path(os.path.realpath(Path(root) / rel, strict=True))
    except OSError as exc:
        raise _os_reject(rel, exc) from None
    if strict != target:  # cannot differ unless the tree changed between the two calls
        raise PathRejected(rel, RejectReason.PATH_ESCAPES_ROOT, "changed while it was being resolved")
    return real_root, target


def check_file(root: Path | str, rel: str) -> CheckedPath:
    """Check a RAW-relative path before it is opened as a file.

    Args:
        root: the RAW folder (any spelling; it is resolved here).
        rel: the path relative to RAW, as the layout or a table names it (``..`` and absolute values are
            judged by where they lead).
    Returns:
        the file to open, inside RAW, and its size in bytes.
    Raises:
        PathRejected: ``path_escapes_root``, ``symlink_loop``, ``permission_denied``,
        ``not_a_regular_file``, ``file_missing`` (also for a name no file can have: a NUL, too long) or
        ``io_error`` (any other OS error; transient).
    """
    return _check(root, rel, stat.S_ISREG, "a regular file", _probe_file)


def check_dir(root: Path | str, rel: str) -> CheckedPath:
    """Like :func:`check_file` for a folder the build lists (a declared frames folder): it must be a
    searchable, readable folder inside RAW. Raises PathRejected (``not_a_regular_file`` when it is a file)."""
    return _check(root, rel, stat.S_ISDIR, "a folder", _probe_dir)


def _check(
    root: Path | str, rel: str, is_type: Callable[[int], bool], expected: str, probe: Callable[[str, Path], int]
) -> CheckedPath:
    """The steps both checks take: resolve inside RAW (escape, loop), stat, require the type, then ``probe``
    the resolved target for readability; ``probe`` returns the size to record."""
    root = Path(root)
    real_root, target = _resolve(root, rel)
    try:
        st = os.stat(target)
    except OSError as exc:
        raise _os_reject(rel, exc) from None
    _require_type(rel, st.st_mode, is_type, expected)
    size = probe(rel, target)
    return CheckedPath(rel, root / target.relative_to(real_root), size)


def check_files(root: Path | str, rels: list[str]) -> list[CheckedPath | PathRejected]:
    """:func:`check_file` for many paths, each result (or its rejection) in ``rels``' order.

    The same decisions at a fraction of the system calls: each distinct parent folder is resolved once
    (:func:`check_dir`'s resolution, memoised), and a name in it that ``lstat`` shows is not a symlink is a
    file of that resolved folder, so inside RAW, without resolving its path again (``os.path.realpath`` costs
    an ``lstat`` per component, twice: ~15 calls per frame of a frame stream). Symlinks, ``.``/``..`` names,
    and names whose folder fails go through :func:`check_file` itself, which then says why. The file is
    still opened without blocking and checked with ``fstat`` (a FIFO swapped in is never opened).
    """
    root = Path(root)
    real_root = Path(os.path.realpath(root))
    folders: dict[str, Path | None] = {}  # RAW-relative folder -> resolved folder (None: check each file)
    out: list[CheckedPath | PathRejected] = []
    for rel in rels:
        parent, name = os.path.split(rel)
        folder = folders.get(parent, False)
        if folder is False:
            try:
                folder = _resolve(root, parent)[1] if parent else real_root
            except PathRejected:
                folder = None
            folders[parent] = folder
        try:
            if folder is None or name in ("", ".", "..") or "\0" in rel:
                out.append(check_file(root, rel))
                continue
            target = folder / name
            try:
                st = os.lstat(target)
            except OSError as exc:
                raise _os_reject(rel, exc) from None
            if stat.S_ISLNK(st.st_mode):
                out.append(check_file(root, rel))
                continue
            _require_type(rel, st.st_mode, stat.S_ISREG, "a regular file")
            size = _probe_file(rel, target)
            out.append(CheckedPath(rel, root / target.relative_to(real_root), size))
        except PathRejected as exc:
            out.append(exc)
    return out


def _require_type(rel: str, mode: int, is_type: Callable[[int], bool], expected: str) -> None:
    if not is_type(mode):
        raise PathRejected(rel, RejectReason.NOT_A_REGULAR_FILE, f"is {_kind(mode)}, not {expected}")


def _probe_file(rel: str, target: Path) -> int:
    """Open without blocking and check the type again on the open file (a FIFO swapped in since the stat
    must not hang the build); the file's size."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise _os_reject(rel, exc) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    _require_type(rel, st.st_mode, stat.S_ISREG, "a regular file")
    return st.st_size


def _probe_dir(rel: str, target: Path) -> int:
    """List the folder's first entry, so a folder that cannot be read is rejected here; size 0."""
    try:
        with os.scandir(target) as it:
            next(it, None)
    except OSError as exc:
        raise _os_reject(rel, exc) from None
    return 0


def is_under(rel: str, folder: str) -> bool:
    """Whether RAW-relative ``rel`` is ``folder`` or lies below it."""
    return rel == folder or rel.startswith(folder.rstrip("/") + "/")


# ------------------------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class Entry:
    """One non-folder entry of a tree: a regular file, a symlink (not followed), a FIFO, a device."""

    rel: str
    size: int | None  # the target's size for a symlink (its own where the target is gone); None: unreadable
    mtime_ns: int | None


@dataclass
class Listing:
    entries: list[Entry] = field(default_factory=list)
    problems: list[PathRejected] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [e.rel for e in self.entries]


def _hidden(name: str, is_dir: bool) -> bool:
    # `_truth/`, `.git/`: folders of their own, never inputs; dot files (`.DS_Store`) are system litter.
    return name.startswith(".") or (is_dir and name.startswith("_"))


def walk(root: Path | str, rel: str = "", *, skip_hidden: bool = True) -> Listing:
    """Every entry below RAW-relative folder ``rel`` (default: RAW itself), sorted, without raising.

    Symlinked folders are not descended into (their targets are reached, when inside RAW, through their
    own place), which also makes loops harmless; a symlinked folder that loops or points outside RAW is
    a problem naming it. A folder that cannot be listed is a ``permission_denied`` problem naming it.
    Hidden folders (``.*``, ``_*``) and dot files are skipped when ``skip_hidden``.
    """
    root = Path(root)
    out = Listing()

    def visit(folder: str) -> None:
        try:
            with os.scandir(root / folder if folder else root) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.problems.append(_os_reject(folder or ".", exc))
            return
        for e in items:
            sub = f"{folder}/{e.name}" if folder else e.name
            try:
                is_dir = e.is_dir(follow_symlinks=False)
                link = e.is_symlink()
            except OSError as exc:
                out.problems.append(_os_reject(sub, exc))
                continue
            if skip_hidden and _hidden(e.name, is_dir or (link and _points_to_dir(e))):
                continue
            if is_dir:
                visit(sub)
                continue
            if link and _points_to_dir(e):
                try:
                    _resolve(root, sub)
                except PathRejected as exc:
                    out.problems.append(exc)
                continue
            try:  # a symlinked file's target's size and time: those change when its content does
                st = e.stat(follow_symlinks=True)
            except OSError:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    st = None
            out.entries.append(Entry(sub, st.st_size if st else None, st.st_mtime_ns if st else None))

    start = rel.strip("/")
    if start:
        try:
            check_dir(root, start)
        except PathRejected as exc:
            out.problems.append(exc)
            return out
    visit(start)
    return out


def _points_to_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir(follow_symlinks=True)
    except OSError:
        return False
