"""Execution probe: run the model with onnxruntime on fixed inputs and read chosen tensors.

Two initialisations of one architecture share every op and shape; only what the weights do to a
fixed input tells them apart. The inputs depend on the inputs' position, shape and type, and on
what the ops reading them require (a Reshape's shape, a Split's sizes, a divisor that is not 0),
never on names, so every exporter's copy of a model sees the same numbers. Any ONNX type
onnxruntime's Python API can feed is made: tensors of every element type it takes (strings,
bfloat16, float8 and int4 included), sequences, optionals and maps; values read back that are no
numeric array (maps, empty optionals) are left out one by one.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from hnn_jax.errors import first_line
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


# Element types numpy cannot hand onnxruntime's Python API: the probe feeds them as an OrtValue
# of their bits (bfloat16, float8) or of their packed nibbles (int4, uint4), and reads them through
# a Cast to float (exact); the rest (float4, int2, float6) it can neither make nor read.
_BIT_FED = {getattr(onnx.TensorProto, n) for n in ("BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                                     "FLOAT8E5M2FNUZ", "FLOAT8E8M0") if hasattr(onnx.TensorProto, n)}
_NIBBLES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_SUB_BYTE = {getattr(onnx.TensorProto, n) for n in ("FLOAT4E2M1", "INT2", "UINT2", "FLOAT6E2M3", "FLOAT6E3M2")
             if hasattr(onnx.TensorProto, n)}
_WORDS = np.array(["the", "a", "monday", "Tuesday", "42", "3.5", "x y", "hello", "WORLD", "Zürich"], object)
_SEQUENCE_LENGTH = 2  # elements of a made-up sequence input
_MAP_SIZE = 3         # entries of a made-up map input


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """name -> shape, for every tensor whose shape the prepared model states in full."""
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tt = v.type.tensor_type if v.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape") or v.name in shapes:
            continue
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim):
            shapes[v.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return shapes


def _split_sizes(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _factorings(n: int, parts: int):
    """Every way to write n as an ordered product of `parts` positive factors."""
    if parts == 1:
        yield (n,)
        return
    for f in range(1, n + 1):
        if n % f == 0:
            yield from ((f, *rest) for rest in _factorings(n // f, parts - 1))


def _col2im_shapes(data, out, spatial: int, attrs: dict):
    """(image_shape, block_shape) for Col2Im on `data` [N, C * prod(block), L]: the first block
    shape (and the stated output's image shape, or one long image axis) whose blocks number L."""
    strides = attrs.get("strides", [1] * spatial)
    dilations = attrs.get("dilations", [1] * spatial)
    pads = attrs.get("pads", [0] * (2 * spatial))
    if out is not None and len(out) == spatial + 2 and out[1] and data[1] % out[1] == 0 and data[1] <= 1 << 16:
        image, blocks = list(out[2:]), _factorings(data[1] // out[1], spatial)
    else:  # blocks of one element: axis 0 holds all L of them, the others one each
        image = [(data[2] - 1) * strides[0] + 1 - pads[0] - pads[spatial]] + [
            1 - pads[d] - pads[d + spatial] for d in range(1, spatial)]
        blocks = [(1,) * spatial]
    for block in blocks:
        counts = [(image[d] + pads[d] + pads[d + spatial] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1
                  for d in range(spatial)]
        if min(image) > 0 and min(counts) > 0 and math.prod(counts) == data[2]:
            return image, list(block)
    return None


def _implied(n: onnx.NodeProto, k: int, length: int, shapes: dict, opset: int):
    """What input `k` of node `n` must hold for the node to run, from the shapes the model states:
    a list of `length` numbers (a shape, sizes, axes, scales), ("index", n) for indices below n,
    "nonzero" for an integer divisor, or None (any small values do)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    op = n.op_type if n.domain in ("", "ai.onnx") else ""
    data = shapes.get(n.input[0]) if n.input else None
    out = shapes.get(n.output[0]) if n.output and n.output[0] else None
    rank = len(data) if data is not None else None
    if op == "Reshape" and k == 1 and data is not None:
        if out is not None and len(out) == length and math.prod(out) == math.prod(data):
            return list(out)
        if length >= rank:
            return list(data) + [1] * (length - rank)
        return list(data[:length - 1]) + [math.prod(data[length - 1:])] if length else None
    if op == "Expand" and k == 1 and data is not None:
        if out is not None and len(out) == length:
            return list(out)
        return [1] * (length - rank) + list(data) if length >= rank else list(data[rank - length:])
    if op == "ConstantOfShape" and k == 0:
        return list(out) if out is not None and len(out) == length else [1] * length
    if op == "Tile" and k == 1 and data is not None and length == rank:
        if out is not None and len(out) == rank and all(d and o % d == 0 for o, d in zip(out, data)):
            return [o // d for o, d in zip(out, data)]
        return [1] * rank
    if op in ("Split", "SplitToSequence") and k == 1 and data is not None:
        axis = attrs.get("axis", 0) % rank
        sizes = [shapes.get(o) for o in n.output] if op == "Split" else []
        if len(sizes) == length and all(s is not None for s in sizes) and sum(s[axis] for s in sizes) == data[axis]:
            return [s[axis] for s in sizes]
        return _split_sizes(data[axis], length) if length else [max(1, (data[axis] + 1) // 2)]
    if op == "Slice" and k in (1, 2, 3, 4) and opset >= 10 and data is not None and length <= rank:
        axes = list(range(length))
        return {1: [0] * length, 3: axes, 4: [1] * length,
                2: [(out if out is not None and len(out) == rank else data)[a] for a in axes]}[k]
    if op == "Pad" and k in (1, 3) and opset >= 11 and data is not None:
        if k == 3:
            return list(range(length)) if length <= rank else None
        if length != 2 * rank:
            return None
        if out is not None and len(out) == rank and all(o >= d for o, d in zip(out, data)):
            return [(o - d) // 2 for o, d in zip(out, data)] + [(o - d) - (o - d) // 2 for o, d in zip(out, data)]
        return [min(1, d - 1) if d > 1 else 0 for d in data] * 2
    if op in ("Resize", "Upsample") and data is not None:
        axes = [a % rank for a in attrs.get("axes", range(rank))]
        role = {1: "scales"} if op == "Upsample" or opset < 11 else {1: "roi", 2: "scales", 3: "sizes"}
        role = role.get(k)
        target = list(out) if out is not None and len(out) == rank else list(data)
        if role == "roi":
            return [0.0] * (length // 2) + [1.0] * (length - length // 2)
        if role == "scales" and length == len(axes):
            return [target[a] / data[a] if data[a] else 1.0 for a in axes]
        if role == "sizes" and length == len(axes):
            return [target[a] for a in axes]
        return None
    if op == "AffineGrid" and k == 1 and data is not None and length >= 3:
        spatial = list(out[1:-1]) if out is not None and len(out) == length - 1 else [4] * (length - 2)
        return [data[0], 1] + spatial
    if op == "MaxUnpool" and k == 2 and data is not None and length == rank:
        if out is not None and len(out) == rank:
            return list(out)
        kernel = attrs.get("kernel_shape", [1] * (rank - 2))
        strides = attrs.get("strides", [1] * (rank - 2))
        pads = attrs.get("pads", [0] * (2 * (rank - 2)))
        return list(data[:2]) + [(d - 1) * s + q - pads[i] - pads[i + rank - 2]
                                 for i, (d, s, q) in enumerate(zip(data[2:], strides, kernel))]
    if op == "Col2Im" and k in (1, 2) and data is not None and rank == 3:
        found = _col2im_shapes(data, out, length, attrs)
        return list(found[k - 1]) if found else None
    if op in ("CumSum", "CumProd") and k == 1:
        return [0] * max(length, 1)
    if k == 1 and opset >= 13 and data is not None and (op in ("Unsqueeze", "Squeeze") or op.startswith("Reduce")):
        if op == "Squeeze":
            ones = [a for a, d in enumerate(data) if d == 1]
            return ones[:length] if len(ones) >= length else None
        return list(range(length)) if op == "Unsqueeze" or length <= rank else None
    if op in ("TopK", "OneHot") and k == 1:
        axis = attrs.get("axis", -1)
        if out is not None and -len(out) <= axis < len(out):
            return [out[axis]] * max(length, 1)
        return [1 if op == "TopK" else 2] * max(length, 1)
    if op == "Range":
        limit = out[0] if out is not None and len(out) == 1 else 4
        return [[0], [limit], [1]][k] if k < 3 else None
    if op == "MelWeightMatrix" and k < 5:  # bins, DFT length, sample rate, lowest and highest frequency
        bins, dft = (out[1], 2 * (out[0] - 1)) if out is not None and len(out) == 2 and out[0] > 1 else (8, 16)
        return [[bins], [dft], [16000], [0], [8000]][k]
    if op == "Dropout" and k in (1, 2):  # a ratio in [0, 1); inference mode, so no random mask
        return [[0.5], [0]][k - 1] * max(length, 1)
    if op in ("Div", "Mod") and k == 1:
        return "nonzero"
    if op in ("Gather", "GatherElements", "ScatterElements", "Scatter") and k == 1 and data is not None and rank:
        return ("index", data[attrs.get("axis", 0) % rank])
    return None


def _implied_values(model: onnx.ModelProto, inputs: list) -> dict[str, object]:
    """Graph input name -> what the model implies it holds (see _implied). Of several readers
    the first by (kind of constraint, values) wins, so the node order of the file does not matter."""
    names = {v.name: v for v in inputs}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    shapes = _known_shapes(model)
    found: dict[str, list] = {}
    for n in model.graph.node:
        for k, x in enumerate(n.input):
            if x not in names or not names[x].type.HasField("tensor_type"):
                continue
            declared = shapes.get(x)
            length = math.prod(declared) if declared is not None else 0
            try:
                value = _implied(n, k, length, shapes, opset)
            except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError):
                value = None  # an odd node: its input stays random
            if value is not None:
                order = 0 if isinstance(value, list) else 1 if isinstance(value, tuple) else 2
                found.setdefault(x, []).append((order, repr(value), value))
    return {x: min(options)[2] for x, options in found.items()}


def _tensor_value(tt, seed: list[int], implied=None) -> np.ndarray:
    """One input tensor: floats N(0,1), integer ids small and valid, booleans fair coins, words
    from a fixed list; values the model implies (a shape, sizes, axes, scales) where it does."""
    shape = [d.dim_value for d in tt.shape.dim]
    rng = np.random.default_rng([PROBE_SEED, *seed, *shape])
    if tt.elem_type in _SUB_BYTE:
        raise ValueError(f"element type {onnx.TensorProto.DataType.Name(tt.elem_type)}: packed below a byte, "
                         "onnxruntime's Python API takes no such array")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"element type {tt.elem_type}, which ONNX does not define") from None
    if isinstance(implied, list) and len(implied) == math.prod(shape) and dtype.kind in "biuf":
        return np.asarray(implied, np.float64 if dtype.kind == "f" else np.int64).astype(dtype).reshape(shape)
    if tt.elem_type in _NIBBLES:
        return np.asarray(rng.integers(0, 2, shape).astype(dtype))
    if dtype.kind == "f" or tt.elem_type in _BIT_FED:
        return np.asarray(rng.standard_normal(shape).astype(dtype))
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.kind in "iu":
        low, high = (1, 3) if implied == "nonzero" else (0, 2)
        if isinstance(implied, tuple):  # ("vocab", rows of an embedding table) or ("index", axis length)
            high = implied[1] if implied[0] == "vocab" else max(1, min(implied[1], high))
        return np.asarray(rng.integers(low, high, shape).astype(dtype))
    if dtype.kind == "O":
        return np.asarray(_WORDS[rng.integers(0, len(_WORDS), shape)], object).reshape(shape)
    raise ValueError(f"element type {onnx.TensorProto.DataType.Name(tt.elem_type)}")


def _default_dims(tt) -> None:
    """Sizes for a sequence element's symbolic dims (prepare fixes only those of tensor inputs)."""
    for axis, dim in enumerate(tt.shape.dim):
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            dim.Clear()
            dim.dim_value = 1 if axis == 0 else 4


def _value(type_proto: onnx.TypeProto, seed: list[int], implied=None):
    """A value of any ONNX type onnxruntime's Python API takes: tensor (numpy array), sequence
    (list), optional (its element), map (dict)."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return _tensor_value(type_proto.tensor_type, seed, implied)
    if kind == "sequence_type":
        elem = onnx.TypeProto()
        elem.CopyFrom(type_proto.sequence_type.elem_type)
        if elem.HasField("tensor_type"):
            _default_dims(elem.tensor_type)
        return [_value(elem, [*seed, k]) for k in range(_SEQUENCE_LENGTH)]
    if kind == "optional_type":
        return _value(type_proto.optional_type.elem_type, seed, implied)
    if kind == "map_type":
        key = np.dtype(helper.tensor_dtype_to_np_dtype(type_proto.map_type.key_type))
        keys = [f"k{i}" for i in range(_MAP_SIZE)] if key.kind == "O" else list(range(_MAP_SIZE))
        elem = type_proto.map_type.value_type
        if not elem.HasField("tensor_type"):
            raise ValueError("a map of non-tensor values")
        scalar = onnx.TypeProto()
        scalar.tensor_type.elem_type = elem.tensor_type.elem_type
        return {k: _value(scalar, [*seed, i]).item() for i, k in enumerate(keys)}
    raise ValueError(f"type {kind}")


def probe_inputs(model: onnx.ModelProto) -> dict[str, object]:
    """Deterministic inputs: floats N(0,1), integer ids small and valid, booleans fair coins;
    values the model implies where it does (a Reshape's shape, a Split's sizes, a Resize's scales,
    a divisor that is not 0: see _implied); sequences, optionals and maps of such values."""
    initializers = {t.name: t for t in model.graph.initializer}
    rows = {t.name: list(t.dims)[:1] for t in model.graph.initializer}
    rows.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][:1]
                 for v in model.graph.value_info})
    vocab = {}
    for n in model.graph.node:  # ids that index an embedding table stay inside it
        if n.op_type == "Gather" and len(n.input) > 1 and rows.get(n.input[0]):
            vocab[n.input[1]] = max(1, min(int(rows[n.input[0]][0]), 1000))
    inputs = [v for v in model.graph.input if v.name not in initializers]
    implied = _implied_values(model, inputs)
    implied.update({x: ("vocab", size) for x, size in vocab.items()})
    feeds = {}
    for index, value in enumerate(inputs):
        try:
            feeds[value.name] = _value(value.type, [index], implied.get(value.name))
        except (KeyError, ValueError) as e:
            raise ValueError(f"input {index}: {e}".rstrip(".")) from None
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


_PROBE_SUFFIX = "__hnn_probe_float"


def _serialized_with_outputs(model: onnx.ModelProto, tensors: list[str]) -> tuple[bytes, dict[str, str], dict]:
    """The model's bytes with the wanted tensors added as outputs (the model is not edited),
    {output read: tensor wanted}, and {name: array} of the large weights, which the bytes hold
    as external stubs: onnxruntime takes the arrays as they are (add_external_initializers),
    instead of copying them through a serialised protobuf (a third of a ResNet's probe time).
    A tensor of a type numpy cannot hold is read through a Cast to float (bfloat16, float8:
    exact) or not at all (types packed below a byte)."""
    known = {v.name: v for v in model.graph.value_info}
    known.update({v.name: v for v in [*model.graph.input, *model.graph.output]})
    present = {o.name for o in model.graph.output}
    read = {}
    for n in dict.fromkeys(tensors):
        elem = known[n].type.tensor_type.elem_type if n in known and known[n].type.HasField("tensor_type") else 0
        if not n or elem in _SUB_BYTE:
            continue
        read[n + _PROBE_SUFFIX if elem in _BIT_FED | _NIBBLES else n] = n
    casts = [helper.make_node("Cast", [n], [o], to=onnx.TensorProto.FLOAT) for o, n in read.items() if o != n]
    extra = [o for o in read if o not in present]
    shell = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                            functions=model.functions)  # the model, its weights left where they are
    graph, source = shell.graph, model.graph
    graph.name = source.name
    graph.node.extend([*source.node, *casts])
    graph.input.extend(source.input)
    graph.output.extend([*source.output, *(known[o] if o in known else onnx.ValueInfoProto(name=o) for o in extra)])
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    large = {}
    for t in source.initializer:
        size = math.prod(t.dims) * _itemsize(t.data_type)
        if t.data_type in _NATIVE and size >= _EXTERNAL_BYTES and t.HasField("raw_data"):
            data = t.raw_data  # one copy out of the protobuf
            large[t.name] = np.frombuffer(data, helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(t.dims)
            graph.initializer.append(_external_stub(t, len(data)))
        else:
            graph.initializer.append(t)
    return shell.SerializeToString(), read, large


_EXTERNAL_BYTES = 1 << 16  # weights at least this large go to onnxruntime as arrays, not bytes
_NATIVE = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
           onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
           onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64}


def _external_stub(t: onnx.TensorProto, length: int) -> onnx.TensorProto:
    """t's name, type and dims, its data marked external (supplied to the session as an array)."""
    stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims,
                            data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", "hnn-probe-in-memory"), ("offset", "0"), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def _ort_feed(value, type_proto: onnx.TypeProto):
    """A probe input as onnxruntime's Python API takes it: bfloat16 and float8 arrays as an
    OrtValue of their bits, int4 and uint4 ones of their nibbles, two a byte, low one first (the
    OrtValue reads them from the front of a byte array of the tensor's shape)."""
    import onnxruntime as ort

    elem = type_proto.tensor_type.elem_type if type_proto.HasField("tensor_type") else 0
    if not isinstance(value, np.ndarray) or elem not in _BIT_FED | _NIBBLES:
        return value
    bits = np.ascontiguousarray(value).view(np.uint16 if value.dtype.itemsize == 2 else np.uint8)
    if elem in _NIBBLES:
        nibbles = np.append(bits.reshape(-1) & 0xF, np.zeros(value.size % 2, np.uint8))
        bits = np.zeros(value.size, np.uint8)
        bits[:len(nibbles) // 2] = nibbles[0::2] | (nibbles[1::2] << 4)
        bits = bits.reshape(value.shape)
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, elem)


def _as_array(value) -> np.ndarray | None:
    """A value read by the probe as one numpy array for the features, or None (skipped): a
    tensor as it is (ml_dtypes floats as float32, exact), a sequence of tensors of one type
    stacked (as np.asarray did), or their values end to end where their shapes differ; maps,
    empty optionals and sequences of maps give none."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value)
        return value.astype(np.float32) if value.dtype.type.__module__.startswith("ml_dtypes") else value
    if isinstance(value, list) and value:
        parts = [_as_array(v) for v in value]
        if all(p is not None and p.dtype == parts[0].dtype for p in parts):
            if all(p.shape == parts[0].shape for p in parts):
                return np.stack(parts)
            return np.concatenate([p.reshape(-1) for p in parts])
    return None


def run_probe(model: onnx.ModelProto, tensors: list[str], timeout_s: float = DEFAULT_TIMEOUT_S,
              max_activation_bytes: int = DEFAULT_MAX_ACTIVATION_BYTES,
              max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES, folder: Path | None = None,
              threads: int = 1) -> ProbeResult:
    """Run `model` (inputs already fixed in size; external data in `folder`) and return the
    values of `tensors` (those that are not numeric arrays or sequences of them are left out).
    One intra-op thread by default; the codes do not depend on it."""
    import onnxruntime as ort

    if _activation_bytes(model) > max_activation_bytes:
        return ProbeResult(PROBE_SKIPPED, reason="activations larger than max_activation_bytes")
    weight_bytes = _weight_bytes(model)
    if weight_bytes > max_weight_bytes:
        return ProbeResult(PROBE_SKIPPED, reason=f"weights ({weight_bytes / 2**30:.1f} GiB) larger than "
                                                 "max_weight_bytes")
    try:
        feeds = probe_inputs(model)
    except ValueError as e:
        return ProbeResult(PROBE_FAILED, reason=f"the probe cannot make {e}")
    try:
        types = {v.name: v.type for v in model.graph.input}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if folder is not None:  # external data: from this folder only, never the working directory
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4  # failures reach the user as a warning with the reason
        serialized, read, large = _serialized_with_outputs(model, tensors)
        weights = [ort.OrtValue.ortvalue_from_numpy(v) for v in large.values()]  # alive while the session runs
        if large:
            options.add_external_initializers(list(large), weights)
        session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
        wanted = [o.name for o in session.get_outputs() if o.name in read]
        run_options = ort.RunOptions()
        timer = threading.Timer(timeout_s, lambda: setattr(run_options, "terminate", True))
        timer.start()
        try:
            values = session.run(wanted, {k: _ort_feed(v, types[k]) for k, v in feeds.items()}, run_options)
        finally:
            timer.cancel()
    except Exception as e:  # noqa: BLE001 - any runtime failure means static features
        if "terminate" in str(e).lower() or "exiting due to terminate" in str(e).lower():
            return ProbeResult(PROBE_TIMEOUT, reason=f"probe ran past {timeout_s:g} s")
        return ProbeResult(PROBE_FAILED, reason=f"onnxruntime could not run the model: {first_line(e)}")
    out = {}
    for name, v in [*feeds.items(), *((read[o], v) for o, v in zip(wanted, values))]:
        array = _as_array(v)  # per value: one that is not an array is left out, never fails the probe
        if array is not None:
            out[name] = array
    return ProbeResult(PROBE_OK, out)
