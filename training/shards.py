"""Training reads: the sample table of a split, each rank's share of an epoch, and the members of a sample.

Every rank opens the shards itself and reads only its own samples, by offset: the first pass over a shard
reads its tar headers (not its data) into a member table. An epoch is a seeded permutation of the split's
samples dealt round-robin to the ranks, so within an epoch every sample is read by exactly one rank and
one loader process, and no sample is dropped: the last batch of a rank is padded with masked-out rows
(index -1) up to the common number of steps, which every rank computes the same way from the table.

DATA is a local folder (read by file offset, as the build wrote it) or an ``s3://``/``gs://`` URL, opened
through ``open_dataset`` and the storage seam (``pipelines/storage.py``). On object storage a loader fetches
a whole batch at once: each sample's wanted members (contiguous in the tar: a sample is one run of members)
as one byte range, and all the batch's ranges concurrently (``storage.read_ranges``), so a batch costs about
one round trip rather than one per member. Reading ahead across batches is the loader's: its processes
prepare ``prefetch_factor`` batches each while the model trains, and the loop's ``Prefetch`` thread pulls
them further ahead. Why not fsspec's block or read-ahead cache: an epoch is a random permutation over all
shards, so the next sample is almost never near the last one in any file; a cache would fetch other
samples' bytes and still pay one round trip per sample, in series.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc
import torch

from pipelines import storage
from pipelines.dataset import ShardPins, open_dataset
from pipelines.storage import Location, TarMember, TarReader
from schemas import modalities
from schemas.modalities import TRAINABLE, TRAINABLE_MEMBER

PAD = -1

#: On object storage, members of one sample at most this far apart are fetched as one range: reading a gap
#: (a member not wanted, e.g. the frames when image embeddings are cached) costs less than another request.
MERGE_GAP = 1 << 20


def dataset_location(data: Path | Location | str) -> Path | Location:
    """DATA as training opens it: a ``Path`` for a local folder (as given), a ``Location`` for an object-store URL.

    Raises ``UserError`` for an unsupported URL scheme.
    """
    if isinstance(data, Location):
        return data if not data.is_local else data.local
    loc = storage.location(data)
    if not loc.is_local:
        return loc
    return loc.local if os.fspath(data).startswith("file://") else Path(data)


@dataclass
class SampleTable:
    """The samples of one split, in index order, with what a loader needs to find and label them."""

    data: Path | Location  # a Location on object storage
    keys: list[str]
    shards: list[str]
    splits: list[str]
    sessions: list[str]
    labels: list[str | None]
    captions: list[str | None]
    has: dict[str, np.ndarray]  # modality -> bool per sample
    allowed: dict[str, np.ndarray]  # modality -> bool per sample: may this sample train that modality?
    pins: ShardPins | None = None  # the snapshot's shard files (pipelines/dataset.py); None: read whatever is there
    version: str = ""  # the dataset version the table was read from

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, data: Path | str, split: str | None, pairing: str = "joint",
             trained: tuple[str, ...] = TRAINABLE) -> SampleTable:  # fmt: skip
        data = dataset_location(data)
        # pyarrow, not pandas: the loop also runs on machines that have only torch, numpy and pyarrow
        has_columns = {m: modalities.BY_NAME[m].has_column for m in TRAINABLE}
        columns = ["key", "shard", "split", "session", "label", "caption", *has_columns.values()]
        snap = open_dataset(data)  # one committed version: index and shards agree, or a later read raises
        index = snap.index.select(columns)
        if split is not None:
            index = index.filter(pc.equal(index.column("split"), split))
            if not index.num_rows:
                raise ValueError(f"{data}: no samples in split {split!r}")
        col = lambda name: index.column(name).to_pylist()  # noqa: E731
        has = {m: np.array(col(c), bool) for m, c in has_columns.items()}
        sessions = col("session")
        allowed = {m: has[m].copy() for m in TRAINABLE}
        if pairing == "disjoint":
            allowed = _disjoint(np.array(sessions, object), has, trained)
        return cls(data=data, keys=col("key"), shards=col("shard"), splits=col("split"), sessions=sessions,
                   labels=col("label"), captions=col("caption"), has=has, allowed=allowed, pins=snap.pins,
                   version=snap.version)  # fmt: skip


def _disjoint(sessions: np.ndarray, has: dict[str, np.ndarray], modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Give each session to exactly one modality (among those it carries), balancing sessions per modality.

    ImageBind never sees two non-image modalities of the same clip in training; this reproduces that on a
    dataset whose captures carry them all, which is what makes cross-modal retrieval *emergent*.
    """
    allowed = {m: np.zeros(len(sessions), bool) for m in TRAINABLE}
    count = dict.fromkeys(modalities, 0)
    for session in sorted(set(sessions)):
        rows = sessions == session
        carried = [m for m in modalities if has[m][rows].any()]
        if not carried:
            continue
        pick = min(carried, key=lambda m: (count[m], modalities.index(m)))
        count[pick] += 1
        allowed[pick] = allowed[pick] | (rows & has[pick])
    return allowed


@dataclass(frozen=True)
class EpochPlan:
    """Which samples a rank reads in an epoch, batch by batch (PAD marks a masked-out row)."""

    n: int
    batch_size: int
    world_size: int
    seed: int

    @property
    def steps(self) -> int:
        return math.ceil(math.ceil(self.n / self.world_size) / self.batch_size)

    def rank_batches(self, epoch: int, rank: int, skip: int = 0) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        mine = order[rank :: self.world_size].tolist()
        mine += [PAD] * (self.steps * self.batch_size - len(mine))
        b = self.batch_size
        return [mine[i * b : (i + 1) * b] for i in range(skip, self.steps)]


class BatchSampler(torch.utils.data.Sampler):
    """Yields one rank's batches of an epoch; ``set_epoch`` before each, ``skip`` batches to resume."""

    def __init__(self, plan: EpochPlan, rank: int):
        self.plan, self.rank, self.epoch, self.skip = plan, rank, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        return iter(self.plan.rank_batches(self.epoch, self.rank, self.skip))

    def __len__(self) -> int:
        return self.plan.steps - self.skip


#: the member that carries each trainable modality
MODALITY_MEMBER = TRAINABLE_MEMBER


class SampleReader(torch.utils.data.Dataset):
    """Decodes the members of sample ``i`` into numpy arrays (no pickle: ``.npy`` with allow_pickle=False).

    ``want`` names the members to read; frames are skipped entirely when image embeddings are cached.
    ``only_allowed``: a modality's member is read only where the table allows the sample to train that
    modality (under disjoint pairing a sample trains one, so the other three are never decoded).
    """

    def __init__(self, table: SampleTable, want: frozenset[str], image_cache: np.ndarray | None = None,
                 only_allowed: bool = False):  # fmt: skip
        self.table, self.want, self.image_cache = table, want, image_cache
        self.skip = {member: ~table.allowed[m] for m, member in MODALITY_MEMBER.items()} if only_allowed else {}
        self._tars: dict[str, TarReader] = {}
        self.remote = isinstance(table.data, Location) and not table.data.is_local
        # Loader processes fork from a forkserver that the first loader of this process started, with the
        # environment of that moment; they adopt the client environment (endpoint, credentials) this reader
        # was made under. It travels to them by pipe, like the rest of the reader, and is never logged.
        self._env = storage.client_environment(table.data.scheme) if self.remote else None
        self._env_adopted = False

    def __len__(self) -> int:
        return len(self.table)

    def _tar(self, shard: str) -> TarReader:
        # the first use of a shard reads its headers; the file then stays open for reads by offset
        if shard not in self._tars:
            pins = self.table.pins
            # a shard a rebuild replaced since the table was read raises DatasetChanged (pipelines/dataset.py)
            path = pins.check_path(shard) if pins is not None else self.table.data / "shards" / shard
            tar = TarReader(path)
            if self.remote:
                tar.samples()  # the header scan, through the seam's block cache
                tar.close()  # members are then read by range (read_ranges): drop the cached blocks
            self._tars[shard] = tar
        return self._tars[shard]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The samples of a batch (the DataLoader calls this, not ``__getitem__``, when it is defined)."""
        if self.remote:
            return self._read_remote(indices)
        return [self[i] for i in indices]  # local: one seek and read per member, as always

    def __getitem__(self, i: int) -> dict:
        if self.remote:
            return self._read_remote([i])[0]
        worker = torch.utils.data.get_worker_info()
        out: dict = {"index": i, "loader_worker": worker.id if worker else 0}
        if i == PAD:
            return out
        t = self.table
        tar = self._tar(t.shards[i])
        members = tar.samples().get(t.keys[i], {})
        for suffix in self.want:
            if suffix in members and not (suffix in self.skip and self.skip[suffix][i]):
                out[suffix] = _decode(suffix, tar.read(members[suffix]))
        if self.image_cache is not None:
            out["image_emb"] = np.asarray(self.image_cache[i], np.float32)
        return out

    def _read_remote(self, indices: list[int]) -> list[dict]:
        """``__getitem__`` of each index, with every member of every sample fetched in one concurrent call."""
        worker = torch.utils.data.get_worker_info()
        if worker is not None and not self._env_adopted:
            storage.apply_client_environment(self.table.data.scheme, self._env or {})
            self._env_adopted = True
        t = self.table
        outs: list[dict] = []
        pieces: list[tuple[int, TarMember, int]] = []  # (sample in outs, member, range it lies in)
        locs: list[Location] = []
        starts: list[int] = []
        ends: list[int] = []
        for i in indices:
            outs.append({"index": i, "loader_worker": worker.id if worker else 0})
            if i == PAD:
                continue
            tar = self._tar(t.shards[i])
            members = tar.samples().get(t.keys[i], {})
            chosen = [members[s] for s in self.want if s in members and not (s in self.skip and self.skip[s][i])]
            first = len(locs)  # ranges are merged within a sample only
            for m in sorted(chosen, key=lambda m: m.offset):
                if len(locs) > first and m.offset - ends[-1] <= MERGE_GAP:
                    ends[-1] = max(ends[-1], m.offset + m.size)
                else:
                    locs.append(tar.location)
                    starts.append(m.offset)
                    ends.append(m.offset + m.size)
                pieces.append((len(outs) - 1, m, len(locs) - 1))
        blobs = storage.read_ranges(locs, starts, ends)
        for k, m, r in pieces:
            lo = m.offset - starts[r]
            blob = blobs[r][lo : lo + m.size]
            if len(blob) != m.size:
                raise EOFError(f"{locs[r]}: {m.name} is cut short ({len(blob)} of {m.size} bytes)")
            outs[k][m.suffix] = _decode(m.suffix, blob)
        if self.image_cache is not None:
            for out in outs:
                if out["index"] != PAD:
                    out["image_emb"] = np.asarray(self.image_cache[out["index"]], np.float32)
        return outs


def _decode(suffix: str, blob: bytes):
    if suffix.endswith("jpg"):
        img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        return None if img is None else img[:, :, ::-1].copy()  # BGR -> RGB
    if suffix.endswith("png"):
        return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
    if suffix.endswith("npy"):
        return np.load(io.BytesIO(blob), allow_pickle=False)
    if suffix == "json":
        return json.loads(blob)
    return blob.decode("utf-8")


def loader_worker_init(_worker_id: int) -> None:
    """Loader processes decode one sample at a time: one thread each, or N workers x all-cores threads
    oversubscribe the host (OpenCV and torch would each start a pool per process)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def loader_context(workers: int):
    """Loader processes start from a forkserver, not a fork of the training process: that process runs
    threads (the prefetcher, torch's pools, Ray's), and a fork can copy a lock one of them holds into the
    child, which then deadlocks."""
    import multiprocessing

    return multiprocessing.get_context("forkserver") if workers > 0 else None
