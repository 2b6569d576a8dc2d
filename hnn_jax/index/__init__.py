"""HammingIndex: exact nearest-neighbour search over HashCodes by Hamming distance, ties in
insertion order (an id removed and added again counts as newly inserted). The codes are packed into
64-bit words (packing.py), held and searched by a backend (backends.py) and saved as one file
(fileformat.py).

Per entry the index holds the packed words and nothing else while ids are the auto-assigned
0, 1, 2, ... (the row numbers, not stored until an entry is removed or an id breaks the sequence);
other ids are one numpy array, and metadata a dict by row holding only the entries that have some.
So a hub-sized index of auto ids costs the packed codes alone.

One index holds codes of a single hasher: the first code added fixes the code length, layout
(architecture bits) and version, and adding or querying with a code of another length or version
raises SchemaMismatchError. ``search(order="architecture")`` ranks by the architecture part's
distance first and the weight part's second ("find this model's relatives"), ``order="weights"``
the other way round ("find copies of this model"); every Match carries both distances and the
chance that independent models lie that close.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hnn_jax.errors import (BackendUnavailableError, CorruptFileError, DuplicateIdError, IndexFormatError,
                            InvalidArgumentError, SchemaMismatchError, UnknownIdError)
from hnn_jax.hashcode import Bands, Distances, HashCode, shipped_bands
from hnn_jax.index import fileformat
from hnn_jax.index.backends import BACKENDS, new_backend
from hnn_jax.index.fileformat import FORMAT, FORMAT_VERSION
from hnn_jax.index.packing import MAX_BITS, hamming_distances, pack_bits, prefix_distances, unpack_words, words_per_code

__all__ = ["BACKENDS", "FORMAT", "FORMAT_VERSION", "ORDERS", "BackendUnavailableError", "DuplicateIdError",
           "HammingIndex", "IndexFormatError", "Match", "UnknownIdError"]

ORDERS = ("total", "architecture", "weights")


class Match:
    """One search result: `id`, `distance` (bits, in all), `distances` (total, architecture,
    weights; None for codes without parts), `metadata` (a copy, or None), `chance` (see below) and
    `code` (the stored HashCode, decoded on first access so large result lists stay cheap).
    Relation and chance read the bands the query code carried (HashCode.bands), else the shipped
    hasher's."""

    __slots__ = ("id", "distance", "distances", "metadata", "_words", "_nbits", "_arch_bits", "_version", "_code",
                 "_bands")

    def __init__(self, id, distances: Distances, metadata, words, nbits: int, arch_bits: int | None, version: str,
                 bands: Bands | None = None):
        self.id, self.distance, self.metadata = id, distances.total, metadata
        self.distances = None if arch_bits is None else distances
        self._words, self._nbits, self._arch_bits, self._version, self._code = words, nbits, arch_bits, version, None
        self._bands = bands

    def _measured(self) -> Bands:
        return self._bands if self._bands is not None else shipped_bands(self._version)

    @property
    def code(self) -> HashCode:
        if self._code is None:
            self._code = HashCode(unpack_words(self._words, self._nbits), self._version, self._arch_bits)
        return self._code

    @property
    def chance(self) -> float:
        """The measured probability that two independent models of one architecture have weight
        parts as close as this match's to the query (hashcode.WeightBand.chance; needs the
        hasher's bands)."""
        weight_bits = self._nbits - (self._arch_bits or 0)
        if self.distances is None or not weight_bits:
            return 1.0
        return self._measured().weights_band(weight_bits).chance(self.distances.weights, weight_bits)

    def relation(self) -> tuple[str, str]:
        """(key, description) of what the match's distances suggest (HashCode.relation)."""
        return self._measured().relation(self.distances, self._arch_bits, self._nbits - self._arch_bits)

    def _key(self):
        return (self.id, self.distance, self.distances, self.metadata, self._version, self._nbits,
                self._arch_bits, tuple(self._words.tolist()))

    def __eq__(self, other):
        return self._key() == other._key() if isinstance(other, Match) else NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        parts = "" if self.distances is None else (f" (architecture {self.distances.architecture}, "
                                                   f"weights {self.distances.weights})")
        return f"Match(id={self.id!r}, distance={self.distance}{parts}, metadata={self.metadata!r})"


def _first_duplicate(values: np.ndarray):
    """Some value occurring twice in a 1-D int array, or None (sort based: numpy's hash-based
    unique is slow on millions of int64)."""
    ordered = np.sort(values)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    return ordered[same[0]].item() if len(same) else None


def _check_json(metadata, where: str):
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidArgumentError(f"{where}: metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{where}: metadata is not JSON-serialisable: {e}") from None


def _id_kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"ids must be str or int, got bool {value!r}")
    if isinstance(value, (int, np.integer)):
        if not -2**63 <= int(value) < 2**63:
            raise InvalidArgumentError(f"integer ids must fit in int64, got {value}")
        return "int"
    if isinstance(value, str):
        return "str"
    raise InvalidArgumentError(f"ids must be str or int, got {type(value).__name__}")


class HammingIndex:
    """Exact Hamming-distance index over HashCodes of one hasher.

    >>> index = HammingIndex()
    >>> index.add(code, "resnet18", {"source": "torchvision"})
    >>> index.search(query, k=5)               # 5 nearest, ties in insertion order
    >>> index.search(query, k=None, radius=4)  # everything within 4 bits
    >>> index.search(query, order="architecture")  # relatives: architecture first, then weights
    >>> index.search(query, order="weights")       # copies: weights first
    >>> index.save("models.hnnidx"); HammingIndex.load("models.hnnidx")

    Ids are all str or all int (ints are auto-assigned 0, 1, ... when omitted); metadata are
    JSON-able dicts, stored as copies. backend="faiss" searches with faiss-cpu (same results,
    ties included; faster from about a million codes), "numpy" (default) needs nothing more.
    """

    def __init__(self, nbits: int | None = None, version: str | None = None, *,
                 arch_bits: int | None = None, backend: str = "numpy"):
        if nbits is not None and (not isinstance(nbits, int) or not 0 < nbits <= MAX_BITS):
            raise InvalidArgumentError(f"nbits must be an int in [1, {MAX_BITS}], got {nbits!r}")
        if version is not None:
            HashCode(np.zeros(1, np.uint8), version)  # validates the version string
        if arch_bits is not None and (nbits is None or not isinstance(arch_bits, int) or not 0 <= arch_bits <= nbits):
            raise InvalidArgumentError(f"arch_bits must be an int in [0, nbits] with nbits given, got {arch_bits!r}")
        # the packed codes (one-word and empty until the first code fixes the length)
        self._codes = new_backend(backend, words_per_code(nbits) if nbits else 1)
        self._nbits = nbits
        self._arch_bits = arch_bits
        self._version = version
        self._id_kind: str | None = None
        self._ids: np.ndarray | None = None  # None: the ids are the rows 0..n-1 (auto ids)
        self._metadata: dict[int, dict] = {}  # row -> metadata, for the rows that have some
        self._rows: dict | None = None  # id -> row, built on demand (get/remove/contains)
        self._next_auto_id = 0

    # ---------------------------------------------------------------- properties
    @property
    def nbits(self) -> int | None:
        """Code length in bits (None until the first code is added)."""
        return self._nbits

    @property
    def arch_bits(self) -> int | None:
        """HashCode.arch_bits of every code in the index (None until the first code is added, or
        for codes without parts)."""
        return self._arch_bits

    @property
    def version(self) -> str | None:
        """HashCode.version of every code in the index (None until the first code is added)."""
        return self._version

    @property
    def backend(self) -> str:
        """"numpy" or "faiss" (how searches run; not stored in the file)."""
        return self._codes.name

    def __len__(self) -> int:
        return self._n

    @property
    def _n(self) -> int:
        return self._codes.words.shape[1]

    def __contains__(self, id) -> bool:
        try:
            self._row(id)
        except UnknownIdError:
            return False
        return True

    @property
    def ids(self) -> list:
        """All ids, in insertion order."""
        return self._id_array().tolist()

    @property
    def nbytes(self) -> int:
        """Bytes the index holds: codes, ids (none while they are the auto-assigned 0, 1, ...)
        and metadata (approximate: the dict and its entries' JSON text)."""
        codes = self._codes.words.nbytes
        ids = 0 if self._ids is None else self._ids[:self._n].nbytes
        meta = sys.getsizeof(self._metadata) + sum(len(json.dumps(m)) for m in self._metadata.values())
        return codes + ids + meta

    def __repr__(self) -> str:
        return (f"HammingIndex({self._n} codes, nbits={self._nbits}, version={self._version!r}, "
                f"backend={self.backend!r})")

    def get(self, id) -> tuple[HashCode, dict | None]:
        """(code, metadata) stored under `id`."""
        row = self._row(id)
        return self._code(row), self._meta(row)

    # ---------------------------------------------------------------- internals
    def _meta(self, row: int) -> dict | None:
        """A copy of row's metadata (None when it has none)."""
        meta = self._metadata.get(row)
        return None if meta is None else json.loads(json.dumps(meta))

    def _id_array(self) -> np.ndarray:
        """The ids of rows 0..n-1 (an arange while they are implicit)."""
        return np.arange(self._n, dtype=np.int64) if self._ids is None else self._ids[:self._n]

    def _materialise_ids(self, capacity: int) -> None:
        """Store implicit ids (rows) explicitly, room for `capacity` entries."""
        if self._ids is None:
            self._ids = np.arange(max(capacity, self._n), dtype=np.int64)

    def _lookup(self) -> dict:
        """id -> row for str ids (int ids are looked up in the numpy array instead)."""
        if self._rows is None:
            self._rows = dict(zip(self._id_array().tolist(), range(self._n)))
        return self._rows

    def _row(self, id) -> int:
        if self._id_kind == "int" or self._id_kind is None:
            if isinstance(id, (bool, np.bool_)) or not isinstance(id, (int, np.integer)):
                raise UnknownIdError(f"no id {id!r} in the index")
            if self._ids is None:
                if 0 <= id < self._n:
                    return int(id)
                raise UnknownIdError(f"no id {id!r} in the index")
            hits = np.flatnonzero(self._ids[:self._n] == id) if -2**63 <= id < 2**63 else []
            if not len(hits):
                raise UnknownIdError(f"no id {id!r} in the index")
            return int(hits[0])
        try:
            return self._lookup()[id]
        except (KeyError, TypeError):
            raise UnknownIdError(f"no id {id!r} in the index") from None

    def _code(self, row: int) -> HashCode:
        return HashCode(unpack_words(self._codes.words[:, row], self._nbits), self._version, self._arch_bits)

    def _check_code(self, code, where: str) -> None:
        if not isinstance(code, HashCode):
            raise InvalidArgumentError(f"{where}: expected a HashCode, got {type(code).__name__}")
        if self._version is not None and code.version != self._version:
            raise SchemaMismatchError(
                f"{where}: code version {code.version!r} differs from the index's "
                f"{self._version!r}: the codes come from different hashers (rebuild the index "
                "with the current hasher)")
        if self._nbits is not None and (len(code), code.arch_bits) != (self._nbits, self._arch_bits):
            raise SchemaMismatchError(
                f"{where}: code has {len(code)} bits ({code.arch_bits} architecture bits), the index "
                f"holds {self._nbits}-bit codes ({self._arch_bits} architecture bits)")

    def _query_words(self, query) -> np.ndarray:
        if isinstance(query, str):
            query = HashCode.from_str(query)
        self._check_code(query, "query")
        return pack_bits(query.bits[None, :], words_per_code(self._nbits))[:, 0]

    def _reserve(self, extra: int) -> None:
        """Room for `extra` more stored ids (when they are stored), grown to at least double."""
        need = self._n + extra
        if self._ids is not None and need > self._ids.shape[0]:
            ids = np.zeros(max(need, 2 * self._ids.shape[0], 16), self._ids.dtype)
            ids[:self._n] = self._ids[:self._n]
            self._ids = ids

    # ---------------------------------------------------------------- adding and removing
    def add(self, code: HashCode, id=None, metadata: dict | None = None):
        """Add one code; returns its id (auto-assigned int when `id` is None)."""
        return self.add_many([code], None if id is None else [id],
                             None if metadata is None else [metadata])[0]

    def add_many(self, codes, ids: Sequence | np.ndarray | None = None,
                 metadata: Sequence[dict | None] | None = None) -> list:
        """Add codes; all-or-nothing. Returns the ids.

        `codes` is a sequence of HashCode, or (fast path, for millions of codes) a 2-D array of
        0/1 bits [m, nbits] when the index already knows its version (HammingIndex(nbits,
        version) or after a first add). `ids` defaults to consecutive ints.
        """
        if isinstance(codes, np.ndarray):
            if self._version is None:
                raise InvalidArgumentError("adding a bit array needs the index's version: create it with "
                               "HammingIndex(nbits, version) or add a HashCode first")
            bits = codes
            if bits.ndim != 2 or bits.shape[1] != (self._nbits or bits.shape[1]):
                raise SchemaMismatchError(f"bit array has shape {bits.shape}, the index holds "
                                          f"{self._nbits}-bit codes")
            if bits.dtype.kind in "ui" and bits.size:  # no temporaries the size of the input
                valid = bits.min() >= 0 and bits.max() <= 1
            else:
                valid = bits.dtype == np.bool_ or not bits.size or bool(
                    ((bits == 0) | (bits == 1)).all())
            if not valid:
                raise InvalidArgumentError("bit array must contain only 0 and 1")
            bits = bits.astype(np.uint8, copy=False)
            nbits, version, arch_bits = bits.shape[1], self._version, self._arch_bits
            if not 0 < nbits <= MAX_BITS:
                raise InvalidArgumentError(f"codes must have 1 to {MAX_BITS} bits, got {nbits}")
        else:
            codes = list(codes)
            for i, c in enumerate(codes):
                self._check_code(c, f"code {i}")
            for i, c in enumerate(codes):  # one hasher per batch too (index may be empty)
                if (c.version, len(c), c.arch_bits) != (codes[0].version, len(codes[0]), codes[0].arch_bits):
                    raise SchemaMismatchError(
                        f"code {i} ({len(c)} bits, version {c.version!r}) differs from code 0 "
                        f"({len(codes[0])} bits, version {codes[0].version!r})")
            if codes and len(codes[0]) > MAX_BITS:
                raise InvalidArgumentError(f"codes must have at most {MAX_BITS} bits")
            bits = (np.stack([c.bits for c in codes]) if codes
                    else np.zeros((0, self._nbits or 1), np.uint8))
            nbits = len(codes[0]) if codes else self._nbits
            version = codes[0].version if codes else self._version
            arch_bits = codes[0].arch_bits if codes else self._arch_bits
        m = bits.shape[0]
        if m == 0:
            return []

        # ids
        if ids is None:
            if self._id_kind == "str":
                raise InvalidArgumentError("this index has str ids: pass ids explicitly")
            new_ids = np.arange(self._next_auto_id, self._next_auto_id + m, dtype=np.int64)
            kind = "int"
        else:
            id_list = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
            if len(id_list) != m:
                raise InvalidArgumentError(f"{m} codes but {len(id_list)} ids")
            kinds = {_id_kind(i) for i in id_list}
            if len(kinds) > 1 or (self._id_kind and kinds != {self._id_kind}):
                raise InvalidArgumentError(f"ids must all be of one kind (str or int); this index has "
                               f"{self._id_kind or 'no'} ids, got {sorted(kinds)}")
            kind = kinds.pop()
            new_ids = (np.array(id_list, np.int64) if kind == "int"
                       else np.array(id_list, dtype=object))
        if ids is not None:
            self._check_new_ids(new_ids, kind)

        # metadata
        if metadata is None:
            metas = [None] * m
        else:
            metas = list(metadata)
            if len(metas) != m:
                raise InvalidArgumentError(f"{m} codes but {len(metas)} metadata entries")
            metas = [_check_json(meta, f"entry {i}") for i, meta in enumerate(metas)]

        # commit (nothing above changed the index)
        if self._nbits is None:
            self._nbits, self._arch_bits = nbits, arch_bits
            self._codes = new_backend(self.backend, words_per_code(nbits))
        self._version = version
        if self._id_kind is None:
            self._id_kind = kind
            self._ids = None if kind == "int" else np.zeros(0, object)
        n = self._n
        if self._ids is None and not np.array_equal(new_ids, np.arange(n, n + m)):
            self._materialise_ids(n + m)  # the ids leave the row sequence: store them
        self._reserve(m)
        self._codes.add(pack_bits(bits, words_per_code(nbits)))
        if self._ids is not None:
            self._ids[n:n + m] = new_ids
        self._metadata.update((n + i, meta) for i, meta in enumerate(metas) if meta is not None)
        if self._rows is not None:
            self._rows.update(zip(new_ids.tolist(), range(n, n + m)))
        if kind == "int":
            self._next_auto_id = max(self._next_auto_id, int(new_ids.max()) + 1)
        return new_ids.tolist()

    @staticmethod
    def _is_int(value) -> bool:
        return (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
                and -2**63 <= value < 2**63)

    def _check_new_ids(self, new_ids: np.ndarray, kind: str) -> None:
        """DuplicateIdError if `new_ids` repeat or clash with the index. Integer ids are checked
        with sorted numpy arrays, so millions of them need no Python object per entry; auto ids
        (always above every integer id in the index) need no check at all."""
        if kind == "int":
            dup = _first_duplicate(new_ids)
            if dup is not None:
                raise DuplicateIdError(f"id {dup!r} appears twice in the batch")
            clash = new_ids[np.isin(new_ids, self._id_array())] if self._n else new_ids[:0]
            if len(clash):
                raise DuplicateIdError(f"id {clash[0].item()!r} is already in the index")
            return
        id_list = new_ids.tolist()
        if len(set(id_list)) != len(id_list):
            seen = set()
            dup = next(i for i in id_list if i in seen or seen.add(i))
            raise DuplicateIdError(f"id {dup!r} appears twice in the batch")
        lookup = self._lookup()
        clash = next((i for i in id_list if i in lookup), None)
        if clash is not None:
            raise DuplicateIdError(f"id {clash!r} is already in the index")

    def remove(self, id) -> None:
        """Remove the entry `id` (UnknownIdError if absent)."""
        self.remove_many([id])

    def remove_many(self, ids: Iterable) -> None:
        """Remove several entries at once (one pass over the arrays); all-or-nothing."""
        ids = list(ids)
        if self._id_kind == "int" and len(ids) > 16:  # one vectorised pass instead of a scan each
            bad = next((i for i in ids if not self._is_int(i)), None)
            if bad is not None:
                raise UnknownIdError(f"no id {bad!r} in the index")
            wanted = np.array(sorted(set(ids)), np.int64)
            found = np.isin(wanted, self._id_array())
            if not found.all():
                raise UnknownIdError(f"no id {wanted[~found][0].item()!r} in the index")
            rows = np.flatnonzero(np.isin(self._id_array(), wanted)).tolist()
        else:
            rows = sorted({self._row(i) for i in ids})
        if not rows:
            return
        old_n = self._n
        keep = np.ones(old_n, bool)
        keep[rows] = False
        self._materialise_ids(old_n)  # rows shift: the ids are no longer the rows
        self._codes.remove(keep)
        n = self._n
        self._ids[:n] = self._ids[:old_n][keep]
        if self._id_kind == "str":
            self._ids[n:old_n] = None
        removed = np.asarray(rows)  # sorted; a kept row moves down by the removed rows before it
        self._metadata = {r - int(np.searchsorted(removed, r)): m
                          for r, m in self._metadata.items() if keep[r]}
        self._rows = None

    # ---------------------------------------------------------------- search
    def distances(self, query) -> np.ndarray:
        """Hamming distance from `query` (HashCode or its text) to every entry, in insertion
        order (uint8 for codes up to 255 bits, else uint16)."""
        q = self._query_words(query) if self._nbits is not None else None
        if q is None or self._n == 0:
            return np.zeros(0, np.uint8)
        return hamming_distances(self._codes.words, q, self._nbits)

    def search(self, query, k: int | None = 10, *, radius: int | None = None,
               order: str = "total") -> list[Match]:
        """The k entries nearest to `query` (a HashCode or its text form), nearest first.

        order: "total" ranks by the whole code's distance; "architecture" by the architecture
        part's, ties by the weight part's (a model's relatives); "weights" by the weight part's,
        ties by the architecture part's (copies and derivatives of a model). radius: only entries
        within that many bits of the distance ranked first. k=None: no limit (with radius: every
        entry within it). Remaining ties are ordered by insertion. Results are exact.
        """
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer))
                              or k < 1):
            raise InvalidArgumentError(f"k must be a positive int or None, got {k!r}")
        if radius is not None and (isinstance(radius, bool)
                                   or not isinstance(radius, (int, np.integer)) or radius < 0):
            raise InvalidArgumentError(f"radius must be a non-negative int or None, got {radius!r}")
        if order not in ORDERS:
            raise InvalidArgumentError(f"order must be one of {ORDERS}, got {order!r}")
        if isinstance(query, str):
            query = HashCode.from_str(query)
        if self._nbits is None:  # never held a code: nothing to match, nothing to check against
            self._check_code(query, "query")
            return []
        q = self._query_words(query)
        if order != "total" and self._arch_bits is None:
            raise InvalidArgumentError(f"order={order!r} needs codes with parts; this index holds codes written "
                           "before code v2")
        if self._n == 0:
            return []
        if order == "total":
            limit = self._nbits if radius is None else min(int(radius), self._nbits)
            rows, dists = self._codes.nearest(q, k, limit, self._nbits)
            arch = prefix_distances(self._codes.words, q, self._arch_bits, rows)
        else:
            rows, dists, arch = self._nearest_by_part(q, k, radius, order)
        ids = (rows if self._ids is None else self._ids[rows]).tolist()
        words = self._codes.words[:, rows].T
        bands = query._bands  # the query's hasher's bands, when it carries them (HashCode.bands)
        return [Match(i, Distances(d, a, d - a), self._meta(r), w, self._nbits, self._arch_bits, self._version, bands)
                for i, d, a, r, w in zip(ids, dists.tolist(), arch.tolist(), rows.tolist(), words)]

    def _nearest_by_part(self, q: np.ndarray, k: int | None, radius: int | None, order: str):
        """(rows, total distances, architecture distances) ranked by one part, then the other
        (a scan of every entry, on either backend: faiss ranks by the whole code only)."""
        total = hamming_distances(self._codes.words, q, self._nbits).astype(np.int64)
        arch = prefix_distances(self._codes.words, q, self._arch_bits, slice(None))
        weights = total - arch
        first, second = (arch, weights) if order == "architecture" else (weights, arch)
        key = first * (self._nbits + 1) + second
        candidates = np.arange(self._n) if radius is None else np.flatnonzero(first <= radius)
        if k is not None and k < candidates.size:
            kth = np.partition(key[candidates], k - 1)[k - 1]
            candidates = candidates[key[candidates] <= kth]
        rows = candidates[np.argsort(key[candidates], kind="stable")][:k]
        return rows, total[rows], arch[rows]

    # ---------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write the index to one file (fileformat.py; atomically: a temporary file renamed over
        `path`)."""
        return fileformat.write(path, fileformat.IndexFile(
            self._nbits, self._arch_bits, self._version, self._id_kind, self._next_auto_id, self._codes.words,
            self._id_array(), self._metadata))

    @classmethod
    def load(cls, path, *, nbits: int | None = None, version: str | None = None,
             backend: str = "numpy") -> HammingIndex:
        """Read a file written by save(). `nbits`/`version`, when given, are what the caller
        expects (e.g. its hasher's); an index of other codes raises SchemaMismatchError.
        `backend` as in HammingIndex() (the file is the same for both)."""
        contents = fileformat.read(path, nbits, version)
        if contents is None:
            return cls(nbits, version, backend=backend)
        index = cls(contents.nbits, contents.version, arch_bits=contents.arch_bits, backend=backend)
        index._codes.add(contents.words)
        index._id_kind = kind = contents.id_kind
        index._ids = ids = contents.ids
        if kind == "int" and np.array_equal(ids, np.arange(index._n)):
            index._ids = None  # auto ids: the rows
        index._metadata = contents.metadata
        index._next_auto_id = contents.next_auto_id
        if index._ids is not None and (_first_duplicate(ids) is not None if kind == "int"
                                       else len(set(ids.tolist())) != index._n):
            raise CorruptFileError(f"{path}: damaged hnn-jax index file (duplicate ids)")
        return index
