"""Training the hasher on a zoo: data-parallel over every device JAX sees, resumable exactly.

Each step draws a batch hierarchically (families -> architectures -> parents -> derivatives) so
every relation level of DESIGN.md appears in it; the batch is split over the devices of a 1-D
mesh ("data"), each device's share padded to a power-of-two bucket, and the loss is the paper's
classification + quantization losses plus a graded margin loss over relation levels and
bit-balance/decorrelation terms (hnn_jax.training.losses). Parameters are replicated; XLA inserts the
gradient all-reduce. The batch of step s depends only on (seed, s), so a run resumed from an
orbax checkpoint continues exactly as if it had never stopped. On a TPU pod, pass
distributed=True (CLI: --distributed) to call jax.distributed.initialize() first.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from flax import nnx

from hnn_jax.training import losses
from hnn_jax.config import HasherConfig
from hnn_jax.hasher import Hasher, validate_graph
from hnn_jax.model import HashNet, ste_sign
from hnn_jax.padding import bucket_size, pad_batch


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the zoo. Config as code: see default(), shipped() and
    tiny_cpu()."""
    hasher: HasherConfig = HasherConfig(bits=256, instance_bits=208, size_blind=True)
    steps: int = 1200
    families_per_batch: int = 8
    # Of each batch's families, how many are drawn as one of the NEIGHBOURS structurally nearest
    # families (WL-subtree SimHash) of a family already in it, so that close relatives (Llama and the
    # decoders built like it) meet in batches and the margin loss separates them; 0: all at random.
    neighbour_families: int = 0
    # Each level picks only distinct architectures, parents and derivatives (a transformers, timm
    # or keras architecture has one parent and no derivatives: by default 3 of its 4 slots are
    # repeats of one graph) and the slots left over go to more families (on in the shipped recipe).
    distinct_picks: bool = False
    archs_per_family: int = 2
    parents_per_arch: int = 2
    variants_per_parent: int = 2
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    w_class: float = 0.5
    w_quant: float = 0.1
    w_margin: float = 1.0
    w_balance: float = 0.5
    w_decor: float = 0.5
    margin: float = 3.0         # bits of distance between neighbouring relation levels
    cross_taxonomy_negatives: bool = True  # False: unequal family labels from two label sources
                                           # (timm modules vs keras modules) are no relation
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 25
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.neighbour_families < self.families_per_batch:
            raise ValueError(f"neighbour_families must be in [0, families_per_batch), got {self.neighbour_families}")

    @property
    def batch_size(self) -> int:
        return self.families_per_batch * self.archs_per_family * self.parents_per_arch * self.variants_per_parent

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hasher"] = self.hasher.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["hasher"] = HasherConfig.from_dict(d.get("hasher", {}))
        return cls(**d)


def shipped() -> TrainConfig:
    """The recipe of the shipped weights (benchmarks/results/train_config.json): one network of 48
    learned bits (the architecture part of a 256-bit code v2), 1,200 steps at batch 64 with
    distinct picks, seed 1 (seeds 0 and 1 tied on validation: docs/results.md, "Results of code v2"). One
    network, not a splice of several (HasherConfig.members); size_blind, chosen on the validation
    split in an earlier release."""
    return TrainConfig(distinct_picks=True, seed=1)


def default() -> TrainConfig:
    """The recipe to train with: the shipped one (distinct picks, which on validation data tell
    close relatives apart far better: docs/training.md, "Why unseen sizes fall short")."""
    return shipped()


def tiny_cpu() -> TrainConfig:
    """Seconds on a CPU: for tests, notebooks and checking a set-up."""
    return TrainConfig(hasher=HasherConfig(bits=32, hidden=32, layers=2, instance_bits=8), steps=12,
                       families_per_batch=2, archs_per_family=1, parents_per_arch=2,
                       variants_per_parent=2, warmup_steps=2, checkpoint_every=4, log_every=2)


# ----------------------------------------------------------------------------- data

NEIGHBOURS = 4  # candidates per family for TrainConfig.neighbour_families
LABEL_TAXONOMY = {"twins": "keras"}  # zoo sources whose family labels come from another's taxonomy


class Dataset:
    """Zoo graphs with integer labels, and the hierarchical batch sampler."""

    def __init__(self, graphs: list[jraph.GraphsTuple], rows: list[dict]):
        from hnn_jax.errors import HNNError

        kept_graphs, kept_rows, dropped = [], [], []
        for g, r in zip(graphs, rows):
            try:
                kept_graphs.append(validate_graph(g, r["id"]))
                kept_rows.append(r)
            except HNNError as e:  # e.g. a graph from an older converter with non-finite features
                dropped.append(str(e))
        if dropped:
            warnings.warn(f"{len(dropped)} zoo graphs skipped, first: {dropped[0]}", stacklevel=2)
        if not kept_graphs:
            raise ValueError("the zoo is empty: build it first (hnn-jax zoo build)")
        self.graphs, self.rows = kept_graphs, kept_rows
        rows = kept_rows
        self.families = sorted({r["family"] for r in rows})
        family_index = {f: i for i, f in enumerate(self.families)}
        self.family = np.array([family_index[r["family"]] for r in rows])
        self.tree: dict[str, dict[str, dict[str, list[int]]]] = {}
        for i, r in enumerate(rows):
            self.tree.setdefault(r["family"], {}).setdefault(r["arch"], {}).setdefault(r["parent"], []).append(i)

    def sample(self, config: TrainConfig, step: int) -> np.ndarray:
        """Indices of the batch of `step`; depends only on (config.seed, step)."""
        rng = np.random.default_rng([config.seed, step])

        def take(options, k):
            options = sorted(options)
            if config.distinct_picks:
                k = min(k, len(options))
            return [options[i] for i in rng.choice(len(options), k, replace=len(options) < k)]

        def picks(family):
            out = []
            for arch in take(self.tree[family], config.archs_per_family):
                for parent in take(self.tree[family][arch], config.parents_per_arch):
                    out += take(self.tree[family][arch][parent], config.variants_per_parent)
            return out

        families = take(self.tree, config.families_per_batch - config.neighbour_families)
        for _ in range(config.neighbour_families):
            anchor = families[rng.integers(len(families))]
            fresh = [f for f in self.neighbours[anchor] if f not in families]
            families += take(fresh or set(self.tree) - set(families) or self.tree, 1)
        picked = [i for family in families for i in picks(family)]
        if config.distinct_picks:  # slots no distinct graph filled go to more families
            others = sorted(set(self.tree) - set(families))
            while len(picked) < config.batch_size and others:
                picked += picks(others.pop(rng.integers(len(others))))
            if len(picked) < config.batch_size:  # a zoo too small to fill a batch without repeats
                picked += list(rng.choice(picked, config.batch_size - len(picked)))
        return np.array(picked[:config.batch_size])

    @functools.cached_property
    def neighbours(self) -> dict[str, list[str]]:
        """Every family's NEIGHBOURS nearest other families: least Hamming distance between
        WL-subtree SimHashes of their architectures (ties by name). Weights do not enter WL, so
        one graph per architecture stands for its parents and derivatives."""
        from hnn_jax.training.baselines import wl_subtree_hash
        from hnn_jax.training.evaluate import hamming

        first = {}
        for i, r in enumerate(self.rows):
            first.setdefault(r["arch"], i)
        arch_family = np.array([self.rows[i]["family"] for i in first.values()])
        codes = np.stack([wl_subtree_hash(self.graphs[i]) for i in first.values()])
        distance = hamming(codes, codes)
        nearest = {}
        for family in self.families:
            mine = arch_family == family
            closest = distance[mine].min(0)
            others = sorted((int(closest[j]), str(arch_family[j])) for j in np.flatnonzero(~mine))
            nearest[family] = list(dict.fromkeys(f for _, f in others))[:NEIGHBOURS]
        return nearest

    def levels(self, idx: np.ndarray, cross_taxonomy_negatives: bool = True) -> np.ndarray:
        """Relation level of every pair as the architecture part sees it: 0 same architecture (a
        derivative or another initialisation: the network reads no weight value, and the weight
        part, which tells them apart, is not trained), 1 same family, 2 other; -1 (ignored by the
        margin loss) for unequal families named by two label sources when
        cross_taxonomy_negatives is False: timm's efficientnet module holds MobileNetV2, which
        keras files under mobilenet_v2, so unequal labels across sources need not mean unrelated."""
        rows = [self.rows[i] for i in idx]
        key = lambda f: np.array([r[f] for r in rows])  # noqa: E731
        arch, family = key("arch"), key("family")
        taxonomy = np.array([LABEL_TAXONOMY.get(r.get("source"), r.get("source")) for r in rows])
        same = lambda a: a[:, None] == a[None, :]  # noqa: E731
        other = 2 if cross_taxonomy_negatives else np.where(same(taxonomy), 2, -1)
        return np.where(same(arch), 0, np.where(same(family), 1, other)).astype(np.int32)


def _device_batch(graphs: list[jraph.GraphsTuple], n_devices: int, min_nodes: int = 0,
                  min_edges: int = 0) -> jraph.GraphsTuple:
    """Split graphs over devices, pad every share to one common bucket, stack: leading axis D."""
    per = len(graphs) // n_devices
    shares = [graphs[d * per:(d + 1) * per] for d in range(n_devices)]
    n_node = bucket_size(max(sum(int(g.n_node[0]) for g in s) for s in shares) + 1, min_nodes)
    n_edge = bucket_size(max(sum(int(g.n_edge[0]) for g in s) for s in shares), min_edges)
    padded = [pad_batch(s, n_graph=per + 1, n_node=n_node, n_edge=n_edge) for s in shares]
    return jax.tree.map(lambda *xs: np.stack(xs), *padded)


# ----------------------------------------------------------------------------- the step

def _loss(params, head, graphdef, batch, labels, levels, config: TrainConfig):
    model = nnx.merge(graphdef, params)
    per_device = jax.vmap(model)(batch)                 # [D, per + 1, bits]; last row is padding
    h = per_device[:, :-1].reshape(-1, per_device.shape[-1])
    soft = jnp.tanh(h)
    bits = ste_sign(soft)                               # exact codes forward, tanh gradient back
    parts = dict(
        classification=losses.classification_loss(bits, labels, head["w"], head["b"]),
        quantization=losses.quantization_loss(soft),
        margin=losses.graded_margin_loss(bits, levels, config.margin),
        balance=losses.bit_balance_loss(soft),
        decorrelation=losses.decorrelation_loss(soft))
    total = (config.w_class * parts["classification"] + config.w_quant * parts["quantization"]
             + config.w_margin * parts["margin"] + config.w_balance * parts["balance"]
             + config.w_decor * parts["decorrelation"])
    return total, parts


def _optimizer(config: TrainConfig):
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                  max(config.steps, config.warmup_steps + 1))
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=config.weight_decay)), schedule


TRACES = 0  # train_step compilations in this process (one per padding bucket and config)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"), donate_argnums=0)
def train_step(state, batch, labels, levels, *, graphdef, config: TrainConfig):
    """One AdamW step on the replicated state; batch has a leading device axis."""
    global TRACES
    TRACES += 1  # runs only while tracing
    optimizer, _ = _optimizer(config)
    grad_fn = jax.value_and_grad(lambda p, h: _loss(p, h, graphdef, batch, labels, levels, config),
                                 argnums=(0, 1), has_aux=True)
    (total, parts), grads = grad_fn(state["params"], state["head"])
    updates, opt = optimizer.update(grads, state["opt"], (state["params"], state["head"]))
    params, head = optax.apply_updates((state["params"], state["head"]), updates)
    return {"params": params, "head": head, "opt": opt}, dict(parts, total=total)


def mesh() -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh over every device (Auto axes: gather-heavy GNN code wants them)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


class Trainer:
    """Holds the state of one run; `run()` trains to config.steps, resuming from checkpoints."""

    def __init__(self, config: TrainConfig, data: Dataset, workdir, *, progress: bool = True):
        import orbax.checkpoint as ocp

        if config.hasher.members > 1:
            raise ValueError(f"a Trainer trains one network, not {config.hasher.members} members: use "
                             "train() (which trains them one after another) or member_configs(config)")
        self.config, self.data, self.workdir = config, data, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mesh = mesh()
        self.n_devices = self.mesh.size
        if config.batch_size % self.n_devices:
            raise ValueError(f"batch of {config.batch_size} graphs does not split over {self.n_devices} devices")
        self.progress = progress
        model = HashNet(config.hasher, rngs=nnx.Rngs(config.seed))
        self.graphdef, params = nnx.split(model)
        key = jax.random.key(config.seed + 1)
        head = {"w": 0.1 * jax.random.normal(key, (config.hasher.learned_bits, len(data.families))),
                "b": jnp.zeros(len(data.families))}
        self.optimizer, self.schedule = _optimizer(config)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.state = jax.device_put({"params": params, "head": head,
                                     "opt": self.optimizer.init((params, head))}, replicated)
        self.step = 0
        self.manager = ocp.CheckpointManager(
            self.workdir.resolve() / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))
        (self.workdir / "config.json").write_text(json.dumps(
            dict(train=config.to_dict(), families=data.families), indent=1))
        self._traces_at_start = TRACES
        nodes = np.array([int(g.n_node[0]) for g in data.graphs])
        edges = np.array([int(g.n_edge[0]) for g in data.graphs])
        per = config.batch_size // self.n_devices
        # one bucket fits almost every batch, so a run compiles once or twice, not per batch size
        self.min_bucket = (bucket_size(per * np.percentile(nodes, 90) + 1),
                           bucket_size(per * np.percentile(edges, 90)))
        self._restore()

    @property
    def compiles(self) -> int:
        return TRACES - self._traces_at_start

    def _restore(self) -> None:
        import orbax.checkpoint as ocp

        latest = self.manager.latest_step()
        if latest is None:
            return
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self.state)
        self.state = self.manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        self.step = latest

    def _batch(self, step: int):
        idx = self.data.sample(self.config, step)
        batch = _device_batch([self.data.graphs[i] for i in idx], self.n_devices, *self.min_bucket)
        sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
        return (jax.device_put(batch, sharding), jnp.asarray(self.data.family[idx]),
                jnp.asarray(self.data.levels(idx, self.config.cross_taxonomy_negatives)))

    def run(self, stop_at: int | None = None) -> dict:
        """Train until config.steps (or stop_at); returns the last metrics."""
        import orbax.checkpoint as ocp
        from tqdm import tqdm

        end = min(self.config.steps, stop_at or self.config.steps)
        metrics = {}
        with open(self.workdir / "metrics.jsonl", "a") as log, tqdm(
                total=end, initial=self.step, desc="train", unit="step", disable=not self.progress,
                file=sys.stderr) as bar:
            t0, since = time.perf_counter(), self.step
            while self.step < end:
                batch, labels, levels = self._batch(self.step)
                self.state, parts = train_step(self.state, batch, labels, levels,
                                               graphdef=self.graphdef, config=self.config)
                self.step += 1
                if self.step % self.config.log_every == 0 or self.step == end:
                    metrics = {k: float(v) for k, v in parts.items()}  # waits for the step
                    step_s = (time.perf_counter() - t0) / (self.step - since)
                    t0, since = time.perf_counter(), self.step
                    metrics.update(step=self.step, lr=float(self.schedule(self.step)), step_s=step_s,
                                   graphs_per_s=self.config.batch_size / step_s, devices=self.n_devices,
                                   compiles=self.compiles)
                    log.write(json.dumps(metrics) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{metrics['total']:.3f}", margin=f"{metrics['margin']:.3f}")
                if self.step % self.config.checkpoint_every == 0 or self.step == end:
                    self.manager.save(self.step, args=ocp.args.StandardSave(self.state))
                bar.update()
        self.manager.wait_until_finished()
        return metrics

    def hasher(self, **kwargs) -> Hasher:
        """The trained network as a Hasher (save it with .save(dir) to ship or share it)."""
        params = jax.device_get(self.state["params"])
        return Hasher(nnx.merge(self.graphdef, params), **kwargs)


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """One run per member of config.hasher (HasherConfig.members): member i is an ordinary
    one-network run with seed config.seed + i."""
    hasher = config.hasher.member
    return [dataclasses.replace(config, hasher=hasher, seed=config.seed + i)
            for i in range(config.hasher.members)]


def spliced_hasher(config: HasherConfig, trainers: list[Trainer], **kwargs) -> Hasher:
    """The hasher of `config` whose member networks are the trained ones, in order."""
    if config.members == 1:
        return trainers[0].hasher(**kwargs)
    model = HashNet(config, rngs=nnx.Rngs(0))
    for member, trainer in zip(model.members, trainers, strict=True):
        nnx.update(member, jax.device_get(trainer.state["params"]))
    return Hasher(model, **kwargs)


def train(zoo_dir, workdir, config: TrainConfig | None = None, *, distributed: bool = False,
          progress: bool = True, sources=None) -> list[Trainer]:
    """Load the zoo, train each member network (resuming from its checkpoints: workdir itself
    for one network, workdir/member<i> for several), save the hasher to workdir/hasher."""
    from hnn_jax.training import zoo

    if distributed:
        jax.distributed.initialize()
    graphs, rows = zoo.load(zoo_dir, sources=sources)
    kept = [i for i, r in enumerate(rows) if not (zoo.held_out(r) or zoo.validation(r))]
    if len(kept) < len(rows):
        print(f"left out {len(rows) - len(kept)} zoo graphs of held-out architectures, twin queries "
              "and validation types (zoo.held_out, zoo.validation)", file=sys.stderr)
    data = Dataset([graphs[i] for i in kept], [dict(rows[i]) for i in kept])
    config = config or default()
    members = member_configs(config)
    trainers = []
    for i, member in enumerate(members):
        where = Path(workdir) if len(members) == 1 else Path(workdir) / f"member{i}"
        if len(members) > 1 and progress:
            print(f"member {i + 1} of {len(members)} (seed {member.seed})", file=sys.stderr)
        trainers.append(Trainer(member, data, where, progress=progress))
        trainers[-1].run()
    if jax.process_index() == 0:
        spliced_hasher(config.hasher, trainers).save(Path(workdir) / "hasher")
    return trainers


# ----------------------------------------------------------------------------- command line

def add_arguments(parser) -> None:
    """`hnn-jax train ZOO... -o WORKDIR`."""
    parser.description = ("Train the hashing network on one or more zoo folders, data-parallel "
                          "over every device JAX sees; rerun the same command to resume. Example: "
                          "hnn-jax train zoo/gen zoo/timm -o runs/default")
    parser.add_argument("zoo", nargs="+", help="zoo folders (hnn-jax zoo build)")
    parser.add_argument("-o", "--workdir", required=True, help="checkpoints, metrics.jsonl, hasher/")
    parser.add_argument("--config", choices=("default", "shipped", "tiny"), default="default",
                        help="default: the recipe to train with (256 bits: 48 architecture + 208 weight); "
                        "shipped: the recipe of the shipped weights (the same); tiny: seconds on a CPU")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--bits", type=int, help="override the code length (16..256)")
    parser.add_argument("--instance-bits", type=int,
                        help="override how many of the bits are the weight part (0: all learned)")
    parser.add_argument("--seed", type=int, help="override the seed (member i of an ensemble: seed + i)")
    parser.add_argument("--size-blind", action=argparse.BooleanOptionalAction, default=None,
                        help="whether the learned bits read no absolute sizes (HasherConfig.size_blind; "
                        "default config: yes)")
    parser.add_argument("--distinct-picks", action=argparse.BooleanOptionalAction, default=None,
                        help="fill each batch with distinct graphs, the slots a family cannot fill going to "
                        "more families (TrainConfig.distinct_picks; default and shipped config: yes)")
    parser.add_argument("--neighbour-families", type=int, help="of each batch's families, how many are drawn "
                        "among the structurally nearest of the others (TrainConfig.neighbour_families; default 0)")
    parser.add_argument("--members", type=int, help="override how many separately trained networks "
                        "the learned bits are spliced from (1: one network)")
    parser.add_argument("--cpu-devices", type=int, help="split the CPU into N virtual devices (on a "
                        "CPU-only machine 4 devices train about 4x faster than 1 on 2 cores)")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host TPU pods)")
    parser.set_defaults(func=_cli_train)


def _cli_train(args) -> int:
    from hnn_jax.errors import HNNError

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any device is touched
    config = {"default": default, "shipped": shipped, "tiny": tiny_cpu}[args.config]()
    overrides = {k: v for k, v in dict(steps=args.steps, seed=args.seed, distinct_picks=args.distinct_picks,
                                       neighbour_families=args.neighbour_families).items() if v is not None}
    shape = {k: v for k, v in dict(bits=args.bits, instance_bits=args.instance_bits,
                                   members=args.members, size_blind=args.size_blind).items() if v is not None}
    try:
        if shape:
            overrides["hasher"] = dataclasses.replace(config.hasher, **shape)
        config = dataclasses.replace(config, **overrides)
    except ValueError as e:
        raise HNNError(str(e)) from None
    missing = [z for z in args.zoo if not (Path(z) / "manifest.jsonl").exists()]
    if missing:
        raise HNNError(f"not a zoo (no manifest.jsonl): {missing[0]}")
    trainers = train(args.zoo, args.workdir, config, distributed=args.distributed)
    networks = f" x {len(trainers)} member networks" if len(trainers) > 1 else ""
    print(f"trained {trainers[0].step} steps{networks} on {trainers[0].n_devices} device(s); hasher "
          f"saved to {Path(args.workdir) / 'hasher'}")
    return 0
