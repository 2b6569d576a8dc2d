"""Building a zoo: each parent exported once, its derivatives made from it, every graph
converted and written (store.py); parents in parallel processes, resumable; and the
`hnn-jax zoo build|info` command."""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

from hnn_jax.errors import HNNError, first_line

from hnn_jax.training.zoo.sources import generated_model, transformers_model
from hnn_jax.training.zoo.splits import Parent, plan, timm_choice
from hnn_jax.training.zoo.store import read_manifest, save_graph


def _torch_parent(parent: Parent):
    import torch

    torch.manual_seed(parent.seed)
    if parent.source == "generated":
        model, x = generated_model(parent.family, parent.spec)
    elif parent.source in ("timm", "twins"):
        import timm

        model = timm.create_model(parent.spec.get("timm", parent.arch), pretrained=False)
        size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
        x = torch.randn(1, *size)
    elif parent.source == "transformers":
        return transformers_model(parent.family, tuple(parent.spec["size"]), parent.seed)
    elif parent.source == "torchvision":
        import torchvision

        model = getattr(torchvision.models, parent.arch)(weights=None)
        size = 299 if parent.arch == "inception_v3" else 224
        x = torch.randn(1, 3, size, size)
    else:
        raise ValueError(parent.source)
    return model.eval(), x


def finetune(model, x, steps: int = 5, lr: float = 1e-4, seed: int = 0):
    """A copy of the model after a few real Adam steps on synthetic data (derivatives.synthetic_batch),
    its first output regressed on noise: the mildest fine-tune (derivatives.tune_new_head is a real one)."""
    import copy

    import torch

    from hnn_jax.training.derivatives import synthetic_batch, vocab_size

    tuned = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    vocab = vocab_size(model)
    for _ in range(steps):
        inputs = synthetic_batch(x, g, 4, vocab)
        out = tuned(**inputs)[0] if isinstance(x, dict) else tuned(inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = torch.nn.functional.mse_loss(out, torch.randn(out.shape, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


def keras_parent(parent: Parent):
    import keras

    keras.utils.set_random_seed(parent.seed)
    model = getattr(keras.applications, parent.arch)(weights=None)
    if None in model.input_shape[1:3]:  # MobileNetV3 leaves its image size open: build it at the
        # 224 x 224 its torchvision and timm twins are exported at, not the converter's default 32
        keras.utils.set_random_seed(parent.seed)
        model = getattr(keras.applications, parent.arch)(weights=None, input_shape=(224, 224, 3))
    return model


def _variant_models(parent: Parent):
    """Yield (transform, onnx.ModelProto, error) for every derivative of the parent, original
    first; a derivative that cannot be made yields its error instead of stopping the others."""
    from hnn_jax.training import variants
    from hnn_jax.converters import export, hf

    if parent.source == "keras":
        model = keras_parent(parent)
        original = export.keras_to_onnx(model)
        torch_model = None
    elif parent.source == "transformers":
        torch_model, x = _torch_parent(parent)
        original = hf.transformers_to_onnx(torch_model)
    else:
        torch_model, x = _torch_parent(parent)
        original = export.torch_to_onnx(torch_model, x)
    makers = {
        "original": lambda: original,
        "fp16": lambda: variants.fp16_weights(original),
        "int8": lambda: variants.int8_dynamic(original),
        "noise": lambda: variants.perturb(original, 0.01, seed=parent.seed),
    }
    if torch_model is not None:
        from hnn_jax.training import derivatives

        def torch_export(model):
            return (hf.transformers_to_onnx(model) if parent.source == "transformers"
                    else export.torch_to_onnx(model, x))
        makers["finetune"] = lambda: torch_export(finetune(torch_model, x, seed=parent.seed))
        makers["tune"] = lambda: torch_export(derivatives.tune_new_head(torch_model, x, seed=parent.seed))
        makers["lora"] = lambda: torch_export(derivatives.lora_merge(torch_model, x, seed=parent.seed))
    if torch_model is not None and parent.source != "transformers":
        makers["dynamo"] = lambda: export.torch_to_onnx(torch_model, x, dynamo=True)
    for t in parent.transforms:
        if t.startswith("prune"):
            make = lambda t=t: variants.prune(original, int(t[5:]) / 100)  # noqa: E731
        elif t.startswith("opset") and parent.source == "keras":
            make = lambda t=t: export.keras_to_onnx(model, opset=int(t[5:]))  # noqa: E731
        elif t in makers:
            make = makers[t]
        else:
            raise ValueError(f"transform {t!r} does not apply to {parent.source} models")
        try:
            yield t, make(), None
        except Exception as e:  # noqa: BLE001 - e.g. quantize_dynamic on an op it does not know
            yield t, None, e


def _error_row(parent: Parent, transform: str, error: BaseException) -> dict:
    trace = "".join(traceback.format_exception(error, limit=3))
    return dict(error=f"{type(error).__name__}: {first_line(error)}",
                parent=parent.name, transform=transform, trace=trace)


def _build_parent(parent: Parent, out_dir: str) -> tuple[list[dict], list[dict]]:
    """Worker: export, derive and convert one parent; return (manifest rows, error rows). A
    derivative that fails leaves the parent without it (an error row; retried on resume); an
    original that fails leaves no rows. The exporters' warnings are ignored for this parent only
    (workers=1 runs in-process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from hnn_jax import converters, schema

    graphs_dir = Path(out_dir) / "graphs"
    rows, errors = [], []
    transform = "original"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for transform, proto, error in _variant_models(parent):
                try:  # made or converted, a derivative that fails is one error row
                    if error is not None:
                        raise error
                    graph = converters.from_onnx(proto)
                    gid = parent.graph_id(transform)
                    save_graph(graphs_dir / f"{gid}.npz", graph)
                except Exception as e:  # the original's failure is the parent's (below)
                    if transform == "original":
                        raise
                    errors.append(_error_row(parent, transform, e))
                    continue
                rows.append(dict(id=gid, source=parent.source, family=parent.family, arch=parent.arch,
                                 parent=parent.name, seed=parent.seed, transform=transform,
                                 nodes=int(graph.n_node[0]), edges=int(graph.n_edge[0]),
                                 probe=float(graph.globals[0, schema.GLOBAL_PROBE])))
    except Exception as e:  # noqa: BLE001 - one broken model must not stop the zoo
        return [], [*errors, _error_row(parent, transform, e)]
    return rows, errors


def build(zoo_dir, parents: list[Parent], *, workers: int = 2, progress: bool = True) -> dict:
    """Build (or resume) a zoo in zoo_dir; returns counts of parents built whole, skipped (already
    there), incomplete (some derivatives failed; errors.jsonl says which, a resume retries them)
    and failed (nothing built)."""
    from tqdm import tqdm

    zoo_dir = Path(zoo_dir)
    (zoo_dir / "graphs").mkdir(parents=True, exist_ok=True)
    done = {row["id"] for row in read_manifest(zoo_dir)}
    todo = [p for p in parents if not all(p.graph_id(t) in done for t in p.transforms)]
    stats = dict(built=0, skipped=len(parents) - len(todo), incomplete=0, failed=0)
    (zoo_dir / "plan.json").write_text(json.dumps([asdict(p) for p in parents], indent=0))
    if not todo:
        return stats
    if workers > 1:  # spawned processes: torch and tensorflow are not fork-safe
        pool = cf.ProcessPoolExecutor(max_workers=workers,
                                      mp_context=multiprocessing.get_context("spawn"))
        results = (f.result() for f in cf.as_completed([pool.submit(_build_parent, p, str(zoo_dir)) for p in todo]))
    else:
        pool = None
        results = (_build_parent(p, str(zoo_dir)) for p in todo)
    with open(zoo_dir / "manifest.jsonl", "a") as manifest, open(zoo_dir / "errors.jsonl", "a") as errors, \
            tqdm(total=len(todo), desc="zoo", unit="model", disable=not progress, file=sys.stderr) as bar:
        for rows, failures in results:
            for row in rows:
                if row["id"] not in done:
                    manifest.write(json.dumps(row) + "\n")
            manifest.flush()
            errors.writelines(json.dumps(row) + "\n" for row in failures)
            errors.flush()
            outcome = "failed" if not rows else "incomplete" if failures else "built"
            stats[outcome] += 1
            if failures:
                bar.set_postfix_str(f"{outcome}: {failures[0]['parent']}")
            bar.update()
    if pool is not None:
        pool.shutdown()
    return stats


def add_arguments(parser) -> None:
    """`hnn-jax zoo build|info`."""
    sub = parser.add_subparsers(dest="zoo_command", required=True)
    b = sub.add_parser("build", help="build or resume a zoo", description=(
        "Build (or resume) a labelled zoo of converted graphs. Example: hnn-jax zoo build zoo/gen "
        "--sources generated --archs-per-family 8 --inits 3. timm/twins/torchvision sources need "
        "`pip install torch==2.14.1 torchvision==0.29.1 timm`; keras needs the tf extra."))
    b.add_argument("out", help="zoo folder (graphs/ and manifest.jsonl are written there)")
    b.add_argument("--sources", default="generated",
                   help="comma-separated: generated,keras,timm,twins,torchvision,transformers")
    b.add_argument("--transformers-types", help="comma-separated model types (default: zoo.TRANSFORMERS_TYPES, all)")
    b.add_argument("--transformers-sizes", help="comma-separated indices into zoo.TRANSFORMERS_SIZES "
                   "(default: all; the last is the unseen-size evaluation set, built at its own seeds)")
    b.add_argument("--archs-per-family", type=int, default=6, help="generated architectures per family")
    b.add_argument("--inits", type=int, default=3, help="independent initialisations per architecture")
    b.add_argument("--seed", type=int, default=0, help="draws the generated architectures (the training "
                   "zoo: 0; another seed gives other architectures, e.g. for validation)")
    b.add_argument("--timm-per-family", type=int, default=2,
                   help="smallest timm models per timm family (zoo.timm_family)")
    b.add_argument("--transforms", help="comma-separated derivatives (default: all that apply)")
    b.add_argument("--workers", type=int, default=2, help="parallel processes (1: in this process)")
    b.set_defaults(func=_cli_build)
    i = sub.add_parser("info", help="counts by source, family and transform")
    i.add_argument("zoo", help="zoo folder")
    i.set_defaults(func=_cli_info)


def _cli_build(args) -> int:

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    timm_models = timm_choice(args.timm_per_family) if "timm" in sources else None
    transforms = tuple(args.transforms.split(",")) if args.transforms else None
    try:
        types = args.transformers_types.split(",") if args.transformers_types else None
        sizes = [int(k) for k in args.transformers_sizes.split(",")] if args.transformers_sizes else None
        parents = plan(sources, archs_per_family=args.archs_per_family, inits=args.inits,
                       timm_models=timm_models, transforms=transforms, transformers_types=types,
                       transformers_sizes=sizes, seed=args.seed)
    except ValueError as e:
        raise HNNError(str(e)) from None
    stats = build(args.out, parents, workers=args.workers)
    print(f"{args.out}: {stats['built']} parents built, {stats['skipped']} already there, "
          f"{stats['incomplete']} built without some derivatives, {stats['failed']} failed (see errors.jsonl)")
    return 0


def _cli_info(args) -> int:
    from collections import Counter


    rows = read_manifest(args.zoo)
    if not rows:
        raise HNNError(f"{args.zoo} has no manifest.jsonl entries: not a zoo, or not built yet")
    print(f"{len(rows)} graphs, {len({r['parent'] for r in rows})} parents, "
          f"{len({r['arch'] for r in rows})} architectures, {len({r['family'] for r in rows})} families")
    for key in ("source", "family", "transform"):
        print(f"by {key}: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r[key] for r in rows).items())))
    return 0
