"""Fixtures shared by several test modules (each defined in its own helper module)."""

from tests.s3server import moto_endpoint, s3_bucket  # noqa: F401 - pytest finds fixtures by name
