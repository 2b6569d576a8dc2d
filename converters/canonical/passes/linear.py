"""Linear layers and what folds into them: Gemm and MatMul with a constant weight as `linear`,
BatchNormalization and per-channel Mul/Add folded into the conv or linear before them (else
`batch_norm`), and classifier heads of 1x1 convs as linear layers."""

from __future__ import annotations

import numpy as np

from hnn_jax.converters.canonical.fusion import ACTIVATIONS
from hnn_jax.converters.canonical.graph import Node, Work, channel_vector, fold_affine, kind_of
from hnn_jax.converters.canonical.passes.constants import MAX_COPY_ELEMENTS

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
