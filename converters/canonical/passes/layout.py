"""Layout: padding written as `auto_pad` or as a Pad op made the explicit `pads` of the conv or
pool, and the transposes tf2onnx puts around NHWC models composed and dropped."""

from __future__ import annotations

import numpy as np

from hnn_jax.converters.canonical.graph import Work
from hnn_jax.converters.canonical.passes.cleanup import remove_noops

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
