"""Derivatives of an ONNX model that should keep (nearly) its code: fp16 round trip, int8
dynamic quantization, magnitude pruning, small weight noise. Used to build the training zoo and
the evaluation's copy-detection sets."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


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
            casts.append(helper.make_node("Cast", [half], [t.name], to=TensorProto.FLOAT))
            t.CopyFrom(numpy_helper.from_array(value, half))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def int8_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic activation scales)."""
    import logging

    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's pre-processing advice
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(copy(model), src)
        # ops shape inference does not know (tf2onnx's Erfc) leave tensors untyped: assume float
        # reduce_range: 7-bit weights, as onnxruntime advises for x86 CPUs without VNNI, where its
        # u8s8 kernels saturate (activations off by ~100% on an AVX2-only CPU, exact elsewhere):
        # the variant must not depend on the machine that made it
        quantize_dynamic(str(src), str(dst), reduce_range=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
        return onnx.load(dst)


def prune(model: onnx.ModelProto, fraction: float) -> onnx.ModelProto:
    """Magnitude pruning of each weight matrix or kernel (biases and vectors kept)."""
    def fn(w):
        if w.ndim < 2:
            return w
        cut = np.quantile(np.abs(w), fraction)
        return np.where(np.abs(w) < cut, 0, w)
    return _map_float_weights(model, fn)


def perturb(model: onnx.ModelProto, scale: float, seed: int = 0) -> onnx.ModelProto:
    """Weight noise of `scale` times each tensor's spread, as a short fine-tuning leaves."""
    rng = np.random.default_rng(seed)
    return _map_float_weights(model, lambda w: w + scale * w.std() * rng.standard_normal(w.shape))
