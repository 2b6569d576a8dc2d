"""Converters: PyTorch, Keras/TensorFlow, Flax/JAX and ONNX models -> canonical jraph.GraphsTuple.

Every converter goes through ONNX: export -> canonical graph (canonical/) -> execution probe
(probe.py) -> features (features.py). torch, tensorflow and flax are imported only when used;
Flax/JAX models reach ONNX through their jaxpr (jaxpr.py).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import jraph


from hnn_jax.converters import export
from hnn_jax.converters.canonical import CanonicalGraph, canonicalize
from hnn_jax.converters.features import to_graphs_tuple
from hnn_jax.converters.load import load_onnx
from hnn_jax.converters.probe import (DEFAULT_MAX_ACTIVATION_BYTES, DEFAULT_MAX_WEIGHT_BYTES,
                                      DEFAULT_TIMEOUT_S, ProbeResult, run_probe)
from hnn_jax.errors import CorruptFileError, ModelTooLargeError, UnsupportedModelError
from hnn_jax.schema import PROBE_OK, PROBE_SKIPPED

__all__ = ["from_onnx", "from_torch", "from_flax", "from_keras", "from_tf", "from_tflite", "from_snapshot", "from_gguf",
           "from_transformers",
           "from_file", "canonicalize", "CanonicalGraph"]


log = logging.getLogger(__name__)
MAX_ONNX_NODES = 100_000  # about a minute of canonicalisation; the canonical graph must fit hnn_jax.padding.MAX_NODES


def from_onnx(source, *, folder=None, probe: bool = True, probe_timeout: float = DEFAULT_TIMEOUT_S,
              max_activation_bytes: int = DEFAULT_MAX_ACTIVATION_BYTES,
              max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES, probe_threads: int = 1,
              max_nodes: int = MAX_ONNX_NODES) -> jraph.GraphsTuple:
    """ONNX model (path, bytes or onnx.ModelProto) -> one unpadded GraphsTuple.

    probe=False, a model onnxruntime cannot run, one that runs past probe_timeout seconds, or
    one whose activations or weights exceed the byte limits gets static features only;
    globals[0, schema.GLOBAL_PROBE] records which (and a warning says why). External weights
    are memory-mapped and read a piece at a time, never loaded whole. Models of more than
    `max_nodes` ONNX nodes raise ModelTooLargeError. `folder`: where a ModelProto's external
    data lies (checked as a file's own folder is).
    """
    started = time.perf_counter()
    model, folder = load_onnx(source, folder)
    if len(model.graph.node) > max_nodes:
        raise ModelTooLargeError(f"the ONNX graph has {len(model.graph.node)} nodes; hnn-jax converts up to "
                                 f"max_nodes={max_nodes} (larger graphs do not fit the hasher's largest "
                                 "padding bucket). Export a part of the model, e.g. one block")
    graph = canonicalize(model, folder)
    log.debug("%d ONNX nodes -> %d canonical nodes in %.2f s", len(model.graph.node), len(graph.nodes),
              time.perf_counter() - started)
    if probe:
        tensors = [n.tensor for n in graph.nodes]
        result = run_probe(graph.model, tensors, probe_timeout, max_activation_bytes, max_weight_bytes,
                           graph.folder, probe_threads)
    else:
        result = ProbeResult(PROBE_SKIPPED, reason="probe=False")
    log.debug("execution probe %s", "ran" if result.status == PROBE_OK else f"did not run ({result.reason})")
    if result.status != PROBE_OK and probe:
        warnings.warn(f"execution probe did not run ({result.reason}); using static features only",
                      stacklevel=2)
    return to_graphs_tuple(graph, result)


def from_torch(module, example_inputs, *, dynamo: bool = False, opset: int | None = None,
               **options) -> jraph.GraphsTuple:
    """torch.nn.Module + example inputs (a tensor or tuple) -> GraphsTuple.

    dynamo=False (default) uses the TorchScript exporter, ~10x faster than dynamo; both give
    the same canonical graph for ordinary models.
    """
    return from_onnx(export.torch_to_onnx(module, example_inputs, dynamo=dynamo, opset=opset), **options)


def from_flax(module_or_fn, *example_args, variables=None, **options) -> jraph.GraphsTuple:
    """Flax NNX module, Flax Linen module (with `variables`, as module.init returns them) or any
    jittable JAX function + example arguments -> GraphsTuple. The jaxpr is translated to ONNX
    directly (jaxpr.py); parameters become constants, an NNX module runs in eval mode. Options
    as from_onnx.
    """
    return from_onnx(export.flax_to_onnx(module_or_fn, *example_args, variables=variables), **options)


def from_keras(model, **options) -> jraph.GraphsTuple:
    """Keras 3 model (functional or Sequential, with defined inputs) -> GraphsTuple."""
    return from_onnx(export.keras_to_onnx(model), **options)


def from_tf(function, input_signature, **options) -> jraph.GraphsTuple:
    """Python or tf.function + list of tf.TensorSpec -> GraphsTuple."""
    return from_onnx(export.tf_function_to_onnx(function, input_signature), **options)


def from_tflite(path, **options) -> jraph.GraphsTuple:
    """A .tflite file -> GraphsTuple (tf2onnx's TFLite path; export.tflite_to_onnx). The graph and
    code are those of the ONNX file written from the Keras model it was converted from."""
    return from_onnx(export.tflite_to_onnx(Path(path)), **options)


def from_snapshot(folder, **options) -> jraph.GraphsTuple:
    """Hugging Face snapshot folder (config.json + *.safetensors shards) -> GraphsTuple, without
    materialising the model: the graph is exported from the model built on the meta device and
    the weights are read in place from the memory-mapped shards (snapshot.py). A GPTQ or AWQ
    checkpoint's linears are dequantised first, one at a time, into a temporary file
    (quantized.py). Options as from_onnx. Pickled weights (pytorch_model.bin) are refused, never
    unpickled.
    """
    import tempfile

    from hnn_jax.converters import snapshot

    with tempfile.TemporaryDirectory(prefix="hnn-snapshot-") as scratch:  # a quantised one's weights
        model, data_folder = snapshot.snapshot_to_onnx(folder, scratch)
        return from_onnx(model, folder=data_folder, **options)


def from_gguf(path, **options) -> jraph.GraphsTuple:
    """A GGUF file (llama.cpp's format; F32, F16 or block-quantised) -> GraphsTuple: the graph of
    the transformers model its metadata describes, with its tensors dequantised one at a time,
    named and laid out as in the source checkpoint (gguf.py), so the file's code is its source's
    up to what quantisation moved. Needs gguf and transformers. Options as from_onnx."""
    import tempfile

    from hnn_jax.converters import gguf

    with tempfile.TemporaryDirectory(prefix="hnn-gguf-") as data:
        model, data_folder = gguf.gguf_to_onnx(path, data)
        return from_onnx(model, folder=data_folder, **options)


def from_transformers(model_or_path, **options) -> jraph.GraphsTuple:
    """A transformers.PreTrainedModel, or a Hugging Face snapshot folder (config.json +
    *.safetensors, sharded too; from_snapshot) -> GraphsTuple. A built model is exported with
    the inputs its task needs (hf.transformers_to_onnx). Options as from_onnx."""
    if isinstance(model_or_path, (str, Path)):
        return from_snapshot(model_or_path, **options)
    if not hasattr(model_or_path, "config") or not hasattr(model_or_path, "forward"):
        raise UnsupportedModelError(f"from_transformers takes a transformers.PreTrainedModel or a snapshot "
                                    f"folder, not {type(model_or_path).__name__}")
    from hnn_jax.converters import hf

    return from_onnx(hf.transformers_to_onnx(model_or_path), **options)


def from_file(path, **options) -> jraph.GraphsTuple:
    """Dispatch on what the path is: .onnx, .keras, .tflite, .gguf, a SavedModel folder, a Hugging
    Face snapshot folder (config.json + *.safetensors), a torch.export .pt2.

    Pickled PyTorch files (.pt, .pth, .bin, .pkl) are refused: unpickling runs arbitrary code.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return from_onnx(export.saved_model_to_onnx(path), **options)
        if (path / "config.json").is_file():
            return from_snapshot(path, **options)
        raise UnsupportedModelError(f"{path} is a folder but neither a TensorFlow SavedModel (no saved_model.pb) "
                                    "nor a Hugging Face snapshot (no config.json)")
    if not path.exists():
        raise CorruptFileError(f"no such file: {path}")
    if suffix == ".onnx":
        return from_onnx(path, **options)
    if suffix == ".keras":
        return from_onnx(export.keras_file_to_onnx(path), **options)
    if suffix == ".pt2":
        return from_onnx(export.exported_program_to_onnx(path), **options)
    if suffix == ".tflite":
        return from_tflite(path, **options)
    if suffix == ".gguf":
        return from_gguf(path, **options)
    if suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"):
        raise UnsupportedModelError(f"{path}: pickled PyTorch files are never unpickled (that can run "
                                    "arbitrary code); save with torch.export.save (.pt2) or export to ONNX")
    raise UnsupportedModelError(f"{path}: unknown model format '{suffix}' (expected .onnx, .keras, "
                                ".tflite, .gguf, .pt2 or a SavedModel folder)")


