"""hnn-jax: a perceptual hash for neural networks (HNN-Net in JAX).

Importing this package does not import torch or tensorflow; the converters load them on demand.
`hash`, `hash_files` and `Hasher` load JAX, Flax and orbax on first use, so importing stays light.
"""

import logging

from hnn_jax.config import HasherConfig
from hnn_jax.errors import (CorruptFileError, HNNError, InvalidArgumentError, ModelTooLargeError,
                            SchemaMismatchError, UnsupportedModelError)
from hnn_jax.hashcode import HashCode
from hnn_jax.schema import SCHEMA_VERSION

__version__ = "0.1.0"

# Diagnostics (where time goes, which path a model took) go to the "hnn_jax" logger and its children
# at DEBUG and INFO; the application decides whether to show them (`hnn-jax -v`). Degraded results
# (static features only, a file skipped) are warnings.warn, which callers can catch.
logging.getLogger("hnn_jax").addHandler(logging.NullHandler())

__all__ = [
    "HNNError", "InvalidArgumentError", "UnsupportedModelError", "CorruptFileError", "ModelTooLargeError",
    "SchemaMismatchError", "SCHEMA_VERSION", "__version__",
    "hash", "hash_files", "Hasher", "HashCode", "HasherConfig",
]

_LAZY = {"hash": "hasher", "Hasher": "hasher", "hash_files": "files"}  # name -> module that defines it


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"hnn_jax.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hnn_jax' has no attribute {name!r}")
