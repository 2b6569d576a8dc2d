"""Quantisation undone: onnxruntime's int8 patterns (dynamic quantisation of MatMul and Conv,
QDQ pairs on activations, quantised embedding tables) as float ops on dequantised weights."""

from __future__ import annotations

import numpy as np

from hnn_jax.converters.canonical.graph import Node, Work
from hnn_jax.converters.canonical.passes.cleanup import drop_dead

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
