"""One error family for every bad input the converters and the hasher can meet: every exception
class hnn-jax raises is here, and `first_line` is how a message is shortened."""


class HNNError(Exception):
    """Base class: every expected failure of hnn-jax raises a subclass of this."""


class InvalidArgumentError(HNNError, ValueError):
    """An argument of the wrong kind or out of range (a length, a count, an option)."""


class UnsupportedModelError(HNNError):
    """The model (or an op, format or framework feature in it) cannot be converted."""


class CorruptFileError(HNNError):
    """The file is empty, truncated, not what its suffix says, or refers outside itself."""


class ModelTooLargeError(HNNError):
    """The model exceeds a documented size limit."""


class SchemaMismatchError(HNNError):
    """A graph's feature schema or a code's version does not match what it is used with."""


class MalformedCodeError(HNNError, ValueError):
    """Text, bytes or integer that do not encode a valid HashCode."""


class NoThresholdsError(HNNError, LookupError):
    """No relation bands are known for a hasher and code length."""


class UnknownIdError(HNNError, KeyError):
    """An id that is not in the index."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(HNNError, ValueError):
    """An id that is already in the index (or twice in one batch)."""


class IndexFormatError(SchemaMismatchError):
    """An index file written in a format version this hnn-jax cannot read."""


class BackendUnavailableError(HNNError, ImportError):
    """A HammingIndex backend whose package is not installed (backend="faiss" without faiss-cpu)."""


class CommandLineError(HNNError):
    """Bad command-line input found after parsing (hnn-jax exits 2): a bad option value, a folder
    where one model is wanted, or no model in the input that could be hashed."""


class InvariantError(AssertionError):
    """A canonicalisation pass broke an invariant (`canonicalize(..., check=True)`): a bug in a
    pass, not a bad model, so it is an AssertionError and not an HNNError."""


def first_line(e: BaseException) -> str:
    """An exception's first message line, or its type's name when the message is empty."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
