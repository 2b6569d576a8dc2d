"""Canonical graph: the paper's "merge operation" on an ONNX model.

An exported model spells one computation many ways (exporter, opset, node names and order,
decomposed GELU or LayerNorm, BatchNorm kept or folded, int8 or fp16 weights). This stage removes
those differences: it fixes symbolic input sizes, infers shapes, folds constants and shape
arithmetic, folds weights into the nodes that consume them, removes no-ops, fuses common
decompositions back into one node (found by evaluating candidate regions, not by matching
spellings), maps op names to the vocabulary of hnn_jax.schema, and orders nodes by structure.

The result keeps, for every canonical node, the name of the ONNX tensor it outputs, so the
execution probe can run the (unchanged) prepared model and report on exactly those tensors.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, helper, inliner, numpy_helper, shape_inference

from hnn_jax.converters.load import release_pages, tensor_array, values_at
from hnn_jax.errors import CorruptFileError, UnsupportedModelError

BATCH_DEFAULT = 1   # a symbolic leading dimension becomes this on the probe
DIM_DEFAULT = 32    # any other symbolic dimension becomes this
MAX_FOLD_ELEMENTS = 1 << 24  # constant folding never materialises a larger tensor
MAX_COPY_ELEMENTS = 1 << 22  # larger weights stay views (of mapped external data) when reordered
MAX_REGION = 32     # largest elementwise region examined for fusion

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "Mean", "Equal", "And", "Or", "Xor"}
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
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Erf",
    "Erfc", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "HardSigmoid", "HardSwish", "Clip", "Min", "Max", "Gelu", "Mish", "Cast",
}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax"}

# Kinds that region fusion can produce; native ops of these kinds drop their attributes
# (epsilon, axis, approximate) so that both spellings give the same node.
FUSED_KINDS = {"layer_norm", "rms_norm", "softmax", "log_softmax", "relu", "relu6", "gelu",
               "gelu_tanh", "silu", "sigmoid", "hard_sigmoid", "hard_swish", "tanh", "softplus",
               "mish", "elu", "selu", "leaky_relu", "softsign"}

ALIASES = {
    "Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "linear", "MatMul": "matmul",
    "Einsum": "einsum", "BatchNormalization": "batch_norm", "LayerNormalization": "layer_norm",
    "SimplifiedLayerNormalization": "rms_norm", "RMSNormalization": "rms_norm",
    "GroupNormalization": "group_norm", "InstanceNormalization": "instance_norm",
    "LpNormalization": "lp_norm", "Relu": "relu", "LeakyRelu": "leaky_relu", "PRelu": "prelu",
    "Elu": "elu", "Selu": "selu", "Celu": "celu", "Gelu": "gelu", "FastGelu": "gelu_tanh",
    "Sigmoid": "sigmoid", "HardSigmoid": "hard_sigmoid", "HardSwish": "hard_swish",
    "Tanh": "tanh", "Softplus": "softplus", "Softsign": "softsign", "Mish": "mish",
    "Softmax": "softmax", "LogSoftmax": "log_softmax", "MaxPool": "max_pool",
    "AveragePool": "avg_pool", "LpPool": "lp_pool", "GlobalAveragePool": "global_avg_pool",
    "GlobalMaxPool": "global_max_pool", "Add": "add", "Sum": "add", "Sub": "sub", "Mul": "mul",
    "Div": "div", "Pow": "pow", "Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Neg": "neg",
    "Abs": "abs", "Reciprocal": "reciprocal", "Erf": "erf", "Erfc": "erfc", "Min": "min",
    "Max": "max", "Clip": "clip", "Floor": "floor", "Ceil": "ceil", "Round": "round",
    "Sign": "sign", "Sin": "sin", "Cos": "cos", "Equal": "equal", "Less": "less",
    "LessOrEqual": "less", "Greater": "greater", "GreaterOrEqual": "greater", "Not": "not",
    "And": "and", "Or": "or", "Where": "where", "Cast": "cast", "ReduceMean": "reduce_mean",
    "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max", "ReduceMin": "reduce_min",
    "ReduceProd": "reduce_prod", "ReduceL2": "reduce_l2", "ArgMax": "argmax",
    "ArgMin": "argmin", "TopK": "topk", "CumSum": "cumsum", "Reshape": "reshape",
    "Flatten": "reshape", "Squeeze": "reshape", "Unsqueeze": "reshape", "Transpose": "transpose",
    "Concat": "concat", "Split": "split", "Slice": "slice", "Gather": "gather",
    "GatherElements": "gather", "GatherND": "gather_nd", "ScatterND": "scatter",
    "ScatterElements": "scatter", "Scatter": "scatter", "Pad": "pad", "Resize": "resize",
    "Upsample": "resize", "Expand": "expand", "Tile": "tile", "DepthToSpace": "depth_to_space",
    "SpaceToDepth": "space_to_depth", "Range": "range", "ConstantOfShape": "constant_of_shape",
    "Shape": "shape", "NonZero": "nonzero", "OneHot": "one_hot", "Trilu": "trilu",
    "LSTM": "lstm", "GRU": "gru", "RNN": "rnn", "Attention": "attention",
    "MultiHeadAttention": "attention",
}


@dataclass
class Node:
    """One node while canonicalising: ONNX op until a pass gives it a canonical `kind`."""
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    kind: str | None = None  # canonical op name, set by fusions and finally by ALIASES


@dataclass
class CanonicalNode:
    """A node of the canonical graph. `tensor` names the ONNX tensor it outputs."""
    op: str
    tensor: str
    shape: tuple[int, ...] | None
    weights: list[np.ndarray]
    attrs: dict[str, Any]
    n_outputs: int


@dataclass
class CanonicalEdge:
    sender: int
    receiver: int
    slot: int          # input slot at the receiver (canonicalised for commutative ops)
    sender_slot: int   # output slot at the sender
    shape: tuple[int, ...] | None
    elem_type: int


@dataclass
class CanonicalGraph:
    nodes: list[CanonicalNode]
    edges: list[CanonicalEdge]
    n_inputs: int
    n_outputs: int
    model: onnx.ModelProto  # the prepared model (fixed input sizes, inferred shapes) to probe
    folder: Path | None = None  # where its external data files are, if it has any


# ----------------------------------------------------------------------------- preparation

def prepare(model: onnx.ModelProto, folder: Path | None = None) -> onnx.ModelProto:
    """Inline functions, check names, nodes and weights (external ones in `folder`) are well
    formed, give symbolic input dims defaults, and infer shapes."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    model = model_copy
    if model.functions:
        try:
            model = inliner.inline_local_functions(model)
        except Exception as e:  # noqa: BLE001 - a broken function body is a bad model
            raise UnsupportedModelError(f"could not inline the model's local functions: {e}")
    _check_names(model.graph)
    _check_nodes(model)
    _check_tensors(model.graph)
    # External weights must fill their dims before shape inference trusts the dims: a tensor
    # declaring 10**9 elements over 40 bytes made ONNX's data propagation allocate GBs.
    maps = {}
    for t in model.graph.initializer:
        if external_data_helper.uses_external_data(t):
            tensor_array(t, folder, maps)
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
    _spell_erfc(model.graph)
    inferred = _infer_shapes(model.graph, model)
    if inferred is None:
        warnings.warn("ONNX shape inference failed; continuing with the shapes the file declares")
    else:
        del model.graph.value_info[:]
        model.graph.value_info.extend(inferred)
    return model


def _infer_shapes(graph: onnx.GraphProto, model: onnx.ModelProto,
                  consts: dict[str, np.ndarray] | None = None) -> list[onnx.ValueInfoProto] | None:
    """ONNX shape inference on a copy without the large weights (they go in as typed inputs), so
    a big model is not serialised for it. Returns the inferred value_info, None on failure."""
    small, large = [], []
    if consts is None:
        for t in graph.initializer:
            if math.prod(t.dims) <= 4096:
                small.append(t)
            else:
                large.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    else:
        for k, v in consts.items():
            if v.size <= 4096:
                small.append(numpy_helper.from_array(np.asarray(v), k))
            else:
                large.append(helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
    init_names = {t.name for t in small} | {v.name for v in large}
    inputs = [v for v in graph.input if v.name not in init_names]
    skeleton = helper.make_graph(list(graph.node), "shapes", inputs + large, list(graph.output), small,
                                 value_info=list(graph.value_info))
    skeleton_model = helper.make_model(skeleton, opset_imports=list(model.opset_import),
                                       functions=list(model.functions))
    skeleton_model.ir_version = model.ir_version
    try:
        return list(shape_inference.infer_shapes(skeleton_model, data_prop=True).graph.value_info)
    except Exception:  # noqa: BLE001 - shapes help but are not required
        return None


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


def _spell_erfc(graph: onnx.GraphProto) -> None:
    """tf2onnx leaves exact GELU's Erfc, which is not an ONNX op: write 1 - Erf(x) instead, so
    shape inference and onnxruntime can handle the model."""
    for i, n in reversed(list(enumerate(graph.node))):
        if n.op_type != "Erfc" or n.domain not in ("", "ai.onnx"):
            continue
        erf_out, one = n.output[0] + "__hnn_erf", n.output[0] + "__hnn_one"
        graph.node.remove(n)
        graph.node.insert(i, helper.make_node("Sub", [one, erf_out], list(n.output)))
        graph.node.insert(i, helper.make_node("Erf", list(n.input), [erf_out]))
        graph.node.insert(i, helper.make_node(
            "Constant", [], [one], value=helper.make_tensor(one, onnx.TensorProto.FLOAT, [], [1.0])))


# Raw bytes per element of the types whose inline data is checked by its length alone.
_ITEMSIZE = {t: np.dtype(helper.tensor_dtype_to_np_dtype(t)).itemsize for t in (
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL)}
_DATA_TYPES = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}  # all defined


def _tensor_value(t: onnx.TensorProto) -> np.ndarray:
    """numpy_helper.to_array; data that does not fit the tensor's type and dims is a clear error."""
    if external_data_helper.uses_external_data(t):
        raise UnsupportedModelError(f"tensor '{t.name}' in a node attribute keeps its data in an external "
                                    "file; only initializers may (save with convert_attribute=False)")
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as e:
        raise CorruptFileError(f"tensor '{t.name}' (data_type {t.data_type}, dims {list(t.dims)}) cannot "
                               f"be read: {e}. The file is corrupt; re-export the model") from None


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
            _tensor_value(t)
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
                f"inputs (required ones named) and {schema.min_output} to {schema.max_output} outputs. The model is invalid; "
                "re-export it")
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


def _captured(node: onnx.NodeProto) -> list[str]:
    """Tensors of the enclosing graph that the node's subgraphs (If/Loop/Scan bodies) read."""
    names: list[str] = []
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            local = {v.name for v in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                names += [x for x in [*n.input, *_captured(n)] if x and x not in local]
                local.update(n.output)
    return list(dict.fromkeys(names))


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            out[a.name] = "<subgraph>"
            continue
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, onnx.TensorProto):
            value = _tensor_value(value)
        out[a.name] = value
    return out


def _has_subgraph(attrs: dict[str, Any]) -> bool:
    """Whether a node holds a subgraph (If, Loop, Scan); other attributes may be arrays."""
    return any(isinstance(v, str) and v == "<subgraph>" for v in attrs.values())


def _with_defaults(op: str, domain: str, opset: int, attrs: dict[str, Any]) -> dict[str, Any]:
    """Spell out every defaulted attribute, so an exporter that writes axis=0 and one that
    leaves it out give the same node."""
    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except Exception:  # noqa: BLE001 - unknown op: keep what the file says
        return attrs
    full = dict(attrs)
    for name, attr in schema.attributes.items():
        if name not in full and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            value = helper.get_attribute_value(attr.default_value)
            full[name] = value.decode() if isinstance(value, bytes) else value
    return full


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return _tensor_value(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


class _Work:
    """The mutable graph the passes rewrite."""

    def __init__(self, model: onnx.ModelProto, folder: Path | None = None):
        g = model.graph
        self.model = model
        self.folder = folder
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts: dict[str, np.ndarray] = {}
        maps = {}  # external data files, mapped once each
        for t in g.initializer:
            self.consts[t.name] = tensor_array(t, folder, maps)
        self.types: dict[str, tuple[tuple[int, ...] | None, int]] = {}
        for v in list(g.value_info) + list(g.input) + list(g.output):
            tt = v.type.tensor_type
            if not v.type.HasField("tensor_type"):
                continue
            shape = None
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
                shape = tuple(dims) if all(d >= 0 for d in dims) else None
            self.types[v.name] = (shape, tt.elem_type)
        self.inputs = [v.name for v in g.input if v.name not in self.consts]
        self.outputs = [v.name for v in g.output]
        self.nodes: list[Node] = []
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                value = _constant_value(n)
                if value is not None:
                    self.consts[n.output[0]] = value
                    continue
            domain = n.domain if n.domain != "ai.onnx" else ""
            # what its subgraphs read from this graph counts as inputs, for every pass and edge
            inputs = [*n.input, *(x for x in _captured(n) if x not in n.input)]
            self.nodes.append(Node(n.op_type, inputs, list(n.output),
                                   _with_defaults(n.op_type, domain, self.opset, _attrs(n)), domain))
        self._fresh = 0
        # tensor -> the tensor the probe reads for it: a constant moved into a producer's bias
        # is undone for the probe by a node added to the model (see _unfold_hard_sigmoid_shift)
        self.probe_as: dict[str, str] = {}

    # -- queries
    def shape(self, name: str) -> tuple[int, ...] | None:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        return self.types.get(name, (None, 0))[0]

    def elem_type(self, name: str) -> int:
        if name in self.consts:
            return helper.np_dtype_to_tensor_dtype(self.consts[name].dtype)
        return self.types.get(name, (None, 0))[1]

    def producers(self) -> dict[str, tuple[Node, int]]:
        return {o: (n, i) for n in self.nodes for i, o in enumerate(n.outputs) if o}

    def consumers(self) -> dict[str, list[tuple[Node, int]]]:
        uses: dict[str, list[tuple[Node, int]]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.inputs):
                if name:
                    uses.setdefault(name, []).append((n, i))
        return uses

    def dynamic_inputs(self, node: Node) -> list[str]:
        return [x for x in node.inputs if x and x not in self.consts]

    def add_const(self, value: np.ndarray, hint: str) -> str:
        self._fresh += 1
        name = f"{hint}__hnn{self._fresh}"
        self.consts[name] = value
        return name

    def rename(self, old: str, new: str) -> None:
        """Make every use of tensor `old` read `new` instead (old's producer is going away)."""
        for n in self.nodes:
            n.inputs = [new if x == old else x for x in n.inputs]
        self.outputs = [new if x == old else x for x in self.outputs]

    def remove(self, nodes) -> None:
        dead = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in dead]

    def reinfer_shapes(self) -> None:
        """Shape inference again once shape arithmetic is folded (exporters' Slice/Reshape sizes
        computed from Shape ops defeat the first pass)."""
        inputs = [helper.make_tensor_value_info(x, self.types[x][1], self.types[x][0])
                  for x in self.inputs if x in self.types]
        nodes = [_onnx_node(n) for n in self.nodes if not _has_subgraph(n.attrs)]
        inferred = _infer_shapes(helper.make_graph(nodes, "g", inputs, []), self.model, self.consts)
        for v in inferred or []:
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            if tt.HasField("shape") and all(d >= 0 for d in dims) and self.types.get(v.name, (None,))[0] is None:
                self.types[v.name] = (tuple(dims), tt.elem_type)

    def topo_sort(self) -> None:
        prod = self.producers()
        seen: set[int] = set()
        order: list[Node] = []
        for root in self.nodes:
            stack = [(root, False)]
            while stack:
                n, done = stack.pop()
                if done:
                    order.append(n)
                    continue
                if id(n) in seen:
                    continue
                seen.add(id(n))
                stack.append((n, True))
                for x in reversed(n.inputs):
                    p = prod.get(x)
                    if p is not None and id(p[0]) not in seen:
                        stack.append((p[0], False))
        self.nodes = order


def _check_acyclic(w: _Work) -> None:
    prod = w.producers()
    state: dict[int, int] = {}
    for root in w.nodes:
        if id(root) in state:
            continue
        stack = [(root, iter(w.dynamic_inputs(root)))]
        state[id(root)] = 1
        while stack:
            node, it = stack[-1]
            advanced = False
            for x in it:
                p = prod.get(x)
                if p is None:
                    continue
                s = state.get(id(p[0]), 0)
                if s == 1:
                    raise CorruptFileError(f"the ONNX graph has a cycle through node '{p[0].op}' "
                                           f"(tensor '{x}')")
                if s == 0:
                    state[id(p[0])] = 1
                    stack.append((p[0], iter(w.dynamic_inputs(p[0]))))
                    advanced = True
                    break
            if not advanced:
                state[id(node)] = 2
                stack.pop()


# ----------------------------------------------------------------------------- evaluation

def _evaluate(w: _Work, nodes: list[Node], feeds: dict[str, np.ndarray],
              outputs: list[str]) -> list[np.ndarray]:
    """Run a few nodes with onnx.reference (constants taken from w.consts)."""
    from onnx.reference import ReferenceEvaluator

    needed = {x for n in nodes for x in n.inputs if x} - set(feeds)
    produced = {o for n in nodes for o in n.outputs}
    inits = [numpy_helper.from_array(np.asarray(w.consts[x]), x) for x in sorted(needed - produced)]
    graph = helper.make_graph(
        [_onnx_node(n) for n in nodes],
        "eval",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", w.opset)])
    ref = ReferenceEvaluator(model)
    return [np.asarray(v) for v in ref.run(outputs, feeds)]


def _onnx_node(n: Node) -> onnx.NodeProto:
    """n as an ONNX node again (an empty list attribute, whose type is lost, becomes INTS)."""
    node = helper.make_node(n.op, n.inputs, n.outputs, domain=n.domain)
    for k, v in sorted(n.attrs.items()):
        if v is None:
            continue
        if isinstance(v, np.ndarray):
            v = numpy_helper.from_array(v)
        empty = isinstance(v, list) and not v
        node.attribute.append(helper.make_attribute(k, v, attr_type=onnx.AttributeProto.INTS if empty else None))
    return node


# ----------------------------------------------------------------------------- passes

def fold_constants(w: _Work) -> None:
    """Evaluate nodes whose inputs are all known; Shape/Size of static shapes become constants."""
    w.topo_sort()
    kept = []
    for n in w.nodes:
        value = None
        if n.domain == "" and n.op in ("Shape", "Size") and n.inputs and n.inputs[0]:
            shape = w.shape(n.inputs[0])
            if shape is not None:
                if n.op == "Size":
                    value = [np.array(int(np.prod(shape)), dtype=np.int64)]
                else:
                    start, end = n.attrs.get("start", 0), n.attrs.get("end", None)
                    value = [np.array(shape[start:end], dtype=np.int64)]
        elif (n.domain == "" and n.op not in NONDETERMINISTIC
              and all(x in w.consts for x in n.inputs if x) and not _has_subgraph(n.attrs)
              and any(n.inputs)):
            out_shape = w.shape(n.outputs[0])
            if out_shape is None or math.prod(out_shape) <= MAX_FOLD_ELEMENTS:
                try:
                    value = _evaluate(w, [n], {}, [o for o in n.outputs if o])
                except Exception:  # noqa: BLE001 - an op the reference runtime lacks stays a node
                    value = None
        if value is None:
            kept.append(n)
            continue
        for name, v in zip([o for o in n.outputs if o], value):
            w.consts[name] = v
    w.nodes = kept


def merge_slices(w: _Work) -> None:
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
    for (x, axis), pieces in groups.items():
        pieces.sort(key=lambda p: (p[0], p[1]))
        dim = w.shape(x)[axis]
        bounds = [0] + [p[1] for p in pieces]
        if len(pieces) < 2 or [p[0] for p in pieces] != bounds[:-1] or bounds[-1] != dim:
            continue
        split = Node("Split", [x], [p[2].outputs[0] for p in pieces],
                     {"axis": axis, "split": [p[1] - p[0] for p in pieces]})
        w.nodes[w.nodes.index(pieces[0][2])] = split
        w.remove([p[2] for p in pieces[1:]])


def drop_dead(w: _Work) -> None:
    """Remove nodes none of whose outputs is used."""
    while True:
        used = {x for n in w.nodes for x in n.inputs} | set(w.outputs)
        alive = [n for n in w.nodes if any(o in used for o in n.outputs if o)]
        if len(alive) == len(w.nodes):
            return
        w.nodes = alive


def drop_shape_arithmetic(w: _Work) -> None:
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


def _fits(shape: tuple[int, ...], *values: np.ndarray) -> bool:
    """Whether every value broadcasts to `shape` without growing it."""
    try:
        return np.broadcast_shapes(shape, *(v.shape for v in values)) == tuple(shape)
    except ValueError:
        return False


def dequantize(w: _Work) -> None:
    """Turn onnxruntime's int8 patterns back into float ops with dequantised weights.

    DynamicQuantizeLinear -> MatMulInteger/ConvInteger -> Cast -> Mul(scale) becomes
    MatMul/Conv on the float input; QuantizeLinear -> DequantizeLinear on activations goes away.
    """
    prod = w.producers()
    uses = w.consumers()
    for n in list(w.nodes):
        if not n.inputs:  # an op of another domain may take none
            continue
        if n.op == "DequantizeLinear" and n.inputs[0] in prod and prod[n.inputs[0]][0].op == "QuantizeLinear":
            w.rename(n.outputs[0], prod[n.inputs[0]][0].inputs[0])
            continue
        gather = prod.get(n.inputs[0])
        if (n.op == "DequantizeLinear" and gather is not None and gather[0].op == "Gather"
                and gather[0].inputs[0] in w.consts and all(i in w.consts for i in n.inputs[1:] if i)
                and len(uses.get(n.inputs[0], [])) == 1):
            # a quantised embedding table: dequantise the table, gather floats
            table = w.consts[gather[0].inputs[0]].astype(np.float32)
            zp = w.consts[n.inputs[2]].astype(np.float32) if len(n.inputs) > 2 and n.inputs[2] else 0.0
            gather[0].inputs = [w.add_const((table - zp) * w.consts[n.inputs[1]].astype(np.float32),
                                            gather[0].inputs[0])] + gather[0].inputs[1:]
            gather[0].outputs = [n.outputs[0]]
            w.remove([n])
            continue
        if n.op not in ("MatMulInteger", "ConvInteger") or len(n.inputs) < 2 or n.inputs[1] not in w.consts:
            continue
        quant = prod.get(n.inputs[0])
        cast = uses.get(n.outputs[0], [])
        if quant is None or quant[0].op != "DynamicQuantizeLinear" or len(cast) != 1 or cast[0][0].op != "Cast":
            continue
        mul = uses.get(cast[0][0].outputs[0], [])
        if len(mul) != 1 or mul[0][0].op != "Mul":
            continue
        mul = mul[0][0]
        scale_name = mul.inputs[1] if mul.inputs[0] == cast[0][0].outputs[0] else mul.inputs[0]
        if scale_name in w.consts:  # static activation scale folded in: not separable, skip
            continue
        scale_mul = prod.get(scale_name)
        if scale_mul is None or scale_mul[0].op != "Mul":
            continue
        w_scale = next((w.consts[x] for x in scale_mul[0].inputs if x in w.consts), None)
        if w_scale is None:
            continue
        wq = w.consts[n.inputs[1]].astype(np.float32)
        zp = w.consts.get(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] else np.zeros(1)
        zp, w_scale = (np.asarray(v, np.float32) for v in (zp, w_scale))
        if n.op == "ConvInteger":  # per output channel: along the weight's first axis
            zp, w_scale = (v.reshape(-1, *([1] * (wq.ndim - 1))) if v.size > 1 else v for v in (zp, w_scale))
        if not _fits(wq.shape, zp, w_scale):  # scales or zero points of another shape: not this pattern
            continue
        weight = w.add_const(((wq - zp) * w_scale).astype(np.float32), n.inputs[1])
        float_op = "MatMul" if n.op == "MatMulInteger" else "Conv"
        attrs = {} if float_op == "MatMul" else dict(n.attrs)
        w.nodes[w.nodes.index(n)] = Node(float_op, [quant[0].inputs[0], weight], [mul.outputs[0]], attrs)
        w.remove([cast[0][0], mul])
    drop_dead(w)


def _same_float(w: _Work, a: str, b: str) -> bool:
    return w.elem_type(a) in FLOAT_TYPES and w.elem_type(b) in FLOAT_TYPES


def _squeezed(shape) -> tuple[int, ...] | None:
    return None if shape is None else tuple(d for d in shape if d != 1)


def _is_scalar(w: _Work, name: str, value: float) -> bool:
    c = w.consts.get(name)
    return c is not None and c.size == 1 and float(c.reshape(())) == value


def _is_noop(w: _Work, n: Node, x: str, dyn: list[str]) -> bool:
    out = n.outputs[0]
    if n.op in ("Identity", "Dropout"):
        return True
    if n.op == "Cast":
        return _same_float(w, x, out) or w.elem_type(x) == n.attrs.get("to")
    if n.op in RESHAPES or n.op == "Expand":
        return (w.shape(x) is not None and _squeezed(w.shape(x)) == _squeezed(w.shape(out))
                and (n.op != "Expand" or math.prod(w.shape(x)) == math.prod(w.shape(out))))
    if n.op == "Transpose":
        perm, shape = n.attrs.get("perm"), w.shape(x)
        if perm is None or (shape is not None and len(perm) != len(shape)):
            return False  # no perm reverses the axes; a perm of another rank fails at runtime
        return perm == sorted(perm) or (shape is not None and [p for p in perm if shape[p] != 1]
                                        == sorted(p for p in perm if shape[p] != 1))
    if n.op in ("Mul", "Div", "Add", "Sub") and len(dyn) == 1 and len(n.inputs) == 2:
        const = next(i for i in n.inputs if i != x)
        unit = 1.0 if n.op in ("Mul", "Div") else 0.0
        return (_is_scalar(w, const, unit) and (n.op in ("Mul", "Add") or n.inputs[0] == x)
                and w.shape(out) == w.shape(x))
    if n.op == "Concat":
        return len([i for i in n.inputs if i]) == 1
    if n.op in ("Slice", "Pad"):
        return w.shape(x) is not None and w.shape(x) == w.shape(out)
    return False


def remove_noops(w: _Work) -> None:
    """Identity, Dropout, float<->float Cast, reshapes that only add/drop size-1 dims, identity
    transposes, x*1, x+0, x/1, x-0 and single-input Concat pass their input through.

    When x has no other reader its producer writes the no-op's output itself, so readers keep the
    shape they expect (a squeezed pool output stays squeezed); else readers read x."""
    w.topo_sort()
    readers = {t: len(uses) for t, uses in w.consumers().items()}
    producer = {t: p for t, (p, _) in w.producers().items()}
    alias: dict[str, str] = {}
    outputs = set(w.outputs)

    def resolve(t: str) -> str:
        while t in alias:
            t = alias[t]
        return t

    kept = []
    for n in w.nodes:
        n.inputs = [resolve(i) for i in n.inputs]
        dyn = w.dynamic_inputs(n)
        if (n.domain != "" or not dyn or not n.outputs or any(readers.get(o) for o in n.outputs[1:] if o)
                or not _is_noop(w, n, dyn[0], dyn)):
            kept.append(n)
            continue
        x, out = dyn[0], n.outputs[0]
        p = producer.get(x)
        if p is not None and readers.get(x) == 1 and x not in outputs:
            p.outputs = [out if o == x else o for o in p.outputs]
            producer[out] = p
        else:
            alias[out] = x
            readers[x] = readers.get(x, 0) - 1 + readers.get(out, 0)
    w.nodes = kept
    w.outputs = [resolve(o) for o in w.outputs]


def explicit_pads(w: _Work) -> None:
    """auto_pad SAME_UPPER / SAME_LOWER / VALID as the `pads` they stand for (tf2onnx writes
    Keras's padding="same" as SAME_UPPER, PyTorch exporters write the numbers)."""
    for n in w.nodes:
        mode = n.attrs.get("auto_pad", "NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        shape = w.shape(n.inputs[0]) if n.inputs else None
        kernel = n.attrs.get("kernel_shape")
        if (n.domain != "" or n.op not in ("Conv", "MaxPool", "AveragePool", "LpPool")
                or mode not in ("SAME_UPPER", "SAME_LOWER", "VALID") or not shape or not kernel):
            continue
        spatial = shape[2:]
        strides = n.attrs.get("strides") or [1] * len(spatial)
        dilations = n.attrs.get("dilations") or [1] * len(spatial)
        begin, end = [], []
        for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
            total = 0 if mode == "VALID" else max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
            low = total // 2 if mode == "SAME_UPPER" else total - total // 2
            begin.append(low)
            end.append(total - low)
        n.attrs["pads"], n.attrs["auto_pad"] = begin + end, "NOTSET"


def fold_pads(w: _Work) -> None:
    """Zero padding of spatial dims before a Conv or pooling is that op's own `pads`
    (Keras writes ZeroPadding2D layers, PyTorch a padding argument)."""
    uses = w.consumers()
    for n in list(w.nodes):
        if n.op != "Pad" or n.domain != "" or n.attrs.get("mode", "constant") not in ("constant", b"constant"):
            continue
        pads = w.consts.get(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else n.attrs.get("pads")
        value = w.consts.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        readers = uses.get(n.outputs[0], [])
        if pads is None or (value is not None and np.any(value)) or len(readers) != 1:
            continue
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        rank = len(pads) // 2
        consumer = readers[0][0]
        if (readers[0][1] != 0 or consumer.op not in ("Conv", "MaxPool", "AveragePool") or rank < 3
                or any(pads[i] or pads[rank + i] for i in range(2))
                or consumer.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")):
            continue
        own = list(consumer.attrs.get("pads") or [0] * (2 * (rank - 2)))
        consumer.attrs["pads"] = [a + b for a, b in zip(own, pads[2:rank] + pads[rank + 2:])]
        consumer.inputs[0] = n.inputs[0]
        w.remove([n])


def flatten_concats(w: _Work) -> None:
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


def drop_packaging(w: _Work) -> None:
    """Drop what packages a classifier rather than builds it: elementwise steps by constants
    between a graph input and the first conv (keras.applications' Rescaling and Normalization
    layers; PyTorch models normalise outside the model) and a Softmax or LogSoftmax that only
    makes a graph output (keras.applications end in softmax, torchvision in logits). A keras
    model and its PyTorch twin then start and end alike."""
    uses = w.consumers()

    def scaling_step(x: str) -> Node | None:
        readers = uses.get(x, [])
        if len(readers) != 1:
            return None
        n, slot = readers[0]
        out = n.outputs[0] if n.outputs else None
        if (n.domain != "" or n.op not in ("Mul", "Add", "Sub", "Div") or len(n.inputs) != 2
                or n.inputs[1 - slot] not in w.consts or (slot == 1 and n.op in ("Sub", "Div"))
                or out in w.outputs or w.shape(out) is None or w.shape(out) != w.shape(x)
                or not _same_float(w, x, out)):
            return None
        return n

    for x in list(w.inputs):
        chain, end = [], x
        while (n := scaling_step(end)) is not None:
            chain.append(n)
            end = n.outputs[0]
        readers = uses.get(end, [])
        if chain and readers and all(r.op in ("Conv", "Transpose") and r.domain == "" for r, _ in readers):
            w.rename(end, x)
            w.remove(chain)
            uses = w.consumers()
    for n in list(w.nodes):
        if (n.domain == "" and n.op in ("Softmax", "LogSoftmax") and n.outputs and n.outputs[0] in w.outputs
                and not uses.get(n.outputs[0]) and n.inputs[0] not in w.inputs):
            w.outputs = [n.inputs[0] if o == n.outputs[0] else o for o in w.outputs]
            w.remove([n])


def drop_layout_transposes(w: _Work) -> None:
    """Compose Transpose chains; drop transposes right after a graph input or before an output
    (tf2onnx puts them around NHWC models); the input keeps the transposed shape."""
    changed = True
    while changed:
        changed = False
        prod = w.producers()
        uses = w.consumers()
        for n in list(w.nodes):
            if n.op != "Transpose" or n.domain != "":
                continue
            x, out = n.inputs[0], n.outputs[0]
            p = prod.get(x)
            if p is not None and p[0].op == "Transpose" and len(uses.get(x, [])) == 1 and x not in w.outputs:
                inner, outer = list(p[0].attrs.get("perm", [])), list(n.attrs.get("perm", []))
                if inner and outer and len(inner) == len(outer):  # a dropped reshape may sit between
                    n.attrs["perm"] = [inner[i] for i in outer]
                    n.inputs = [p[0].inputs[0]]
                    w.remove([p[0]])
                    changed = True
                    break
            if x in w.inputs and len(uses.get(x, [])) == 1:
                w.types[x] = (w.shape(out), w.elem_type(x))
                w.rename(out, x)
                w.remove([n])
                changed = True
                break
            if out in w.outputs and not uses.get(out):
                w.outputs = [x if o == out else o for o in w.outputs]
                w.remove([n])
                changed = True
                break
    remove_noops(w)


def _channel_vector(c: np.ndarray, channels: int, axis_from_end: int) -> np.ndarray | None:
    """c as a per-channel vector if it broadcasts only along the channel axis."""
    if c.size == 1:
        return np.full(channels, float(c.reshape(())), dtype=np.float32)
    if c.size != channels:
        return None
    nontrivial = [i for i, d in enumerate(c.shape) if d != 1]
    if len(nontrivial) != 1 or c.ndim - nontrivial[0] != axis_from_end:
        return None
    return c.reshape(-1).astype(np.float32)


def _linear_weight(value: np.ndarray, transpose: bool, alpha: float = 1.0) -> np.ndarray:
    """A float32 [out, in] weight: a contiguous copy when small; a large one stays a view (of the
    mapped external data file, if it came from one) so it is never held in memory whole."""
    weight = value.astype(np.float32, copy=False)
    if alpha != 1.0:
        weight = weight * np.float32(alpha)
    weight = weight.T if transpose else weight
    return np.ascontiguousarray(weight) if weight.size <= MAX_COPY_ELEMENTS else weight


def form_linear(w: _Work) -> None:
    """Gemm and MatMul with a constant 2-D weight become `linear` with weight [out, in]."""
    for n in w.nodes:
        if n.domain != "":
            continue
        if n.op == "Gemm" and len(n.inputs) >= 2 and n.inputs[1] in w.consts and not n.attrs.get("transA", 0):
            weight = _linear_weight(w.consts[n.inputs[1]], not n.attrs.get("transB", 0),
                                    float(n.attrs.get("alpha", 1.0)))
            inputs = [n.inputs[0], w.add_const(weight, n.inputs[1])]
            if len(n.inputs) > 2 and n.inputs[2] in w.consts:
                bias = w.consts[n.inputs[2]].astype(np.float32) * float(n.attrs.get("beta", 1.0))
                if bias.size != 1 and (bias.size != weight.shape[0] or bias.shape[-1] != weight.shape[0]):
                    continue  # C of shape [M, N] or [M, 1]: not one bias per output
                inputs.append(w.add_const(np.broadcast_to(bias.reshape(-1), (weight.shape[0],)).copy(), n.inputs[2]))
            elif len(n.inputs) > 2 and n.inputs[2]:
                continue
            n.inputs, n.kind, n.attrs = inputs, "linear", {}
        elif n.op == "MatMul" and n.inputs[1] in w.consts and w.consts[n.inputs[1]].ndim == 2:
            weight = _linear_weight(w.consts[n.inputs[1]], True)
            n.inputs, n.kind = [n.inputs[0], w.add_const(weight, n.inputs[1])], "linear"


def fold_into_producers(w: _Work) -> None:
    """Fold BatchNormalization and per-channel Mul/Add constants into the preceding conv or
    linear; a BatchNormalization left alone becomes `batch_norm` with weights [scale, shift]."""
    w.topo_sort()
    readers = {t: len(uses) for t, uses in w.consumers().items()}
    producer = {t: p for t, (p, _) in w.producers().items()}
    folded: set[int] = set()
    for n in w.nodes:
        dyn = w.dynamic_inputs(n)
        if n.domain != "" or len(dyn) != 1:
            continue
        x = dyn[0]
        if (n.op == "BatchNormalization" and n.kind is None and all(i in w.consts for i in n.inputs[1:5])
                and len({w.consts[i].size for i in n.inputs[1:5]}) == 1):  # one value per channel each
            gamma, beta, mean, var = (w.consts[i].astype(np.float32) for i in n.inputs[1:5])
            scale = gamma / np.sqrt(var + float(n.attrs.get("epsilon", 1e-5)))
            per_channel = (-1,) + (1,) * max(len(w.shape(x) or (0, 0)) - 2, 0)  # [C,1,1] for NCHW
            mul, add = scale.reshape(per_channel), (beta - mean * scale).reshape(per_channel)
        elif n.op in ("Mul", "Add") and len(n.inputs) == 2:
            c = w.consts[next(i for i in n.inputs if i != x)]
            mul, add = (c, None) if n.op == "Mul" else (None, c)
        else:
            continue
        target = producer.get(x)
        if target is not None and (readers.get(x) != 1 or x in w.outputs):
            target = None
        foldable = (target is not None and len(target.inputs) > 1  # a constant weight and bias
                    and all(i in w.consts for i in target.inputs[1:3] if i)
                    and (target.kind == "linear" or target.op in ("Conv", "ConvTranspose")))
        if foldable and _fold_affine(w, target, mul, add):
            target.outputs = [n.outputs[0]]
            producer[n.outputs[0]] = target
            folded.add(id(n))
        elif (target is not None and target.kind == "batch_norm" and n.op != "BatchNormalization"
              and _fold_into_batch_norm(w, target, mul, add)):
            target.outputs = [n.outputs[0]]
            producer[n.outputs[0]] = target
            folded.add(id(n))
        elif n.op == "BatchNormalization":
            n.inputs = [x, w.add_const(np.asarray(mul, np.float32).reshape(-1), n.inputs[1]),
                        w.add_const(np.asarray(add, np.float32).reshape(-1), n.inputs[2])]
            n.kind, n.attrs = "batch_norm", {"epsilon": n.attrs.get("epsilon", 1e-5)}
            n.outputs = n.outputs[:1]
        elif (scale_shift := _channel_affine(w, x, mul, add)) is not None:
            # tf2onnx writes a Keras BatchNormalization as Mul (+ Add) by per-channel constants:
            # standing alone (after a Concat, say) it is the batch_norm PyTorch exports; at
            # initialisation it is close to x*1, which region fusion would drop as an identity
            n.inputs = [x] + [w.add_const(v, n.inputs[-1]) for v in scale_shift]
            n.kind, n.attrs = "batch_norm", {}
    w.nodes = [n for n in w.nodes if id(n) not in folded]


def _channel_affine(w: _Work, x: str, mul, add) -> list[np.ndarray] | None:
    """[scale, shift] if mul/add act per channel (axis 1, rank >= 3, more than one value)."""
    shape = w.shape(x)
    c = mul if mul is not None else add
    if shape is None or len(shape) < 3 or np.asarray(c).size < 2:
        return None
    v = _channel_vector(np.asarray(c), shape[1], len(shape) - 1)
    if v is None:
        return None
    ones, zeros = np.ones_like(v), np.zeros_like(v)
    return [v, zeros] if mul is not None else [ones, v]


def _fold_into_batch_norm(w: _Work, target: Node, mul, add) -> bool:
    """A per-channel Mul or Add after a batch_norm becomes part of its scale and shift."""
    scale, shift = (w.consts[i] for i in target.inputs[1:3])
    axis_from_end = len(w.shape(target.inputs[0]) or ()) - 1
    m = np.ones_like(scale) if mul is None else _channel_vector(np.asarray(mul), scale.size, axis_from_end)
    a = np.zeros_like(shift) if add is None else _channel_vector(np.asarray(add), shift.size, axis_from_end)
    if m is None or a is None:
        return False
    target.inputs = [target.inputs[0], w.add_const(scale * m, target.inputs[1]),
                     w.add_const(shift * m + a, target.inputs[2])]
    return True


def _fold_affine(w: _Work, target: Node, mul, add) -> bool:
    """weight*mul, bias*mul+add on target's output channels; False if shapes don't fit."""
    weight = w.consts[target.inputs[1]].astype(np.float32)
    if target.kind == "linear":
        channels, axis_from_end = weight.shape[0], 1
    elif target.op == "ConvTranspose":
        channels = weight.shape[1] * int(target.attrs.get("group", 1))
        axis_from_end = weight.ndim - 1
    else:
        channels, axis_from_end = weight.shape[0], weight.ndim - 1
    if target.kind != "linear":
        out_rank = len(w.shape(target.outputs[0]) or ()) or weight.ndim
        axis_from_end = out_rank - 1
    m = np.ones(channels, np.float32) if mul is None else _channel_vector(np.asarray(mul), channels, axis_from_end)
    a = np.zeros(channels, np.float32) if add is None else _channel_vector(np.asarray(add), channels, axis_from_end)
    if m is None or a is None or (target.op == "ConvTranspose" and int(target.attrs.get("group", 1)) != 1):
        return False
    bias = w.consts[target.inputs[2]].astype(np.float32) if len(target.inputs) > 2 and target.inputs[2] else np.zeros(channels, np.float32)
    if target.op == "ConvTranspose":
        weight = weight * m.reshape(1, -1, *([1] * (weight.ndim - 2)))
    else:
        weight = weight * m.reshape(-1, *([1] * (weight.ndim - 1)))
    target.inputs = [target.inputs[0], w.add_const(weight, target.inputs[1]),
                     w.add_const(bias * m + a, target.inputs[1] + "_bias")]
    return True


def canonical_pools(w: _Work) -> None:
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


def linear_heads(w: _Work) -> None:
    """A classifier head that keeps the unit spatial dims of its global pooling ([N, C, 1, 1]),
    runs 1x1 convs and activations on them and flattens at the end (Keras MobileNets, timm's
    conv_head) becomes the head PyTorch writes: flatten first, then linear layers. The pool's and
    the chain's outputs lose their unit dims; each 1x1 conv becomes `linear` with weight [out, in]."""
    readers = w.consumers()
    for pool in list(w.nodes):
        shape = w.shape(pool.outputs[0]) if pool.outputs else None
        if (pool.domain != "" or _kind(w, pool) not in ("global_avg_pool", "global_max_pool")
                or shape is None or len(shape) < 3 or any(d != 1 for d in shape[2:])):
            continue
        chain, convs, t = [], [], pool.outputs[0]
        while len(uses := readers.get(t, [])) == 1 and t not in w.outputs:
            n, slot = uses[0]
            unit_conv = _is_unit_conv(w, n)
            if slot != 0 or w.dynamic_inputs(n) != [t] or not (unit_conv or _kind(w, n) in _ACTIVATIONS):
                break
            chain.append(n)
            if unit_conv:
                convs.append(n)
            t = n.outputs[0]
            if w.shape(t) is not None and len(w.shape(t)) == 2:  # the flatten that ended the head
                break
        if not chain or w.shape(t) is None or len(w.shape(t)) != 2:
            continue
        for name in [pool.outputs[0]] + [n.outputs[0] for n in chain[:-1]]:
            unit_shape, elem_type = w.types[name]
            w.types[name] = (unit_shape[:2], elem_type)
        for n in convs:
            weight = w.consts[n.inputs[1]]
            n.inputs = [n.inputs[0], w.add_const(weight.reshape(weight.shape[:2]), n.inputs[1]),
                        *n.inputs[2:3]]
            n.kind, n.attrs = "linear", {}


def _is_unit_conv(w: _Work, n: Node) -> bool:
    """A Conv with a constant all-1x1 kernel, one group and no padding."""
    return (n.op == "Conv" and n.domain == "" and n.kind is None and len(n.inputs) > 1
            and n.inputs[1] in w.consts and all(d == 1 for d in w.consts[n.inputs[1]].shape[2:])
            and int(n.attrs.get("group", 1)) == 1 and not any(n.attrs.get("pads") or [])
            and all(i in w.consts for i in n.inputs[2:3] if i))


# ----------------------------------------------------------------------------- region fusion

def _gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "gelu": _gelu,
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hard_swish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "tanh": np.tanh,
    "softplus": lambda x: np.logaddexp(0, x),
    "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "softsign": lambda x: x / (1 + np.abs(x)),
}


def _classify_elementwise(x: np.ndarray, y: np.ndarray) -> str | None:
    if y.shape != x.shape:
        return None
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if np.max(np.abs(y64 - x64)) <= 1e-6 * (1 + np.max(np.abs(x64))):
        return "identity"
    best, best_err = None, 2e-5
    for name, f in _ACTIVATIONS.items():
        ref = f(x64)
        err = np.max(np.abs(y64 - ref)) / (1 + np.max(np.abs(ref)))
        if err < best_err:
            best, best_err = name, err
    return best


def _classify_reduce(x: np.ndarray, y: np.ndarray, axes: list[int]):
    """layer_norm / rms_norm (weights [gamma, beta]) or softmax / log_softmax over trailing axes."""
    if y.shape != x.shape or not axes or axes != list(range(x.ndim - len(axes), x.ndim)):
        return None
    k = int(np.prod([x.shape[a] for a in axes]))
    x2, y2 = x.reshape(-1, k).astype(np.float64), y.reshape(-1, k).astype(np.float64)
    tol = 1e-3 * (1 + np.max(np.abs(y2)))
    e = np.exp(x2 - x2.max(1, keepdims=True))
    soft = e / e.sum(1, keepdims=True)
    if np.max(np.abs(y2 - soft)) <= tol:
        return "softmax", []
    if np.max(np.abs(y2 - np.log(soft))) <= tol:
        return "log_softmax", []
    if x2.shape[0] < 2:
        return None
    centred = x2 - x2.mean(1, keepdims=True)
    for name, normed in (("layer_norm", centred / np.sqrt((centred ** 2).mean(1, keepdims=True))),
                         ("rms_norm", x2 / np.sqrt((x2 ** 2).mean(1, keepdims=True)))):
        nm, ym = normed.mean(0), y2.mean(0)
        var = ((normed - nm) ** 2).mean(0)
        gamma = ((normed - nm) * (y2 - ym)).mean(0) / np.maximum(var, 1e-12)
        beta = ym - gamma * nm
        if np.max(np.abs(y2 - (gamma * normed + beta))) <= tol:
            shape = [x.shape[a] for a in axes]
            weights = [gamma.reshape(shape).astype(np.float32)]
            if name == "layer_norm":
                weights.append(beta.reshape(shape).astype(np.float32))
            return name, weights
    return None


def _region(w: _Work, x: str, uses) -> list[Node]:
    """Elementwise/reduce nodes computed from x alone (plus constants), in topological order."""
    region: list[Node] = []
    members: set[int] = set()
    tensors = {x}
    frontier = [c for c, _ in uses.get(x, [])]
    while frontier and len(region) < MAX_REGION:
        grew = False
        for n in list(frontier):
            if id(n) in members or n.domain != "" or n.kind or not (n.op in ELEMENTWISE or n.op in REDUCES):
                continue
            if n.op == "Cast" and not _same_float(w, n.inputs[0], n.outputs[0]):
                continue
            if all(i in tensors for i in w.dynamic_inputs(n)):
                region.append(n)
                members.add(id(n))
                tensors.update(n.outputs)
                frontier.extend(c for o in n.outputs for c, _ in uses.get(o, []))
                grew = True
        if not grew:
            break
    return region


def fuse_regions(w: _Work) -> None:
    """Fuse each closed region of elementwise/reduce nodes with one input into one node, named by
    what it computes on probe values (gelu, silu, layer_norm, softmax, ...), else `elementwise`.

    Seeds are visited in topological order, each again after a fusion from it. A fused node takes
    the place of its region's first node, so the order stays topological and the consumer map is
    updated in place: the pass is linear in the graph's size, not quadratic."""
    rng = np.random.default_rng(0)
    w.topo_sort()
    uses = w.consumers()
    slot_of = {id(n): i for i, n in enumerate(w.nodes)}
    dead: dict[int, Node] = {}  # holds the replaced nodes too, so their ids are never reused

    def seeds():
        yield from list(w.inputs)
        for i in range(len(w.nodes)):  # read live: a fused node replaces w.nodes[i] in place
            n = w.nodes[i]
            if id(n) not in dead:
                yield from [o for o in n.outputs if o]

    for x in seeds():
        while w.shape(x) is not None and w.elem_type(x) in FLOAT_TYPES:
            region = _region(w, x, uses)
            if len(region) < 2 or not _fuse_best_cut(w, x, region, uses, rng, slot_of, dead):
                break
    w.nodes = [n for n in w.nodes if id(n) not in dead]


def _fuse_best_cut(w: _Work, x: str, region: list[Node], uses, rng, slot_of, dead) -> bool:
    index = {id(n): i for i, n in enumerate(region)}
    prod = {o: n for n in region for o in n.outputs}
    cuts = []
    for n in region:
        t = n.outputs[0]
        ancestors, stack = {id(n)}, [n]
        while stack:
            for i in stack.pop().inputs:
                p = prod.get(i)
                if p is not None and id(p) not in ancestors:
                    ancestors.add(id(p))
                    stack.append(p)
        if len(ancestors) < 2:
            continue
        nodes = [m for m in region if id(m) in ancestors]
        closed = all((o == t) or (o not in w.outputs and all(id(c) in ancestors for c, _ in uses.get(o, [])))
                     for m in nodes for o in m.outputs if o)
        if closed:
            cuts.append((len(nodes), index[id(n)], t, nodes))
    cuts.sort(key=lambda c: (-c[0], c[1]))
    shape = list(w.shape(x))
    if shape:
        shape[0] = max(shape[0], 8)
    if not 0 < math.prod(shape) <= MAX_FOLD_ELEMENTS:  # nothing to classify, or probe values of GBs
        return False
    for _, _, t, nodes in cuts:
        has_reduce = any(m.op in REDUCES for m in nodes)
        probe = rng.standard_normal(shape) * (10.0 if has_reduce else 3.0)
        probe = probe.astype(helper.tensor_dtype_to_np_dtype(w.elem_type(x)))
        try:
            (y,) = _evaluate(w, nodes, {x: probe}, [t])
        except Exception:  # noqa: BLE001 - a region the reference runtime cannot run stays as is
            continue
        if has_reduce:
            axes = _reduce_axes(w, next(m for m in nodes if m.op in REDUCES), len(shape))
            found = _classify_reduce(probe, y, axes) if axes is not None else None
            if found is None:
                continue
            kind, weights = found
        else:
            kind, weights = _classify_elementwise(probe, y), []
            if kind is None and _unfold_hard_sigmoid_shift(w, x, probe, y, nodes, uses):
                kind = "hard_sigmoid"
            if kind is None:
                continue
        _replace(w, x, t, nodes, kind, weights, uses, slot_of, dead)
        return True
    if cuts and not any(m.op in REDUCES for m in cuts[0][3]) and all(
            w.consts[i].size == 1 for m in cuts[0][3] for i in m.inputs if i in w.consts):
        _replace(w, x, cuts[0][2], cuts[0][3], "elementwise", [], uses, slot_of, dead)
        return True
    return False


def _unfold_hard_sigmoid_shift(w: _Work, x: str, probe: np.ndarray, y: np.ndarray,
                               nodes: list[Node], uses) -> bool:
    """True, after moving -3 into x's producer's bias, if the region computes relu6(x) / 6 and x
    is read by it alone from a Conv or linear. That is hard_sigmoid(x - 3): tf2onnx folds the +3
    of Keras's hard_sigmoid (relu6(x + 3) / 6) into the bias of the conv before it, which PyTorch
    exports as a conv and a HardSigmoid (Keras vs torchvision MobileNetV3's squeeze-excite gate)."""
    if _classify_elementwise(probe - 3.0, y) != "hard_sigmoid" or x in w.outputs:
        return False
    members = {id(m) for m in nodes}
    if any(id(c) not in members for c, _ in uses.get(x, [])):
        return False
    target = next((n for n in w.nodes if x in n.outputs), None)
    if (target is None or len(target.inputs) < 2 or len(target.outputs) != 1
            or not all(i in w.consts for i in target.inputs[1:3] if i)
            or not (target.kind == "linear" or target.op == "Conv")):
        return False
    old_consts = [i for i in target.inputs[1:3] if i]
    if not _fold_affine(w, target, None, np.float32(-3.0)):
        return False
    three = w.add_const(np.asarray(3, helper.tensor_dtype_to_np_dtype(w.elem_type(x))), f"{x}_three")
    w.probe_as[x] = f"{three}_unshifted"  # the probe reads the conv's output as PyTorch's conv gives it
    w.model.graph.initializer.append(numpy_helper.from_array(w.consts[three], three))
    w.model.graph.node.append(helper.make_node("Sub", [x, three], [w.probe_as[x]]))
    for name in old_consts:
        uses[name] = [(c, k) for c, k in uses.get(name, []) if c is not target]
    for k, name in enumerate(target.inputs[1:3], start=1):
        uses.setdefault(name, []).append((target, k))
    return True


def _reduce_axes(w: _Work, n: Node, rank: int) -> list[int] | None:
    axes = n.attrs.get("axes")
    if axes is None and len(n.inputs) > 1 and n.inputs[1] in w.consts:
        axes = w.consts[n.inputs[1]].tolist()
    if axes is None:
        return None
    return sorted(int(a) % rank for a in np.atleast_1d(axes))


def _replace(w: _Work, x: str, t: str, nodes: list[Node], kind: str, weights: list[np.ndarray],
             uses, slot_of: dict[int, int], dead: dict[int, Node]) -> None:
    """Replace `nodes` (x -> ... -> t) by one node of `kind`, or by nothing for an identity,
    keeping the consumer map `uses` and the node list's order."""
    gone = {id(m) for m in nodes}
    dead.update((id(m), m) for m in nodes)
    for name in {i for m in nodes for i in m.inputs if i}:
        uses[name] = [(c, k) for c, k in uses.get(name, []) if id(c) not in gone]
    if kind == "identity":
        for c, k in uses.pop(t, []):
            c.inputs[k] = x
            uses.setdefault(x, []).append((c, k))
        w.outputs = [x if o == t else o for o in w.outputs]
    else:
        fused = Node(kind, [x] + [w.add_const(v, f"{t}_{kind}") for v in weights], [t], {}, kind=kind)
        pos = min(slot_of[id(m)] for m in nodes)
        w.nodes[pos] = fused
        slot_of[id(fused)] = pos
        for k, name in enumerate(fused.inputs):
            uses.setdefault(name, []).append((fused, k))
    uses[x].sort(key=lambda use: (slot_of[id(use[0])], use[1]))  # node order, as w.consumers() gives


# ----------------------------------------------------------------------------- the result

def _kind(w: _Work, n: Node) -> str:
    if n.kind:
        return n.kind
    if n.op == "Gather" and n.inputs[0] in w.consts and w.consts[n.inputs[0]].ndim == 2:
        return "embedding"
    if n.op == "Clip":
        lo = w.consts.get(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else n.attrs.get("min")
        hi = w.consts.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else n.attrs.get("max")
        if (lo is not None and hi is not None and np.size(lo) == np.size(hi) == 1
                and float(np.asarray(lo).reshape(())) == 0 and float(np.asarray(hi).reshape(())) == 6):
            return "relu6"
    if n.op == "Gelu" and n.attrs.get("approximate") == "tanh":
        return "gelu_tanh"
    return ALIASES.get(n.op, "unknown")


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


def _weights(w: _Work, n: Node, kind: str) -> list[np.ndarray]:
    """The node's constants; an all-zero bias is no bias (one exporter drops it, one keeps it)."""
    weights = [np.asarray(w.consts[x]) for x in n.inputs if x in w.consts]
    if kind in ("conv", "conv_transpose", "linear") and len(weights) == 2 and not weights[1].any():
        weights = weights[:1]
    return weights


def _fingerprint(v: np.ndarray) -> np.ndarray:
    """At most ~4k evenly spaced values of a weight: enough to tell tied nodes apart, cheap to hash."""
    sample = values_at(v, np.arange(0, v.size, max(1, v.size // 4096)))
    release_pages(v)
    return sample


def _attr_key(attrs: dict[str, Any]) -> list:
    return sorted((k, v.tolist() if isinstance(v, np.ndarray) else v) for k, v in attrs.items())


def build(w: _Work) -> CanonicalGraph:
    """Order nodes by structure (never by name or file order) and collect weights and edges."""
    w.topo_sort()
    prod = w.producers()
    used_inputs = [x for x in w.inputs if any(x in n.inputs for n in w.nodes) or x in w.outputs]
    keys: dict[int, bytes] = {}
    ties: dict[int, bytes] = {}
    key_of_tensor: dict[str, bytes] = {x: _digest("input", i, w.shape(x)) for i, x in enumerate(used_inputs)}
    kinds = {id(n): _kind(w, n) for n in w.nodes}
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
        ties[id(n)] = _digest(*[_fingerprint(v) for v in weights])
        for i, o in enumerate(n.outputs):
            key_of_tensor[o] = _digest(keys[id(n)], i)

    # Kahn's algorithm, always taking the ready node with the smallest structural key.
    items: list[tuple[tuple[bytes, bytes], str | Node]] = [((key_of_tensor[x], b""), x) for x in used_inputs]
    items += [((keys[id(n)], ties[id(n)]), n) for n in w.nodes]
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
        nodes.append(CanonicalNode(kinds[id(item)], w.probe_as.get(item.outputs[0], item.outputs[0]),
                                   w.shape(item.outputs[0]),
                                   weights, item.attrs, len([o for o in item.outputs if o])))
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


def canonicalize(model: onnx.ModelProto, folder: Path | None = None) -> CanonicalGraph:
    """The whole merge operation: ONNX model -> CanonicalGraph. `folder` holds its external
    data files, if any (converters.load.load_onnx checks them)."""
    prepared = prepare(model, folder)
    w = _Work(prepared, folder)
    if not w.nodes and not w.outputs:
        raise CorruptFileError("the ONNX graph has no nodes and no outputs")
    _check_acyclic(w)
    produced = {o for n in w.nodes for o in n.outputs} | set(w.consts) | set(w.inputs)
    dangling = sorted({x for n in w.nodes for x in n.inputs if x and x not in produced})
    if dangling:
        raise CorruptFileError(f"the ONNX graph reads tensors nothing produces: {dangling[:5]}")
    fold_constants(w)
    w.reinfer_shapes()
    merge_slices(w)
    dequantize(w)  # ends by dropping what it left unused
    drop_shape_arithmetic(w)
    remove_noops(w)
    drop_packaging(w)
    drop_layout_transposes(w)
    explicit_pads(w)
    fold_pads(w)
    flatten_concats(w)
    form_linear(w)
    fold_into_producers(w)
    fuse_regions(w)
    canonical_pools(w)
    linear_heads(w)
    remove_noops(w)
    drop_dead(w)
    if not w.nodes:
        raise UnsupportedModelError("nothing is left of the model after constant folding: "
                                    "it computes no function of its inputs")
    return build(w)
