"""HammingIndex: exact results against brute force, stable ties, removal, files, clear errors."""

import json
import zipfile

import numpy as np
import pytest

from hnn_jax import CorruptFileError, HashCode, HNNError, SchemaMismatchError
from hnn_jax.index import DuplicateIdError, HammingIndex, IndexFormatError, UnknownIdError

V = "s1-test0"


def random_codes(n, nbits, seed, *, clustered=False):
    """Random codes; clustered ones are near copies of a few centres, so distances tie a lot."""
    rng = np.random.default_rng(seed)
    if not clustered:
        bits = rng.integers(0, 2, (n, nbits), dtype=np.uint8)
    else:
        centres = rng.integers(0, 2, (4, nbits), dtype=np.uint8)
        bits = centres[rng.integers(0, 4, n)]
        flips = rng.random((n, nbits)) < 0.03
        bits = bits ^ flips.astype(np.uint8)
    return [HashCode(b, V) for b in bits]


def brute_force(codes, ids, query, k=None, radius=None, _cache={}):  # noqa: B006 - shared by calls on purpose
    """Reference: (distance, insertion position) sorted, filtered, truncated."""
    key = (id(codes), str(query))
    if key not in _cache:
        _cache.clear()
        _cache[key] = ranked = sorted((query - c, pos) for pos, c in enumerate(codes))
    ranked = _cache[key]
    if radius is not None:
        ranked = [(d, pos) for d, pos in ranked if d <= radius]
    if k is not None:
        ranked = ranked[:k]
    return [(ids[pos], d) for d, pos in ranked]


@pytest.mark.parametrize("nbits", [7, 64, 100, 256, 300])
@pytest.mark.parametrize("clustered", [False, True])
def test_search_equals_brute_force(nbits, clustered):
    codes = random_codes(300, nbits, seed=nbits, clustered=clustered)
    ids = [f"model-{i}" for i in range(len(codes))]
    index = HammingIndex()
    index.add_many(codes, ids)
    queries = codes[:5] + random_codes(5, nbits, seed=nbits + 1, clustered=clustered)
    for q in queries:
        dist = index.distances(q)
        assert dist.tolist() == [q - c for c in codes]
        for k in (1, 3, 10, 299, 300, 1000):
            got = [(m.id, m.distance) for m in index.search(q, k=k)]
            assert got == brute_force(codes, ids, q, k=k)
        median = int(np.median(dist))
        for radius in (0, 1, median, nbits, nbits + 5):
            got = [(m.id, m.distance) for m in index.search(q, k=None, radius=radius)]
            assert got == brute_force(codes, ids, q, radius=radius)
            got = [(m.id, m.distance) for m in index.search(q, k=7, radius=radius)]
            assert got == brute_force(codes, ids, q, k=7, radius=radius)
        assert [(m.id, m.distance) for m in index.search(q, k=None)] == brute_force(codes, ids, q)


def test_ties_follow_insertion_order_and_results_carry_codes_and_metadata():
    a = HashCode([0] * 64, V)
    b = HashCode([1] + [0] * 63, V)
    index = HammingIndex()
    index.add(b, "b2", {"n": 2})
    index.add(a, "a", {"n": 0})
    index.add(b, "b1", {"n": 1})  # equal to b2: must come after it
    index.add(b, "b0")
    got = index.search(a, k=4)
    assert [(m.id, m.distance) for m in got] == [("a", 0), ("b2", 1), ("b1", 1), ("b0", 1)]
    assert got[1].code == b and got[1].metadata == {"n": 2} and got[3].metadata is None
    # removing and re-adding an id puts it last among its ties
    index.remove("b2")
    index.add(b, "b2")
    assert [m.id for m in index.search(a, k=None)] == ["a", "b1", "b0", "b2"]
    assert [m.id for m in index.search(a, k=2)] == ["a", "b1"]


def test_query_as_text_and_metadata_is_copied():
    codes = random_codes(20, 64, seed=3)
    index = HammingIndex()
    meta = {"path": "/m/0.onnx", "tags": ["cnn", 1, None, 2.5]}
    index.add_many(codes, metadata=[meta] + [None] * 19)
    meta["path"] = "changed"
    top = index.search(str(codes[0]), k=1)[0]
    assert top.id == 0 and top.distance == 0 and top.metadata["path"] == "/m/0.onnx"
    top.metadata["path"] = "changed too"
    code, stored = index.get(0)
    assert code == codes[0] and stored == {"path": "/m/0.onnx", "tags": ["cnn", 1, None, 2.5]}


def test_auto_ids_add_remove_contains():
    codes = random_codes(10, 32, seed=4)
    index = HammingIndex()
    assert index.add_many(codes[:5]) == [0, 1, 2, 3, 4]
    assert index.add(codes[5], 10) == 10
    assert index.add(codes[6]) == 11  # auto ids continue after the largest given
    assert len(index) == 7 and 3 in index and 5 not in index and "3" not in index
    index.remove_many([1, 3])
    assert index.ids == [0, 2, 4, 10, 11] and len(index) == 5 and 3 not in index
    assert [m.id for m in index.search(codes[3], k=None, radius=0)] == []
    assert index.search(codes[4], k=1)[0].id == 4
    with pytest.raises(UnknownIdError, match="no id 3"):
        index.remove(3)
    with pytest.raises(UnknownIdError, match="no id \'zzz\'"):
        index.get("zzz")
    assert isinstance(UnknownIdError("x"), KeyError)


def test_auto_ids_cost_nothing_beyond_the_packed_codes(tmp_path):
    """A hub-sized index of auto ids holds its packed codes and no per-entry id or metadata; ids
    are stored once they leave the row sequence (a removal, a given id), and results stay exact."""
    codes = random_codes(3000, 64, seed=5, clustered=True)
    index = HammingIndex()
    index.add_many(codes[:1000])
    index.add_many(codes[1000:2000], range(1000, 2000))  # given ids that continue the rows
    index.add(codes[2000], metadata={"name": "one"})  # one entry with metadata
    packed = 2001 * 8
    assert packed <= index.nbytes <= 1.05 * packed + 512
    loaded = HammingIndex.load(index.save(tmp_path / "a.hnnidx"))
    assert loaded.nbytes == index.nbytes and loaded.get(2000)[1] == {"name": "one"}
    index.remove_many([5, 1500])
    assert index.nbytes >= packed + 1999 * 8  # ids stored now
    ids = [i for i in range(2001) if i not in (5, 1500)]
    kept = [codes[i] for i in ids]
    assert index.ids == ids and index.get(2000)[1] == {"name": "one"} and 5 not in index
    for q in codes[:4]:
        assert [(m.id, m.distance) for m in index.search(q, k=30)] == brute_force(kept, ids, q, k=30)
    assert index.add(codes[5]) == 2001  # auto ids continue after the largest


@pytest.mark.parametrize("kind", ["int", "str"])
def test_bulk_remove_then_search_equals_brute_force(kind):
    codes = random_codes(400, 64, seed=11, clustered=True)
    ids = [7 * i + 3 for i in range(400)] if kind == "int" else [f"id{i}" for i in range(400)]
    index = HammingIndex()
    index.add_many(codes, ids)
    gone = set(range(0, 400, 3))
    with pytest.raises(UnknownIdError, match="no id"):  # one unknown id: nothing is removed
        index.remove_many([ids[i] for i in gone] + [("nope" if kind == "int" else 5)])
    with pytest.raises(UnknownIdError, match="no id"):
        index.remove_many([ids[i] for i in gone] + [(1 if kind == "int" else "nope")])
    assert len(index) == 400
    index.remove_many([ids[i] for i in sorted(gone, reverse=True)])
    kept = [i for i in range(400) if i not in gone]
    assert index.ids == [ids[i] for i in kept] and len(index) == len(kept)
    assert all(ids[i] in index for i in kept) and not any(ids[i] in index for i in gone)
    kept_codes, kept_ids = [codes[i] for i in kept], [ids[i] for i in kept]
    for q in codes[:6]:
        got = [(m.id, m.distance) for m in index.search(q, k=25)]
        assert got == brute_force(kept_codes, kept_ids, q, k=25)
    with pytest.raises(DuplicateIdError, match="already in the index"):
        index.add(codes[1], ids[1])  # still present
    index.add(codes[0], ids[0])  # removed earlier: may come back
    assert index.search(codes[0], k=None, radius=0)[-1].id == ids[0]


def test_bit_array_fast_path_matches_hashcodes():
    codes = random_codes(50, 100, seed=5)
    bits = np.stack([c.bits for c in codes])
    fast = HammingIndex(100, V)
    fast.add_many(bits)
    slow = HammingIndex()
    slow.add_many(codes)
    for q in codes[:5]:
        assert fast.search(q, k=None) == slow.search(q, k=None)
    with pytest.raises(HNNError, match="version"):
        HammingIndex().add_many(bits)
    with pytest.raises(SchemaMismatchError, match="the index holds 100-bit codes"):
        fast.add_many(bits[:, :64])
    with pytest.raises(HNNError, match="0 and 1"):
        fast.add_many(bits * 2)


def test_mismatched_codes_are_refused():
    index = HammingIndex()
    index.add_many(random_codes(5, 64, seed=6))
    other_version = HashCode(np.zeros(64, np.uint8), "s1-other")
    other_length = HashCode(np.zeros(32, np.uint8), V)
    for bad in (other_version, other_length):
        with pytest.raises(SchemaMismatchError, match="code 0: code (has 32 bits|version)"):
            index.add(bad)
        with pytest.raises(SchemaMismatchError, match="query: code (has 32 bits|version)"):
            index.search(bad)
    with pytest.raises(SchemaMismatchError, match="code 1"):
        HammingIndex().add_many([HashCode([0] * 8, V), HashCode([0] * 8, "s1-x")])
    assert len(index) == 5  # nothing was added by the failed calls


def test_bad_ids_metadata_and_arguments_change_nothing():
    codes = random_codes(4, 16, seed=7)
    index = HammingIndex()
    index.add_many(codes[:2], ["a", "b"])
    with pytest.raises(DuplicateIdError, match="'a' is already"):
        index.add_many(codes[2:], ["c", "a"])
    with pytest.raises(DuplicateIdError, match="twice"):
        index.add_many(codes[2:], ["c", "c"])
    with pytest.raises(HNNError, match="one kind"):
        index.add(codes[2], 5)
    with pytest.raises(HNNError, match="pass ids"):
        index.add(codes[2])
    with pytest.raises(HNNError, match="JSON"):
        index.add(codes[2], "c", {"x": object()})
    with pytest.raises(HNNError, match="JSON"):
        index.add(codes[2], "c", {"x": float("nan")})
    with pytest.raises(HNNError, match="dict"):
        index.add(codes[2], "c", ["not", "a", "dict"])
    with pytest.raises(HNNError, match="str or int"):
        index.add(codes[2], 1.5)
    assert index.ids == ["a", "b"] and len(index) == 2
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(HNNError, match="k must"):
            index.search(codes[0], k=bad_k)
    with pytest.raises(HNNError, match="radius"):
        index.search(codes[0], radius=-1)


def test_empty_index_searches_return_nothing():
    assert HammingIndex().search(HashCode([1, 0], V), k=3) == []
    index = HammingIndex(64, V)
    assert index.search(HashCode([1] * 64, V), radius=64) == []
    with pytest.raises(SchemaMismatchError, match="query: code has 32 bits"):
        index.search(HashCode([1] * 32, V))


@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_save_load_round_trip(tmp_path, id_kind):
    codes = random_codes(200, 100, seed=8, clustered=True)
    ids = list(range(200)) if id_kind == "int" else [f"m/{i}.onnx" for i in range(200)]
    metas = [{"i": i, "name": f"é{i}"} if i % 3 == 0 else None for i in range(200)]
    index = HammingIndex()
    index.add_many(codes, ids, metas)
    index.remove_many(ids[10:20])
    path = index.save(tmp_path / "models.hnnidx")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    loaded = HammingIndex.load(path, nbits=100, version=V)
    assert loaded.ids == index.ids and loaded.nbits == 100 and loaded.version == V
    for q in codes[:30:3]:
        assert loaded.search(q, k=None) == index.search(q, k=None)
    assert loaded.get(ids[30]) == (codes[30], {"i": 30, "name": "é30"})
    # the loaded index keeps working: add, remove, auto ids
    if id_kind == "int":
        assert loaded.add(codes[10]) == 200
    else:
        loaded.add(codes[10], ids[10])
    assert loaded.search(codes[10], k=1)[0].distance == 0


def test_save_load_empty_and_typed_index(tmp_path):
    HammingIndex().save(tmp_path / "empty")
    assert len(HammingIndex.load(tmp_path / "empty")) == 0
    HammingIndex(64, V).save(tmp_path / "typed")
    typed = HammingIndex.load(tmp_path / "typed")
    assert (typed.nbits, typed.version, len(typed)) == (64, V, 0)


def test_load_refuses_other_hashers_and_damaged_files(tmp_path):
    index = HammingIndex()
    index.add_many(random_codes(10, 64, seed=9))
    path = index.save(tmp_path / "i.hnnidx")
    with pytest.raises(SchemaMismatchError, match="32-bit"):
        HammingIndex.load(path, nbits=32)
    with pytest.raises(SchemaMismatchError, match="another hasher"):
        HammingIndex.load(path, version="s1-other")

    def rewrite(name, **changes):
        with np.load(path) as npz:
            arrays = dict(npz)
        header = json.loads(str(arrays["header"]))
        header.update(changes.pop("header", {}))
        arrays["header"] = np.array(json.dumps(header))
        arrays.update(changes)
        out = tmp_path / name
        with open(out, "wb") as f:
            np.savez(f, **arrays)
        return out

    with pytest.raises(IndexFormatError, match="format version 3"):
        HammingIndex.load(rewrite("v3", header={"format_version": 3}))
    assert issubclass(IndexFormatError, SchemaMismatchError)
    damaged = {
        "count": rewrite("count", header={"count": 11}),
        "words": rewrite("words", words=np.zeros((2, 10), "<u8")),
        "ids": rewrite("ids", ids=np.zeros(10, "<i8")),  # duplicate ids
        "meta": rewrite("meta", metadata=np.array("[[99, {}]]")),
        "format": rewrite("format", header={"format": "something-else"}),
    }
    for bad in damaged.values():
        with pytest.raises(CorruptFileError, match="damaged hnn-jax index file|not a readable hnn-jax index file"):
            HammingIndex.load(bad)
    (tmp_path / "text").write_text("not an index")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(path.read_bytes()[:200])
    with zipfile.ZipFile(tmp_path / "zip", "w") as z:
        z.writestr("hello.txt", "hi")
    for bad in ("text", "truncated", "zip", "missing"):
        with pytest.raises(CorruptFileError,
                           match="not an hnn-jax index file|not a readable hnn-jax index file|no such index file"):
            HammingIndex.load(tmp_path / bad)


def two_part_codes(n, arch_bits, weight_bits, seed):
    """Codes of a few architectures (shared architecture parts) with independent weight parts,
    and a near copy of each first weight part: distances tie a lot in each part."""
    rng = np.random.default_rng(seed)
    arch = rng.integers(0, 2, (4, arch_bits), dtype=np.uint8)[rng.integers(0, 4, n)]
    weights = rng.integers(0, 2, (n, weight_bits), dtype=np.uint8)
    weights[1::3] = weights[0::3][:len(weights[1::3])] ^ (rng.random((len(weights[1::3]), weight_bits)) < 0.05)
    return [HashCode(np.r_[a, w], V, arch_bits) for a, w in zip(arch, weights)]


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
@pytest.mark.parametrize("layout", [(48, 208), (70, 60), (3, 1)])
def test_search_by_part_ranks_one_part_then_the_other(backend, layout, tmp_path):
    codes = two_part_codes(150, *layout, seed=sum(layout))
    index = HammingIndex(backend=backend)
    index.add_many(codes, [f"m{i}" for i in range(150)])
    for q in (codes[0], codes[7], codes[77]):
        parts = np.array([q.distances(c) for c in codes])  # brute force: total, architecture, weights
        for order, key in (("architecture", (1, 2)), ("weights", (2, 1))):
            expected = sorted(range(150), key=lambda i: (parts[i][key[0]], parts[i][key[1]], i))
            found = index.search(q, k=12, order=order)
            assert [m.id for m in found] == [f"m{i}" for i in expected[:12]]
            assert [m.distances for m in found] == [tuple(parts[i]) for i in expected[:12]]
            assert all(m.distance == m.distances.total for m in found)
            radius = int(parts[expected[20]][key[0]])
            within = index.search(q, k=None, radius=radius, order=order)
            assert [m.id for m in within] == [f"m{i}" for i in expected if parts[i][key[0]] <= radius]
        total = index.search(q, k=5)  # the default: the whole code, every match with its parts
        assert [m.distances for m in total] == [q.distances(m.code) for m in total]
    path = index.save(tmp_path / "parts.hnnidx")
    loaded = HammingIndex.load(path, backend=backend)
    assert loaded.arch_bits == layout[0] and loaded.get("m3")[0] == codes[3]
    with pytest.raises(SchemaMismatchError, match="architecture bits"):
        loaded.search(HashCode(codes[0].bits, V, layout[0] - 1))
    with pytest.raises(HNNError, match="order must be one of"):
        loaded.search(codes[0], order="size")


def test_matches_carry_relation_and_chance_from_the_hashers_bands():
    from hnn_jax.hashcode import Bands, NoThresholdsError, WeightBand

    bands = Bands((2, 1, 4), {60: WeightBand(10, 1e6, 1e6, 1000)})
    codes = [HashCode(c.bits, "s1-bands", c.arch_bits, bands=bands) for c in two_part_codes(30, 70, 60, seed=3)]
    index = HammingIndex()
    index.add_many(codes)
    for m in index.search(codes[0], k=30, order="weights"):
        assert m.relation() == codes[0].relation(m.code) and m.chance == codes[0].chance(m.code)
    copy = index.search(codes[0], k=2, order="weights")[1]  # the near copy, 5% of weight bits apart
    assert copy.id == 1 and copy.relation()[0] == "same-model" and copy.chance < 1e-6
    parsed = index.search(str(codes[0]), k=2, order="weights")[1]  # a query's text carries no bands
    with pytest.raises(NoThresholdsError, match="no relation bands are known for hasher s1-bands"):
        parsed.relation()


def test_indexes_of_codes_without_parts_still_load_and_search(tmp_path):
    """An index file of format version 1 (codes of earlier releases) reads as codes without parts:
    search by the whole code works, by part is refused."""
    index = HammingIndex()
    index.add_many(random_codes(10, 64, seed=4))
    path = index.save(tmp_path / "v1.hnnidx")
    with np.load(path) as npz:
        arrays = dict(npz)
    header = json.loads(str(arrays["header"]))
    header.pop("arch_bits")
    header["format_version"] = 1
    arrays["header"] = np.array(json.dumps(header))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    old = HammingIndex.load(path)
    assert old.arch_bits is None and [m.id for m in old.search(random_codes(10, 64, seed=4)[3], k=1)] == [3]
    assert old.search(random_codes(10, 64, seed=4)[3], k=1)[0].distances is None
    with pytest.raises(HNNError, match="needs codes with parts"):
        old.search(random_codes(10, 64, seed=4)[3], order="weights")
