"""One spelling for ops exporters write several ways: Slices that partition a tensor as one
Split (and one form of Split), division by a constant as multiplication, a Concat of a Concat as
one Concat, a reduction over every spatial axis as a global pool."""

from __future__ import annotations

import numpy as np

from hnn_jax.converters.canonical.graph import Node, Work
from hnn_jax.converters.canonical.passes.cleanup import drop_dead

def merge_slices(w: Work) -> None:
    """Slices that cut one tensor into contiguous pieces along one axis are one Split
    (torch's chunk: three Slices from one exporter, a Split from the other)."""
    groups: dict[tuple[str, int], list[tuple[int, int, Node]]] = {}
    for n in w.nodes:
        if n.op != "Slice" or n.domain != "" or len(n.inputs) < 4:
            continue
        args = [w.consts.get(i) if i else None for i in n.inputs[1:5]] + [None]
        shape = w.shape(n.inputs[0])
        if not shape or any(a is None for a in args[:3]) or any(a.size != 1 for a in args[:3]):  # a scalar has no axis
            continue
        if args[3] is not None and int(args[3].reshape(())) != 1:
            continue
        axis = int(args[2].reshape(())) % len(shape)
        dim = shape[axis]
        start, end = (int(np.clip(int(v.reshape(())) + (dim if int(v.reshape(())) < 0 else 0), 0, dim))
                      for v in args[:2])
        groups.setdefault((n.inputs[0], axis), []).append((start, end, n))
    for n in w.nodes:  # one spelling for Split: axis and the sizes it cuts (opsets differ)
        if n.op == "Split" and n.domain == "" and w.shape(n.inputs[0]):
            axis = int(n.attrs.get("axis", 0)) % len(w.shape(n.inputs[0]))
            sizes = [w.shape(o)[axis] if w.shape(o) is not None else -1 for o in n.outputs]
            n.inputs, n.attrs = n.inputs[:1], {"axis": axis, "split": sizes}
    replaced: dict[int, Node] = {}
    gone: set[int] = set()
    for (x, axis), pieces in groups.items():
        pieces.sort(key=lambda p: (p[0], p[1]))
        dim = w.shape(x)[axis]
        bounds = [0] + [p[1] for p in pieces]
        if len(pieces) < 2 or [p[0] for p in pieces] != bounds[:-1] or bounds[-1] != dim:
            continue
        split = Node("Split", [x], [p[2].outputs[0] for p in pieces],
                     {"axis": axis, "split": [p[1] - p[0] for p in pieces]})
        replaced[id(pieces[0][2])] = split
        gone.update(id(p[2]) for p in pieces[1:])
    w.nodes = [replaced.get(id(n), n) for n in w.nodes if id(n) not in gone]


def divide_as_multiply(w: Work) -> None:
    """x / c with a constant float c (no zeros) becomes x * (1/c): exporters and onnxruntime's
    fusions write a scaling either way (q.k^T / sqrt(d), or FusedMatMul's alpha)."""
    for n in w.nodes:
        c = w.consts.get(n.inputs[1]) if n.op == "Div" and n.domain == "" and len(n.inputs) == 2 else None
        if c is not None and n.inputs[0] not in w.consts and c.dtype.kind == "f" and c.size and np.all(c != 0):
            n.op, n.inputs = "Mul", [n.inputs[0], w.add_const((1 / c.astype(np.float64)).astype(c.dtype),
                                                              n.inputs[1])]


def flatten_concats(w: Work) -> None:
    """A Concat that reads another Concat along the same axis reads that one's inputs instead:
    Keras's DenseNet grows its features as concat(concat(x, a), b), PyTorch's as concat(x, a, b).
    The inner Concat stays only while something else reads it."""
    w.topo_sort()  # inner concats first, so chains flatten all the way
    prod = w.producers()

    def axis(n: Node) -> int | None:
        shape = w.shape(n.outputs[0])
        a = int(n.attrs.get("axis", 0))
        return a % len(shape) if shape else (a if a >= 0 else None)

    for n in w.nodes:
        along = axis(n) if n.op == "Concat" and n.domain == "" else None
        if along is None:
            continue
        flat = []
        for x in n.inputs:
            p = prod.get(x)
            inner = p[0] if p is not None else None
            if inner is not None and inner.op == "Concat" and inner.domain == "" and axis(inner) == along:
                flat += inner.inputs
            else:
                flat.append(x)
        n.inputs = flat
    drop_dead(w)


def canonical_pools(w: Work) -> None:
    """ReduceMean/ReduceMax over every spatial axis is global average/max pooling."""
    for n in w.nodes:
        if n.op not in ("ReduceMean", "ReduceMax") or n.domain != "" or n.kind:
            continue
        shape = w.shape(n.inputs[0])
        axes = n.attrs.get("axes")
        if axes is None and len(n.inputs) > 1 and n.inputs[1] in w.consts:
            axes = w.consts[n.inputs[1]].tolist()
        if shape is None or axes is None or len(shape) < 3:
            continue
        axes = sorted(a % len(shape) for a in np.atleast_1d(axes))
        spatial_first = list(range(2, len(shape)))          # NCHW
        spatial_last = list(range(1, len(shape) - 1))       # NHWC
        if axes in (spatial_first, spatial_last):
            n.kind = "global_avg_pool" if n.op == "ReduceMean" else "global_max_pool"
            n.inputs, n.attrs = n.inputs[:1], {}
