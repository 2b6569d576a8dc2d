"""Canonical graph: the paper's "merge operation" on an ONNX model.

An exported model spells one computation many ways (exporter, opset, node names and order,
decomposed GELU or LayerNorm, BatchNorm kept or folded, int8 or fp16 weights). This stage removes
those differences: it fixes symbolic input sizes, infers shapes, folds constants and shape
arithmetic, folds weights into the nodes that consume them, removes no-ops, fuses common
decompositions back into one node (found by evaluating candidate regions, not by matching
spellings), maps op names to the vocabulary of hnn_jax.schema, and orders nodes by structure.

The result keeps, for every canonical node, the name of the ONNX tensor it outputs, so the
execution probe can run the (unchanged) prepared model and report on exactly those tensors.

Stages, one module each, data moving one way: `prepare` (the model the probe runs; never edited
after it), `graph` (the Work graph the passes rewrite, and helpers they share), `passes` (a
package, one module per family of rewrites) and `fusion` (the rewrites, run in the order of
PASSES below), `order` (the canonical graph, nodes ordered by structure). To add a rewrite:
write `def my_rewrite(w: Work) -> None` that edits `w` in place, and put it in PASSES where its
comment says it belongs. With `canonicalize(..., check=True)`, or HNN_CHECK_PASSES=1 in the
environment where `check` is left out (the tests set it), every pass is followed by
`check_invariants`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx

from hnn_jax import schema
from hnn_jax.converters.canonical.fusion import fuse_regions
from hnn_jax.converters.canonical.graph import (FLOAT_TYPES, CanonicalEdge, CanonicalGraph, CanonicalNode, Node,
                                                Work, check_acyclic, kind_of)
from hnn_jax.converters.canonical.order import build
from hnn_jax.converters.canonical.passes import (DATA_SLOTS, canonical_pools, dequantize, divide_as_multiply,
                                                 drop_dead, drop_layout_transposes, drop_nan_guards,
                                                 drop_packaging, drop_shape_arithmetic, explicit_pads,
                                                 flatten_concats, fold_constants, fold_into_producers, fold_pads,
                                                 form_linear, linear_heads, merge_duplicates, merge_slices,
                                                 reinfer_shapes, remove_noops)
from hnn_jax.converters.canonical.prepare import prepare
from hnn_jax.errors import CorruptFileError, InvariantError, UnsupportedModelError

__all__ = ["canonicalize", "prepare", "PASSES", "check_invariants", "CanonicalGraph", "CanonicalNode",
           "CanonicalEdge", "Work", "Node", "InvariantError"]

# The rewrites, in the order they run. Each line says what must come before it and why.
PASSES = (
    fold_constants,          # first: later passes read weights and sizes as values, not as the nodes
                             # computing them
    reinfer_shapes,          # after folding: exporters' Reshape/Slice sizes computed from Shape ops defeat
                             # the first inference
    merge_slices,            # needs constant slice bounds and the re-inferred shapes
    dequantize,              # before form_linear and fusion, which want float MatMul/Conv with constant weights
    drop_shape_arithmetic,   # after folding: what is left computes sizes of dynamic shapes only
    divide_as_multiply, merge_duplicates,      # after folding, which makes divisors constants
    drop_nan_guards,         # after folding, which makes the guard's fill value a constant
    remove_noops,            # after shape arithmetic: Reshape/Expand/Cast/Identity chains left between real ops
    fold_constants,          # again, after the shape passes made more inputs constant: a lookup at indices
                             # computed from buffers and shapes (BERT's token types) is a constant, as
                             # onnxsim, onnxslim and onnxruntime's basic level fold it in their files
    merge_duplicates,        # after folding and no-ops, which make repeated mask arithmetic identical
    drop_packaging,          # before layout transposes (its input chain may end at one) and fusion (would
                             # fuse the scaling)
    drop_layout_transposes,  # after no-ops (chains of transposes meet), before folding into producers
    explicit_pads,           # before fold_pads, which adds to explicit pads only
    fold_pads,
    flatten_concats,
    form_linear,             # before fold_into_producers, which folds biases and BatchNorms into `linear`
    fold_into_producers,     # before fusion: per-channel Mul/Add would otherwise fuse into elementwise regions
    fuse_regions,            # before canonical_pools: a ReduceMean in a norm's region must fuse, not become a pool
    canonical_pools,         # before linear_heads, which starts at a global pool
    linear_heads,            # after fusion: its chains pass through fused activations
    remove_noops,            # again: fusion and linear_heads leave identities and unit reshapes
    drop_dead,               # last: whatever nothing reads any more
)


def check_invariants(w: Work, prepared_tensors: set[str], after: str, unwritten_outputs: set[str]) -> None:
    """What every pass must keep: each node writes tensors of the prepared model (the probe reads
    them there), each tensor once; every input is a constant, a graph input or a node's output;
    every node's kind is in the schema's vocabulary; the graph has no cycle. A size or axes input
    (not a data slot, passes.DATA_SLOTS) may name dropped shape arithmetic, and a graph output
    may name what nothing wrote in the file already (`unwritten_outputs`)."""
    written: set[str] = set()
    for n in w.nodes:
        for o in filter(None, n.outputs):
            if o not in prepared_tensors:
                raise InvariantError(f"after {after}: a {n.op} node writes '{o}', which the prepared model lacks")
            if o in written:
                raise InvariantError(f"after {after}: tensor '{o}' is written twice")
            written.add(o)
        if kind_of(w, n) not in schema.OP_INDEX:
            raise InvariantError(f"after {after}: kind '{kind_of(w, n)}' is not in the schema vocabulary")
    known = written | set(w.consts) | set(w.inputs)
    data = [x for n in w.nodes for k, x in enumerate(n.inputs)
            if x and (n.domain != "" or k in DATA_SLOTS.get(n.op, (k,)))]
    for x in data + [o for o in w.outputs if o not in unwritten_outputs]:
        if x not in known:
            raise InvariantError(f"after {after}: tensor '{x}' is read but nothing writes it")
    check_acyclic(w)


def _digest(model: onnx.ModelProto) -> bytes:
    return hashlib.blake2b(model.SerializeToString(), digest_size=16).digest()


def canonicalize(model: onnx.ModelProto, folder: Path | None = None, *, check: bool | None = None) -> CanonicalGraph:
    """The whole merge operation: ONNX model -> CanonicalGraph. `folder` holds its external
    data files, if any (converters.load.load_onnx checks them). `check`: run check_invariants
    after every pass (a debugging aid for pass authors, slower); None: as HNN_CHECK_PASSES=1 says."""
    prepared = prepare(model, folder)
    w = Work(prepared, folder)
    if not w.nodes and not w.outputs:
        raise CorruptFileError("the ONNX graph has no nodes and no outputs")
    check_acyclic(w)
    produced = {o for n in w.nodes for o in n.outputs} | set(w.consts) | set(w.inputs)
    dangling = sorted({x for n in w.nodes for x in n.inputs if x and x not in produced})
    if dangling:
        raise CorruptFileError(f"the ONNX graph reads tensors nothing produces: {dangling[:5]}")
    checking = os.environ.get("HNN_CHECK_PASSES") == "1" if check is None else check
    if checking:
        before = _digest(prepared)
        prepared_tensors = produced | {o for n in prepared.graph.node for o in n.output}
        unwritten_outputs = set(w.outputs) - produced
    for rewrite in PASSES:
        rewrite(w)
        if checking:
            check_invariants(w, prepared_tensors, rewrite.__name__, unwritten_outputs)
    if checking and _digest(prepared) != before:
        raise InvariantError("a pass edited the prepared model, which the probe runs")
    if not w.nodes:
        raise UnsupportedModelError(_nothing_left(prepared))
    return build(w)


_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Flatten"}


def _nothing_left(prepared: onnx.ModelProto) -> str:
    """Why an empty canonical graph is refused: the model computes nothing of its inputs
    (Identity, Dropout, Shape, Size, constants), or it only reshapes, transposes or casts them
    between float types, which canonicalisation strips on purpose (the ops on the path from
    the inputs tell which)."""
    g = prepared.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    dynamic = {v.name for v in g.input} - {t.name for t in g.initializer}
    stripped = set()
    for n in g.node:
        if n.op_type in ("Shape", "Size") or not any(x in dynamic for x in n.input):
            continue  # sizes are fixed on the probe: what reads them alone is a constant
        dynamic.update(filter(None, n.output))
        to = {a.name: a.i for a in n.attribute}.get("to") if n.op_type == "Cast" else \
            types.get(n.input[1]) if n.op_type == "CastLike" and len(n.input) > 1 else None
        if n.domain in ("", "ai.onnx") and (n.op_type in _LAYOUT_OPS
                                            or to in FLOAT_TYPES and types.get(n.input[0]) in FLOAT_TYPES):
            stripped.add(n.op_type)
    if stripped:
        return (f"the model only reshapes, transposes or casts its inputs ({', '.join(sorted(stripped))}), "
                "which the canonical graph strips on purpose: nothing is left to hash")
    return "nothing is left of the model after constant folding: it computes no function of its inputs"
