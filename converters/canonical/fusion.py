"""Region fusion: each closed region of elementwise and reduce nodes computed from one tensor
becomes one node, named by what it computes on sample values (gelu, silu, layer_norm, softmax
...), whatever the exporter's spelling."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from onnx import helper

from hnn_jax.converters.canonical.graph import (FLOAT_TYPES, MAX_FOLD_ELEMENTS, Node, Work, evaluate,
                                                fold_affine, same_float)

MAX_REGION = 32     # largest elementwise region examined for fusion
SAMPLE_ROWS = 16    # sample values a region is classified on: rows (layer_norm fits per column) ...
SAMPLE_ELEMENTS = 512  # ... and values in all, at least
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Erf",
    "Erfc", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "HardSigmoid", "HardSwish", "Clip", "Min", "Max", "Gelu", "Mish", "Cast",
}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax"}

# Kinds that region fusion can produce; native ops of these kinds drop their attributes
# (epsilon, axis, approximate) so that both spellings give the same node.
FUSED_KINDS = {"layer_norm", "rms_norm", "softmax", "log_softmax", "relu", "relu6", "gelu",
               "gelu_tanh", "silu", "sigmoid", "hard_sigmoid", "hard_swish", "tanh", "softplus",
               "mish", "elu", "selu", "leaky_relu", "softsign"}


def _gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "gelu": _gelu,
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hard_swish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "tanh": np.tanh,
    "softplus": lambda x: np.logaddexp(0, x),
    "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "softsign": lambda x: x / (1 + np.abs(x)),
}


def _classify_elementwise(x: np.ndarray, y: np.ndarray, eps: float = 0.0) -> str | None:
    """The activation that y is of x, the nearest within 1e-3 (relative): weights stored in half
    precision round the constants (1/6 becomes 0.16663), and `eps`, the resolution of the least
    precise type the region computes in, widens it (half precision rounds every step)."""
    if y.shape != x.shape:
        return None
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if np.max(np.abs(y64 - x64)) <= 1e-6 * (1 + np.max(np.abs(x64))):
        return "identity"
    best, best_err = None, max(1e-3, 4 * eps)
    for name, f in ACTIVATIONS.items():
        ref = f(x64)
        err = np.max(np.abs(y64 - ref)) / (1 + np.max(np.abs(ref)))
        if err < best_err:
            best, best_err = name, err
    return best


def _resolution(w: Work, x: str, nodes: list[Node]) -> float:
    """Machine epsilon of the least precise float type among x and the nodes' outputs."""
    types = {w.elem_type(t) for t in [x, *(o for m in nodes for o in m.outputs if o)]} & FLOAT_TYPES
    return max((float(ml_dtypes.finfo(helper.tensor_dtype_to_np_dtype(t)).eps) for t in types), default=0.0)


def _classify_reduce(x: np.ndarray, y: np.ndarray, axes: list[int]):
    """layer_norm / rms_norm (weights [gamma, beta]) or softmax / log_softmax over trailing axes."""
    if y.shape != x.shape or not axes or axes != list(range(x.ndim - len(axes), x.ndim)):
        return None
    k = int(np.prod([x.shape[a] for a in axes]))
    x2, y2 = x.reshape(-1, k).astype(np.float64), y.reshape(-1, k).astype(np.float64)
    tol = 1e-3 * (1 + np.max(np.abs(y2)))
    e = np.exp(x2 - x2.max(1, keepdims=True))
    soft = e / e.sum(1, keepdims=True)
    if np.max(np.abs(y2 - soft)) <= tol:
        return "softmax", []
    if np.max(np.abs(y2 - np.log(soft))) <= tol:
        return "log_softmax", []
    if x2.shape[0] < 2:
        return None
    centred = x2 - x2.mean(1, keepdims=True)
    for name, normed in (("layer_norm", centred / np.sqrt((centred ** 2).mean(1, keepdims=True))),
                         ("rms_norm", x2 / np.sqrt((x2 ** 2).mean(1, keepdims=True)))):
        nm, ym = normed.mean(0), y2.mean(0)
        var = ((normed - nm) ** 2).mean(0)
        gamma = ((normed - nm) * (y2 - ym)).mean(0) / np.maximum(var, 1e-12)
        beta = ym - gamma * nm
        if np.max(np.abs(y2 - (gamma * normed + beta))) <= tol:
            shape = [x.shape[a] for a in axes]
            weights = [gamma.reshape(shape).astype(np.float32)]
            if name == "layer_norm":
                weights.append(beta.reshape(shape).astype(np.float32))
            return name, weights
    return None


def _region(w: Work, x: str, uses) -> list[Node]:
    """Elementwise/reduce nodes computed from x alone (plus constants), in topological order."""
    region: list[Node] = []
    members: set[int] = set()
    tensors = {x}
    frontier = [c for c, _ in uses.get(x, [])]
    while frontier and len(region) < MAX_REGION:
        grew = False
        for n in list(frontier):
            if id(n) in members or n.domain != "" or n.kind or not (n.op in ELEMENTWISE or n.op in REDUCES):
                continue
            if n.op == "Cast" and not same_float(w, n.inputs[0], n.outputs[0]):
                continue
            if all(i in tensors for i in w.dynamic_inputs(n)):
                region.append(n)
                members.add(id(n))
                tensors.update(n.outputs)
                frontier.extend(c for o in n.outputs for c, _ in uses.get(o, []))
                grew = True
        if not grew:
            break
    return region


def fuse_regions(w: Work) -> None:
    """Fuse each closed region of elementwise/reduce nodes with one input into one node, named by
    what it computes on sample values (gelu, silu, layer_norm, softmax, ...), else `elementwise`.

    Seeds are visited in topological order, each again after a fusion from it. A fused node takes
    the place of its region's first node, so the order stays topological and the consumer map is
    updated in place: the pass is linear in the graph's size, not quadratic."""
    w.topo_sort()
    uses = w.consumers()
    producer = {t: p for t, (p, _) in w.producers().items()}
    slot_of = {id(n): i for i, n in enumerate(w.nodes)}
    dead: dict[int, Node] = {}  # holds the replaced nodes too, so their ids are never reused

    def seeds():
        yield from list(w.inputs)
        for i in range(len(w.nodes)):  # read live: a fused node replaces w.nodes[i] in place
            n = w.nodes[i]
            if id(n) not in dead:
                yield from [o for o in n.outputs if o]

    for x in seeds():
        while w.shape(x) is not None and w.elem_type(x) in FLOAT_TYPES:
            region = _region(w, x, uses)
            if len(region) < 2 or not _fuse_best_cut(w, x, region, uses, producer, slot_of, dead):
                break
    w.nodes = [n for n in w.nodes if id(n) not in dead]


def _sample_shape(w: Work, x: str, nodes: list[Node]) -> list[int]:
    """The shape of the sample values a region is evaluated on: x's axes that a reduce reads or
    along which a constant varies keep their size, the others become 1, and the first of those
    holds enough rows (>= SAMPLE_ROWS, >= SAMPLE_ELEMENTS values in all) to tell functions apart.
    Elementwise ops do the same at every position, so this is the region's function on a sample
    of fixed size, not on the whole activation (of 8 images, as it once was)."""
    shape = list(w.shape(x))
    rank = len(shape)
    keep: set[int] = set()
    for m in nodes:
        if m.op in REDUCES:
            axes = _reduce_axes(w, m, rank)
            keep.update(range(rank) if axes is None else axes)
        for c in (w.consts[i] for i in m.inputs if i in w.consts):
            if c.ndim > rank:  # broadcasts x to more axes: not a function of x's shape alone
                keep.update(range(rank))
            keep.update(rank - c.ndim + k for k, d in enumerate(c.shape) if d != 1)
    sample = [d if a in keep else 1 for a, d in enumerate(shape)]
    free = [a for a in range(rank) if a not in keep]
    if free:
        sample[free[0]] = max(SAMPLE_ROWS, -(-SAMPLE_ELEMENTS // max(1, math.prod(sample))))
    return sample


def _cuts(w: Work, region: list[Node], uses) -> list[tuple[str, list[Node]]]:
    """(output tensor, nodes) of every closed sub-region ending at one node: its other tensors
    are read inside it only. Largest first, then in region order."""
    index = {id(n): i for i, n in enumerate(region)}
    prod = {o: n for n in region for o in n.outputs}
    cuts = []
    for n in region:
        t = n.outputs[0]
        ancestors, stack = {id(n)}, [n]
        while stack:
            for i in stack.pop().inputs:
                p = prod.get(i)
                if p is not None and id(p) not in ancestors:
                    ancestors.add(id(p))
                    stack.append(p)
        if len(ancestors) < 2:
            continue
        nodes = [m for m in region if id(m) in ancestors]
        closed = all((o == t) or (o not in w.outputs and all(id(c) in ancestors for c, _ in uses.get(o, [])))
                     for m in nodes for o in m.outputs if o)
        if closed:
            cuts.append((len(nodes), index[id(n)], t, nodes))
    cuts.sort(key=lambda c: (-c[0], c[1]))
    return [(t, nodes) for _, _, t, nodes in cuts]


def _fuse_best_cut(w: Work, x: str, region: list[Node], uses, producer, slot_of, dead) -> bool:
    """Fuse the largest cut of the region whose function is recognised. The region runs once
    per sample scale (10 where a cut reduces, else 3) with every cut's tensor as an output; a
    cut is run alone only if the whole region could not run."""
    cuts = _cuts(w, region, uses)
    if not cuts:
        return False
    sample = _sample_shape(w, x, [m for _, nodes in cuts for m in nodes])
    if not 0 < math.prod(sample) <= MAX_FOLD_ELEMENTS:  # nothing to classify, or values of GBs
        return False
    dtype = helper.tensor_dtype_to_np_dtype(w.elem_type(x))
    members = {id(m) for _, nodes in cuts for m in nodes}
    runs: dict[float, tuple[np.ndarray, dict[str, np.ndarray] | None]] = {}

    def run(scale: float, t: str, nodes: list[Node]) -> tuple[np.ndarray, np.ndarray | None]:
        if scale not in runs:
            probe = (np.random.default_rng(0).standard_normal(sample) * scale).astype(dtype)
            outputs = [c[0] for c in cuts]
            try:
                ys = dict(zip(outputs, evaluate(w, [m for m in region if id(m) in members], {x: probe}, outputs)))
            except Exception:  # noqa: BLE001 - a node the reference runtime cannot run: cut by cut
                ys = None
            runs[scale] = probe, ys
        probe, ys = runs[scale]
        if ys is not None:
            return probe, ys[t]
        try:
            return probe, evaluate(w, nodes, {x: probe}, [t])[0]
        except Exception:  # noqa: BLE001 - a region the reference runtime cannot run stays as is
            return probe, None

    for t, nodes in cuts:
        has_reduce = any(m.op in REDUCES for m in nodes)
        if not has_reduce and not all(c.min() == c.max() for m in nodes for c in
                                      (w.consts[i] for i in m.inputs if i in w.consts) if c.size):
            continue  # a constant that varies by position (a mask, rotary tables): no activation of x
        probe, y = run(10.0 if has_reduce else 3.0, t, nodes)
        if y is None:
            continue
        if has_reduce:
            axes = _reduce_axes(w, next(m for m in nodes if m.op in REDUCES), len(sample))
            found = _classify_reduce(probe, y, axes) if axes is not None else None
            if found is None:
                continue
            kind, weights = found
        else:
            kind, weights = _classify_elementwise(probe, y, _resolution(w, x, nodes)), []
            if kind is None and _unfold_hard_sigmoid_shift(w, x, probe, y, nodes, uses, producer):
                kind = "hard_sigmoid"
            if kind is None:
                continue
        _replace(w, x, t, nodes, kind, weights, uses, producer, slot_of, dead)
        return True
    if not any(m.op in REDUCES for m in cuts[0][1]) and all(
            w.consts[i].size == 1 for m in cuts[0][1] for i in m.inputs if i in w.consts):
        _replace(w, x, cuts[0][0], cuts[0][1], "elementwise", [], uses, producer, slot_of, dead)
        return True
    return False


def _unfold_hard_sigmoid_shift(w: Work, x: str, probe: np.ndarray, y: np.ndarray,
                               nodes: list[Node], uses, producer: dict[str, Node]) -> bool:
    """True, after moving -3 into x's producer's bias, if the region computes relu6(x) / 6 and x
    is read by it alone from a Conv or linear. That is hard_sigmoid(x - 3): tf2onnx folds the +3
    of Keras's hard_sigmoid (relu6(x + 3) / 6) into the bias of the conv before it, which PyTorch
    exports as a conv and a HardSigmoid (Keras vs torchvision MobileNetV3's squeeze-excite gate)."""
    if _classify_elementwise(probe - 3.0, y) != "hard_sigmoid" or x in w.outputs:
        return False
    members = {id(m) for m in nodes}
    if any(id(c) not in members for c, _ in uses.get(x, [])):
        return False
    target = producer.get(x)
    if (target is None or len(target.inputs) < 2 or len(target.outputs) != 1
            or not all(i in w.consts for i in target.inputs[1:3] if i)
            or not (target.kind == "linear" or target.op == "Conv")):
        return False
    old_consts = [i for i in target.inputs[1:3] if i]
    if not fold_affine(w, target, None, np.float32(-3.0)):
        return False
    w.probe_offsets[x] = -3.0  # the probe reads the conv's output as PyTorch's conv gives it
    for name in old_consts:
        uses[name] = [(c, k) for c, k in uses.get(name, []) if c is not target]
    for k, name in enumerate(target.inputs[1:3], start=1):
        uses.setdefault(name, []).append((target, k))
    return True


def _reduce_axes(w: Work, n: Node, rank: int) -> list[int] | None:
    axes = n.attrs.get("axes")
    if axes is None and len(n.inputs) > 1 and n.inputs[1] in w.consts:
        axes = w.consts[n.inputs[1]].tolist()
    if axes is None:
        return None
    return sorted(int(a) % rank for a in np.atleast_1d(axes))


def _replace(w: Work, x: str, t: str, nodes: list[Node], kind: str, weights: list[np.ndarray],
             uses, producer: dict[str, Node], slot_of: dict[int, int], dead: dict[int, Node]) -> None:
    """Replace `nodes` (x -> ... -> t) by one node of `kind`, or by nothing for an identity,
    keeping the consumer and producer maps and the node list's order."""
    gone = {id(m) for m in nodes}
    dead.update((id(m), m) for m in nodes)
    for name in {i for m in nodes for i in m.inputs if i}:
        uses[name] = [(c, k) for c, k in uses.get(name, []) if id(c) not in gone]
    if kind == "identity":
        for c, k in uses.pop(t, []):
            c.inputs[k] = x
            uses.setdefault(x, []).append((c, k))
        w.outputs = [x if o == t else o for o in w.outputs]
    else:
        fused = Node(kind, [x] + [w.add_const(v, f"{t}_{kind}") for v in weights], [t], {}, kind=kind)
        pos = min(slot_of[id(m)] for m in nodes)
        w.nodes[pos] = fused
        producer[t] = fused
        slot_of[id(fused)] = pos
        for k, name in enumerate(fused.inputs):
            uses.setdefault(name, []).append((fused, k))
    uses[x].sort(key=lambda use: (slot_of[id(use[0])], use[1]))  # node order, as w.consumers() gives

