"""Synthetic graphs that follow hnn_jax.schema, for hasher tests and benchmarks (no converter needed).

A graph is a DAG in topological order: mostly a chain, with skip connections and occasional
multi-input nodes, like the network graphs the converters produce. Everything is seeded.
"""

import jraph
import numpy as np

from hnn_jax import schema


def _slog(x):
    return np.sign(x) * np.log1p(np.abs(x))


def _globals(n_node: int, n_edge: int, rng: np.random.Generator,
             version: int = schema.SCHEMA_VERSION) -> np.ndarray:
    g = np.zeros((1, schema.GLOBAL_WIDTH), np.float32)
    g[0, schema.GLOBAL_SCHEMA] = version
    g[0, schema.GLOBAL_PROBE] = schema.PROBE_OK
    g[0, 2:6] = _slog([n_node, n_edge, rng.integers(1_000, 10_000_000), 1.0])
    g[0, 6] = 1.0
    return g


def _dag_edges(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    senders, receivers = [], []
    for i in range(1, n):
        senders.append(i - 1)
        receivers.append(i)
        if i > 2 and rng.random() < 0.25:  # skip connection / second input
            senders.append(int(rng.integers(max(0, i - 12), i - 1)))
            receivers.append(i)
    return np.asarray(senders, np.int32), np.asarray(receivers, np.int32)


def random_graph(seed: int, n_node: int | None = None,
                 version: int = schema.SCHEMA_VERSION) -> jraph.GraphsTuple:
    """One schema-conforming graph; n_node defaults to a seeded size in [8, 400]."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 400)) if n_node is None else int(n_node)
    senders, receivers = _dag_edges(n, rng)
    e = len(senders)
    nodes = _slog(rng.normal(size=(n, schema.NODE_WIDTH)) * 10.0).astype(np.float32)
    nodes[:, schema.NODE_OP] = rng.integers(0, len(schema.OPS), size=n)
    edges = _slog(rng.normal(size=(e, schema.EDGE_WIDTH)) * 10.0).astype(np.float32)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, senders=senders, receivers=receivers,
        globals=_globals(n, e, rng, version),
        n_node=np.array([n], np.int32), n_edge=np.array([e], np.int32))


def family_graph(family: int, variant: int, n_node: int = 60, noise: float = 0.3
                 ) -> jraph.GraphsTuple:
    """A member of a synthetic model family: the family fixes ops and structure, the variant
    seed perturbs the numeric features, so members of a family are close but not equal."""
    base = random_graph(10_000 + family, n_node)
    rng = np.random.default_rng(1_000_000 * (family + 1) + variant)
    nodes = base.nodes.copy()
    nodes[:, 1:] += rng.normal(scale=noise, size=nodes[:, 1:].shape).astype(np.float32)
    return base._replace(nodes=nodes)


def mixed_sizes(count: int, seed: int = 0, low: int = 5, high: int = 700) -> list[jraph.GraphsTuple]:
    """count graphs of sizes spread over [low, high), seeded."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(low, high, size=count)
    return [random_graph(seed * 1000 + i, int(s)) for i, s in enumerate(sizes)]
