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


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[tuple[str, object]]:
    """(``http://127.0.0.1:PORT``, the server) of an emulator that lives for the test session."""
    import gcsfs  # noqa: F401 - the dev group installs gcsfs; imported here so a missing one fails, not skips
    from gcp_storage_emulator.server import create_server

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
