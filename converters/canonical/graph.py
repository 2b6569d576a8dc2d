"""The data the merge operation works on: the mutable graph the passes rewrite (`Work`), the
canonical graph it ends as, and the few helpers several passes share (op vocabulary, evaluation
of a few nodes with onnx.reference, folding a per-channel affine into a conv or linear)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper, shape_inference

from hnn_jax.converters.load import tensor_array
from hnn_jax.errors import CorruptFileError, UnsupportedModelError

MAX_FOLD_ELEMENTS = 1 << 24  # constant folding never materialises a larger tensor
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}

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
    """A node of the canonical graph. `tensor` names the ONNX tensor it outputs; the probe's value
    of it plus `probe_offset` is the node's output."""
    op: str
    tensor: str
    shape: tuple[int, ...] | None
    weights: list[np.ndarray]
    attrs: dict[str, Any]
    n_outputs: int
    probe_offset: float = 0.0


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


def infer_shapes(graph: onnx.GraphProto, model: onnx.ModelProto,
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



def tensor_value(t: onnx.TensorProto) -> np.ndarray:
    """numpy_helper.to_array; data that does not fit the tensor's type and dims is a clear error."""
    if external_data_helper.uses_external_data(t):
        raise UnsupportedModelError(f"tensor '{t.name}' in a node attribute keeps its data in an external "
                                    "file; only initializers may (save with convert_attribute=False)")
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as e:
        raise CorruptFileError(f"tensor '{t.name}' (data_type {t.data_type}, dims {list(t.dims)}) cannot "
                               f"be read: {e}. The file is corrupt; re-export the model") from None



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
            value = tensor_value(value)
        out[a.name] = value
    return out


def has_subgraph(attrs: dict[str, Any]) -> bool:
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
            return tensor_value(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None



class Work:
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
        # tensor -> what to add to the probe's value of it: a constant a pass moved into the
        # producer's bias (fusion._unfold_hard_sigmoid_shift); the prepared model stays as it is
        self.probe_offsets: dict[str, float] = {}

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

    def rename(self, renames: dict[str, str]) -> None:
        """Make every use of a tensor `old` read `renames[old]` instead (following chains: old's
        producer is going away), in one pass over the graph: passes collect their renames."""
        def resolve(t: str) -> str:
            while t in renames:
                t = renames[t]
            return t

        if renames:
            for n in self.nodes:
                n.inputs = [resolve(x) for x in n.inputs]
            self.outputs = [resolve(x) for x in self.outputs]

    def reinfer_shapes(self) -> None:
        """Shape inference again once shape arithmetic is folded (exporters' Slice/Reshape sizes
        computed from Shape ops defeat the first pass)."""
        inputs = [helper.make_tensor_value_info(x, self.types[x][1], self.types[x][0])
                  for x in self.inputs if x in self.types]
        nodes = [onnx_node(n) for n in self.nodes if not has_subgraph(n.attrs)]
        inferred = infer_shapes(helper.make_graph(nodes, "g", inputs, []), self.model, self.consts)
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


def check_acyclic(w: Work) -> None:
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

def evaluate(w: Work, nodes: list[Node], feeds: dict[str, np.ndarray],
              outputs: list[str]) -> list[np.ndarray]:
    """Run a few nodes with onnx.reference (constants taken from w.consts)."""
    from onnx.reference import ReferenceEvaluator

    needed = {x for n in nodes for x in n.inputs if x} - set(feeds)
    produced = {o for n in nodes for o in n.outputs}
    inits = [numpy_helper.from_array(np.asarray(w.consts[x]), x) for x in sorted(needed - produced)]
    graph = helper.make_graph(
        [onnx_node(n) for n in nodes],
        "eval",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
        inits)
    opset = w.opset
    if opset < 19 and all(n.op in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        opset = 19  # onnx.reference implements these from 19 on; older versions compute the same for int8
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    ref = ReferenceEvaluator(model, new_ops=[_gather_elements()])
    return [np.asarray(v) for v in ref.run(outputs, feeds)]


def _gather_elements():
    """GatherElements as numpy's take_along_axis: onnx.reference's own fails on indices of
    another shape than the data (BERT's token-type ids, a [1, 8] slice of a [1, 64] buffer)."""
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        op_domain = ""

        def _run(self, data, indices, axis=None):
            axis = int(axis or 0) % data.ndim
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, indices, axis),)

    return GatherElements


def onnx_node(n: Node) -> onnx.NodeProto:
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



def same_float(w: Work, a: str, b: str) -> bool:
    return w.elem_type(a) in FLOAT_TYPES and w.elem_type(b) in FLOAT_TYPES


def channel_vector(c: np.ndarray, channels: int, axis_from_end: int) -> np.ndarray | None:
    """c as a per-channel vector if it broadcasts only along the channel axis."""
    if c.size == 1:
        return np.full(channels, float(c.reshape(())), dtype=np.float32)
    if c.size != channels:
        return None
    nontrivial = [i for i, d in enumerate(c.shape) if d != 1]
    if len(nontrivial) != 1 or c.ndim - nontrivial[0] != axis_from_end:
        return None
    return c.reshape(-1).astype(np.float32)



def fold_affine(w: Work, target: Node, mul, add) -> bool:
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
    m = np.ones(channels, np.float32) if mul is None else channel_vector(np.asarray(mul), channels, axis_from_end)
    a = np.zeros(channels, np.float32) if add is None else channel_vector(np.asarray(add), channels, axis_from_end)
    if m is None or a is None or (target.op == "ConvTranspose" and int(target.attrs.get("group", 1)) != 1):
        return False
    bias = (w.consts[target.inputs[2]].astype(np.float32) if len(target.inputs) > 2 and target.inputs[2]
            else np.zeros(channels, np.float32))
    if target.op == "ConvTranspose":
        weight = weight * m.reshape(1, -1, *([1] * (weight.ndim - 2)))
    else:
        weight = weight * m.reshape(-1, *([1] * (weight.ndim - 1)))
    target.inputs = [target.inputs[0], w.add_const(weight, target.inputs[1]),
                     w.add_const(bias * m + a, target.inputs[1] + "_bias")]
    return True


def kind_of(w: Work, n: Node) -> str:
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
