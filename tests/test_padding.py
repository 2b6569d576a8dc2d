"""Padding to power-of-two buckets keeps the number of distinct shapes small."""

import jraph
import numpy as np
import pytest

from hnn_jax import schema
from hnn_jax.padding import bucket_size, pad_batch


def graph(n_node, n_edge, seed=0):
    rng = np.random.default_rng(seed)
    return jraph.GraphsTuple(
        nodes=rng.standard_normal((n_node, schema.NODE_WIDTH)).astype(np.float32),
        edges=rng.standard_normal((n_edge, schema.EDGE_WIDTH)).astype(np.float32),
        senders=rng.integers(0, n_node, n_edge).astype(np.int32),
        receivers=rng.integers(0, n_node, n_edge).astype(np.int32),
        n_node=np.array([n_node], np.int32), n_edge=np.array([n_edge], np.int32),
        globals=np.zeros((1, schema.GLOBAL_WIDTH), np.float32))


def test_bucket_size_is_the_next_power_of_two():
    assert [bucket_size(n) for n in (0, 1, 63, 64, 65, 1000, 1024, 1025)] == [64, 64, 64, 64, 128, 1024, 1024, 2048]


def test_pad_batch_keeps_real_graphs_first_and_pads_to_buckets():
    graphs = [graph(10, 12, 0), graph(30, 40, 1)]
    padded = pad_batch(graphs)
    assert padded.nodes.shape[0] == 64 and padded.edges.shape[0] == 64
    assert padded.n_node.tolist() == [10, 30, 24] and padded.n_edge.tolist() == [12, 40, 12]
    np.testing.assert_array_equal(padded.nodes[10:40], graphs[1].nodes)
    np.testing.assert_array_equal(padded.senders[12:52], graphs[1].senders + 10)
    assert jraph.get_graph_padding_mask(padded).tolist() == [True, True, False]


def test_mixed_sizes_compile_a_handful_of_shapes():
    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 400, 50)
    shapes = {pad_batch([graph(int(n), int(n) + 5, i)], n_graph=2).nodes.shape for i, n in enumerate(sizes)}
    assert len(shapes) <= 4


def test_pad_batch_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="at least one graph"):
        pad_batch([])
