"""Model variants for relation-1 tests: rename+shuffle, fp16 weights, int8, pruning, fine-tune noise."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def rename_and_shuffle(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Every node and tensor renamed, node order shuffled: the same model for any user."""
    model = copy(model)
    g = model.graph
    rng = np.random.default_rng(seed)
    names = {}

    def new(name):
        if not name:
            return name
        if name not in names:
            names[name] = f"t{rng.integers(1 << 40):x}"
        return names[name]

    for t in g.initializer:
        t.name = new(t.name)
    for v in list(g.input) + list(g.output) + list(g.value_info):
        v.name = new(v.name)
    for n in g.node:
        n.name = f"n{rng.integers(1 << 40):x}"
        n.input[:] = [new(x) for x in n.input]
        n.output[:] = [new(x) for x in n.output]
    nodes = list(g.node)
    order = rng.permutation(len(nodes))
    del g.node[:]
    g.node.extend(nodes[i] for i in order)
    return model


def _map_float_weights(model: onnx.ModelProto, fn) -> onnx.ModelProto:
    model = copy(model)
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT and len(t.dims) >= 1 and np.prod(t.dims) > 1:
            t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)).astype(np.float32), t.name))
    return model


def fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights stored as float16 and cast back to float32 where used (fp16 round trip)."""
    model = copy(model)
    g = model.graph
    casts = []
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(t).astype(np.float16)
            half = t.name + "_fp16"
            t.CopyFrom(numpy_helper.from_array(value, half))
            casts.append(helper.make_node("Cast", [half], [half[:-5]], to=TensorProto.FLOAT))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def int8_dynamic(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_dynamic

    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, src)
    quantize_dynamic(str(src), str(dst))
    return onnx.load(dst)


def prune(model: onnx.ModelProto, fraction: float) -> onnx.ModelProto:
    """Magnitude pruning of each weight matrix/kernel (not biases)."""
    def fn(w):
        if w.ndim < 2:
            return w
        cut = np.quantile(np.abs(w), fraction)
        return np.where(np.abs(w) < cut, 0, w)
    return _map_float_weights(model, fn)


def perturb(model: onnx.ModelProto, scale: float, seed: int = 0) -> onnx.ModelProto:
    """Small relative weight noise, as a short fine-tuning leaves."""
    rng = np.random.default_rng(seed)
    return _map_float_weights(model, lambda w: w + scale * w.std() * rng.standard_normal(w.shape))
