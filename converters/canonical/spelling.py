"""Spelling: ops the canonical passes do not take apart, rewritten in standard ONNX ops while the
model is prepared, so the probe runs the rewritten model and every later stage sees one spelling.

- onnxruntime's saved optimisations (levels "extended" and "all"): FusedConv, FusedGemm,
  FusedMatMul, Gelu, BiasGelu, FastGelu, QuickGelu, BiasAdd, (Skip)(Simplified)LayerNormalization
  become the float ops they fuse.
- onnxruntime.transformers' fusions (what optimum and `optimize_model` write): Attention and
  MultiHeadAttention become the projections, heads, scaled scores, mask, softmax and merge the
  exporter writes (packed QKV weights split into one constant per projection);
  EmbedLayerNormalization becomes the embedding gathers, their sum and the layer norm;
  RotaryEmbedding the rotation of each head's halves by its cos/sin tables.
- MatMulNBits (2-8 bit block-quantised weights) becomes a MatMul on the weights it decodes to, as
  the `dequantize` pass does for int8 weights.
- onnxruntime's QOperator int8 ops (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...,
  DynamicQuantizeMatMul, MatMulIntegerToFloat) become DequantizeLinear -> float op ->
  QuantizeLinear, the QDQ form the `dequantize` pass takes apart.
- A DequantizeLinear reading a reshape, transpose or max-pool of int8 values moves in front of
  it (they commute with a per-tensor affine map), so Q and DQ meet.
- A Gemm adding a computed C (onnxruntime folds a residual Add into the Gemm) becomes Gemm + Add.
- tf2onnx's Erfc, which is not an ONNX op, becomes 1 - Erf.
- A Transpose moves below the elementwise ops that read it (tf2onnx writes an NHWC model as
  Conv -> Transpose -> bias Add -> Relu6 -> Transpose -> Conv), so transposes meet and cancel.

Each replacement writes the original node's output names, so the graph around it and the
tensors the probe reads are unchanged. Ops without a rewrite here (GroupQueryAttention, attention
with a past state, the NCHWc layout of level "all", whose weights are blocked for one CPU) stay
as they are: `unknown` nodes.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
from onnx import external_data_helper, helper

from hnn_jax.converters.canonical.graph import infer_shapes

MS = "com.microsoft"
_UNARY = {"Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu",
          "Celu", "Exp", "Log", "Sqrt", "Neg", "Abs", "Erf", "Cast", "Softplus", "Softsign", "Gelu",
          "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "Mish",
          "QuantizeLinear", "DequantizeLinear"}  # the last two with a per-tensor scale only
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Where", "Equal", "Less", "Greater",
           "LessOrEqual", "GreaterOrEqual", "And", "Or", "PRelu", "Mod"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSumExp"}
_SINKABLE = _UNARY | _BINARY | _REDUCE | {"Pad"}
_LAYOUT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Identity")
_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid")


class _Emit:
    """Collects the standard nodes replacing one node; intermediate tensors get fresh names."""

    def __init__(self, node: onnx.NodeProto, elem_type, opset: int, tensor_type=lambda x: None, memo=None):
        self.node, self.elem_type, self.opset = node, elem_type, opset  # elem_type(): asked on the first constant
        self.tensor_type = tensor_type  # x -> its TypeProto.Tensor or None
        self.memo = {} if memo is None else memo  # tensors written for earlier nodes of this pass, by key
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def fresh(self) -> str:
        self._count += 1
        return f"{self.node.output[0]}__hnn{self._count}"

    def __call__(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(self, value, elem_type: int | None = None) -> str:
        out = self.fresh()
        dtype = helper.tensor_dtype_to_np_dtype(elem_type or self.elem_type())
        self.nodes.append(helper.make_node("Constant", [], [out], value=onnx.numpy_helper.from_array(
            np.asarray(value, dtype), out)))
        return out

    def array(self, value: np.ndarray) -> str:
        """A constant of value's own type (weights, lookup tables)."""
        out = self.fresh()
        self.nodes.append(helper.make_node("Constant", [], [out], value=onnx.numpy_helper.from_array(value, out)))
        return out

    def last_dim(self, x: str) -> int | None:
        t = self.tensor_type(x)
        dims = t.shape.dim if t is not None and t.HasField("shape") else []
        return (dims[-1].dim_value or None) if dims else None

    def reduce_mean_last(self, x: str) -> str:
        if self.opset >= 18:
            return self("ReduceMean", [x, self.const([-1], onnx.TensorProto.INT64)], keepdims=1)
        return self("ReduceMean", [x], axes=[-1], keepdims=1)


def _attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def _input(n: onnx.NodeProto, k: int) -> str:
    return n.input[k] if len(n.input) > k else ""


def _activation(e: _Emit, x: str, out: str, name: str, params: list) -> None:
    if name == "LeakyRelu":
        e(name, [x], out, alpha=params[0] if params else 0.01)
    elif name == "HardSigmoid":
        e(name, [x], out, alpha=params[0], beta=params[1])
    elif name == "Clip":
        e(name, [x, e.const(params[0]), e.const(params[1])], out)
    else:
        e(name, [x], out)


def _gelu(e: _Emit, x: str, out: str) -> None:
    erf = e("Erf", [e("Div", [x, e.const(np.sqrt(2.0))])])
    e("Mul", [e("Mul", [x, e("Add", [erf, e.const(1.0)])]), e.const(0.5)], out)


def _layer_norm(e: _Emit, x: str, gamma: str, beta: str, eps: float, out: str, simplified: bool) -> None:
    if not simplified and e.opset >= 17:
        e("LayerNormalization", [x, gamma] + ([beta] if beta else []), out, axis=-1, epsilon=eps)
        return
    centred = x if simplified else e("Sub", [x, e.reduce_mean_last(x)])
    var = e.reduce_mean_last(e("Mul", [centred, centred]))
    normed = e("Div", [centred, e("Sqrt", [e("Add", [var, e.const(eps)])])])
    e("Add", [e("Mul", [normed, gamma]), beta], out) if beta else e("Mul", [normed, gamma], out)


def _dq(e: _Emit, x: str, scale: str, zero: str, axis: int | None = None) -> str:
    attrs = {} if axis is None else {"axis": axis}
    return e("DequantizeLinear", [x, scale] + ([zero] if zero else []), **attrs)


def _q(e: _Emit, x: str, scale: str, zero: str, out: str) -> None:
    e("QuantizeLinear", [x, scale] + ([zero] if zero else []), out)


def _fused(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.FusedConv and FusedGemm: the op, FusedConv's Z added, then the activation."""
    op, out = n.op_type, n.output[0]
    kept = {k: v for k, v in a.items() if not k.startswith("activation")}
    name = a.get("activation", b"").decode()
    z = _input(n, 3) if op == "FusedConv" else ""
    y = e(op[5:], list(n.input[:3]), None if name or z else out, **kept)
    if z:
        y = e("Add", [y, z], None if name else out)
    params = a.get("activation_params") or [a.get(k) for k in ("activation_alpha", "activation_beta")
                                             if k in a]
    if name:
        _activation(e, y, out, name, list(params))
    return True


def _fused_matmul(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.FusedMatMul: MatMul of the (transposed) inputs, scaled by alpha."""
    if a.get("transBatchA") or a.get("transBatchB"):
        return False
    xs = []
    for x, t in zip(n.input[:2], (a.get("transA", 0), a.get("transB", 0))):
        r = rank(x)
        if t and r is None:
            return False
        xs.append(e("Transpose", [x], perm=[*range(r - 2), r - 1, r - 2]) if t and r >= 2 else x)
    alpha = float(a.get("alpha", 1.0))
    if alpha == 1.0:
        e("MatMul", xs, n.output[0])
    else:
        e("Mul", [e("MatMul", xs), e.const(alpha)], n.output[0])
    return True


def _quick_gelu(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.QuickGelu: x * sigmoid(alpha * x)."""
    alpha = float(a.get("alpha", 1.702))
    scaled = n.input[0] if alpha == 1.0 else e("Mul", [n.input[0], e.const(alpha)])
    e("Mul", [n.input[0], e("Sigmoid", [scaled])], n.output[0])
    return True


def _bias_gelu(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.Gelu and BiasGelu: the erf GELU, of x + bias for BiasGelu."""
    x = e("Add", list(n.input[:2])) if n.op_type == "BiasGelu" else n.input[0]
    _gelu(e, x, n.output[0])
    return True


def _fast_gelu(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.FastGelu: the tanh GELU, of x + bias where a bias is given."""
    x = e("Add", list(n.input[:2])) if _input(n, 1) else n.input[0]
    inner = e("Mul", [e("Add", [x, e("Mul", [e("Mul", [e("Mul", [x, x]), x]), e.const(0.044715)])]),
                      e.const(np.sqrt(2 / np.pi))])
    e("Mul", [e("Mul", [x, e("Add", [e("Tanh", [inner]), e.const(1.0)])]), e.const(0.5)], n.output[0])
    return True


def _bias_add(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.BiasAdd: x + bias + skip."""
    e("Add", [e("Add", list(n.input[:2])), n.input[2]], n.output[0])
    return True


def _skip_layer_norm(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.Skip(Simplified)LayerNormalization: the layer norm of x (+ bias) + skip."""
    simplified = "Simplified" in n.op_type
    if any(n.output[1:3]):
        return False  # mean / inverse std read by the graph: not this spelling
    bias = _input(n, 3 if simplified else 4)
    total = n.output[3] if len(n.output) > 3 and n.output[3] else None
    x = e("Add", [n.input[0], bias]) if bias else n.input[0]  # the bias belongs to the linear before
    x = e("Add", [x, n.input[1]], total)
    _layer_norm(e, x, n.input[2], "" if simplified else _input(n, 3), float(a.get("epsilon", 1e-5)), n.output[0],
                simplified)
    return True


def _simplified_layer_norm(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """SimplifiedLayerNormalization (RMSNorm, in the standard domain) over the last axis."""
    if a.get("axis", -1) not in (-1, (rank(n.input[0]) or 0) - 1) or any(n.output[1:]):
        return False
    _layer_norm(e, n.input[0], n.input[1], "", float(a.get("epsilon", 1e-5)), n.output[0], True)
    return True


def _qlinear_product(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """QLinearConv, QLinearMatMul and com.microsoft.QGemm: DequantizeLinear of the input and the
    weight (per channel where the weight's scale is), the float op, QuantizeLinear."""
    op, out = n.op_type, n.output[0]
    x, xs, xz, wq, ws, wz = n.input[:6]
    per_channel = sizes(ws) not in (None, 1)
    w_axis = 0 if op == "QLinearConv" or a.get("transB", 0) else 1
    xf, wf = _dq(e, x, xs, xz), _dq(e, wq, ws, wz, w_axis if per_channel else None)
    if op == "QLinearMatMul":
        _q(e, e("MatMul", [xf, wf]), n.input[6], _input(n, 7), out)
        return True
    bias_at, (ys, yz) = (8, n.input[6:8]) if op == "QLinearConv" else (6, (_input(n, 7), _input(n, 8)))
    bias = _input(n, bias_at)
    inputs = [xf, wf] + ([_dq(e, bias, e("Mul", [xs, ws]), "", 0 if per_channel else None)] if bias else [])
    kept = {k: v for k, v in a.items() if op == "QLinearConv" or k in ("alpha", "transA", "transB")}
    y = e("Conv" if op == "QLinearConv" else "Gemm", inputs, None if ys else out, **kept)
    if ys:
        _q(e, y, ys, yz, out)
    return True


def _qlinear_binary(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.QLinearAdd and QLinearMul: DequantizeLinear, the float op, QuantizeLinear."""
    af, bf = _dq(e, *n.input[0:3]), _dq(e, *n.input[3:6])
    _q(e, e(n.op_type[7:], [af, bf]), n.input[6], _input(n, 7), n.output[0])
    return True


def _qlinear_unary(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax and the QLinear pools
    (channels first only): DequantizeLinear, the float op, QuantizeLinear."""
    if a.get("channels_last", 0):
        return False
    kept = {k: v for k, v in a.items() if k not in ("opset", "channels_last")}
    _q(e, e(n.op_type[7:], [_dq(e, *n.input[0:3])], **kept), n.input[3], _input(n, 4), n.output[0])
    return True


def _qlinear_concat(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.QLinearConcat: each input dequantised, Concat, QuantizeLinear."""
    parts = [_dq(e, *n.input[k:k + 3]) for k in range(2, len(n.input) - 2, 3)]
    _q(e, e("Concat", parts, axis=a.get("axis", 0)), n.input[0], n.input[1], n.output[0])
    return True


def _dynamic_quantize_matmul(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.DynamicQuantizeMatMul: MatMul on the dequantised weight (+ bias)."""
    out = n.output[0]
    y = e("MatMul", [n.input[0], _dq(e, n.input[1], n.input[2], _input(n, 3),
                                      1 if sizes(n.input[2]) not in (None, 1) else None)],
          None if _input(n, 4) else out)
    if _input(n, 4):
        e("Add", [y, n.input[4]], out)
    return True


def _matmul_integer_to_float(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.MatMulIntegerToFloat: MatMul of both inputs dequantised (+ bias)."""
    out = n.output[0]
    af = _dq(e, n.input[0], n.input[2], _input(n, 4))
    bf = _dq(e, n.input[1], n.input[3], _input(n, 5), 1 if sizes(n.input[3]) not in (None, 1) else None)
    y = e("MatMul", [af, bf], None if _input(n, 6) else out)
    if _input(n, 6):
        e("Add", [y, n.input[6]], out)
    return True


def _gemm(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """Gemm adding a computed C: Gemm without C, then Add (beta * C)."""
    if not _input(n, 2) or sizes(n.input[2]) is not None:
        return False
    beta = float(a.get("beta", 1.0))
    kept = {k: v for k, v in a.items() if k != "beta"}
    y = e("Gemm", list(n.input[:2]) + ([] if e.opset >= 11 else [e.const(0.0)]), **kept)  # C optional from 11
    c = n.input[2] if beta == 1.0 else e("Mul", [n.input[2], e.const(beta)])
    e("Add", [y, c], n.output[0])
    return True


def _erfc(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """tf2onnx's Erfc, which is not an ONNX op: 1 - Erf."""
    e("Sub", [e.const(1.0), e("Erf", [n.input[0]])], n.output[0])
    return True


INT64 = onnx.TensorProto.INT64


def _unsqueeze(e: _Emit, x: str, axes: list[int]) -> str:
    if e.opset >= 13:
        return e("Unsqueeze", [x, e.const(axes, INT64)])
    return e("Unsqueeze", [x], axes=axes)


def _dim(e: _Emit, x: str, axis: int) -> str:
    """x.shape[axis] as a scalar int64 tensor."""
    return e("Gather", [e("Shape", [x]), e.const(axis, INT64)])


def _split_heads(e: _Emit, x: str, heads: int, size: int, perm: list[int]) -> str:
    """[B, S, heads * size] -> [B, heads, S, size] (perm [0, 2, 1, 3]) or its key layout."""
    return e("Transpose", [e("Reshape", [x, e.const([0, 0, heads, size], INT64)])], perm=perm)


def _masked(e: _Emit, keep: str, filler: float) -> str:
    """0 where keep is true (or 1), `filler` where it is not: the additive form of a mask."""
    keep = e("Cast", [keep], to=onnx.TensorProto.BOOL)
    return e("Where", [keep, e.const(0.0), e.const(filler)])


def _key_padding(e: _Emit, mask: str, key: str, mask_rank: int, filler: float) -> str | None:
    """onnxruntime's key padding masks as an additive [B, 1, 1, L] (or [B, 1, S, L]) term:
    a raw 2-D mask (1 keep, 0 pad), a 3-D [B, S, L] one, or 1-D lengths (keys past them padded).
    One term per mask: the attention nodes after the first read it (e.memo)."""
    if (mask, filler) in e.memo:
        return e.memo[mask, filler]
    if mask_rank == 1:
        positions = e("Range", [e.const(0, INT64), _dim(e, key, 1), e.const(1, INT64)])
        lengths = _unsqueeze(e, e("Cast", [mask], to=INT64), [1])
        term = _unsqueeze(e, _masked(e, e("Less", [positions, lengths]), filler), [1, 2])
    elif mask_rank in (2, 3):
        term = _unsqueeze(e, _masked(e, mask, filler), [1, 2] if mask_rank == 2 else [1])
    else:
        return None
    e.memo[mask, filler] = term
    return term


def _causal(e: _Emit, query: str, key: str, filler: float) -> str:
    """The additive [S, L] term that hides later keys from each query (no past state)."""
    keys = e("Range", [e.const(0, INT64), _dim(e, key, 1), e.const(1, INT64)])
    queries = _unsqueeze(e, e("Range", [e.const(0, INT64), _dim(e, query, 1), e.const(1, INT64)]), [1])
    return _masked(e, e("LessOrEqual", [keys, queries]), filler)


def _additive_terms(e: _Emit, a: dict, mask: str, query: str, key: str, bias: str, rank) -> list[str] | None:
    """What an attention node adds to its scores: the key padding `mask` (keys counted along
    `key`), a causal mask where the node is unidirectional, and its attention `bias`; None where
    the mask's rank is unknown or not one onnxruntime takes."""
    filler = float(a.get("mask_filter_value", -10000.0))
    terms = []
    if mask:
        mask_rank = rank(mask)
        term = None if mask_rank is None else _key_padding(e, mask, key, mask_rank, filler)
        if term is None:
            return None
        terms.append(term)
    if a.get("unidirectional"):
        terms.append(_causal(e, query, key, filler))
    if bias:
        terms.append(bias)
    return terms


def _attend(e: _Emit, q: str, k: str, v: str, heads: int, qk_size: int, v_size: int, scale: float | None,
            additive: list[str], out: str) -> None:
    """softmax(q k^T * scale + masks) v over heads, merged back to [B, S, heads * v_size]."""
    qh = _split_heads(e, q, heads, qk_size, [0, 2, 1, 3])
    kt = _split_heads(e, k, heads, qk_size, [0, 2, 3, 1])
    vh = _split_heads(e, v, heads, v_size, [0, 2, 1, 3])
    scores = e("Mul", [e("MatMul", [qh, kt]), e.const(scale or 1 / math.sqrt(qk_size))])
    for term in additive:
        scores = e("Add", [scores, term])
    merged = e("Transpose", [e("MatMul", [e("Softmax", [scores], axis=-1), vh])], perm=[0, 2, 1, 3])
    e("Reshape", [merged, e.const([0, 0, heads * v_size], INT64)], out)


def _attention(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.Attention (packed QKV weights) without a past state."""
    weights, bias = value(n.input[1]), value(_input(n, 2)) if _input(n, 2) else None
    if weights is None or (_input(n, 2) and bias is None) or any(_input(n, k) for k in (4, 6)) \
            or any(n.output[1:]) or a.get("do_rotary") or rank(n.input[0]) != 3:
        return False
    heads = int(a["num_heads"])
    sizes = [int(x) for x in a.get("qkv_hidden_sizes") or [weights.shape[1] // 3] * 3]
    edges = np.cumsum([0, *sizes])
    projected = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        y = e("MatMul", [n.input[0], e.array(weights[:, lo:hi])])
        projected.append(e("Add", [y, e.array(bias[lo:hi])]) if bias is not None else y)
    q, k, v = projected
    mask = _input(n, 3)
    if mask:  # the raw mask where the lengths are a count of it (EmbedLayerNormalization, ReduceSum)
        raw = e.memo.get(("raw mask", mask), mask)
        mask = raw if rank(raw) == 2 else mask
    additive = _additive_terms(e, a, mask, q, q, _input(n, 5), rank)
    if additive is None:
        return False
    _attend(e, q, k, v, heads, sizes[0] // heads, sizes[2] // heads, a.get("scale"), additive, n.output[0])
    return True


def _multi_head_attention(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.MultiHeadAttention with projected [B, L, D] query, key and value, no past."""
    if len(n.input) < 3 or any(_input(n, k) for k in range(6, 10)) or any(n.output[1:]) \
            or any(rank(_input(n, k)) != 3 for k in range(3)):
        return False
    q, k, v = n.input[:3]
    if _input(n, 3):  # one bias [3 * D] for the three projections
        bias = value(n.input[3])
        if bias is None:
            return False
        d = bias.shape[0] // 3
        q, k, v = (e("Add", [x, e.array(bias[i * d:(i + 1) * d])]) for i, x in enumerate((q, k, v)))
        sizes = [d, d, d]
    else:
        sizes = [None, None, None]
    heads = int(a["num_heads"])
    additive = _additive_terms(e, a, _input(n, 4), q, k, _input(n, 5), rank)
    if additive is None:
        return False
    hidden = sizes[0] or e.last_dim(n.input[0])
    v_hidden = sizes[2] or e.last_dim(n.input[2])
    if hidden is None or v_hidden is None:
        return False
    _attend(e, q, k, v, heads, hidden // heads, v_hidden // heads, a.get("scale"), additive, n.output[0])
    return True


def _embed_layer_norm(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.EmbedLayerNormalization: word + position (+ segment) embeddings, layer norm;
    its mask_index output is the count of kept tokens per sequence."""
    ids = n.input[0]
    if len(n.output) > 1 and n.output[1] and not _input(n, 7):
        return False
    words = e("Gather", [n.input[2], ids])
    if _input(n, 8):
        positions = n.input[8]
    else:
        positions = _unsqueeze(e, e("Range", [e.const(0, INT64), _dim(e, ids, 1), e.const(1, INT64)]), [0])
    total = e("Add", [words, e("Gather", [n.input[3], positions])])
    if _input(n, 1) and _input(n, 4):
        summed = n.output[2] if len(n.output) > 2 and n.output[2] else None
        total = e("Add", [total, e("Gather", [n.input[4], n.input[1]])], summed)
    elif len(n.output) > 2 and n.output[2]:
        total = e("Identity", [total], n.output[2])
    _layer_norm(e, total, n.input[5], n.input[6], float(a.get("epsilon", 1e-12)), n.output[0], False)
    if len(n.output) > 1 and n.output[1]:
        if e.opset >= 13:
            kept = e("ReduceSum", [e("Cast", [n.input[7]], to=INT64), e.const([1], INT64)], keepdims=0)
        else:
            kept = e("ReduceSum", [e("Cast", [n.input[7]], to=INT64)], axes=[1], keepdims=0)
        e("Cast", [kept], n.output[1], to=onnx.TensorProto.INT32)
        e.memo["raw mask", n.output[1]] = n.input[7]
    return True


def _rotary(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.RotaryEmbedding, halves layout (interleaved=0), on [B, N, S, H] or [B, S, N*H]."""
    x, positions, cos_cache, sin_cache = n.input[:4]
    r = rank(x)
    if a.get("interleaved") or a.get("rotary_embedding_dim") or r not in (3, 4) or rank(positions) != 2:
        return False
    if r == 3:
        heads = int(a.get("num_heads", 0))
        hidden = e.last_dim(x)
        if not heads or hidden is None:
            return False
        x = _split_heads(e, x, heads, hidden // heads, [0, 2, 1, 3])
    cos = _unsqueeze(e, e("Gather", [cos_cache, positions]), [1])  # [B, 1, S, H/2]
    sin = _unsqueeze(e, e("Gather", [sin_cache, positions]), [1])
    half = _unsqueeze(e, e("Div", [_dim(e, x, -1), e.const(2, INT64)]), [0])
    first = e("Slice", [x, e.const([0], INT64), half, e.const([-1], INT64)])
    second = e("Slice", [x, half, e.const([2 ** 62], INT64), e.const([-1], INT64)])
    rotated = e("Concat", [e("Sub", [e("Mul", [first, cos]), e("Mul", [second, sin])]),
                           e("Add", [e("Mul", [second, cos]), e("Mul", [first, sin])])], axis=-1)
    if r == 3:
        merged = e("Transpose", [rotated], perm=[0, 2, 1, 3])
        e("Reshape", [merged, e.const([0, 0, -1], INT64)], n.output[0])
    else:
        e("Identity", [rotated], n.output[0])
    return True


def _unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian fields of `bits` bits in each byte's order, along the last axis."""
    fields = np.unpackbits(packed.astype(np.uint8), axis=-1, bitorder="little")
    fields = fields.reshape(*packed.shape[:-1], -1, bits)
    return (fields.astype(np.int32) << np.arange(bits)).sum(-1)


def _matmul_nbits(n: onnx.NodeProto, e: _Emit, a: dict, rank, sizes, value) -> bool:
    """com.microsoft.MatMulNBits: A @ W, W decoded from its blocks ((q - zero point) * scale)."""
    blocks, scales = value(n.input[1]), value(n.input[2])
    zeros = value(_input(n, 3)) if _input(n, 3) else None
    if blocks is None or scales is None or (_input(n, 3) and zeros is None) or _input(n, 4):
        return False
    k, cols, bits, block = int(a["K"]), int(a["N"]), int(a.get("bits", 4)), int(a["block_size"])
    count = -(-k // block)
    q = _unpack_bits(blocks.reshape(cols, count, -1), bits)[..., :block]  # [N, blocks, block]
    scales = scales.astype(np.float32).reshape(cols, count, 1)
    if zeros is None:
        zero = np.float32(2 ** (bits - 1))
    elif zeros.dtype == np.uint8:  # packed like the weights
        zero = _unpack_bits(zeros.reshape(cols, -1), bits)[:, :count, None].astype(np.float32)
    else:
        zero = zeros.astype(np.float32).reshape(cols, count, 1)
    w = ((q - zero) * scales).reshape(cols, -1)[:, :k].T  # [K, N]
    y = e("MatMul", [n.input[0], e.array(w.astype(value(n.input[2]).dtype))], None if _input(n, 5) else n.output[0])
    if _input(n, 5):
        e("Add", [y, n.input[5]], n.output[0])
    return True


# The spellings, by (domain, op type) ("ai.onnx" read as ""): each function appends its node's
# standard spelling to e and says whether it did (False where the node is not in the form it
# takes, or needs what is unknown). rank(x): x's rank or None; sizes(x): a constant's element
# count; value(x): a constant's array (each None where x is computed).
SPELLINGS = {
    # onnxruntime's saved optimisations
    (MS, "FusedConv"): _fused, (MS, "FusedGemm"): _fused, (MS, "FusedMatMul"): _fused_matmul,
    (MS, "QuickGelu"): _quick_gelu, (MS, "Gelu"): _bias_gelu, (MS, "BiasGelu"): _bias_gelu,
    (MS, "FastGelu"): _fast_gelu, (MS, "BiasAdd"): _bias_add,
    (MS, "SkipLayerNormalization"): _skip_layer_norm, (MS, "SkipSimplifiedLayerNormalization"): _skip_layer_norm,
    ("", "SimplifiedLayerNormalization"): _simplified_layer_norm,
    # QOperator int8 ops
    ("", "QLinearConv"): _qlinear_product, ("", "QLinearMatMul"): _qlinear_product, (MS, "QGemm"): _qlinear_product,
    (MS, "QLinearAdd"): _qlinear_binary, (MS, "QLinearMul"): _qlinear_binary,
    **{(MS, op): _qlinear_unary for op in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
                                            "QLinearGlobalAveragePool", "QLinearAveragePool")},
    (MS, "QLinearConcat"): _qlinear_concat, (MS, "DynamicQuantizeMatMul"): _dynamic_quantize_matmul,
    (MS, "MatMulIntegerToFloat"): _matmul_integer_to_float,
    # onnxruntime.transformers' fusions
    (MS, "Attention"): _attention, (MS, "MultiHeadAttention"): _multi_head_attention,
    (MS, "EmbedLayerNormalization"): _embed_layer_norm, (MS, "RotaryEmbedding"): _rotary,
    (MS, "MatMulNBits"): _matmul_nbits,
    # standard ops written another way
    ("", "Gemm"): _gemm, ("", "Erfc"): _erfc,
}

# Standard-domain ops that give respell work: those SPELLINGS rewrites, and the two that its
# sinking steps move (a model without com.microsoft nodes and none of these is left as it is).
_STANDARD_TRIGGERS = frozenset({op for domain, op in SPELLINGS if domain != MS} | {"Transpose", "DequantizeLinear"})


def _spell(n: onnx.NodeProto, e: _Emit, rank, sizes, value) -> bool:
    """Append n's standard spelling to e (SPELLINGS); False where n has none."""
    a = _attrs(n)  # of every node: an attribute that cannot be read fails here, whatever the op
    spelling = SPELLINGS.get(("" if n.domain == "ai.onnx" else n.domain, n.op_type))
    return spelling is not None and spelling(n, e, a, rank, sizes, value)


def respell(model: onnx.ModelProto) -> None:
    """Rewrite, in place and in topological order, the nodes of model.graph that have a standard
    spelling here (see the module docstring). Runs before shape inference of the prepared model."""
    graph = model.graph
    if any(n.domain == "com.microsoft.nchwc" for n in graph.node):
        warnings.warn("the file holds onnxruntime's NCHWc layout ops (optimisation level 'all'), whose "
                      "weights are blocked for the CPU that saved it; they stay `unknown` and the code "
                      "will not match the model's. Hash the model as exported, or saved at level 'extended'",
                      stacklevel=2)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if not any(n.domain == MS or n.op_type in _STANDARD_TRIGGERS for n in graph.node):
        return
    if any(n.domain == MS for n in graph.node) and not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))  # onnxruntime.transformers leaves it out
    tensors = {t.name: t for t in graph.initializer}
    tensors.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                    for a in n.attribute if a.name == "value" and a.type == a.TENSOR})
    consts = {k: tuple(t.dims) for k, t in tensors.items()}
    memo: dict = {}  # what spelled nodes share (one mask term for every attention node)
    for n in graph.node:  # lengths an optimiser counted from a 2-D mask: attention reads the mask
        if n.op_type == "ReduceSum" and _attrs(n).get("keepdims", 1) == 0:
            axes = _attrs(n).get("axes")
            if axes is None and _input(n, 1) in tensors:
                axes = onnx.numpy_helper.to_array(tensors[n.input[1]]).tolist()
            if axes in ([1], [-1]):
                memo["raw mask", n.output[0]] = n.input[0]
    for _ in range(3):  # a rank unknown behind a contrib op is known once that op is spelled
        tensor_type = _lazy_types(model, consts)

        def rank(x, tensor_type=tensor_type):  # this pass's types, bound at definition
            t = tensor_type(x)
            return len(t.shape.dim) if t is not None and t.HasField("shape") else None

        def sizes(x):  # element count of a constant; None for a computed tensor
            return int(np.prod(consts[x])) if x in consts else None

        def value(x):  # a constant's values; None for a computed tensor
            t = tensors.get(x)
            return None if t is None else onnx.numpy_helper.to_array(t)

        nodes, changed, pending = [], False, False
        for n in graph.node:
            e = _Emit(n, lambda n=n, tensor_type=tensor_type:
                      _float_type(tensor_type(n.input[0]) if n.input else None), opset, tensor_type, memo)
            if _spell(n, e, rank, sizes, value):
                nodes.extend(e.nodes)
                changed = True
            else:
                pending |= n.domain == MS
                nodes.append(n)
        nodes = _sink_dequantize(nodes, sizes, {o.name for o in graph.output})
        nodes = _sink_transposes(graph, nodes, rank, opset, tensor_type)
        if changed or [id(n) for n in nodes] != [id(n) for n in graph.node]:
            del graph.node[:]
            graph.node.extend(nodes)
        if not (changed and pending):
            break


def _lazy_types(model: onnx.ModelProto, consts: dict[str, tuple[int, ...]]):
    """x -> its TypeProto.Tensor or None. Graph inputs and constants answer from the file; for
    anything else ONNX shape inference runs, once, on the first question (most models never ask:
    their transposes carry perms and their elementwise constants are initializers)."""
    known = {v.name: v.type.tensor_type for v in model.graph.input}
    known.update({t.name: helper.make_tensor_type_proto(t.data_type, list(t.dims)).tensor_type
                  for t in model.graph.initializer})
    known.update({n.output[0]: helper.make_tensor_type_proto(a.t.data_type, list(a.t.dims)).tensor_type
                  for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                  if a.name == "value" and a.type == a.TENSOR and n.output[0] in consts})
    inferred: dict | None = None

    def tensor_type(x: str):
        nonlocal inferred
        if x in known:
            return known[x]
        if inferred is None:
            inferred = {v.name: v.type.tensor_type for v in model.graph.value_info}
            inferred.update({v.name: v.type.tensor_type for v in infer_shapes(model.graph, model) or []})
        return inferred.get(x)

    return tensor_type


def _float_type(t) -> int:
    """The float element type constants written beside a tensor of type `t` take."""
    return t.elem_type if t is not None and t.elem_type in (1, 10, 11, 16) else onnx.TensorProto.FLOAT


def _sink_dequantize(nodes: list[onnx.NodeProto], sizes, outputs: set[str]) -> list[onnx.NodeProto]:
    """DequantizeLinear(L(q)) -> L(DequantizeLinear(q)) for a layout op or max-pool L and a
    per-tensor scale: so that a QuantizeLinear and the DequantizeLinear reading it meet."""
    produced = {o: n for n in nodes for o in n.output}
    out: list[onnx.NodeProto] = []
    done: dict[tuple, str] = {}  # (source, scale, zero, steps so far) -> the float tensor written for it
    alias: dict[str, str] = {}  # a second alike DequantizeLinear's output -> the first's
    for n in nodes:
        if any(x in alias for x in n.input):
            renamed = onnx.NodeProto()
            renamed.CopyFrom(n)
            for k, x in enumerate(n.input):
                renamed.input[k] = alias.get(x, x)
            n = renamed
        layout = produced.get(n.input[0]) if n.op_type == "DequantizeLinear" and n.input else None
        steps = []
        while (layout is not None and layout.op_type in _LAYOUT_OPS and layout.domain in ("", "ai.onnx")
               and len(layout.output) == 1 and sizes(n.input[1]) == 1):
            steps.append(layout)
            layout = produced.get(layout.input[0])
        if not steps:
            out.append(n)
            continue
        key: tuple = (steps[-1].input[0], *n.input[1:])
        if key not in done:
            done[key] = f"{n.output[0]}__hnn_dq"
            out.append(helper.make_node("DequantizeLinear", list(key), [done[key]]))
        for k, step in enumerate(reversed(steps)):  # a prefix another reader moved already is shared
            current, key = done[key], key + (id(step),)
            last = k == len(steps) - 1
            if key in done and not (last and n.output[0] in outputs):
                if last:
                    alias[n.output[0]] = done[key]
                continue
            moved = onnx.NodeProto()
            moved.CopyFrom(step)
            moved.name = ""
            moved.input[0] = current
            moved.output[0] = done[key] = n.output[0] if last else f"{n.output[0]}__hnn_l{k}"
            out.append(moved)
    return out


def _sink_transposes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], rank, opset: int,
                     tensor_type=lambda x: None) -> list[onnx.NodeProto]:
    """Elementwise ops, reductions and Pad read Transpose(u) as the op on u, transposed after:
    op(T(u), c) becomes T(op(u, T^-1(c))), with constants (and tensors computed from constants
    only) broadcast to the rank and permuted back, and a reduction's axes mapped. A tensor stays
    a pending transpose (`pending[t] = (u, perm)`) while only such ops read it; the Transpose is
    written where anything else reads it, so composed transposes meet as one."""
    inits = {t.name: t for t in graph.initializer}
    axes_values = {t.name: [int(v) for v in onnx.numpy_helper.to_array(t).reshape(-1)]
                   for t in [*graph.initializer, *(a.t for n in nodes if n.op_type == "Constant" for a in n.attribute
                                                    if a.name == "value" and a.type == a.TENSOR)]
                   if t.data_type == onnx.TensorProto.INT64 and len(t.dims) <= 1 and math.prod(t.dims) <= 64
                   and not external_data_helper.uses_external_data(t)}
    scalars = {k for k, t in inits.items() if int(np.prod(t.dims)) == 1}
    consts = set(inits) | {n.output[0] for n in nodes if n.op_type == "Constant"}
    for n in nodes:  # tensors computed from constants only (a Cast of an fp16 weight; CastLike reads a type)
        read = n.input[:1] if n.op_type == "CastLike" else n.input
        if (n.input and all(x in consts for x in read if x) and n.domain in ("", "ai.onnx")
                and not any(a.type in (a.GRAPH, a.GRAPHS) for a in n.attribute)
                and "Random" not in n.op_type):
            consts.update(filter(None, n.output))
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for x in set(n.input[:1] if n.op_type == "CastLike" else n.input):  # CastLike reads a type
            readers.setdefault(x, []).append(n)

    def sinkable(t: str) -> bool:  # else the transpose is written here and read by both
        return t not in outputs and all(r.domain in ("", "ai.onnx") and r.op_type in _SINKABLE | {"Transpose"}
                                        for r in readers.get(t, []))

    pending: dict[str, tuple[str, list[int]]] = {}
    written: set[str] = set()
    new_inits: list[onnx.TensorProto] = []
    out: list[onnx.NodeProto] = []

    def materialise(t: str) -> None:
        if t in pending and t not in written:
            u, perm = pending[t]
            out.append(helper.make_node("Transpose", [u], [t], perm=perm))
            written.add(t)

    def int64s(values, hint: str) -> str:
        new_inits.append(onnx.numpy_helper.from_array(np.asarray(values, np.int64), f"{hint}__hnn_axes"))
        return new_inits[-1].name

    producer = {o: n for n in nodes for o in n.output}

    def rank_of(x: str) -> int | None:  # through the unary ops a respelling just wrote
        r = rank(x)
        while r is None and x in producer and producer[x].op_type in _UNARY and producer[x].input:
            x = producer[x].input[0]
            r = rank(x)
        return r

    def static_shape(x: str) -> list[int] | None:
        t = tensor_type(x)
        dims = list(t.shape.dim) if t is not None and t.HasField("shape") else None
        return None if dims is None or not all(d.HasField("dim_value") for d in dims) else [d.dim_value for d in dims]

    def unit_axes_moved(x: str, perm: list[int]) -> str | None:
        """y where x = Reshape(y) only moves y's unit axes to where T^-1 puts them: TFLite writes
        a squeeze-excite's [1, C, 1, 1] -> [1, 1, 1, C] so, where a Keras file has a transpose."""
        p = producer.get(x)
        if p is None or p.op_type != "Reshape":
            return None
        y_shape, x_shape = static_shape(p.input[0]), static_shape(x)
        if y_shape is None or x_shape is None or len(x_shape) != len(perm):
            return None
        back = [x_shape[i] for i in np.argsort(perm)]
        single = sum(d != 1 for d in x_shape) <= 1  # then a reshape and a transpose order values alike
        return p.input[0] if single and back == y_shape else None

    def unpermuted(x: str, perm: list[int], hint: str) -> str | None:
        """x (a constant operand) as the op on u must read it: broadcast to rank, permuted back."""
        r = rank_of(x)
        if r is None or r > len(perm):
            return None
        if x in inits and int(np.prod(inits[x].dims)) == 1:
            return x
        if r < len(perm):
            leading = list(range(len(perm) - r))
            x_name = f"{hint}__hnn_b"
            out.append(helper.make_node("Unsqueeze", [x, int64s(leading, hint)], [x_name]) if opset >= 13
                       else helper.make_node("Unsqueeze", [x], [x_name], axes=leading))
            x = x_name
        out.append(helper.make_node("Transpose", [x], [f"{hint}__hnn_c"], perm=[int(i) for i in np.argsort(perm)]))
        return out[-1].output[0]

    for n in nodes:
        standard = n.domain in ("", "ai.onnx")
        if standard and n.op_type == "Transpose" and len(n.input) == 1:
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            if perm is None and rank(n.input[0]) is not None:  # no perm: the axes reversed
                perm = list(reversed(range(rank(n.input[0]))))
            u, inner = pending.get(n.input[0], (n.input[0], list(range(len(perm or [])))))
            if perm is not None and len(inner) == len(perm):
                composed = [inner[p] for p in perm]
                if sinkable(n.output[0]):
                    pending[n.output[0]] = (u, composed)
                    continue
                if n.input[0] in pending:  # two transposes as one (the identity, where they cancel)
                    out.append(helper.make_node("Transpose", [u], [n.output[0]], perm=composed))
                    continue
        moved = (_sunk(n, pending, consts, scalars, axes_values, unpermuted, int64s, unit_axes_moved)
                 if standard and len(n.output) == 1 else None)
        if moved is not None:
            node, perm = moved
            out.append(node)
            pending[n.output[0]] = (node.output[0], perm)
            if not sinkable(n.output[0]):  # written here, and every reader reads it as written
                materialise(n.output[0])
                del pending[n.output[0]]
            continue
        if n.op_type == "CastLike" and len(n.input) == 2 and n.input[1] in pending:  # same type, untransposed
            n = _with_input(n, 1, pending[n.input[1]][0])
        for x in n.input:
            materialise(x)
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in n.attribute):  # a subgraph may read any tensor
            for t in list(pending):
                materialise(t)
        out.append(n)
    for t in outputs:
        materialise(t)
    graph.initializer.extend(new_inits)
    return out


def _with_input(n: onnx.NodeProto, k: int, name: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(n)
    copy.input[k] = name
    return copy


def _sunk(n: onnx.NodeProto, pending, consts, scalars, axes_values, unpermuted, int64s, unit_axes_moved):
    """(n written on the untransposed tensors, the transpose of its output) or None. A binary
    op's other computed operand may be a reshape that moves unit axes as the transpose would."""
    dynamic = [x for x in n.input if x and x not in consts]
    transposed = [x for x in dynamic if x in pending]
    if not transposed:
        return None
    perm = pending[transposed[0]][1]
    if any(pending[x][1] != perm for x in transposed):
        return None
    reshaped = {x: unit_axes_moved(x, perm) for x in dynamic if x not in pending}
    if reshaped and (n.op_type not in _BINARY or None in reshaped.values()):
        return None
    moved = onnx.NodeProto()
    moved.CopyFrom(n)
    moved.name = ""
    moved.output[0] = f"{n.output[0]}__hnn_u"
    per_tensor = n.op_type not in _QDQ or all(x in axes_values or x in scalars for x in n.input[1:] if x)
    if n.op_type in _UNARY and len(dynamic) == 1 and n.input[0] == dynamic[0] and per_tensor:
        moved.input[0] = pending[dynamic[0]][0]  # other inputs: Clip's scalar bounds
        return moved, perm
    if n.op_type in _BINARY:
        for k, x in enumerate(n.input):
            if x in pending:
                moved.input[k] = pending[x][0]
            elif x in reshaped:
                moved.input[k] = reshaped[x]
            elif x:
                moved.input[k] = unpermuted(x, perm, f"{n.output[0]}_{k}") or ""
                if not moved.input[k]:
                    return None
        return moved, perm
    if len(dynamic) != 1 or n.input[0] != dynamic[0]:
        return None
    attrs = {a.name: a for a in n.attribute}
    r = len(perm)
    if n.op_type == "Pad":  # pads [begin per axis, end per axis] of T(u): permuted onto u's axes
        pads = list(attrs["pads"].ints) if "pads" in attrs else axes_values.get(_input(n, 1))
        if pads is None or len(pads) != 2 * r or _input(n, 3):
            return None
        moved_pads = [0] * (2 * r)
        for a in range(r):
            moved_pads[perm[a]], moved_pads[r + perm[a]] = pads[a], pads[r + a]
        moved.input[0] = pending[dynamic[0]][0]
        if "pads" in attrs:
            del moved.attribute[:]
            moved.attribute.extend([x for x in n.attribute if x.name != "pads"]
                                   + [helper.make_attribute("pads", moved_pads)])
        else:
            moved.input[1] = int64s(moved_pads, n.output[0])
        return moved, perm
    if n.op_type not in _REDUCE:
        return None
    if "axes" in attrs:
        axes = list(attrs["axes"].ints)
    elif len(n.input) > 1 and n.input[1] in axes_values:
        axes = axes_values[n.input[1]]
    else:
        return None
    keep = attrs["keepdims"].i if "keepdims" in attrs else 1
    axes = [a % r for a in axes]
    new_axes = sorted(perm[a] for a in axes)
    moved.input[0] = pending[dynamic[0]][0]
    if "axes" in attrs:
        del moved.attribute[:]
        moved.attribute.extend([helper.make_attribute("axes", new_axes), helper.make_attribute("keepdims", keep)])
    else:
        moved.input[1] = int64s(new_axes, n.output[0])
    if keep:
        return moved, perm
    remaining = [i for i in range(r) if i not in new_axes]
    return moved, [remaining.index(perm[a]) for a in range(r) if a not in axes]
