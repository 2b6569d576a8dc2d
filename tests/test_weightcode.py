"""The weight part (hnn_jax.weightcode): an exact integer SimHash, the same alone or in any batch,
blind to the order in which a file lists tensors of one kind and size."""

import hashlib

import numpy as np
from hnn_jax.testing.synthetic import random_graph

from hnn_jax import schema, weightcode


def _reference(graph, nbits):
    """weight_bits restated in plain Python (and scipy's normal quantiles) for one graph: bit b
    is the sign of reading b % 2's SimHash sum."""
    sums = [_reference_sums(graph, nbits, columns, weightcode.SEED + 0x1000 * n)
            for n, columns in enumerate(weightcode.READINGS)]
    return np.array([1 if sums[b % 2][b] >= 0 else 0 for b in range(nbits)], np.uint8)


def _reference_sums(graph, nbits, columns, seed):
    from scipy.stats import norm

    def fmix(x):
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        return x ^ (x >> 16)

    classes = {schema.OP_INDEX[op]: number for number, ops in enumerate(weightcode.OP_CLASSES.values(), 1)
               for op in ops}
    groups = {}
    for row in np.asarray(graph.nodes):
        cls = classes.get(int(row[schema.NODE_OP]))
        values = [float(v) for v in row[columns]]
        if cls is None or not any(values):
            continue
        size_bits = int(np.float32(row[schema.NODE_WEIGHT_STATS.start + 2]).view(np.uint32))
        groups.setdefault(fmix(cls ^ fmix(size_bits)), []).append(values)
    total = [0] * nbits
    for signature, members in groups.items():
        m = len(members)
        for k in range(m):
            expected = norm.ppf((k + 1 - 0.375) / (m + 0.25))
            q = [int(round((sorted(col)[k] - expected) * weightcode.SCALE)) for col in zip(*members)]
            key = fmix(signature ^ fmix((k + 0x9E3779B9) & 0xFFFFFFFF))
            for b in range(nbits):
                word = fmix(key ^ fmix((seed + b) & 0xFFFFFFFF))
                total[b] += sum(v if (word >> j) & 1 else -v for j, v in enumerate(q))
    return total


def weighted_graph(seed, n_node=60):
    """A random graph whose every third node is a linear layer with one of two weight sizes."""
    g = random_graph(seed, n_node)
    nodes = g.nodes.copy()
    nodes[:, schema.NODE_OP] = schema.OP_INDEX["relu"]
    nodes[::3, schema.NODE_OP] = schema.OP_INDEX["linear"]
    nodes[::3, schema.NODE_WEIGHT_STATS.start + 2] = np.where(np.arange(len(nodes[::3])) % 2, 9.0, 5.5)
    return g._replace(nodes=nodes)


def test_weight_bits_match_a_plain_reference_alone_and_in_any_batch():
    graphs = [weighted_graph(i, 20 + 9 * i) for i in range(5)]
    batched = weightcode.weight_bits(graphs, 40)
    for k, g in enumerate(graphs):
        np.testing.assert_array_equal(batched[k], _reference(g, 40))
        np.testing.assert_array_equal(weightcode.weight_bits([g], 40)[0], batched[k])
    np.testing.assert_array_equal(weightcode.weight_bits(graphs[::-1], 40), batched[::-1])
    assert weightcode.weight_bits([], 40).shape == (0, 40)


def test_longer_weight_parts_extend_the_shorter_ones():
    graphs = [weighted_graph(i) for i in range(4)]
    long = weightcode.weight_bits(graphs, 208)
    for nbits in (16, 80):
        np.testing.assert_array_equal(long[:, :nbits], weightcode.weight_bits(graphs, nbits))
    assert len({r.tobytes() for r in long}) == 4  # other weights, other codes


def test_the_sums_are_exact_integers_and_the_bits_a_fixed_digest():
    g = weighted_graph(3)
    sums = weightcode.weight_sums([g], 208)
    assert np.array_equal(sums, np.round(sums)) and np.abs(sums).max() < 2 ** 40
    # the same bits on any machine: pin them, so a change of the scheme is a deliberate one
    # (and a new hasher version, hasher.CODE_LAYOUT)
    digest = hashlib.sha256(weightcode.weight_bits([g], 208).tobytes()).hexdigest()[:16]
    assert digest == hashlib.sha256(_reference(g, 208).tobytes()).hexdigest()[:16]


def test_independent_weights_differ_in_about_half_and_copies_keep_theirs():
    g = weighted_graph(4, 120)
    rng = np.random.default_rng(0)
    others = []
    for _ in range(20):
        nodes = g.nodes.copy()
        for columns in weightcode.READINGS:
            nodes[:, columns] = rng.standard_normal((len(nodes), 16)).astype(np.float32)
        others.append(g._replace(nodes=nodes))
    bits = weightcode.weight_bits(others, 208)
    d = (bits[:, None] != bits[None]).sum(-1)[np.triu_indices(20, 1)]
    assert 85 < d.mean() < 123 and d.min() > 60
    nodes = g.nodes.copy()
    for columns in weightcode.READINGS:
        nodes[:, columns] *= np.float32(1.0005)  # a near copy (fp16-like rounding)
    near = g._replace(nodes=nodes)
    assert (weightcode.weight_bits([g], 208) != weightcode.weight_bits([near], 208)).sum() <= 2


def test_the_order_of_a_groups_tensors_does_not_matter_and_a_dropped_one_moves_its_group_only():
    """A file that lists tensors of one class and size in another order gives the same bits; a
    tensor that a tool drops changes its own group's rows, not the other groups'."""
    g = weighted_graph(5, 90)
    linear = np.flatnonzero(g.nodes[:, schema.NODE_OP] == schema.OP_INDEX["linear"])
    nodes = g.nodes.copy()
    nodes[linear] = nodes[linear[::-1]]  # the same tensors, listed the other way round
    np.testing.assert_array_equal(weightcode.weight_sums([g._replace(nodes=nodes)], 208),
                                  weightcode.weight_sums([g], 208))
    q, keys = weightcode.fingerprints(g)
    first_large = linear[g.nodes[linear, schema.NODE_WEIGHT_STATS.start + 2] == 9.0][0]
    dropped = g.nodes.copy()
    dropped[first_large, schema.NODE_OP] = schema.OP_INDEX["reshape"]
    q2, keys2 = weightcode.fingerprints(g._replace(nodes=dropped))
    kept = dict(zip(keys2.tolist(), map(tuple, q2)))
    small = np.count_nonzero(g.nodes[linear, schema.NODE_WEIGHT_STATS.start + 2] != 9.0)
    assert sum(kept.get(k) == tuple(v) for k, v in zip(keys.tolist(), q)) == small


def test_norm_scales_and_constant_tensors_are_left_out():
    g = weighted_graph(6)
    nodes = g.nodes.copy()
    nodes[1, schema.NODE_OP] = schema.OP_INDEX["layer_norm"]
    base = weightcode.weight_sums([g._replace(nodes=nodes)], 64)
    nodes[1, schema.NODE_WEIGHT_PROJ] += 3.0  # a LayerNorm's fingerprint moves: the code does not
    np.testing.assert_array_equal(weightcode.weight_sums([g._replace(nodes=nodes)], 64), base)
    assert weightcode.parameter_count(g) == len(g.nodes[::3])


def test_models_with_fewer_weight_tensors_than_measured_get_a_quality_note(tmp_path):
    import onnx
    from hnn_jax.testing.models import onnx_mlp

    from hnn_jax.files import hash_files

    for layers in (1, 3):
        onnx.save(onnx_mlp(0, layers, 8), tmp_path / f"mlp{layers}.onnx")
    small, large = hash_files([tmp_path / "mlp1.onnx", tmp_path / "mlp3.onnx"], progress=False)
    assert any("reads 1 weight tensor;" in w for w in small.warnings)
    assert not any("weight tensor" in w for w in large.warnings)
