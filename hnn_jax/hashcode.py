"""HashCode: a fixed-length binary code tagged with the hasher that made it.

A code has two parts (DESIGN.md, "The code's layout"): the first `arch_bits` bits are the
architecture part (learned; ops, shapes, edges, never weight values) and the rest the weight part
(an exact integer SimHash of the trained parameters, hnn_jax.weightcode). `a - b` is the total
Hamming distance, `a.distances(b)` gives each part's too, and `a.relation(b)` says "same model" only
when both parts lie within the bands measured for the code's hasher.

Codes from different hashers (other weights, bit count, layout or feature schema) live in
unrelated spaces, so every comparison checks the version, length and layout instead of returning
a meaningless distance.
"""

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hnn_jax.errors import HNNError, InvalidArgumentError, MalformedCodeError, NoThresholdsError, SchemaMismatchError

TEXT_PREFIX = "hnn2"
_VERSION_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_TEXT_RE = re.compile(r"hnn2:([A-Za-z0-9._-]+):([0-9]+)\+([0-9]+):([0-9a-f]+)\Z")
_TEXT_V1_RE = re.compile(r"hnn1:([A-Za-z0-9._-]+):([1-9][0-9]*):([0-9a-f]+)\Z")


RELATIONS: tuple[tuple[str, str], ...] = (
    ("same-model", "the same model or a near copy: re-export, fp16/int8, pruning or fine-tuning"),
    ("same-architecture", "the same architecture (or another width of it) with other weights"),
    ("same-family", "the same architecture family, another depth or layout"),
    ("unrelated", "unrelated models"),
)
"""What two codes suggest about their models, as (key, description), nearest first. Where one
relation ends and the next begins is measured per hasher (`hnn-jax eval --save-thresholds` for the
architecture part, `benchmarks/bench_null.py` for the weight part; hasher.json stores both as
"relations"), so it travels with the hasher: `Hasher.relations`, and `HashCode.bands` of the codes
it makes."""

SAME_MODEL_RATE = 1e-6
"""The largest chance, measured on independent models of one architecture, that two of them fall
in the same-model band of the weight part: what a "same model" verdict may cost."""

SHIPPED_META = Path(__file__).resolve().parent / "weights" / "default" / "hasher.json"


class Distances(NamedTuple):
    """Hamming distances between two codes: in all, and in each part."""

    total: int
    architecture: int
    weights: int


@dataclasses.dataclass(frozen=True)
class WeightBand:
    """The weight part's same-model band at one length, and the null it was set by: the weight
    distances of independent models of one architecture, fitted by a beta-binomial (the widest of
    the measured architectures'; its variance is above the binomial's where few tensors are read)."""

    same_model: int   # largest weight distance that counts as the same model
    alpha: float      # beta-binomial null over the part's bits
    beta: float
    pairs: int = 0    # independent pairs the null was measured on

    def chance(self, distance: int, nbits: int) -> float:
        """P(weight distance <= `distance`) for two independent models of one architecture."""
        if distance < 0:
            return 0.0
        if distance >= nbits:
            return 1.0
        from scipy.stats import betabinom  # lazily: scipy.stats costs ~0.3 s to import
        return float(betabinom.cdf(distance, nbits, self.alpha, self.beta))

    def to_json(self) -> dict:
        return {"same_model": self.same_model, "null_alpha": self.alpha, "null_beta": self.beta,
                "null_pairs": self.pairs}

    @classmethod
    def from_json(cls, data: dict) -> "WeightBand":
        return cls(int(data["same_model"]), float(data["null_alpha"]), float(data["null_beta"]),
                   int(data.get("null_pairs", 0)))


def fit_weight_band(null_distances, nbits: int, rate: float = SAME_MODEL_RATE) -> WeightBand:
    """The same-model band of an `nbits` weight part from measured null distances: one array per
    architecture of the weight distances between its independent models. Each is fitted by a
    beta-binomial with its mean and variance (a binomial where the variance is not above it);
    the band ends at the largest distance whose chance is <= `rate` under every fit."""
    bands = []
    for d in null_distances:
        d = np.asarray(d, np.float64)
        mean = min(max(d.mean() / nbits, 1e-6), 1 - 1e-6)
        binomial_var = nbits * mean * (1 - mean)
        rho = (d.var() / binomial_var - 1) / (nbits - 1) if d.size > 1 else 0.0  # intra-class correlation
        concentration = (1 - rho) / rho if rho > 1e-6 else 1e6     # 1e6: a binomial, for all purposes
        bands.append(WeightBand(0, float(mean * concentration), float((1 - mean) * concentration), int(d.size)))
    if not bands:
        raise HNNError("no null distances to fit the weight band to")
    same_model = -1
    while same_model + 1 < nbits and all(b.chance(same_model + 1, nbits) <= rate for b in bands):
        same_model += 1
    widest = max(bands, key=lambda b: b.chance(max(same_model + 1, 0), nbits))
    return WeightBand(same_model, widest.alpha, widest.beta, sum(b.pairs for b in bands))


@dataclasses.dataclass(frozen=True)
class Bands:
    """A hasher's measured relation bands: the largest architecture distance of the same-model,
    same-architecture and same-family relations (the architecture part has one length; a same-model
    verdict may allow more than same-architecture does, since its weights must match too), and
    the weight part's same-model band for each weight length."""

    architecture: tuple[int, int, int]
    weights: dict[int, WeightBand]

    def weights_band(self, weight_bits: int) -> WeightBand:
        """The weight part's band at this length (NoThresholdsError if it was not measured)."""
        if weight_bits not in self.weights:
            raise NoThresholdsError(
                f"no weight band was measured for a {weight_bits}-bit weight part (measured: "
                f"{sorted(self.weights) or 'none'}); measure it with benchmarks/bench_null.py --save-thresholds")
        return self.weights[weight_bits]

    def relation(self, distances: Distances, arch_bits: int, weight_bits: int) -> tuple[str, str]:
        """(key, description) of the relation two codes' part distances suggest (RELATIONS): "same
        model" needs both parts in their same-model bands; the architecture part alone places the
        rest."""
        arch = self.architecture
        if not (0 <= distances.architecture <= arch_bits and 0 <= distances.weights <= weight_bits):
            raise InvalidArgumentError(f"distances {tuple(distances)} do not fit a {arch_bits}+{weight_bits}-bit code")
        if (distances.architecture <= arch[0] and weight_bits
                and distances.weights <= self.weights_band(weight_bits).same_model):
            return RELATIONS[0]
        for bound, relation in zip(arch[1:], RELATIONS[1:3]):
            if distances.architecture <= bound:
                return relation
        return RELATIONS[-1]

    def to_json(self) -> dict:
        return {"architecture": list(map(int, self.architecture)),
                "weights": {str(n): w.to_json() for n, w in sorted(self.weights.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "Bands":
        """Read hasher.json's "relations"; ValueError/KeyError/TypeError when it is malformed."""
        arch = tuple(int(x) for x in data["architecture"])
        if len(arch) != 3 or min(arch) < 0 or not arch[0] <= arch[2] or not arch[1] <= arch[2]:
            raise InvalidArgumentError("architecture bands must be 3 distances, the same-family one (ascending) "
                                       "the largest")
        weights = {int(n): WeightBand.from_json(w) for n, w in data.get("weights", {}).items()}
        if any(not -1 <= w.same_model < n for n, w in weights.items()):
            raise InvalidArgumentError("a weight band lies outside its part's length")
        return cls(arch, weights)


@functools.cache
def _shipped_meta() -> dict:
    """The shipped hasher's hasher.json (read once, without loading JAX), or {} if missing."""
    return json.loads(SHIPPED_META.read_text()) if SHIPPED_META.is_file() else {}


def shipped_weight_bands() -> dict[int, WeightBand]:
    """The shipped hasher's weight bands. The weight part is no network's (hnn_jax.weightcode), so
    they hold for every hasher of this code layout: a hasher trained here starts with them."""
    relations = _shipped_meta().get("relations") or {}
    return Bands.from_json(relations).weights if relations else {}


def shipped_bands(version: str) -> Bands:
    """The shipped hasher's relation bands, when `version` is the shipped hasher's (codes of any
    other hasher read the bands that hasher carries: Hasher.relations, HashCode.bands)."""
    meta = _shipped_meta()
    if meta.get("version") != version or not meta.get("relations"):
        raise NoThresholdsError(
            f"no relation bands are known for hasher {version}: compare codes that hasher made in this "
            "process (Hasher.load reads its bands), pass bands=hasher.relations, or measure them with "
            "`hnn-jax eval ZOO --hasher DIR --save-thresholds`")
    return Bands.from_json(meta["relations"])


class Comparison(NamedTuple):
    """What `a.compare(b)` finds: the distances, the relation they suggest, and the chance that two
    independent models of one architecture have weight parts this close (1.0 for a code without
    a weight part)."""

    distances: Distances
    relation: str
    description: str
    chance: float

    def __str__(self) -> str:
        d = self.distances
        return (f"{self.relation}: {d.total} bits apart (architecture {d.architecture}, weights "
                f"{d.weights}); chance for independent models {format_chance(self.chance)}")


def format_chance(p: float) -> str:
    """A probability as people read it: '< 1e-15', '3.2e-07', '0.12'."""
    if p < 1e-15:
        return "< 1e-15"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}".rstrip("0").rstrip(".") if p < 1 else "1"


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise MalformedCodeError(
            f"code version must be a non-empty string of [A-Za-z0-9._-], got {version!r}")
    return version


class HashCode:
    """An immutable code of len(code) bits from one hasher: `arch_bits` architecture bits, then
    the weight part.

    `a - b` is the Hamming distance; `a.distances(b)` each part's; `str(code)` is
    "hnn2:<version>:<arch bits>+<weight bits>:<hex>" and HashCode.from_str inverts it exactly
    (it also reads the one-part "hnn1:<version>:<bits>:<hex>" of earlier releases, whose codes
    have no parts). Bits are stored most significant first, so int(code), to_bytes() and the hex
    text all read the bit array left to right.
    """

    __slots__ = ("_bits", "_version", "_arch_bits", "_bands")

    def __init__(self, bits, version: str, arch_bits: int | None = None, *, bands: Bands | None = None):
        arr = np.asarray(bits)
        if arr.ndim != 1 or arr.size == 0:
            raise MalformedCodeError(f"bits must be a non-empty 1-D array, got shape {arr.shape}")
        if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
            raise MalformedCodeError("bits must all be 0 or 1")
        if arch_bits is not None and (isinstance(arch_bits, bool) or not isinstance(arch_bits, (int, np.integer))
                                      or not 0 <= arch_bits <= arr.size):
            raise MalformedCodeError(f"arch_bits must be an int in [0, {arr.size}], got {arch_bits!r}")
        arr = arr.astype(np.uint8)
        arr.flags.writeable = False
        self._bits = arr
        self._version = _check_version(version)
        self._arch_bits = None if arch_bits is None else int(arch_bits)
        self._bands = bands

    @property
    def bits(self) -> np.ndarray:
        """The bits as a read-only numpy uint8 array of 0/1."""
        return self._bits

    @property
    def version(self) -> str:
        """Identifies the hasher (schema version and weight fingerprint) that made this code."""
        return self._version

    @property
    def bands(self) -> Bands:
        """The relation bands of the hasher that made this code: those it carried when it hashed
        (Hasher.relations), else the shipped hasher's for its version (NoThresholdsError if
        neither). They are not part of the code: equality, hashing and the text ignore them."""
        return self._bands if self._bands is not None else shipped_bands(self._version)

    @property
    def arch_bits(self) -> int | None:
        """How many leading bits are the architecture part (None: a code without parts)."""
        return self._arch_bits

    def _part(self, which: str) -> "HashCode":
        if self._arch_bits is None:
            raise HNNError(f"this code has no {which} part: it was written by a release before code v2 "
                           "(text 'hnn1:...'); hash the model again")
        part = self._bits[:self._arch_bits] if which == "architecture" else self._bits[self._arch_bits:]
        if part.size == 0:
            raise HNNError(f"this code's hasher makes no {which} part")
        return HashCode(part, f"{self._version}.{which[0]}")

    @property
    def architecture(self) -> "HashCode":
        """The architecture part (learned; reads no weight value) as a code of its own."""
        return self._part("architecture")

    @property
    def weights(self) -> "HashCode":
        """The weight part (the trained parameters' SimHash) as a code of its own."""
        return self._part("weights")

    def __len__(self) -> int:
        return int(self._bits.size)

    def _check_comparable(self, other: "HashCode") -> None:
        if not isinstance(other, HashCode):
            raise TypeError(f"cannot compare HashCode with {type(other).__name__}")
        if self._version != other._version:
            raise SchemaMismatchError(
                f"codes come from different hashers: version {self._version!r} vs "
                f"{other._version!r}; Hamming distance between them is meaningless")
        if len(self) != len(other) or self._arch_bits != other._arch_bits:
            raise SchemaMismatchError(
                f"codes have different lengths: {self._layout()} vs {other._layout()} bits")

    def _layout(self) -> str:
        return str(len(self)) if self._arch_bits is None else f"{self._arch_bits}+{len(self) - self._arch_bits}"

    def __sub__(self, other: "HashCode") -> int:
        """Hamming distance (number of differing bits)."""
        self._check_comparable(other)
        return int(np.count_nonzero(self._bits != other._bits))

    def distances(self, other: "HashCode") -> Distances:
        """(total, architecture, weights) Hamming distances to `other`."""
        self._check_comparable(other)
        if self._arch_bits is None:
            raise HNNError("codes written before code v2 (text 'hnn1:...') have no parts; hash the models again")
        differ = self._bits != other._bits
        arch = int(np.count_nonzero(differ[:self._arch_bits]))
        weights = int(np.count_nonzero(differ[self._arch_bits:]))
        return Distances(arch + weights, arch, weights)

    def bands_for(self, other: "HashCode", bands: Bands | None = None) -> Bands:
        """The bands relation and chance read for this pair: `bands` when given, else the bands
        either code carries, else the shipped hasher's for the codes' version."""
        if bands is not None:
            return bands
        return other.bands if self._bands is None and other._bands is not None else self.bands

    def relation(self, other: "HashCode", *, bands: Bands | None = None) -> tuple[str, str]:
        """(key, description) of what the two codes suggest (RELATIONS), by `bands` (default: the
        bands either code carries, else the shipped hasher's; HashCode.bands). "same-model" only
        when both parts are within their bands."""
        weight_bits = len(self) - self._arch_bits
        return self.bands_for(other, bands).relation(self.distances(other), self._arch_bits, weight_bits)

    def chance(self, other: "HashCode", *, bands: Bands | None = None) -> float:
        """The measured probability that two independent models of one architecture have weight
        parts at least as close as these two (the weight part's null in `bands`, chosen as relation
        chooses them)."""
        d = self.distances(other)
        weight_bits = len(self) - self._arch_bits
        if not weight_bits:
            return 1.0
        return self.bands_for(other, bands).weights_band(weight_bits).chance(d.weights, weight_bits)

    def compare(self, other: "HashCode", *, bands: Bands | None = None) -> Comparison:
        """Distances, relation and chance (see those methods) in one result."""
        key, description = self.relation(other, bands=bands)
        return Comparison(self.distances(other), key, description, self.chance(other, bands=bands))

    def __eq__(self, other) -> bool:
        if not isinstance(other, HashCode):
            return NotImplemented
        return (self._version == other._version and self._arch_bits == other._arch_bits
                and np.array_equal(self._bits, other._bits))

    def __hash__(self) -> int:
        return hash((self._version, self._arch_bits, len(self), self.to_bytes()))

    def __repr__(self) -> str:
        return f"HashCode({str(self)!r})"

    def __str__(self) -> str:
        if self._arch_bits is None:
            return f"hnn1:{self._version}:{len(self)}:{self.to_bytes().hex()}"
        return f"{TEXT_PREFIX}:{self._version}:{self._layout()}:{self.to_bytes().hex()}"

    def __int__(self) -> int:
        return int.from_bytes(self.to_bytes(), "big") >> (8 * -(-len(self) // 8) - len(self))

    def to_bytes(self) -> bytes:
        """The bits packed most significant first; the last byte is zero-padded."""
        return np.packbits(self._bits).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, *, version: str, nbits: int | None = None,
                   arch_bits: int | None = None) -> "HashCode":
        """Inverse of to_bytes. nbits defaults to 8 * len(data); padding bits must be zero."""
        data = bytes(data)
        nbits = 8 * len(data) if nbits is None else int(nbits)
        if nbits <= 0 or len(data) != -(-nbits // 8):
            raise MalformedCodeError(f"{len(data)} bytes cannot hold exactly {nbits} bits")
        bits = np.unpackbits(np.frombuffer(data, np.uint8))
        if bits[nbits:].any():
            raise MalformedCodeError("padding bits after the last code bit must be zero")
        return cls(bits[:nbits], version, arch_bits)

    @classmethod
    def from_int(cls, value: int, nbits: int, *, version: str, arch_bits: int | None = None) -> "HashCode":
        """Inverse of int(code)."""
        value, nbits = int(value), int(nbits)
        if nbits <= 0 or value < 0 or value.bit_length() > nbits:
            raise MalformedCodeError(f"{value} is not an unsigned {nbits}-bit integer")
        nbytes = -(-nbits // 8)
        return cls.from_bytes((value << (8 * nbytes - nbits)).to_bytes(nbytes, "big"),
                              version=version, nbits=nbits, arch_bits=arch_bits)

    @classmethod
    def from_str(cls, text: str) -> "HashCode":
        """Inverse of str(code); rejects anything that str() would not produce."""
        match = _TEXT_RE.match(text) if isinstance(text, str) else None
        if match is not None:
            version, arch_bits, nbits, hexdigits = (match.group(1), int(match.group(2)),
                                                    int(match.group(2)) + int(match.group(3)), match.group(4))
            if str(arch_bits) != match.group(2) or str(nbits - arch_bits) != match.group(3):
                match = None  # leading zeros: not what str() writes
        else:
            match = _TEXT_V1_RE.match(text) if isinstance(text, str) else None
            if match is not None:
                version, arch_bits, nbits, hexdigits = match.group(1), None, int(match.group(2)), match.group(3)
        if match is None or nbits == 0:
            raise MalformedCodeError(
                f"not a HashCode text (expected 'hnn2:<version>:<arch bits>+<weight bits>:<hex>'): {text!r}")
        if len(hexdigits) != 2 * -(-nbits // 8):
            raise MalformedCodeError(
                f"{nbits} bits need {2 * -(-nbits // 8)} hex digits, got {len(hexdigits)}")
        return cls.from_bytes(bytes.fromhex(hexdigits), version=version, nbits=nbits, arch_bits=arch_bits)
