"""HammingIndex: exact nearest-neighbour search over HashCodes by Hamming distance.

Codes are packed into 64-bit words, one contiguous uint64 column per word position, so a query is
one XOR and one popcount (``np.bitwise_count``) per word over the whole column, then a histogram of
the distances picks the k-th smallest distance in linear time. Results are exact, and ties are
returned in insertion order (an id that is removed and added again counts as newly inserted).

Per entry the index holds the packed words and nothing else while ids are the auto-assigned
0, 1, 2, ... (the row numbers, not stored until an entry is removed or an id breaks the sequence);
other ids are one numpy array, and metadata a dict by row holding only the entries that have some.
So a hub-sized index of auto ids costs the packed codes alone.

Backends (a runtime choice, never stored in the file): ``"numpy"`` (the default) scans the columns
as above; ``"faiss"`` (``pip install 'hnn-jax[faiss]'``) keeps the codes in a faiss
``IndexBinaryFlat`` instead (one row of little-endian words per code; ``_words`` is a strided view
of it, so the codes are held once) and searches with its compiled popcount scans: ``search``
(k nearest) gives the k-th smallest distance, ``range_search`` every entry within a distance, and
the hits are re-ordered by (distance, insertion order), so both backends return identical lists.

One index holds codes of a single hasher: the first code added fixes the code length, layout
(architecture bits) and version, and adding or querying with a code of another length or version
raises SchemaMismatchError. ``search(order="architecture")`` ranks by the architecture part's
distance first and the weight part's second ("find this model's relatives"), ``order="weights"``
the other way round ("find copies of this model"); every Match carries both distances and the
chance that independent models lie that close.

File format (``save``/``load``): one uncompressed ``.npz`` (a zip, read without pickle) holding
``header`` (JSON text: format name, ``format_version``, ``nbits``, ``arch_bits``, ``code_version``,
``count``, ``id_kind``, ``next_auto_id``; version 1 files, of codes without parts, lack
``arch_bits``), ``words`` (uint64, shape [words per code, count], big-endian
word = the code's bits most significant first, padding bits zero), ``ids`` (int64 or unicode) and
``metadata`` (JSON text: ``[[row, {...}], ...]`` for the entries that have metadata).
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hnn_jax.errors import (BackendUnavailableError, CorruptFileError, DuplicateIdError, HNNError, IndexFormatError,
                            SchemaMismatchError, UnknownIdError)
from hnn_jax.hashcode import Bands, Distances, HashCode, shipped_bands

FORMAT = "hnn-jax-index"
FORMAT_VERSION = 2  # 2: arch_bits in the header (code v2)
ORDERS = ("total", "architecture", "weights")
_MAX_BITS = 65535  # distances are accumulated in uint16


BACKENDS = ("numpy", "faiss")
# OpenMP threads per faiss search: one query is one scan, which one core does at memory speed
# (10M 64-bit codes: k nearest ~9 ms, range ~5 ms); 2 threads on a busy 2-core machine took
# 20-1,200 ms as the threads waited on each other.
_FAISS_THREADS = 1


def _faiss_module():
    try:
        import faiss
    except ImportError:
        raise BackendUnavailableError(
            "HammingIndex(backend='faiss') needs the faiss-cpu package: "
            "pip install 'hnn-jax[faiss]'") from None
    return faiss


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
            self._code = HashCode(_unpack_words(self._words, self._nbits), self._version, self._arch_bits)
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


def _words_per_code(nbits: int) -> int:
    return -(-nbits // 64)


def _pack_bits(bits: np.ndarray, nwords: int) -> np.ndarray:
    """[m, nbits] 0/1 -> [nwords, m] uint64; each word holds 64 bits, most significant first."""
    m, nbits = bits.shape
    if nbits != nwords * 64:
        padded = np.zeros((m, nwords * 64), np.uint8)
        padded[:, :nbits] = bits
        bits = padded
    words = np.packbits(bits, axis=1).view(">u8").astype(np.uint64)
    return np.ascontiguousarray(words.T)


def _unpack_words(words: np.ndarray, nbits: int) -> np.ndarray:
    """[nwords] uint64 -> [nbits] 0/1 (inverse of _pack_bits for one code)."""
    return np.unpackbits(np.asarray(words, np.uint64).astype(">u8").view(np.uint8))[:nbits]


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
        raise HNNError(f"{where}: metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise HNNError(f"{where}: metadata is not JSON-serialisable: {e}") from None


def _id_kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        raise HNNError(f"ids must be str or int, got bool {value!r}")
    if isinstance(value, (int, np.integer)):
        if not -2**63 <= int(value) < 2**63:
            raise HNNError(f"integer ids must fit in int64, got {value}")
        return "int"
    if isinstance(value, str):
        return "str"
    raise HNNError(f"ids must be str or int, got {type(value).__name__}")


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
        if nbits is not None and (not isinstance(nbits, int) or not 0 < nbits <= _MAX_BITS):
            raise HNNError(f"nbits must be an int in [1, {_MAX_BITS}], got {nbits!r}")
        if version is not None:
            HashCode(np.zeros(1, np.uint8), version)  # validates the version string
        if arch_bits is not None and (nbits is None or not isinstance(arch_bits, int) or not 0 <= arch_bits <= nbits):
            raise HNNError(f"arch_bits must be an int in [0, nbits] with nbits given, got {arch_bits!r}")
        if backend not in BACKENDS:
            raise HNNError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self._backend = backend
        self._faiss = None  # faiss.IndexBinaryFlat holding the codes (backend "faiss")
        if backend == "faiss":
            self._faiss_lib = _faiss_module()
            if nbits is not None:
                self._faiss = self._new_faiss(nbits)
        self._nbits = nbits
        self._arch_bits = arch_bits
        self._version = version
        self._n = 0
        self._words = np.zeros((_words_per_code(nbits) if nbits else 1, 0), np.uint64)
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
        return self._backend

    def __len__(self) -> int:
        return self._n

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
        codes = self._words.shape[0] * self._n * 8
        ids = 0 if self._ids is None else self._ids[:self._n].nbytes
        meta = sys.getsizeof(self._metadata) + sum(len(json.dumps(m)) for m in self._metadata.values())
        return codes + ids + meta

    def __repr__(self) -> str:
        return (f"HammingIndex({self._n} codes, nbits={self._nbits}, version={self._version!r}, "
                f"backend={self._backend!r})")

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
        return HashCode(_unpack_words(self._words[:, row], self._nbits), self._version, self._arch_bits)

    def _check_code(self, code, where: str) -> None:
        if not isinstance(code, HashCode):
            raise HNNError(f"{where}: expected a HashCode, got {type(code).__name__}")
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
        return _pack_bits(query.bits[None, :], self._words.shape[0])[:, 0]

    def _reserve(self, extra: int) -> None:
        """Room for `extra` more entries: numpy's word columns (faiss grows its own rows) and
        stored ids, each grown to at least double."""
        need = self._n + extra
        if self._faiss is None and need > self._words.shape[1]:
            words = np.zeros((self._words.shape[0], max(need, 2 * self._words.shape[1], 16)),
                             np.uint64)
            words[:, :self._n] = self._words[:, :self._n]
            self._words = words
        if self._ids is not None and need > self._ids.shape[0]:
            ids = np.zeros(max(need, 2 * self._ids.shape[0], 16), self._ids.dtype)
            ids[:self._n] = self._ids[:self._n]
            self._ids = ids

    def _append_words(self, words: np.ndarray) -> None:
        """Store packed codes [nwords, m] after the first self._n (ids are reserved already)."""
        m = words.shape[1]
        if self._faiss is None:
            self._words[:, self._n:self._n + m] = words
            return
        self._faiss.add(np.ascontiguousarray(words.T).view(np.uint8))
        self._sync_view()

    def _new_faiss(self, nbits: int):
        index = self._faiss_lib.IndexBinaryFlat(_words_per_code(nbits) * 64)
        index.use_heap = False  # counting k-selection: ~15% faster than the heap for one query
        return index

    def _sync_view(self) -> None:
        """Point _words at the faiss index's rows again (faiss reallocates them on add/remove)."""
        nwords, n = _words_per_code(self._nbits), self._faiss.ntotal
        rows = (self._faiss_lib.rev_swig_ptr(self._faiss.xb.data(), n * nwords * 8) if n
                else np.zeros(0, np.uint8))
        self._words = rows.view(np.uint64).reshape(n, nwords).T

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
                raise HNNError("adding a bit array needs the index's version: create it with "
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
                raise HNNError("bit array must contain only 0 and 1")
            bits = bits.astype(np.uint8, copy=False)
            nbits, version, arch_bits = bits.shape[1], self._version, self._arch_bits
            if not 0 < nbits <= _MAX_BITS:
                raise HNNError(f"codes must have 1 to {_MAX_BITS} bits, got {nbits}")
        else:
            codes = list(codes)
            for i, c in enumerate(codes):
                self._check_code(c, f"code {i}")
            for i, c in enumerate(codes):  # one hasher per batch too (index may be empty)
                if (c.version, len(c), c.arch_bits) != (codes[0].version, len(codes[0]), codes[0].arch_bits):
                    raise SchemaMismatchError(
                        f"code {i} ({len(c)} bits, version {c.version!r}) differs from code 0 "
                        f"({len(codes[0])} bits, version {codes[0].version!r})")
            if codes and len(codes[0]) > _MAX_BITS:
                raise HNNError(f"codes must have at most {_MAX_BITS} bits")
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
                raise HNNError("this index has str ids: pass ids explicitly")
            new_ids = np.arange(self._next_auto_id, self._next_auto_id + m, dtype=np.int64)
            kind = "int"
        else:
            id_list = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
            if len(id_list) != m:
                raise HNNError(f"{m} codes but {len(id_list)} ids")
            kinds = {_id_kind(i) for i in id_list}
            if len(kinds) > 1 or (self._id_kind and kinds != {self._id_kind}):
                raise HNNError(f"ids must all be of one kind (str or int); this index has "
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
                raise HNNError(f"{m} codes but {len(metas)} metadata entries")
            metas = [_check_json(meta, f"entry {i}") for i, meta in enumerate(metas)]

        # commit (nothing above changed the index)
        if self._nbits is None:
            self._nbits, self._arch_bits = nbits, arch_bits
            self._words = np.zeros((_words_per_code(nbits), 0), np.uint64)
            if self._backend == "faiss":
                self._faiss = self._new_faiss(nbits)
        self._version = version
        if self._id_kind is None:
            self._id_kind = kind
            self._ids = None if kind == "int" else np.zeros(0, object)
        if self._ids is None and not np.array_equal(new_ids, np.arange(self._n, self._n + m)):
            self._materialise_ids(self._n + m)  # the ids leave the row sequence: store them
        self._reserve(m)
        self._append_words(_pack_bits(bits, self._words.shape[0]))
        if self._ids is not None:
            self._ids[self._n:self._n + m] = new_ids
        self._metadata.update((self._n + i, meta) for i, meta in enumerate(metas) if meta is not None)
        if self._rows is not None:
            self._rows.update(zip(new_ids.tolist(), range(self._n, self._n + m)))
        self._n += m
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
        keep = np.ones(self._n, bool)
        keep[rows] = False
        n = int(keep.sum())
        if self._faiss is None:
            self._words[:, :n] = self._words[:, :self._n][:, keep]
        else:  # IndexBinaryFlat.remove_ids compacts the rows in order
            self._faiss.remove_ids(np.asarray(rows, np.int64))
            self._sync_view()
        self._materialise_ids(self._n)  # rows shift: the ids are no longer the rows
        self._ids[:n] = self._ids[:self._n][keep]
        if self._id_kind == "str":
            self._ids[n:self._n] = None
        removed = np.asarray(rows)  # sorted; a kept row moves down by the removed rows before it
        self._metadata = {r - int(np.searchsorted(removed, r)): m
                          for r, m in self._metadata.items() if keep[r]}
        self._n = n
        self._rows = None

    # ---------------------------------------------------------------- search
    def distances(self, query) -> np.ndarray:
        """Hamming distance from `query` (HashCode or its text) to every entry, in insertion
        order (uint8 for codes up to 255 bits, else uint16)."""
        q = self._query_words(query) if self._nbits is not None else None
        if q is None or self._n == 0:
            return np.zeros(0, np.uint8)
        return self._distances(q)

    def _distances(self, q: np.ndarray) -> np.ndarray:
        words = self._words
        dist = np.bitwise_count(np.bitwise_xor(words[0, :self._n], q[0]))
        if len(q) > 1:
            if self._nbits > 255:
                dist = dist.astype(np.uint16)
            for j in range(1, len(q)):
                dist += np.bitwise_count(np.bitwise_xor(words[j, :self._n], q[j]))
        return dist

    def _arch_distances(self, q: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        """The architecture part's distance from packed query `q` to the given rows (int64)."""
        arch = np.zeros(self._words[0, rows].shape, np.int64)
        for j in range(min(len(q), -(-(self._arch_bits or 0) // 64))):
            take = min(64, self._arch_bits - 64 * j)  # the word's first `take` bits (most significant)
            mask = np.uint64(((1 << take) - 1) << (64 - take))
            arch += np.bitwise_count(np.bitwise_xor(self._words[j, rows], q[j]) & mask)
        return arch

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
            raise HNNError(f"k must be a positive int or None, got {k!r}")
        if radius is not None and (isinstance(radius, bool)
                                   or not isinstance(radius, (int, np.integer)) or radius < 0):
            raise HNNError(f"radius must be a non-negative int or None, got {radius!r}")
        if order not in ORDERS:
            raise HNNError(f"order must be one of {ORDERS}, got {order!r}")
        if self._nbits is None:  # never held a code: nothing to match, nothing to check against
            if isinstance(query, str):
                query = HashCode.from_str(query)
            self._check_code(query, "query")
            return []
        if isinstance(query, str):
            query = HashCode.from_str(query)
        q = self._query_words(query)
        if order != "total" and self._arch_bits is None:
            raise HNNError(f"order={order!r} needs codes with parts; this index holds codes written "
                           "before code v2")
        if self._n == 0:
            return []
        if order == "total":
            rows, dists = self._nearest(q, k, self._nbits if radius is None else min(int(radius), self._nbits))
            arch = self._arch_distances(q, rows)
        else:
            rows, dists, arch = self._nearest_by_part(q, k, radius, order)
        ids = (rows if self._ids is None else self._ids[rows]).tolist()
        words = self._words[:, rows].T
        bands = query._bands  # the query's hasher's bands, when it carries them (HashCode.bands)
        return [Match(i, Distances(d, a, d - a), self._meta(r), w, self._nbits, self._arch_bits, self._version, bands)
                for i, d, a, r, w in zip(ids, dists.tolist(), arch.tolist(), rows.tolist(), words)]

    def _nearest(self, q: np.ndarray, k: int | None, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, total distances) of the k nearest within `limit` bits, ties in insertion order."""
        if self._faiss is not None:
            return self._faiss_search(q, k, limit)
        dist = self._distances(q)
        if k is not None and k < dist.size:
            # k-th smallest distance from a histogram (linear time, no partition/sort of n)
            counts = np.cumsum(np.bincount(dist, minlength=self._nbits + 1))
            limit = min(limit, int(np.searchsorted(counts, k)))
        if limit >= self._nbits:
            candidates = np.arange(dist.size)
        else:
            candidates = np.flatnonzero(dist <= limit)
        order = np.argsort(dist[candidates], kind="stable")  # ties keep insertion order
        if k is not None:
            order = order[:k]
        rows = candidates[order]
        return rows, dist[rows]

    def _nearest_by_part(self, q: np.ndarray, k: int | None, radius: int | None, order: str):
        """(rows, total distances, architecture distances) ranked by one part, then the other
        (a scan of every entry, on either backend: faiss ranks by the whole code only)."""
        total = self._distances(q).astype(np.int64)
        arch = self._arch_distances(q, slice(0, self._n))
        weights = total - arch
        first, second = (arch, weights) if order == "architecture" else (weights, arch)
        key = first * (self._nbits + 1) + second
        candidates = np.arange(self._n) if radius is None else np.flatnonzero(first <= radius)
        if k is not None and k < candidates.size:
            kth = np.partition(key[candidates], k - 1)[k - 1]
            candidates = candidates[key[candidates] <= kth]
        rows = candidates[np.argsort(key[candidates], kind="stable")][:k]
        return rows, total[rows], arch[rows]

    def _faiss_search(self, q: np.ndarray, k: int | None, limit: int):
        """(rows, distances) as the numpy backend finds them: faiss's k nearest give the k-th
        smallest distance (whichever of the tied entries faiss kept), range_search then finds
        every entry within it, sorted here by (distance, row)."""
        x = q.view(np.uint8)[None, :]
        faiss = self._faiss_lib
        threads = faiss.omp_get_max_threads()  # this thread's OpenMP setting, restored below
        faiss.omp_set_num_threads(_FAISS_THREADS)
        try:
            if k is not None and k < self._n:
                dist, _ = self._faiss.search(x, k)
                limit = min(limit, int(dist[0, -1]))
            _, dist, rows = self._faiss.range_search(x, limit + 1)  # strictly below the radius
        finally:
            faiss.omp_set_num_threads(threads)
        order = np.lexsort((rows, dist))
        if k is not None:
            order = order[:k]
        return rows[order], dist[order]

    # ---------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write the index to one file (atomically: a temporary file renamed over `path`)."""
        path = Path(path)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "nbits": self._nbits,
                  "arch_bits": self._arch_bits, "code_version": self._version, "count": self._n,
                  "id_kind": self._id_kind, "next_auto_id": self._next_auto_id}
        ids = self._id_array()
        if self._id_kind == "str":
            ids = np.array(ids.tolist() or [""], dtype=str)[:self._n]
        metadata = [[r, self._metadata[r]] for r in sorted(self._metadata)]
        arrays = {"header": np.array(json.dumps(header)),
                  "words": self._words[:, :self._n].astype("<u8"),
                  "ids": ids.astype("<i8") if self._id_kind != "str" else ids,
                  "metadata": np.array(json.dumps(metadata, allow_nan=False))}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path, *, nbits: int | None = None, version: str | None = None,
             backend: str = "numpy") -> HammingIndex:
        """Read a file written by save(). `nbits`/`version`, when given, are what the caller
        expects (e.g. its hasher's); an index of other codes raises SchemaMismatchError.
        `backend` as in HammingIndex() (the file is the same for both)."""
        path = Path(path)
        if not path.is_file():
            raise CorruptFileError(f"no such index file: {path}")
        if not zipfile.is_zipfile(path):
            raise CorruptFileError(f"{path} is not an hnn-jax index file (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if not isinstance(npz, np.lib.npyio.NpzFile):
                    raise ValueError("not an npz archive")
                missing = {"header", "words", "ids", "metadata"} - set(npz.files)
                if missing:
                    raise ValueError(f"missing {sorted(missing)}")
                header = json.loads(str(npz["header"]))
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise ValueError("not an hnn-jax index")
                if header.get("format_version") not in (1, FORMAT_VERSION):
                    raise IndexFormatError(
                        f"{path}: index file format version {header.get('format_version')!r}; "
                        f"this hnn-jax reads version {FORMAT_VERSION} (rebuild the index or "
                        "use the hnn-jax that wrote it)")
                words, ids = npz["words"], npz["ids"]
                metadata = json.loads(str(npz["metadata"]))
        except HNNError:
            raise
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError,
                io.UnsupportedOperation) as e:
            raise CorruptFileError(f"{path}: not a readable hnn-jax index file ({e})") from None

        try:
            n, file_bits, file_version = header["count"], header["nbits"], header["code_version"]
            id_kind = header["id_kind"]
            arch_bits = header.get("arch_bits") if header["format_version"] >= 2 else None
            if n == 0 and file_bits is None:
                return cls(nbits, version, backend=backend)
            if arch_bits is not None and not (isinstance(arch_bits, int) and 0 <= arch_bits <= file_bits):
                raise ValueError(f"bad arch_bits {arch_bits!r}")
            if not (isinstance(n, int) and n >= 0 and isinstance(file_bits, int)
                    and 0 < file_bits <= _MAX_BITS and isinstance(file_version, str)):
                raise ValueError("bad header")
            nwords = _words_per_code(file_bits)
            if words.dtype != np.dtype("<u8") or words.shape != (nwords, n):
                raise ValueError(f"words have shape {words.shape}, expected {(nwords, n)}")
            if id_kind == "int" and (ids.dtype != np.dtype("<i8") or ids.shape != (n,)):
                raise ValueError("bad int ids")
            if id_kind == "str" and (ids.dtype.kind != "U" or ids.shape != (n,)):
                raise ValueError("bad str ids")
            if id_kind not in ("int", "str") and n:
                raise ValueError(f"unknown id kind {id_kind!r}")
            pad = nwords * 64 - file_bits
            if pad and n and (words[-1] & np.uint64((1 << pad) - 1)).any():
                raise ValueError("padding bits are not zero")
            if not isinstance(metadata, list) or not all(
                    isinstance(e, list) and len(e) == 2 and isinstance(e[0], int)
                    and 0 <= e[0] < n and isinstance(e[1], dict) for e in metadata):
                raise ValueError("bad metadata")
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"{path}: damaged hnn-jax index file ({e})") from None

        if nbits is not None and nbits != file_bits:
            raise SchemaMismatchError(
                f"{path} holds {file_bits}-bit codes, expected {nbits}-bit codes")
        if version is not None and version != file_version:
            raise SchemaMismatchError(
                f"{path} holds codes of version {file_version!r}, expected {version!r}: the index "
                "was built by another hasher (rebuild it with the current one)")
        index = cls(file_bits, file_version, arch_bits=arch_bits, backend=backend)
        if index._faiss is None:
            index._words = np.ascontiguousarray(words.astype(np.uint64))
        else:
            index._append_words(words.astype(np.uint64, copy=False))
        index._n = n
        index._id_kind = id_kind
        if id_kind == "int":
            index._ids = ids.astype(np.int64)
            if np.array_equal(index._ids, np.arange(n)):
                index._ids = None  # auto ids: the rows
        else:
            index._ids = np.array(ids.tolist(), dtype=object)
        index._metadata = {row: meta for row, meta in metadata}
        index._next_auto_id = int(header.get("next_auto_id", 0))
        index._rows = None
        if index._ids is not None and (_first_duplicate(index._ids) is not None if id_kind == "int"
                                       else len(set(index._ids.tolist())) != n):
            raise CorruptFileError(f"{path}: damaged hnn-jax index file (duplicate ids)")
        return index
