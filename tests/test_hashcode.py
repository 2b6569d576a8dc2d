"""HashCode: distances, equality, exact round trips and clear errors."""

import numpy as np
import pytest

from hnn_jax import HashCode, HNNError, SchemaMismatchError

V = "s1-test0"


def code(bits, version=V):
    return HashCode(np.array(bits, np.uint8), version)


def test_bits_len_and_hamming_distance():
    a = code([1, 0, 1, 1, 0, 0, 1, 0])
    b = code([1, 1, 1, 0, 0, 0, 1, 1])
    assert len(a) == 8
    assert a.bits.dtype == np.uint8 and a.bits.tolist() == [1, 0, 1, 1, 0, 0, 1, 0]
    assert a - b == 3 and b - a == 3 and a - a == 0
    assert isinstance(a - b, int)
    with pytest.raises(ValueError):
        a.bits[0] = 0  # codes are immutable


def test_equality_and_hash_follow_version_and_bits():
    a, same = code([1, 0] * 8), code([1, 0] * 8)
    assert a == same and hash(a) == hash(same) and len({a, same}) == 1
    assert a != code([0, 1] * 8)
    assert a != code([1, 0] * 8, version="s1-other")


@pytest.mark.parametrize("nbits", [1, 7, 16, 64, 100, 256])
def test_round_trips_are_exact(nbits):
    bits = np.random.default_rng(nbits).integers(0, 2, nbits)
    a = code(bits)
    assert HashCode.from_str(str(a)) == a
    assert HashCode.from_bytes(a.to_bytes(), version=V, nbits=nbits) == a
    assert HashCode.from_int(int(a), nbits, version=V) == a
    assert int(a) == int("".join(map(str, bits)), 2)  # first bit is the most significant


def test_text_form():
    a = code([1] * 4 + [0] * 12)
    assert str(a) == f"hnn1:{V}:16:f000"
    assert HashCode.from_str(str(a)).version == V


@pytest.mark.parametrize("text", [
    "", "hnn1:s1-test0:16", "hnn2:s1-test0:16:f000", "hnn1:s1-test0:16:f00",
    "hnn1:s1-test0:16:F000", "hnn1:s1-test0:16:f000 ", "hnn1::16:f000", "hnn1:s1:test0:16:f000",
    "hnn1:s1-test0:0:", "hnn1:s1-test0:012:f000", "hnn1:s1-test0:12:f00f", "hnn1:s1-test0:16:zz00",
])
def test_from_str_rejects_malformed_text(text):
    with pytest.raises(ValueError):
        HashCode.from_str(text)
    with pytest.raises(HNNError):
        HashCode.from_str(text)


def test_bytes_and_int_errors():
    with pytest.raises(ValueError):
        HashCode.from_bytes(b"\xff", version=V, nbits=4)  # non-zero padding bits
    with pytest.raises(ValueError):
        HashCode.from_bytes(b"\xff\xff", version=V, nbits=8)
    with pytest.raises(ValueError):
        HashCode.from_int(256, 8, version=V)
    with pytest.raises(ValueError):
        HashCode.from_int(-1, 8, version=V)
    with pytest.raises(ValueError):
        HashCode([0, 2, 1], V)
    with pytest.raises(ValueError):
        HashCode([1, 0], "bad version:")


def test_comparing_other_hashers_or_lengths_is_an_error():
    a = code([1, 0] * 8)
    with pytest.raises(SchemaMismatchError, match="different hashers"):
        a - code([1, 0] * 8, version="s1-other")
    with pytest.raises(SchemaMismatchError, match="16 vs 32"):
        a - code([1, 0] * 16)
    with pytest.raises(TypeError):
        a - 3


def test_relations_follow_the_thresholds_of_the_codes_hasher_and_length():
    from hnn_jax.hashcode import NoThresholdsError, register_thresholds, relation

    register_thresholds("test-relations", {64: (3, 11, 18), 256: (60, 95, 110)})
    a = HashCode(np.zeros(64, np.uint8), "test-relations")
    keys = [relation(d, 64, "test-relations")[0] for d in range(65)]
    assert keys[0] == keys[3] == "same-model" and keys[4] == keys[11] == "same-architecture"
    assert keys[12] == keys[18] == "same-family" and keys[19] == keys[64] == "unrelated"
    assert a.relation(HashCode(np.r_[np.ones(4), np.zeros(60)], "test-relations"))[0] == "same-architecture"
    assert relation(60, 256, "test-relations")[0] == "same-model"  # another length, its own bands
    assert relation(61, 256, "test-relations")[0] == "same-architecture"
    with pytest.raises(ValueError):
        relation(65, 64, "test-relations")
    with pytest.raises(NoThresholdsError, match="hnn-jax eval"):  # never another hasher's bands
        relation(5, 128, "test-relations")
    with pytest.raises(NoThresholdsError):
        HashCode(np.zeros(64, np.uint8), "never-measured").relation(HashCode(np.zeros(64, np.uint8), "never-measured"))


def test_the_shipped_hasher_carries_thresholds_for_every_length_it_makes():
    import json

    from hnn_jax.hashcode import SHIPPED_META, relation_thresholds

    version = json.loads(SHIPPED_META.read_text())["version"]
    for nbits in (64, 128, 256):  # read from hasher.json, without loading JAX
        bounds = relation_thresholds(version, nbits)
        assert len(bounds) == 3 and list(bounds) == sorted(bounds) and bounds[-1] < nbits
