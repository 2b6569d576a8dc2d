"""Non-learned hashes of the same graphs, to compare the learned hash with (64-bit SimHash).

- op-histogram SimHash: the multiset of canonical ops;
- WL-subtree SimHash: Weisfeiler-Lehman subtree labels along and against the data flow;
- weight-sign SimHash: signs of fixed random projections of every node's weight features (the
  weights' projections at fixed places, NODE_WEIGHT_PROJ), in canonical node order (knows
  instances, not families).
"""

from __future__ import annotations

import hashlib

import jraph
import numpy as np

from hnn_jax import schema


def _label_vector(label: bytes, bits: int) -> np.ndarray:
    digest = hashlib.blake2b(label, digest_size=bits // 8).digest()
    return np.unpackbits(np.frombuffer(digest, np.uint8)).astype(np.float64) * 2 - 1


def simhash(labels: list[bytes], bits: int = 64) -> np.ndarray:
    """Sign of the sum of one pseudo-random +-1 vector per label (with multiplicity)."""
    total = np.zeros(bits)
    for label in labels:
        total += _label_vector(label, bits)
    return (total >= 0).astype(np.uint8)


def wl_labels(graph: jraph.GraphsTuple, iterations: int = 3) -> list[bytes]:
    """Every node's label at every WL iteration (iteration 0: its op)."""
    ops = graph.nodes[:, schema.NODE_OP].astype(int)
    labels = [f"op{o}".encode() for o in ops]
    out = list(labels)
    ins = [[] for _ in ops]
    outs = [[] for _ in ops]
    for s, r in zip(graph.senders, graph.receivers):
        ins[r].append(s)
        outs[s].append(r)
    for _ in range(iterations):
        labels = [hashlib.blake2b(labels[i] + b"<" + b",".join(sorted(labels[j] for j in ins[i]))
                                  + b">" + b",".join(sorted(labels[j] for j in outs[i])),
                                  digest_size=8).digest() for i in range(len(ops))]
        out += labels
    return out


def op_histogram_hash(graph: jraph.GraphsTuple, bits: int = 64) -> np.ndarray:
    return simhash(wl_labels(graph, iterations=0), bits)


def wl_subtree_hash(graph: jraph.GraphsTuple, bits: int = 64) -> np.ndarray:
    return simhash(wl_labels(graph), bits)


def weight_sign_hash(graph: jraph.GraphsTuple, bits: int = 64) -> np.ndarray:
    """Node i's weight features times a fixed Gaussian matrix seeded by (i, op): summed, signed."""
    ops = graph.nodes[:, schema.NODE_OP].astype(int)
    proj = graph.nodes[:, schema.NODE_WEIGHT_PROJ].astype(np.float64)
    total = np.zeros(bits)
    for i in np.flatnonzero(np.abs(proj).sum(1) > 0):
        rng = np.random.default_rng([i, ops[i]])
        total += proj[i] @ rng.standard_normal((proj.shape[1], bits))
    return (total >= 0).astype(np.uint8)


BASELINES = {"op-histogram SimHash": op_histogram_hash, "WL-subtree SimHash": wl_subtree_hash,
             "weight-sign SimHash": weight_sign_hash}

