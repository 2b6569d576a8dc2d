"""Training recipes judged on validation data only: does a recipe tell apart the transformer types
it trains on, at a size it did not train on, and types it never saw?

Issue 17's unseen-size set (the 4th size of every trained type) is held out, so recipes are
compared here on a split carved from the training types instead (zoos built under --zoo-dir on
first use, about 10 min on 2 cores):
- train: every training type (zoo.TRANSFORMERS_TYPES less the held-out and validation types) at
  sizes 0 and 1 of zoo.TRANSFORMERS_SIZES, one initialisation, originals;
- sizes: the same types at size 2, initialisations 0 and 1 (family = model type: a query's
  relevant graph is its other initialisation, as in the held-out unseen-size set);
- types: the 12 validation types (zoo.TRANSFORMERS_VALIDATION) at sizes 0 and 1, inits 0 and 1.
No held-out type and no 4th-size graph is built or read.

Each recipe trains one network on `train` alone (transformers only: minutes, not the full
recipe's zoos) and reports family mAP of the full code and of its learned bits, on `train`
itself (fit: a type's relevant graph is its other size), `sizes` and `types`, with the pairs of
different types within 1 learned bit on `sizes`. Reference rows: the shipped weights (trained on
`train` and `sizes` among others, so not a validation figure for them), WL-subtree and
op-histogram SimHash.

    python benchmarks/bench_recipe.py                                  # every recipe, 600 steps
    python benchmarks/bench_recipe.py --recipes shipped,neighbours --steps 1200 --seeds 0,1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

RECIPES = {  # TrainConfig changes from train.shipped(); "hasher" changes go to its HasherConfig
    "shipped": {},
    "32 families per batch": {"families_per_batch": 32, "parents_per_arch": 1, "variants_per_parent": 1},
    "distinct picks": {"distinct_picks": True},
    "neighbours": {"neighbour_families": 4},
    "distinct picks + neighbours": {"distinct_picks": True, "neighbour_families": 4},
    "32 families + 16 neighbours": {"families_per_batch": 32, "neighbour_families": 16, "parents_per_arch": 1,
                                    "variants_per_parent": 1},
    "112 learned bits": {"hasher": {"bits": 128}},
    "6 layers": {"hasher": {"layers": 6}},
    "reads sizes": {"hasher": {"size_blind": False}},
    "4x steps": {"steps_factor": 4},
}
assert not any("," in name for name in RECIPES), "--recipes is comma-separated"


def zoos(root: Path) -> dict[str, Path]:
    """Build (or resume) the three zoos of the module docstring."""
    from hnn_jax.training import zoo

    trained = [t for types in zoo.TRANSFORMERS_TYPES.values() for t in types
               if t not in zoo.TRANSFORMERS_HELD_OUT and t not in zoo.TRANSFORMERS_VALIDATION]
    specs = {"train": (trained, [0, 1], 1), "sizes": (trained, [2], 2),
             "types": (sorted(zoo.TRANSFORMERS_VALIDATION), [0, 1], 2)}
    paths = {}
    for name, (types, sizes, inits) in specs.items():
        paths[name] = root / name
        parents = zoo.plan(["transformers"], inits=inits, transforms=("original",), transformers_types=types,
                           transformers_sizes=sizes)
        if len(zoo.read_manifest(paths[name])) + _failed(paths[name]) < len(parents):
            print(f"building {paths[name]} ({len(parents)} models)", file=sys.stderr)
            zoo.build(paths[name], parents, workers=2)
    return paths


def _failed(path: Path) -> int:
    errors = path / "errors.jsonl"
    return len(errors.read_text().splitlines()) if errors.exists() else 0


def figures(codes_of, paths: dict[str, Path], learned: int | None) -> dict[str, float]:
    """Family mAP (full code, learned bits) on each zoo, and close pairs of other types on `sizes`."""
    from hnn_jax.training import evaluate, zoo

    out = {}
    for name, path in paths.items():
        graphs, rows = zoo.load(path)
        bits = codes_of(graphs)
        full = evaluate.evaluate_codes(bits, rows)
        out[f"{name} full"] = full["family_map"]
        if any(r["transform"] != "original" for r in rows):
            out[f"{name} copy"] = full["copy_map"]
        if learned:
            out[f"{name} learned"] = evaluate.evaluate_codes(bits[:, :learned], rows)["family_map"]
        if name == "sizes":
            part = bits[:, :learned] if learned else bits
            out["other types within 1 bit"] = int((evaluate.relation_distances(part, rows)["other family"] <= 1).sum())
    return out


def recipe_config(name: str, steps: int, seed: int):
    from hnn_jax.training import train

    change = dict(RECIPES[name])
    factor = change.pop("steps_factor", 1)
    config = train.shipped()
    hasher = dataclasses.replace(config.hasher, **change.pop("hasher", {}))
    return dataclasses.replace(config, hasher=hasher, steps=steps * factor, seed=seed, **change)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--zoo-dir", default="zoo/recipes", help="where the three zoos are built")
    parser.add_argument("--workdir", default="runs/recipes", help="checkpoints and hashers, one folder per run")
    parser.add_argument("--cpu-devices", type=int, default=4)
    parser.add_argument("--also-train", action="append", default=[], metavar="ZOO",
                        help="another zoo to train on (e.g. the generated zoo, to see a recipe in the mix)")
    parser.add_argument("--also-eval", metavar="ZOO", help="another zoo to report family and copy mAP on "
                        "(e.g. a generated zoo built with another --seed: architectures training never saw)")
    args = parser.parse_args()
    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")

    import jax

    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from hnn_jax.training import evaluate, train
    from hnn_jax.hasher import Hasher, default_hasher

    paths = zoos(Path(args.zoo_dir))
    if args.also_eval:
        paths["extra"] = Path(args.also_eval)
    rows = []
    shipped = default_hasher()
    rows.append(("shipped weights (trained on these graphs)", "", figures(
        lambda g: evaluate.codes_of(g, shipped), paths, shipped.config.learned_bits)))
    for name in ("WL-subtree SimHash", "op-histogram SimHash"):
        rows.append((name, "", figures(lambda g, m=evaluate.BASELINES[name]: evaluate.codes_of(g, m), paths, None)))
    for recipe in args.recipes.split(","):
        for seed in map(int, args.seeds.split(",")):
            config = recipe_config(recipe, args.steps, seed)
            mix = "".join(f"+{Path(z).name}" for z in args.also_train)
            run = Path(args.workdir) / f"{recipe.replace(' ', '-')}-{config.steps}-s{seed}{mix}"
            start = time.perf_counter()
            if not (run / "hasher" / "hasher.json").exists():
                train.train([paths["train"], *args.also_train], run, config, progress=False)
            hasher = Hasher.load(run / "hasher")
            log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            res = figures(lambda g, h=hasher: evaluate.codes_of(g, h), paths, hasher.config.learned_bits)
            res["classification loss"] = log[-1]["classification"]
            rows.append((f"{recipe}, seed {seed}", f"{config.steps} / {(time.perf_counter() - start) / 60:.1f}", res))
            print(f"{rows[-1][0]}: " + json.dumps({k: round(v, 3) for k, v in res.items()}), file=sys.stderr)

    columns = ["train learned", "sizes full", "sizes learned", "other types within 1 bit", "types full",
               "types learned", "classification loss"]
    if args.also_eval:
        columns[-1:-1] = ["extra full", "extra learned", "extra copy"]
    print("\n| recipe | steps / min | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for name, steps, res in rows:
        cells = [f"{res[c]:.3f}" if isinstance(res.get(c), float) else str(res.get(c, "")) for c in columns]
        print(f"| {name} | {steps} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
