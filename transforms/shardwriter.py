"""Deterministic tar parts: same samples in, same bytes out (fixed mtime, owner, mode, order)."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import storage

_BLOCK = 512


def _member_bytes(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


@dataclass
class PartInfo:
    file: str
    split: str
    samples: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class WriterMark:
    parts: int  # parts that existed
    samples: int  # samples and bytes of the last of them
    bytes: int
    offset: int | None  # write position in the last part, None when no part was open


@dataclass
class RollingTarWriter:
    """Writes samples of one split into parts bounded by sample count and bytes.

    Parts are fsynced when closed; the caller commits them (renames the folder) only once complete.
    """

    folder: Path
    prefix: str
    split: str
    max_samples: int
    max_bytes: int
    parts: list[PartInfo] = field(default_factory=list)
    _fh: io.BufferedWriter | None = None

    def add(self, key: str, members: dict[str, bytes]) -> str:
        """Write one sample; returns the part file name it went to."""
        size = sum(_member_bytes(len(b)) for b in members.values())
        part = self.parts[-1] if self.parts and self._fh is not None else None
        if part is None or part.samples >= self.max_samples or (part.samples and part.bytes + size > self.max_bytes):
            part = self._roll()
        # What tarfile.addfile writes per member (header block, data, zero padding to a block), built
        # here in one piece so a sample costs one write instead of a few per member.
        chunks = []
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            chunks += (info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"), data)
            if len(data) % _BLOCK:
                chunks.append(bytes(_BLOCK - len(data) % _BLOCK))
        self._fh.write(b"".join(chunks))
        part.samples += 1
        part.bytes += size
        return part.file

    def _roll(self) -> PartInfo:
        self.close()
        name = f"{self.prefix}-{self.split}-{len(self.parts):05d}.tar"
        self._fh = storage.create(self.folder / name)
        self.parts.append(PartInfo(name, self.split))
        return self.parts[-1]

    def mark(self) -> WriterMark:
        """Where the writer stands now, for ``rollback``."""
        last = self.parts[-1] if self.parts else None
        offset = self._fh.tell() if self._fh is not None else None
        return WriterMark(len(self.parts), last.samples if last else 0, last.bytes if last else 0, offset)

    def rollback(self, m: WriterMark) -> None:
        """Forget every sample written since ``m``: later parts are deleted, the part open then is cut back.

        Used when the decoder dies inside an input: the samples it sent of that input go, its unit-mates'
        stay. A part that was open at ``m`` and closed since is reopened at its mark (its end-of-archive goes).
        """
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for part in self.parts[m.parts :]:
            (self.folder / part.file).unlink(missing_ok=True)
        del self.parts[m.parts :]
        if m.offset is not None and self.parts:
            part = self.parts[-1]
            part.samples, part.bytes = m.samples, m.bytes
            self._fh = storage.reopen_at(self.folder / part.file, m.offset)

    def close(self) -> None:
        if self._fh is not None:
            # tarfile's end of archive: two zero blocks, then zeros up to a whole record (20 blocks)
            end = self._fh.tell() + 2 * _BLOCK
            self._fh.write(bytes(2 * _BLOCK + -end % tarfile.RECORDSIZE))
            storage.close_synced(self._fh)
            self._fh = None
