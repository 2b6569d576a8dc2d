"""Translate a jaxpr straight to ONNX (opset 17), so Flax/JAX models need no extra exporter.

`jax.make_jaxpr` traces the function on the example arguments; every equation becomes a few
standard ONNX nodes through TRANSLATIONS (primitive name -> small function). The traced arguments
become graph inputs; the closed-over constants (a module's parameters) become initializers, written
only when read. Calls (jit, custom_jvp/custom_vjp rules such as relu and gelu, closed_call, remat)
are inlined. A primitive without a translation raises UnsupportedModelError naming it.

Where JAX's spelling would hide a pattern from the canonicaliser, the graph is written as torch
and tf2onnx write it: reductions with keepdims (_Graph.kept), sum / n as ReduceMean or
AveragePool (_div), max(x, 0) as Relu, x - c as x + (-c), a split dense layer's bias before the
split (_add), constants computed here (_fold), jnp's wrap of negative indices left to Gather.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from hnn_jax.errors import UnsupportedModelError, first_line

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: every onnxruntime that runs opset 17 reads it
MAX_FOLD_ELEMENTS = 1024  # results of constants are computed here up to this size (or their largest input's)


def jaxpr_to_onnx(fn, *example_args) -> onnx.ModelProto:
    """fn(*example_args) traced with jax.make_jaxpr -> onnx.ModelProto (opset 17).

    The leaves of example_args are the graph inputs, with the dtypes JAX traces them with (float32,
    int32 ...); integer arrays keep the type they were given (int64 token ids, as torch takes them,
    are cast to JAX's int32 inside the graph). The outputs are the leaves of what fn returns.
    Closed-over arrays become initializers.
    """
    import jax

    try:
        closed = jax.make_jaxpr(fn)(*example_args)
    except Exception as e:  # tracing raises many types
        raise UnsupportedModelError(f"jax.make_jaxpr failed: {first_line(e)}") from e
    g = _Graph()
    leaves = jax.tree_util.tree_leaves(example_args)
    if len(leaves) != len(closed.jaxpr.invars):
        leaves = [None] * len(closed.jaxpr.invars)
    inputs, names = [], []
    for k, (var, leaf) in enumerate(zip(closed.jaxpr.invars, leaves)):
        name, dtype = f"input_{k}", np.dtype(var.aval.dtype)
        given = np.dtype(getattr(leaf, "dtype", dtype))
        if given != dtype and given.kind in "iu" and dtype.kind in "iu":
            inputs.append(helper.make_tensor_value_info(name, _onnx_dtype(given), list(var.aval.shape)))
            names.append(g.op("Cast", [name], to=_onnx_dtype(dtype)))
            g.indices[names[-1]] = (None, lambda name=name: name)  # a Gather reads the ids as given
        else:
            inputs.append(helper.make_tensor_value_info(name, _onnx_dtype(dtype), list(var.aval.shape)))
            names.append(name)
    outs = _translate(g, closed.jaxpr, closed.consts, names)
    outputs = []
    for name, var in zip(outs, closed.jaxpr.outvars):
        if name not in g.written or name in {o.name for o in outputs}:
            name = g.op("Identity", [name])  # a graph output must be a node's own, once
        outputs.append(helper.make_tensor_value_info(name, _onnx_dtype(var.aval.dtype), list(var.aval.shape)))
    graph = helper.make_graph(g.live_nodes([o.name for o in outputs]), "jaxpr", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                             producer_name="hnn_jax.converters.jaxpr")


# --- the graph being built -------------------------------------------------------------------


class _Graph:
    """Nodes and initializers written so far; `values` holds the value of every constant tensor
    (initializers and folded results), so translations can read constant sizes and indices.

    `kept` gives, for a reduction's result and elementwise results of it, the same values with
    the reduced axes kept as size 1 (written only when read). JAX reduces without keepdims and
    reshapes back before broadcasting (x - mean(x) in LayerNorm, softmax); writing it that way
    would leave the canonicaliser Reshapes that put size-1 axes back, which it treats as no-ops
    and drops, so a LayerNorm or softmax region would broadcast wrongly when it is evaluated for
    fusion. With `kept`, a reshape back to the kept shape reads the keepdims=1 reduction instead,
    as torch and tf2onnx spell them."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: dict[str, np.ndarray] = {}
        self.written: set[str] = set()  # outputs of nodes
        self.sums: dict[str, tuple[float, object]] = {}  # a sum's name -> (count, writes its mean)
        self.kept: dict[str, tuple[tuple[int, ...], object]] = {}  # name -> (kept shape, writes it)
        # indices -> (axis size or None, writes what Gather may read instead): the int64 ids before
        # their cast to JAX's int32, ids before jnp's wrap of negatives (Gather wraps them itself)
        self.indices: dict[str, tuple[int | None, object]] = {}
        self.split: dict[str, tuple[str, list[int]]] = {}  # a MatMul's output reshaped -> (it, its shape)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.params: set[str] = set()  # the closed-over constants and what is computed from them alone
        self._literals: dict[tuple, str] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "const", of=(), param: bool = False) -> str:
        """An initializer; small literals are shared (one `2.0` for every x * 2). A parameter, or
        a constant computed from one (`of`: its inputs), is its own and never dropped as x + 0."""
        value = np.asarray(value, dtype=dtype)
        param = param or any(c in self.params for c in of)
        key = (value.dtype.str, value.shape, value.tobytes()) if value.size <= 16 and not param else None
        if key is not None and key in self._literals:
            return self._literals[key]
        name = self.fresh("param" if param else hint)
        self.initializers.append(onnx.numpy_helper.from_array(value, name))
        self.values[name] = value
        if param:
            self.params.add(name)
        if key is not None:
            self._literals[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), np.int64), hint="ints")

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        """Append one node; its output name (or list of names when n_out > 1)."""
        outputs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outputs, name=self.fresh(op_type), **attrs)
        self.nodes.append(node)
        self.written.update(outputs)
        self.producer.update((o, node) for o in outputs)
        return outputs[0] if n_out == 1 else outputs

    def live_nodes(self, outputs: list[str]) -> list[onnx.NodeProto]:
        """The nodes the outputs depend on: translations that rewrite a pattern (a mean spelled
        sum / n) leave the node they replaced unread."""
        needed, live = set(outputs), []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                live.append(node)
                needed.update(node.input)
        self.initializers = [t for t in self.initializers if t.name in needed]
        return live[::-1]


def _onnx_dtype(dtype) -> int:
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (KeyError, TypeError, ValueError):
        raise UnsupportedModelError(f"no ONNX type for the JAX dtype {dtype}") from None


def _translate(g: _Graph, jaxpr, consts, inputs: list[str]) -> list[str]:
    """Translate one jaxpr (the top one or an inlined call) given its input tensor names."""
    from jax.extend.core import DropVar, Literal

    env: dict = dict(zip(jaxpr.invars, inputs))
    pending = dict(zip(jaxpr.constvars, consts))  # written as initializers when first read

    def read(atom) -> str:
        if isinstance(atom, Literal):
            return g.const(atom.val, atom.aval.dtype, hint="literal")
        if atom not in env:
            env[atom] = g.const(np.asarray(pending.pop(atom)), param=True)
        return env[atom]

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [read(v) for v in eqn.invars]
        outs = _fold(g, eqn, ins)
        if outs is None:
            rule = TRANSLATIONS.get(name)
            if rule is None:
                raise UnsupportedModelError(f"the JAX primitive '{name}' has no ONNX translation "
                                            "(hnn_jax.converters.jaxpr.TRANSLATIONS)")
            outs = rule(g, eqn, *ins)
            if name in _ELEMENTWISE and isinstance(outs, str):
                _keep(g, eqn, rule, ins, outs)
            if name in _INDEX_LAYOUT and ins[0] in g.indices:
                size, raw = g.indices[ins[0]]
                g.indices[outs] = (size, _once(lambda rule=rule, eqn=eqn, raw=raw: rule(g, eqn, raw())))
        outs = [outs] if isinstance(outs, str) else list(outs)
        if len(outs) != len(eqn.outvars):
            raise UnsupportedModelError(f"translation of '{name}' gave {len(outs)} outputs, "
                                        f"not {len(eqn.outvars)}")
        for var, out in zip(eqn.outvars, outs):
            if not isinstance(var, DropVar):
                env[var] = out
    return [read(v) for v in jaxpr.outvars]


def _once(make):
    """make(), called at most once."""
    made = []
    return lambda: made[0] if made else made.append(make()) or made[0]


def _keep(g: _Graph, eqn, rule, ins: list[str], out: str) -> None:
    """An elementwise op of kept results (and scalars) has a kept form too: the same op on theirs."""
    shapes = {g.kept[i][0] for i in ins if i in g.kept}
    if len(shapes) == 1 and all(i in g.kept or (i in g.values and g.values[i].ndim == 0) for i in ins):
        g.kept[out] = (shapes.pop(), _once(lambda: rule(g, eqn, *(g.kept[i][1]() if i in g.kept else i
                                                                  for i in ins))))


def _fold(g: _Graph, eqn, ins: list[str]):
    """Results of constants alone are computed now, as JAX computes them: index arithmetic (the
    wrap-around of a negative start), so dynamic_slice sees constant indices; a parameter's
    reshape or a norm's rsqrt(var + eps) * scale, so the graph reads x + c and x * c with
    constant c, which the canonicaliser folds into the conv or linear before (BatchNorm). A
    broadcast to more values than its inputs hold stays a node (no GBs of zeros)."""
    if eqn.primitive.name in _CALLS or not ins or any(i not in g.values for i in ins):
        return None
    limit = max(MAX_FOLD_ELEMENTS, max(g.values[i].size for i in ins))
    if sum(math.prod(v.aval.shape) for v in eqn.outvars) > limit:
        return None
    try:
        result = eqn.primitive.bind(*(g.values[i] for i in ins), **eqn.params)
    except Exception:  # noqa: BLE001 - not evaluable eagerly: translate it instead
        return None
    results = result if eqn.primitive.multiple_results else [result]
    return [g.const(np.asarray(r), hint="folded", of=ins) for r in results]


# --- helpers ---------------------------------------------------------------------------------


def _shape(eqn, i: int = 0) -> tuple[int, ...]:
    return tuple(eqn.invars[i].aval.shape)


def _out(eqn, i: int = 0):
    return eqn.outvars[i].aval


def _transpose(g: _Graph, x: str, perm) -> str:
    """A constant (a conv's HWIO kernel) is transposed here: the file holds it as Conv reads it."""
    perm = [int(p) for p in perm]
    if perm == sorted(perm):
        return x
    if x in g.values:
        return g.const(np.transpose(g.values[x], perm), of=[x])
    return g.op("Transpose", [x], perm=perm)


def _reshape(g: _Graph, x: str, shape_from, shape_to) -> str:
    return x if tuple(shape_from) == tuple(shape_to) else g.op("Reshape", [x, g.ints(shape_to)])


def _cast(g: _Graph, x: str, dtype_from, dtype_to) -> str:
    if np.dtype(dtype_from) == np.dtype(dtype_to):
        return x
    return g.op("Cast", [x], to=_onnx_dtype(dtype_to))


def _unary(op_type: str):
    return lambda g, eqn, x: g.op(op_type, [x])


def _binary(op_type: str):
    return lambda g, eqn, x, y: g.op(op_type, [x, y])


def _identity(g, eqn, *xs):
    """No computation (copy, stop_gradient, sharding hints): the output is the input tensor."""
    return list(xs) if eqn.primitive.multiple_results else xs[0]


def _is_scalar(g: _Graph, name: str, value=None) -> bool:
    c = g.values.get(name)
    return c is not None and c.ndim == 0 and (value is None or float(c) == value)


def _scalar(g: _Graph, value, dtype) -> str:
    return g.const(np.asarray(value, dtype=dtype), hint="literal")


# --- elementwise -----------------------------------------------------------------------------


def _rsqrt(g, eqn, x):
    """1/sqrt(x): ONNX has no Rsqrt."""
    return g.op("Reciprocal", [g.op("Sqrt", [x])])


def _square(g, eqn, x):
    return g.op("Mul", [x, x])


def _integer_pow(g, eqn, x):
    """x**y for a constant integer y: x*x for squares (as jnp writes them), else Pow."""
    y = int(eqn.params["y"])
    if y == 1:
        return x
    if y == 2:
        return g.op("Mul", [x, x])
    return g.op("Pow", [x, _scalar(g, y, _out(eqn).dtype)])


def _erfc(g, eqn, x):
    """1 - erf(x): ONNX has no Erfc (jax.nn.gelu writes exact GELU with erfc)."""
    return g.op("Sub", [_scalar(g, 1, _out(eqn).dtype), g.op("Erf", [x])])


def _log1p(g, eqn, x):
    return g.op("Log", [g.op("Add", [x, _scalar(g, 1, _out(eqn).dtype)])])


def _expm1(g, eqn, x):
    return g.op("Sub", [g.op("Exp", [x]), _scalar(g, 1, _out(eqn).dtype)])


def _unit(g, eqn, x: int, c: str, unit: float) -> bool:
    """Whether operand x passes through: c is a constant of `unit`s, not a parameter (a zero bias
    stays), that does not broadcast x (RMSNorm's x - 0 with a folded zeros(): non-scalar, the
    canonicaliser would keep it as a per-channel affine)."""
    return (c in g.values and c not in g.params and _shape(eqn, x) == tuple(_out(eqn).shape)
            and bool(np.all(g.values[c] == unit)))


def _add(g, eqn, x, y):
    """x + 0 is x. The bias of a dense layer with several output dims (nnx.LinearGeneral, as in
    MultiHeadAttention) is added before the reshape that splits the MatMul's output, where the
    canonicaliser folds it into the `linear` (as a torch Linear and view)."""
    for k, (a, c) in enumerate(((x, y), (y, x))):
        if _unit(g, eqn, k, c, 0.0):
            return a
        if a in g.split and c in g.values:
            matmul, shape = g.split[a]
            out, bias = tuple(_out(eqn).shape), g.values[c]
            split = len(out) - len(shape) + 1  # output dims the MatMul's last dim became
            padded = (1,) * (len(out) - bias.ndim) + bias.shape
            if bias.ndim <= len(out) and set(padded[:-split]) <= {1} and padded[-split:] == out[-split:]:
                added = g.op("Add", [matmul, g.const(bias.reshape(-1), of=[c])])
                return _reshape(g, added, shape, out)
    return g.op("Add", [x, y])


def _mul(g, eqn, x, y):
    for k, (a, c) in enumerate(((x, y), (y, x))):
        if _unit(g, eqn, k, c, 1.0):
            return a
    return g.op("Mul", [x, y])


def _sub(g, eqn, x, y):
    """x - c with a constant float c is written x + (-c): a per-channel Add (a BatchNorm's mean)
    is what the canonicaliser folds into the conv or linear before it."""
    if _unit(g, eqn, 0, y, 0.0):
        return x
    if y in g.values and np.dtype(_out(eqn).dtype).kind == "f":
        return g.op("Add", [x, g.const(-g.values[y], hint="negated", of=[y])])
    return g.op("Sub", [x, y])


def _max(g, eqn, x, y):
    """max(x, 0) is Relu (jax.nn.relu's spelling); a lone Max would stay a `max` node."""
    for a, b in ((x, y), (y, x)):
        if b in g.values and g.values[b].ndim == 0 and float(g.values[b]) == 0.0:
            return g.op("Relu", [a])
    return g.op("Max", [x, y])


def _ne(g, eqn, x, y):
    return g.op("Not", [g.op("Equal", [x, y])])


def _rem(g, eqn, x, y):
    """lax.rem takes the dividend's sign (C fmod), which is ONNX Mod with fmod=1."""
    return g.op("Mod", [x, y], fmod=1)


def _logical(op_type: str):
    def rule(g, eqn, *xs):
        if np.dtype(_out(eqn).dtype) != np.bool_:
            raise UnsupportedModelError(f"'{eqn.primitive.name}' on integers (bitwise ops need opset 18)")
        return g.op(op_type, list(xs))
    return rule


def _div(g, eqn, x, y):
    """x / y; a sum divided by the count it summed is written as the mean it is (jnp.mean and
    avg_pool are traced as sum / n; ReduceMean and AveragePool are how torch and tf2onnx export
    them, and what the canonicaliser recognises as global and windowed average pooling)."""
    if _unit(g, eqn, 0, y, 1.0):
        return x
    divisor = g.values.get(y)
    if x in g.sums and divisor is not None and divisor.size == 1 and np.dtype(_out(eqn).dtype).kind == "f":
        count, mean = g.sums[x]
        if float(divisor.reshape(())) == count:
            return mean()
    return g.op("Div", [x, y])


def _clamp(g, eqn, lo, x, hi):
    """lax.clamp(lo, x, hi); Min/Max rather than Clip, whose bounds must be scalars."""
    return g.op("Min", [g.op("Max", [x, lo]), hi])


def _convert_element_type(g, eqn, x):
    return _cast(g, x, eqn.invars[0].aval.dtype, eqn.params["new_dtype"])


def _select_n(g, eqn, which, *cases):
    """select_n(p, false_case, true_case) is Where(p, true_case, false_case)."""
    if len(cases) == 1:
        return cases[0]
    if len(cases) != 2:
        raise UnsupportedModelError(f"select_n with {len(cases)} cases (ONNX Where picks one of two)")
    which = _cast(g, which, eqn.invars[0].aval.dtype, np.bool_)
    out = g.op("Where", [which, cases[1], cases[0]])
    less, added, raw = g.producer.get(which), g.producer.get(cases[1]), cases[0]
    if (less is not None and added is not None and less.op_type == "Less" and less.input[0] == raw
            and _is_scalar(g, less.input[1], 0) and added.op_type == "Add" and added.input[0] == raw
            and _is_scalar(g, added.input[1])):
        n = int(g.values[added.input[1]])  # where(i < 0, i + n, i)
        size, unwrapped = g.indices.get(raw, (None, None))
        g.indices[out] = (n, unwrapped if unwrapped is not None and size in (None, n) else lambda: raw)
    return out


def _iota(g, eqn):
    """A constant: an index ramp (attention masks, positions)."""
    shape, dim = tuple(eqn.params["shape"]), int(eqn.params["dimension"])
    ramp = np.arange(shape[dim], dtype=eqn.params["dtype"])
    ramp = ramp.reshape([-1 if d == dim else 1 for d in range(len(shape))])
    return g.const(np.broadcast_to(ramp, shape), hint="iota")


# --- reductions ------------------------------------------------------------------------------


def _reduce(op_type: str):
    """ReduceSum takes axes as an input in opset 17, ReduceMax/Min/Prod as an attribute."""
    def rule(g, eqn, x):
        axes = [int(a) for a in eqn.params["axes"]]
        if not axes:
            return x

        def reduce(keepdims: int) -> str:
            if op_type != "ReduceSum":
                return g.op(op_type, [x], axes=axes, keepdims=keepdims)
            out = g.op(op_type, [x, g.ints(axes)], keepdims=keepdims)
            g.sums[out] = (float(math.prod(_shape(eqn)[a] for a in axes)),
                           _once(lambda: g.op("ReduceMean", [x], axes=axes, keepdims=keepdims)))
            return out

        out = reduce(0)
        g.kept[out] = (tuple(1 if a in axes else d for a, d in enumerate(_shape(eqn))), _once(lambda: reduce(1)))
        return out
    return rule


def _arg(op_type: str):
    def rule(g, eqn, x):
        (axis,) = eqn.params["axes"]
        return _cast(g, g.op(op_type, [x], axis=int(axis), keepdims=0), np.int64, eqn.params["index_dtype"])
    return rule


def _cumsum(g, eqn, x):
    return g.op("CumSum", [x, _scalar(g, eqn.params["axis"], np.int64)], reverse=int(eqn.params["reverse"]))


# --- layout ----------------------------------------------------------------------------------


def _reshape_rule(g, eqn, x, *dynamic):
    if eqn.params.get("dimensions") is not None or dynamic:
        raise UnsupportedModelError("reshape with dimensions or dynamic sizes")
    if x in g.kept and g.kept[x][0] == tuple(eqn.params["new_sizes"]):
        return g.kept[x][1]()
    return _reshape(g, x, _shape(eqn), eqn.params["new_sizes"])


def _transpose_rule(g, eqn, x):
    return _transpose(g, x, eqn.params["permutation"])


def _broadcast_in_dim(g, eqn, x, *dynamic):
    """Operand dims go to broadcast_dimensions: Reshape to the output's rank with 1s elsewhere,
    then Expand (each step only where it changes the shape)."""
    if dynamic:
        raise UnsupportedModelError("broadcast_in_dim with dynamic sizes")
    shape, dims, source = tuple(eqn.params["shape"]), eqn.params["broadcast_dimensions"], _shape(eqn)
    target = [1] * len(shape)
    for i, d in enumerate(dims):
        target[d] = source[i]
    if x in g.kept and g.kept[x][0] == tuple(target):
        y = g.kept[x][1]()
    else:
        y = _reshape(g, x, source, target)
    return y if tuple(target) == shape else g.op("Expand", [y, g.ints(shape)])


def _squeeze(g, eqn, x):
    axes = [int(a) for a in eqn.params["dimensions"]]
    return g.op("Squeeze", [x, g.ints(axes)]) if axes else x


def _expand_dims(g, eqn, x):
    """lax.expand_dims is traced as broadcast_in_dim or reshape; this serves jaxprs that name it."""
    return g.op("Unsqueeze", [x, g.ints(eqn.params["dimensions"])])


def _concatenate(g, eqn, *xs):
    return g.op("Concat", list(xs), axis=int(eqn.params["dimension"]))


def _split(g, eqn, x):
    sizes = [int(s) for s in eqn.params["sizes"]]
    outs = g.op("Split", [x, g.ints(sizes)], n_out=len(sizes), axis=int(eqn.params["axis"]))
    return [outs] if len(sizes) == 1 else outs


def _slice(g, eqn, x):
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params["strides"] or (1,) * len(starts)
    return g.op("Slice", [x, g.ints(starts), g.ints(limits), g.ints(range(len(starts))), g.ints(strides)])


def _dynamic_slice(g, eqn, x, *starts):
    """Constant starts only (folded index arithmetic included), clamped as lax.dynamic_slice
    clamps them: the window always lies inside the operand."""
    sizes, shape = eqn.params["slice_sizes"], _shape(eqn)
    if any(s not in g.values for s in starts):
        raise UnsupportedModelError("dynamic_slice with start indices computed from the inputs")
    begin = [min(max(int(g.values[s]), 0), dim - size) for s, dim, size in zip(starts, shape, sizes)]
    end = [b + size for b, size in zip(begin, sizes)]
    return g.op("Slice", [x, g.ints(begin), g.ints(end), g.ints(range(len(begin)))])


def _gather(g, eqn, operand, indices):
    """Indexing along one axis (embedding lookups: jnp.take, x[ids]) is ONNX Gather, then a
    Transpose where JAX places the index dims elsewhere. Other gathers are not translated."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    shape, index_shape = _shape(eqn, 0), _shape(eqn, 1)
    axis = dn.start_index_map[0] if len(dn.start_index_map) == 1 else None
    if (axis is None or tuple(dn.collapsed_slice_dims) != (axis,) or dn.operand_batching_dims
            or not index_shape or index_shape[-1] != 1
            or any(sizes[d] != (1 if d == axis else shape[d]) for d in range(len(shape)))):
        raise UnsupportedModelError(f"gather other than indexing along one axis ({dn})")
    if indices in g.indices and g.indices[indices][0] in (None, shape[axis]):
        indices = g.indices[indices][1]()  # int64 ids as given; negatives wrapped by Gather itself
    idx = g.op("Squeeze", [indices, g.ints([len(index_shape) - 1])])
    y = g.op("Gather", [operand, idx], axis=int(axis))
    batch = len(index_shape) - 1
    onnx_dims = ([("o", d) for d in range(axis)] + [("b", d) for d in range(batch)]
                 + [("o", d) for d in range(axis, len(shape) - 1)])
    offset, jax_dims, b = tuple(dn.offset_dims), [], 0
    for p in range(len(onnx_dims)):
        if p in offset:
            jax_dims.append(("o", offset.index(p)))
        else:
            jax_dims.append(("b", b))
            b += 1
    return _transpose(g, y, [onnx_dims.index(d) for d in jax_dims])


def _pad(g, eqn, x, value):
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config) or any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise UnsupportedModelError("pad with interior or negative padding")
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    return g.op("Pad", [x, g.ints(pads), value], mode="constant")


# --- linear algebra, convolution, pooling ----------------------------------------------------


def _dot_general(g, eqn, lhs, rhs):
    """dot_general as MatMul: operands transposed to [batch.., free, contracted] and
    [batch.., contracted, free] and flattened to one free and one contracted dim where several
    are. x[..., K] @ W[K, N] (a dense layer) is one MatMul; W[N, K] gets a Transpose."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lc, rc, lb, rb = (tuple(int(d) for d in dims) for dims in (lc, rc, lb, rb))
    ls, rs, out = _shape(eqn, 0), _shape(eqn, 1), _out(eqn)
    lhs = _cast(g, lhs, eqn.invars[0].aval.dtype, out.dtype)
    rhs = _cast(g, rhs, eqn.invars[1].aval.dtype, out.dtype)
    lf = [d for d in range(len(ls)) if d not in lc + lb]
    rf = [d for d in range(len(rs)) if d not in rc + rb]
    batch = [ls[d] for d in lb]
    m, k, n = (math.prod(s[d] for d in dims) for s, dims in ((ls, lf), (ls, lc), (rs, rf)))
    b = _transpose(g, rhs, list(rb) + list(rc) + rf)
    b = _reshape(g, b, [rs[d] for d in list(rb) + list(rc) + rf], batch + [k, n])
    if not lb and lc == (len(ls) - 1,):  # MatMul broadcasts over the lhs's leading free dims
        y, y_shape = g.op("MatMul", [lhs, b]), [ls[d] for d in lf] + [n]
    else:
        a = _transpose(g, lhs, list(lb) + lf + list(lc))
        a = _reshape(g, a, [ls[d] for d in list(lb) + lf + list(lc)], batch + [m, k])
        y, y_shape = g.op("MatMul", [a, b]), batch + [m, n]
    result = _reshape(g, y, y_shape, out.shape)
    if result != y and tuple(out.shape[:len(y_shape) - 1]) == tuple(y_shape[:-1]):
        g.split[result] = (y, y_shape)  # only the last dim is split: a bias can go before it
    return result


def _conv(g, eqn, x, w):
    """conv_general_dilated as Conv in NCHW / OIHW: Transposes in (NHWC, HWIO as Flax writes)
    and out, which the canonicaliser cancels as it does tf2onnx's."""
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise UnsupportedModelError("conv_general_dilated with lhs_dilation or batch_group_count "
                                    "(transposed or grouped-batch convolution)")
    if any(lo < 0 or hi < 0 for lo, hi in p["padding"]):
        raise UnsupportedModelError("conv_general_dilated with negative padding")
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    kernel = [_shape(eqn, 1)[d] for d in rhs_spec[2:]]
    x = _cast(g, x, eqn.invars[0].aval.dtype, _out(eqn).dtype)
    w = _cast(g, w, eqn.invars[1].aval.dtype, _out(eqn).dtype)
    y = g.op("Conv", [_transpose(g, x, lhs_spec), _transpose(g, w, rhs_spec)], kernel_shape=kernel,
             strides=list(p["window_strides"]), dilations=list(p["rhs_dilation"]),
             pads=[lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]],
             group=int(p["feature_group_count"]))
    inverse = [0] * len(out_spec)
    for k, d in enumerate(out_spec):
        inverse[d] = k
    return _transpose(g, y, inverse)


def _pool_layout(eqn):
    """(permutation to N, C, spatial.., its inverse) for a window that leaves two axes alone:
    0 and the last (NHWC, as Flax pools) or 0 and 1 (NCHW)."""
    p, rank = eqn.params, len(_shape(eqn))

    def untouched(a):
        return (p["window_dimensions"][a] == 1 and p["window_strides"][a] == 1
                and tuple(p["padding"][a]) == (0, 0) and p["window_dilation"][a] == 1)

    if rank >= 3 and untouched(0) and untouched(rank - 1):
        perm = [0, rank - 1] + list(range(1, rank - 1))
    elif rank >= 3 and untouched(0) and untouched(1):
        perm = list(range(rank))
    else:
        raise UnsupportedModelError(f"{eqn.primitive.name} whose window does not leave a batch and a "
                                    "channel axis alone (no ONNX pooling op)")
    if any(d != 1 for d in p["base_dilation"]):
        raise UnsupportedModelError(f"{eqn.primitive.name} with base_dilation")
    inverse = [perm.index(a) for a in range(rank)]
    return perm, inverse


def _pool_attrs(eqn, perm):
    p = eqn.params
    spatial = perm[2:]
    return dict(kernel_shape=[p["window_dimensions"][a] for a in spatial],
                strides=[p["window_strides"][a] for a in spatial],
                pads=[p["padding"][a][0] for a in spatial] + [p["padding"][a][1] for a in spatial])


def _max_pool(g, eqn, x):
    """reduce_window_max (padding counts as -inf, as in MaxPool)."""
    perm, inverse = _pool_layout(eqn)
    dilations = [eqn.params["window_dilation"][a] for a in perm[2:]]
    y = g.op("MaxPool", [_transpose(g, x, perm)], dilations=dilations, **_pool_attrs(eqn, perm))
    return _transpose(g, y, inverse)


def _sum_pool(g, eqn, x):
    """reduce_window_sum as AveragePool (padding counted) times the window size; a division by
    that size right after (avg_pool) leaves the AveragePool alone."""
    perm, inverse = _pool_layout(eqn)
    if any(d != 1 for d in eqn.params["window_dilation"]):
        raise UnsupportedModelError("reduce_window_sum with window_dilation (AveragePool has none)")
    attrs = _pool_attrs(eqn, perm)
    count = float(math.prod(attrs["kernel_shape"]))
    mean = _transpose(g, g.op("AveragePool", [_transpose(g, x, perm)], count_include_pad=1, **attrs), inverse)
    out = g.op("Mul", [mean, _scalar(g, count, _out(eqn).dtype)])
    g.sums[out] = (count, lambda: mean)
    return out


# --- calls -----------------------------------------------------------------------------------


def _inline(g, eqn, *ins):
    """A call (jit, custom_jvp/custom_vjp rules, closed_call, remat): its jaxpr, inlined."""
    from jax.extend.core import ClosedJaxpr

    p = eqn.params
    sub = next((p[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in p), None)
    if sub is None:
        raise UnsupportedModelError(f"the call '{eqn.primitive.name}' carries no jaxpr to inline")
    jaxpr, consts = (sub.jaxpr, sub.consts) if isinstance(sub, ClosedJaxpr) else (sub, ())
    return _translate(g, jaxpr, consts, list(ins))


_ELEMENTWISE = {"add", "sub", "mul", "div", "max", "min", "pow", "rem", "neg", "abs", "sign", "floor", "ceil",
                "exp", "log", "tanh", "logistic", "erf", "erfc", "sqrt", "rsqrt", "square", "integer_pow",
                "log1p", "expm1", "sin", "cos", "clamp", "gt", "lt", "ge", "le", "eq", "ne", "not", "and",
                "or", "xor", "select_n", "convert_element_type"}

_INDEX_LAYOUT = {"broadcast_in_dim", "reshape", "convert_element_type", "squeeze"}  # carry `indices`

_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat2", "checkpoint")

TRANSLATIONS = {
    # elementwise arithmetic
    "add": _add, "sub": _sub, "mul": _mul, "div": _div,
    "max": _max, "min": _binary("Min"), "pow": _binary("Pow"), "rem": _rem,
    "neg": _unary("Neg"), "abs": _unary("Abs"), "sign": _unary("Sign"), "floor": _unary("Floor"),
    "ceil": _unary("Ceil"), "exp": _unary("Exp"), "log": _unary("Log"), "tanh": _unary("Tanh"),
    "logistic": _unary("Sigmoid"), "erf": _unary("Erf"), "erfc": _erfc, "sqrt": _unary("Sqrt"),
    "rsqrt": _rsqrt, "square": _square, "integer_pow": _integer_pow, "log1p": _log1p,
    "expm1": _expm1, "sin": _unary("Sin"), "cos": _unary("Cos"), "clamp": _clamp,
    # comparisons and logic
    "gt": _binary("Greater"), "lt": _binary("Less"), "ge": _binary("GreaterOrEqual"),
    "le": _binary("LessOrEqual"), "eq": _binary("Equal"), "ne": _ne,
    "not": _logical("Not"), "and": _logical("And"), "or": _logical("Or"), "xor": _logical("Xor"),
    "select_n": _select_n, "convert_element_type": _convert_element_type, "iota": _iota,
    # reductions
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"), "reduce_prod": _reduce("ReduceProd"),
    "argmax": _arg("ArgMax"), "argmin": _arg("ArgMin"), "cumsum": _cumsum,
    # layout and indexing
    "reshape": _reshape_rule, "transpose": _transpose_rule, "broadcast_in_dim": _broadcast_in_dim,
    "squeeze": _squeeze, "expand_dims": _expand_dims, "concatenate": _concatenate, "split": _split,
    "slice": _slice, "dynamic_slice": _dynamic_slice, "gather": _gather, "pad": _pad,
    # linear algebra, convolution, pooling
    "dot_general": _dot_general, "conv_general_dilated": _conv,
    "reduce_window_max": _max_pool, "reduce_window_sum": _sum_pool,
    # no computation
    "copy": _identity, "copy_p": _identity, "stop_gradient": _identity,
    "sharding_constraint": _identity, "optimization_barrier": _identity,
    # calls, inlined
    **{name: _inline for name in _CALLS},
}
