"""Features: a CanonicalGraph and its probe figures become one unpadded jraph.GraphsTuple.

Column layout: hnn_jax.schema. A weight is read twice for the weight part of the code: at fixed
places (projections: positions and signs drawn from a seed that depends only on the tensor's
shape, so two models of one architecture are compared at the same places), and as a set of units
(unit_sets: numbers that renumbering the model's hidden units, which leaves its function as it
was, leaves as they are).
"""

from __future__ import annotations

import functools
import hashlib
import math

import jraph
import numpy as np
import onnx

from hnn_jax import schema
from hnn_jax.converters.canonical import CanonicalGraph, CanonicalNode
from hnn_jax.converters.load import is_float, release_pages, values_at
from hnn_jax.converters.probe import ProbeResult

N_PROJ = 16       # projections per tensor (schema.NODE_WEIGHT_PROJ width)
PROJ_SAMPLES = 64  # elements summed into each projection
CHUNK = 1 << 22    # weight elements read at a time for statistics


def slog(x):
    return np.sign(x) * np.log1p(np.abs(x))


def _seed(tag: str, shape) -> int:
    return int.from_bytes(hashlib.blake2b(f"{tag}{tuple(shape)}".encode(), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=4096)
def _projection_plan(tag: str, shape: tuple[int, ...], size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_seed(tag, shape))
    return rng.integers(0, size, (N_PROJ, PROJ_SAMPLES)), rng.choice([-1.0, 1.0], (N_PROJ, PROJ_SAMPLES))


def projections(values: np.ndarray, tag: str, centre: float, scale: float | np.ndarray) -> np.ndarray:
    """N_PROJ signed sums of elements at fixed positions, less `centre`, over `scale`: one number,
    or one per row of `values` (an element of row r is divided by scale[r])."""
    out = np.zeros(N_PROJ, np.float32)
    if values.size == 0:
        return out
    positions, signs = _projection_plan(tag, tuple(values.shape), values.size)
    sample = _finite(np.asarray(values_at(values, positions), np.float32)).astype(np.float64)
    if sample.min() == sample.max():  # a constant (LayerNorm's ones, a zero bias): says nothing of
        return out                    # the instance, and is the same for every initialisation
    if np.ndim(scale):
        scale = np.asarray(scale, np.float64)[positions // (values.size // len(scale))]
    proj = ((sample - centre) * signs / (scale + 1e-12)).sum(1) / np.sqrt(PROJ_SAMPLES)
    return np.clip(proj, -8, 8).astype(np.float32)


def _finite(v: np.ndarray) -> np.ndarray:
    """Masks (-inf), overflowed activations (inf) and NaN as large finite numbers; squares of
    these stay finite in float64 (the statistics below accumulate in float64)."""
    return v if np.isfinite(v).all() else np.nan_to_num(v, nan=0.0, posinf=1e15, neginf=-1e15)


def _shape_features(shape) -> np.ndarray:
    out = np.zeros(6, np.float32)
    if shape is None:
        return out
    dims = [d for d in shape if d != 1]
    out[0] = np.log1p(float(math.prod(shape)))  # exact: np.prod wraps around for huge dims
    out[1] = len(dims)
    for i, d in enumerate(dims[:4]):
        out[2 + i] = np.log1p(d)
    return out


def _numbers(value) -> np.ndarray:
    """An attribute's finite numbers, flat; none for strings, subgraphs and absent attributes
    (an op of another domain may use any name for anything)."""
    try:
        values = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        return np.zeros(0)
    return values[np.isfinite(values)]


def _attr_features(node: CanonicalNode) -> np.ndarray:
    """Kernel size, stride, group, dilation, padding, axis, epsilon, alpha (sign-preserving logs:
    Pad may have negative pads)."""
    a = node.attrs
    out = np.zeros(8, np.float32)
    kernel = _numbers(a.get("kernel_shape"))
    if "kernel_shape" not in a and node.op in ("conv", "conv_transpose") and node.weights:
        kernel = _numbers(node.weights[0].shape[2:])
    largest = {k: max(_numbers(a.get(k)), default=1.0) for k in ("strides", "group", "dilations")}
    out[0] = slog(np.prod(kernel)) if kernel.size else 0.0
    out[1] = slog(largest["strides"])
    out[2] = slog(largest["group"])
    out[3] = slog(largest["dilations"])
    out[4] = slog(_numbers(a.get("pads")).sum())
    axis = a.get("axis")
    out[5] = slog(float(axis)) if isinstance(axis, (int, np.integer)) else 0.0
    eps = a.get("epsilon")
    out[6] = -np.log10(eps) if isinstance(eps, float) and 0 < eps < np.inf else 0.0
    alpha = a.get("alpha")
    out[7] = slog(alpha) if isinstance(alpha, float) and np.isfinite(alpha) else 0.0
    return np.nan_to_num(out, posinf=0.0, neginf=0.0)  # products and sums of huge values overflow


def _chunks(arrays: list[np.ndarray]):
    """Flat float32 pieces of at most CHUNK elements. Small arrays are joined into one piece; a
    large one is read in memory order (a transposed view is not copied), and the pages of a
    mapped weight are released after each piece, so memory stays flat however large it is."""
    if sum(a.size for a in arrays) <= CHUNK:
        flat = [np.asarray(np.ravel(a, order="K"), np.float32) for a in arrays]  # a transposed view uncopied
        yield flat[0] if len(flat) == 1 else np.concatenate(flat)
        return
    for a in arrays:
        flat = np.ravel(a, order="K")
        for start in range(0, flat.size, CHUNK):
            yield np.asarray(flat[start:start + CHUNK], np.float32)
            release_pages(a)


def _moments(arrays: list[np.ndarray]) -> tuple[int, float, float, float]:
    """Count, sum, sum of squares and sum of |x| of the arrays' values (made finite), in float64."""
    n, total, squares, absolute = 0, 0.0, 0.0, 0.0
    for chunk in _chunks(arrays):
        chunk = _finite(chunk)
        n += chunk.size
        total += chunk.sum(dtype=np.float64)
        squares += np.square(chunk, dtype=np.float64).sum()
        absolute += np.abs(chunk).sum(dtype=np.float64)
    return n, total, squares, absolute


def _row_rms(primary: np.ndarray) -> np.ndarray | None:
    """RMS of every row of a weight of 2 or more dims (an output channel of a conv or linear
    weight, [out, ...]), read in blocks of about CHUNK / 4 values in memory order with the pages
    of a mapped weight released after each; None for vectors and for views whose memory order is
    neither the rows' nor (for 2-D) their transpose's."""
    rows = primary.shape[0] if primary.ndim >= 2 else 0
    if rows < 2 or primary.size == 0:
        return None
    if primary.flags.c_contiguous:
        blocks, axis = primary.reshape(rows, -1), 1        # a block: whole rows
    elif primary.ndim == 2 and primary.flags.f_contiguous:
        blocks, axis = primary.T, 0                        # a block: whole columns
    else:
        return None
    step = max(1, (CHUNK // 4) // blocks.shape[1])
    squares = np.zeros(rows)
    for first in range(0, blocks.shape[0], step):
        part = np.square(_finite(np.asarray(blocks[first:first + step], np.float32)), dtype=np.float64).sum(axis)
        if axis:
            squares[first:first + step] = part
        else:
            squares += part
        release_pages(primary)
    return np.sqrt(squares / (primary.size // rows))


UNIT_FEATURES = N_PROJ  # schema.NODE_UNIT_PROJ width
KERNEL_TAPS = 4         # a kernel of this many taps or more is a unit of its own (the set of kernels)


@functools.lru_cache(maxsize=1024)
def _unit_patterns(length: int, salt: int, count: int) -> np.ndarray:
    """float32 [length, 3 * count]: three Gaussian directions per feature, drawn from (length, salt)."""
    rng = np.random.default_rng([length, salt, 7])
    return (rng.standard_normal((length, 3 * count)) / np.sqrt(length)).astype(np.float32)


def _third_cumulants(projected: np.ndarray, norms: np.ndarray, count: int) -> np.ndarray:
    """[units, 3 * count] projections of a set of units and the units' norms -> `count` numbers:
    sqrt(units) times the third cross-cumulant of three directions over the unit-normalised units
    (zero-norm units, a pruned kernel, say nothing). A sum over units does not depend on their
    order; a third-order one is about N(0, 1) for any symmetric initialisation (no shared part),
    and the low-rank, near-Gaussian moves of fine-tuning change second-order ones (a Gram form
    W^T W lost a 500-step fine-tune entirely) far more than third-order ones."""
    keep = norms > 0
    if keep.sum() < 3:
        return np.zeros(count)
    x = projected[keep].astype(np.float64) / norms[keep, None]
    x -= x.mean(0)
    scale = x.std(0)
    if not np.all(scale > 0):
        return np.zeros(count)
    x /= scale
    a, b, c = x[:, :count], x[:, count:2 * count], x[:, 2 * count:]
    return (a * b * c).sum(0) / np.sqrt(len(x))


def unit_sets(primary: np.ndarray, row_rms: np.ndarray, sides: str = "both") -> np.ndarray:
    """UNIT_FEATURES numbers of a weight [out, in, taps...] that renumbering its output units,
    its input units or both leaves as they are (schema.NODE_UNIT_PROJ).

    A kernel of KERNEL_TAPS or more taps (a 3x3 conv's) is read as the set of its out x in
    kernels, vectors over the taps, which no renumbering moves. A matrix (or a 1x1 conv) is read
    as the set of its rows, vectors over the columns (invariant to renumbering its outputs), or
    as the set of its columns (invariant to renumbering its inputs): `sides` says which, from
    where the matrix sits (unit_sides), or "both" (half the numbers each) where that does not
    tell. Each set gives third cumulants (_third_cumulants). Entries are divided by their row's
    rms first (a BatchNorm folded into the weight, which fine-tuning recalibrates, scales whole
    rows). Read a block of about CHUNK values at a time, in memory order, so a mapped weight is
    never held whole."""
    rows, cols = primary.shape[0], primary.shape[1]
    taps = primary.size // (rows * cols)
    scale = np.where(row_rms > 0, row_rms, 1.0).astype(np.float32)
    transposed = primary.ndim == 2 and not primary.flags.c_contiguous and primary.flags.f_contiguous
    blocks = primary.T if transposed else primary.reshape(rows, cols, taps)  # C order either way
    step = max(1, CHUNK // max(1, blocks[0].size))
    if taps >= KERNEL_TAPS:
        pattern, projected, norms = _unit_patterns(taps, 1, UNIT_FEATURES), [], []
        for first in range(0, rows, step):
            block = _finite(np.asarray(blocks[first:first + step], np.float32))
            kernels = (block / scale[first:first + step, None, None]).reshape(-1, taps)
            projected.append(kernels @ pattern)
            norms.append(np.sqrt(np.square(kernels, dtype=np.float64).sum(1)))
            release_pages(primary)
        return _third_cumulants(np.concatenate(projected), np.concatenate(norms), UNIT_FEATURES)
    width = cols * taps
    k = {"rows": UNIT_FEATURES, "cols": 0}.get(sides, UNIT_FEATURES // 2)  # features of the row set
    row_pattern, col_pattern = _unit_patterns(width, 2, k), _unit_patterns(rows, 3, UNIT_FEATURES - k)
    by_row, by_col = np.zeros((rows, 3 * k)), np.zeros((width, 3 * (UNIT_FEATURES - k)))
    row_sq, col_sq = np.zeros(rows), np.zeros(width)
    for first in range(0, blocks.shape[0], step):
        block = _finite(np.asarray(blocks[first:first + step], np.float32))
        part = slice(first, first + block.shape[0])
        if transposed:  # block: whole columns [b, rows] of the [rows, cols] weight
            block = block / scale[None, :]
            by_row += block.T @ row_pattern[part]
            row_sq += np.square(block, dtype=np.float64).sum(0)
            by_col[part] = block @ col_pattern
            col_sq[part] = np.square(block, dtype=np.float64).sum(1)
        else:           # block: whole rows
            block = block.reshape(block.shape[0], width) / scale[part, None]
            by_row[part] = block @ row_pattern
            row_sq[part] = np.square(block, dtype=np.float64).sum(1)
            by_col += block.T @ col_pattern[part]
            col_sq += np.square(block, dtype=np.float64).sum(0)
        release_pages(primary)
    return np.concatenate([_third_cumulants(by_row, np.sqrt(row_sq), k) if k else np.zeros(0),
                           _third_cumulants(by_col, np.sqrt(col_sq), UNIT_FEATURES - k)
                           if k < UNIT_FEATURES else np.zeros(0)])


# Where a model's residual stream (or its input, or its output) is: units no renumbering of
# hidden units moves. A matrix reading it and writing hidden units (a transformer's query, key,
# value and FFN-in projections) is renumbered on its output side only; one reading hidden units
# and writing it (the attention output and FFN-out projections, a classifier's head) on its input
# side only. Reshapes and transposes between carry the same units.
_STREAM_SOURCES = {"input", "layer_norm", "rms_norm", "add", "embedding", "gather", "concat"}
_STREAM_SINKS = {"add", "layer_norm", "rms_norm"}
_CARRIERS = {"reshape", "transpose", "cast"}


def _neighbours(graph: CanonicalGraph) -> tuple[list[list[int]], list[list[int]]]:
    """(senders, receivers) of every node, in edge order."""
    senders: list[list[int]] = [[] for _ in graph.nodes]
    receivers: list[list[int]] = [[] for _ in graph.nodes]
    for e in graph.edges:
        senders[e.receiver].append(e.sender)
        receivers[e.sender].append(e.receiver)
    return senders, receivers


def unit_sides(graph: CanonicalGraph, receivers: list[list[int]]) -> list[str]:
    """Per node: which set unit_sets reads of its weight matrix. "rows" where its input is the
    stream and its output is not, "cols" where its output is the stream (or the model's output)
    and its input is not, else "both". `receivers`: _neighbours' second list."""
    first_input = {e.receiver: e.sender for e in graph.edges if e.slot == 0}

    def reads_stream(i: int) -> bool:
        source = first_input.get(i)
        while source is not None and graph.nodes[source].op in _CARRIERS:
            source = first_input.get(source)
        return source is None or graph.nodes[source].op in _STREAM_SOURCES

    def writes_stream(i: int) -> bool:
        frontier, seen = list(receivers[i]), set()
        if not frontier:
            return True  # the model's output
        while frontier:
            j = frontier.pop()
            if j in seen:
                continue
            seen.add(j)
            if graph.nodes[j].op in _STREAM_SINKS:
                return True
            if graph.nodes[j].op in _CARRIERS:
                if not receivers[j]:
                    return True  # carried to the model's output
                frontier += receivers[j]
        return False

    sides = []
    for i, node in enumerate(graph.nodes):
        if not node.weights:
            sides.append("both")
            continue
        stream_in, stream_out = reads_stream(i), writes_stream(i)
        sides.append("rows" if stream_in and not stream_out else "cols" if stream_out and not stream_in else "both")
    return sides


def _weight_features(weights: list[np.ndarray], sides: str = "both") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stats = np.zeros(8, np.float32)
    floats = [v for v in weights if np.issubdtype(v.dtype, np.number) or is_float(v)]
    if not floats:
        return stats, np.zeros(N_PROJ, np.float32), np.zeros(UNIT_FEATURES, np.float32)
    primary = max(floats, key=lambda v: v.size)
    n, total, squares, absolute = _moments([primary])
    rms = np.sqrt(squares / n) if n else 0.0
    stats[0] = np.log1p(sum(v.size for v in floats))
    stats[1] = len(floats)
    stats[2] = np.log1p(primary.size)
    if n:
        stats[3:6] = slog(rms), slog(total / n), slog(absolute / n)
    rest = [v for v in floats if v is not primary]
    stats[6] = float(bool(rest))
    if rest:
        n_rest, _, squares_rest, _ = _moments(rest)
        stats[7] = slog(np.sqrt(squares_rest / n_rest)) if n_rest else 0.0
    # Per output channel: a BatchNorm folded into the weight (recalibrated by fine-tuning) scales
    # whole channels, which must not move the fingerprint.
    row_rms = _row_rms(primary)
    weight_proj = projections(primary, "weight", 0.0, rms if row_rms is None else row_rms)
    unit_proj = np.zeros(UNIT_FEATURES, np.float32)
    if row_rms is not None and weight_proj.any():  # a matrix or kernel that is not constant
        unit_proj = np.clip(unit_sets(primary, row_rms, sides), -8, 8).astype(np.float32)
    release_pages(primary)
    return stats, weight_proj, unit_proj


def _activation_features(value: np.ndarray | None) -> np.ndarray:
    """Mean, std, min, max and share of positives, read a chunk at a time: a float64 copy of a
    1 GB activation (what std() made) would be 2 GB more."""
    stats = np.zeros(6, np.float32)
    if value is None or value.size == 0 or not (np.issubdtype(value.dtype, np.number) or is_float(value)):
        return stats
    lo, hi, positive = np.inf, -np.inf, 0
    n, total, squares = 0, 0.0, 0.0  # as _moments sums them, in one pass with the extremes
    for chunk in _chunks([value]):
        chunk = _finite(chunk)
        lo, hi, positive = min(lo, chunk.min()), max(hi, chunk.max()), positive + np.count_nonzero(chunk > 0)
        n += chunk.size
        total += chunk.sum(dtype=np.float64)
        squares += np.square(chunk, dtype=np.float64).sum()
    mean = total / n
    std = np.sqrt(max(squares / n - mean * mean, 0.0))
    stats[:5] = [slog(mean), slog(std), slog(lo), slog(hi), positive / n]
    stats[5] = 1.0
    return stats


def _dtype_kind(elem_type: int) -> float:
    if elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                     onnx.TensorProto.BFLOAT16):
        return 1.0
    if elem_type == onnx.TensorProto.BOOL:
        return 3.0
    return 2.0 if elem_type else 0.0


def _constant_valued(graph: CanonicalGraph, senders: list[list[int]]) -> list[bool]:
    """Per node: whether its output is a constant (no model input reaches it), like BERT's
    token-type embedding read at the indices of a zero buffer. onnxsim, onnxslim and
    onnxruntime fold such nodes into a constant, and their weights with them, so their weight
    projections are left at 0 (the weight part, hnn_jax.weightcode, then reads the same
    tensors in the file as written and as folded: it moved 29 of 208 bits). `senders`:
    _neighbours' first list."""
    constant: list[bool] = []
    for i, node in enumerate(graph.nodes):  # canonical order is topological: senders come first
        constant.append(node.op != "input" and all(constant[s] for s in senders[i]))
    return constant


def to_graphs_tuple(graph: CanonicalGraph, probe: ProbeResult) -> jraph.GraphsTuple:
    n = len(graph.nodes)
    nodes = np.zeros((n, schema.NODE_WIDTH), np.float32)
    senders, receivers = _neighbours(graph)
    total_params = 0
    folded = _constant_valued(graph, senders)
    sides = unit_sides(graph, receivers)
    for i, node in enumerate(graph.nodes):
        row = nodes[i]
        row[schema.NODE_OP] = schema.OP_INDEX.get(node.op, 0)
        row[schema.NODE_SHAPE] = _shape_features(node.shape)
        row[schema.NODE_DEGREE] = (len(senders[i]), len(receivers[i]), node.n_outputs)
        row[schema.NODE_ATTRS] = _attr_features(node)
        w_stats, w_proj, unit_proj = _weight_features(node.weights, sides[i])
        row[schema.NODE_WEIGHT_STATS] = w_stats
        row[schema.NODE_WEIGHT_PROJ] = 0.0 if folded[i] else w_proj
        row[schema.NODE_UNIT_PROJ] = 0.0 if folded[i] else unit_proj
        total_params += sum(int(np.asarray(v).size) for v in node.weights)
        value = probe.values.get(node.tensor)
        if value is not None and node.probe_offset:
            value = value + np.asarray(node.probe_offset, value.dtype)
        if (value is not None and node.shape is not None and value.shape != node.shape
                and [d for d in value.shape if d != 1] == [d for d in node.shape if d != 1]):
            value = value.reshape(node.shape)  # unit dims dropped by canonical.linear_heads
        row[schema.NODE_ACT_STATS] = _activation_features(value)
    edges = np.zeros((len(graph.edges), schema.EDGE_WIDTH), np.float32)
    for k, e in enumerate(graph.edges):
        shape = e.shape
        edges[k, 0] = np.log1p(float(math.prod(shape))) if shape else 0.0
        edges[k, 1] = len([d for d in shape if d != 1]) if shape else 0.0
        edges[k, 2] = np.log1p(shape[-1]) if shape else 0.0
        edges[k, 3] = e.slot
        edges[k, 4] = e.sender_slot
        edges[k, 5] = _dtype_kind(e.elem_type)
        edges[k, 6] = float(edges[k, 5] == 1.0)
    globals_ = np.zeros((1, schema.GLOBAL_WIDTH), np.float32)
    globals_[0, schema.GLOBAL_SCHEMA] = schema.SCHEMA_VERSION
    globals_[0, schema.GLOBAL_PROBE] = probe.status
    globals_[0, 2:7] = (np.log1p(n), np.log1p(len(graph.edges)), np.log1p(total_params),
                        graph.n_inputs, graph.n_outputs)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges,
        senders=np.array([e.sender for e in graph.edges], np.int32),
        receivers=np.array([e.receiver for e in graph.edges], np.int32),
        n_node=np.array([n], np.int32), n_edge=np.array([len(graph.edges)], np.int32),
        globals=globals_)
