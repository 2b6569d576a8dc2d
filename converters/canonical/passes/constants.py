"""Constants and sizes: evaluate what the file fixes (weights, and the sizes of static shapes),
infer shapes again once the shape arithmetic is folded, and drop the arithmetic that is left
computing sizes only."""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from hnn_jax.converters.canonical.graph import FLOAT_TYPES, MAX_FOLD_ELEMENTS, Node, Work, evaluate, has_subgraph
from hnn_jax.converters.load import is_float

MAX_COPY_ELEMENTS = 1 << 22  # larger weights stay views (of mapped external data) when reordered
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
# Inputs that carry data; the others carry shapes, axes or sizes (a node feeding only those is
# shape arithmetic and is dropped). Ops not listed treat every input as data.
DATA_SLOTS = {
    "Reshape": {0}, "Expand": {0}, "Tile": {0}, "Slice": {0}, "Pad": {0}, "Resize": {0},
    "Upsample": {0}, "Squeeze": {0}, "Unsqueeze": {0}, "ReduceMean": {0}, "ReduceSum": {0},
    "ReduceMax": {0}, "ReduceMin": {0}, "ReduceProd": {0}, "ReduceL2": {0}, "ReduceL1": {0},
    "ReduceLogSumExp": {0}, "ReduceSumSquare": {0}, "TopK": {0}, "Split": {0}, "OneHot": {0},
    "ConstantOfShape": set(), "CumSum": {0}, "Clip": {0}, "Dropout": {0}, "Trilu": {0},
}


def _folded_view(w: Work, n: Node) -> list[np.ndarray] | None:
    """A constant's Transpose, Reshape (to the inferred shape) or Identity as a view of it, and a
    large weight's widening float Cast (fp16 -> fp32) as the weight itself: what exporters put
    between a weight and its consumer costs no copy, so mapped external weights stay unread.
    None for anything else (evaluated instead)."""
    c = w.consts[n.inputs[0]]
    out = w.shape(n.outputs[0])
    if n.op == "Identity":
        return [c]
    if n.op == "Transpose":
        perm = n.attrs.get("perm")
        return [np.transpose(c, perm)] if perm is None or len(perm) == c.ndim else None
    if n.op in RESHAPES and out is not None and c.flags.c_contiguous and math.prod(out) == c.size:
        return [c.reshape(out)]
    if n.op == "Cast" and c.size > MAX_COPY_ELEMENTS:
        to = helper.tensor_dtype_to_np_dtype(n.attrs.get("to", 0)) if n.attrs.get("to") in FLOAT_TYPES else None
        if to is not None and is_float(c) and np.dtype(to).itemsize >= c.dtype.itemsize and np.dtype(to) != c.dtype:
            return [c]
    return None


def fold_constants(w: Work) -> None:
    """Evaluate nodes whose inputs are all known; Shape/Size of static shapes become constants."""
    w.topo_sort()
    kept = []
    for n in w.nodes:
        value = None
        if (n.domain == "" and n.inputs and n.inputs[0] in w.consts and len(n.outputs) == 1
                and all(x in w.consts for x in n.inputs if x)):
            value = _folded_view(w, n)
        if (value is None and n.domain == "" and n.op == "CastLike" and len(n.inputs) == 2
                and n.inputs[0] in w.consts and w.elem_type(n.inputs[1])):  # only the type of the second is read
            value = [w.consts[n.inputs[0]].astype(helper.tensor_dtype_to_np_dtype(w.elem_type(n.inputs[1])))]
        elif value is None and n.domain == "" and n.op in ("Shape", "Size") and n.inputs and n.inputs[0]:
            shape = w.shape(n.inputs[0])
            if shape is not None:
                if n.op == "Size":
                    value = [np.array(int(np.prod(shape)), dtype=np.int64)]
                else:
                    start, end = n.attrs.get("start", 0), n.attrs.get("end", None)
                    value = [np.array(shape[start:end], dtype=np.int64)]
        elif (value is None and n.domain == "" and n.op not in NONDETERMINISTIC
              and all(x in w.consts for x in n.inputs if x) and not has_subgraph(n.attrs)
              and any(n.inputs)):
            out_shape = w.shape(n.outputs[0])
            if out_shape is None or math.prod(out_shape) <= MAX_FOLD_ELEMENTS:
                try:
                    value = evaluate(w, [n], {}, [o for o in n.outputs if o])
                except Exception:  # noqa: BLE001 - an op the reference runtime lacks stays a node
                    value = None
        if value is None:
            kept.append(n)
            continue
        for name, v in zip([o for o in n.outputs if o], value):
            w.consts[name] = v
    w.nodes = kept


def drop_shape_arithmetic(w: Work) -> None:
    """Remove nodes whose outputs reach only shape/axes/size inputs (Shape->Gather->Concat->...)."""
    w.topo_sort()
    uses = w.consumers()
    outputs = set(w.outputs)
    shape_only: set[int] = set()
    for n in reversed(w.nodes):
        feeds_data = False
        for o in n.outputs:
            if o in outputs:
                feeds_data = True
            for consumer, slot in uses.get(o, []):
                if id(consumer) in shape_only:
                    continue
                slots = DATA_SLOTS.get(consumer.op) if consumer.domain == "" else None
                if slots is None or slot in slots:
                    feeds_data = True
        if not feeds_data:
            shape_only.add(id(n))
    w.nodes = [n for n in w.nodes if id(n) not in shape_only]


def reinfer_shapes(w: Work) -> None:
    """Shape inference again, now that shape arithmetic is folded (Work.reinfer_shapes)."""
    w.reinfer_shapes()
