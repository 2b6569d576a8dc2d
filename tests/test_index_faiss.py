"""HammingIndex(backend="faiss") returns exactly what the numpy backend returns, ties included.

Real faiss-cpu (the dev extra installs it). Codes are drawn from a few distinct values plus a
little noise, so most distances tie and the order of tied entries (insertion order) decides.
"""

import numpy as np
import pytest

from hnn_jax import HashCode, HNNError
from hnn_jax.index import BackendUnavailableError, HammingIndex

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'hnn-jax[faiss]')")

V = "s1-test0"


def tied_bits(n, nbits, seed, *, centres=6, noise=0.02):
    """[n, nbits] 0/1: copies of a few centres with a few bits flipped (many equal distances)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2, (centres, nbits), dtype=np.uint8)
    bits = base[rng.integers(0, centres, n)]
    return bits ^ (rng.random((n, nbits)) < noise).astype(np.uint8)


def pair(nbits, bits, ids=None):
    """The same codes in a numpy index and a faiss index."""
    indexes = [HammingIndex(nbits, V, backend=b) for b in ("numpy", "faiss")]
    for index in indexes:
        index.add_many(bits, ids)
    return indexes


def same_results(np_index, faiss_index, queries, cases):
    for q in queries:
        for k, radius in cases:
            expected = np_index.search(q, k, radius=radius)
            got = faiss_index.search(q, k, radius=radius)
            assert [(m.id, m.distance) for m in got] == [(m.id, m.distance) for m in expected], \
                (k, radius)
            assert got == expected  # codes and metadata too


CASES = [(1, None), (10, None), (37, None), (10, 0), (10, 3), (None, 0), (None, 4), (None, None),
         (5000, None), (3, 64)]


@pytest.mark.parametrize("nbits", [64, 128, 256, 100])
def test_faiss_equals_numpy_with_many_ties(nbits):
    bits = tied_bits(3000, nbits, nbits)
    np_index, faiss_index = pair(nbits, bits)
    assert faiss_index.backend == "faiss" and np_index.backend == "numpy"
    rng = np.random.default_rng(1)
    queries = [HashCode(b, V) for b in bits[rng.integers(0, len(bits), 6)]]  # stored codes
    queries += [HashCode(b, V) for b in tied_bits(4, nbits, 99)]             # near a centre
    same_results(np_index, faiss_index, queries, CASES)
    q = queries[0]
    np.testing.assert_array_equal(faiss_index.distances(q), np_index.distances(q))


def test_faiss_equals_numpy_after_adds_and_removals():
    nbits = 64
    bits = tied_bits(4000, nbits, 7, centres=3)
    np_index, faiss_index = pair(nbits, bits[:2500])
    rng = np.random.default_rng(2)
    queries = [HashCode(b, V) for b in bits[rng.integers(0, len(bits), 5)]]
    for step in range(3):
        drop = rng.choice(np_index.ids, 300 + step, replace=False).tolist()  # bulk and small removals
        for index in (np_index, faiss_index):
            index.remove_many(drop)
            index.remove(index.ids[step])                  # one by one too
            index.add_many(bits[2500 + 500 * step:3000 + 500 * step])
            index.add(HashCode(bits[step], V), metadata={"step": step})  # a re-added code ties
        assert faiss_index.ids == np_index.ids and len(faiss_index) == len(np_index)
        same_results(np_index, faiss_index, queries, CASES)
    for index in (np_index, faiss_index):  # everything removed, then one code again
        index.remove_many(index.ids)
        assert index.search(queries[0], 3) == []
        index.add(queries[0])
    same_results(np_index, faiss_index, queries, CASES)


def test_faiss_str_ids_batch_queries_save_and_load(tmp_path):
    nbits = 128
    bits = tied_bits(1500, nbits, 3)
    ids = [f"m{i}" for i in range(len(bits))]
    np_index, faiss_index = pair(nbits, bits, ids)
    queries = [HashCode(b, V) for b in tied_bits(20, nbits, 3)]  # a batch of queries, one by one
    same_results(np_index, faiss_index, [str(q) for q in queries], [(10, None), (None, 5)])
    faiss_index.remove_many(ids[::3])
    np_index.remove_many(ids[::3])
    path = faiss_index.save(tmp_path / "f.hnnidx")
    np_path = np_index.save(tmp_path / "n.hnnidx")
    with np.load(path) as f, np.load(np_path) as g:  # one file format, whatever the backend
        assert f.files == g.files and all(np.array_equal(f[a], g[a]) for a in f.files)
    loaded = HammingIndex.load(path, backend="faiss")
    assert loaded.backend == "faiss" and HammingIndex.load(path).backend == "numpy"
    same_results(np_index, loaded, queries[:5], CASES[:6])
    assert loaded.get("m1")[0] == np_index.get("m1")[0]


def test_faiss_index_without_known_length_and_empty():
    index = HammingIndex(backend="faiss")
    code = HashCode(np.ones(64, np.uint8), V)
    assert index.search(code) == [] and len(index) == 0
    index.add_many([code, code], ids=[5, 3])
    assert [(m.id, m.distance) for m in index.search(code, 5)] == [(5, 0), (3, 0)]


def test_unknown_backend_and_missing_faiss_are_clear_errors(monkeypatch):
    with pytest.raises(HNNError, match="backend"):
        HammingIndex(backend="annoy")
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # as if faiss-cpu were absent
    with pytest.raises(BackendUnavailableError, match=r"pip install 'hnn-jax\[faiss\]'"):
        HammingIndex(64, V, backend="faiss")
    assert HammingIndex(64, V).backend == "numpy"  # the default needs nothing more
