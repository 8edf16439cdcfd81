"""Where a unit's results go: samples into tar parts, rows into its index and rejects tables.

A unit writes into its own folder; the build commits the folder (rename) only after ``close()``, so a
half-processed unit is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines.storage import write_synced
from pipelines.unit_tables import write_unit_tables
from schemas.reasons import RejectReason
from schemas.tables import MEMBERS, member_column
from transforms.config import BuildConfig
from transforms.shardwriter import PartInfo, RollingTarWriter, WriterMark

SUMMARY = "summary.json"


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


@dataclass(frozen=True)
class Reject:
    source: str
    reason: RejectReason
    detail: str
    session: str | None = None
    key: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    modality: str | None = None

    def row(self) -> dict:
        d = asdict(self)
        d["reason"] = self.reason.value
        return d


@dataclass
class UnitSummary:
    unit_id: str
    fingerprint: str
    windows_planned: int = 0
    samples: int = 0
    window_rejects: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    parts: list[dict] = field(default_factory=list)
    failed: bool = False  # the unit's process crashed or timed out; only rejects were recorded

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> UnitSummary:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class SinkMark:
    rows: int
    rejects: int
    windows_planned: int
    samples: int
    window_rejects: int
    writers: dict[str, WriterMark]
    sync_rows: int = 0


class UnitSink:
    """A unit's results, from any number of inputs: samples of one split share rolling tar parts."""

    def __init__(self, folder: Path, unit_id: str, fingerprint: str, cfg: BuildConfig):
        self.folder, self.unit_id, self.cfg = folder, unit_id, cfg
        folder.mkdir(parents=True, exist_ok=True)
        self.writers: dict[str, RollingTarWriter] = {}
        self.rows: list[dict] = []
        self.rejects: list[dict] = []
        self.summary = UnitSummary(unit_id, fingerprint)
        self.reasons: Counter[str] = Counter()
        self.sync_rows: list[dict] = []
        self._input_mark = self.mark()

    def planned(self, n: int) -> None:
        self.summary.windows_planned += n

    def reject(self, r: Reject) -> None:
        self.rejects.append(r.row())
        self.reasons[r.reason.value] += 1
        if r.key is not None and r.modality is None:
            self.summary.window_rejects += 1

    def sample(self, split: str, key: str, members: dict[str, bytes], row: dict) -> None:
        ordered = {m: members[m] for m in MEMBERS if m in members}
        writer = self.writers.get(split)
        if writer is None:
            writer = self.writers[split] = RollingTarWriter(
                self.folder, self.unit_id, split, self.cfg.shard_max_samples, self.cfg.shard_max_bytes
            )
        row = dict(row, key=key, split=split, shard=writer.add(key, ordered))
        for m in MEMBERS:
            row[member_column(m)] = hashlib.sha256(ordered[m]).hexdigest() if m in ordered else None
        self.rows.append(row)
        self.summary.samples += 1

    def sync(self, rows: list[dict]) -> None:
        """An input's clock rows (transforms/clockcheck.py); ``close`` writes the unit's as one sync.json."""
        self.sync_rows += rows

    def begin_input(self) -> None:
        """An input starts: ``withdraw_input`` goes back to here."""
        self._input_mark = self.mark()

    def withdraw_input(self) -> None:
        """Withdraw what the input at hand recorded since ``begin_input`` (its decoder failed, or its clock
        check sends it through a second pass)."""
        self.rollback(self._input_mark)

    def mark(self) -> SinkMark:
        """Where the sink stands now (before an input), for ``rollback``."""
        s = self.summary
        return SinkMark(len(self.rows), len(self.rejects), s.windows_planned, s.samples, s.window_rejects,
                        {split: w.mark() for split, w in self.writers.items()}, len(self.sync_rows))  # fmt: skip

    def rollback(self, m: SinkMark) -> None:
        """Withdraw everything recorded since ``m``: samples, rows, rejects and planned windows of one input."""
        for r in self.rejects[m.rejects :]:
            self.reasons[r["reason"]] -= 1
        self.reasons = +self.reasons  # drops the reasons that went to zero
        del self.rows[m.rows :], self.rejects[m.rejects :], self.sync_rows[m.sync_rows :]
        s = self.summary
        s.windows_planned, s.samples, s.window_rejects = m.windows_planned, m.samples, m.window_rejects
        for split in list(self.writers):
            if split in m.writers:
                self.writers[split].rollback(m.writers[split])
            else:  # opened by the withdrawn input
                self.writers[split].rollback(WriterMark(0, 0, 0, None))
                del self.writers[split]

    def close(self) -> UnitSummary:
        parts: list[PartInfo] = []
        for split in sorted(self.writers):
            self.writers[split].close()
            parts += self.writers[split].parts
        self.summary.parts = [asdict(p) for p in parts]
        self.summary.reasons = dict(sorted(self.reasons.items()))
        write_unit_tables(self.folder, self.rows, self.rejects)  # the form the commit reads back fast
        if self.sync_rows:
            from transforms.clockcheck import SYNC_FILE

            text = json.dumps(self.sync_rows, sort_keys=True, allow_nan=False, indent=1) + "\n"
            write_synced(self.folder / SYNC_FILE, text.encode())
        write_synced(self.folder / SUMMARY, self.summary.to_json().encode())
        return self.summary
