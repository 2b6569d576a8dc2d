"""The weight part of a code: an exact integer SimHash of the trained parameters.

A code has two parts (DESIGN.md, "The code's layout"): the architecture part, which the learned
network computes and which reads no weight value, and this one, which no network computes. It
tells independently trained or initialised models of one architecture apart and follows copies
and derivatives (fp16, int8, pruning, fine-tuning) of one model.

Input: two readings of the primary weight of each node whose op holds weight matrices or kernels
(OP_CLASSES): its 16 projections at fixed places (schema.NODE_WEIGHT_PROJ, rms-normalised per
output channel), and its 16 numbers as a set of units (schema.NODE_UNIT_PROJ,
features.unit_sets), which renumbering the model's hidden units leaves. Even bits read the
first, odd bits the second (READINGS): each half is a SimHash of its own, and the weight distance
is their sum. Fixed places follow ordinary derivatives most closely; unit sets follow a model
whose units were renumbered, where fixed places read other units. Halves measured on validation
models (seeds apart from the benchmarks'; docs/results.md): renumbered copies 5.7-7.8 null
standard deviations below the null (fixed places alone: -0.4 to 2.9), ordinary derivatives
within 0.7 of where fixed places alone put them; a third for fixed places lost more of those.

In each reading, the tensors are grouped by op class and size; within a group each of the 16
columns is sorted and its expected order statistics taken off (fingerprints), and the k-th row of
a group gets the key (group, k). Rounded to integers (1/1024 steps), bit b of the code is the sign
of the sum over rows t and columns j of q[t, j] * r(key_t, j, b), with r = +-1 drawn by hashing
(key_t, b) and the reading: a SimHash with independent hyperplanes, one per bit.

Why sorted: the canonical order interleaves a model's parallel branches (an encoder's and a
decoder's blocks) by their structure, and a tool that changes one node there (an fp16 converter's
extra Mul) reorders the tensors after it. Keyed by position, such a file's weight part moved 35-69
of 208 bits (2 of 70 fp16 files of the validation zoos); sorted, none. Sorted values move
continuously with the weights, and a tensor that a tool drops or adds changes its own group only.
The price: a long fine-tune that moves a tensor's fingerprint a lot moves its order statistics
more than its own values (docs/network.md, "Two parts in one code").

Every product is an integer and every partial sum is below 2**53, so float64 arithmetic is exact
in any summation order: the bits are the same on any machine, alone or in any batch. A longer
code keeps the shorter one's bits (column b depends on b only). Nothing here is trained.
"""

from collections.abc import Sequence

import jraph
import numpy as np

from hnn_jax import schema

SEED = 0x5EED0002
READINGS = (schema.NODE_WEIGHT_PROJ, schema.NODE_UNIT_PROJ)  # bit b reads READINGS[b % 2]
MEASURED_TENSORS = 3  # the fewest weight tensors of a model the null was measured on (bench_null's MLP)
KEYS_PER_BLOCK = 2048  # distinct tensor keys whose hyperplanes are drawn at once (16 x nbits / 2 floats each)
SCALE = 1024          # fingerprints are rounded to 1/SCALE; |projection| <= 8 (features.projections)
# Weight matrices and kernels only: the constants of elementwise and layout ops (rotary cos/sin
# tables, attention masks, scales) are the same for every initialisation. Norm scales and PReLU
# slopes are left out too: their fingerprints are not centred (features.projections
# centres weights at 0), so a vector near 1 projects to values every model of that width shares, and a
# 5-step fine-tune that moves LayerNorm's ones off their constant moved 28 of 208 bits (validation
# zoos; 3.5 for fp16). The matrices and kernels around them carry the instance.
OP_CLASSES = {"conv": ("conv", "conv_transpose"), "dense": ("linear", "matmul", "einsum", "attention"),
              "embedding": ("embedding",), "recurrent": ("lstm", "gru", "rnn")}
_OP_CLASS = np.zeros(schema.VOCAB_SIZE, np.int64)  # 0: no weight part; else 1 + the class's index
for _number, _ops in enumerate(OP_CLASSES.values(), 1):
    _OP_CLASS[[schema.OP_INDEX[o] for o in _ops]] = _number
_WIDTH = READINGS[0].stop - READINGS[0].start  # numbers per tensor in each reading
assert all(r.stop - r.start == _WIDTH for r in READINGS)
_SIZE_COLUMN = schema.NODE_WEIGHT_STATS.start + 2  # log1p of the primary weight's numel


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser on uint32 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def _planes(keys: np.ndarray, bits: np.ndarray, seed: int = SEED) -> np.ndarray:
    """float64 [len(keys) * 16, len(bits)] of +-1: row 16i + j, column c is bit j of
    fmix32(keys[i] ^ fmix32(seed + bits[c])) (a bit's plane depends on its index alone)."""
    with np.errstate(over="ignore"):
        columns = _fmix32(np.uint32(seed) + bits.astype(np.uint32))
        words = _fmix32(keys[:, None] ^ columns[None, :])                       # [keys, bits]
    signs = (words[:, None, :] >> np.arange(_WIDTH, dtype=np.uint32)[None, :, None]) & np.uint32(1)
    return signs.reshape(len(keys) * _WIDTH, len(bits)).astype(np.float64) * 2.0 - 1.0


def _expected_order_statistics(rank: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Blom's approximation of the expected rank-th (from 0) smallest of `size` standard normal
    values: what the sorted fingerprints of any model share (a fingerprint is a normalised sum of
    64 signed weights), taken off so that only the instance's part of each remains."""
    from scipy.special import ndtri

    return ndtri((rank + 1 - 0.375) / (size + 0.25))


def fingerprints(graph: jraph.GraphsTuple, columns: slice = READINGS[0]) -> tuple[np.ndarray, np.ndarray]:
    """(float64 [tensors, 16] of integers, uint32 [tensors] keys): what the part reads of each
    weight tensor in one reading (`columns`, one of READINGS), and the key that draws its
    hyperplanes.

    Tensors are grouped by op class and size; within a group each of the 16 columns is sorted and
    its expected order statistics taken off, and the k-th row of the result is keyed by (group,
    k). So the part does not depend on the order in which a file lists a group's tensors (an fp16
    or int8 tool, or another exporter, can order a decoder's projections otherwise), sorted values
    move continuously when the weights do, and a tensor that a tool drops or adds changes its own
    group only."""
    nodes = np.asarray(graph.nodes)
    ops = np.clip(np.rint(nodes[:, schema.NODE_OP]), 0, schema.VOCAB_SIZE - 1).astype(np.int64)
    classes = _OP_CLASS[ops]
    held = np.flatnonzero(classes)
    prints = nodes[held][:, columns].astype(np.float64)
    informative = np.any(prints != 0, axis=1)  # a constant tensor projects to zero: it says nothing
    held, prints = held[informative], prints[informative]
    with np.errstate(over="ignore"):
        signature = _fmix32(classes[held].astype(np.uint32) ^ _fmix32(
            np.ascontiguousarray(nodes[held, _SIZE_COLUMN], np.float32).view(np.uint32)))
    if not len(held):
        return np.zeros((0, _WIDTH)), np.zeros(0, np.uint32)
    # each column sorted within its group: rows ordered by (group, value), a group's rows contiguous
    by_group = np.argsort(signature, kind="stable")
    group = signature[by_group]
    first = np.r_[True, group[1:] != group[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(group)), 0))
    size = np.diff(np.r_[np.flatnonzero(first), len(group)])[np.cumsum(first) - 1]
    rank = np.arange(len(group)) - start
    columns = np.stack([prints[np.lexsort((prints[:, j], signature)), j] for j in range(_WIDTH)], axis=1)
    residual = columns - _expected_order_statistics(rank, size)[:, None]
    with np.errstate(over="ignore"):
        keys = _fmix32(group ^ _fmix32(rank.astype(np.uint32) + np.uint32(0x9E3779B9)))
    return np.rint(residual * SCALE), keys


def weight_sums(graphs: Sequence[jraph.GraphsTuple], nbits: int) -> np.ndarray:
    """float64 [len(graphs), nbits] of exact integers; the weight part is their signs (0 -> 1).
    Bit b reads READINGS[b % 2], each reading with its own planes."""
    out = np.zeros((len(graphs), nbits))
    for n, columns in enumerate(READINGS):
        out[:, n::len(READINGS)] = _reading_sums(graphs, np.arange(n, nbits, len(READINGS)), columns,
                                                 SEED + 0x1000 * n)
    return out


def _reading_sums(graphs: Sequence[jraph.GraphsTuple], bits: np.ndarray, columns: slice, seed: int) -> np.ndarray:
    """float64 [len(graphs), len(bits)]: the SimHash sums of one reading for the code's `bits`,
    with the planes of `seed`."""
    from scipy import sparse

    prints = [fingerprints(g, columns) for g in graphs]
    keys = np.concatenate([k for _, k in prints] + [np.zeros(0, np.uint32)])
    unique, slot = np.unique(keys, return_inverse=True)
    counts = np.array([len(k) for _, k in prints], np.int64)
    rows = np.repeat(np.arange(len(prints)), counts * _WIDTH)
    cols = (slot[:, None] * _WIDTH + np.arange(_WIDTH)[None, :]).ravel()
    values = np.concatenate([q.ravel() for q, _ in prints] + [np.zeros(0)])
    matrix = sparse.csc_matrix((values, (rows, cols)), shape=(len(prints), len(unique) * _WIDTH))
    out = np.zeros((len(prints), len(bits)))
    for low in range(0, len(unique), KEYS_PER_BLOCK):  # the hyperplanes of at most ~27 MB at a time (208 bits)
        block = matrix[:, low * _WIDTH:(low + KEYS_PER_BLOCK) * _WIDTH]
        out += np.asarray(block @ _planes(unique[low:low + KEYS_PER_BLOCK], bits, seed))
    return out


def weight_bits(graphs: Sequence[jraph.GraphsTuple], nbits: int) -> np.ndarray:
    """uint8 [len(graphs), nbits] of 0/1: the weight part of each graph's code."""
    return (weight_sums(graphs, nbits) >= 0).astype(np.uint8)


def parameter_count(graph: jraph.GraphsTuple) -> int:
    """How many weight tensors with a non-constant fingerprint the weight part reads; with fewer
    than MEASURED_TENSORS, two independent models agree on more bits than the measured null says
    (the fewer the tensors, the wider it is), so its chances are too low for them."""
    return len(fingerprints(graph)[1])


def few_tensors_warning(graph: jraph.GraphsTuple) -> str | None:
    """A quality note for models whose weight part reads fewer tensors than the null was measured
    on (PDQ's quality flag, in words), or None."""
    count = parameter_count(graph)
    if count >= MEASURED_TENSORS:
        return None
    return (f"the weight part reads {count} weight tensor{'s' if count != 1 else ''}; its same-model band and "
            f"chances were measured on models of {MEASURED_TENSORS} or more, and two independent models this "
            "small agree by chance more often")
