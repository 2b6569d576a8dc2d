"""Hashing: bit-exact determinism across batches, buckets and processes; compile counts;
input validation; checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

import jraph
import numpy as np
import pytest

import hnn_jax
from hnn_jax import Hasher, HasherConfig, HashCode, HNNError, SchemaMismatchError, schema
from hnn_jax.hasher import default_hasher
from hnn_jax.padding import padded_sizes
from hnn_jax.testing.synthetic import mixed_sizes, random_graph

SMALL = HasherConfig(bits=32, hidden=32, layers=2)


@pytest.fixture(scope="module")
def small():
    return Hasher.init(SMALL, seed=3)


def test_default_hash_is_256_bits_in_two_parts_and_built_once():
    g = random_graph(0, 50)
    code = hnn_jax.hash(g)
    assert isinstance(code, HashCode) and len(code) == 256 and code.arch_bits == 48
    assert len(code.architecture) == 48 and len(code.weights) == 208
    assert default_hasher() is default_hasher()
    assert code.version == default_hasher().version
    assert code.version.startswith(f"s{hnn_jax.SCHEMA_VERSION}c2-")
    assert hnn_jax.hash([]) == []


def test_shipped_weights_are_the_network_train_default_makes():
    """train.shipped() is the recorded recipe of the shipped weights, and the one to train with."""
    import json
    from pathlib import Path

    from hnn_jax.training import train

    assert default_hasher().config == train.default().hasher == train.shipped().hasher
    recorded = json.loads((Path(__file__).parents[1] / "benchmarks/results/train_config.json").read_text())
    assert train.TrainConfig.from_dict(recorded["train"]) == train.shipped() == train.default()
    assert train.shipped().distinct_picks


@pytest.mark.slow
def test_same_graph_same_bits_alone_in_batches_and_repeated():
    graphs = mixed_sizes(24, seed=1)
    alone = [hnn_jax.hash(g) for g in graphs]
    batched = hnn_jax.hash(graphs)
    assert batched == alone
    # other neighbours, other positions, other buckets
    shuffled = [graphs[i] for i in np.random.default_rng(0).permutation(len(graphs))]
    extra = [random_graph(900 + i, 500) for i in range(6)]
    mixed = hnn_jax.hash(extra + shuffled)[len(extra):]
    assert mixed == [hnn_jax.hash(g) for g in shuffled]
    assert padded_sizes([graphs[0]]) != padded_sizes(extra + graphs)  # buckets really differ
    assert hnn_jax.hash(graphs) == batched  # repeated runs
    assert len(set(alone)) > len(alone) // 2  # not one constant code


@pytest.mark.slow
def test_pre_sign_values_identical_in_every_bucket():
    """Stricter than bits: the float32 values before the sign match exactly, so no bit can
    flip with the padding bucket, the chunk neighbours or n_graph."""
    hasher = default_hasher()
    graphs = mixed_sizes(16, seed=4)
    alone = np.stack([hasher.embed(g) for g in graphs])
    extra = [random_graph(900 + i, 500) for i in range(6)]
    np.testing.assert_array_equal(hasher.embed(graphs), alone)
    np.testing.assert_array_equal(hasher.embed(extra + graphs[::-1])[len(extra):], alone[::-1])
    wide = Hasher(hasher.model, node_budget=1 << 15, edge_budget=1 << 16, max_graphs=128)
    assert wide.version == hasher.version
    np.testing.assert_array_equal(wide.embed(extra * 8 + graphs)[len(extra) * 8:], alone)
    assert padded_sizes(extra * 8 + graphs)[0] == 1 << 15
    codes = hasher.hash(graphs)
    assert [c.bits.tolist() for c in codes] == (alone >= 0).astype(int).tolist()


@pytest.mark.integration
def test_same_bits_in_a_fresh_process():
    graphs = [random_graph(i) for i in range(4)]
    script = (
        "import hnn_jax; from hnn_jax.testing.synthetic import random_graph; "
        "print('\\n'.join(str(c) for c in hnn_jax.hash([random_graph(i) for i in range(4)])))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == [str(c) for c in hnn_jax.hash(graphs)]


@pytest.mark.slow
def test_each_bucket_compiles_once(small):
    graphs = mixed_sizes(50, seed=2, low=5, high=700)
    one_by_one = [small.hash(g) for g in graphs]
    batched = small.hash(graphs)
    compiled = small.trace_count
    assert batched == one_by_one
    assert 1 < compiled <= 12, compiled
    small.hash(graphs)
    small.hash(graphs[::-1])
    for g in graphs[:10]:
        small.hash(g)
    assert small.trace_count == compiled  # nothing new to compile


def test_large_batches_are_chunked(small):
    before = small.trace_count
    codes = small.hash([random_graph(i, 300) for i in range(40)])
    assert len(codes) == 40 and small.trace_count - before <= 2


def test_hasher_is_isolated_from_its_model(small):
    g = random_graph(8, 40)
    before = small.embed(g)
    copy = small.model
    copy.to_bits.kernel[...] = 0.0
    np.testing.assert_array_equal(small.embed(g), before)
    assert Hasher(copy).version != small.version


def test_other_seed_other_version(small):
    other = Hasher.init(SMALL, seed=4)
    g = random_graph(7, 80)
    assert other.version != small.version
    with pytest.raises(SchemaMismatchError, match="different hashers"):
        other.hash(g) - small.hash(g)


def _bad(field, value):
    return random_graph(3, 30)._replace(**{field: value})


@pytest.mark.parametrize("graph, match", [
    (random_graph(3, 30, version=1), f"schema version 1, expected {schema.SCHEMA_VERSION}"),
    (_bad("nodes", np.zeros((30, 60), np.float32)), r"node features have shape \(30, 60\)"),
    (_bad("edges", np.zeros((0, 5), np.float32)), "edge features"),
    (_bad("globals", np.zeros((1, 4), np.float32)), "global features"),
])
def test_schema_mismatch_says_what_differs(small, graph, match):
    with pytest.raises(SchemaMismatchError, match=match):
        small.hash(graph)
    with pytest.raises(SchemaMismatchError, match="graph 1"):
        small.hash([random_graph(1, 20), graph])


def test_malformed_inputs_raise_hnn_error(small):
    g = random_graph(3, 30)
    nan_nodes = g.nodes.copy()
    nan_nodes[2, 5] = np.nan
    big_op = g.nodes.copy()
    big_op[0, 0] = schema.VOCAB_SIZE
    bad = [
        {"nodes": g.nodes}, np.zeros((3, 64)), "model.onnx", [g, "x"],
        jraph.batch_np([g, g]), g._replace(globals=None), g._replace(nodes=nan_nodes),
        g._replace(nodes=big_op), g._replace(senders=g.senders + 100),
        g._replace(n_node=np.array([31], np.int32)),
        g._replace(senders=g.senders.astype(np.float32)),
    ]
    for item in bad:
        with pytest.raises(HNNError, match=r"expected a jraph|graph \d+: "):
            small.hash(item)


def test_checkpoint_round_trip_gives_identical_codes(small, tmp_path):
    graphs = mixed_sizes(6, seed=5)
    small.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "hasher.json").read_text())
    assert meta["bits"] == 32 and meta["schema_version"] == schema.SCHEMA_VERSION
    assert meta["config"] == SMALL.to_dict() and meta["version"] == small.version
    loaded = Hasher.load(tmp_path / "ckpt")
    assert loaded.config == SMALL and loaded.version == small.version
    assert loaded.hash(graphs) == small.hash(graphs)
    small.save(tmp_path / "ckpt")  # overwriting an existing checkpoint works
    assert Hasher.load(tmp_path / "ckpt", bits=32, config=SMALL).version == small.version


def _tamper(directory, **changes):
    path = directory / "hasher.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_checkpoint_mismatches_say_what_differs(small, tmp_path):
    d = tmp_path / "ckpt"
    small.save(d)
    with pytest.raises(SchemaMismatchError, match="32-bit codes, expected 64"):
        Hasher.load(d, bits=64)
    with pytest.raises(SchemaMismatchError, match=r"layers=2 \(expected 4\)"):
        Hasher.load(d, config=HasherConfig(bits=32, hidden=32, layers=4))
    shipped = Path(hnn_jax.__file__).parent / "weights" / "default"  # a weight part there, none expected
    with pytest.raises(SchemaMismatchError, match=r"instance_bits=208 \(expected 0\)"):
        Hasher.load(shipped, config=HasherConfig())

    _tamper(d, config={**SMALL.to_dict(), "bits": 64}, bits=64)
    with pytest.raises(SchemaMismatchError, match=r"to_bits/kernel: checkpoint has float32\[32, 32\]"):
        Hasher.load(d)

    _tamper(d, config=SMALL.to_dict(), bits=32, version="s1-000000000000")
    with pytest.raises(SchemaMismatchError, match="fingerprint"):
        Hasher.load(d)

    _tamper(d, version=small.version, schema_version=schema.SCHEMA_VERSION + 1)
    with pytest.raises(SchemaMismatchError, match=f"schema version {schema.SCHEMA_VERSION}"):
        Hasher.load(d)

    with pytest.raises(HNNError, match="no hasher checkpoint"):
        Hasher.load(tmp_path / "missing")


def test_longer_codes_are_refused_and_shorter_weight_parts_are_prefixes():
    """The default is the shortest length whose weight part keeps chance matches below 1e-6; the
    weight part is exact in any batch; lengths the hasher cannot make are refused."""
    from hnn_jax import weightcode

    hasher = default_hasher()
    assert hasher.lengths == (256,)
    graphs = mixed_sizes(8, seed=7)
    codes = hnn_jax.hash(graphs)
    assert [c.bits[48:].tolist() for c in codes] == weightcode.weight_bits(graphs, 208).tolist()
    assert hasher.embed(graphs).shape == (8, 256)
    with pytest.raises(HNNError, match="lengths are 256"):
        hnn_jax.hash(graphs[0], bits=64)
    with pytest.raises(HNNError, match="no weight part"):
        Hasher.init(SMALL).hash(graphs[0], bits=64)


def test_measured_relations_travel_with_the_checkpoint(small, tmp_path):
    from hnn_jax.hashcode import Bands, WeightBand

    hasher = Hasher.init(HasherConfig(bits=32, hidden=16, layers=1, instance_bits=16), seed=11)
    hasher.set_relations(Bands((1, 1, 4), {16: WeightBand(2, 1e6, 1e6, 500)}))
    hasher.save(tmp_path / "ckpt")
    loaded = Hasher.load(tmp_path / "ckpt")
    assert loaded.relations == hasher.relations
    a, b = loaded.hash([random_graph(1, 30), random_graph(2, 30)])
    assert a.relation(a)[0] == "same-model" and a.compare(b).chance == hasher.relations.weights[16].chance(
        a.distances(b).weights, 16)
    _tamper(tmp_path / "ckpt", relations={"architecture": [1, 9, 2], "weights": {}})
    with pytest.raises(HNNError, match="ascending"):
        Hasher.load(tmp_path / "ckpt")
