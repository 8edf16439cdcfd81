"""A GCS JSON-API server for tests: ``gcp-storage-emulator`` (a pure-Python emulator of GCS's JSON and upload
APIs), in this process, in memory, on 127.0.0.1 and a free port, for the whole session.

``gcs_bucket`` gives each test a fresh bucket and points the standard variable ``STORAGE_EMULATOR_HOST`` at the
server for that test only, so bindset finds it exactly as it would find any GCS emulator: nothing in bindset
knows it is talking to a test server.

The emulator does not check preconditions (``ifGenerationMatch``): it writes whatever the condition. The lease
tests use it as it is (the lease's read-back is what keeps one writer there), and, through ``gcs_preconditions``,
with the rule GCS documents (https://cloud.google.com/storage/docs/request-preconditions: ``ifGenerationMatch=0``
only when there is no live object, ``=N`` only when the live generation is N, else 412 conditionNotMet) added in
front of its two single-request upload handlers: that shows bindset sends the condition and handles the 412, not
that real GCS answers as described (nothing here reaches real GCS).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest

from tests.s3server import S3Bucket, _free_port


@dataclass(frozen=True)
class GcsBucket(S3Bucket):
    """A fresh bucket on the GCS emulator (the S3 test bucket's fields, another scheme)."""

    scheme: ClassVar[str] = "gs"


def _multipart_related(raw: bytes, content_type: str) -> dict | None:
    """An upload's ``multipart/related`` body split byte for byte (RFC 2046 section 5.1.1: the line break before
    a delimiter belongs to the delimiter): ``{"meta", "content", "content-type"}`` as the emulator's own parser
    returns them, or None when the body is not two parts. gcsfs writes its line breaks as a bare LF."""
    import json
    import re

    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if m is None:
        return None
    delimiter = b"--" + m.group(1).encode()
    chunks = raw.split(delimiter)
    if len(chunks) != 4 or not chunks[3].startswith(b"--"):  # preamble, meta, content, "--" epilogue
        return None
    # the client's line break, as it ends the first delimiter line: CRLF (RFC 2046) or gcsfs's bare LF; only
    # that break is cut from each part's ends, so a part's own last CR or LF stays its own
    eol = b"\r\n" if chunks[1].startswith(b"\r\n") else b"\n"
    parts = []
    for chunk in chunks[1:3]:
        if not (chunk.startswith(eol) and chunk.endswith(eol)):
            return None
        head, sep, body = chunk[len(eol) : -len(eol)].partition(eol + eol)
        if not sep:
            return None
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in head.decode().splitlines())
        )
        parts.append((headers, body))
    (_, meta), (headers, content) = parts
    return {"meta": json.loads(meta), "content": content,
            "content-type": headers.get("content-type", "application/octet-stream").split(";")[0]}  # fmt: skip


def _exact_multipart(server_module) -> None:
    """The emulator parses upload bodies with ``email.parser``, which takes a CR that ends an object's bytes
    for part of the line break before gcsfs's delimiter (gcsfs separates with LF) and drops it: an object
    whose last byte is 0x0D lost it (a zstd frame of a unit's table did). GCS keeps an object's bytes; so
    does the emulator with its multipart/related bodies split here (other bodies go to its own parser)."""
    original = server_module._read_data

    def read_data(request_handler, query):
        content_type = request_handler.headers.get("Content-Type") or ""
        if not content_type.startswith("multipart/related"):
            return original(request_handler, query)
        raw = server_module._decode_raw_data(server_module._read_raw_data(request_handler), request_handler)
        parsed = _multipart_related(raw, content_type) if raw else None
        if parsed is None:
            raise ValueError(f"tests/gcsserver.py: a multipart/related body it cannot split ({content_type})")
        return parsed

    server_module._read_data = read_data


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[tuple[str, object]]:
    """(``http://127.0.0.1:PORT``, the server) of an emulator that lives for the test session."""
    import gcsfs  # noqa: F401 - the dev group installs gcsfs; imported here so a missing one fails, not skips
    from gcp_storage_emulator import server as server_module
    from gcp_storage_emulator.server import create_server

    _exact_multipart(server_module)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_endpoint: tuple[str, object], monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsBucket]:
    """A new, empty bucket; ``STORAGE_EMULATOR_HOST`` names the server for this test."""
    from pipelines import storage

    endpoint, server = gcs_endpoint
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "bindset-test")
    name = f"bindset-test-{uuid.uuid4().hex[:12]}"
    fs = storage.filesystem("gs")
    fs.mkdir(name)
    try:
        yield GcsBucket(name, endpoint)
    finally:
        server.wipe()  # the emulator's own reset (gcsfs's batch delete is not emulated)


@pytest.fixture
def gcs_preconditions(gcs_bucket: GcsBucket, monkeypatch: pytest.MonkeyPatch) -> GcsBucket:
    """``gcs_bucket`` on an emulator that checks ``ifGenerationMatch`` on media and multipart uploads (the ones
    bindset's conditional writes and gcsfs's ``mode="create"`` use), atomically with the write, as GCS does."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    guard = threading.Lock()  # the emulator serves requests on threads: check and write as one step

    def checked(upload):
        def handler(request, response, storage):
            want = request.query.get("ifGenerationMatch")
            if not want:
                return upload(request, response, storage)
            name = request.query["name"][0] if "name" in request.query else request.data["meta"].get("name")
            with guard:
                try:
                    live = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
                except NotFound:
                    live = "0"
                if want[0] != live:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                    return None
                return upload(request, response, storage)

        return handler

    monkeypatch.setattr(objects, "_media_upload", checked(objects._media_upload))
    monkeypatch.setattr(objects, "_multipart_upload", checked(objects._multipart_upload))
    return gcs_bucket
