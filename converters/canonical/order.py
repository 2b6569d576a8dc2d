"""Order: the canonical graph's nodes ordered by structure (never by names or file order), with
their weights and edges."""

from __future__ import annotations

import hashlib
import heapq
from typing import Any

import numpy as np

from hnn_jax.converters.canonical.fusion import FUSED_KINDS
from hnn_jax.converters.canonical.graph import (CanonicalEdge, CanonicalGraph, CanonicalNode, Node, Work,
                                                kind_of)
from hnn_jax.converters.load import is_float, release_pages, values_at

COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "Mean", "Equal", "And", "Or", "Xor"}


def _digest(*parts) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.digest()


def _weights(w: Work, n: Node, kind: str) -> list[np.ndarray]:
    """The node's constants; an all-zero bias is no bias (one exporter drops it, one keeps it)."""
    weights = [np.asarray(w.consts[x]) for x in n.inputs if x in w.consts]
    if kind in ("conv", "conv_transpose", "linear") and len(weights) == 2 and not weights[1].any():
        weights = weights[:1]
    return weights


def _tie_key(weights: list[np.ndarray]) -> bytes:
    """What orders structurally identical nodes (q, k and v of one block; the blocks of an encoder
    and a decoder): a fixed +-1 projection of at most ~4k evenly spaced values of each weight, as
    bytes that sort like the numbers. Not a digest of the values: an fp16, int8 or pruned copy
    moves them a little, which moved a digest's order (and the weight part with it: two of 70 fp16
    files of the validation zoos, 35-69 of 208 weight bits), but a projection of two independent
    tensors differs by about their rms, far more than those copies move it."""
    key = b""
    for v in weights:
        sample = values_at(v, np.arange(0, v.size, max(1, v.size // 4096)))
        release_pages(v)
        if not is_float(sample) and not np.issubdtype(sample.dtype, np.number):
            key += _digest(sample)
            continue
        sample = np.nan_to_num(sample.astype(np.float64), nan=0.0, posinf=1e30, neginf=-1e30)
        signs = np.random.default_rng(len(sample)).choice([-1.0, 1.0], len(sample))
        value = float(sample @ signs) / np.sqrt(max(len(sample), 1))
        bits = np.array([value], ">f8").view(">u8")[0]  # IEEE order: flip to sort like the numbers
        key += int(bits ^ (0xFFFFFFFFFFFFFFFF if value < 0 else 0x8000000000000000)).to_bytes(8, "big")
    return key


def _attr_key(attrs: dict[str, Any]) -> list:
    return sorted((k, v.tolist() if isinstance(v, np.ndarray) else v) for k, v in attrs.items())


def _downstream_keys(w: Work, kinds: dict[int, str]) -> dict[int, bytes]:
    """A digest of everything downstream of each node: its kind, and the downstream keys of its
    readers with the input slot each reads it at (any slot of a commutative op) and output
    slot, and which graph outputs it writes. Computed in reverse topological order: linear."""
    readers: dict[str, list[tuple[Node, int]]] = {}
    for n in w.nodes:
        for slot, x in enumerate(w.dynamic_inputs(n)):
            readers.setdefault(x, []).append((n, slot))
    outputs = {o: i for i, o in enumerate(w.outputs)}
    down: dict[int, bytes] = {}
    for n in reversed(w.nodes):  # w.nodes is topologically sorted
        uses = []
        for i, o in enumerate(n.outputs):
            for r, slot in readers.get(o, []):
                commutative = r.op in COMMUTATIVE or kinds[id(r)] in ("add", "mul", "max", "min", "equal")
                uses.append((i, down[id(r)], -1 if commutative else slot))
            if o in outputs:
                uses.append((i, b"output", outputs[o]))
        down[id(n)] = _digest(kinds[id(n)], sorted(uses))
    return down


def build(w: Work) -> CanonicalGraph:
    """Order nodes by structure (never by name or file order) and collect weights and edges."""
    w.topo_sort()
    prod = w.producers()
    used_inputs = [x for x in w.inputs if any(x in n.inputs for n in w.nodes) or x in w.outputs]
    keys: dict[int, bytes] = {}
    ties: dict[int, bytes] = {}
    key_of_tensor: dict[str, bytes] = {x: _digest("input", i, w.shape(x)) for i, x in enumerate(used_inputs)}
    kinds = {id(n): kind_of(w, n) for n in w.nodes}
    for n in w.nodes:  # a native LayerNormalization/Softmax/Gelu reads like its fused twin
        if kinds[id(n)] in FUSED_KINDS or kinds[id(n)] == "reshape":  # a reshape is its output shape
            n.attrs = {}
            if kinds[id(n)] == "reshape":
                n.inputs = n.inputs[:1]
    for n in w.nodes:
        ins = [(key_of_tensor.get(x, b"?"), prod[x][1] if x in prod else 0) for x in w.dynamic_inputs(n)]
        if n.op in COMMUTATIVE or kinds[id(n)] in ("add", "mul", "max", "min", "equal"):
            ins = sorted(ins)
        weights = _weights(w, n, kinds[id(n)])
        # Structure first (op, attributes, inputs, weight shapes); weight values only break ties
        # between structurally identical nodes, so two inits of one architecture order alike. A
        # conv or linear bias is left out: whether it is there depends on its values (a folded
        # BatchNorm of a fresh init gives zeros, which count as none; fine-tuning makes them not).
        shaped = weights[:1] if kinds[id(n)] in ("conv", "conv_transpose", "linear") else weights
        keys[id(n)] = _digest(kinds[id(n)], _attr_key(n.attrs), ins, [v.shape for v in shaped])
        ties[id(n)] = _tie_key(weights)
        for i, o in enumerate(n.outputs):
            key_of_tensor[o] = _digest(keys[id(n)], i)

    down = _downstream_keys(w, kinds)
    # Kahn's algorithm, always taking the ready node with the smallest key: what it computes from
    # (upstream), then what its output goes on to (downstream: q, k and v of an attention block
    # compute alike from one input, but k goes through the transpose of q.k^T and v into the
    # second MatMul); weights only break ties that structure leaves.
    items: list[tuple[tuple[bytes, bytes, bytes], str | Node]] = [((key_of_tensor[x], b"", b""), x)
                                                                   for x in used_inputs]
    items += [((keys[id(n)], down[id(n)], ties[id(n)]), n) for n in w.nodes]
    tensor_owner = {x: k for k, x in enumerate(used_inputs)}
    for k, n in enumerate(w.nodes):
        for o in n.outputs:
            if o:
                tensor_owner[o] = len(used_inputs) + k
    deps = [set() for _ in items]
    for k, (_, item) in enumerate(items):
        if isinstance(item, Node):
            deps[k] = {tensor_owner[x] for x in w.dynamic_inputs(item) if x in tensor_owner}
    children = [[] for _ in items]
    for k, d in enumerate(deps):
        for p in d:
            children[p].append(k)
    pending = [len(d) for d in deps]
    heap = [(items[k][0], k) for k in range(len(items)) if pending[k] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, k = heapq.heappop(heap)
        order.append(k)
        for c in children[k]:
            pending[c] -= 1
            if pending[c] == 0:
                heapq.heappush(heap, (items[c][0], c))
    position = {k: i for i, k in enumerate(order)}

    nodes: list[CanonicalNode] = []
    edges: list[CanonicalEdge] = []
    for k in order:
        item = items[k][1]
        if isinstance(item, str):
            nodes.append(CanonicalNode("input", item, w.shape(item), [], {}, 1))
            continue
        weights = _weights(w, item, kinds[id(item)])
        nodes.append(CanonicalNode(kinds[id(item)], item.outputs[0], w.shape(item.outputs[0]), weights,
                                   item.attrs, len([o for o in item.outputs if o]),
                                   w.probe_offsets.get(item.outputs[0], 0.0)))
        dyn = [x for x in w.dynamic_inputs(item) if x in tensor_owner]
        slots = list(range(len(dyn)))
        if item.op in COMMUTATIVE or kinds[id(item)] in ("add", "mul", "max", "min", "equal"):
            ranked = sorted(range(len(dyn)), key=lambda i: key_of_tensor[dyn[i]])
            slots = [ranked.index(i) for i in range(len(dyn))]
        for x, slot in zip(dyn, slots):
            owner = tensor_owner[x]
            sender_slot = prod[x][1] if x in prod else 0
            edges.append(CanonicalEdge(position[owner], position[k], slot, sender_slot,
                                       w.shape(x), w.elem_type(x)))
    edges.sort(key=lambda e: (e.receiver, e.slot, e.sender))
    return CanonicalGraph(nodes, edges, len(used_inputs), len(w.outputs), w.model, w.folder)

