"""Where an index's packed codes live and how the k nearest are found (a runtime choice, never
stored in the file); both backends return identical lists, ties included. ``"numpy"`` (the
default) keeps the word columns in one growing array and scans them, then a histogram of the
distances picks the k-th smallest distance in linear time. ``"faiss"`` (``pip install
'hnn-jax[faiss]'``) keeps the codes in a faiss ``IndexBinaryFlat`` (one row of little-endian words
per code; ``words`` is a strided view of it, so the codes are held once) and searches with its
compiled popcount scans: ``search`` (k nearest) gives the k-th smallest distance (whichever of the
tied entries faiss kept), ``range_search`` every entry within it, and the hits are re-ordered by
(distance, insertion order).
"""

from typing import Protocol

import numpy as np

from hnn_jax.errors import BackendUnavailableError, InvalidArgumentError
from hnn_jax.index.packing import hamming_distances

BACKENDS = ("numpy", "faiss")
# OpenMP threads per faiss search: one query is one scan, which one core does at memory speed
# (10M 64-bit codes: k nearest ~9 ms, range ~5 ms); 2 threads on a busy 2-core machine took
# 20-1,200 ms as the threads waited on each other.
_FAISS_THREADS = 1


class Backend(Protocol):
    """The packed codes of one index, in insertion order, as `words` ([words per code, count]
    uint64; a view, replaced by each add/remove). `add` stores codes [words per code, m] after
    the others, `remove` keeps the rows where a bool mask is set, and `nearest` gives (rows,
    distances) of the k nearest (all for k=None) within `limit` bits, by (distance, row)."""

    name: str
    words: np.ndarray

    def add(self, words: np.ndarray) -> None: ...
    def remove(self, keep: np.ndarray) -> None: ...
    def nearest(self, q: np.ndarray, k: int | None, limit: int, nbits: int) -> tuple[np.ndarray, np.ndarray]: ...


def new_backend(name: str, nwords: int) -> Backend:
    """An empty backend `name` for codes of `nwords` words."""
    if name not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {name!r}")
    return NumpyBackend(nwords) if name == "numpy" else FaissBackend(nwords)


class NumpyBackend:
    name = "numpy"

    def __init__(self, nwords: int):
        self._columns = np.zeros((nwords, 0), np.uint64)  # words, then room for more
        self.words = self._columns

    def add(self, words: np.ndarray) -> None:
        n, need = self.words.shape[1], self.words.shape[1] + words.shape[1]
        if need > self._columns.shape[1]:  # grown to at least double
            columns = np.zeros((self._columns.shape[0], max(need, 2 * self._columns.shape[1], 16)), np.uint64)
            columns[:, :n] = self.words
            self._columns = columns
        self._columns[:, n:need] = words
        self.words = self._columns[:, :need]

    def remove(self, keep: np.ndarray) -> None:
        n = int(keep.sum())
        self._columns[:, :n] = self.words[:, keep]
        self.words = self._columns[:, :n]

    def nearest(self, q, k, limit, nbits):
        dist = hamming_distances(self.words, q, nbits)
        if k is not None and k < dist.size:
            # k-th smallest distance from a histogram (linear time, no partition/sort of n)
            counts = np.cumsum(np.bincount(dist, minlength=nbits + 1))
            limit = min(limit, int(np.searchsorted(counts, k)))
        if limit >= nbits:
            candidates = np.arange(dist.size)
        else:
            candidates = np.flatnonzero(dist <= limit)
        order = np.argsort(dist[candidates], kind="stable")  # ties keep insertion order
        if k is not None:
            order = order[:k]
        rows = candidates[order]
        return rows, dist[rows]


class FaissBackend:
    name = "faiss"

    def __init__(self, nwords: int):
        try:
            import faiss
        except ImportError:
            raise BackendUnavailableError(
                "HammingIndex(backend='faiss') needs the faiss-cpu package: "
                "pip install 'hnn-jax[faiss]'") from None
        self._faiss = faiss
        self._index = faiss.IndexBinaryFlat(nwords * 64)
        self._index.use_heap = False  # counting k-selection: ~15% faster than the heap for one query
        self.words = np.zeros((nwords, 0), np.uint64)

    def add(self, words: np.ndarray) -> None:
        self._index.add(np.ascontiguousarray(words.T).view(np.uint8))
        self._sync_view()

    def remove(self, keep: np.ndarray) -> None:
        self._index.remove_ids(np.flatnonzero(~keep).astype(np.int64))  # compacts the rows in order
        self._sync_view()

    def _sync_view(self) -> None:
        """Point `words` at the faiss index's rows again (faiss reallocates them on add/remove)."""
        nwords, n = self.words.shape[0], self._index.ntotal
        rows = (self._faiss.rev_swig_ptr(self._index.xb.data(), n * nwords * 8) if n
                else np.zeros(0, np.uint8))
        self.words = rows.view(np.uint64).reshape(n, nwords).T

    def nearest(self, q, k, limit, nbits):
        x = q.view(np.uint8)[None, :]
        faiss = self._faiss
        threads = faiss.omp_get_max_threads()  # this thread's OpenMP setting, restored below
        faiss.omp_set_num_threads(_FAISS_THREADS)
        try:
            if k is not None and k < self._index.ntotal:
                dist, _ = self._index.search(x, k)
                limit = min(limit, int(dist[0, -1]))
            _, dist, rows = self._index.range_search(x, limit + 1)  # strictly below the radius
        finally:
            faiss.omp_set_num_threads(threads)
        order = np.lexsort((rows, dist))
        if k is not None:
            order = order[:k]
        return rows[order], dist[order]
