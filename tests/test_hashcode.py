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
    with pytest.raises(ValueError, match="read-only"):
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
    assert str(a) == f"hnn1:{V}:16:f000"  # a code without parts keeps the earlier releases' text
    assert HashCode.from_str(str(a)).version == V


@pytest.mark.parametrize("text", [
    "", "hnn1:s1-test0:16", "hnn2:s1-test0:16:f000", "hnn1:s1-test0:16:f00",
    "hnn1:s1-test0:16:F000", "hnn1:s1-test0:16:f000 ", "hnn1::16:f000", "hnn1:s1:test0:16:f000",
    "hnn1:s1-test0:0:", "hnn1:s1-test0:012:f000", "hnn1:s1-test0:12:f00f", "hnn1:s1-test0:16:zz00",
])
def test_from_str_rejects_malformed_text(text):
    with pytest.raises(ValueError, match="not a HashCode text|hex digits|padding bits"):
        HashCode.from_str(text)
    with pytest.raises(HNNError, match="not a HashCode text|hex digits|padding bits"):
        HashCode.from_str(text)


def test_bytes_and_int_errors():
    with pytest.raises(ValueError, match="padding bits"):
        HashCode.from_bytes(b"\xff", version=V, nbits=4)  # non-zero padding bits
    with pytest.raises(ValueError, match="cannot hold exactly"):
        HashCode.from_bytes(b"\xff\xff", version=V, nbits=8)
    with pytest.raises(ValueError, match="not an unsigned 8-bit integer"):
        HashCode.from_int(256, 8, version=V)
    with pytest.raises(ValueError, match="not an unsigned 8-bit integer"):
        HashCode.from_int(-1, 8, version=V)
    with pytest.raises(ValueError, match="must all be 0 or 1"):
        HashCode([0, 2, 1], V)
    with pytest.raises(ValueError, match="code version must be"):
        HashCode([1, 0], "bad version:")


def test_comparing_other_hashers_or_lengths_is_an_error():
    a = code([1, 0] * 8)
    with pytest.raises(SchemaMismatchError, match="different hashers"):
        a - code([1, 0] * 8, version="s1-other")
    with pytest.raises(SchemaMismatchError, match="16 vs 32"):
        a - code([1, 0] * 16)
    with pytest.raises(TypeError, match="cannot compare HashCode with int"):
        a - 3


def two_part(arch, weights, version="test-relations"):
    return HashCode(np.r_[np.array(arch, np.uint8), np.array(weights, np.uint8)], version, arch_bits=len(arch))


def test_a_code_has_an_architecture_part_and_a_weight_part():
    a = two_part([1, 0, 1, 1], [0] * 12)
    b = two_part([1, 1, 1, 0], [1] * 5 + [0] * 7)
    assert str(a) == "hnn2:test-relations:4+12:b000" and HashCode.from_str(str(a)) == a
    assert a.architecture.bits.tolist() == [1, 0, 1, 1] and len(a.weights) == 12
    assert a.distances(b) == (7, 2, 5) and a - b == 7
    assert a.distances(b).architecture == a.architecture - b.architecture
    with pytest.raises(SchemaMismatchError, match="4\\+12 vs 6\\+10"):  # same length, other layout
        a - HashCode(a.bits, a.version, arch_bits=6)
    assert a != HashCode(a.bits, a.version, arch_bits=6)
    old = HashCode.from_str("hnn1:s1-test0:16:f000")  # earlier releases' text: a code without parts
    assert old.arch_bits is None and str(old) == "hnn1:s1-test0:16:f000"
    with pytest.raises(HNNError, match="before code v2"):
        _ = old.architecture
    with pytest.raises(ValueError, match="arch_bits"):
        HashCode([1, 0], V, arch_bits=3)


def test_relations_need_both_parts_and_follow_the_hashers_bands():
    from hnn_jax.hashcode import Bands, NoThresholdsError, WeightBand

    bands = Bands((1, 1, 3), {12: WeightBand(2, 1e6, 1e6, 100)})
    a = HashCode(two_part([0] * 8, [0] * 12).bits, "test-relations", 8, bands=bands)  # as its hasher made it

    def relation(arch_flips, weight_flips):
        other = two_part([1] * arch_flips + [0] * (8 - arch_flips), [1] * weight_flips + [0] * (12 - weight_flips))
        return a.relation(other)[0]

    assert relation(0, 0) == relation(1, 2) == "same-model"
    assert relation(0, 3) == relation(1, 12) == "same-architecture"  # other weights
    assert relation(2, 0) == "same-family"  # weights alike, architecture apart: not the same model
    assert relation(3, 12) == "same-family" and relation(4, 0) == "unrelated"
    near, far = a.compare(two_part([0] * 8, [1] * 2 + [0] * 10)), a.compare(two_part([0] * 8, [1] * 6 + [0] * 6))
    assert near.relation == "same-model" and near.distances == (2, 0, 2)
    assert 0 < near.chance < far.chance < 1  # the null's cdf: nearer weights, smaller chance
    assert abs(far.chance - 0.6128) < 1e-3  # a concentration of 1e6 is Binomial(12, 1/2): P(X <= 6)
    parsed = HashCode.from_str(str(a))  # the text does not carry the bands
    assert parsed == a and parsed.relation(a) == a.relation(parsed) == parsed.relation(parsed, bands=bands)
    with pytest.raises(NoThresholdsError, match="hnn-jax eval"):  # no global registry: nothing to find
        parsed.relation(HashCode.from_str(str(a)))
    with pytest.raises(NoThresholdsError, match="bench_null"):  # a weight length never measured
        two_part([0] * 8, [0] * 4).relation(two_part([0] * 8, [0] * 4), bands=bands)


def test_the_weight_band_is_set_by_the_widest_measured_null():
    from hnn_jax.hashcode import fit_weight_band

    rng = np.random.default_rng(0)
    binomial = rng.binomial(208, 0.5, 20000)
    band = fit_weight_band([binomial], 208)
    assert band.chance(band.same_model, 208) <= 1e-6 < band.chance(band.same_model + 1, 208)
    assert 60 <= band.same_model <= 75  # Binomial(208, 1/2) crosses 1e-6 near 69
    # two independent models that agree on more bits than coin flips do (few tensors read):
    # the band moves down to keep the chance below 1e-6 for them too
    wide = np.clip(np.round(104 + 13 * rng.standard_normal(20000)), 0, 208)
    both = fit_weight_band([binomial, wide], 208)
    assert both.same_model < band.same_model and both.pairs == 40000
    assert both.chance(both.same_model, 208) <= 1e-6


def test_the_shipped_hasher_carries_bands_for_every_length_it_makes():
    import json

    from hnn_jax.hashcode import SHIPPED_META, shipped_bands

    meta = json.loads(SHIPPED_META.read_text())
    measured = shipped_bands(meta["version"])  # read from hasher.json, without loading JAX
    assert measured.architecture[1] <= measured.architecture[2]
    learned = meta["config"]["bits"] - meta["config"]["instance_bits"]
    for nbits in (b for b in (64, 128, 256) if b >= meta["bits"]):
        band = measured.weights_band(nbits - learned)
        assert band.pairs >= 10000 and band.chance(band.same_model, nbits - learned) <= 1e-6
