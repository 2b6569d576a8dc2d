"""Preparation: the ONNX model as the probe will run it. Local functions inlined, names, nodes
and weights checked, `If` branches written into the graph (control.inline_branches), symbolic
input sizes fixed, nodes sorted, onnxruntime's fused and QOperator
ops spelled in standard ops (spelling.respell), shapes inferred. Nothing after
this stage edits the prepared model."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, inliner

from hnn_jax.converters.canonical.control import inline_branches
from hnn_jax.converters.canonical.graph import FLOAT_TYPES, infer_shapes, tensor_value
from hnn_jax.converters.canonical.spelling import respell
from hnn_jax.converters.load import tensor_array
from hnn_jax.errors import CorruptFileError, UnsupportedModelError

BATCH_DEFAULT = 1   # a symbolic leading dimension becomes this on the probe
DIM_DEFAULT = 32    # any other symbolic dimension becomes this


def prepare(model: onnx.ModelProto, folder: Path | None = None) -> onnx.ModelProto:
    """Inline functions, check names, nodes and weights (external ones in `folder`) are well
    formed, give symbolic input dims defaults, and infer shapes."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    model = model_copy
    if model.functions:
        try:
            model = inliner.inline_local_functions(model)
        except Exception as e:  # a broken function body is a bad model
            raise UnsupportedModelError(f"could not inline the model's local functions: {e}") from e
    _check_names(model.graph)
    _check_nodes(model)
    _check_tensors(model.graph)
    # External weights must fill their dims before shape inference trusts the dims: a tensor
    # declaring 10**9 elements over 40 bytes made ONNX's data propagation allocate GBs.
    maps = {}
    for t in model.graph.initializer:
        if external_data_helper.uses_external_data(t):
            tensor_array(t, folder, maps)
    inline_branches(model)
    _retype_casts(model.graph)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        shape = value.type.tensor_type.shape
        for axis, dim in enumerate(shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:  # symbolic, unknown or empty
                dim.Clear()
                dim.dim_value = BATCH_DEFAULT if axis == 0 else DIM_DEFAULT
    _sort_nodes(model.graph)
    respell(model)
    inferred = infer_shapes(model.graph, model)
    if inferred is None:
        warnings.warn("ONNX shape inference failed; continuing with the shapes the file declares", stacklevel=2)
    else:
        del model.graph.value_info[:]
        model.graph.value_info.extend(inferred)
    return model



def _retype_casts(graph: onnx.GraphProto) -> None:
    """A Cast between float types whose output the file declares of another float type casts to
    that type: onnxconverter-common's fp16 converter declares every tensor half but leaves the
    model's own Casts to float (Llama's RMSNorm upcast), a file onnxruntime refuses (the probe
    then failed, and the code moved 3 bits). Valid files declare what their Casts write."""
    declared = {v.name: v.type.tensor_type.elem_type for v in graph.value_info if v.type.HasField("tensor_type")}
    for n in graph.node:
        if n.op_type != "Cast" or n.domain not in ("", "ai.onnx") or not n.output:
            continue
        to = next((a for a in n.attribute if a.name == "to"), None)
        want = declared.get(n.output[0])
        if to is not None and to.i in FLOAT_TYPES and want in FLOAT_TYPES and want != to.i:
            to.i = want


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Topological order (files need not be sorted; shape inference reads nodes in order)."""
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    order, state = [], [0] * len(graph.node)
    for root in range(len(graph.node)):
        stack = [root]
        while stack:
            i = stack[-1]
            if state[i] == 2:
                stack.pop()
                continue
            state[i] = 1
            pending = [produced_by[x] for x in graph.node[i].input
                       if x in produced_by and state[produced_by[x]] == 0]
            if pending:
                stack.extend(pending)
                continue
            state[i] = 2
            order.append(i)
            stack.pop()
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


# Raw bytes per element of the types whose inline data is checked by its length alone.
_ITEMSIZE = {t: np.dtype(helper.tensor_dtype_to_np_dtype(t)).itemsize for t in (
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL)}
_DATA_TYPES = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}  # all defined



def _tensors(graph: onnx.GraphProto):
    """(tensor, what it is) for the initializers and node attribute tensors, subgraphs included."""
    yield from ((t, "initializer") for t in graph.initializer)
    for n in graph.node:
        for a in n.attribute:
            what = f"tensor attribute '{a.name}' of a {n.op_type} node"
            yield from ((t, what) for t in ([a.t] if a.type == onnx.AttributeProto.TENSOR else a.tensors))
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                yield from _tensors(g)


def _check_tensors(graph: onnx.GraphProto) -> None:
    """Every initializer and attribute tensor has an element type ONNX defines, and inline data
    that fills its dims (a length check for raw data; other encodings, small in practice, are
    decoded once), before shape inference trusts the dims. External initializer data is checked
    where it is read (load.tensor_array)."""
    for t, what in _tensors(graph):
        if t.data_type not in _DATA_TYPES:
            raise CorruptFileError(f"{what} '{t.name}' has element type {t.data_type}, which ONNX does "
                                   "not define. The file is corrupt; re-export the model")
        if external_data_helper.uses_external_data(t) and what == "initializer":
            continue
        if not (t.HasField("raw_data") and t.data_type in _ITEMSIZE):
            tensor_value(t)
            continue
        count = math.prod(t.dims) if all(d >= 0 for d in t.dims) else -1
        if len(t.raw_data) != count * _ITEMSIZE[t.data_type]:
            raise CorruptFileError(f"{what} '{t.name}' holds {len(t.raw_data)} bytes, but its dims "
                                   f"{list(t.dims)} need {max(count, 0) * _ITEMSIZE[t.data_type]}. The file "
                                   "is corrupt (truncated or edited); re-export the model")


def _check_names(graph: onnx.GraphProto) -> None:
    """Op types, domains and tensor names must be text (protobuf hands a string field holding
    invalid UTF-8 back as bytes)."""
    for i, n in enumerate(graph.node):
        if not all(isinstance(s, str) for s in [n.op_type, n.domain, *n.input, *n.output,
                                                 *(a.name for a in n.attribute)]):
            raise CorruptFileError(f"node {i} has an op type, domain or name that is not UTF-8 text. "
                                   "The file is corrupt; re-export the model")
    for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if not isinstance(v.name, str):
            raise CorruptFileError(f"tensor name {v.name!r} is not UTF-8 text. The file is corrupt; "
                                   "re-export the model")


def _type_name(data_type: int) -> str:
    known = data_type in onnx.TensorProto.DataType.values()
    return f"tensor({onnx.TensorProto.DataType.Name(data_type).lower() if known else data_type})"


def _check_nodes(model: onnx.ModelProto) -> None:
    """Each tensor is written once; each node of a known op has the inputs, outputs and attribute
    types its schema requires, constant inputs of the element types it takes, and a Transpose's
    perm is a permutation (the passes index with them and read constants as integers without
    checking)."""
    opsets = {o.domain if o.domain != "ai.onnx" else "": o.version for o in model.opset_import}
    const_types = {t.name: t.data_type for t in model.graph.initializer}
    const_types.update({n.output[0]: a.t.data_type for n in model.graph.node if n.op_type == "Constant"
                        and len(n.output) for a in n.attribute if a.name == "value" and a.type == a.TENSOR})
    defined = {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    if not 1 <= opsets.get("", 13) < 2**31:
        raise CorruptFileError(f"the model imports version {opsets['']} of the ONNX operator set, which "
                               "does not exist. The file is corrupt; re-export the model")
    for i, n in enumerate(model.graph.node):
        if not any(n.output):
            raise CorruptFileError(f"node {i} ({n.op_type}) has no outputs. The model is invalid; re-export it")
        for o in filter(None, n.output):  # each tensor is written once (the passes' maps assume it)
            if o in defined:
                raise CorruptFileError(f"node {i} ({n.op_type}) writes tensor '{o}', which a graph input, an "
                                       "initializer or another node already defines. The model is invalid; "
                                       "re-export it")
            defined.add(o)
        domain = n.domain if n.domain != "ai.onnx" else ""
        try:
            schema = onnx.defs.get_schema(n.op_type, opsets.get(domain, 13), domain)
        except (onnx.defs.SchemaError, TypeError):  # unknown op or opset: kept as `unknown`
            continue
        required = [k for k, f in enumerate(schema.inputs)  # onnx.checker's rule: never ""
                    if f.option == onnx.defs.OpSchema.FormalParameterOption.Single]
        if (not schema.min_input <= len(n.input) <= schema.max_input
                or any(k >= len(n.input) or not n.input[k] for k in required)
                or not schema.min_output <= len(n.output) <= schema.max_output):
            raise CorruptFileError(
                f"node {i} ({n.op_type}, opset {schema.since_version}) has inputs {list(n.input)} and "
                f"outputs {list(n.output)}, but the op takes {schema.min_input} to {schema.max_input} "
                f"inputs (required ones named) and {schema.min_output} to {schema.max_output} outputs. "
                "The model is invalid; re-export it")
        allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
        for k, x in enumerate(n.input):
            formal = schema.inputs[min(k, len(schema.inputs) - 1)]  # the last may be variadic
            if x in const_types and _type_name(const_types[x]) not in allowed.get(formal.type_str, [formal.type_str]):
                raise CorruptFileError(f"node {i} ({n.op_type}): input {k} is a constant of type "
                                       f"{_type_name(const_types[x])}, which the op does not take. The "
                                       "model is invalid; re-export it")
        for a in n.attribute:
            if a.name in schema.attributes and a.type != schema.attributes[a.name].type:
                expected = onnx.AttributeProto.AttributeType.Name(schema.attributes[a.name].type)
                raise CorruptFileError(f"node {i} ({n.op_type}): attribute '{a.name}' is not {expected}. "
                                       "The model is invalid; re-export it")
            if n.op_type == "Transpose" and a.name == "perm" and sorted(a.ints) != list(range(len(a.ints))):
                raise CorruptFileError(f"node {i} (Transpose): perm {list(a.ints)} is not a permutation "
                                       "of the axes. The model is invalid; re-export it")

