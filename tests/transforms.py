"""Model variants for the tests: the package's own (hnn_jax.training.variants) plus rename-and-shuffle."""

from __future__ import annotations

import numpy as np
import onnx

from hnn_jax.training.variants import copy, fp16_weights, int8_dynamic, perturb, prune  # noqa: F401


def rename_and_shuffle(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Every node and tensor renamed, node order shuffled: the same model for any user."""
    model = copy(model)
    g = model.graph
    rng = np.random.default_rng(seed)
    names = {}

    def new(name):
        if not name:
            return name
        if name not in names:
            names[name] = f"t{rng.integers(1 << 40):x}"
        return names[name]

    for t in g.initializer:
        t.name = new(t.name)
    for v in list(g.input) + list(g.output) + list(g.value_info):
        v.name = new(v.name)
    for n in g.node:
        n.name = f"n{rng.integers(1 << 40):x}"
        n.input[:] = [new(x) for x in n.input]
        n.output[:] = [new(x) for x in n.output]
    nodes = list(g.node)
    order = rng.permutation(len(nodes))
    del g.node[:]
    g.node.extend(nodes[i] for i in order)
    return model
