"""The storage seam: the one module that writes dataset files durably and reads WebDataset tars back.

Two jobs live here today, each written once:

- **Atomic writes** (SPEC §4: "a shard or the index is never visible half-written"). A file is written to
  a temporary name beside its final one, flushed and fsynced, renamed over the final name (``rename(2)``
  is atomic on POSIX), and the folder is fsynced so the rename itself survives a power cut. Folders are
  built under a temporary name and swapped in the same way (``replace_dir``). A failure midway leaves the
  old file (or none), never a partial one, and removes the temporary.
- **Tar reading.** ``TarReader`` scans a WebDataset tar's headers (not its data) into members
  (``KEY.suffix`` -> offset, size) and reads members by offset. The shard reader of training, the
  validator's shard table and the report's gallery all read through it.

No other module calls ``os.replace``, ``os.link`` or ``open(..., "wb")`` on a dataset (STYLE §12); the
synthetic-capture generator (``bindset/synth``) writes inputs, not datasets, and keeps its own writes.

Issue 17 ("Build at archive scale (2)") grows this module into the fsspec seam (local, ``s3://``,
``gs://`` alike: list / open-range / write-once / commit, after datatrove's ``DataFolder``); the functions
here are the local-filesystem half of that seam and keep their signatures.

Imports: stdlib only at module level (pyarrow lazily), because the training loop imports this on machines
that have only torch, numpy and pyarrow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

#: Parquet settings of every table bindset writes: zstd, dictionaries and statistics (readers prune on them).
PARQUET_OPTS = dict(compression="zstd", use_dictionary=True, write_statistics=True)

# ------------------------------------------------------------------------------------------- durability


def fsync_file(path: Path | str) -> None:
    """Flush a closed file's bytes to disk (for files written by a library that takes a path)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: fsync the folder itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(path: Path | str) -> IO[bytes]:
    """Open a new file for writing inside a staging folder; close it with ``close_synced``.

    For streams written piece by piece (tar parts); the folder is committed as a whole with ``replace_dir``.
    """
    return open(path, "wb")  # noqa: SIM115 - the caller closes it with close_synced


def reopen_at(path: Path | str, offset: int) -> IO[bytes]:
    """Open a file written with ``create`` again, cut back to ``offset`` bytes, positioned there.

    For a staging folder's tar part whose last samples are withdrawn (a decoder died inside an input).
    """
    fh = open(path, "r+b")  # noqa: SIM115 - the caller closes it with close_synced
    fh.truncate(offset)
    fh.seek(offset)
    return fh


def close_synced(fh: IO[bytes]) -> None:
    """Flush, fsync and close a file opened with ``create``."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


def write_synced(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it; not atomic on its own: for files inside a staging folder."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_parquet(table: pa.Table, path: Path | str) -> None:
    """Write a Parquet file with ``PARQUET_OPTS`` and fsync it; for files inside a staging folder."""
    import pyarrow.parquet as pq

    pq.write_table(table, path, **PARQUET_OPTS)
    fsync_file(path)


# ------------------------------------------------------------------------------------------ atomic writes


def _tmp_name(path: Path) -> Path:
    # unique, so two writers of the same file never write into one temporary; hidden, so globs skip it
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_with(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Have ``write(tmp)`` write the file at a temporary path, then fsync it and rename it to ``path``.

    For libraries that write to a path themselves (Parquet, safetensors, FAISS). Readers of ``path`` see
    the old file or the new one, never a partial one. Any exception from ``write`` (or the fsync) removes
    the temporary and propagates; ``path`` is then untouched. The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (tmp + fsync + rename + fsync of the folder)."""
    return atomic_write_with(path, lambda tmp: write_synced(tmp, data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    """``atomic_write_bytes`` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any, *, indent: int | None = 2, **dumps: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, no NaN, trailing newline) atomically.

    ``dumps`` passes further ``json.dumps`` arguments (``default=``). Raises ``ValueError`` for NaN or
    infinite floats (``allow_nan=False``: strict JSON readers refuse them) and ``TypeError`` for values
    JSON cannot hold, before anything is written.
    """
    opts = {"sort_keys": True, "allow_nan": False, **dumps}
    text = json.dumps(obj, indent=indent, **opts) + "\n"
    return atomic_write_text(path, text)


def atomic_write_parquet(path: Path | str, table: pa.Table) -> Path:
    """Write a Parquet table (``PARQUET_OPTS``) atomically."""
    import pyarrow.parquet as pq

    return atomic_write_with(path, lambda tmp: pq.write_table(table, tmp, **PARQUET_OPTS))


# ---------------------------------------------------------------------------------------------- folders


def staging_dir(final: Path | str) -> Path:
    """A fresh, empty hidden folder beside ``final`` to build its replacement in (see ``replace_dir``)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path | str, final: Path | str) -> Path:
    """Put the finished folder ``tmp`` at ``final``, replacing an older one; readers see old or new, never a mix.

    The files inside ``tmp`` must already be fsynced (``write_synced``, ``close_synced``, ``fsync_tree``).
    """
    tmp, final = Path(tmp), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_dir(tmp)
    if final.exists():
        # rename(2) cannot replace a non-empty folder: move the old one aside first, then delete it
        trash = final.with_name(f".{final.name}.old.{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def commit_new_dir(tmp: Path | str, final: Path | str) -> bool:
    """Rename the finished folder ``tmp`` to ``final`` only if ``final`` does not exist (write-once).

    Returns False when ``final`` already exists (a concurrent writer of the same content won); other
    ``OSError``s propagate. ``tmp`` is removed whenever the rename fails.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_dir(tmp)
    try:
        os.rename(tmp, final)  # POSIX: fails on a non-empty ``final``, never merges
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir():
            return False
        raise
    fsync_dir(final.parent)
    return True


def fsync_tree(folder: Path | str) -> None:
    """fsync every file in ``folder`` (not recursively) and the folder itself."""
    folder = Path(folder)
    for p in folder.iterdir():
        if p.is_file():
            fsync_file(p)
    fsync_dir(folder)


def link_or_copy(src: Path | str, dst: Path | str) -> None:
    """Hard-link ``src`` at ``dst`` (new name, same bytes, no copy); copy when links are impossible.

    Safe for immutable files only: bindset never rewrites a file in place, it renames new files over old
    names, so a linked inode keeps the bytes it had. Raises ``FileExistsError`` if ``dst`` exists.
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)
        fsync_file(dst)


def place_file(src: Path | str, dst: Path | str) -> None:
    """Make ``dst`` hold ``src``'s bytes atomically (hard link or copy, then rename over ``dst``)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = _tmp_name(dst)
    try:
        link_or_copy(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_synced(src: Path | str, dst: Path | str) -> None:
    """Copy a file (with its metadata) and fsync the copy; for files inside a staging folder."""
    shutil.copy2(src, dst)
    fsync_file(dst)


def replace_symlink(link: Path | str, target: Path | str) -> None:
    """Point the symlink ``link`` at ``target`` atomically: a new symlink, then a rename over the old one."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp-{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


# ------------------------------------------------------------------------------------------- tar reading


@dataclass(frozen=True)
class TarMember:
    """One file in a WebDataset tar: ``KEY.suffix`` (the key has no dot; SPEC §4) and where its bytes are."""

    key: str
    suffix: str
    offset: int  # of the data, in bytes from the start of the tar
    size: int  # bytes

    @property
    def name(self) -> str:
        return f"{self.key}.{self.suffix}"


class TarReader:
    """Reads a WebDataset tar: its members from the headers only, and members' bytes by offset.

    The header scan uses ``tarfile`` (it seeks over member data on a seekable file, so a scan costs one
    read per member header). Members are listed in tar order; folders and links are skipped. The tar
    file stays open for reads until ``close()`` (or the ``with`` block) ends.

    Raises ``tarfile.ReadError`` on a file that is not a tar, ``FileNotFoundError`` when it is missing.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fh: IO[bytes] | None = None
        self._members: list[TarMember] | None = None
        self._samples: dict[str, dict[str, TarMember]] | None = None

    def __getstate__(self) -> dict:
        # picklable for loader processes: the open file stays behind and is reopened on the first read
        return {**self.__dict__, "_fh": None}

    def __enter__(self) -> TarReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def members(self) -> list[TarMember]:
        """Every file member, in tar order."""
        if self._members is None:
            out = []
            with tarfile.open(self.path, "r:") as tf:
                for info in tf:
                    if info.isfile():
                        key, _, suffix = info.name.partition(".")
                        out.append(TarMember(key, suffix, info.offset_data, info.size))
            self._members = out
        return self._members

    def samples(self) -> dict[str, dict[str, TarMember]]:
        """key -> suffix -> member (a WebDataset sample is the run of members that share a key)."""
        if self._samples is None:
            table: dict[str, dict[str, TarMember]] = {}
            for m in self.members():
                table.setdefault(m.key, {})[m.suffix] = m
            self._samples = table
        return self._samples

    def read(self, member: TarMember) -> bytes:
        """A member's bytes. Raises ``EOFError`` when the tar ends before them (a truncated file)."""
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open for further reads; closed in close()
        self._fh.seek(member.offset)
        data = self._fh.read(member.size)
        if len(data) != member.size:
            raise EOFError(f"{self.path}: {member.name} is cut short ({len(data)} of {member.size} bytes)")
        return data
