"""bindset: raw multimodal recordings -> ImageBind-style paired training data, encoders and embeddings."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("bindset")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
# Readers' entry point (pipelines/dataset.py), imported on first use so that `import bindset` stays light.
_LAZY = {"open_dataset": "pipelines.dataset", "Snapshot": "pipelines.dataset"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bindset' has no attribute {name!r}")
