"""The hashing network: a directed message-passing GNN that maps a padded batch of graphs to
K pre-sign values per graph, plus the straight-through sign that turns them into bits.

Every operation is either per node row, per edge row, or a segment reduction over one graph, so
a graph's result does not depend on what else shares its padded batch. Bit-exactness across
buckets also needs XLA to keep each row's arithmetic independent of the array size; the hasher
sets the compiler options for that (see hasher.py) and tests it.
"""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from flax import nnx

from hnn_jax import schema
from hnn_jax.config import HasherConfig


@jax.custom_vjp
def ste_sign(x: jax.Array) -> jax.Array:
    """Sign with sign(0) = +1; its gradient is the clipped identity (straight-through)."""
    return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def _ste_sign_fwd(x):
    return ste_sign(x), x


def _ste_sign_bwd(x, g):
    return (g * (jnp.abs(x) <= 1.0).astype(g.dtype),)


ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


# Columns whose values depend on the weights, not only on the architecture: weight count of
# tensors, rms/mean/|mean|, has-bias and bias rms (a zero bias counts as none), probe activation
# figures, the weights' fixed-position projections and their unit sets. With a weight part
# (config.instance_bits), the architecture part reads none of them (so an fp16, pruned or
# fine-tuned copy, or a twin from another framework with its own initialiser, keeps it) and the
# weight part (hnn_jax.weightcode) reads the weight projections.
WEIGHT_DEPENDENT_COLUMNS = np.r_[schema.NODE_WEIGHT_STATS.start + np.array([1, 3, 4, 5, 6, 7]),
                                 schema.NODE_WEIGHT_PROJ, schema.NODE_ACT_STATS, schema.NODE_UNIT_PROJ]
# HasherConfig.size_blind: the absolute sizes (log numel and widths of node outputs, edges and
# weights; the model's parameter count) the learned bits then do not read.
SIZE_COLUMNS = np.r_[schema.NODE_SHAPE.start, schema.NODE_SHAPE.start + np.arange(2, 6),
                     schema.NODE_WEIGHT_STATS.start + np.array([0, 2])]
SIZE_EDGE_COLUMNS = np.array([0, 2])
SIZE_GLOBAL_COLUMNS = np.array([4])
def op_ids(nodes: jax.Array) -> jax.Array:
    """The op column as valid vocabulary indices (float, rounded and clipped)."""
    return jnp.clip(jnp.round(nodes[:, schema.NODE_OP]), 0, schema.VOCAB_SIZE - 1)


def node_graph_index(graph: jraph.GraphsTuple) -> jax.Array:
    """For every node row of a padded batch, the index of the graph it belongs to."""
    n = graph.nodes.shape[0]
    return jnp.repeat(jnp.arange(graph.n_node.shape[0]), graph.n_node, total_repeat_length=n)


class DirectedLayer(nnx.Module):
    """One round of messages along and against the data flow, each with its own weights.

    A single matmul transforms every node once (first half of the columns: the message it sends
    downstream, second half: upstream); edges then only gather, add their edge embedding and
    scatter-add, so no per-edge matmul is needed. The node's own transformed state acts as a
    self-loop. Residual + LayerNorm keep depth stable.
    """

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.message = nnx.Linear(hidden, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)

    def __call__(self, h, edge_msg, src, dst):
        n, hidden = h.shape
        # Row 2i: what node i sends along the data flow; row 2i+1: what it sends against it.
        m = self.message(h).reshape(2 * n, hidden // 2)
        msg = jax.nn.relu(m[src] + edge_msg)
        agg = jraph.segment_sum(msg, dst, 2 * n) + m
        return h + jax.nn.relu(self.norm(agg.reshape(n, hidden)))


class HashNet(nnx.Module):
    """Graph -> the architecture part's continuous pre-sign values (apply ste_sign for its bits).

    It computes the architecture part, config.learned_bits; with config.instance_bits (a weight
    part, hnn_jax.weightcode) it reads none of WEIGHT_DEPENDENT_COLUMNS. With
    config.members > 1 it holds that many such networks (trained apart: hnn_jax.training.train) and the
    learned bits are the first learned_bits / members of each, in member order.
    """

    def __init__(self, config: HasherConfig, *, rngs: nnx.Rngs):
        h = config.hidden
        self.config = config
        if config.members > 1:  # a splice of separately trained networks (HasherConfig.members)
            self.members = nnx.List([HashNet(config.member, rngs=rngs) for _ in range(config.members)])
            return
        self.op_embed = nnx.Embed(schema.VOCAB_SIZE, h, rngs=rngs)
        self.node_proj = nnx.Linear(schema.NODE_WIDTH - 1, h, rngs=rngs)
        self.edge_proj = nnx.Linear(schema.EDGE_WIDTH, h, rngs=rngs)
        self.input_norm = nnx.LayerNorm(h, rngs=rngs)
        self.layers = nnx.List([DirectedLayer(h, rngs=rngs) for _ in range(config.layers)])
        self.attn_score = nnx.Linear(h, 1, rngs=rngs)
        self.global_proj = nnx.Linear(schema.GLOBAL_WIDTH - 1, h, rngs=rngs)
        self.head = nnx.Linear(4 * h, h, rngs=rngs)
        self.head_norm = nnx.LayerNorm(h, rngs=rngs)
        self.to_bits = nnx.Linear(h, config.learned_bits, rngs=rngs)

    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        """[n_graph, learned_bits]: the architecture part's pre-sign values (the weight part is
        not learned: hnn_jax.weightcode)."""
        graph = jax.tree.map(jnp.asarray, graph)  # jraph's padding masks index with jnp arrays
        if self.config.members > 1:
            share = self.config.learned_bits // self.config.members
            return jnp.concatenate([m.learned(graph)[:, :share] for m in self.members], axis=1)
        return self.learned(graph)

    def learned(self, graph: jraph.GraphsTuple) -> jax.Array:
        """[n_graph, learned_bits] pre-sign values of one network."""
        nodes, edges = graph.nodes, graph.edges
        n_graph = graph.n_node.shape[0]

        op = op_ids(nodes)
        features, globals_ = nodes, graph.globals
        if self.config.instance_bits:
            features = nodes.at[:, WEIGHT_DEPENDENT_COLUMNS].set(0.0)
        if self.config.size_blind:
            features = features.at[:, SIZE_COLUMNS].set(0.0)
            edges = edges.at[:, SIZE_EDGE_COLUMNS].set(0.0)
            globals_ = globals_.at[:, SIZE_GLOBAL_COLUMNS].set(0.0)
        h = self.op_embed(op.astype(jnp.int32)) + self.node_proj(features[:, 1:])
        h = self.input_norm(h)

        half = h.shape[1] // 2
        ef = self.edge_proj(edges)
        edge_msg = jnp.concatenate([ef[:, :half], ef[:, half:]], axis=0)  # [2e, half]
        # Messages along the flow go sender -> receiver, messages against it receiver -> sender;
        # both directions are packed into one gather and one scatter over 2n rows.
        src = jnp.concatenate([2 * graph.senders, 2 * graph.receivers + 1])
        dst = jnp.concatenate([2 * graph.receivers, 2 * graph.senders + 1])
        for layer in self.layers:
            h = layer(h, edge_msg, src, dst)
        return self._readout(h, graph, globals_, n_graph)

    def _readout(self, h, graph, globals_, n_graph):
        """Mean, max and attention pooling per graph (padding nodes masked), plus globals."""
        node_mask = jraph.get_node_padding_mask(graph)
        graph_idx = node_graph_index(graph)
        h = jnp.where(node_mask[:, None], h, 0.0)
        count = jnp.maximum(graph.n_node, 1).astype(h.dtype)[:, None]
        mean = jraph.segment_sum(h, graph_idx, n_graph) / count
        nonempty = (graph.n_node > 0)[:, None]
        mx = jnp.where(nonempty, jraph.segment_max(h, graph_idx, n_graph), 0.0)
        score = jnp.where(node_mask, self.attn_score(h)[:, 0], -1e9)
        alpha = jraph.segment_softmax(score, graph_idx, n_graph)
        attn = jraph.segment_sum(alpha[:, None] * h, graph_idx, n_graph)
        g = jax.nn.relu(self.global_proj(globals_[:, 1:]))
        z = jax.nn.relu(self.head_norm(self.head(jnp.concatenate([mean, mx, attn, g], axis=1))))
        return self.to_bits(z)
