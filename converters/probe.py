"""Execution probe: run the model with onnxruntime on fixed inputs and read chosen tensors.

Two initialisations of one architecture share every op and shape; only what the weights do to a
fixed input tells them apart. The inputs depend on the inputs' position, shape and type (never on
names), so every exporter's copy of a model sees the same numbers.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from hnn_jax.schema import PROBE_FAILED, PROBE_OK, PROBE_SKIPPED, PROBE_TIMEOUT

PROBE_SEED = 20220405
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ACTIVATION_BYTES = 2 << 30  # skip probing models whose activations exceed this
DEFAULT_MAX_WEIGHT_BYTES = 1 << 30  # ... or whose weights do (onnxruntime holds all of them)


@dataclass
class ProbeResult:
    status: float                      # one of hnn_jax.schema.PROBE_*
    values: dict[str, np.ndarray] = field(default_factory=dict)
    reason: str = ""                   # why it did not run, for the user's warning


def probe_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Deterministic inputs: floats N(0,1), integer ids small and valid, booleans fair coins."""
    initializers = {t.name: t for t in model.graph.initializer}
    rows = {t.name: list(t.dims)[:1] for t in model.graph.initializer}
    rows.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][:1]
                 for v in model.graph.value_info})
    vocab = {}
    for n in model.graph.node:  # ids that index an embedding table stay inside it
        if n.op_type == "Gather" and len(n.input) > 1 and rows.get(n.input[0]):
            vocab[n.input[1]] = max(1, min(int(rows[n.input[0]][0]), 1000))
    feeds = {}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    for index, value in enumerate(inputs):
        tt = value.type.tensor_type
        shape = [d.dim_value for d in tt.shape.dim]
        rng = np.random.default_rng([PROBE_SEED, index, *shape])
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, vocab.get(value.name, 2), shape).astype(dtype)
        else:
            raise ValueError(f"input {index} has element type {dtype}, which the probe cannot make")
    return feeds


def _activation_bytes(model: onnx.ModelProto) -> int:
    """About the bytes of the inputs and every tensor of known shape (exact integers: no overflow)."""
    weights = {t.name for t in model.graph.initializer}
    total = 0
    for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if v.name not in weights:
            total += math.prod(d.dim_value for d in v.type.tensor_type.shape.dim) * 4
    return total


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):  # strings and unknown types: a guess is enough here
        return 4


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(math.prod(t.dims) * _itemsize(t.data_type) for t in model.graph.initializer)


def _serialized_with_outputs(model: onnx.ModelProto, tensors: list[str]) -> bytes:
    """The model's bytes with the wanted tensors added as outputs (the model is left as it was)."""
    known = {v.name: v for v in model.graph.value_info}
    present = {o.name for o in model.graph.output}
    extra = [n for n in dict.fromkeys(tensors) if n not in present]
    before = len(model.graph.output)
    model.graph.output.extend(known[n] if n in known else onnx.ValueInfoProto(name=n) for n in extra)
    try:
        return model.SerializeToString()
    finally:
        del model.graph.output[before:]


def run_probe(model: onnx.ModelProto, tensors: list[str], timeout_s: float = DEFAULT_TIMEOUT_S,
              max_activation_bytes: int = DEFAULT_MAX_ACTIVATION_BYTES,
              max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES, folder: Path | None = None,
              threads: int = 1) -> ProbeResult:
    """Run `model` (inputs already fixed in size; external data in `folder`) and return the
    values of `tensors`. One intra-op thread by default; the codes do not depend on it."""
    import onnxruntime as ort

    if _activation_bytes(model) > max_activation_bytes:
        return ProbeResult(PROBE_SKIPPED, reason="activations larger than max_activation_bytes")
    weight_bytes = _weight_bytes(model)
    if weight_bytes > max_weight_bytes:
        return ProbeResult(PROBE_SKIPPED, reason=f"weights ({weight_bytes / 2**30:.1f} GiB) larger than "
                                                 "max_weight_bytes")
    try:
        feeds = probe_inputs(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if folder is not None:  # external data: from this folder only, never the working directory
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4  # failures reach the user as a warning with the reason
        session = ort.InferenceSession(_serialized_with_outputs(model, tensors), options,
                                       providers=["CPUExecutionProvider"])
        wanted_set = set(tensors)
        wanted = [o.name for o in session.get_outputs() if o.name in wanted_set]
        run_options = ort.RunOptions()
        timer = threading.Timer(timeout_s, lambda: setattr(run_options, "terminate", True))
        timer.start()
        try:
            values = session.run(wanted, feeds, run_options)
        finally:
            timer.cancel()
    except Exception as e:  # noqa: BLE001 - any runtime failure means static features
        if "terminate" in str(e).lower() or "exiting due to terminate" in str(e).lower():
            return ProbeResult(PROBE_TIMEOUT, reason=f"probe ran past {timeout_s:g} s")
        return ProbeResult(PROBE_FAILED, reason=f"onnxruntime could not run the model: {e}".splitlines()[0])
    out = dict(feeds)
    out.update({name: np.asarray(v) for name, v in zip(wanted, values)})
    return ProbeResult(PROBE_OK, out)
