"""Batch unpadded graphs and pad them to power-of-two buckets, so jit compiles few shapes."""

from collections.abc import Sequence

import jraph
import numpy as np

from hnn_jax.errors import InvalidArgumentError

MIN_BUCKET = 64
MAX_NODES = 1 << 17  # the largest bucket: one graph (plus the padding node) must fit in it
MAX_EDGES = 1 << 18  # about 0.5 GB of activations per layer at width 128; more risks running out of memory


def bucket_size(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def padded_sizes(graphs: Sequence[jraph.GraphsTuple]) -> tuple[int, int]:
    """(n_node, n_edge) of the bucket that holds this batch plus the one padding node."""
    nodes = sum(int(np.sum(g.n_node)) for g in graphs)
    edges = sum(int(np.sum(g.n_edge)) for g in graphs)
    return bucket_size(nodes + 1), bucket_size(edges)


def pad_batch(graphs: Sequence[jraph.GraphsTuple], n_graph: int | None = None,
              n_node: int | None = None, n_edge: int | None = None) -> jraph.GraphsTuple:
    """Concatenate graphs and pad with jraph.pad_with_graphs to power-of-two node/edge buckets.

    n_graph defaults to len(graphs) + 1 (the padding graph). Real graphs come first, in order;
    use jraph.get_graph_padding_mask / get_node_padding_mask to tell them from padding.
    """
    graphs = list(graphs)
    if not graphs:
        raise InvalidArgumentError("pad_batch needs at least one graph")
    bucket_nodes, bucket_edges = padded_sizes(graphs)
    n_node = bucket_nodes if n_node is None else n_node
    n_edge = bucket_edges if n_edge is None else n_edge
    n_graph = len(graphs) + 1 if n_graph is None else n_graph
    batched = jraph.batch_np(graphs)
    return jraph.pad_with_graphs(batched, n_node=n_node, n_edge=n_edge, n_graph=n_graph)
