"""Fuzzing the converters: small valid seed models, byte- and structure-level mutations, and one
harness that runs a case through from_onnx + hash and names the outcome.

Shared by tests/test_fuzz.py (a bounded run in CI) and benchmarks/fuzz.py (a longer run by hand).
A case is plain data, (family, seed name, mutations, where), so a failure prints its own
reproducer: `run_case(case)` rebuilds the exact input and runs it. `where` says how the model is
given: in memory, as a file, or as a file whose initializers are in an external data file.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import resource
import signal
import sys
import tempfile
import types
import warnings
from unittest import mock

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, external_data_helper, helper, numpy_helper

import hnn_jax
from hnn_jax.testing import models
from hnn_jax import HashCode, HNNError, converters
from hnn_jax.converters.canonical import fusion, graph
from hnn_jax.converters.canonical.passes import constants
from hnn_jax.hasher import validate_graph

IN_MEMORY, AS_FILE, EXTERNAL_DATA = 0, 1, 2   # how a case's model is given to from_onnx
SEEDS = ("cnn", "mlp", "transformer", "int8_mlp", "handmade_vision", "handmade_ids", "handmade_sizes",
         "identity_chain")
PROBE_TIMEOUT_S = 2.0
MAX_ACTIVATION_BYTES = 1 << 28   # the probe's limit here (default 2 GiB): cases stay light
CASE_TIME_LIMIT_S = 10.0         # a case slower than this counts as a hang
MEMORY_HEADROOM = 4 << 30        # address space a case may add before allocations fail


# ----------------------------------------------------------------------------- seed models

def _handmade_vision() -> onnx.ModelProto:
    """Pad -> Conv -> BatchNorm -> Relu -> MaxPool, shape arithmetic into a Reshape, Slices that
    partition a tensor, MatMul+Add, a decomposed erf GELU, Softmax; a second pooled output."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Constant", [], ["pads"], value=numpy_helper.from_array(i64(0, 0, 1, 1, 0, 0, 1, 1))),
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
        helper.make_node("Conv", ["p", "w", "b"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "s", "sb", "m", "v"], ["bn"], epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["mp"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["n0"], axis=0),
        helper.make_node("Unsqueeze", ["n0", "axes0"], ["n0u"]),
        helper.make_node("Concat", ["n0u", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["mp", "newshape"], ["flat"]),
        helper.make_node("Slice", ["flat", "s0", "e32", "ax1"], ["lo"]),
        helper.make_node("Slice", ["flat", "s32", "e64", "ax1"], ["hi"]),
        helper.make_node("Mul", ["lo", "hi"], ["prod"]),
        helper.make_node("MatMul", ["prod", "w2"], ["mm"]),
        helper.make_node("Add", ["mm", "b2"], ["logits"]),
        helper.make_node("Div", ["logits", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["e1"]),
        helper.make_node("Mul", ["logits", "e1"], ["g2"]),
        helper.make_node("Mul", ["g2", "half"], ["gelu"]),
        helper.make_node("Softmax", ["gelu"], ["y"], axis=-1),
        helper.make_node("ReduceMean", ["r"], ["pooled"], axes=[2, 3], keepdims=0),
    ]
    inits = [("w", f32(4, 3, 3, 3)), ("b", f32(4)), ("s", f32(4) + 2), ("sb", f32(4)), ("m", f32(4)),
             ("v", np.abs(f32(4)) + 0.5), ("zero", np.array(0, np.int64)), ("axes0", i64(0)), ("minus1", i64(-1)),
             ("s0", i64(0)), ("e32", i64(32)), ("s32", i64(32)), ("e64", i64(64)), ("ax1", i64(1)),
             ("w2", f32(32, 10)), ("b2", f32(10)), ("sqrt2", np.float32(math.sqrt(2))),
             ("one", np.float32(1)), ("half", np.float32(0.5))]
    return models.onnx_model(nodes, [models.float_input("x", ["batch", 3, 8, 8])],
                             [models.float_input("y", None), models.float_input("pooled", None)], inits)


def _handmade_ids() -> onnx.ModelProto:
    """Integer ids -> embedding -> LayerNorm -> a local function (swish) -> Transpose -> Where ->
    fp16 Cast round trip -> ReduceSum -> plus an If with two subgraphs -> Clip(0, 6)."""
    rng = np.random.default_rng(1)
    swish = helper.make_function(
        "custom", "Swish", ["a"], ["b"],
        [helper.make_node("Sigmoid", ["a"], ["sa"]), helper.make_node("Mul", ["a", "sa"], ["b"])],
        [helper.make_opsetid("", 17)])
    then_branch = helper.make_graph([helper.make_node("Identity", ["rs"], ["t_out"])], "then", [],
                                    [models.float_input("t_out", None)])
    else_branch = helper.make_graph([helper.make_node("Neg", ["rs"], ["e_out"])], "else", [],
                                    [models.float_input("e_out", None)])
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("Swish", ["ln"], ["sw"], domain="custom"),
        helper.make_node("Transpose", ["sw"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Greater", ["t", "zero_f"], ["mask"]),
        helper.make_node("Where", ["mask", "t", "neg_f"], ["wh"]),
        helper.make_node("Cast", ["wh"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes2"], ["rs"], keepdims=1),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Add", ["rs", "branch"], ["sum"]),
        helper.make_node("Clip", ["sum", "zero_f", "six"], ["y"]),
    ]
    inits = [("emb", rng.standard_normal((50, 8)).astype(np.float32)),
             ("gamma", np.ones(8, np.float32)), ("beta", np.zeros(8, np.float32)),
             ("zero_f", np.float32(0)), ("neg_f", np.float32(-1)), ("axes2", np.array([2], np.int64)),
             ("cond", np.array(True)), ("six", np.float32(6))]
    model = models.onnx_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
                              [models.float_input("y", None)], inits)
    model.opset_import.append(helper.make_opsetid("custom", 1))
    model.functions.append(swish)
    return model


def _handmade_sizes() -> onnx.ModelProto:
    """Ops whose output size is a constant input (ConstantOfShape, Expand, Tile, Range, Pad, TopK,
    OneHot) and a Loop with a constant trip count: mutated, they ask for huge tensors or long runs."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Add", ["v_in", "one"], ["v_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                              models.float_input("v_in", None)],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              models.float_input("v_out", None)])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape_c"], ["c"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Expand", ["x", "shape_e"], ["e"]),
        helper.make_node("Add", ["e", "c"], ["a"]),
        helper.make_node("Tile", ["a", "repeats"], ["t"]),
        helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
        helper.make_node("Mul", ["t", "r"], ["m"]),
        helper.make_node("Pad", ["m", "pads"], ["p"]),
        helper.make_node("TopK", ["p", "k"], ["values", "indices"], axis=-1),
        helper.make_node("OneHot", ["indices", "depth", "on_off"], ["oh"]),
        helper.make_node("ReduceSum", ["oh", "axis2"], ["rs"], keepdims=0),
        helper.make_node("Add", ["values", "rs"], ["sum"]),
        helper.make_node("Loop", ["trips", "true", "sum"], ["y"], body=body),
    ]
    inits = [("shape_c", i64(2, 4)), ("shape_e", i64(2, 4)), ("repeats", i64(1, 2)),
             ("start", np.float32(0)), ("limit", np.float32(8)), ("delta", np.float32(1)),
             ("pads", i64(0, 1, 0, 1)), ("k", i64(3)), ("depth", i64(5)),
             ("on_off", np.array([0, 1], np.float32)), ("axis2", i64(2)), ("trips", np.array(3, np.int64)),
             ("true", np.array(True)), ("one", np.float32(1))]
    return models.onnx_model(nodes, [models.float_input("x", [1, 4])], [models.float_input("y", None)], inits)


def _torch_seed(build, **kwargs) -> onnx.ModelProto:
    from hnn_jax.converters.export import torch_to_onnx

    module, x = build(0, **kwargs)
    return torch_to_onnx(module, x)


@functools.cache
def seed_bytes(name: str) -> bytes:
    """The serialized seed model (built once per process)."""
    from hnn_jax.training.variants import int8_dynamic

    if name == "cnn":
        model = _torch_seed(models.torch_cnn, width=4)
    elif name == "mlp":
        model = _torch_seed(models.torch_mlp, depth=2, width=16)
    elif name == "transformer":
        model = _torch_seed(models.torch_transformer, layers=1, d_model=16, seq=4)
    elif name == "int8_mlp":
        model = int8_dynamic(onnx.load_from_string(seed_bytes("mlp")))
    elif name == "handmade_vision":
        model = _handmade_vision()
    elif name == "handmade_ids":
        model = _handmade_ids()
    elif name == "handmade_sizes":
        model = _handmade_sizes()
    elif name == "identity_chain":  # tiny: rewiring and renaming reach every pass quickly
        model = models.onnx_model(
            [helper.make_node(op, [a], [b]) for op, a, b in
             [("Identity", "x", "a"), ("Relu", "a", "b"), ("Identity", "b", "c"), ("Relu", "c", "y")]],
            [models.float_input("x", [1, 4])], [models.float_input("y", None)])
    else:
        raise KeyError(name)
    return model.SerializeToString()


# ----------------------------------------------------------------------------- mutations
# Every mutation is a tuple (name, *arguments); indices are taken modulo the size of what they
# index, and a mutation with nothing to act on does nothing.

OPS = ["Relu", "Add", "MatMul", "Conv", "Reshape", "Transpose", "Softmax", "Concat", "Gather",
       "Slice", "Split", "Shape", "Size", "Constant", "Identity", "Cast", "ReduceMean",
       "BatchNormalization", "LayerNormalization", "Gemm", "Erf", "Erfc", "Where", "Pad",
       "MaxPool", "AveragePool", "Resize", "Expand", "Tile", "ConstantOfShape", "Range", "TopK",
       "NonZero", "Loop", "If", "Scan", "DequantizeLinear", "QuantizeLinear", "MatMulInteger",
       "ConvInteger", "DynamicQuantizeLinear", "Einsum", "LSTM", "Squeeze", "Unsqueeze", "Flatten",
       "Clip", "Dropout", "RandomNormal", "Sum", "OneHot", "CumSum", "Trilu", "GatherElements",
       "ScatterND", "Mul", "Sub", "Div", "Pow", "Sqrt", "ReduceMax", "ReduceSum", "ArgMax",
       "GlobalAveragePool", "ConvTranspose", "Sigmoid", "Gelu",
       "FancyOp", "", "relu", "Swish"]
DOMAINS = ["", "ai.onnx", "com.microsoft", "ai.onnx.ml", "com.example", "custom"]
DIMS = [0, -1, -5, 1, 3, 10**9, 2**31, 2**62, "N", "", None]
ELEM_TYPES = list(range(26)) + [99, -1]
OPSETS = [0, -1, 1, 5, 7, 9, 11, 13, 17, 18, 21, 22, 23, 25, 99, 10**6]
IR_VERSIONS = [0, 1, 3, 7, 9, 10, 11, 100]
ATTR_NAMES = ["axis", "axes", "perm", "kernel_shape", "strides", "pads", "dilations", "group", "to",
              "epsilon", "value", "approximate", "keepdims", "mode", "alpha", "split", "foo"]
ATTR_VALUES = [0, -1, 1, 2, 10**9, -10**9, 2**62, 0.0, -1.0, math.nan, math.inf, 1e30,
               [], [0], [-1, -1], [10**9, 10**9], [1] * 8, [0, 0, 0, 0], [2, 0, 1], [1.5, -2.0],
               "", "tanh", "garbage", "NOTSET", "SAME_UPPER", "constant",
               ("tensor", ()), ("tensor", (0,)), ("tensor", (3, 4)), ("tensor_big_dims", (10**9,))]
# Values of the attribute's own type, by type: odd axes, sizes, permutations and paddings.
SAME_TYPE_VALUES = {
    onnx.AttributeProto.INT: [0, -1, 1, 2, 3, -4, 7, 10**9, -10**9, 2**62],
    onnx.AttributeProto.INTS: [[], [0], [1], [-1], [0, 0], [1, 0], [2, 0, 1], [0, 2, 1, 3], [-1, -1],
                               [0, 0, 0, 0], [5, 5, 5, 5], [-2, -2, 2, 2], [10**9, 10**9], [1] * 9],
    onnx.AttributeProto.FLOAT: [0.0, -1.0, 1e-30, 1e30, math.nan, math.inf, -math.inf],
    onnx.AttributeProto.FLOATS: [[], [0.0], [math.nan], [1e30, -1e30]],
    onnx.AttributeProto.STRING: ["", "tanh", "none", "NOTSET", "VALID", "SAME_LOWER", "reflect", "garbage"],
}
INIT_EDITS = ["truncate_raw", "extend_raw", "clear", "dims_huge", "dims_negative", "dims_zero",
              "dims_scalar", "dims_extra", "dtype", "float_data", "external", "nan", "huge_values",
              "int_values", "float_values"]
# external_data entries: paths out of the model's folder (OUTSIDE is a file next to that folder,
# link.bin a symlink to it), other files, offsets and lengths out of range or not numbers.
OUTSIDE = "outside.bin"
EXTERNAL_VALUES = {
    "location": ["w.bin", "./w.bin", "../" + OUTSIDE, "link.bin", "/etc/passwd", "", "m.onnx",
                 "missing.bin", "sub/../w.bin", "w.bin/", "."],
    "offset": ["0", "-1", "4", "7", "4096", str(10**12), "abc", ""],
    "length": ["0", "-1", "3", "4096", str(10**12), "abc", ""],
    "checksum": ["0"],
    "basepath": ["..", "/"],
}
DECLARED_SHAPES = [None, [], [0], [1], [7], [1, 1], [2, 3], [1, 8, 0], [1, 3, 16, 16], [10**9, 10**9],
                   ["N", 4], [1, 2, 3, 4, 5, 6, 7, 8]]
FLOAT_VALUES = [0.5, -1.0, 1e6, 3e7, 1e9, -1e9, 1e-30]  # sizes (Range), scales, epsilons
INT_VALUES = [0, -1, 1, 2, 7, -7, 2**31, 10**9, -10**9, 2**62, -(2**63)]
MISSING = "__hnn_fuzz_missing__"


def _attribute(name: str, value) -> onnx.AttributeProto:
    if isinstance(value, tuple):
        kind, dims = value
        t = numpy_helper.from_array(np.ones(dims, np.float32) if kind == "tensor" else np.ones(1, np.float32))
        if kind == "tensor_big_dims":
            t.dims[:] = list(dims)
        return helper.make_attribute(name, t)
    if value == []:
        return helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS)
    return helper.make_attribute(name, value)


def _tensor_names(g: onnx.GraphProto) -> list[str]:
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    return names + [o for n in g.node for o in n.output]


def _pick(seq, i):
    return seq[i % len(seq)] if len(seq) else None


def _set_dim(dim, value) -> None:
    dim.Clear()
    if isinstance(value, int):
        dim.dim_value = value
    elif isinstance(value, str):
        dim.dim_param = value


def _readable(t: onnx.TensorProto) -> bool:
    """Whether an (earlier mutated) initializer holds, inline, data that fills its dims."""
    if external_data_helper.uses_external_data(t):
        return False
    try:
        numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError):
        return False
    return True


def _edit_initializer(t: onnx.TensorProto, edit: str, arg: int) -> None:
    if edit == "truncate_raw":
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif edit == "extend_raw":
        t.raw_data = t.raw_data + b"\x00" * 8
    elif edit == "clear":
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.ClearField("int64_data")
        t.ClearField("int32_data")
    elif edit == "dims_huge":
        t.dims[:] = [10**9] + list(t.dims[1:])
    elif edit == "dims_negative":
        t.dims[:] = [-3] + list(t.dims[1:])
    elif edit == "dims_zero":
        t.dims[:] = [0]
    elif edit == "dims_scalar":
        del t.dims[:]
    elif edit == "dims_extra":
        t.dims.append(1 + arg % 7)
    elif edit == "dtype":
        t.data_type = _pick(ELEM_TYPES, arg)
    elif edit == "float_data":
        t.ClearField("raw_data")
        t.float_data[:] = [1.0] * (arg % 5)
    elif edit == "external":
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        entry = t.external_data.add()
        entry.key, entry.value = "location", _pick(["w.bin", "../w.bin", "/etc/passwd", ""], arg)
    elif edit == "int_values" and t.data_type in (TensorProto.INT64, TensorProto.INT32) and _readable(t):
        value = numpy_helper.to_array(t)
        fill = np.full_like(value, np.int64(_pick(INT_VALUES, arg)).astype(value.dtype))  # int32 wraps
        fill.reshape(-1)[: arg % max(value.size, 1)] = value.reshape(-1)[: arg % max(value.size, 1)]
        t.CopyFrom(numpy_helper.from_array(fill, t.name))
    elif edit == "float_values" and t.data_type == TensorProto.FLOAT and _readable(t):
        t.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(t), _pick(FLOAT_VALUES, arg)), t.name))
    elif edit in ("nan", "huge_values") and t.data_type == TensorProto.FLOAT and _readable(t):
        value = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(np.full_like(value, np.nan if edit == "nan" else 3e38), t.name))


def mutate_structure(model: onnx.ModelProto, mutation: tuple) -> None:
    """Apply one structure-level mutation to `model` in place."""
    g = model.graph
    name, *args = mutation
    nodes, names = list(g.node), _tensor_names(g)
    node = _pick(nodes, args[0]) if args and isinstance(args[0], int) else None
    if name == "op_type" and node is not None:
        node.op_type = args[1]
    elif name == "domain" and node is not None:
        node.domain = args[1]
    elif name == "drop_node" and node is not None:
        g.node.remove(node)
    elif name == "duplicate_node" and node is not None:
        g.node.insert(args[0] % len(nodes), node)
    elif name == "rewire" and node is not None and len(node.input):
        target = {"missing": MISSING, "empty": ""}.get(args[2]) if isinstance(args[2], str) else None
        node.input[args[1] % len(node.input)] = _pick(names, args[2]) if target is None else target
    elif name == "cycle" and node is not None and len(node.input):
        i = args[0] % len(nodes)  # read an output of this node or of one after it
        later = nodes[i + args[1] % (len(nodes) - i)]
        if len(later.output):
            node.input[args[2] % len(node.input)] = later.output[0]
    elif name == "rename_output" and node is not None and len(node.output):
        node.output[0] = MISSING if args[1] is None else _pick(names, args[1])
    elif name == "input_dim":
        value = _pick(g.input, args[0])
        if value is not None and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            if len(dims):
                _set_dim(dims[args[1] % len(dims)], args[2])
    elif name == "input_rank":
        value = _pick(g.input, args[0])
        if value is not None and value.type.HasField("tensor_type"):
            shape = value.type.tensor_type.shape
            if args[1] < 0:
                value.type.tensor_type.ClearField("shape")
            elif args[1] < len(shape.dim):
                del shape.dim[args[1]:]
            else:
                for _ in range(args[1] - len(shape.dim)):
                    shape.dim.add().dim_value = 2
    elif name == "elem_type":
        where = {"input": g.input, "output": g.output, "value_info": g.value_info}.get(args[0])
        if where is not None:
            value = _pick(where, args[1])
            if value is not None:
                value.type.tensor_type.elem_type = args[2]
        else:
            t = _pick(g.initializer, args[1])
            if t is not None:
                t.data_type = args[2]
    elif name == "attr_change" and node is not None and len(node.attribute):
        a = node.attribute[args[1] % len(node.attribute)]
        a.CopyFrom(_attribute(a.name, args[2]))
    elif name == "attr_value" and node is not None and len(node.attribute):
        a = node.attribute[args[1] % len(node.attribute)]
        if a.type in SAME_TYPE_VALUES:
            a.CopyFrom(helper.make_attribute(a.name, _pick(SAME_TYPE_VALUES[a.type], args[2]), attr_type=a.type))
    elif name == "attr_remove" and node is not None and len(node.attribute):
        del node.attribute[args[1] % len(node.attribute)]
    elif name == "attr_add" and node is not None:
        node.attribute.append(_attribute(args[1], args[2]))
    elif name == "initializer":
        t = _pick(g.initializer, args[0])
        if t is not None:
            _edit_initializer(t, args[1], args[2])
    elif name == "opset":
        del model.opset_import[:]
        if args[0] is not None:
            model.opset_import.append(helper.make_opsetid(args[1], args[0]))
    elif name == "ir_version":
        model.ir_version = args[0]
    elif name == "remove_output" and len(g.output):
        if args[0] is None:
            del g.output[:]
        else:
            del g.output[args[0] % len(g.output)]
    elif name == "output_name" and len(g.output):
        g.output[args[0] % len(g.output)].name = MISSING if args[1] is None else _pick(names, args[1])
    elif name == "remove_input" and len(g.input):
        del g.input[args[0] % len(g.input)]
    elif name == "duplicate_input" and len(g.input):
        g.input.append(g.input[args[0] % len(g.input)])
    elif name == "declare" and names:  # a declared shape that may lie (used when inference fails)
        value = helper.make_tensor_value_info(_pick(names, args[0]), _pick(ELEM_TYPES[1:17], args[1]),
                                              _pick(DECLARED_SHAPES, args[2]))
        (g.output if args[1] % 5 == 0 else g.value_info).append(value)
    elif name == "external_entry" and len(g.initializer):
        t = g.initializer[args[0] % len(g.initializer)]
        key = _pick(sorted(EXTERNAL_VALUES), args[1])
        t.data_location = TensorProto.EXTERNAL
        entries = [e for e in t.external_data if e.key != key]
        del t.external_data[:]
        t.external_data.extend(entries)
        t.external_data.add(key=key, value=_pick(EXTERNAL_VALUES[key], args[2]))
    elif name == "drop_functions":
        del model.functions[:]
    elif name == "reverse_nodes":
        reordered = list(reversed(nodes))
        del g.node[:]
        g.node.extend(reordered)


def mutate_bytes(data: bytes, mutation: tuple) -> bytes:
    """Apply one byte-level mutation (positions modulo the length)."""
    name, *args = mutation
    if not data:
        return bytes(args[-1]) if name == "insert" else data
    pos = args[0] % len(data)
    if name == "flip":
        return data[:pos] + bytes([data[pos] ^ (1 << args[1])]) + data[pos + 1:]
    if name == "set":
        return data[:pos] + bytes([args[1]]) + data[pos + 1:]
    if name == "truncate":
        return data[:pos]
    if name == "insert":
        return data[:pos] + args[1] + data[pos:]
    if name == "delete":
        return data[:pos] + data[pos + args[1]:]
    if name == "duplicate":
        return data[:pos + args[1]] + data[pos:pos + args[1]] + data[pos + args[1]:]
    if name == "splice":
        other = seed_bytes(args[1])
        start = args[2] % len(other)
        return data[:pos] + other[start:start + args[3]] + data[pos + args[3]:]
    raise ValueError(f"unknown byte mutation {name}")


# ----------------------------------------------------------------------------- strategies

_index = st.integers(0, 1 << 16)
_dim = st.sampled_from(DIMS)
_attr_value = st.sampled_from(ATTR_VALUES)


def byte_mutations():
    pos = st.integers(0, 1 << 20)
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("set"), pos, st.integers(0, 255)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("duplicate"), pos, st.integers(1, 256)),
        st.tuples(st.just("splice"), pos, st.sampled_from(SEEDS), pos, st.integers(1, 256)),
    )


def structure_mutations():
    names = st.one_of(_index, st.sampled_from(["missing", "empty"]))
    return st.one_of(
        st.tuples(st.just("op_type"), _index, st.sampled_from(OPS)),
        st.tuples(st.just("domain"), _index, st.sampled_from(DOMAINS)),
        st.tuples(st.just("drop_node"), _index),
        st.tuples(st.just("duplicate_node"), _index),
        st.tuples(st.just("rewire"), _index, _index, names),
        st.tuples(st.just("cycle"), _index, _index, _index),
        st.tuples(st.just("rename_output"), _index, st.one_of(st.none(), _index)),
        st.tuples(st.just("input_dim"), _index, _index, _dim),
        st.tuples(st.just("input_rank"), _index, st.integers(-1, 6)),
        st.tuples(st.just("elem_type"), st.sampled_from(["input", "output", "value_info", "initializer"]),
                  _index, st.sampled_from(ELEM_TYPES)),
        st.tuples(st.just("attr_change"), _index, _index, _attr_value),
        st.tuples(st.just("attr_value"), _index, _index, _index),
        st.tuples(st.just("attr_remove"), _index, _index),
        st.tuples(st.just("attr_add"), _index, st.sampled_from(ATTR_NAMES), _attr_value),
        st.tuples(st.just("initializer"), _index, st.sampled_from(INIT_EDITS), _index),
        st.tuples(st.just("opset"), st.one_of(st.none(), st.sampled_from(OPSETS)),
                  st.sampled_from(["", "ai.onnx", "com.example"])),
        st.tuples(st.just("ir_version"), st.sampled_from(IR_VERSIONS)),
        st.tuples(st.just("external_entry"), _index, _index, _index),
        st.tuples(st.just("remove_output"), st.one_of(st.none(), _index)),
        st.tuples(st.just("output_name"), _index, st.one_of(st.none(), _index)),
        st.tuples(st.just("remove_input"), _index),
        st.tuples(st.just("duplicate_input"), _index),
        st.tuples(st.just("declare"), _index, _index, _index),
        st.tuples(st.just("drop_functions")),
        st.tuples(st.just("reverse_nodes")),
    )


# Small random graphs over a few names: a name may be written twice, read before it is
# written, never written, or be the graph input (family "graphs").
GRAPH_OPS = {"Identity": 1, "Relu": 1, "Sigmoid": 1, "Neg": 1, "Dropout": 1, "Transpose": 1,
             "Add": 2, "Mul": 2, "Concat": 2}
GRAPH_NAMES = ["x", "a", "b", "c", "d", "e", "f", "g"]


@st.composite
def graph_cases(draw):
    """Mostly well formed (nodes read names already written and write new ones), sometimes not."""
    def name(usual: list[str]) -> str:  # one draw in ten from all names
        return draw(st.sampled_from(GRAPH_NAMES if draw(st.integers(0, 9)) == 9 or not usual else usual))

    written, nodes = ["x"], []
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(sorted(GRAPH_OPS)))
        inputs = tuple(name(written) for _ in range(GRAPH_OPS[op]))
        output = name([n for n in GRAPH_NAMES if n not in written])
        nodes.append((op, inputs, output))
        written.append(output)
    return "graphs", name(written[-1:]), nodes, draw(st.sampled_from([IN_MEMORY, AS_FILE]))


def graph_model(output: str, nodes) -> onnx.ModelProto:
    return models.onnx_model(
        [helper.make_node(op, list(ins), [out], **({"axis": -1} if op == "Concat" else {})) for op, ins, out in nodes],
        [models.float_input("x", [1, 4])], [models.float_input(output, None)])


FAMILIES = ("bytes", "structure", "graphs")


def cases(family: str):
    """Cases of one family: (family, seed, mutations, where) for "bytes" and "structure",
    ("graphs", output name, nodes, where) for "graphs"."""
    if family == "graphs":
        return graph_cases()
    mutations = byte_mutations() if family == "bytes" else structure_mutations()
    return st.tuples(st.just(family), st.sampled_from(SEEDS), st.lists(mutations, min_size=1, max_size=4),
                     st.sampled_from([IN_MEMORY, AS_FILE, EXTERNAL_DATA]))


# ----------------------------------------------------------------------------- running a case

def _with_external_data(seed: str, folder: str) -> onnx.ModelProto:
    """The seed saved in `folder` with every initializer in w.bin; the saved proto, data not loaded.
    Next to the folder lies OUTSIDE, and in it link.bin points there."""
    model = onnx.load_from_string(seed_bytes(seed))
    path = os.path.join(folder, "m.onnx")
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    outside = os.path.join(os.path.dirname(folder), OUTSIDE)
    weights = os.path.join(folder, "w.bin")
    with open(outside, "wb") as g:  # w.bin's bytes (a seed without initializers has no w.bin)
        g.write(open(weights, "rb").read() if os.path.exists(weights) else b"")
    os.symlink(outside, os.path.join(folder, "link.bin"))
    return onnx.load(path, load_external_data=False)


def build(case, folder: str | None = None) -> bytes | onnx.ModelProto:
    """The model of a case: bytes for the byte family, a ModelProto for the others. EXTERNAL_DATA
    cases write their data files in `folder`."""
    family, seed, mutations, where = case
    if family == "graphs":
        return graph_model(seed, mutations)
    external = where == EXTERNAL_DATA and folder is not None
    if family == "bytes":
        data = _with_external_data(seed, folder).SerializeToString() if external else seed_bytes(seed)
        for m in mutations:
            data = mutate_bytes(data, m)
        return data
    model = _with_external_data(seed, folder) if external else onnx.load_from_string(seed_bytes(seed))
    for m in mutations:
        mutate_structure(model, m)
    return model


class OutsideRead(Exception):
    """A file outside the model's folder (OUTSIDE, /etc/passwd) was opened."""


_opened: list[str] | None = None  # paths opened while a case runs (Python-level opens)


def _audit(event: str, args) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class CaseTimeout(Exception):
    """A case ran past CASE_TIME_LIMIT_S (deliberately not an HNNError)."""


class InvalidGraph(Exception):
    """from_onnx returned a graph the hasher rejects (NaN features, bad indices): a converter bug."""


class HugeAllocation(BaseException):
    """An allocation beyond MEMORY_HEADROOM failed inside code that turns failures into a
    fallback (the probe, constant folding, region fusion, shape inference). A BaseException, so
    that no `except Exception` there hides it."""


def _loud(function):
    """`function`, with a MemoryError raised as HugeAllocation."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MemoryError as e:
            raise HugeAllocation(f"{function.__name__}: {e}") from None
    return wrapper


@contextlib.contextmanager
def loud_allocations():
    """MemoryError in constant folding, region fusion (onnx.reference) and shape inference (C++
    std::bad_alloc), whose broad excepts make failures a fallback, raises HugeAllocation."""
    shapes = types.SimpleNamespace(infer_shapes=_loud(graph.shape_inference.infer_shapes))
    loud_evaluate = _loud(graph.evaluate)
    with mock.patch.object(constants, "evaluate", loud_evaluate), \
            mock.patch.object(fusion, "evaluate", loud_evaluate), mock.patch.object(graph, "shape_inference", shapes):
        yield


_ALLOCATION_FAILED = re.compile(r"unable to allocate|bad_alloc|failed to allocate|memoryerror", re.I)


@contextlib.contextmanager
def limits(time_limit_s: float = CASE_TIME_LIMIT_S, headroom: int = MEMORY_HEADROOM):
    """Raise CaseTimeout after time_limit_s, and make allocations beyond `headroom` more address
    space fail (MemoryError) instead of taking the machine's memory."""
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran past {time_limit_s:g} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = used + headroom if hard == resource.RLIM_INFINITY else min(used + headroom, hard)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.setitimer(signal.ITIMER_REAL, time_limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)


def run_case(case) -> str:
    """Convert and hash one case; returns "HashCode" or the HNNError subclass's name. Any other
    exception (including CaseTimeout, MemoryError, InvalidGraph, OutsideRead and HugeAllocation)
    propagates: that is a bug."""
    global _opened
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = os.path.join(root, "model")
        os.mkdir(folder)
        source = build(case, folder)
        if case[3] != IN_MEMORY:  # through a file: the path loader and its external-data checks
            path = os.path.join(folder, "m.onnx")
            with open(path, "wb") as f:
                f.write(source if isinstance(source, bytes) else source.SerializeToString())
            source = path
        forbidden = {os.path.realpath(os.path.join(root, OUTSIDE)), "/etc/passwd"}
        _opened = []
        try:
            with limits(), loud_allocations():
                graph = converters.from_onnx(source, probe_timeout=PROBE_TIMEOUT_S,
                                             max_activation_bytes=MAX_ACTIVATION_BYTES)
                try:
                    validate_graph(graph)
                except HNNError as e:
                    raise InvalidGraph(str(e)) from None
                code = hnn_jax.hash(graph)
            assert isinstance(code, HashCode), type(code)
            outcome = "HashCode"
        except HNNError as e:
            outcome = type(e).__name__
        finally:
            opened, _opened = _opened, None
        outside = sorted({p for p in opened if os.path.realpath(p) in forbidden})
        if outside:
            raise OutsideRead(f"opened {outside} (the model is in {folder})")
    for w in caught:
        if _ALLOCATION_FAILED.search(str(w.message)):
            raise HugeAllocation(str(w.message))
    return outcome


def describe(case) -> str:
    """A one-line reproducer: `fuzzing.run_case(<this tuple>)` from tests/."""
    return repr(tuple(case))
