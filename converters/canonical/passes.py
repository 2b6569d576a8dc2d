"""The rewrites of the merge operation other than region fusion: constant folding, shape
arithmetic, no-ops, quantisation and layout undone, weights folded into their consumers, and
the spellings of one op made one. Each takes the Work graph and rewrites it in place; the
order they run in is `canonical.PASSES`."""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from hnn_jax.converters.canonical.fusion import ACTIVATIONS
from hnn_jax.converters.canonical.graph import (FLOAT_TYPES, MAX_FOLD_ELEMENTS, Node, Work, channel_vector,
                                                evaluate, fold_affine, has_subgraph, kind_of, same_float)
from hnn_jax.converters.load import is_float

MAX_COPY_ELEMENTS = 1 << 22  # larger weights stay views (of mapped external data) when reordered
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
# Inputs that carry data; the others carry shapes, axes or sizes (a node feeding only those is
# shape arithmetic and is dropped). Ops not listed treat every input as data.
DATA_SLOTS = {
    "Reshape": {0}, "Expand": {0}, "Tile": {0}, "Slice": {0}, "Pad": {0}, "Resize": {0},
    "Upsample": {0}, "Squeeze": {0}, "Unsqueeze": {0}, "ReduceMean": {0}, "ReduceSum": {0},
    "ReduceMax": {0}, "ReduceMin": {0}, "ReduceProd": {0}, "ReduceL2": {0}, "ReduceL1": {0},
    "ReduceLogSumExp": {0}, "ReduceSumSquare": {0}, "TopK": {0}, "Split": {0}, "OneHot": {0},
    "ConstantOfShape": set(), "CumSum": {0}, "Clip": {0}, "Dropout": {0}, "Trilu": {0},
}


def _folded_view(w: Work, n: Node) -> list[np.ndarray] | None:
    """A constant's Transpose, Reshape (to the inferred shape) or Identity as a view of it, and a
    large weight's widening float Cast (fp16 -> fp32) as the weight itself: what exporters put
    between a weight and its consumer costs no copy, so mapped external weights stay unread.
    None for anything else (evaluated instead)."""
    c = w.consts[n.inputs[0]]
    out = w.shape(n.outputs[0])
    if n.op == "Identity":
        return [c]
    if n.op == "Transpose":
        perm = n.attrs.get("perm")
        return [np.transpose(c, perm)] if perm is None or len(perm) == c.ndim else None
    if n.op in RESHAPES and out is not None and c.flags.c_contiguous and math.prod(out) == c.size:
        return [c.reshape(out)]
    if n.op == "Cast" and c.size > MAX_COPY_ELEMENTS:
        to = helper.tensor_dtype_to_np_dtype(n.attrs.get("to", 0)) if n.attrs.get("to") in FLOAT_TYPES else None
        if to is not None and is_float(c) and np.dtype(to).itemsize >= c.dtype.itemsize and np.dtype(to) != c.dtype:
            return [c]
    return None


def fold_constants(w: Work) -> None:
    """Evaluate nodes whose inputs are all known; Shape/Size of static shapes become constants."""
    w.topo_sort()
    kept = []
    for n in w.nodes:
        value = None
        if (n.domain == "" and n.inputs and n.inputs[0] in w.consts and len(n.outputs) == 1
                and all(x in w.consts for x in n.inputs if x)):
            value = _folded_view(w, n)
        if (value is None and n.domain == "" and n.op == "CastLike" and len(n.inputs) == 2
                and n.inputs[0] in w.consts and w.elem_type(n.inputs[1])):  # only the type of the second is read
            value = [w.consts[n.inputs[0]].astype(helper.tensor_dtype_to_np_dtype(w.elem_type(n.inputs[1])))]
        elif value is None and n.domain == "" and n.op in ("Shape", "Size") and n.inputs and n.inputs[0]:
            shape = w.shape(n.inputs[0])
            if shape is not None:
                if n.op == "Size":
                    value = [np.array(int(np.prod(shape)), dtype=np.int64)]
                else:
                    start, end = n.attrs.get("start", 0), n.attrs.get("end", None)
                    value = [np.array(shape[start:end], dtype=np.int64)]
        elif (value is None and n.domain == "" and n.op not in NONDETERMINISTIC
              and all(x in w.consts for x in n.inputs if x) and not has_subgraph(n.attrs)
              and any(n.inputs)):
            out_shape = w.shape(n.outputs[0])
            if out_shape is None or math.prod(out_shape) <= MAX_FOLD_ELEMENTS:
                try:
                    value = evaluate(w, [n], {}, [o for o in n.outputs if o])
                except Exception:  # noqa: BLE001 - an op the reference runtime lacks stays a node
                    value = None
        if value is None:
            kept.append(n)
            continue
        for name, v in zip([o for o in n.outputs if o], value):
            w.consts[name] = v
    w.nodes = kept


def merge_slices(w: Work) -> None:
    """Slices that cut one tensor into contiguous pieces along one axis are one Split
    (torch's chunk: three Slices from one exporter, a Split from the other)."""
    groups: dict[tuple[str, int], list[tuple[int, int, Node]]] = {}
    for n in w.nodes:
        if n.op != "Slice" or n.domain != "" or len(n.inputs) < 4:
            continue
        args = [w.consts.get(i) if i else None for i in n.inputs[1:5]] + [None]
        shape = w.shape(n.inputs[0])
        if not shape or any(a is None for a in args[:3]) or any(a.size != 1 for a in args[:3]):  # a scalar has no axis
            continue
        if args[3] is not None and int(args[3].reshape(())) != 1:
            continue
        axis = int(args[2].reshape(())) % len(shape)
        dim = shape[axis]
        start, end = (int(np.clip(int(v.reshape(())) + (dim if int(v.reshape(())) < 0 else 0), 0, dim))
                      for v in args[:2])
        groups.setdefault((n.inputs[0], axis), []).append((start, end, n))
    for n in w.nodes:  # one spelling for Split: axis and the sizes it cuts (opsets differ)
        if n.op == "Split" and n.domain == "" and w.shape(n.inputs[0]):
            axis = int(n.attrs.get("axis", 0)) % len(w.shape(n.inputs[0]))
            sizes = [w.shape(o)[axis] if w.shape(o) is not None else -1 for o in n.outputs]
            n.inputs, n.attrs = n.inputs[:1], {"axis": axis, "split": sizes}
    replaced: dict[int, Node] = {}
    gone: set[int] = set()
    for (x, axis), pieces in groups.items():
        pieces.sort(key=lambda p: (p[0], p[1]))
        dim = w.shape(x)[axis]
        bounds = [0] + [p[1] for p in pieces]
        if len(pieces) < 2 or [p[0] for p in pieces] != bounds[:-1] or bounds[-1] != dim:
            continue
        split = Node("Split", [x], [p[2].outputs[0] for p in pieces],
                     {"axis": axis, "split": [p[1] - p[0] for p in pieces]})
        replaced[id(pieces[0][2])] = split
        gone.update(id(p[2]) for p in pieces[1:])
    w.nodes = [replaced.get(id(n), n) for n in w.nodes if id(n) not in gone]


def drop_dead(w: Work) -> None:
    """Remove nodes none of whose outputs is used, and then what only they used (a worklist:
    linear in the graph, however long the dead chains)."""
    readers: dict[str, int] = {}
    for x in [x for n in w.nodes for x in n.inputs] + w.outputs:
        readers[x] = readers.get(x, 0) + 1
    producer = {o: n for n in w.nodes for o in n.outputs if o}

    def unused(n: Node) -> bool:
        return not any(readers.get(o) for o in n.outputs if o)

    dead: set[int] = set()
    work = [n for n in w.nodes if unused(n)]
    while work:
        n = work.pop()
        if id(n) in dead:
            continue
        dead.add(id(n))
        for x in n.inputs:
            readers[x] = readers.get(x, 0) - 1
            p = producer.get(x)
            if p is not None and id(p) not in dead and unused(p):
                work.append(p)
    w.nodes = [n for n in w.nodes if id(n) not in dead]


def drop_shape_arithmetic(w: Work) -> None:
    """Remove nodes whose outputs reach only shape/axes/size inputs (Shape->Gather->Concat->...)."""
    w.topo_sort()
    uses = w.consumers()
    outputs = set(w.outputs)
    shape_only: set[int] = set()
    for n in reversed(w.nodes):
        feeds_data = False
        for o in n.outputs:
            if o in outputs:
                feeds_data = True
            for consumer, slot in uses.get(o, []):
                if id(consumer) in shape_only:
                    continue
                slots = DATA_SLOTS.get(consumer.op) if consumer.domain == "" else None
                if slots is None or slot in slots:
                    feeds_data = True
        if not feeds_data:
            shape_only.add(id(n))
    w.nodes = [n for n in w.nodes if id(n) not in shape_only]


def _fits(shape: tuple[int, ...], *values: np.ndarray) -> bool:
    """Whether every value broadcasts to `shape` without growing it."""
    try:
        return np.broadcast_shapes(shape, *(v.shape for v in values)) == tuple(shape)
    except ValueError:
        return False


def dequantize(w: Work) -> None:
    """Turn onnxruntime's int8 patterns back into float ops with dequantised weights.

    DynamicQuantizeLinear -> MatMulInteger/ConvInteger -> Cast -> Mul(scale) becomes
    MatMul/Conv on the float input; QuantizeLinear -> DequantizeLinear on activations goes away.
    """
    prod = w.producers()
    uses = w.consumers()
    renames: dict[str, str] = {}
    replaced: dict[int, Node] = {}
    gone: set[int] = set()
    for n in w.nodes:
        if not n.inputs:  # an op of another domain may take none
            continue
        quant = prod.get(n.inputs[0])
        if n.op == "DequantizeLinear" and quant is not None and quant[0].op in ("QuantizeLinear",
                                                                               "DynamicQuantizeLinear"):
            x = quant[0].inputs[0]
            clip = _range_clip(w, quant[0], prod.get(x))
            if clip is None:
                renames[n.outputs[0]] = x
            else:  # the activation quantisation replaced: written where the DequantizeLinear wrote
                replaced[id(n)] = Node(*clip(x, n.outputs[0]))
            continue
        gather = prod.get(n.inputs[0])
        readers = [r for r, _ in uses.get(n.inputs[0], [])]
        if (n.op == "DequantizeLinear" and gather is not None and gather[0].op == "Gather"
                and gather[0].inputs[0] in w.consts and all(i in w.consts for i in n.inputs[1:] if i)
                and all(r.op == "DequantizeLinear" and r.inputs == n.inputs for r in readers)):
            # a quantised embedding table (read by one or more alike DequantizeLinear): dequantise
            # the table, gather floats
            if gather[0].outputs[0] == n.inputs[0]:
                table = w.consts[gather[0].inputs[0]].astype(np.float32)
                zp = w.consts[n.inputs[2]].astype(np.float32) if len(n.inputs) > 2 and n.inputs[2] else 0.0
                gather[0].inputs = [w.add_const((table - zp) * w.consts[n.inputs[1]].astype(np.float32),
                                                gather[0].inputs[0])] + gather[0].inputs[1:]
                gather[0].outputs = [n.outputs[0]]
            else:  # a second reader: the gather writes the first reader's tensor
                renames[n.outputs[0]] = gather[0].outputs[0]
            gone.add(id(n))
            continue
        if n.op not in ("MatMulInteger", "ConvInteger") or len(n.inputs) < 2 or n.inputs[1] not in w.consts:
            continue
        quant = prod.get(n.inputs[0])
        cast = uses.get(n.outputs[0], [])
        if quant is None or quant[0].op != "DynamicQuantizeLinear" or len(cast) != 1 or cast[0][0].op != "Cast":
            continue
        mul = uses.get(cast[0][0].outputs[0], [])
        if len(mul) != 1 or mul[0][0].op != "Mul" or {n.outputs[0], cast[0][0].outputs[0]} & set(w.outputs):
            continue  # the integer product is read as it is: not only the pattern's way
        mul = mul[0][0]
        scale_name = mul.inputs[1] if mul.inputs[0] == cast[0][0].outputs[0] else mul.inputs[0]
        if scale_name in w.consts:  # static activation scale folded in: not separable, skip
            continue
        scale_mul = prod.get(scale_name)
        if scale_mul is None or scale_mul[0].op != "Mul":
            continue
        w_scale = next((w.consts[x] for x in scale_mul[0].inputs if x in w.consts), None)
        if w_scale is None:
            continue
        wq = w.consts[n.inputs[1]].astype(np.float32)
        zp = w.consts.get(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] else np.zeros(1)
        zp, w_scale = (np.asarray(v, np.float32) for v in (zp, w_scale))
        if n.op == "ConvInteger":  # per output channel: along the weight's first axis
            zp, w_scale = (v.reshape(-1, *([1] * (wq.ndim - 1))) if v.size > 1 else v for v in (zp, w_scale))
        if not _fits(wq.shape, zp, w_scale):  # scales or zero points of another shape: not this pattern
            continue
        weight = w.add_const(((wq - zp) * w_scale).astype(np.float32), n.inputs[1])
        float_op = "MatMul" if n.op == "MatMulInteger" else "Conv"
        attrs = {} if float_op == "MatMul" else dict(n.attrs)
        replaced[id(n)] = Node(float_op, [quant[0].inputs[0], weight], [mul.outputs[0]], attrs)
        gone.update((id(cast[0][0]), id(mul)))
    w.nodes = [replaced.get(id(n), n) for n in w.nodes if id(n) not in gone]
    w.rename(renames)
    drop_dead(w)



# Ops whose output is signed in general: a quantisation range starting at 0 after one of them
# is an activation the quantiser removed (onnxruntime drops a Relu or Clip(0, 6) after Conv,
# MatMul, Gemm or Add and quantises the tensor over [0, max] instead).
_SIGNED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "BatchNormalization"}


def _range_clip(w: Work, quant: Node, producer):
    """For QuantizeLinear(x) whose range is [0, max] after a signed op: a function building the
    Relu (or Clip(0, 6), where max is 6) the quantiser folded into the range; else None."""
    if quant.op != "QuantizeLinear" or producer is None or producer[0].op not in _SIGNED_OPS:
        return None
    scale, zero = (w.consts.get(i) for i in (quant.inputs[1], quant.inputs[2] if len(quant.inputs) > 2 else ""))
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype.kind not in "iu":
        return None
    info = np.iinfo(zero.dtype)
    if int(zero.reshape(())) != info.min:
        return None
    top = float((info.max - info.min) * scale.astype(np.float64).reshape(()))
    if abs(top - 6.0) <= 1e-5:
        return lambda x, out: ("Clip", [x, w.add_const(np.float32(0), out + "_min"),
                                        w.add_const(np.float32(6), out + "_max")], [out])
    return lambda x, out: ("Relu", [x], [out])


def _squeezed(shape) -> tuple[int, ...] | None:
    return None if shape is None else tuple(d for d in shape if d != 1)


def _is_scalar(w: Work, name: str, value: float) -> bool:
    c = w.consts.get(name)
    return c is not None and c.size == 1 and float(c.reshape(())) == value


def _is_noop(w: Work, n: Node, x: str, dyn: list[str]) -> bool:
    out = n.outputs[0]
    if n.op in ("Identity", "Dropout"):
        return True
    if n.op == "Cast":
        return same_float(w, x, out) or w.elem_type(x) == n.attrs.get("to")
    if n.op in RESHAPES or n.op == "Expand":
        return (w.shape(x) is not None and _squeezed(w.shape(x)) == _squeezed(w.shape(out))
                and (n.op != "Expand" or math.prod(w.shape(x)) == math.prod(w.shape(out))))
    if n.op == "Transpose":
        perm, shape = n.attrs.get("perm"), w.shape(x)
        if perm is None or (shape is not None and len(perm) != len(shape)):
            return False  # no perm reverses the axes; a perm of another rank fails at runtime
        return perm == sorted(perm) or (shape is not None and [p for p in perm if shape[p] != 1]
                                        == sorted(p for p in perm if shape[p] != 1))
    if n.op in ("Mul", "Div", "Add", "Sub") and len(dyn) == 1 and len(n.inputs) == 2:
        const = next(i for i in n.inputs if i != x)
        unit = 1.0 if n.op in ("Mul", "Div") else 0.0
        return (_is_scalar(w, const, unit) and (n.op in ("Mul", "Add") or n.inputs[0] == x)
                and w.shape(out) == w.shape(x))
    if n.op == "Concat":
        return len([i for i in n.inputs if i]) == 1
    if n.op in ("Slice", "Pad"):
        return w.shape(x) is not None and w.shape(x) == w.shape(out)
    if n.op == "Gather" and len(n.inputs) == 2 and n.inputs[1] in w.consts and w.shape(x) is not None:
        # every element in order (the dynamo exporter's as_strided of a channels-last input)
        index = w.consts[n.inputs[1]].reshape(-1)
        axis = int(n.attrs.get("axis", 0)) % len(w.shape(x)) if w.shape(x) else 0
        return (len(w.shape(x)) >= 1 and np.array_equal(index, np.arange(w.shape(x)[axis]))
                and _squeezed(w.shape(x)) == _squeezed(w.shape(out) or ()))
    if (n.op == "GatherND" and len(n.inputs) == 2 and n.inputs[1] in w.consts and w.shape(x)
            and not n.attrs.get("batch_dims", 0)):
        # full index tuples of every element in order (the dynamo exporter's mask broadcast)
        index, shape = w.consts[n.inputs[1]], w.shape(x)
        every = np.stack(np.unravel_index(np.arange(math.prod(shape)), shape), -1)
        return (index.shape[-1] == len(shape) and np.array_equal(index.reshape(-1, len(shape)), every)
                and _squeezed(shape) == _squeezed(w.shape(out) or ()))
    return False


def drop_nan_guards(w: Work) -> None:
    """Where(IsNaN(x), c, x) passes x through: the dynamo exporter guards attention's softmax
    against rows that are all masked, a numerical guard that TorchScript exports do not write."""
    prod = w.producers()
    renames, gone = {}, set()
    for n in w.nodes:
        if n.op != "Where" or n.domain != "" or len(n.inputs) != 3 or n.outputs[0] in w.outputs:
            continue
        guard = prod.get(n.inputs[0])
        if (guard is not None and guard[0].op == "IsNaN" and guard[0].inputs[0] == n.inputs[2]
                and n.inputs[1] in w.consts):
            renames[n.outputs[0]] = n.inputs[2]
            gone.add(id(n))
    if gone:
        w.nodes = [n for n in w.nodes if id(n) not in gone]
        w.rename(renames)
        drop_dead(w)


def divide_as_multiply(w: Work) -> None:
    """x / c with a constant float c (no zeros) becomes x * (1/c): exporters and onnxruntime's
    fusions write a scaling either way (q.k^T / sqrt(d), or FusedMatMul's alpha)."""
    for n in w.nodes:
        c = w.consts.get(n.inputs[1]) if n.op == "Div" and n.domain == "" and len(n.inputs) == 2 else None
        if c is not None and n.inputs[0] not in w.consts and c.dtype.kind == "f" and c.size and np.all(c != 0):
            n.op, n.inputs = "Mul", [n.inputs[0], w.add_const((1 / c.astype(np.float64)).astype(c.dtype),
                                                              n.inputs[1])]


def remove_noops(w: Work) -> None:
    """Identity, Dropout, float<->float Cast, reshapes that only add/drop size-1 dims, identity
    transposes, x*1, x+0, x/1, x-0 and single-input Concat pass their input through.

    When x has no other reader its producer writes the no-op's output itself, so readers keep the
    shape they expect (a squeezed pool output stays squeezed); else readers read x."""
    w.topo_sort()
    readers = {t: len(uses) for t, uses in w.consumers().items()}
    for o in w.outputs:  # a graph output is read too (a Dropout's mask, an attention's present state)
        readers[o] = readers.get(o, 0) + 1
    producer = {t: p for t, (p, _) in w.producers().items()}
    alias: dict[str, str] = {}
    outputs = set(w.outputs)
    kept = []
    for n in w.nodes:
        n.inputs = [_resolve(alias, i) for i in n.inputs]
        dyn = w.dynamic_inputs(n)
        if (n.domain != "" or not dyn or not n.outputs or any(readers.get(o) for o in n.outputs[1:] if o)
                or not _is_noop(w, n, dyn[0], dyn)):
            kept.append(n)
            continue
        x, out = dyn[0], n.outputs[0]
        p = producer.get(x)
        if p is not None and readers.get(x) == 1 and x not in outputs:
            p.outputs = [out if o == x else o for o in p.outputs]
            producer[out] = p
        else:
            alias[out] = x
            readers[x] = readers.get(x, 0) - 1 + readers.get(out, 0)
    w.nodes = kept
    w.outputs = [_resolve(alias, o) for o in w.outputs]


def _resolve(alias: dict[str, str], t: str) -> str:
    """The tensor that `t` stands for after the nodes a pass removed (alias: output -> input)."""
    while t in alias:
        t = alias[t]
    return t


def merge_duplicates(w: Work) -> None:
    """Nodes computing one op on the same inputs (the same tensors, or small constants of equal
    value) with the same attributes are one node: a snapshot's export built BERT's attention
    mask once per layer where the built model's export shares it, and the extra node moved 7
    architecture bits between a model and its own snapshot. Random ops, subgraph holders and
    nodes writing a graph output stay as they are."""
    w.topo_sort()
    alias: dict[str, str] = {}
    seen: dict[tuple, Node] = {}
    outputs = set(w.outputs)

    def operand(x: str):
        value = w.consts.get(x)
        if value is None or value.size > 64:
            return x
        return "const", str(value.dtype), value.shape, np.ascontiguousarray(value).tobytes()

    kept = []
    for n in w.nodes:
        n.inputs = [_resolve(alias, i) for i in n.inputs]
        if (n.domain != "" or n.op in NONDETERMINISTIC or has_subgraph(n.attrs) or not n.outputs
                or any(o in outputs for o in n.outputs)):
            kept.append(n)
            continue
        attrs = tuple(sorted((k, repr(v.tolist() if isinstance(v, np.ndarray) else v)) for k, v in n.attrs.items()))
        key = (n.op, n.kind, attrs, tuple(operand(i) for i in n.inputs), len(n.outputs))
        first = seen.setdefault(key, n)
        if first is n:
            kept.append(n)
            continue
        alias.update((a, b) for a, b in zip(n.outputs, first.outputs) if a and b)
    w.nodes = kept


def explicit_pads(w: Work) -> None:
    """auto_pad SAME_UPPER / SAME_LOWER / VALID as the `pads` they stand for (tf2onnx writes
    Keras's padding="same" as SAME_UPPER, PyTorch exporters write the numbers)."""
    for n in w.nodes:
        mode = n.attrs.get("auto_pad", "NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        shape = w.shape(n.inputs[0]) if n.inputs else None
        kernel = n.attrs.get("kernel_shape")
        if (n.domain != "" or n.op not in ("Conv", "MaxPool", "AveragePool", "LpPool")
                or mode not in ("SAME_UPPER", "SAME_LOWER", "VALID") or not shape or not kernel):
            continue
        spatial = shape[2:]
        strides = n.attrs.get("strides") or [1] * len(spatial)
        dilations = n.attrs.get("dilations") or [1] * len(spatial)
        begin, end = [], []
        for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
            total = 0 if mode == "VALID" else max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
            low = total // 2 if mode == "SAME_UPPER" else total - total // 2
            begin.append(low)
            end.append(total - low)
        n.attrs["pads"], n.attrs["auto_pad"] = begin + end, "NOTSET"


def fold_pads(w: Work) -> None:
    """Zero padding of spatial dims before a Conv or pooling is that op's own `pads`
    (Keras writes ZeroPadding2D layers, PyTorch a padding argument)."""
    uses = w.consumers()
    gone: set[int] = set()
    for n in w.nodes:
        if n.op != "Pad" or n.domain != "" or n.attrs.get("mode", "constant") not in ("constant", b"constant"):
            continue
        pads = w.consts.get(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else n.attrs.get("pads")
        value = w.consts.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        readers = uses.get(n.outputs[0], [])
        if pads is None or (value is not None and np.any(value)) or len(readers) != 1:
            continue
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        rank = len(pads) // 2
        consumer = readers[0][0]
        if (readers[0][1] != 0 or consumer.op not in ("Conv", "MaxPool", "AveragePool") or rank < 3
                or any(pads[i] or pads[rank + i] for i in range(2))
                or consumer.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")):
            continue
        own = list(consumer.attrs.get("pads") or [0] * (2 * (rank - 2)))
        consumer.attrs["pads"] = [a + b for a, b in zip(own, pads[2:rank] + pads[rank + 2:])]
        consumer.inputs[0] = n.inputs[0]
        gone.add(id(n))
    w.nodes = [n for n in w.nodes if id(n) not in gone]


def flatten_concats(w: Work) -> None:
    """A Concat that reads another Concat along the same axis reads that one's inputs instead:
    Keras's DenseNet grows its features as concat(concat(x, a), b), PyTorch's as concat(x, a, b).
    The inner Concat stays only while something else reads it."""
    w.topo_sort()  # inner concats first, so chains flatten all the way
    prod = w.producers()

    def axis(n: Node) -> int | None:
        shape = w.shape(n.outputs[0])
        a = int(n.attrs.get("axis", 0))
        return a % len(shape) if shape else (a if a >= 0 else None)

    for n in w.nodes:
        along = axis(n) if n.op == "Concat" and n.domain == "" else None
        if along is None:
            continue
        flat = []
        for x in n.inputs:
            p = prod.get(x)
            inner = p[0] if p is not None else None
            if inner is not None and inner.op == "Concat" and inner.domain == "" and axis(inner) == along:
                flat += inner.inputs
            else:
                flat.append(x)
        n.inputs = flat
    drop_dead(w)


def drop_packaging(w: Work) -> None:
    """Drop what packages a classifier rather than builds it: elementwise steps by constants
    between a graph input and the first conv (keras.applications' Rescaling and Normalization
    layers; PyTorch models normalise outside the model) and a Softmax or LogSoftmax that only
    makes a graph output (keras.applications end in softmax, torchvision in logits). A keras
    model and its PyTorch twin then start and end alike."""
    uses = w.consumers()

    def scaling_step(x: str) -> Node | None:
        readers = uses.get(x, [])
        if len(readers) != 1:
            return None
        n, slot = readers[0]
        out = n.outputs[0] if n.outputs else None
        if (n.domain != "" or n.op not in ("Mul", "Add", "Sub", "Div") or len(n.inputs) != 2
                or n.inputs[1 - slot] not in w.consts or (slot == 1 and n.op in ("Sub", "Div"))
                or out in w.outputs or w.shape(out) is None or w.shape(out) != w.shape(x)
                or not same_float(w, x, out)):
            return None
        return n

    renames: dict[str, str] = {}
    gone: set[int] = set()
    for x in w.inputs:  # each input's chain is its own (one reader a step)
        chain, end = [], x
        while (n := scaling_step(end)) is not None:
            chain.append(n)
            end = n.outputs[0]
        readers = uses.get(end, [])
        if chain and readers and all(r.op in ("Conv", "Transpose") and r.domain == "" for r, _ in readers):
            renames[end] = x
            gone.update(id(n) for n in chain)
    for n in w.nodes:
        if (n.domain == "" and n.op in ("Softmax", "LogSoftmax") and n.outputs and n.outputs[0] in w.outputs
                and not uses.get(n.outputs[0]) and n.inputs[0] not in w.inputs and id(n) not in gone):
            w.outputs = [n.inputs[0] if o == n.outputs[0] else o for o in w.outputs]
            gone.add(id(n))
    w.nodes = [n for n in w.nodes if id(n) not in gone]
    w.rename(renames)


def drop_layout_transposes(w: Work) -> None:
    """Compose Transpose chains; drop transposes right after a graph input or before an output
    (tf2onnx puts them around NHWC models); the input keeps the transposed shape. One pass in
    topological order: a chain is composed into its last transpose as it is reached."""
    w.topo_sort()
    producer = {t: p for t, (p, _) in w.producers().items()}
    readers = {t: len(u) for t, u in w.consumers().items()}
    renames: dict[str, str] = {}
    gone: set[int] = set()
    for n in w.nodes:
        if n.op != "Transpose" or n.domain != "":
            continue
        x, out = n.inputs[0], n.outputs[0]
        while x in renames:
            x = renames[x]
        n.inputs = [x]
        p = producer.get(x)
        if (p is not None and id(p) not in gone and p.op == "Transpose" and p.domain == ""
                and readers.get(x) == 1 and x not in w.outputs):
            inner, outer = list(p.attrs.get("perm", [])), list(n.attrs.get("perm", []))
            if inner and outer and len(inner) == len(outer):  # a dropped reshape may sit between
                n.attrs["perm"] = [inner[i] for i in outer]
                x = n.inputs[0] = p.inputs[0]
                gone.add(id(p))
        if x in w.inputs and readers.get(x) == 1:
            w.types[x] = (w.shape(out), w.elem_type(x))
            renames[out] = x
            readers[x] = readers.get(out, 0)
            gone.add(id(n))
        elif out in w.outputs and not readers.get(out):
            w.outputs = [x if o == out else o for o in w.outputs]
            gone.add(id(n))
    w.nodes = [n for n in w.nodes if id(n) not in gone]
    w.rename(renames)
    remove_noops(w)


def _linear_weight(value: np.ndarray, transpose: bool, alpha: float = 1.0) -> np.ndarray:
    """An [out, in] weight, a view where it can be: float32 when small; a large one in its own
    float type, of the mapped external data file if it came from one, so it is never held in
    memory whole (features read it a piece at a time, in memory order). A MatMul's [in, out]
    weight is read transposed, not copied (a third of ViT-B/16's canonicalisation)."""
    weight = value if value.size > MAX_COPY_ELEMENTS else value.astype(np.float32, copy=False)
    if alpha != 1.0:
        weight = weight.astype(np.float32) * np.float32(alpha)
    return weight.T if transpose else weight


def form_linear(w: Work) -> None:
    """Gemm and MatMul with a constant 2-D weight become `linear` with weight [out, in]."""
    for n in w.nodes:
        if n.domain != "":
            continue
        if n.op == "Gemm" and len(n.inputs) >= 2 and n.inputs[1] in w.consts and not n.attrs.get("transA", 0):
            weight = _linear_weight(w.consts[n.inputs[1]], not n.attrs.get("transB", 0),
                                    float(n.attrs.get("alpha", 1.0)))
            inputs = [n.inputs[0], w.add_const(weight, n.inputs[1])]
            if len(n.inputs) > 2 and n.inputs[2] in w.consts:
                bias = w.consts[n.inputs[2]].astype(np.float32) * float(n.attrs.get("beta", 1.0))
                if bias.size != 1 and (bias.size != weight.shape[0] or bias.shape[-1] != weight.shape[0]):
                    continue  # C of shape [M, N] or [M, 1]: not one bias per output
                inputs.append(w.add_const(np.broadcast_to(bias.reshape(-1), (weight.shape[0],)).copy(), n.inputs[2]))
            elif len(n.inputs) > 2 and n.inputs[2]:
                continue
            n.inputs, n.kind, n.attrs = inputs, "linear", {}
        elif n.op == "MatMul" and n.inputs[1] in w.consts and w.consts[n.inputs[1]].ndim == 2:
            weight = _linear_weight(w.consts[n.inputs[1]], True)
            n.inputs, n.kind = [n.inputs[0], w.add_const(weight, n.inputs[1])], "linear"


def fold_into_producers(w: Work) -> None:
    """Fold BatchNormalization and per-channel Mul/Add constants into the preceding conv or
    linear; a BatchNormalization left alone becomes `batch_norm` with weights [scale, shift]."""
    w.topo_sort()
    readers = {t: len(uses) for t, uses in w.consumers().items()}
    producer = {t: p for t, (p, _) in w.producers().items()}
    folded: set[int] = set()
    for n in w.nodes:
        dyn = w.dynamic_inputs(n)
        if n.domain != "" or len(dyn) != 1:
            continue
        x = dyn[0]
        if (n.op == "BatchNormalization" and n.kind is None and all(i in w.consts for i in n.inputs[1:5])
                and len({w.consts[i].size for i in n.inputs[1:5]}) == 1):  # one value per channel each
            gamma, beta, mean, var = (w.consts[i].astype(np.float32) for i in n.inputs[1:5])
            scale = gamma / np.sqrt(var + float(n.attrs.get("epsilon", 1e-5)))
            per_channel = (-1,) + (1,) * max(len(w.shape(x) or (0, 0)) - 2, 0)  # [C,1,1] for NCHW
            mul, add = scale.reshape(per_channel), (beta - mean * scale).reshape(per_channel)
        elif n.op in ("Mul", "Add") and len(n.inputs) == 2:
            c = w.consts[next(i for i in n.inputs if i != x)]
            mul, add = (c, None) if n.op == "Mul" else (None, c)
        else:
            continue
        target = producer.get(x)
        if target is not None and (readers.get(x) != 1 or x in w.outputs):
            target = None
        foldable = (target is not None and len(target.inputs) > 1  # a constant weight and bias
                    and all(i in w.consts for i in target.inputs[1:3] if i)
                    and (target.kind == "linear" or target.op in ("Conv", "ConvTranspose")))
        if foldable and fold_affine(w, target, mul, add):
            target.outputs = [n.outputs[0]]
            producer[n.outputs[0]] = target
            folded.add(id(n))
        elif (target is not None and target.kind == "batch_norm" and n.op != "BatchNormalization"
              and _fold_into_batch_norm(w, target, mul, add)):
            target.outputs = [n.outputs[0]]
            producer[n.outputs[0]] = target
            folded.add(id(n))
        elif n.op == "BatchNormalization":
            n.inputs = [x, w.add_const(np.asarray(mul, np.float32).reshape(-1), n.inputs[1]),
                        w.add_const(np.asarray(add, np.float32).reshape(-1), n.inputs[2])]
            n.kind, n.attrs = "batch_norm", {"epsilon": n.attrs.get("epsilon", 1e-5)}
            n.outputs = n.outputs[:1]
        elif (scale_shift := _channel_affine(w, x, mul, add)) is not None:
            # tf2onnx writes a Keras BatchNormalization as Mul (+ Add) by per-channel constants:
            # standing alone (after a Concat, say) it is the batch_norm PyTorch exports; at
            # initialisation it is close to x*1, which region fusion would drop as an identity
            n.inputs = [x] + [w.add_const(v, n.inputs[-1]) for v in scale_shift]
            n.kind, n.attrs = "batch_norm", {}
    w.nodes = [n for n in w.nodes if id(n) not in folded]


def _channel_affine(w: Work, x: str, mul, add) -> list[np.ndarray] | None:
    """[scale, shift] if mul/add act per channel (axis 1, rank >= 3, more than one value)."""
    shape = w.shape(x)
    c = mul if mul is not None else add
    if shape is None or len(shape) < 3 or np.asarray(c).size < 2:
        return None
    v = channel_vector(np.asarray(c), shape[1], len(shape) - 1)
    if v is None:
        return None
    ones, zeros = np.ones_like(v), np.zeros_like(v)
    return [v, zeros] if mul is not None else [ones, v]


def _fold_into_batch_norm(w: Work, target: Node, mul, add) -> bool:
    """A per-channel Mul or Add after a batch_norm becomes part of its scale and shift."""
    scale, shift = (w.consts[i] for i in target.inputs[1:3])
    axis_from_end = len(w.shape(target.inputs[0]) or ()) - 1
    m = np.ones_like(scale) if mul is None else channel_vector(np.asarray(mul), scale.size, axis_from_end)
    a = np.zeros_like(shift) if add is None else channel_vector(np.asarray(add), shift.size, axis_from_end)
    if m is None or a is None:
        return False
    target.inputs = [target.inputs[0], w.add_const(scale * m, target.inputs[1]),
                     w.add_const(shift * m + a, target.inputs[2])]
    return True



def canonical_pools(w: Work) -> None:
    """ReduceMean/ReduceMax over every spatial axis is global average/max pooling."""
    for n in w.nodes:
        if n.op not in ("ReduceMean", "ReduceMax") or n.domain != "" or n.kind:
            continue
        shape = w.shape(n.inputs[0])
        axes = n.attrs.get("axes")
        if axes is None and len(n.inputs) > 1 and n.inputs[1] in w.consts:
            axes = w.consts[n.inputs[1]].tolist()
        if shape is None or axes is None or len(shape) < 3:
            continue
        axes = sorted(a % len(shape) for a in np.atleast_1d(axes))
        spatial_first = list(range(2, len(shape)))          # NCHW
        spatial_last = list(range(1, len(shape) - 1))       # NHWC
        if axes in (spatial_first, spatial_last):
            n.kind = "global_avg_pool" if n.op == "ReduceMean" else "global_max_pool"
            n.inputs, n.attrs = n.inputs[:1], {}


def linear_heads(w: Work) -> None:
    """A classifier head that keeps the unit spatial dims of its global pooling ([N, C, 1, 1]),
    runs 1x1 convs and activations on them and flattens at the end (Keras MobileNets, timm's
    conv_head) becomes the head PyTorch writes: flatten first, then linear layers. The pool's and
    the chain's outputs lose their unit dims; each 1x1 conv becomes `linear` with weight [out, in]."""
    readers = w.consumers()
    for pool in list(w.nodes):
        shape = w.shape(pool.outputs[0]) if pool.outputs else None
        if (pool.domain != "" or kind_of(w, pool) not in ("global_avg_pool", "global_max_pool")
                or shape is None or len(shape) < 3 or any(d != 1 for d in shape[2:])):
            continue
        chain, convs, t = [], [], pool.outputs[0]
        while len(uses := readers.get(t, [])) == 1 and t not in w.outputs:
            n, slot = uses[0]
            unit_conv = _is_unit_conv(w, n)
            if slot != 0 or w.dynamic_inputs(n) != [t] or not (unit_conv or kind_of(w, n) in ACTIVATIONS):
                break
            chain.append(n)
            if unit_conv:
                convs.append(n)
            t = n.outputs[0]
            if w.shape(t) is not None and len(w.shape(t)) == 2:  # the flatten that ended the head
                break
        if not chain or w.shape(t) is None or len(w.shape(t)) != 2:
            continue
        for name in [pool.outputs[0]] + [n.outputs[0] for n in chain[:-1]]:
            unit_shape, elem_type = w.types[name]
            w.types[name] = (unit_shape[:2], elem_type)
        for n in convs:
            weight = w.consts[n.inputs[1]]
            n.inputs = [n.inputs[0], w.add_const(weight.reshape(weight.shape[:2]), n.inputs[1]),
                        *n.inputs[2:3]]
            n.kind, n.attrs = "linear", {}


def _is_unit_conv(w: Work, n: Node) -> bool:
    """A Conv with a constant all-1x1 kernel, one group and no padding."""
    return (n.op == "Conv" and n.domain == "" and n.kind is None and len(n.inputs) > 1
            and n.inputs[1] in w.consts and all(d == 1 for d in w.consts[n.inputs[1]].shape[2:])
            and int(n.attrs.get("group", 1)) == 1 and not any(n.attrs.get("pads") or [])
            and all(i in w.consts for i in n.inputs[2:3] if i))



def reinfer_shapes(w: Work) -> None:
    """Shape inference again, now that shape arithmetic is folded (Work.reinfer_shapes)."""
    w.reinfer_shapes()
