"""Export PyTorch, Keras, TensorFlow and Flax/JAX models to ONNX (torch, tensorflow and flax load
on demand)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import pickletools
import sys
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import onnx

from hnn_jax.errors import CorruptFileError, HNNError, UnsupportedModelError, first_line

TF_OPSET = 17


@contextlib.contextmanager
def quiet_logger(name: str = "torch.onnx"):
    """Logger `name` at ERROR while the block runs, its level put back after. The default: the
    dynamo exporter logs a warning per torchvision op it cannot register when torchvision is
    absent ("torchvision is not installed. Skipping torchvision::nms")."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_stdout():
    """Discard what the block writes to standard output, at the file-descriptor level: a failed
    TorchScript trace prints its whole IR graph from C++ ("Torch IR graph at exception"), which
    contextlib.redirect_stdout does not catch and which would land on the caller's output."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output to guard
        saved = None
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(io.StringIO()):
            if saved is not None:
                os.dup2(sink.fileno(), 1)
            yield
    finally:
        if saved is not None:
            with contextlib.suppress(OSError, TypeError, AttributeError):  # no C library to flush
                ctypes.CDLL(None).fflush(None)  # C stdio's buffer goes to the sink, not the caller
            os.dup2(saved, 1)
            os.close(saved)


def torch_to_onnx(module, example_inputs=(), *, dynamo: bool = False, opset: int | None = None,
                  kwargs: dict | None = None) -> onnx.ModelProto:
    """torch.onnx.export of module(*example_inputs, **kwargs). The TorchScript exporter
    (dynamo=False) is the default: about ten times faster than dynamo; canonicalisation makes both
    give the same graph."""
    import torch

    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    was_training = getattr(module, "training", False)
    if hasattr(module, "eval"):
        module.eval()
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused eval-mode encoder op has no ONNX export
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if dynamo:
                with quiet_logger():
                    program = torch.onnx.export(module, example_inputs, kwargs=kwargs, dynamo=True,
                                                opset_version=opset, verbose=False, optimize=True)
                return program.model_proto
            with quiet_stdout():  # a failed trace prints its whole IR graph
                torch.onnx.export(module, example_inputs, buffer, kwargs=kwargs, dynamo=False,
                                  opset_version=opset)
    except HNNError:
        raise
    except Exception as e:  # exporters raise many types
        raise UnsupportedModelError(f"torch.onnx.export failed: {first_line(e)}") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if was_training and hasattr(module, "train"):
            module.train()
    return onnx.load_from_string(buffer.getvalue())


def flax_to_onnx(module_or_fn, *example_args, variables=None) -> onnx.ModelProto:
    """A Flax NNX module, a Flax Linen module with its `variables` (as module.init returns them)
    or any jittable JAX function, traced on example_args, translated from its jaxpr (jaxpr.py;
    no exporter package). Parameters become ONNX initializers, the example args graph inputs.

    An NNX module is split into graph and state and merged again inside the trace, in eval mode,
    like torch_to_onnx's module.eval(): the caller's module keeps its mode, batch statistics and
    RNG counts. A Linen module runs as module.apply(variables, *example_args); for other call
    arguments pass a function: `lambda x: model.apply(variables, x, train=False)`."""
    from flax import linen, nnx

    from hnn_jax.converters.jaxpr import jaxpr_to_onnx

    if isinstance(module_or_fn, nnx.Module):
        if variables is not None:
            raise UnsupportedModelError("variables= is for Linen modules: an NNX module holds its own state")
        graphdef, state = nnx.split(module_or_fn)

        def fn(*args):
            module = nnx.merge(graphdef, state)  # a copy: its state is closed over, so constants
            module.eval()
            return module(*args)
    elif isinstance(module_or_fn, linen.Module):
        if variables is None:
            raise UnsupportedModelError("a Linen module needs its parameters: pass variables=module.init(key, x)")

        def fn(*args):
            return module_or_fn.apply(variables, *args)
    elif callable(module_or_fn):
        if variables is not None:
            raise UnsupportedModelError("variables= is for Linen modules: a function closes over its own")
        fn = module_or_fn
    else:
        raise UnsupportedModelError(f"from_flax takes a Flax NNX or Linen module or a JAX function, "
                                    f"not {type(module_or_fn).__name__}")
    return jaxpr_to_onnx(fn, *example_args)


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    tf2onnx.logging.set_level(logging.ERROR)
    return tf, tf2onnx


def tf_function_to_onnx(function, input_signature, *, opset: int = TF_OPSET) -> onnx.ModelProto:
    """tf2onnx.convert.from_function; ops tf2onnx cannot map (e.g. Erfc) stay as nodes."""
    tf, tf2onnx = _quiet_tf()
    if not isinstance(function, tf.types.experimental.GenericFunction):
        function = tf.function(function)
    try:
        model, _ = tf2onnx.convert.from_function(function, input_signature=list(input_signature),
                                                 opset=opset)
    except Exception as e:
        raise UnsupportedModelError(f"tf2onnx could not convert the function: {first_line(e)}") from e
    return model  # as tf2onnx wrote it: canonicalisation sinks and cancels its NHWC transposes


def keras_to_onnx(model, *, opset: int = TF_OPSET) -> onnx.ModelProto:
    """Keras 3 functional or Sequential model -> tf.function -> tf2onnx (from_keras fails on
    Keras 3 Sequential models)."""
    tf, _ = _quiet_tf()
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        inputs = []
    if not inputs:
        raise UnsupportedModelError("the Keras model has no defined inputs: build it with keras.Input "
                                    "(or call it once) before hashing")
    signature = [tf.TensorSpec(tuple(i.shape), i.dtype, name=f"input_{k}") for k, i in enumerate(inputs)]

    def forward(*args):
        return model(args[0] if len(args) == 1 else list(args), training=False)

    return tf_function_to_onnx(tf.function(forward), signature, opset=opset)


def tflite_to_onnx(path: Path, *, opset: int = TF_OPSET) -> onnx.ModelProto:
    """A .tflite flatbuffer -> ONNX through tf2onnx's TFLite path. Its NHWC kernels, fused
    activations and layout reshapes become ONNX ops that canonicalisation brings to the graph of
    the Keras model the file was converted from. Sparse weights (DENSIFY ops) are densified by
    TFLite's own interpreter first. Custom and Flex ops have no ONNX meaning: refused by name."""
    tf, tf2onnx = _quiet_tf()
    data = Path(path).read_bytes()
    if data[4:8] != b"TFL3":
        raise CorruptFileError(f"{path} is not a TFLite file (no TFL3 flatbuffer identifier)")
    custom = sorted({code for code in _tflite_opcodes(data) if code.startswith("CUSTOM:")})
    if custom:
        raise UnsupportedModelError(f"{path}: TFLite custom ops have no ONNX meaning and are not hashed: "
                                    + ", ".join(c[7:] for c in custom))
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            if "DENSIFY" in _tflite_opcodes(data):  # tf2onnx would read a sparse buffer as a dense one
                path = Path(tmp) / Path(path).name
                path.write_bytes(_densified(tf, data))
            model, _ = tf2onnx.convert.from_tflite(str(path), opset=opset,
                                                   custom_op_handlers={"TFL_GELU": (_tflite_gelu, {})})
    except Exception as e:
        raise UnsupportedModelError(f"tf2onnx could not convert {path}: {first_line(e)}") from e
    unknown = sorted({n.op_type for n in model.graph.node if n.op_type.startswith("TFL_")})
    if unknown:
        raise UnsupportedModelError(f"{path}: TFLite ops tf2onnx cannot write as ONNX: "
                                    + ", ".join(op[4:] for op in unknown))
    return model


def _tflite_opcodes(data: bytes) -> set[str]:
    """The TFLite file's operator codes ('CONV_2D', ..., 'CUSTOM:<name>' for custom and Flex ops)."""
    from tf2onnx.tflite.Model import Model
    from tf2onnx.tflite_utils import lookup_enum

    try:
        model = Model.GetRootAsModel(bytearray(data), 0)
        codes = set()
        for i in range(model.OperatorCodesLength()):
            op = model.OperatorCodes(i)
            code = lookup_enum(op.DeprecatedBuiltinCode(), "BuiltinOperator")
            if code == "PLACEHOLDER_FOR_GREATER_OP_CODES":
                code = lookup_enum(op.BuiltinCode(), "BuiltinOperator")
            codes.add(f"CUSTOM:{op.CustomCode().decode()}" if code == "CUSTOM" else code)
    except Exception as e:  # noqa: BLE001 - a truncated or garbled flatbuffer
        raise CorruptFileError(f"not a readable TFLite file: {first_line(e)}") from None
    return codes


def _densified(tf, data: bytes) -> bytes:
    """The TFLite file with each DENSIFY op's sparse input stored dense (the values TFLite's
    interpreter decodes it to) and the op removed, its readers reading that input."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    interpreter = tf.lite.Interpreter(  # without XNNPACK, which leaves the preserved tensors unwritten
        model_content=bytes(data), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    graph = model.subgraphs[0]
    code = flatbuffer_utils.schema_fb.BuiltinOperator.DENSIFY
    densify = {k for k, op in enumerate(model.operatorCodes) if code in (op.builtinCode, op.deprecatedBuiltinCode)}
    renamed = {}
    for op in [op for op in graph.operators if op.opcodeIndex in densify]:
        sparse, dense = int(op.inputs[0]), int(op.outputs[0])
        buffer = flatbuffer_utils.schema_fb.BufferT()
        buffer.data = np.frombuffer(interpreter.get_tensor(dense).tobytes(), np.uint8)
        model.buffers.append(buffer)
        graph.tensors[sparse].buffer, graph.tensors[sparse].sparsity = len(model.buffers) - 1, None
        renamed[dense] = sparse
        graph.operators.remove(op)
    for op in graph.operators:
        op.inputs = [renamed.get(int(i), int(i)) for i in op.inputs]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _tflite_gelu(ctx, node, name, args):
    """tf2onnx handler: TFLite's GELU as ONNX ops (erf form, or tanh form where approximate)."""
    import numpy as np
    from tf2onnx import utils

    x, dtype = node.input[0], ctx.get_dtype(node.input[0])
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)

    def const(v):
        return ctx.make_const(utils.make_name("gelu_c"), np.array(v, np_dtype)).output[0]

    def op(kind, *inputs):
        return ctx.make_node(kind, list(inputs)).output[0]

    if node.get_attr_value("approximate", False):
        inner = op("Mul", op("Add", x, op("Mul", op("Mul", op("Mul", x, x), x), const(0.044715))),
                   const(np.sqrt(2 / np.pi)))
        gate = op("Add", op("Tanh", inner), const(1.0))
    else:
        gate = op("Add", op("Erf", op("Div", x, const(np.sqrt(2.0)))), const(1.0))
    y = op("Mul", op("Mul", x, gate), const(0.5))
    ctx.replace_all_inputs(node.output[0], y)
    ctx.remove_node(node.name)


def keras_file_to_onnx(path: Path) -> onnx.ModelProto:
    import keras

    if not zipfile.is_zipfile(path):  # keras says "File not found" of a file it cannot open as a zip
        raise CorruptFileError(f"{path} is not a .keras file: a .keras file is a zip archive, and this is not one")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001
        raise CorruptFileError(f"{path} is not a loadable .keras file: {first_line(e)}") from None
    return keras_to_onnx(model)


def saved_model_to_onnx(folder: Path) -> onnx.ModelProto:
    """A TensorFlow SavedModel folder, through its serving signature."""
    tf, _ = _quiet_tf()
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as e:  # noqa: BLE001
        raise CorruptFileError(f"{folder} is not a loadable SavedModel: {first_line(e)}") from None
    signatures = dict(getattr(loaded, "signatures", {}))
    if not signatures:
        raise UnsupportedModelError(f"the SavedModel in {folder} has no signatures to trace")
    serving = signatures.get("serving_default") or signatures[sorted(signatures)[0]]
    specs = serving.structured_input_signature[1]
    names = sorted(specs)

    def forward(*args):
        return serving(**dict(zip(names, args)))

    return tf_function_to_onnx(tf.function(forward), [specs[k] for k in names])


_OBJECT_PICKLE_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX",
                    "EXT1", "EXT2", "EXT4"}


# What zipfile raises on a damaged archive or member (bad CRC, undecodable name, unknown version ...)
_DAMAGED_ZIP = (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError, OSError, NotImplementedError, zlib.error)


def _check_pt2_archive(path: Path) -> None:
    """torch.export.load unpickles some members: allow only what torch's weights-only unpickler
    accepts, and plain-data pickles with no imports."""
    import torch

    try:
        archive = zipfile.ZipFile(path)
    except _DAMAGED_ZIP:
        raise CorruptFileError(f"{path} is not a torch.export .pt2 archive (not a readable zip file)") from None
    with archive:
        for info in archive.infolist():
            try:
                data = archive.read(info)
            except _DAMAGED_ZIP as e:
                raise CorruptFileError(f"{path}: member '{info.filename}' is damaged: {first_line(e)}") from None
            if data[:2] == b"PK":
                try:
                    torch.load(io.BytesIO(data), weights_only=True)
                except Exception:  # noqa: BLE001
                    raise UnsupportedModelError(f"{path}: member '{info.filename}' holds pickled objects "
                                                "beyond plain tensors; refusing to unpickle it") from None
            elif data[:1] == b"\x80":
                try:
                    ops = {op.name for op, _, _ in pickletools.genops(data)}
                except Exception:  # noqa: BLE001
                    raise CorruptFileError(f"{path}: member '{info.filename}' is a broken pickle") from None
                if ops & _OBJECT_PICKLE_OPS:
                    raise UnsupportedModelError(f"{path}: member '{info.filename}' holds pickled objects; "
                                                "refusing to unpickle it")


def exported_program_to_onnx(path: Path) -> onnx.ModelProto:
    """A torch.export archive (.pt2), after checking it unpickles nothing but tensors."""
    import torch

    _check_pt2_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except HNNError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CorruptFileError(f"{path} is not a loadable torch.export archive: {first_line(e)}") from None
    try:
        with warnings.catch_warnings(), quiet_logger():
            warnings.simplefilter("ignore")
            return torch.onnx.export(program, dynamo=True, verbose=False, optimize=True).model_proto
    except Exception as e:
        raise UnsupportedModelError(f"torch.onnx.export failed on {path}: {first_line(e)}") from e
