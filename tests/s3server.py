"""A real S3 API server for tests: moto's standalone server (the one s3fs's own test-suite uses).

The server runs in this process, in a thread, on 127.0.0.1 and a free port, for the whole session, and is
stopped at the end. ``s3_bucket`` gives each test a fresh bucket and points the standard AWS environment
(``AWS_ENDPOINT_URL``, keys, region) at the server for that test only, so bindset finds it exactly as it
would find MinIO or AWS: nothing in bindset knows it is talking to a test server.

Skipped (not failed) when moto or s3fs is not installed: the default install is local-only; the test set-up
(``make test``, ``.ci/run``) installs the ``s3`` extra and moto.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-Zq8vX1"  # a distinctive value: tests check that no log holds it


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server, and the endpoint the environment now names."""

    name: str
    endpoint: str
    scheme: ClassVar[str] = "s3"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto server that lives for the test session."""
    # imported here, not skipped when missing: `make test` installs both (the dev group and the s3 extra)
    import s3fs  # noqa: F401
    from moto import server as server_mod

    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def set_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY):
    """The standard AWS variables, pointing at ``endpoint``; no config file or profile from the machine."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/bindset-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/bindset-test-aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe 169.254.169.254


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A new, empty bucket on the session's server; the AWS environment names the server for this test."""
    import boto3

    set_aws_env(monkeypatch, moto_endpoint)
    name = f"bindset-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=name)
    try:
        yield S3Bucket(name, moto_endpoint)
    finally:
        # empty and remove it, so the in-memory server does not grow over the session
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)
