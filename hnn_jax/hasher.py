"""Turning graphs into HashCodes: validation, bucketed batching, one jit compile per bucket."""

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence

import jax
import jraph
import numpy as np
from flax import nnx

from hnn_jax import checkpoint, schema, weightcode
from hnn_jax.config import ALLOWED_BITS, HasherConfig
from hnn_jax.errors import HNNError, InvalidArgumentError, ModelTooLargeError, SchemaMismatchError
from hnn_jax.hashcode import SHIPPED_META, Bands, HashCode
from hnn_jax.model import HashNet
from hnn_jax.padding import MAX_EDGES, MAX_NODES, pad_batch

log = logging.getLogger(__name__)

# XLA:CPU hands some fused reductions (LayerNorm) to YNNPACK, which picks a summation order by
# array size, so one graph could get other bits in another padding bucket. Keeping only dot
# fusions (row-wise, size independent and the fast part) makes codes exact across buckets.
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def _compiler_options() -> dict | None:
    """The CPU options above when this XLA accepts them, else None (other XLA builds)."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS)(np.zeros(1, np.float32))
    except (jax.errors.JaxRuntimeError, ValueError):
        return None
    return _CPU_COMPILER_OPTIONS


CODE_LAYOUT = 2  # 2: architecture part + exact integer weight part (hnn_jax.weightcode), relations by part


def fingerprint(config: HasherConfig, params: dict) -> str:
    """Code version: schema version, code layout, and a digest of config, weights and the
    converter revision (schema.CONVERTER_REVISION)."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(f"layout {CODE_LAYOUT}".encode())
    if schema.CONVERTER_REVISION > 1:  # revision 1 is the digest code v2 was first released with
        digest.update(f"converter revision {schema.CONVERTER_REVISION}".encode())
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for key, leaf in sorted((checkpoint.path_key(p), np.asarray(leaf)) for p, leaf in flat):
        digest.update(f"{key}:{leaf.dtype}:{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return f"s{schema.SCHEMA_VERSION}c{CODE_LAYOUT}-{digest.hexdigest()[:12]}"


def validate_graph(graph, where: str = "graph") -> jraph.GraphsTuple:
    """Check one input graph against the feature schema; return it as float32/int32 numpy.

    Schema differences (version, feature widths) raise SchemaMismatchError listing all of them;
    anything else malformed raises InvalidArgumentError (an HNNError and a ValueError).
    """
    if not isinstance(graph, jraph.GraphsTuple):
        raise InvalidArgumentError(f"{where}: expected a jraph.GraphsTuple, got {type(graph).__name__}")
    missing = [f for f in graph._fields if getattr(graph, f) is None]
    if missing:
        raise InvalidArgumentError(f"{where}: fields {missing} are None")
    g = jraph.GraphsTuple(*(np.asarray(x) for x in graph))
    if g.n_node.shape != (1,) or g.n_edge.shape != (1,):
        raise InvalidArgumentError(f"{where}: expected exactly one graph, got n_node={g.n_node.tolist()}")

    problems = []
    for name, arr, width in (("node", g.nodes, schema.NODE_WIDTH),
                             ("edge", g.edges, schema.EDGE_WIDTH),
                             ("global", g.globals, schema.GLOBAL_WIDTH)):
        if arr.ndim != 2 or arr.shape[-1] != width:
            problems.append(f"{name} features have shape {arr.shape}, expected width {width}")
    if g.globals.ndim == 2 and g.globals.shape[0] == 1 and g.globals.shape[1] > 0:
        version = g.globals[0, schema.GLOBAL_SCHEMA]
        if version != schema.SCHEMA_VERSION:
            problems.append(f"schema version {version:g}, expected {schema.SCHEMA_VERSION}")
    if problems:
        raise SchemaMismatchError(f"{where} does not match feature schema version "
                                  f"{schema.SCHEMA_VERSION}: " + "; ".join(problems))

    n, e = int(g.n_node[0]), int(g.n_edge[0])
    if n + 1 > MAX_NODES or e > MAX_EDGES:
        raise ModelTooLargeError(f"{where} has {n} nodes and {e} edges; the largest padding bucket holds "
                                 f"{MAX_NODES - 1} nodes and {MAX_EDGES} edges. Hash a part of the model "
                                 "(e.g. export one block) instead")
    if n < 1 or g.nodes.shape[0] != n or g.globals.shape[0] != 1:
        raise InvalidArgumentError(f"{where}: n_node={n} but {g.nodes.shape[0]} node rows (need >= 1)")
    if not (g.edges.shape[0] == e == g.senders.shape[0] == g.receivers.shape[0]):
        raise InvalidArgumentError(f"{where}: n_edge={e} disagrees with edges/senders/receivers lengths")
    for name, idx in (("senders", g.senders), ("receivers", g.receivers)):
        if (idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer)
                or (e and (idx.min() < 0 or idx.max() >= n))):
            raise InvalidArgumentError(f"{where}: {name} must be node indices in [0, {n})")
    for name, arr in (("node", g.nodes), ("edge", g.edges), ("global", g.globals)):
        if not np.all(np.isfinite(arr)):
            raise InvalidArgumentError(f"{where}: {name} features contain NaN or inf")
    ops = g.nodes[:, schema.NODE_OP]
    if np.any(ops != np.round(ops)) or ops.min() < 0 or ops.max() >= schema.VOCAB_SIZE:
        raise InvalidArgumentError(f"{where}: op ids must be integers in [0, {schema.VOCAB_SIZE})")
    return jraph.GraphsTuple(
        nodes=g.nodes.astype(np.float32, copy=False), edges=g.edges.astype(np.float32, copy=False),
        globals=g.globals.astype(np.float32, copy=False),
        senders=g.senders.astype(np.int32, copy=False),
        receivers=g.receivers.astype(np.int32, copy=False),
        n_node=g.n_node.astype(np.int32, copy=False), n_edge=g.n_edge.astype(np.int32, copy=False))


def _pack(graphs: Sequence[jraph.GraphsTuple], node_budget: int, edge_budget: int,
          max_graphs: int) -> Iterator[list[jraph.GraphsTuple]]:
    """Consecutive chunks of at most max_graphs graphs that fit the node/edge budgets
    (with the padding node), so packed chunks fill one bucket and the jit cache stays small.
    A graph larger than the budgets gets a chunk (and a power-of-two bucket) of its own."""
    chunk, nodes, edges = [], 1, 0
    for g in graphs:
        n, e = int(g.n_node[0]), int(g.n_edge[0])
        if chunk and (len(chunk) == max_graphs or nodes + n > node_budget
                      or edges + e > edge_budget):
            yield chunk
            chunk, nodes, edges = [], 1, 0
        chunk.append(g)
        nodes, edges = nodes + n, edges + e
    if chunk:
        yield chunk


class Hasher:
    """A hashing network with its weights, turning graphs into HashCodes.

    Graphs are packed into chunks of at most `max_graphs` graphs and about `node_budget` nodes /
    `edge_budget` edges, padded to power-of-two buckets with n_graph = max_graphs + 1, and run
    through one jit-compiled function; each bucket compiles once. A graph's code does not depend
    on the chunk or bucket it lands in. `trace_count` counts compilations (for tests).

    The default budgets are 4,096 nodes / 8,192 edges for one network and half that for several
    members (HasherConfig.members), whose activations per chunk are that many times larger: on a
    2-core CPU three members hash ~1.6x faster by 2,048-node chunks than by 4,096-node ones.
    """

    def __init__(self, model: HashNet, *, node_budget: int | None = None,
                 edge_budget: int | None = None, max_graphs: int = 64):
        self.config: HasherConfig = model.config
        self._graphdef, self._state = nnx.split(nnx.clone(model))  # later edits to model: no effect
        self.version = fingerprint(self.config, nnx.to_pure_dict(self._state))
        self.relations: Bands | None = None  # measured relation bands (hnn-jax eval, bench_null)
        share = 1 if self.config.members == 1 else 2
        self.node_budget = node_budget or 4096 // share
        self.edge_budget = edge_budget or 8192 // share
        self.max_graphs = max_graphs
        self.trace_count = 0
        self._forward = jax.jit(self._forward_fn, compiler_options=_compiler_options())

    def _forward_fn(self, state, graph):
        self.trace_count += 1  # runs only while tracing, i.e. once per compiled bucket
        return nnx.merge(self._graphdef, state)(graph)

    @property
    def lengths(self) -> tuple[int, ...]:
        """The code lengths this hasher makes: its trained length and, with a weight part, every
        longer length of config.ALLOWED_BITS (the same architecture part, a longer weight part;
        each weight part is the prefix of the longer ones)."""
        if not self.config.instance_bits:
            return (self.config.bits,)
        return tuple(b for b in ALLOWED_BITS if b >= self.config.bits)

    def _instance_bits(self, bits: int | None) -> int:
        if bits is None or bits == self.config.bits:
            return self.config.instance_bits
        if bits not in self.lengths:
            why = ("it has no weight part to extend" if not self.config.instance_bits
                   else f"lengths are {', '.join(map(str, self.lengths))}")
            raise InvalidArgumentError(f"this hasher cannot make {bits}-bit codes: {why}")
        return bits - self.config.learned_bits

    @property
    def model(self) -> HashNet:
        """A copy of the network (e.g. to fine-tune); changing it does not change this hasher."""
        return nnx.merge(self._graphdef, self._state, copy=True)

    @classmethod
    def init(cls, config: HasherConfig | None = None, seed: int = 0, **kwargs) -> "Hasher":
        """An untrained hasher: `config` (default HasherConfig()) initialised from `seed`."""
        return cls(HashNet(config or HasherConfig(), rngs=nnx.Rngs(seed)), **kwargs)

    @classmethod
    def load(cls, directory, *, bits: int | None = None, config: HasherConfig | None = None,
             **kwargs) -> "Hasher":
        """Restore a checkpoint written by save(). `bits` / `config`, when given, are what the
        caller expects; a checkpoint that differs raises SchemaMismatchError saying how."""
        meta = checkpoint.read_meta(directory)
        stored = meta["config"]
        if bits is not None and bits != stored.bits:
            raise SchemaMismatchError(f"checkpoint makes {stored.bits}-bit codes, expected {bits}")
        if config is not None and config != stored:
            expected = dataclasses.asdict(config)  # every field (to_dict leaves out a 0 instance_bits)
            diffs = [f"{k}={v!r} (expected {expected[k]!r})"
                     for k, v in dataclasses.asdict(stored).items() if expected[k] != v]
            raise SchemaMismatchError("checkpoint config differs: " + ", ".join(diffs))
        abstract = nnx.eval_shape(lambda: HashNet(stored, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        nnx.replace_by_pure_dict(state, checkpoint.restore(directory, nnx.to_pure_dict(state)))
        hasher = cls(nnx.merge(graphdef, state), **kwargs)
        if hasher.version != meta["version"]:
            raise SchemaMismatchError(
                f"restored weights have fingerprint {hasher.version}, checkpoint says "
                f"{meta['version']}: the parameter files were changed or mixed up")
        if meta["relations"] is not None:
            hasher.set_relations(meta["relations"])
        log.debug("loaded hasher %s from %s (%s bands)", hasher.version, directory,
                  "with" if hasher.relations is not None else "without")
        return hasher

    def set_relations(self, relations: "Bands | dict") -> None:
        """Relation bands (a hashcode.Bands or hasher.json's "relations"), as `hnn-jax eval` and
        benchmarks/bench_null.py measure them; the codes this hasher makes from then on carry them
        (HashCode.bands, read by relation and chance) and save() stores them."""
        self.relations = relations if isinstance(relations, Bands) else Bands.from_json(relations)

    def save(self, directory):
        """Write an orbax checkpoint of the weights plus hasher.json (config, bits, schema)."""
        return checkpoint.save(directory, self.config, nnx.to_pure_dict(self._state),
                               self.version, self.relations)

    def hash(self, graphs, *, bits: int | None = None):
        """HashCode of one jraph.GraphsTuple, or a list of them for a list of graphs.

        `bits` (default the trained length, config.bits) may be any of `lengths`: a longer code
        keeps the architecture part and extends the weight part. Codes of one hasher and length
        share a version and compare; the architecture part comes first, then the weight part.
        Batched results are identical, bit for bit, to hashing each graph alone.
        """
        if isinstance(graphs, jraph.GraphsTuple):
            return self.hash([graphs], bits=bits)[0]
        learned = self.config.learned_bits
        return [HashCode(row >= 0, self.version, learned, bands=self.relations)
                for row in self.embed(graphs, bits=bits)]

    def embed(self, graphs, *, bits: int | None = None) -> np.ndarray:
        """The continuous pre-sign values, float32 [len(graphs), bits]: the network's for the
        architecture part, the weight part's integer sums (hnn_jax.weightcode) for the rest;
        codes are their signs (0 counts as 1). Values near 0 mark bits that small model changes
        may flip."""
        instance_bits = self._instance_bits(bits)
        if isinstance(graphs, jraph.GraphsTuple):
            return self.embed([graphs], bits=bits)[0]
        if not isinstance(graphs, (list, tuple)):
            raise InvalidArgumentError(f"expected a jraph.GraphsTuple or a list of them, got {type(graphs).__name__}")
        checked = [validate_graph(g, f"graph {i}") for i, g in enumerate(graphs)]
        pending = []  # dispatch every chunk before reading any back, so host and device overlap
        for chunk in _pack(checked, self.node_budget, self.edge_budget, self.max_graphs):
            padded = pad_batch(chunk, n_graph=self.max_graphs + 1)
            pending.append((len(chunk), self._forward(self._state, padded)))
        weights = np.zeros((len(checked), 0), np.float32)  # computed on the host while the device runs
        if instance_bits:
            weights = weightcode.weight_sums(checked, instance_bits).astype(np.float32)
        if not pending:
            return np.zeros((0, self.config.learned_bits + instance_bits), np.float32)
        learned = np.concatenate([np.asarray(out)[:count] for count, out in pending])
        return np.concatenate([learned, weights], axis=1)


DEFAULT_WEIGHTS = SHIPPED_META.parent


@functools.cache
def default_hasher() -> Hasher:
    """The hasher behind hnn_jax.hash, loaded once per process: the trained network (the
    architecture part of 256-bit codes) shipped in hnn_jax/weights/default (see docs/training.md, "Training
    and evaluation")."""
    if not (DEFAULT_WEIGHTS / "hasher.json").is_file():
        raise HNNError(f"the shipped weights are missing from {DEFAULT_WEIGHTS}: reinstall hnn-jax, "
                       "or pass hasher=Hasher.load(dir)")
    return Hasher.load(DEFAULT_WEIGHTS)


def hash(graphs, *, bits: int | None = None, hasher: Hasher | None = None):  # noqa: A001 - the public name
    """HashCode(s) for a jraph.GraphsTuple or a list of them, by `hasher` or the shipped default
    (256 bits: 48 architecture bits, then a 208-bit weight part; see docs/network.md). The version
    string is on every code, so codes of other hashers are never compared silently; codes of
    other lengths refuse to compare too."""
    return (hasher or default_hasher()).hash(graphs, bits=bits)
