"""Derivatives of an ONNX model that should keep (nearly) its code: fp16 round trip, int8
dynamic and static quantization, onnxruntime's saved graph optimisations, magnitude pruning,
small weight noise. Used to build the training zoo, the evaluation's copy-detection sets and the
invariance suite (tests/test_invariance.py, benchmarks/bench_invariance.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hnn_jax.converters.export import quiet_logger  # the root logger: onnxruntime.quantization's advice


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
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, quiet_logger(""):
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(copy(model), src)
        # ops shape inference does not know (tf2onnx's Erfc) leave tensors untyped: assume float
        # reduce_range: 7-bit weights, as onnxruntime advises for x86 CPUs without VNNI, where its
        # u8s8 kernels saturate (activations off by ~100% on an AVX2-only CPU, exact elsewhere):
        # the variant must not depend on the machine that made it
        quantize_dynamic(str(src), str(dst), reduce_range=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
        return onnx.load(dst)


def int8_static(model: onnx.ModelProto, quant_format: str = "QDQ", samples: int = 8) -> onnx.ModelProto:
    """onnxruntime.quantization.quantize_static, calibrated on `samples` random inputs (N(0, 1)
    floats, integers in [0, 100)); `quant_format` "QDQ" or "QOperator" (QLinearConv, QGemm, ...)."""
    from onnxruntime import quantization

    init = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(samples):
        feed = {}
        for value in (v for v in model.graph.input if v.name not in init):
            t = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
            dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
            feed[value.name] = (rng.integers(0, 100, shape) if np.issubdtype(dtype, np.integer)
                                else rng.standard_normal(shape)).astype(dtype)
        feeds.append(feed)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory() as tmp, quiet_logger(""):
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(copy(model), src)
        quantization.quantize_static(str(src), str(dst), Reader(), reduce_range=True,
                                     quant_format=getattr(quantization.QuantFormat, quant_format))
        return onnx.load(dst)


def ort_optimized(model: onnx.ModelProto, level: str = "ORT_ENABLE_EXTENDED") -> onnx.ModelProto:
    """The model as onnxruntime saves it after its graph optimisations at `level` (a name of
    onnxruntime.GraphOptimizationLevel): fused ops of the com.microsoft domain from "extended" on."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


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
