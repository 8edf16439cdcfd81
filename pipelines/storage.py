"""The storage seam: the one module that reads and writes dataset files, on local disk or object storage.

Three jobs live here, each written once:

- **Locations.** ``Location`` is "a local path or a URL" (``s3://bucket/prefix``, ``gs://bucket/prefix``,
  ``file:///abs/path``), parsed once at the edge (the CLI, the public functions) and joined with ``/``. Plain
  paths and ``file://`` are local: every local operation below is today's POSIX code, unchanged.
- **Atomic writes** (SPEC §4: "a shard or the index is never visible half-written"). Locally a file is
  written to a temporary name beside its final one, flushed and fsynced, renamed over the final name
  (``rename(2)`` is atomic on POSIX), and the folder is fsynced so the rename itself survives a power cut.
  Folders are built under a temporary name and swapped in the same way (``replace_dir``). A failure midway
  leaves the old file (or none), never a partial one, and removes the temporary. On an object store a single
  PUT is atomic (readers see the old object or the new one), so ``put_atomic`` is one PUT.
- **Tar reading.** ``TarReader`` scans a WebDataset tar's headers (not its data) into members
  (``KEY.suffix`` -> offset, size) and reads members by offset: a local file by ``seek``, an object by byte
  range through a block cache (``fsspec``'s ``blockcache``: 1 MiB blocks, so the header scan of a shard of
  small members costs a few range GETs and a member read after it usually hits a fetched block). The shard
  reader of training, the validator's shard table and the report's gallery all read through it.

Why fsspec (``s3fs``, ``gcsfs``) rather than ``pyarrow.fs``: one API covers S3 (AWS, MinIO, moto) and GCS
with the libraries their communities maintain; ``cat_file(path, start, end)`` is a byte-range GET;
``s3fs`` builds its client through botocore, so the standard environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL``) applies unchanged, and ``gcsfs`` reads ``GOOGLE_APPLICATION_CREDENTIALS`` and
``STORAGE_EMULATOR_HOST``; filesystem objects pickle, so the same object works in Beam and Ray workers;
pyarrow reads Parquet through an fsspec filesystem directly; datatrove's ``DataFolder`` and webdataset's
``gopen`` (STYLE §12) are built the same way. ``pyarrow.fs`` has S3 and GCS too, but its GCS support is
a separate build flag, it offers no block cache for range reads, and Beam's and Ray's own IO already
speak fsspec.

No other module calls ``os.replace``, ``os.link`` or ``open(..., "wb")`` on a dataset (STYLE §12); the
synthetic-capture generator (``bindset/synth``) writes inputs, not datasets, and keeps its own writes.

Object storage (issue 17): reading a committed dataset (``pipelines/dataset.py``, ``validate``, ``report``) works
on ``s3://`` and ``gs://``; ``build`` writes DATA there (``pipelines/commit_remote.py``, ``pipelines/lock_remote.py``:
its lease on ``put_conditional``, S3's ``If-None-Match``/``If-Match`` or GCS's ``ifGenerationMatch``); ``publish``
writes versions and a ``current.json`` pointer object there (``orchestration/publish.py``); so does ``embed``.

Imports: stdlib only at module level (pyarrow and fsspec lazily), because the training loop imports this on
machines that have only torch, numpy and pyarrow, and the default install has no s3fs or gcsfs.
"""

from __future__ import annotations

import contextlib
import errno
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

from schemas.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

#: Parquet settings of every table bindset writes: zstd, dictionaries and statistics (readers prune on them).
PARQUET_OPTS = dict(compression="zstd", use_dictionary=True, write_statistics=True)

# -------------------------------------------------------------------------------------------- locations

#: URL scheme -> (module that implements it, the bindset extra that installs it).
_REMOTE = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


class StorageError(UserError):
    """An object store refused or could not be reached: one line naming the URL and the likely fix (exit 2)."""


class MissingExtra(UserError):
    """A URL scheme whose filesystem package is not installed: names the extra to install (exit 2)."""


@dataclass(frozen=True)
class Location:
    """A local path or an object-store URL, parsed once: where a dataset file or folder lives.

    ``scheme`` is "" for a local path (plain or ``file://``), else "s3" or "gs"; ``path`` is the absolute
    local path, or ``bucket/key`` without a trailing slash. ``loc / "name"`` joins like ``Path``.
    """

    scheme: str
    path: str

    @classmethod
    def parse(cls, where: Location | Path | str) -> Location:
        """A Location from a path, a ``file://``/``s3://``/``gs://`` URL or a Location.

        Raises ``UserError`` for another scheme (``http://``: not a place bindset writes datasets), a URL without
        a bucket, or one whose path has an empty, ``.`` or ``..`` segment (``s3://b//ds``).
        """
        if isinstance(where, Location):
            return where
        text = os.fspath(where)
        scheme, sep, rest = text.partition("://")
        if not sep:
            return cls("", os.path.abspath(text))
        scheme = scheme.lower()
        if scheme == "file":
            return cls("", os.path.abspath(rest))
        if scheme not in _REMOTE:
            raise UserError(f"{text}: unsupported URL scheme {scheme}:// (use a path, file://, s3:// or gs://)")
        rest = rest.strip("/")
        if not rest:
            raise UserError(f"{text}: the URL names no bucket")
        # an object key may hold "//", "." or "..", but no two tools agree on them (fsspec, boto, the
        # listing that finds shards again): such a dataset would be written under keys it cannot be read back by
        if any(part in ("", ".", "..") for part in rest.split("/")):
            raise UserError(f"{text}: an empty, '.' or '..' segment in the URL's path; write it without")
        return cls("gs" if scheme == "gcs" else scheme, rest)

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def local(self) -> Path:
        """The local path; raises ``ValueError`` for a URL (the caller must take the object-store branch)."""
        if self.scheme:
            raise ValueError(f"{self}: not a local path")
        return Path(self.path)

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0] if self.scheme else ""

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        if not self.scheme:
            return Location("", str(Path(self.path).parent))
        head, _, _ = self.path.rpartition("/")
        return Location(self.scheme, head or self.path)

    def __truediv__(self, part: str) -> Location:
        if not self.scheme:
            return Location("", str(Path(self.path) / part))
        return Location(self.scheme, f"{self.path}/{str(part).strip('/')}")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}" if self.scheme else self.path

    @property
    def url(self) -> str:
        """``s3://...``/``gs://...``, or ``file:///abs/path`` for a local path."""
        return str(self) if self.scheme else Path(self.path).as_uri()


def location(where: Location | Path | str) -> Location:
    """``Location.parse``: the one way callers turn a user's DATA/RAW/RUN/EMB into a Location."""
    return Location.parse(where)


def is_url(where: Location | Path | str) -> bool:
    """Whether ``where`` names an object store (not a local path or file://)."""
    return not Location.parse(where).is_local


def cli_location(text: str) -> Path | str:
    """argparse ``type=`` for a location argument: a ``Path`` for local paths, the URL string for URLs.

    (``Path("s3://b/k")`` would collapse the ``//``; local paths keep the ``Path`` the commands expect.)
    """
    loc = Location.parse(text)  # raises UserError on a bad scheme
    return text if loc.scheme else Path(text[len("file://") :] if text.startswith("file://") else text)


# The credentials and endpoint every client reads from the environment: a change (a test, a re-login) gets a
# fresh filesystem object. Values are used only as a cache key, never logged.
_S3_ENV = "AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3"
_ENV_KEYS = {
    "s3": (*_S3_ENV.split(), "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"),
}
_FILESYSTEMS: dict[tuple, Any] = {}
_GCS_EXTENDED = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"

#: botocore's retry policy unless the standard variables ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` say
#: otherwise. botocore's own default (legacy, 5 attempts: ~15 s at most) gives up inside a short endpoint
#: restart or a throttling burst; "standard" retries throttling (SlowDown, 503), 5xx and connection errors
#: with full-jitter exponential backoff capped at 20 s a wait (botocore/retries/standard.py), so 10 attempts
#: ride out about a minute of outage (55 s expected, 111 s at most). A call that still fails raises a
#: one-line StorageError naming the URL; the build's state stays as it was (manifest last): the next run
#: resumes.
S3_RETRY_MODE, S3_MAX_ATTEMPTS = "standard", 10


def s3_retries() -> dict[str, Any]:
    """botocore's ``retries`` config from the environment (``AWS_RETRY_MODE``, ``AWS_MAX_ATTEMPTS``) or
    bindset's defaults. Raises StorageError for a non-integer ``AWS_MAX_ATTEMPTS``."""
    mode = os.environ.get("AWS_RETRY_MODE") or S3_RETRY_MODE
    try:
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or S3_MAX_ATTEMPTS)
    except ValueError:
        raise StorageError(f"AWS_MAX_ATTEMPTS={os.environ['AWS_MAX_ATTEMPTS']!r}: not a whole number") from None
    return {"mode": mode, "max_attempts": max(1, attempts)}


def filesystem(scheme: str):
    """The fsspec filesystem of an object-store scheme ("s3", "gs"), configured from the environment.

    S3: ``s3fs`` (botocore reads the AWS variables, ``AWS_ENDPOINT_URL`` included). GCS: ``gcsfs``
    (``GOOGLE_APPLICATION_CREDENTIALS``; ``STORAGE_EMULATOR_HOST`` points it at an emulator; gcsfs retries
    transient errors itself). S3 calls retry as ``s3_retries`` says. Listings are
    not cached: the manifest is re-read to detect a commit, and a cached listing would hide one.
    Raises :class:`MissingExtra` when the scheme's package is not installed.
    """
    module, extra = _REMOTE[scheme]
    key = (scheme, tuple(os.environ.get(k) for k in _ENV_KEYS.get(scheme, ())))
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            __import__(module)
        except ImportError:
            raise MissingExtra(f"{scheme}:// needs the {extra} extra: uv sync --extra {extra} "
                               f"(or pip install 'bindset[{extra}]')") from None  # fmt: skip
        import fsspec

        opts: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
        if scheme == "s3":
            opts["config_kwargs"] = {"retries": s3_retries()}
        if scheme == "gs" and os.environ.get("STORAGE_EMULATOR_HOST"):
            opts["token"] = "anon"  # an emulator takes no credentials; gcsfs reads the host from the env
        if scheme in ("gs", "gcs") and os.environ.get(_GCS_EXTENDED, "").lower() not in ("1", "true"):
            # gcsfs >= 2025.x registers its experimental "extended" filesystem for gs:// unless
            # GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT is false when gcsfs is first imported. It asks a gRPC control
            # plane for each bucket's layout (zonal / hierarchical namespace) and, where that API is not there
            # (an emulator, a key without storage.buckets.getStorageLayout), waits out a 60-s timeout on
            # every call without caching the failure. bindset never renames on object stores, the one thing
            # it speeds up, so the core filesystem is built directly unless the user set the variable true.
            from gcsfs.core import GCSFileSystem

            fs = GCSFileSystem(**opts)
        else:
            fs = fsspec.filesystem(scheme, **opts)
        _FILESYSTEMS.clear()  # one live configuration at a time: old credentials are not kept around
        _FILESYSTEMS[key] = fs
    return fs


_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError")


def _explain(loc: Location, exc: BaseException) -> BaseException:
    """The error to raise for a failed object-store call on ``loc``: a one-line StorageError, or ``exc``.

    Never puts the exception's own text in the message: a client error may echo request headers or keys.
    """
    kind = type(exc).__name__
    if isinstance(exc, PermissionError):
        hint = ("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE" if loc.scheme == "s3"
                else "GOOGLE_APPLICATION_CREDENTIALS")  # fmt: skip
        return StorageError(f"{loc}: access denied (wrong or missing credentials; check {hint})")
    if kind in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
        return StorageError(f"{loc}: no credentials found in the environment")
    if kind in _UNREACHABLE:
        return StorageError(f"{loc}: cannot reach the storage endpoint ({kind}; check AWS_ENDPOINT_URL or the network)")
    if isinstance(exc, FileNotFoundError) and loc.scheme:
        # ``exists`` answers False when the endpoint is down too (s3fs swallows the error): ``info`` tells them
        # apart, so an outage is not reported as a missing bucket
        bucket_there = True
        try:
            filesystem(loc.scheme).info(loc.bucket)
        except FileNotFoundError:
            bucket_there = False
        except Exception as probe:  # noqa: BLE001 - the probe only picks the message
            if type(probe).__name__ in _UNREACHABLE or isinstance(probe, ConnectionError):
                return StorageError(f"{loc}: cannot reach the storage endpoint ({type(probe).__name__}; check "
                                    "AWS_ENDPOINT_URL or the network)")  # fmt: skip
        if not bucket_there:
            return StorageError(f"{loc}: no such bucket {loc.scheme}://{loc.bucket}")
        return FileNotFoundError(f"{loc}: no such object")
    return exc


def _remote(loc: Location, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - translated, or re-raised as it was
        err = _explain(loc, exc)
        if err is exc:
            raise
        raise err from None


# ----------------------------------------------------------------------------------- the seam's operations


@dataclass(frozen=True)
class ObjectInfo:
    """What ``stat`` knows of a file or object: size in bytes and an identity that changes when it is rewritten.

    ``identity`` is (device, inode, size, mtime ns) locally; (size, ETag or generation) on object stores.
    """

    size: int
    identity: tuple
    modified: float = 0.0  # seconds since the epoch (mtime; an object's Last-Modified)


def stat(where: Location | Path | str) -> ObjectInfo:
    """Size and identity of a file or object; raises ``FileNotFoundError`` (or StorageError) when absent."""
    loc = Location.parse(where)
    if loc.is_local:
        st = os.stat(loc.path)
        return ObjectInfo(st.st_size, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), st.st_mtime)
    info = _remote(loc, lambda: filesystem(loc.scheme).info(loc.path))
    if info.get("type") == "directory":
        raise FileNotFoundError(f"{loc}: a prefix, not an object")
    tag = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("LastModified")
    when = info.get("LastModified") or info.get("updated") or info.get("mtime")
    modified = when.timestamp() if hasattr(when, "timestamp") else 0.0
    return ObjectInfo(int(info["size"]), (int(info["size"]), str(tag)), modified)


def exists(where: Location | Path | str) -> bool:
    """Whether a file, folder, object or prefix is there. Access errors raise StorageError, not False."""
    loc = Location.parse(where)
    if loc.is_local:
        return os.path.exists(loc.path)
    return bool(_remote(loc, lambda: filesystem(loc.scheme).exists(loc.path)))


def listdir(where: Location | Path | str) -> list[str]:
    """Names directly under a folder or prefix, sorted; [] when there is none."""
    loc = Location.parse(where)
    if loc.is_local:
        try:
            return sorted(os.listdir(loc.path))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs = filesystem(loc.scheme)
    try:
        entries = _remote(loc, lambda: fs.ls(loc.path, detail=False))
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != loc.path)


def read_range(where: Location | Path | str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file or object (one range GET); fewer when it ends before ``end``."""
    loc = Location.parse(where)
    if loc.is_local:
        with open(loc.path, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))
    return _remote(loc, lambda: filesystem(loc.scheme).cat_file(loc.path, start=start, end=end))


def read_ranges(wheres: list[Location], starts: list[int], ends: list[int]) -> list[bytes]:
    """Bytes ``[starts[i], ends[i])`` of ``wheres[i]`` for every i, in order; on an object store all at once.

    For reading many small pieces with one round trip's latency instead of one each: an object store's range
    GETs run concurrently (fsspec's ``cat_ranges``: s3fs and gcsfs gather them on their event loop, in
    batches of the filesystem's ``batch_size``). All locations must share one scheme. A piece shorter than
    asked (the object ends first) comes back short; the first failed GET raises (translated like any other
    call: StorageError naming the URL, or ``FileNotFoundError``).
    """
    if not wheres:
        return []
    first = wheres[0]
    if first.is_local:
        return [read_range(w, s, e) for w, s, e in zip(wheres, starts, ends, strict=True)]
    if any(w.scheme != first.scheme for w in wheres):
        raise ValueError("read_ranges: locations of different schemes")
    fs = filesystem(first.scheme)
    out = _remote(first, lambda: fs.cat_ranges([w.path for w in wheres], list(starts), list(ends), on_error="raise"))
    return list(out)


def client_environment(scheme: str) -> dict[str, str]:
    """The environment variables the ``scheme``'s client reads (credentials, endpoint, region) that are set now.

    For processes that do not inherit this one's current environment (a forkserver started earlier): they
    apply it before their first call. Values hold secrets: never log them.
    """
    prefixes = _ENV_PREFIXES.get(scheme, ())
    return {k: v for k, v in os.environ.items() if k.startswith(prefixes) or k in _ENV_KEYS.get(scheme, ())}


def apply_client_environment(scheme: str, env: dict[str, str]) -> None:
    """Make this process's client environment for ``scheme`` exactly ``env`` (from ``client_environment``)."""
    prefixes = _ENV_PREFIXES.get(scheme, ())
    for k in [k for k in os.environ if (k.startswith(prefixes) or k in _ENV_KEYS.get(scheme, ())) and k not in env]:
        del os.environ[k]
    os.environ.update(env)


#: the variables a client of each scheme may read (botocore: every AWS_* one; gcsfs/google-auth: GOOGLE_*, GCE_*)
_ENV_PREFIXES = {"s3": ("AWS_",), "gs": ("GOOGLE_", "GCE_", "GCSFS_", "STORAGE_EMULATOR_HOST")}


def read_bytes(where: Location | Path | str) -> bytes:
    """A whole file or object; ``FileNotFoundError`` when absent."""
    loc = Location.parse(where)
    if loc.is_local:
        return Path(loc.path).read_bytes()
    return _remote(loc, lambda: filesystem(loc.scheme).cat_file(loc.path))


def read_text(where: Location | Path | str) -> str:
    """``read_bytes`` decoded as UTF-8."""
    return read_bytes(where).decode("utf-8")


#: Range reads of shards go through 1 MiB blocks: a tar header scan touches every member's 512-byte header.
BLOCK_SIZE = 1 << 20


def open_read(where: Location | Path | str, *, block_size: int = BLOCK_SIZE) -> IO[bytes]:
    """A seekable binary file object for reading; on an object store, range GETs of ``block_size`` blocks, cached."""
    loc = Location.parse(where)
    if loc.is_local:
        return open(loc.path, "rb")  # noqa: SIM115 - returned to the caller
    fs = filesystem(loc.scheme)
    return _remote(loc, lambda: fs.open(loc.path, "rb", block_size=block_size, cache_type="blockcache"))


def read_parquet(where: Location | Path | str, **kwargs: Any) -> pa.Table:
    """``pyarrow.parquet.read_table`` of a local file or an object (footer and column chunks by range)."""
    import pyarrow.parquet as pq

    loc = Location.parse(where)
    if loc.is_local:
        return pq.read_table(loc.path, **kwargs)
    fs = filesystem(loc.scheme)

    def read() -> pa.Table:
        # a file we open and close here, not ``filesystem=fs``: pyarrow's fsspec wrapper leaves the file to the
        # garbage collector, and gcsfs's default ("adaptive") read-ahead keeps a background task on it that is
        # still pending at interpreter exit ("Task was destroyed but it is pending!"). Decoded on this thread
        # (no use_threads, no pre_buffer): bytes read from a Python file are Python-owned buffers, and an Arrow
        # pool thread that drops the last one after read_table returned takes the GIL; during interpreter exit
        # that ends the thread inside a C++ destructor: std::terminate, SIGABRT, rc 134 (seen with gdb, gs://)
        with fs.open(loc.path, "rb", block_size=BLOCK_SIZE, cache_type="blockcache") as f:
            return pq.read_table(f, **{"use_threads": False, "pre_buffer": False, **kwargs})

    return _remote(loc, read)


def read_parquet_schema(where: Location | Path | str) -> pa.Schema:
    """The Arrow schema of a Parquet file or object (its footer only)."""
    import pyarrow.parquet as pq

    loc = Location.parse(where)
    if loc.is_local:
        return pq.read_schema(loc.path)
    fs = filesystem(loc.scheme)

    def read() -> pa.Schema:
        with fs.open(loc.path, "rb") as f:
            return pq.read_schema(f)

    return _remote(loc, read)


def put_atomic(where: Location | Path | str, data: bytes) -> None:
    """Make ``where`` hold ``data``, atomically: readers see the old bytes or the new ones, never a part.

    Locally ``atomic_write_bytes`` (tmp + fsync + rename); on an object store one PUT (atomic by the stores'
    contract).
    """
    loc = Location.parse(where)
    if loc.is_local:
        atomic_write_bytes(loc.path, data)
        return
    _remote(loc, lambda: filesystem(loc.scheme).pipe_file(loc.path, data))


def _version_of(scheme: str, info: dict) -> str:
    # S3's ETag (quoted on the wire) or GCS's generation: what If-Match / ifGenerationMatch name
    tag = info.get("ETag", "") if scheme == "s3" else info.get("generation", "")
    return str(tag or "").strip('"')


def version(where: Location | Path | str) -> tuple[str, float]:
    """An object's version and its last-modified time (seconds since the epoch), from one HEAD / metadata GET.

    The version is what a conditional write names: the ETag on ``s3://`` (unquoted), the generation on ``gs://``
    (a number, as text, that GCS gives every new content of a name). Raises ``FileNotFoundError`` when absent and
    ``ValueError`` for a local path (local files have no version: their writers hold a ``flock``).
    """
    loc = Location.parse(where)
    if loc.is_local:
        raise ValueError(f"{loc}: a local path has no object version")
    info = _remote(loc, lambda: filesystem(loc.scheme).info(loc.path))
    when = info.get("LastModified") or info.get("mtime")
    return _version_of(loc.scheme, info), (when.timestamp() if hasattr(when, "timestamp") else 0.0)


def put_conditional(where: Location | Path | str, data: bytes, version: str) -> str:
    """One PUT of ``data`` that the store applies only while the object is ``version``, or, with ``version`` "",
    only while there is none (create-only). Returns the version written.

    ``s3://``: ``PutObject`` with ``If-Match: <ETag>`` / ``If-None-Match: *`` (S3 conditional writes, AWS since
    2024). ``gs://``: a media upload with ``ifGenerationMatch=<generation>`` / ``ifGenerationMatch=0`` (GCS
    request preconditions, https://cloud.google.com/storage/docs/request-preconditions), sent through gcsfs's
    own ``call`` (its session, credentials and retries). The store checks the condition atomically with the
    write. Raises ``FileExistsError`` when it fails (HTTP 412: an object is there, or it is another version, or
    it is gone), or ``FileNotFoundError`` (S3's answer to ``If-Match`` on a missing object). A store that
    ignores the condition (the GCS emulator of the tests) simply writes: callers that need more read back.
    """
    loc = Location.parse(where)
    if loc.is_local:
        raise ValueError(f"{loc}: conditional writes are for object stores (local files are guarded by flock)")
    fs = filesystem(loc.scheme)
    bucket, _, key = loc.path.partition("/")
    if loc.scheme == "gs":
        from urllib.parse import quote

        def upload() -> dict:
            return fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                           uploadType="media", name=key, ifGenerationMatch=version or "0", data=data,
                           headers={"Content-Type": "application/octet-stream"}, json_out=True)  # fmt: skip

        out = _remote(loc, upload)  # gcsfs raises FileExistsError for 412 itself
        fs.invalidate_cache(loc.path)
        return str(out.get("generation", ""))
    cond = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
    try:
        out = _remote(loc, lambda: fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond))
    except FileExistsError:  # s3fs's translation of 412 on If-None-Match
        raise
    except OSError as exc:  # s3fs/errors.py: 412 PreconditionFailed on If-Match -> OSError(EINVAL)
        if exc.errno == errno.EINVAL:
            raise FileExistsError(errno.EEXIST, f"{loc}: changed since version {version}") from None
        raise
    return _version_of(loc.scheme, out)


def read_versioned(where: Location | Path | str) -> tuple[bytes, str]:
    """An object's bytes and the version they are (``version``: the ETag on ``s3://``, the generation on
    ``gs://``); "" for a local file.

    The version is read before and after the GET; a write in between is retried (three times, then
    ``StorageError``), so the bytes are the version named. Raises ``FileNotFoundError`` when absent.
    """
    loc = Location.parse(where)
    if loc.is_local:
        return read_bytes(loc), ""
    fs = filesystem(loc.scheme)
    for _ in range(3):
        before = version(loc)[0]
        data = _remote(loc, lambda: fs.cat_file(loc.path))
        if version(loc)[0] == before:
            return data, before
    raise StorageError(f"{loc}: rewritten while being read, three times")


def put_if_unchanged(where: Location | Path | str, data: bytes, version: str) -> bool:
    """Replace an object with ``data`` in one PUT only while it still is ``version`` (``read_versioned``).

    ``s3://`` and ``gs://``: ``put_conditional`` (``If-Match: <ETag>`` / ``ifGenerationMatch=<generation>``),
    which the store checks atomically; False when the object changed or is gone (412 / 404), so a writer never
    overwrites what another one committed meanwhile. A local file (``version`` ""): ``put_atomic``, True; its
    callers hold a lock of their own.
    """
    loc = Location.parse(where)
    if loc.is_local or not version:
        put_atomic(loc, data)
        return True
    try:
        put_conditional(loc, data, version)
    except (FileNotFoundError, FileExistsError):
        return False
    return True


def put_json(where: Location | Path | str, obj: Any, *, indent: int | None = 2, **dumps: Any) -> None:
    """``atomic_write_json`` (sorted keys, no NaN, trailing newline) to a local path or an object (one PUT)."""
    loc = Location.parse(where)
    if loc.is_local:
        atomic_write_json(loc.path, obj, indent=indent, **dumps)
        return
    opts = {"sort_keys": True, "allow_nan": False, **dumps}
    put_atomic(loc, (json.dumps(obj, indent=indent, **opts) + "\n").encode("utf-8"))


def download(where: Location | Path | str, dst: Path | str) -> bool:
    """Copy a file or object to the local path ``dst`` (atomically); False when there is none to copy."""
    try:
        data = read_bytes(where)
    except FileNotFoundError:
        return False
    atomic_write_bytes(dst, data)
    return True


def write_once(where: Location | Path | str, data: bytes) -> bool:
    """Create ``where`` with ``data`` unless it already exists; False when it did (the bytes there are kept).

    For content-named, immutable objects: two writers of the same name write the same bytes, so the race
    between the existence check and the PUT on an object store only costs a redundant upload. Locally the
    file is created with ``O_EXCL`` at a temporary name and linked into place, which never replaces.
    """
    loc = Location.parse(where)
    if loc.is_local:
        path = Path(loc.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(path)
        try:
            write_synced(tmp, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)
    if exists(loc):
        return False
    put_atomic(loc, data)
    return True


def upload(src: Path | str, where: Location | Path | str) -> None:
    """Copy a local file to ``where`` atomically (locally: hard link or copy, then rename; remotely: one PUT)."""
    loc = Location.parse(where)
    if loc.is_local:
        Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
        place_file(src, loc.path)
        return
    _remote(loc, lambda: filesystem(loc.scheme).put_file(os.fspath(src), loc.path))


def delete(where: Location | Path | str) -> None:
    """Remove a file or object; no error when it is already gone (a folder or prefix is not removed here)."""
    loc = Location.parse(where)
    if loc.is_local:
        Path(loc.path).unlink(missing_ok=True)
        return
    fs = filesystem(loc.scheme)
    with contextlib.suppress(FileNotFoundError):
        _remote(loc, lambda: fs.rm_file(loc.path))


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

    ``path`` is a local path or an object-store URL/Location: an object is read by byte range through
    ``open_read``'s block cache (the header scan and then the member reads share the cached blocks).

    Raises ``tarfile.ReadError`` on a file that is not a tar, ``FileNotFoundError`` when it is missing.
    """

    def __init__(self, path: Location | Path | str):
        loc = Location.parse(path)
        self.location = loc
        self.path: Path | Location
        if not loc.is_local:
            self.path = loc
        elif isinstance(path, Location) or os.fspath(path).startswith("file://"):
            self.path = loc.local
        else:
            self.path = Path(path)  # as given (a relative path stays relative), as before
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
            if self.location.is_local:
                with tarfile.open(self.path, "r:") as tf:
                    out = _file_members(tf)
            else:
                with tarfile.open(fileobj=self._file(), mode="r:") as tf:  # leaves the file open for reads
                    out = _file_members(tf)
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
        fh = self._file()
        fh.seek(member.offset)
        data = fh.read(member.size)
        if len(data) != member.size:
            raise EOFError(f"{self.path}: {member.name} is cut short ({len(data)} of {member.size} bytes)")
        return data

    def _file(self) -> IO[bytes]:
        if self._fh is None:
            # kept open for further reads; closed in close()
            self._fh = open(self.path, "rb") if self.location.is_local else open_read(self.location)  # noqa: SIM115
        return self._fh


def _file_members(tf: tarfile.TarFile) -> list[TarMember]:
    out = []
    for info in tf:
        if info.isfile():
            key, _, suffix = info.name.partition(".")
            out.append(TarMember(key, suffix, info.offset_data, info.size))
    return out
