"""Control flow: `If` bodies written into the graph, so the probe runs, canonicalisation sees and
the weight part reads the network a branch holds (a voice-activity model keeps its whole network
inside an `If` on the sample rate; a code of the `If` alone tells no release apart).

- A condition that is a constant (an initializer, a Constant, or computed from constants alone)
  takes its branch: the other is never run, and is dropped.
- Any other condition (a graph input such as the sample rate, a computed flag) keeps both
  branches, joined per output by Where(condition, then, else): the probe runs both and passes on
  the one its inputs select, and both branches' weights reach the graph, as the model holds them.
  Where the branches' outputs are not tensors of one type and shape, the `If` stays a node.

Branch tensors are renamed `<If output>__then/<name>` (or `__else/`) so they cannot collide with
the enclosing graph's; names a branch reads from the enclosing graph are left as they are. `If`
nodes inside branches are written in turn. `Loop` and `Scan` bodies stay inside their node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import external_data_helper, helper

from hnn_jax.converters.canonical.graph import tensor_value

MAX_DEPTH = 8  # nested Ifs written in turn; deeper ones stay nodes


def inline_branches(model: onnx.ModelProto) -> bool:
    """Write the model's `If` nodes into its graph (see the module docstring). True if any was."""
    changed = False
    for _ in range(MAX_DEPTH):
        graph = model.graph
        if not any(n.op_type == "If" for n in graph.node):
            break
        constant = _constant_values(graph)
        nodes, written = [], False
        for n in graph.node:
            spelled = _inlined(n, constant, graph) if n.op_type == "If" and n.domain in ("", "ai.onnx") else None
            if spelled is None:
                nodes.append(n)
            else:
                nodes.extend(spelled)
                written = True
        if not written:
            break
        del graph.node[:]
        graph.node.extend(nodes)
        changed = True
    return changed


def _branches(n: onnx.NodeProto) -> dict[str, onnx.GraphProto]:
    return {a.name: a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH}


def _inlined(n: onnx.NodeProto, constant: dict[str, np.ndarray], graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
    """The nodes replacing one If, or None where it stays."""
    branches = _branches(n)
    if set(branches) != {"then_branch", "else_branch"}:
        return None
    cond = n.input[0]
    if cond in constant:
        taken = "then_branch" if bool(np.asarray(constant[cond]).reshape(-1)[0]) else "else_branch"
        nodes, outputs = _written(branches[taken], f"{n.output[0]}__{taken[:4]}/", graph)
        return nodes + [helper.make_node("Identity", [y], [x]) for x, y in zip(n.output, outputs) if x]
    then_types = [v.type for v in branches["then_branch"].output]
    else_types = [v.type for v in branches["else_branch"].output]
    if not all(_same_tensor_type(a, b) for a, b in zip(then_types, else_types)):
        return None
    then_nodes, then_out = _written(branches["then_branch"], f"{n.output[0]}__then/", graph)
    else_nodes, else_out = _written(branches["else_branch"], f"{n.output[0]}__else/", graph)
    flag = f"{n.output[0]}__cond"
    shape = f"{n.output[0]}__scalar"
    join = [helper.make_node("Constant", [], [shape], value=onnx.numpy_helper.from_array(np.zeros(0, np.int64))),
            helper.make_node("Reshape", [cond, shape], [flag])]  # a one-element condition as a scalar
    join += [helper.make_node("Where", [flag, a, b], [x]) for x, a, b in zip(n.output, then_out, else_out) if x]
    return then_nodes + else_nodes + join


def _same_tensor_type(a: onnx.TypeProto, b: onnx.TypeProto) -> bool:
    """Both tensors of one element type and, where both are given, one shape."""
    if not (a.HasField("tensor_type") and b.HasField("tensor_type")):
        return False
    ta, tb = a.tensor_type, b.tensor_type
    if ta.elem_type != tb.elem_type:
        return False
    if not (ta.HasField("shape") and tb.HasField("shape")):
        return True
    if len(ta.shape.dim) != len(tb.shape.dim):
        return False
    return all(not (x.HasField("dim_value") and y.HasField("dim_value")) or x.dim_value == y.dim_value
               for x, y in zip(ta.shape.dim, tb.shape.dim))


def _written(branch: onnx.GraphProto, prefix: str, graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[str]]:
    """A branch's nodes and initializers as nodes of the enclosing graph, its own tensors renamed
    with `prefix`; and the names its outputs take."""
    own = {t.name for t in branch.initializer} | {o for m in branch.node for o in m.output if o}
    rename = {x: prefix + x for x in own}
    nodes = []
    for t in branch.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = rename[t.name]
        graph.initializer.append(copy)
    for m in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(m)
        _rename(copy, rename)
        nodes.append(copy)
    return nodes, [rename.get(v.name, v.name) for v in branch.output]


def _rename(n: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Rename n's inputs and outputs, and the names its subgraphs read from outside (names are
    unique across scopes in ONNX, so a renamed name means the same tensor everywhere)."""
    n.input[:] = [rename.get(x, x) for x in n.input]
    n.output[:] = [rename.get(x, x) for x in n.output]
    for a in n.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for m in g.node:
                _rename(m, rename)
            for v in g.output:
                v.name = rename.get(v.name, v.name)


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Small boolean/integer tensors known without running the model: initializers, Constant
    nodes, and Not / Equal / comparisons / Cast of them (an exporter's flag such as `training`)."""
    values: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if np.prod(t.dims) <= 16 and not external_data_helper.uses_external_data(t):
            values[t.name] = tensor_value(t)
    ops = {"Not": np.logical_not, "Equal": np.equal, "Less": np.less, "Greater": np.greater,
           "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal, "And": np.logical_and,
           "Or": np.logical_or, "Identity": lambda x: x}
    for n in graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value" and a.type == a.TENSOR), None)
            if value is not None and np.prod(value.dims) <= 16:
                values[n.output[0]] = tensor_value(value)
        elif n.input and all(x in values for x in n.input):
            if n.op_type in ops:
                values[n.output[0]] = np.asarray(ops[n.op_type](*(values[x] for x in n.input)))
            elif n.op_type == "Cast":
                to = next(a.i for a in n.attribute if a.name == "to")
                values[n.output[0]] = values[n.input[0]].astype(helper.tensor_dtype_to_np_dtype(to))
    return values
