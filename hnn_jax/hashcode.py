"""HashCode: a fixed-length binary code tagged with the hasher that made it.

Codes from different hashers (other weights, bit count or feature schema) live in unrelated
spaces, so every comparison checks the version and length instead of returning a meaningless
distance.
"""

import functools
import json
import re
from pathlib import Path

import numpy as np

from hnn_jax.errors import HNNError, SchemaMismatchError

TEXT_PREFIX = "hnn1"
_VERSION_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_TEXT_RE = re.compile(r"hnn1:([A-Za-z0-9._-]+):([1-9][0-9]*):([0-9a-f]+)\Z")


class MalformedCodeError(HNNError, ValueError):
    """Text, bytes or integer that do not encode a valid HashCode."""


RELATIONS: tuple[tuple[str, str], ...] = (
    ("same-model", "the same model or a near copy: re-export, fp16/int8, pruning, fine-tuning or weight noise"),
    ("same-architecture", "the same architecture with other weights (or a close relative)"),
    ("same-family", "the same architecture family, another size or depth"),
    ("unrelated", "unrelated models"),
)
"""What a Hamming distance suggests about two models, as (key, description), nearest first.
Where one relation ends and the next begins is measured per hasher and per code length
(`hnn-jax eval` measures them; hasher.json stores them as "relations"), so it travels with the
hasher: `relation_thresholds(version, nbits)`."""

SHIPPED_META = Path(__file__).resolve().parent / "weights" / "default" / "hasher.json"
_THRESHOLDS: dict[tuple[str, int], tuple[int, ...]] = {}


class NoThresholdsError(HNNError, LookupError):
    """No relation thresholds are known for a hasher and code length."""


def register_thresholds(version: str, relations: dict) -> None:
    """Make the thresholds of a hasher known to this process: {nbits: [largest same-model,
    same-architecture and same-family distance]} (hasher.json's "relations")."""
    for nbits, bounds in relations.items():
        _THRESHOLDS[(version, int(nbits))] = tuple(int(b) for b in bounds)


@functools.cache
def _shipped_meta() -> dict:
    """The shipped hasher's hasher.json (read once, without loading JAX), or {} if missing."""
    return json.loads(SHIPPED_META.read_text()) if SHIPPED_META.is_file() else {}


def relation_thresholds(version: str, nbits: int) -> tuple[int, ...]:
    """The largest distance of each of the first three RELATIONS for codes of this hasher and
    length: from a hasher loaded or measured in this process, or the shipped hasher's file."""
    if (version, nbits) not in _THRESHOLDS and _shipped_meta().get("version") == version:
        register_thresholds(version, _shipped_meta().get("relations", {}))
    if (version, nbits) not in _THRESHOLDS:
        raise NoThresholdsError(
            f"no relation thresholds are known for hasher {version} at {nbits} bits: load that "
            "hasher (Hasher.load) or measure them with `hnn-jax eval ZOO --hasher DIR --save-thresholds`")
    return _THRESHOLDS[(version, nbits)]


def relation_bands(thresholds, nbits: int) -> list[tuple[str, int, int]]:
    """(RELATIONS key, lowest distance, highest distance) of each band the thresholds make."""
    bands, low = [], 0
    for high, (key, _) in zip([*thresholds, nbits], RELATIONS):
        bands.append((key, low, high))
        low = high + 1
    return bands


def relation(distance: int, nbits: int, version: str) -> tuple[str, str]:
    """(key, description) of the relation a distance suggests between two codes of `nbits` bits
    of hasher `version`, by that hasher's measured thresholds (relation_thresholds)."""
    if nbits <= 0 or not 0 <= distance <= nbits:
        raise ValueError(f"distance must be in [0, {nbits}], got {distance}")
    for bound, (key, description) in zip(relation_thresholds(version, nbits), RELATIONS):
        if distance <= bound:
            return key, description
    return RELATIONS[-1]


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise MalformedCodeError(
            f"code version must be a non-empty string of [A-Za-z0-9._-], got {version!r}")
    return version


class HashCode:
    """An immutable code of len(code) bits from one hasher.

    `a - b` is the Hamming distance; `str(code)` is "hnn1:<version>:<bits>:<hex>" and
    HashCode.from_str inverts it exactly. Bits are stored most significant first, so
    int(code), to_bytes() and the hex text all read the bit array left to right.
    """

    __slots__ = ("_bits", "_version")

    def __init__(self, bits, version: str):
        arr = np.asarray(bits)
        if arr.ndim != 1 or arr.size == 0:
            raise MalformedCodeError(f"bits must be a non-empty 1-D array, got shape {arr.shape}")
        if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
            raise MalformedCodeError("bits must all be 0 or 1")
        arr = arr.astype(np.uint8)
        arr.flags.writeable = False
        self._bits = arr
        self._version = _check_version(version)

    @property
    def bits(self) -> np.ndarray:
        """The bits as a read-only numpy uint8 array of 0/1."""
        return self._bits

    @property
    def version(self) -> str:
        """Identifies the hasher (schema version and weight fingerprint) that made this code."""
        return self._version

    def __len__(self) -> int:
        return int(self._bits.size)

    def _check_comparable(self, other: "HashCode") -> None:
        if not isinstance(other, HashCode):
            raise TypeError(f"cannot compare HashCode with {type(other).__name__}")
        if self._version != other._version:
            raise SchemaMismatchError(
                f"codes come from different hashers: version {self._version!r} vs "
                f"{other._version!r}; Hamming distance between them is meaningless")
        if len(self) != len(other):
            raise SchemaMismatchError(
                f"codes have different lengths: {len(self)} vs {len(other)} bits")

    def __sub__(self, other: "HashCode") -> int:
        """Hamming distance (number of differing bits)."""
        self._check_comparable(other)
        return int(np.count_nonzero(self._bits != other._bits))

    def relation(self, other: "HashCode") -> tuple[str, str]:
        """(key, description) of what the distance to `other` suggests (RELATIONS), by the
        thresholds measured for this code's hasher and length."""
        return relation(self - other, len(self), self._version)

    def __eq__(self, other) -> bool:
        if not isinstance(other, HashCode):
            return NotImplemented
        return self._version == other._version and np.array_equal(self._bits, other._bits)

    def __hash__(self) -> int:
        return hash((self._version, len(self), self.to_bytes()))

    def __repr__(self) -> str:
        return f"HashCode({str(self)!r})"

    def __str__(self) -> str:
        return f"{TEXT_PREFIX}:{self._version}:{len(self)}:{self.to_bytes().hex()}"

    def __int__(self) -> int:
        return int.from_bytes(self.to_bytes(), "big") >> (8 * -(-len(self) // 8) - len(self))

    def to_bytes(self) -> bytes:
        """The bits packed most significant first; the last byte is zero-padded."""
        return np.packbits(self._bits).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, *, version: str, nbits: int | None = None) -> "HashCode":
        """Inverse of to_bytes. nbits defaults to 8 * len(data); padding bits must be zero."""
        data = bytes(data)
        nbits = 8 * len(data) if nbits is None else int(nbits)
        if nbits <= 0 or len(data) != -(-nbits // 8):
            raise MalformedCodeError(f"{len(data)} bytes cannot hold exactly {nbits} bits")
        bits = np.unpackbits(np.frombuffer(data, np.uint8))
        if bits[nbits:].any():
            raise MalformedCodeError("padding bits after the last code bit must be zero")
        return cls(bits[:nbits], version)

    @classmethod
    def from_int(cls, value: int, nbits: int, *, version: str) -> "HashCode":
        """Inverse of int(code)."""
        value, nbits = int(value), int(nbits)
        if nbits <= 0 or value < 0 or value.bit_length() > nbits:
            raise MalformedCodeError(f"{value} is not an unsigned {nbits}-bit integer")
        nbytes = -(-nbits // 8)
        return cls.from_bytes((value << (8 * nbytes - nbits)).to_bytes(nbytes, "big"),
                              version=version, nbits=nbits)

    @classmethod
    def from_str(cls, text: str) -> "HashCode":
        """Inverse of str(code); rejects anything that str() would not produce."""
        match = _TEXT_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise MalformedCodeError(
                f"not a HashCode text (expected 'hnn1:<version>:<bits>:<hex>'): {text!r}")
        version, nbits, hexdigits = match.group(1), int(match.group(2)), match.group(3)
        if len(hexdigits) != 2 * -(-nbits // 8):
            raise MalformedCodeError(
                f"{nbits} bits need {2 * -(-nbits // 8)} hex digits, got {len(hexdigits)}")
        return cls.from_bytes(bytes.fromhex(hexdigits), version=version, nbits=nbits)
