"""hnn-jax: a perceptual hash for neural networks (HNN-Net in JAX).

Importing this package does not import torch or tensorflow; the converters load them on demand.
"""

from hnn_jax.errors import (CorruptFileError, HNNError, ModelTooLargeError, SchemaMismatchError,
                            UnsupportedModelError)
from hnn_jax.schema import SCHEMA_VERSION

__version__ = "0.1.0"

__all__ = [
    "HNNError", "UnsupportedModelError", "CorruptFileError", "ModelTooLargeError",
    "SchemaMismatchError", "SCHEMA_VERSION", "__version__",
]
