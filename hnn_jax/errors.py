"""One error family for every bad input the converters and the hasher can meet."""


class HNNError(Exception):
    """Base class: every expected failure of hnn-jax raises a subclass of this."""


class UnsupportedModelError(HNNError):
    """The model (or an op, format or framework feature in it) cannot be converted."""


class CorruptFileError(HNNError):
    """The file is empty, truncated, not what its suffix says, or refers outside itself."""


class ModelTooLargeError(HNNError):
    """The model exceeds a documented size limit."""


class SchemaMismatchError(HNNError):
    """A graph's feature schema or a code's version does not match what it is used with."""
