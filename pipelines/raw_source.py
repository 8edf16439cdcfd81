"""RAW on object storage (``s3://bucket/raw``, ``gs://...``): listing, fingerprint stats and staging of inputs.

    bindset build s3://bucket/raw DATA        bindset sync s3://bucket/raw

Everything goes through the storage seam's filesystem (``pipelines.storage.filesystem``: credentials and
endpoint from the standard environment); nothing here writes to RAW.

- **Discovery** lists RAW once (``RemoteRaw.objects``: one paginated LIST of the whole prefix, 1,000 keys a
  request on S3, with each object's size and ETag), turns that into the ``transforms.paths.Listing`` that a
  local walk gives (hidden ``.*``/``_*`` folders and dot files skipped, the walk's order) and hands it to
  ``transforms.layouts.discover``. The few small files discovery itself reads (captures manifests, captions,
  SUN RGB-D ``intrinsics.txt``/``scene.txt``) are fetched concurrently into a scratch folder, removed after.
- **Fingerprints** (``stats``): ``[RAW-relative key, size, "etag:<ETag>"]`` per object, the remote twin of a
  local file's ``[path, size, mtime_ns]`` (``pipelines.work.path_stats``): a rewritten object gets a new ETag,
  so its unit alone is redone. The driver takes them from its listing; a worker, which has no listing, asks
  for exactly its unit's keys (concurrent HEADs, one LIST per folder input such as a frames folder), and
  gets the same entries for the same objects.
- **Decoding** reads a local copy: ``stage`` downloads one input's files (concurrently) into a scratch folder
  laid out like RAW, the decode process reads them there, and the folder is removed as soon as the input is
  done (``pipelines.work.run_unit``: one input at a time per worker, the next one fetched while the current
  one decodes, so at most two inputs' bytes on disk per worker).

Why a download rather than a block-cached file object handed to PyAV/OpenCV: the decode path stays the
local one byte for byte (the same containment checks, FFmpeg seeking and probing a real file, OpenCV's
``imread`` of a path), which is what makes the output identical to a local build; FFmpeg reads a container
in many small, scattered requests (moov at the end, probe reads, audio and video interleaved), each of which
would be a blocking Python callback and, past the cache, a range GET; and the depth/thermal frames and IMU
CSVs are whole small files either way. Measured on the moto server (``tests/s3server.py``, this 2-core
machine): a 12 s 160x120 synthetic video of 0.23 MB downloads in 13-18 ms and PyAV decodes its 923 video
and audio frames from the copy in 21-35 ms (22-39 ms from the original file); decoding it through
``storage.open_read`` (1 MiB blocks) took 25-34 ms, download included. So the copy costs about what
streaming costs, it overlaps with the previous input's decode, and it keeps one decode path. The disk it
takes is bounded by two inputs per worker.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.storage import Location
from schemas.errors import UserError
from schemas.reasons import RejectReason
from transforms.paths import Entry, Listing, PathRejected

log = logging.getLogger(__name__)

#: Concurrent requests of one batch (HEADs, GETs): s3fs's own default batch for bulk operations.
BATCH = 64


@dataclass(frozen=True)
class RawObject:
    """One object under RAW: its RAW-relative key, size in bytes and change token (``etag:...``)."""

    rel: str
    size: int
    token: str


def _token(info: dict) -> str:
    """What changes when an object is rewritten: its ETag (S3, MinIO), else its generation (GCS)."""
    tag = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("md5Hash")
    if tag:
        return f"etag:{str(tag).strip(chr(34))}"
    when = info.get("LastModified") or info.get("updated") or info.get("mtime")
    return f"modified:{when}"


def _bad_key(rel: str) -> bool:
    """A key no local file can mirror (``a//b``, ``./x``, ``../x``): never staged, reported as a problem."""
    parts = rel.split("/")
    return any(p in ("", ".", "..") for p in parts) or "\0" in rel


def _hidden(rel: str) -> bool:
    # as transforms.paths.walk: `_truth/`, `.git/` folders and dot files are never inputs
    *folders, name = rel.split("/")
    return name.startswith(".") or any(f.startswith((".", "_")) for f in folders)


def _walk_order(rel: str) -> list[str]:
    # a local walk lists each folder's entries by name and descends in place: "a/x" before "a.txt"
    return rel.split("/")


class RemoteRaw:
    """RAW at an object-store URL. Raises ``MissingExtra`` (exit 2) when the scheme's package is missing."""

    def __init__(self, where: Location | str):
        self.loc = storage.location(where)
        if self.loc.is_local:
            raise ValueError(f"{where}: not an object-store URL")
        self.fs = storage.filesystem(self.loc.scheme)

    def __str__(self) -> str:
        return str(self.loc)

    def key(self, rel: str) -> str:
        return f"{self.loc.path}/{rel}"

    def url(self, rel: str) -> str:
        return f"{self.loc}/{rel}"

    # ------------------------------------------------------------------------------- the driver's listing

    def require(self) -> None:
        """Raise ``UserError`` naming the URL when RAW's bucket is missing or the prefix holds no object.

        A HEAD and a LIST of at most one key; called before the build takes DATA's lock.
        """
        loc = self.loc
        if storage._remote(loc, lambda: self.fs.exists(loc.path)):
            return
        if not storage._remote(loc, lambda: self.fs.exists(loc.bucket)):
            raise UserError(f"RAW {loc}: no such bucket {loc.scheme}://{loc.bucket}")
        raise UserError(f"RAW {loc}: no objects under this prefix (input folder does not exist or is empty)")

    def objects(self) -> dict[str, RawObject]:
        """Every object under RAW, hidden ones included (``{rel: RawObject}``): one paginated listing.

        Raises ``UserError`` naming the URL for a missing bucket, StorageError for access or endpoint failures.
        """
        loc = self.loc
        try:
            found = storage._remote(loc, lambda: self.fs.find(loc.path, withdirs=False, detail=True))
        except FileNotFoundError:
            raise UserError(f"RAW {loc}: no such bucket {loc.scheme}://{loc.bucket}") from None
        prefix = loc.path + "/"
        out = {}
        for name, info in found.items():
            if not name.startswith(prefix) or name.endswith("/") or info.get("type") == "directory":
                continue  # a folder marker ("dir/"), or a sibling prefix ("raw2/" next to "raw/")
            rel = name[len(prefix) :]
            out[rel] = RawObject(rel, int(info["size"]), _token(info))
        return out

    def listing(self, objects: dict[str, RawObject]) -> Listing:
        """The ``Listing`` a local walk of the same files gives: hidden entries skipped, in the walk's order;
        keys no local file can mirror are problems (their reject names them)."""
        out = Listing()
        for rel in sorted(objects, key=_walk_order):
            if _hidden(rel):
                continue
            if _bad_key(rel):
                detail = "the object key has an empty, '.' or '..' path segment; no file can be named so"
                out.problems.append(PathRejected(rel, RejectReason.PATH_ESCAPES_ROOT, detail))
                continue
            out.entries.append(Entry(rel, objects[rel].size, None))
        return out

    # ------------------------------------------------------------------------------------------ stats

    def stats_from(self, objects: dict[str, RawObject], keys: list[str] | None = None):
        """A function ``rel -> [[rel, size, token], ...]`` over a listing: the object, or every object below
        a folder (sorted), or ``[[rel, None, None]]`` when there is none (the local ``path_stats``)."""
        keys = sorted(objects) if keys is None else keys

        def stats(rel: str) -> list:
            if rel in objects:
                o = objects[rel]
                return [[rel, o.size, o.token]]
            if _bad_key(rel):
                return [[rel, None, None]]
            lo = bisect.bisect_left(keys, rel + "/")
            hi = bisect.bisect_left(keys, rel + "0")  # "0" follows "/": the end of the folder's keys
            found = [[k, objects[k].size, objects[k].token] for k in keys[lo:hi]]
            return sorted(found, key=lambda e: e[0]) or [[rel, None, None]]

        return stats

    def stats(self, rels: list[str]) -> list:
        """The entries of ``rels``, in their order, as ``stats_from`` gives them for the same objects."""
        by_rel = self.stats_by_rel(rels)
        return [e for r in dict.fromkeys(rels) for e in by_rel[r]]

    def stats_by_rel(self, rels: list[str]) -> dict[str, list]:
        """``{rel: entries}`` asked for these keys only (a worker's view, without RAW's listing): concurrent
        HEADs, and one listing for each key that is a folder (a frames folder)."""
        rels = list(dict.fromkeys(rels))
        good = [r for r in rels if not _bad_key(r)]
        infos = self._gather([self.fs._info(self.key(r)) for r in good])
        by_rel: dict[str, list] = {r: [[r, None, None]] for r in rels}
        for rel, info in zip(good, infos, strict=True):
            if isinstance(info, FileNotFoundError):
                continue
            if isinstance(info, BaseException):
                raise storage._explain(storage.location(self.url(rel)), info)
            if info.get("type") == "directory":
                below = RemoteRaw(self.loc / rel).objects()
                found = sorted([[f"{rel}/{k}", o.size, o.token] for k, o in below.items()], key=lambda e: e[0])
                by_rel[rel] = found or by_rel[rel]
            else:
                by_rel[rel] = [[rel, int(info["size"]), _token(info)]]
        return by_rel

    # ------------------------------------------------------------------------------------------ staging

    def stage(self, entries: list, dest: Path) -> dict[str, BaseException]:
        """Download the objects of ``entries`` (``[rel, size, token]``; size None: absent, skipped) to
        ``dest/rel``, concurrently. Returns ``{rel: error}`` for objects that could not be read; an object that
        vanished since it was listed is left absent (the unit reports it as missing, as it would locally)."""
        rels = [e[0] for e in entries if e[1] is not None and not _bad_key(e[0])]
        for rel in rels:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        results = self._gather([self.fs._get_file(self.key(r), str(dest / r)) for r in rels])
        failed = {}
        for rel, res in zip(rels, results, strict=True):
            if isinstance(res, BaseException) and not isinstance(res, FileNotFoundError):
                failed[rel] = res
            if isinstance(res, BaseException):
                (dest / rel).unlink(missing_ok=True)  # never a partial copy
        return failed

    def _gather(self, coros: list) -> list:
        from fsspec.asyn import _run_coros_in_chunks, sync

        if not coros:
            return []
        return sync(self.fs.loop, _run_coros_in_chunks, coros, batch_size=BATCH, return_exceptions=True)


def describe_failure(url: str, exc: BaseException) -> str:
    """A reject's detail for an object that could not be read; never the exception's own text (a client
    error may echo request headers)."""
    if isinstance(exc, PermissionError):
        return f"{url}: access denied while reading it"
    return f"{url}: cannot be read ({type(exc).__name__}); the next build reads it again"


@contextlib.contextmanager
def scratch(prefix: str = "bindset-raw-") -> Iterator[Path]:
    """A local folder for staged inputs, under the system temp (never under DATA), removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def discover_remote(raw: RemoteRaw, layout: str = "auto"):
    """``transforms.layouts.discover`` of RAW on object storage, from one listing.

    Returns ``(Discovery, objects)``; ``objects`` (``RemoteRaw.objects``) gives the fingerprints' stats.
    Raises ``UserError`` naming the URL for a missing bucket or an empty prefix, ``LayoutError`` like a local RAW.
    """
    from transforms.layouts import RawTree, discover

    objects = raw.objects()
    if not objects:
        raise UserError(f"RAW {raw}: no objects under this prefix (input folder does not exist or is empty)")
    with scratch() as folder:

        def fetch(rels: list[str]) -> None:
            entries = [[r, objects[r].size, objects[r].token] for r in rels if r in objects]
            failed = raw.stage(entries, folder)
            for rel, exc in failed.items():  # discovery then reports the file as unreadable (a reject)
                log.warning("%s", describe_failure(raw.url(rel), exc))

        tree = RawTree(name=str(raw), listing=raw.listing(objects), files=folder, fetch=fetch)
        return discover(folder, layout, tree=tree), objects
