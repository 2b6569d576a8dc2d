"""Retrieval quality of a hash on held-out models, next to the non-learned baselines.

Tasks (Hamming distance, ties broken fairly: random order among equal distances, averaged):
- family: every original model queries all other originals; relevant = same family (mAP, P@1);
- copy detection: every derivative (fp16, int8, pruned, fine-tuned, other exporter ...) queries
  everything else; relevant = its own parent and that parent's other derivatives only, not other
  initialisations of the same architecture;
- distance to the original, per transform;
- twins: each keras.applications model queries the torchvision originals: family mAP and the
  rank of its exact torchvision twin (the first of the twin architecture's initialisations).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hnn_jax.training.baselines import BASELINES
from hnn_jax.training.zoo import KERAS_TORCHVISION_TWINS

TIE_REPEATS = 32

KERAS_TO_TORCHVISION_FAMILY = {"efficientnet_v2": "efficientnet", "inception_v3": "inception",
                               "resnet_v2": "resnet"}


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Hamming distances between rows of 0/1 bit matrices."""
    pa, pb = np.packbits(a.astype(np.uint8), axis=1), np.packbits(b.astype(np.uint8), axis=1)
    return np.bitwise_count(pa[:, None, :] ^ pb[None, :, :]).sum(-1).astype(np.int64)


def average_precision(distances: np.ndarray, relevant: np.ndarray, rng: np.random.Generator) -> float:
    """AP of one ranking by distance, averaged over random orders of tied items."""
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return float("nan")
    aps = []
    for _ in range(TIE_REPEATS):
        order = np.lexsort((rng.random(len(distances)), distances))
        hits = relevant[order]
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, n_rel + 1) / ranks))
    return float(np.mean(aps))


def precision_at_1(distances: np.ndarray, relevant: np.ndarray) -> float:
    """Chance that a random pick among the nearest (tied) items is relevant."""
    nearest = distances == distances.min()
    return float(relevant[nearest].mean())


def first_relevant_rank(distances: np.ndarray, relevant: np.ndarray) -> float:
    """Expected 1-based rank of the first relevant item when ties are broken at random.

    With k items strictly nearer than the nearest relevant one and m items at its distance, t of
    them relevant, the first relevant one comes at k + (m + 1) / (t + 1) on average. (The smaller
    of the relevant items' own expected ranks overstates it when relevant items tie each other:
    two tied twins at the top are found at rank 1, not 1.5.)
    """
    nearest = distances[relevant].min()
    at = distances == nearest
    return float((distances < nearest).sum() + (at.sum() + 1) / ((at & relevant).sum() + 1))


def _retrieval(d: np.ndarray, relevant: np.ndarray, queries: np.ndarray, seed: int = 0):
    """Per query (itself left out): AP and P@1, as two arrays."""
    rng = np.random.default_rng(seed)
    aps, p1s = [], []
    for q in queries:
        keep = np.ones(d.shape[1], bool)
        keep[q] = False
        aps.append(average_precision(d[q, keep], relevant[q, keep], rng))
        p1s.append(precision_at_1(d[q, keep], relevant[q, keep]))
    return np.array(aps), np.array(p1s)


def evaluate_codes(bits: np.ndarray, rows: list[dict], d: np.ndarray | None = None) -> dict:
    """Family and copy-detection retrieval and distance to the original per transform; `d`: the
    ranking's distances if not the codes' Hamming distances (an index order by parts)."""
    hd = hamming(bits, bits)
    d = hd if d is None else d
    fam = np.array([r["family"] for r in rows])
    parent = np.array([r["parent"] for r in rows])
    transform = np.array([r["transform"] for r in rows])
    originals = np.flatnonzero(transform == "original")
    orig_fam = fam[originals]
    family_aps, family_p1s = _retrieval(d[np.ix_(originals, originals)], orig_fam[:, None] == orig_fam[None, :],
                                        np.arange(len(originals)))
    derivatives = np.flatnonzero(transform != "original")
    copy_aps, copy_p1s = _retrieval(d, parent[:, None] == parent[None, :], derivatives)
    original_of = {parent[i]: i for i in originals}
    per_transform = {str(t): float(np.mean([hd[i, original_of[parent[i]]] for i in np.flatnonzero(transform == t)
                                       if parent[i] in original_of]))
                     for t in sorted(set(transform) - {"original"})}
    family_ap = {str(f): float(np.nanmean(family_aps[orig_fam == f])) for f in sorted(set(orig_fam))}
    return dict(family_map=float(np.nanmean(family_aps)), family_p1=float(np.mean(family_p1s)),
                copy_map=float(np.nanmean(copy_aps)), copy_p1=float(np.mean(copy_p1s)),
                distance_to_original=per_transform, family_ap=family_ap)


def evaluate_twins(keras_bits, keras_rows, tv_bits, tv_rows) -> dict:
    """keras.applications queries against torchvision originals: family mAP and twin ranks."""
    tv_orig = [i for i, r in enumerate(tv_rows) if r["transform"] == "original"]
    k_orig = [i for i, r in enumerate(keras_rows) if r["transform"] == "original"
              and r["arch"] in KERAS_TORCHVISION_TWINS]
    if not tv_orig or not k_orig:
        return {}
    d = hamming(keras_bits[k_orig], tv_bits[tv_orig])
    tv_family = np.array([tv_rows[i]["family"] for i in tv_orig])
    tv_arch = np.array([tv_rows[i]["arch"] for i in tv_orig])
    rng = np.random.default_rng(0)
    aps, p1s, ranks = [], [], []
    for row, k in enumerate(k_orig):
        family = KERAS_TO_TORCHVISION_FAMILY.get(keras_rows[k]["family"], keras_rows[k]["family"])
        relevant = tv_family == family
        if relevant.any():
            aps.append(average_precision(d[row], relevant, rng))
            p1s.append(precision_at_1(d[row], relevant))
        twins = tv_arch == KERAS_TORCHVISION_TWINS[keras_rows[k]["arch"]]  # every init of the twin
        if twins.any():
            ranks.append(first_relevant_rank(d[row], twins))
    return dict(twin_family_map=float(np.mean(aps)) if aps else float("nan"),
                twin_family_p1=float(np.mean(p1s)) if p1s else float("nan"),
                twin_median_rank=float(np.median(ranks)) if ranks else float("nan"), twin_queries=len(ranks))


def relation_distances(bits: np.ndarray, rows: list[dict]) -> dict[str, np.ndarray]:
    """Distances of all pairs, grouped by relation (same parent / arch / family / other)."""
    d = hamming(bits, bits)
    iu = np.triu_indices(len(rows), 1)
    key = lambda f: np.array([r[f] for r in rows])  # noqa: E731
    same = lambda a: (a[:, None] == a[None, :])[iu]  # noqa: E731
    p, a, f = same(key("parent")), same(key("arch")), same(key("family"))
    dist = d[iu]
    return {"same model (derivative)": dist[p], "same architecture, other init": dist[a & ~p],
            "same family, other architecture": dist[f & ~a], "other family": dist[~f]}


def measure_thresholds(groups: dict[str, np.ndarray], nbits: int) -> tuple[int, int, int]:
    """The architecture part's relation bands (hashcode.Bands.architecture) from its distances
    grouped as relation_distances gives them. That part reads no weight value, so a derivative and
    another initialisation of one architecture are one group to it: the bands [0, t1], (t1, t2],
    (t2, nbits] for same architecture / same family / other minimise the summed share of each
    group's pairs outside its own band (ties: the median of the best, i.e. the middle of a gap or
    of an overlap no threshold splits). Returns (t0, t1, t2), where t0, the architecture distance
    a same-model verdict allows, is the larger of t1 and the distance that 99% of the derivative
    pairs lie within: a tool that rewrites a few ops keeps the weights, and the weight part's band
    is what makes that verdict (chance matches <= 1e-6)."""
    from hnn_jax.errors import HNNError

    empty = [name for name, d in groups.items() if not len(d)]
    if empty:
        raise HNNError(f"cannot measure relation thresholds: the zoo has no pairs of {', '.join(empty)}")
    values = list(groups.values())
    same_arch = np.concatenate(values[:2])
    t = np.arange(nbits + 1)
    cdf = [(np.asarray(d)[None, :] <= t[:, None]).mean(1) for d in (same_arch, values[2], values[3])]
    # outside share = (1 - A[t1]) + (F[t1] + 1 - F[t2]) + O[t2] over t1 <= t2
    cost = (1 - cdf[0])[:, None] + cdf[1][:, None] + (1 - cdf[1])[None, :] + cdf[2][None, :]
    cost = np.where(t[:, None] <= t[None, :], cost, np.inf)
    rows = np.flatnonzero(cost.min(1) <= cost.min() + 1e-12)
    t1 = rows[len(rows) // 2]
    columns = np.flatnonzero(cost[t1] <= cost.min() + 1e-12)
    t2 = columns[len(columns) // 2]
    t0 = max(int(t1), int(np.ceil(np.percentile(values[0], 99))))
    return min(t0, int(t2)), int(t1), int(t2)


def verdicts(bits: np.ndarray, rows: list[dict], bands, arch_bits: int) -> dict[str, dict]:
    """Per relation group: pair count, the distance figures of each part, and the share of pairs
    HashCode.relation calls each relation with `bands` (a hashcode.Bands)."""
    from hnn_jax.hashcode import RELATIONS, Distances

    arch = relation_distances(bits[:, :arch_bits], rows)
    weights = relation_distances(bits[:, arch_bits:], rows)
    out = {}
    for name in arch:
        a, w = arch[name], weights[name]
        if not len(a):
            continue
        keys = [bands.relation(Distances(int(x + y), int(x), int(y)), arch_bits, bits.shape[1] - arch_bits)[0]
                for x, y in zip(a, w)]
        out[name] = dict(n=len(a), architecture_mean=float(a.mean()), architecture_p95=float(np.percentile(a, 95)),
                         weights_mean=float(w.mean()), weights_p5=float(np.percentile(w, 5)),
                         weights_p95=float(np.percentile(w, 95)),
                         called={key: keys.count(key) / len(keys) for key, _ in RELATIONS})
    return out


def codes_of(graphs, method, bits: int | None = None) -> np.ndarray:
    """0/1 matrix for a list of graphs: method is a Hasher (codes of `bits` bits, default its
    trained length) or a baseline function."""
    if callable(method) and not hasattr(method, "hash"):
        return np.stack([method(g) for g in graphs])
    return np.stack([c.bits for c in method.hash(list(graphs), bits=bits)])


def run(hasher, eval_zoo, out_dir, keras_zoo=None, *, plots: bool = True, validation: bool = False) -> dict:
    """Evaluate `hasher` and the baselines; write results.json, results.md,
    relation_distances.json (the hasher's distances by relation at every code length it makes,
    and the relation thresholds measured from them: summary["relations"]) and plots to out_dir.
    validation: only the zoo's graphs of the validation split (zoo.validation)."""
    from hnn_jax.training import zoo
    from hnn_jax.errors import HNNError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graphs, rows = zoo.load(eval_zoo)
    if validation:
        kept = [i for i, r in enumerate(rows) if zoo.validation(r)]
        graphs, rows = [graphs[i] for i in kept], [rows[i] for i in kept]
    if not rows:
        raise HNNError(f"{eval_zoo}: no graphs to evaluate" + (" of the validation split" if validation else ""))
    k_graphs, k_rows = zoo.load(keras_zoo) if keras_zoo else ([], [])
    results, all_bits = {}, {}
    for name, method in {"hnn-jax": hasher, **BASELINES}.items():
        bits, k_bits = codes_of(graphs, method), codes_of(k_graphs, method) if k_graphs else None
        parts = {name: slice(None)}
        if method is hasher and hasher.config.instance_bits:  # the two parts alone, for the record
            learned = hasher.config.learned_bits
            parts[f"{name}: architecture part ({learned} bits)"] = slice(0, learned)
            parts[f"{name}: weight part ({bits.shape[1] - learned} bits)"] = slice(learned, None)
        for part, columns in parts.items():
            all_bits[part] = bits[:, columns]
            res = evaluate_codes(bits[:, columns], rows)
            if k_graphs:
                res.update(evaluate_twins(k_bits[:, columns], k_rows, bits[:, columns], rows))
            results[part] = res
        if method is hasher and hasher.config.instance_bits:  # the rankings HammingIndex.search(order=...) gives
            learned, nbits = hasher.config.learned_bits, bits.shape[1]
            arch, weights = hamming(bits[:, :learned], bits[:, :learned]), hamming(bits[:, learned:], bits[:, learned:])
            for order, d in (("architecture", arch * (nbits + 1) + weights), ("weights", weights * (nbits + 1) + arch)):
                results[f"{name}: index order={order}"] = evaluate_codes(bits, rows, d)
    arch_bits = hasher.config.learned_bits
    try:
        arch_bands = measure_thresholds(relation_distances(all_bits["hnn-jax"][:, :arch_bits], rows), arch_bits)
        missing = None
    except HNNError as e:  # a zoo without every relation level still gets its other figures
        arch_bands, missing = None, str(e)
    verdict_table = {}
    from hnn_jax.hashcode import Bands, shipped_weight_bands

    # the verdicts a user gets: the hasher's own bands (measured on validation data, never on
    # this set); a hasher without any gets the bands measured here, with the shipped weight bands
    weight_bands = hasher.relations.weights if hasher.relations is not None else shipped_weight_bands()
    bands = hasher.relations if hasher.relations is not None else (
        Bands(arch_bands, weight_bands) if arch_bands is not None else None)
    if bands is not None and weight_bands:
        for nbits in hasher.lengths:
            if nbits - arch_bits not in bands.weights:
                continue
            bits = all_bits["hnn-jax"] if nbits == hasher.config.bits else codes_of(graphs, hasher, nbits)
            verdict_table[nbits] = verdicts(bits, rows, bands, arch_bits)
    summary = dict(models=len({r['parent'] for r in rows}), graphs=len(rows),
                   families=len({r['family'] for r in rows}), results=results,
                   architecture_bands=arch_bands, weight_bands={n: b.to_json() for n, b in weight_bands.items()},
                   relations_missing=missing, verdicts=verdict_table)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "verdicts.json").write_text(json.dumps(verdict_table, indent=1))
    (out / "results.md").write_text(markdown_table(summary))
    if plots:
        _plots(out, all_bits, rows)
    return summary


def _method_table(results: dict, columns: list[str], cell) -> list[str]:
    """Markdown rows: one per method, one column per name in `columns`, cell(result, column)."""
    return (["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            + [f"| {name} | " + " | ".join(cell(r, c) for c in columns) + " |" for name, r in results.items()])


def markdown_table(summary: dict) -> str:
    results = summary["results"]
    first = next(iter(results.values()))
    cols = ["family_map", "family_p1", "copy_map", "copy_p1", "twin_family_map", "twin_median_rank"]
    lines = [f"{summary['graphs']} graphs of {summary['models']} held-out parents, {summary['families']} families\n"]
    lines += _method_table(results, cols, lambda r, c: f"{r.get(c, float('nan')):.3f}")
    lines += ["", "Mean Hamming distance to the original:", ""]
    lines += _method_table(results, sorted(first["distance_to_original"]),
                           lambda r, t: f"{r['distance_to_original'][t]:.2f}")
    lines += ["", "Family AP per family (mean over that family's original queries):", ""]
    lines += _method_table(results, sorted(first["family_ap"]), lambda r, f: f"{r['family_ap'][f]:.2f}")
    return "\n".join(lines) + "\n"


def pr_curve(bits: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of "distance <= t" over all pairs, for t = 0..bits."""
    d = hamming(bits, bits)
    iu = np.triu_indices(len(bits), 1)
    d, rel = d[iu], relevant[iu]
    precision, recall = [], []
    for t in range(bits.shape[1] + 1):
        hit = d <= t
        precision.append(rel[hit].mean() if hit.any() else 1.0)
        recall.append(rel[hit].sum() / max(rel.sum(), 1))
    return np.array(precision), np.array(recall)


def _plots(out: Path, all_bits: dict[str, np.ndarray], rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learned = next(iter(all_bits.values()))
    groups = relation_distances(learned, rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    top = learned.shape[1] + 1
    for label, dist in groups.items():
        if len(dist):
            ax.hist(dist, bins=np.arange(top + 1) - 0.5, density=True, alpha=0.5, label=f"{label} ({len(dist)})")
    ax.set_xlabel("Hamming distance (bits)")
    ax.set_ylabel("share of pairs")
    ax.set_title("hnn-jax: distance by relation (held-out models)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "distance_histograms.png", dpi=120)
    plt.close(fig)

    family = np.array([r["family"] for r in rows])
    parent = np.array([r["parent"] for r in rows])
    tasks = {"family (same family)": family[:, None] == family[None, :],
             "copy detection (same parent)": parent[:, None] == parent[None, :]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (task, relevant) in zip(axes, tasks.items()):
        for name, bits in all_bits.items():
            precision, recall = pr_curve(bits, relevant)
            ax.plot(recall, precision, marker=".", label=name)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"PR by distance threshold: {task}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

def add_arguments(parser) -> None:
    """`hnn-jax eval ZOO -o OUT`."""
    parser.description = ("Retrieval metrics of a hasher and the non-learned baselines on a held-out "
                          "zoo (e.g. torchvision). Example: hnn-jax eval zoo/torchvision --keras zoo/keras "
                          "-o benchmarks/results")
    parser.add_argument("zoo", nargs="+", help="held-out zoo folder(s), evaluated as one set")
    parser.add_argument("-o", "--out", required=True, help="folder for results.json, results.md, plots")
    parser.add_argument("--hasher", help="checkpoint folder (default: the shipped hasher)")
    parser.add_argument("--keras", help="zoo of keras.applications models, for the twins table")
    parser.add_argument("--validation", action="store_true",
                        help="only the zoo's graphs of the validation split (zoo.validation: model types "
                        "training leaves out for choices)")
    parser.add_argument("--save-thresholds", action="store_true",
                        help="store the architecture part's relation bands measured here in the --hasher "
                        "checkpoint's hasher.json, where compare, search and HashCode.relation read them "
                        "(the weight part's come from benchmarks/bench_null.py --save-thresholds)")
    parser.add_argument("--no-plots", action="store_true")
    parser.set_defaults(func=_cli_eval)


def _cli_eval(args) -> int:
    from hnn_jax import checkpoint
    from hnn_jax.errors import HNNError
    from hnn_jax.hashcode import Bands, WeightBand
    from hnn_jax.hasher import Hasher, default_hasher

    if args.save_thresholds and not args.hasher:
        raise HNNError("--save-thresholds writes into a checkpoint: give it as --hasher DIR "
                       "(the shipped weights are hnn_jax/weights/default)")
    hasher = Hasher.load(args.hasher) if args.hasher else default_hasher()
    summary = run(hasher, args.zoo, args.out, args.keras, plots=not args.no_plots, validation=args.validation)
    print(markdown_table(summary))
    if summary["relations_missing"]:
        print(f"relation bands: not measured ({summary['relations_missing']})")
        if args.save_thresholds:
            raise HNNError("nothing saved: " + summary["relations_missing"])
        return 0
    bands = summary["architecture_bands"]
    print(f"architecture part's bands measured here (largest distance of same architecture, same family): "
          f"{bands[1]}, {bands[2]}")
    for nbits, table in summary["verdicts"].items():
        print(f"{nbits}-bit codes, share of each group's pairs called each relation "
              f"(by {'the hasher' if hasher.relations is not None else 'these'} bands):")
        for group, figures in table.items():
            called = ", ".join(f"{k} {v:.3f}" for k, v in figures["called"].items() if v)
            print(f"  {group} ({figures['n']} pairs): {called}")
    if args.save_thresholds:
        weights = {int(n): WeightBand.from_json(b) for n, b in summary["weight_bands"].items()}
        checkpoint.write_relations(args.hasher, Bands(tuple(bands), weights))
        print(f"saved in {args.hasher}/hasher.json, with the weight bands of "
              + ("this hasher" if hasher.relations is not None else "the shipped hasher (the same weight part)")
              if weights else " (no weight bands yet: measure them with benchmarks/bench_null.py --save-thresholds)")
    return 0
