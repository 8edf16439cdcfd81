"""Deterministic tar parts: same samples in, same bytes out (fixed mtime, owner, mode, order)."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK = 512


def _member_bytes(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


@dataclass
class PartInfo:
    file: str
    split: str
    samples: int = 0
    bytes: int = 0


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
    _tar: tarfile.TarFile | None = None
    _fh: io.BufferedWriter | None = None

    def add(self, key: str, members: dict[str, bytes]) -> str:
        """Write one sample; returns the part file name it went to."""
        size = sum(_member_bytes(len(b)) for b in members.values())
        part = self.parts[-1] if self.parts and self._tar is not None else None
        if part is None or part.samples >= self.max_samples or (part.samples and part.bytes + size > self.max_bytes):
            part = self._roll()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        part.samples += 1
        part.bytes += size
        return part.file

    def _roll(self) -> PartInfo:
        self.close()
        name = f"{self.prefix}-{self.split}-{len(self.parts):05d}.tar"
        self._fh = open(self.folder / name, "wb")  # noqa: SIM115 - closed in close()
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.parts.append(PartInfo(name, self.split))
        return self.parts[-1]

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._tar = self._fh = None
