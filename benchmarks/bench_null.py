"""The weight part's null distribution and its recall of derivatives: a same-model threshold per length.

The weight part of a code (hnn_jax.weightcode: an exact integer SimHash of the 16 fingerprint
values of each weight tensor, with hyperplanes keyed per tensor) must tell independent models of one
architecture apart. This measures, for each weight length W (16, 80, 208: the weight parts of
64-, 128- and 256-bit codes, 48 architecture bits + W):

(a) the null: the Hamming distances between all pairs of N independent initialisations of one
    architecture (default N = 142: 10,011 pairs), with the binomial tail P(Bin(W, 1/2) <= t) and
    a beta-binomial fitted to the pairs' mean and variance by the method of moments (the pairs
    of few fingerprint dimensions agree on more or fewer bits than chance together: the angle
    between two short random vectors varies, so the distances spread wider than a binomial);
(b) the recall: the distances of derivatives (fp16 round trip, int8 dynamic quantisation, 30%
    magnitude pruning, a 5-step fine-tune (zoo.finetune), the dynamo exporter, and for the CNN
    and BERT a real 500-step fine-tune with a new head (derivatives.tune_new_head)) to their parent,
    for a few parents whose seeds the null does not use.

t*(W) is the largest distance t at which the fitted tail of every architecture (the worst) is at
most 1e-6: "same model" below it has a false-match rate of at most 1e-6 per pair. The binomial
threshold (the tail of an ideal SimHash) is reported beside it.

Architectures, all built in code with random weights (no downloads): the CNN and the BERT
(2 layers, hidden 64) of benchmarks/bench_lineage.py, hnn_jax/testing/models.py's MLP, and two causal
decoders of 2 layers, hidden 64 (GPT-2 and Llama, hnn_jax.training.zoo.transformers_model). They are
exported as bench_lineage does (TorchScript; transformers models through
hf.transformers_to_onnx, which falls back to dynamo where tracing fails, as it does for
transformers 5's decoders) and converted with converters.from_onnx. Converted graphs are cached
as .npz, keyed by architecture, seed, schema version, torch/transformers versions and a digest of
the converters' source, so reruns are cheap.

    python benchmarks/bench_null.py            # N = 142, 6 parents (about 20-40 min on 1 core)
    python benchmarks/bench_null.py --quick    # N = 20, 2 parents
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_lineage.make_model

ARCHS = ("cnn", "bert", "mlp", "gpt2", "llama")
LENGTHS = (16, 80, 208)
ARCH_BITS = 48              # the learned architecture part of a 64/128/256-bit code
TARGET = 1e-6               # false-match rate per pair that t* must keep
INITS = 142                 # 142 * 141 / 2 = 10,011 pairs
PARENTS = 6
PARENT_SEED = 1_000_000     # parents' seeds: PARENT_SEED + i, none of them a null seed
KINDS = ("fp16", "int8", "prune30", "finetune5", "dynamo", "tune500")
TUNED_ARCHS = ("cnn", "bert")  # the 500-step new-head fine-tune (seconds each here: json "tune_seconds")
DECODER_SIZE = (2, 64, 4, 4, 1000)  # layers, hidden, heads, kv heads, vocabulary


# ----------------------------------------------------------------------------- models

def make_model(arch: str, seed: int):
    """(torch model with seeded random weights, eval mode; example input: tensor or kwargs dict)."""
    if arch in ("cnn", "bert"):
        import bench_lineage

        return bench_lineage.make_model("cnn" if arch == "cnn" else "transformer", seed)
    if arch == "mlp":
        from hnn_jax.testing import models

        return models.torch_mlp(seed)
    if arch in ("gpt2", "llama"):
        from hnn_jax.training import zoo

        return zoo.transformers_model(arch, DECODER_SIZE, seed)
    raise ValueError(f"unknown architecture {arch!r}")


def is_transformers(model) -> bool:
    return hasattr(model, "config") and hasattr(model, "main_input_name")


def to_onnx(model, example, *, dynamo: bool = False):
    """The ONNX export bench_lineage uses (TorchScript; transformers_to_onnx for transformers
    models), or the dynamo exporter with the same inputs."""
    from hnn_jax.converters import export, hf
    from hnn_jax.converters.hf import example_inputs

    if is_transformers(model):
        if dynamo:
            return export.torch_to_onnx(model, kwargs=example_inputs(model, device="cpu"), dynamo=True)
        return hf.transformers_to_onnx(model)
    return export.torch_to_onnx(model, example, dynamo=dynamo)


def convert(proto):
    from hnn_jax import converters

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converters.from_onnx(proto)


def cache_key() -> str:
    """Schema version, torch and transformers versions and a digest of the converters' source."""
    import torch
    import transformers

    from hnn_jax import schema

    digest = hashlib.sha256()
    for path in sorted((ROOT / "converters").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return (f"schema{schema.SCHEMA_VERSION}-torch{torch.__version__}-transformers{transformers.__version__}"
            f"-conv{digest.hexdigest()[:12]}").replace("+", "_")


class Cache:
    """Converted graphs as .npz (zoo.save_graph: plain arrays, no pickle) under folder/key/."""

    def __init__(self, folder: Path | None):
        self.folder = None if folder is None else folder / cache_key()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, make) -> tuple:
        """(graph, seconds its making took: now, or when it was cached)."""
        from hnn_jax.training import zoo

        path = None if self.folder is None else self.folder / f"{name}.npz"
        if path is not None and path.exists():
            timing = path.with_suffix(".json")
            return zoo.load_graph(path), json.loads(timing.read_text())["seconds"] if timing.exists() else None
        started = time.time()
        graph = make()
        seconds = time.time() - started
        if path is not None:
            tmp = path.with_suffix(".tmp.npz")
            zoo.save_graph(tmp, graph)
            os.replace(tmp, path)
            path.with_suffix(".json").write_text(json.dumps({"seconds": seconds}))
        return graph, seconds


def derivative(arch: str, kind: str, model, example, parent_proto, seed: int):
    """The ONNX model of derivative `kind` of a parent, or None where it does not apply."""
    from hnn_jax.training import derivatives
    from hnn_jax.training import variants, zoo

    if kind == "fp16":
        return variants.fp16_weights(parent_proto)
    if kind == "int8":
        return variants.int8_dynamic(parent_proto)
    if kind == "prune30":
        return variants.prune(parent_proto, 0.3)
    if kind == "finetune5":
        return to_onnx(zoo.finetune(model, example, seed=seed), example)
    if kind == "dynamo":
        if arch in ("gpt2", "llama"):  # transformers_to_onnx already exports them with dynamo
            return None
        return to_onnx(model, example, dynamo=True)
    if kind == "tune500":
        if arch not in TUNED_ARCHS:
            return None
        return to_onnx(derivatives.tune_new_head(model, example, seed=seed), example)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- statistics

def null_stats(bits: np.ndarray, n: int) -> dict:
    """The null of one architecture at one length: figures, the beta-binomial of
    hashcode.fit_weight_band (the fit `hnn-jax compare` reads its chances from) and both tails."""
    from scipy import stats

    from hnn_jax.training.evaluate import hamming
    from hnn_jax.hashcode import fit_weight_band

    d = hamming(bits, bits)[np.triu_indices(len(bits), 1)].astype(np.int64)
    t = np.arange(n + 1)
    band = fit_weight_band([d], n, TARGET)
    fitted, binomial = np.array([band.chance(int(x), n) for x in t]), stats.binom.cdf(t, n, 0.5)
    binom_ok = np.flatnonzero(binomial <= TARGET)
    counts = np.searchsorted(np.sort(d), t, side="right")
    return {"pairs": int(len(d)), "mean": float(d.mean()), "std": float(d.std(ddof=1)),
            "min": int(d.min()), "max": int(d.max()), "q001": float(np.quantile(d, 0.001)),
            "dispersion": float(d.var(ddof=1) / (n * 0.25)),  # variance over Bin(n, 1/2)'s
            "fit": {"alpha": band.alpha, "beta": band.beta},
            "t_fit": band.same_model if band.same_model >= 0 else None,
            "t_binom": int(binom_ok[-1]) if len(binom_ok) else None,
            "count_le": counts.tolist(), "tail_binom": binomial.tolist(), "tail_fit": fitted.tolist()}


# ----------------------------------------------------------------------------- the run

def run_arch(arch: str, inits: int, parents: int, cache: Cache, tune: bool) -> dict:
    from tqdm import tqdm

    from hnn_jax import weightcode

    t0 = time.time()
    nulls = []
    for seed in tqdm(range(inits), desc=f"{arch} null", file=sys.stderr):
        nulls.append(cache.get(f"{arch}-s{seed}", lambda seed=seed: convert(to_onnx(*make_model(arch, seed))))[0])
    counts = sorted({weightcode.parameter_count(g) for g in nulls})
    null_seconds = time.time() - t0
    null = {str(w): null_stats(weightcode.weight_bits(nulls, w), w) for w in LENGTHS}

    t0 = time.time()
    rows, errors, tune_seconds = [], {}, []
    kinds = [k for k in KINDS if tune or k != "tune500"]
    for i in tqdm(range(parents), desc=f"{arch} derivatives", file=sys.stderr):
        seed = PARENT_SEED + i
        state = {}

        def parent(seed=seed, state=state):
            if "model" not in state:
                state["model"], state["example"] = make_model(arch, seed)
                state["proto"] = to_onnx(state["model"], state["example"])
            return state

        base = cache.get(f"{arch}-p{seed}", lambda parent=parent: convert(parent()["proto"]))[0]
        for kind in kinds:
            if (kind == "tune500" and arch not in TUNED_ARCHS) or (kind == "dynamo" and arch in ("gpt2", "llama")):
                continue
            name = f"{arch}-p{seed}-{kind}"

            def make(kind=kind, parent=parent, seed=seed):
                p = parent()
                return convert(derivative(arch, kind, p["model"], p["example"], p["proto"], seed))

            try:
                graph, seconds = cache.get(name, make)
                if kind == "tune500" and seconds is not None:
                    tune_seconds.append(seconds)
            except Exception as e:  # noqa: BLE001 - an exporter or quantizer refusing a model is a result
                errors[kind] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                continue
            row = {"parent": seed, "kind": kind, "tensors_parent": weightcode.parameter_count(base),
                   "tensors": weightcode.parameter_count(graph)}
            for w in LENGTHS:
                b = weightcode.weight_bits([base, graph], w)
                row[f"d{w}"] = int(np.count_nonzero(b[0] != b[1]))
            rows.append(row)
    return {"inits": inits, "parameter_count": counts[0] if len(counts) == 1 else counts,
            "null_seconds": null_seconds, "derivative_seconds": time.time() - t0,
            "tune_seconds": tune_seconds, "null": null, "derivatives": rows, "errors": errors}


def thresholds(figures: dict) -> dict:
    """Per W: the worst-case fitted threshold (the largest distance every architecture's fit keeps
    at or below TARGET, as hashcode.fit_weight_band sets it), the binomial one, each
    architecture's, and the band to store (the widest architecture's fit, all pairs counted)."""
    out = {}
    for w in map(str, LENGTHS):
        per = {a: f["null"][w]["t_fit"] for a, f in figures.items()}
        worst = None if not per or any(t is None for t in per.values()) else min(per.values())
        binom = next(iter(figures.values()))["null"][w]["t_binom"] if figures else None
        widest = [a for a, t in per.items() if t == worst or t is None]
        fit = figures[widest[0]]["null"][w]["fit"] if widest else None
        band = None if worst is None else {"same_model": worst, "null_alpha": fit["alpha"], "null_beta": fit["beta"],
                                           "null_pairs": sum(f["null"][w]["pairs"] for f in figures.values())}
        out[w] = {"t_fit": worst, "t_binom": binom, "per_arch": per, "worst_arch": widest, "band": band}
    return out


def save_bands(limits: dict, hasher_dir: Path) -> list[int]:
    """Store the measured weight bands of the lengths the hasher makes in its checkpoint's
    hasher.json, beside the architecture bands `hnn-jax eval --save-thresholds` measured; returns
    the weight lengths stored."""
    from hnn_jax import checkpoint
    from hnn_jax.hashcode import Bands, WeightBand

    meta = checkpoint.read_meta(hasher_dir)
    if meta["relations"] is None:
        raise SystemExit(f"{hasher_dir} has no architecture bands yet: run `hnn-jax eval ZOO --hasher "
                         f"{hasher_dir} --save-thresholds` first")
    config = meta["config"]
    made = {n - config.learned_bits for n in (16, 32, 64, 128, 256) if n >= config.bits and config.instance_bits}
    weights = {int(w): WeightBand.from_json(x["band"]) for w, x in limits.items()
               if x["band"] is not None and int(w) in made}  # the lengths this hasher makes
    checkpoint.write_relations(hasher_dir, Bands(meta["relations"].architecture, weights))
    return sorted(weights)


def recall(figures: dict, limits: dict) -> dict:
    """{kind: {W: {"n", "fit", "binom"}}}: share of derivatives within t*(W) of their parent, all
    architectures pooled (per architecture in the tables)."""
    out = {}
    for kind in KINDS:
        rows = [r for f in figures.values() for r in f["derivatives"] if r["kind"] == kind]
        if not rows:
            continue
        out[kind] = {}
        for w in map(str, LENGTHS):
            d = np.array([r[f"d{w}"] for r in rows])
            out[kind][w] = {"n": len(rows), **{
                name: None if limits[w][name] is None else float(np.mean(d <= limits[w][name]))
                for name in ("t_fit", "t_binom")}}
    return out


# ----------------------------------------------------------------------------- report

def fmt(x, digits=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x == 0:
        return "0"
    if isinstance(x, float) and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.1e}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report(figures: dict, limits: dict, recalls: dict, args, seconds: float) -> str:
    lines = ["# Null distribution of the weight part (benchmarks/bench_null.py)", "",
             f"N = {args.inits} independent initialisations per architecture, {args.parents} parents with "
             f"derivatives; target false-match rate {TARGET:g} per pair; {seconds / 60:.1f} min "
             "(conversions cached).", "",
             "## Null: all pairs of independent initialisations", "",
             "dispersion: the distances' variance over Bin(W, 1/2)'s. t* (arch): the largest t whose fitted "
             "tail is <= 1e-6 for this architecture; count: pairs <= that t.", "",
             "| arch | tensors | W | pairs | mean | std | dispersion | min | 0.1% | alpha | beta | "
             "t* (arch) | fitted tail at t* | count <= t* |", "|---" * 14 + "|"]
    for arch, f in figures.items():
        for w in map(str, LENGTHS):
            s = f["null"][w]
            t = s["t_fit"]
            lines.append(
                f"| {arch} | {f['parameter_count']} | {w} | {s['pairs']:,} | {s['mean']:.2f} | {s['std']:.2f} | "
                f"{s['dispersion']:.2f} | {s['min']} | {s['q001']:.1f} | "
                f"{fmt(s['fit']['alpha'], 1)} | {fmt(s['fit']['beta'], 1)} | {fmt(t)} | "
                f"{fmt(None if t is None else s['tail_fit'][t])} | {'-' if t is None else s['count_le'][t]} |")
    lines += ["", "## Thresholds", "",
              "t* fitted: the largest t at which every architecture's fitted tail is <= 1e-6 (worst case); "
              "t* binomial: the same for P(Bin(W, 1/2) <= t). '-': no t qualifies (even t = 0 is above 1e-6).", "",
              "| W | code bits | t* fitted | set by | t* binomial | P(Bin <= t* binomial) | " +
              " | ".join(f"{a} t*" for a in figures) + " |", "|---" * (6 + len(figures)) + "|"]
    first = next(iter(figures.values()))
    for w in map(str, LENGTHS):
        lim, tb = limits[w], limits[w]["t_binom"]
        lines.append(f"| {w} | {int(w) + ARCH_BITS} | {fmt(lim['t_fit'])} | {', '.join(lim['worst_arch'])} | "
                     f"{fmt(tb)} | {fmt(None if tb is None else first['null'][w]['tail_binom'][tb])} | "
                     + " | ".join(fmt(lim["per_arch"][a]) for a in figures) + " |")
    for w in map(str, LENGTHS):
        cands = set()
        for t in [limits[w]["t_binom"], *limits[w]["per_arch"].values()]:
            if t is not None:
                cands.update({t, t + 1})
        cands = sorted(c for c in cands if c <= int(w)) or [0, 1]
        lines += ["", f"W = {w}: at candidate thresholds t, per architecture: pairs <= t (empirical) / fitted "
                      "tail; and the binomial tail", "",
                  "| t | P(Bin <= t) | " + " | ".join(figures) + " |", "|---" * (2 + len(figures)) + "|"]
        for t in cands:
            lines.append(f"| {t} | {fmt(first['null'][w]['tail_binom'][t])} | " + " | ".join(
                f"{f['null'][w]['count_le'][t]} / {fmt(f['null'][w]['tail_fit'][t])}" for f in figures.values())
                + " |")
    lines += ["", "## Derivatives: distance to the parent and recall at t*", "",
              "Per W: mean / max distance to the parent, and the share within t* fitted (within t* binomial). "
              "tensors: weightcode.parameter_count, parent -> derivative.", "",
              "| arch | kind | n | tensors | " + " | ".join(f"W={w}: mean / max | recall@t* (binom)" for w in LENGTHS)
              + " |", "|---" * (4 + 2 * len(LENGTHS)) + "|"]
    for arch, f in figures.items():
        for kind in KINDS:
            rows = [r for r in f["derivatives"] if r["kind"] == kind]
            if not rows:
                if kind in f["errors"]:
                    lines.append(f"| {arch} | {kind} | 0 | failed: {f['errors'][kind][:80]} |"
                                 + " |" * (2 * len(LENGTHS)))
                continue
            tensors = sorted({f"{r['tensors_parent']}->{r['tensors']}" for r in rows})
            cells = []
            for w in map(str, LENGTHS):
                d = np.array([r[f"d{w}"] for r in rows])
                rec = [None if limits[w][k] is None else float(np.mean(d <= limits[w][k]))
                       for k in ("t_fit", "t_binom")]
                cells += [f"{d.mean():.1f} / {d.max()}", f"{fmt(rec[0])} ({fmt(rec[1])})"]
            lines.append(f"| {arch} | {kind} | {len(rows)} | {', '.join(tensors)} | " + " | ".join(cells) + " |")
    lines += ["", "Recall at t* fitted (t* binomial), all architectures pooled:", "",
              "| kind | n | " + " | ".join(f"W={w} (t*={fmt(limits[str(w)]['t_fit'])}/{fmt(limits[str(w)]['t_binom'])})"
                                           for w in LENGTHS) + " |", "|---" * (2 + len(LENGTHS)) + "|"]
    for kind, per in recalls.items():
        n = next(iter(per.values()))["n"]
        lines.append(f"| {kind} | {n} | " + " | ".join(f"{fmt(per[str(w)]['t_fit'])} ({fmt(per[str(w)]['t_binom'])})"
                                                   for w in LENGTHS) + " |")
    notes = [f"- {arch}: a 500-step fine-tune took {np.mean(f['tune_seconds']):.1f} s (with export and conversion)"
             for arch, f in figures.items() if f["tune_seconds"]]
    notes += [f"- {arch}: {kind} failed: {err}" for arch, f in figures.items() for kind, err in f["errors"].items()]
    notes += ["- gpt2, llama: no dynamo derivative: hf.transformers_to_onnx already exports them with dynamo "
              "(TorchScript tracing fails for transformers 5's decoders)",
              f"- tune500 only for {', '.join(TUNED_ARCHS)}"]
    return "\n".join(lines + ["", "Notes:", *notes, ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inits", type=int, default=None, help=f"independent initialisations (default {INITS})")
    parser.add_argument("--parents", type=int, default=None, help=f"parents with derivatives (default {PARENTS})")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--inits-for", default="",
                        help="per-architecture N overriding --inits, e.g. 'gpt2=60,llama=60'")
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 20, 2 parents")
    parser.add_argument("--no-tune", action="store_true", help="skip the 500-step fine-tunes")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hnn-jax" / "bench_null")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "null")
    parser.add_argument("--save-thresholds", type=Path, nargs="?", const=ROOT / "hnn_jax" / "weights" / "default",
                        metavar="HASHER_DIR", help="store the weight bands in a hasher checkpoint's hasher.json "
                        "(default: the shipped one); every length with a threshold is stored")
    args = parser.parse_args(argv)
    args.inits = args.inits or (20 if args.quick else INITS)
    args.parents = args.parents if args.parents is not None else (2 if args.quick else PARENTS)
    per_arch = {k: int(v) for k, v in (s.split("=") for s in args.inits_for.split(",") if s)}

    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    started = time.time()
    cache = Cache(None if args.no_cache else args.cache)
    figures = {}
    for arch in args.archs.split(","):
        figures[arch] = run_arch(arch, per_arch.get(arch, args.inits), args.parents, cache, not args.no_tune)
    limits = thresholds(figures)
    recalls = recall(figures, limits)
    seconds = time.time() - started
    text = report(figures, limits, recalls, args, seconds)
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "null.md").write_text(text)
    meta = {"inits": args.inits, "inits_for": per_arch, "parents": args.parents, "lengths": LENGTHS,
            "arch_bits": ARCH_BITS, "target": TARGET, "seconds": seconds, "cache_key": cache_key(),
            "quick": args.quick}
    (args.out / "null.json").write_text(json.dumps({"meta": meta, "thresholds": limits, "recall": recalls,
                                                    "archs": figures}, indent=1) + "\n")
    if args.save_thresholds:
        stored = save_bands(limits, args.save_thresholds)
        print(f"weight bands for {', '.join(map(str, stored))}-bit weight parts saved in "
              f"{args.save_thresholds}/hasher.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
