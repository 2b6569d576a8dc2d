"""Cleanup: remove what computes nothing of the model's function: nodes nothing reads, no-ops
(identities, float casts, unit reshapes, x*1), repeated nodes, NaN guards, and how a classifier is
packaged (scaling of its input, a closing softmax)."""

from __future__ import annotations

import math

import numpy as np

from hnn_jax.converters.canonical.graph import Node, Work, has_subgraph, same_float
from hnn_jax.converters.canonical.passes.constants import NONDETERMINISTIC, RESHAPES

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
