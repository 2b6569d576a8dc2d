"""Lineage at hub scale: find a derivative's parent among N bases of its own architecture.

For a small CNN and a small transformer (BertForSequenceClassification, 2 layers), 12 parents
each get real derivatives (hnn_jax.training.derivatives: a 500-step fine-tune with a replaced task head, a
merged LoRA adapter, a fine-tune of that fine-tune; fp16, int8 and 30/50% pruning of each) and
every derivative ranks its parent (its grandparent, for two generations) among N bases of the
same architecture by Hamming distance, ties broken fairly (expected rank over tie orders).

The bases: the 12 parents, 88 more real initialisations (torch seeds, exported), and beyond 100
re-initialisations made in ONNX by permuting each weight tensor of one more real initialisation
(same values, so the same distribution, in an order unrelated to any other base). The table's
first rows compare a parent's distances to real and to permuted bases: they must agree.

Methods at 256 bits: the shipped hasher (hnn_jax.hash); the same codes ranked by the nearer of
their weight part's two readings ("either": fixed places or unit sets, twice its distance); the
weight-sign SimHash at the weights' fixed places (baselines.weight_sign_hash over the graph's
fixed-place projections, the features before schema 5) at the same length and at the weight
part's (208: the learned bits are the same for every base, so they rank nothing); and sha256 of
the weights (an exact content hash).
Kinds: every derivative above; renumbered (derivatives.renumber, checked function-preserving) and
renumbered then fine-tuned with a new head (rtune); each with int8. Also: independent bases the
code calls the same model, and the direction of an edge by weight kurtosis (MoTHer).

    python benchmarks/bench_lineage.py                       # N = 100, 1,000, 10,000
    python benchmarks/bench_lineage.py --sizes 100,1000      # quicker (about 15 minutes here)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

PARENTS = 12  # --parents
REAL_BASES = 100
LENGTHS = (256,)  # the shipped hasher makes 256-bit codes
LEARNED_BITS = 48  # of the shipped hasher: the same for every base of one architecture
KINDS = ("fp16", "int8", "prune30", "prune50", "tune", "tune+fp16", "tune+int8", "tune+prune30",
         "tune+prune50", "lora", "lora+int8", "lora+prune30", "gen2", "gen2+int8", "gen2+prune30",
         "renumber", "renumber+int8", "rtune", "rtune+int8")  # rtune: renumbered, then a new-head fine-tune


def make_model(arch: str, seed: int):
    """(torch model with seeded random weights, example input)."""
    import torch

    torch.manual_seed(seed)
    if arch == "cnn":
        def block(i, o, s):
            return [torch.nn.Conv2d(i, o, 3, s, 1, bias=False), torch.nn.BatchNorm2d(o), torch.nn.ReLU()]
        model = torch.nn.Sequential(*block(3, 16, 1), *block(16, 32, 2), *block(32, 64, 2), *block(64, 64, 1),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
        return model.eval(), torch.randn(1, 3, 32, 32)
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=3)
    model = transformers.BertForSequenceClassification(config).eval()
    return model, {"input_ids": torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0)),
                   "attention_mask": torch.ones(1, 16, dtype=torch.long)}


def to_onnx(arch: str, model, example):
    from hnn_jax.converters import export, hf

    return hf.transformers_to_onnx(model) if arch == "transformer" else export.torch_to_onnx(model, example)


def permuted(proto, seed: int):
    """The model with every non-constant float weight tensor's values permuted (seeded)."""
    from onnx import TensorProto, numpy_helper

    from hnn_jax.training import variants

    out, rng = variants.copy(proto), np.random.default_rng(seed)
    for t in out.graph.initializer:
        if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 1:
            w = numpy_helper.to_array(t)
            if w.min() != w.max():
                t.CopyFrom(numpy_helper.from_array(rng.permutation(w.reshape(-1)).reshape(w.shape), t.name))
    return out


def weights_digest(proto) -> str:
    digest = hashlib.sha256()
    for t in sorted(proto.graph.initializer, key=lambda t: t.name):
        digest.update(t.SerializeToString())
    return digest.hexdigest()


def _worker_init():
    import torch

    torch.set_num_threads(1)  # one process per core


def _pool(workers: int) -> ProcessPoolExecutor:
    """Spawned workers: forking a process that has run JAX (XLA's threads) can hang the child."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)


def _graph(proto):
    from hnn_jax import converters

    return converters.from_onnx(proto)


def _base(job):
    """(graph, sha256) of base number `i` of `arch` (see the module docstring)."""
    arch, i = job
    if i < REAL_BASES:
        proto = to_onnx(arch, *make_model(arch, i))
    else:
        proto = permuted(_template(arch), i)
    return _graph(proto), weights_digest(proto), weight_kurtosis(proto)


def weight_kurtosis(proto) -> float:
    """Mean excess kurtosis of the model's float weight matrices and kernels: MoTHer's signal
    for the direction of an edge (training makes weights heavier-tailed, so a child's is higher)."""
    from onnx import TensorProto, numpy_helper

    values = [numpy_helper.to_array(t).astype(np.float64).ravel() for t in proto.graph.initializer
              if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(t.dims) >= 2 and np.prod(t.dims) > 16]
    kurt = [((v - v.mean()) ** 4).mean() / max(v.var(), 1e-30) ** 2 - 3 for v in values]
    return float(np.mean(kurt)) if kurt else 0.0


_TEMPLATES = {}


def _template(arch):
    if arch not in _TEMPLATES:
        _TEMPLATES[arch] = to_onnx(arch, *make_model(arch, 10**6))
    return _TEMPLATES[arch]


def derivatives(arch: str, seed: int):
    """{kind: (graph, sha256)} for parent `seed`."""
    from hnn_jax.training import derivatives
    from hnn_jax.training import variants

    model, x = make_model(arch, seed)
    tuned = derivatives.tune_new_head(model, x, seed=seed)
    renumbered = derivatives.renumber(model, x, seed=seed + 2000)  # checked: the same outputs
    protos = {"": to_onnx(arch, model, x), "tune": to_onnx(arch, tuned, x),
              "lora": to_onnx(arch, derivatives.lora_merge(model, x, seed=seed), x),
              "gen2": to_onnx(arch, derivatives.tune_new_head(tuned, x, seed=seed + 1000, classes=7), x),
              "renumber": to_onnx(arch, renumbered, x),
              "rtune": to_onnx(arch, derivatives.tune_new_head(renumbered, x, seed=seed + 3000), x)}
    out = {}
    for kind in KINDS:
        base, _, op = kind.rpartition("+") if "+" in kind else ("", "", kind)
        if op in protos:
            proto = protos[op]
        else:
            proto = protos[base]
            proto = (variants.fp16_weights(proto) if op == "fp16" else variants.int8_dynamic(proto) if op == "int8"
                     else variants.prune(proto, int(op[5:]) / 100))
        out[kind] = (_graph(proto), weights_digest(proto), weight_kurtosis(proto))
    return out


def _derivatives(job):
    return derivatives(*job)


def rank_scores(dist: np.ndarray, target: int, top: int) -> tuple[float, float]:
    """(P(rank <= top), expected 1/rank) of `target` with ties in random order."""
    d = dist[target]
    closer = int(np.count_nonzero(dist < d))
    ties = int(np.count_nonzero(dist == d)) - 1
    ranks = np.arange(closer + 1, closer + ties + 2)
    return float(np.mean(ranks <= top)), float(np.mean(1.0 / ranks))


def codes(graphs, digests):
    """{method: uint8 [n, bits] array (sha256: [n, 1] ids)}. weight-sign: over the weights'
    projections at fixed places (the graph's NODE_WEIGHT_PROJ, the baseline as it was)."""
    import hnn_jax
    from hnn_jax.training import baselines

    out = {}
    for bits in LENGTHS:
        out[f"hnn-jax {bits}"] = np.stack([c.bits for c in hnn_jax.hash(graphs, bits=bits)])
        out[f"hnn-jax {bits} either"] = out[f"hnn-jax {bits}"]  # ranked by its nearer weight reading
        for length in (bits, bits - LEARNED_BITS):  # the same length; hnn-jax's instance bits only
            out[f"weight-sign {length}"] = np.stack([baselines.weight_sign_hash(g, length) for g in graphs])
    ids = {d: i for i, d in enumerate(dict.fromkeys(digests))}
    out["sha256"] = np.array([[ids[d]] for d in digests])
    return out


def distances(query: np.ndarray, base: np.ndarray, method: str) -> np.ndarray:
    """Hamming distances; for "... either", the architecture part's plus twice the nearer of the
    weight part's two readings (even bits: fixed places; odd bits: unit sets; weightcode.READINGS):
    what a search that trusts either reading would rank by."""
    if method == "sha256":
        return (base[:, 0] != query[0]).astype(int)
    differ = base != query
    if not method.endswith("either"):
        return np.count_nonzero(differ, axis=1)
    weights = differ[:, LEARNED_BITS:]
    return (np.count_nonzero(differ[:, :LEARNED_BITS], axis=1)
            + 2 * np.minimum(np.count_nonzero(weights[:, ::2], axis=1), np.count_nonzero(weights[:, 1::2], axis=1)))


def run_arch(arch: str, sizes: list[int], workers: int, cache: Path, parents: int = PARENTS) -> dict:
    import jraph
    from tqdm import tqdm

    from hnn_jax import schema

    n_max = max(sizes)
    path = cache / f"{arch}-{n_max}-s{schema.SCHEMA_VERSION}c{schema.CONVERTER_REVISION}.npz"
    t0 = time.time()
    if path.exists():
        with np.load(path, allow_pickle=True) as f:  # our own cache: pickled GraphsTuple fields
            base_graphs = [jraph.GraphsTuple(*fields) for fields in f["graphs"]]
            base_digests = [str(d) for d in f["digests"]]
            base_kurtosis = list(f["kurtosis"])
    else:
        with _pool(workers) as pool:
            jobs = [(arch, i) for i in range(n_max)]
            made = list(tqdm(pool.map(_base, jobs, chunksize=8), total=n_max, desc=f"{arch} bases"))
        base_graphs, base_digests, base_kurtosis = (list(column) for column in zip(*made))
        cache.mkdir(parents=True, exist_ok=True)
        fields = np.empty((len(base_graphs), len(jraph.GraphsTuple._fields)), dtype=object)
        for i, g in enumerate(base_graphs):
            for j, value in enumerate(g):
                fields[i, j] = value
        np.savez(path, graphs=fields, digests=np.array(base_digests), kurtosis=np.array(base_kurtosis))
    base_time = time.time() - t0
    with _pool(workers) as pool:
        derived = list(tqdm(pool.map(_derivatives, [(arch, s) for s in range(parents)]), total=parents,
                            desc=f"{arch} derivatives"))
    base_codes = codes(base_graphs, base_digests)
    query_graphs = [derived[p][k][0] for p in range(parents) for k in KINDS]
    query_digests = [derived[p][k][1] for p in range(parents) for k in KINDS]
    query_codes = codes(query_graphs, query_digests)
    # sha256 ids: a query's digest matches a base's only if the bytes are equal
    lookup = {d: i for i, d in enumerate(dict.fromkeys(base_digests))}
    query_codes["sha256"] = np.array([[lookup.get(d, -1)] for d in query_digests])
    base_codes["sha256"] = np.array([[lookup[d]] for d in base_digests])

    results = {"bases_seconds": base_time, "by_n": {}}
    for n in sizes:
        per = {}
        for method, qc in query_codes.items():
            for q, (p, kind) in enumerate((p, k) for p in range(parents) for k in KINDS):
                dist = distances(qc[q], base_codes[method][:n], method)
                hit, rr = rank_scores(dist, p, 3 if kind.startswith("gen2") else 1)
                per.setdefault(kind, {}).setdefault(method, []).append((hit, rr))
        results["by_n"][n] = {k: {m: (float(np.mean([h for h, _ in v])), float(np.mean([r for _, r in v])))
                                  for m, v in ms.items()} for k, ms in per.items()}
    # sanity: a parent's distance to real re-inits and to permuted ones (256-bit codes)
    real = slice(parents, min(REAL_BASES, n_max))
    perm = slice(REAL_BASES, n_max)
    for method in ("hnn-jax 256", "weight-sign 256"):
        c = base_codes[method]
        results.setdefault("sanity", {})[method] = {
            "to real re-inits": float(np.mean([distances(c[p], c[real], method).mean() for p in range(parents)])),
            "to permuted": (float(np.mean([distances(c[p], c[perm], method).mean() for p in range(parents)]))
                            if n_max > REAL_BASES else None)}
    c = base_codes["hnn-jax 256"][:, :48]
    results["learned_bits_spread"] = int(np.count_nonzero((c != c[0]).any(axis=1)))
    results["null"] = false_matches(base_graphs[:min(n_max, 1000)])
    # direction: is the parent the one of lower weight kurtosis (MoTHer)? per fine-tuned kind
    results["direction"] = {kind: float(np.mean([base_kurtosis[p] < derived[p][kind][2] for p in range(parents)]))
                            for kind in ("tune", "lora", "rtune")}
    return results


def false_matches(graphs) -> dict:
    """Pairs of independent bases that the shipped 256-bit code calls the same model."""
    import hnn_jax

    found = hnn_jax.hash(graphs, bits=256)
    pairs = [c.distances(d) for i, c in enumerate(found) for d in found[:i]]
    keys = [c.relation(d)[0] for i, c in enumerate(found) for d in found[:i]]
    return {"pairs": len(pairs), "same-model": keys.count("same-model"),
            "nearest weight distance": min(p.weights for p in pairs)}


def table(arch: str, res: dict) -> str:
    methods = [m for b in LENGTHS for m in (f"hnn-jax {b}", f"hnn-jax {b} either", f"weight-sign {b}",
                                            f"weight-sign {b - LEARNED_BITS}")]
    methods.append("sha256")
    null, direction = res["null"], res["direction"]
    lines = [f"\n### {arch}\n",
             f"Independent bases called the same model: {null['same-model']} of {null['pairs']:,} pairs "
             f"(nearest pair {null['nearest weight distance']} weight bits apart). Direction by weight "
             "kurtosis (the parent's is lower), share right: "
             + ", ".join(f"{k} {v:.2f}" for k, v in direction.items()),
             "",
             f"Bases: {res['bases_seconds']:.0f} s to convert. Bases whose learned bits differ from "
             f"base 0's: {res['learned_bits_spread']}. Mean 256-bit distance of a parent to real "
             f"re-inits / permuted re-inits: " + "; ".join(
                 f"{m}: {v['to real re-inits']:.1f} / "
                 + ("-" if v["to permuted"] is None else f"{v['to permuted']:.1f}")
                 for m, v in res["sanity"].items()), ""]
    for n, kinds in res["by_n"].items():
        lines += [f"N = {n:,}: parent at rank 1 (grandparent in top 3 for gen2), fair ties; mAP in brackets\n",
                  "| derivative | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for kind, ms in kinds.items():
            lines.append(f"| {kind} | " + " | ".join(f"{ms[m][0]:.2f} ({ms[m][1]:.2f})" for m in methods) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="N values (comma-separated)")
    parser.add_argument("--archs", default="cnn,transformer")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/hnn-lineage-cache"),
                        help="where converted bases are kept between runs")
    parser.add_argument("--parents", type=int, default=PARENTS, help="parents with derivatives per architecture")
    parser.add_argument("--out", type=Path, help="write the tables (markdown) and figures (json) here")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))

    report, figures = ["# Lineage benchmark (benchmarks/bench_lineage.py)"], {}
    for arch in args.archs.split(","):
        figures[arch] = run_arch(arch, sizes, args.workers, args.cache, args.parents)
        report.append(table(arch, figures[arch]))
        print(report[-1], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lineage.md").write_text("\n".join(report) + "\n")
        (args.out / "lineage.json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
