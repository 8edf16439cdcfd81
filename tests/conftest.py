"""Fixtures shared by several test modules (each defined in its own helper module)."""

from tests.gcsserver import gcs_bucket, gcs_endpoint  # noqa: F401 - pytest finds fixtures by name
from tests.s3server import moto_endpoint, s3_bucket  # noqa: F401
