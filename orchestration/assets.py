"""The Airflow Asset that links the two DAGs: `bindset_dataset_build` updates it, `bindset_train` runs on it.

The URI names the dataset, not a path: DATA_ROOT is a run-time setting, so each event's ``extra`` carries
``version_id`` and ``path`` (DATA_ROOT/versions/<id>) of the version it announces. The ``x-`` scheme marks
a scheme of our own, which Airflow stores as given.
"""

from __future__ import annotations

from airflow.sdk import Asset

DATASET = Asset(name="bindset_dataset", uri="x-bindset://dataset", group="bindset")
