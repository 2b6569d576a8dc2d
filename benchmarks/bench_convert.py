"""Conversion cost per stage for torch models of 50 to 1,000+ canonical nodes.

Each model runs in a fresh subprocess (so peak RSS is its own); timings are medians of --repeat
runs. Targets (issue 15, every model): conversion after export (canonical + probe + features,
`conv/exp`) <= 1x the export time, and the total (`tot/exp`) <= 2x the export.

The transformer-era models (issue 15) are built with `transformers` from their configs' defaults,
random weights (torch.manual_seed(0)), eval mode, nothing downloaded; each is wrapped to take one
tensor positionally and return its last_hidden_state (no pooler).

    python benchmarks/bench_convert.py [--repeat 3] [--dynamo] [--models vit_b16,swin_t] [--list]
    python benchmarks/bench_convert.py --scaling [--repeat 3]   # canonicalize alone against depth
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings


SMALL = ["resnet_like", "transformer_6x256", "mlp_300x128", "transformer_48x128"]
HF = {  # name -> what it is (issue 15's transformer-era models)
    "vit_b16": "ViT-B/16 at 224 (ViTConfig() defaults, eager attention)",
    "swin_t": "Swin-T at 224 (SwinConfig() defaults: embed_dim 96, depths 2,2,6,2)",
    "convnext_t": "ConvNeXt-T at 224 (ConvNextConfig() defaults)",
    "mobilevit_s": "MobileViT-S at 256 (MobileViTConfig() defaults)",
    "wav2vec2_base": "wav2vec2-base on 1 s of 16 kHz audio (Wav2Vec2Config() defaults, eager attention)",
    "decoder_24x512": "Llama-shaped decoder (LlamaModel): 24 layers, hidden 512, MLP 1376, 8 heads, "
                      "vocab 32000, input_ids [1, 128], use_cache=False, eager attention",
}
MODELS = SMALL + list(HF)


def build_hf(name):
    """A transformers base model from its config (random init, no downloads), wrapped so that the
    exporter sees one positional tensor in and one tensor (last_hidden_state) out."""
    import torch
    import transformers as tr
    from torch import nn

    class Positional(nn.Module):
        def __init__(self, model, key, **extra):
            super().__init__()
            self.model, self.key, self.extra = model, key, extra

        def forward(self, x):
            kwargs = {self.key: x, "return_dict": False, **self.extra}
            if self.key == "input_ids":  # an explicit all-ones mask: without one, transformers looks
                kwargs["attention_mask"] = torch.ones_like(x)  # for packed sequences with aten::diff (no ONNX export)
            return self.model(**kwargs)[0]

    torch.manual_seed(0)
    image = torch.randn(1, 3, 224, 224)
    if name == "vit_b16":
        model = tr.ViTModel(tr.ViTConfig(attn_implementation="eager"), add_pooling_layer=False)
        x, key = image, "pixel_values"
    elif name == "swin_t":
        model = tr.SwinModel(tr.SwinConfig(attn_implementation="eager"), add_pooling_layer=False)
        x, key = image, "pixel_values"
    elif name == "convnext_t":
        model, x, key = tr.ConvNextModel(tr.ConvNextConfig()), image, "pixel_values"
    elif name == "mobilevit_s":
        model, x, key = tr.MobileViTModel(tr.MobileViTConfig()), torch.randn(1, 3, 256, 256), "pixel_values"
    elif name == "wav2vec2_base":
        model = tr.Wav2Vec2Model(tr.Wav2Vec2Config(attn_implementation="eager"))
        x, key = torch.randn(1, 16000), "input_values"
    elif name == "decoder_24x512":
        config = tr.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=24,
                                num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                                use_cache=False, attn_implementation="eager")
        model, x, key = tr.LlamaModel(config), torch.randint(0, 32000, (1, 128)), "input_ids"
    else:
        raise ValueError(name)
    extra = {"use_cache": False} if key == "input_ids" else {}
    return Positional(model.eval(), key, **extra).eval(), x


def canonicalize_fn():
    """hnn_jax.converters.canonical.canonicalize, whether `canonical` is a module or a package
    (issue 15 splits it); if the package does not re-export it, the submodule that defines it."""
    import importlib
    import pkgutil

    canonical = importlib.import_module("hnn_jax.converters.canonical")
    if hasattr(canonical, "canonicalize"):
        return canonical.canonicalize
    for info in pkgutil.iter_modules(getattr(canonical, "__path__", [])):
        module = importlib.import_module(f"{canonical.__name__}.{info.name}")
        if hasattr(module, "canonicalize"):
            return module.canonicalize
    raise ImportError("no canonicalize in hnn_jax.converters.canonical")


def build(name):
    import torch
    from torch import nn

    from hnn_jax.testing import models

    if name in HF:
        return build_hf(name)
    torch.manual_seed(0)
    if name == "resnet_like":
        def block(cin, cout, stride):
            return nn.ModuleDict(dict(
                c1=nn.Conv2d(cin, cout, 3, stride, 1, bias=False), b1=nn.BatchNorm2d(cout),
                c2=nn.Conv2d(cout, cout, 3, 1, 1, bias=False), b2=nn.BatchNorm2d(cout),
                skip=nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else nn.Identity()))

        class ResNetLike(nn.Module):
            def __init__(self, w=40):
                super().__init__()
                self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
                widths = [w, w, 2 * w, 2 * w, 4 * w, 4 * w, 8 * w, 8 * w]
                self.blocks = nn.ModuleList(block(a, b, 2 if a != b else 1) for a, b in zip([w] + widths[:-1], widths))
                self.fc = nn.Linear(8 * w, 1000)

            def forward(self, x):
                x = self.stem(x)
                for b in self.blocks:
                    x = torch.relu(b["b2"](b["c2"](torch.relu(b["b1"](b["c1"](x))))) + b["skip"](x))
                return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

        return ResNetLike().eval(), torch.randn(1, 3, 224, 224)
    if name == "transformer_6x256":
        return models.torch_transformer(0, layers=6, d_model=256, seq=64)
    if name == "transformer_48x128":
        return models.torch_transformer(0, layers=48, d_model=128, seq=64)
    if name == "mlp_300x128":
        return mlp(300)
    raise ValueError(name)


def measure(name: str, repeat: int, dynamo: bool) -> dict:
    warnings.simplefilter("ignore")
    from hnn_jax.converters import export
    from hnn_jax.converters.features import to_graphs_tuple
    from hnn_jax.converters.probe import run_probe

    canonicalize = canonicalize_fn()
    model, x = build(name)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for _ in range(repeat + 1):  # the first run warms imports and caches and is dropped
        t0 = time.perf_counter()
        proto = export.torch_to_onnx(model, x, dynamo=dynamo)
        t1 = time.perf_counter()
        graph = canonicalize(proto)
        t2 = time.perf_counter()
        result = run_probe(graph.model, [n.tensor for n in graph.nodes])
        t3 = time.perf_counter()
        g = to_graphs_tuple(graph, result)
        t4 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
    med = [statistics.median(col) for col in zip(*rows[1:])]
    return dict(model=name, params=params, onnx_nodes=len(proto.graph.node), nodes=int(g.n_node[0]),
                export=med[0], canonical=med[1], probe=med[2], features=med[3], total=med[4],
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


SCALING = {  # family -> (label, [(depth, builder)]): the same architecture at growing depth
    "transformer": ("models.torch_transformer(d_model=128, seq=64), layers",
                    [(L, lambda L=L: __import__("models").torch_transformer(0, layers=L, d_model=128, seq=64))
                     for L in (6, 12, 24, 48, 96)]),
    "mlp": ("Linear(128,128)+ReLU MLP, layers",
            [(L, lambda L=L: mlp(L)) for L in (100, 200, 400, 800, 1600)]),
}


def mlp(layers, width=128):
    import torch
    from torch import nn

    torch.manual_seed(0)
    stack = [nn.Linear(width, width)]
    for _ in range(layers - 1):
        stack += [nn.ReLU(), nn.Linear(width, width)]
    return nn.Sequential(*stack).eval(), torch.randn(1, width)


def fit_exponent(nodes, seconds):
    """Least-squares slope of log(seconds) against log(nodes): 1 is linear, 2 quadratic."""
    import math

    if len(nodes) < 2:
        return float("nan")
    xs, ys = [math.log(n) for n in nodes], [math.log(max(t, 1e-9)) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def scaling(repeat: int, dynamo: bool, limit: float):
    """canonicalize alone (export untimed) at growing depth; median of `repeat` runs after one
    dropped warm-up run. A family stops growing once one run takes over `limit` seconds."""
    warnings.simplefilter("ignore")
    from hnn_jax.converters import export

    canonicalize = canonicalize_fn()
    print(f"canonicalize alone; exporter: {'dynamo' if dynamo else 'torchscript'}; medians of {repeat} runs; "
          "target: no pass above O(n log n), i.e. a fitted exponent near 1")
    for family, (label, points) in SCALING.items():
        print(f"\n{family}: {label}")
        header = f"{'depth':>6}{'onnx':>8}{'nodes':>8}{'export':>9}{'canon s':>10}{'s/1k nodes':>12}{'local exp':>11}"
        print(header)
        print("-" * len(header))
        ns, ts = [], []
        for depth, make in points:
            model, x = make()
            t0 = time.perf_counter()
            proto = export.torch_to_onnx(model, x, dynamo=dynamo)
            exported = time.perf_counter() - t0
            runs, nodes = [], 0
            for _ in range(repeat + 1):
                t0 = time.perf_counter()
                graph = canonicalize(proto)
                runs.append(time.perf_counter() - t0)
                nodes = len(graph.nodes)
                if runs[-1] > limit:
                    break
            t = statistics.median(runs[1:] or runs)
            local = fit_exponent(ns[-1:] + [nodes], ts[-1:] + [t]) if ns else float("nan")
            ns.append(nodes)
            ts.append(t)
            print(f"{depth:>6}{len(proto.graph.node):>8}{nodes:>8}{exported:>9.2f}{t:>10.3f}{1000 * t / nodes:>12.3f}"
                  f"{local:>11.2f}", flush=True)
            if max(runs) > limit:
                print(f"  (a run took over {limit:.0f} s: larger depths skipped)")
                break
        print(f"fitted exponent (slope of log time vs log nodes): {fit_exponent(ns, ts):.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dynamo", action="store_true", help="use the dynamo exporter")
    parser.add_argument("--models", help="comma-separated subset of the models (see --list)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model's subprocess (default 1800)")
    parser.add_argument("--scaling", action="store_true",
                        help="time canonicalize alone on the same architectures at growing depth, and fit an exponent")
    parser.add_argument("--scaling-limit", type=float, default=300,
                        help="with --scaling: stop deepening a family after a run over this many seconds")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list:
        for name in MODELS:
            print(f"{name:<20}{HF.get(name, 'built in this file or hnn_jax/testing/models.py')}")
        return
    if args.one:
        print(json.dumps(measure(args.one, args.repeat, args.dynamo)))
        return
    if args.scaling:
        scaling(args.repeat, args.dynamo, args.scaling_limit)
        return
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else MODELS
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; --list shows them")
    print(f"exporter: {'dynamo' if args.dynamo else 'torchscript'}; medians of {args.repeat} runs; seconds; "
          "targets: conv/exp <= 1, tot/exp <= 2")
    header = (f"{'model':<20}{'params':>10}{'onnx':>6}{'nodes':>6}{'export':>8}{'canon':>8}{'probe':>8}{'feat':>8}"
              f"{'total':>8}{'conv/exp':>9}{'tot/exp':>8}{'peakMB':>8}")
    print(header)
    print("-" * len(header), flush=True)
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--repeat", str(args.repeat)]
        cmd += ["--dynamo"] if args.dynamo else []
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{name:<20} timed out after {args.timeout:.0f} s", flush=True)
            continue
        if out.returncode:
            lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
            print(f"{name:<20} failed: {lines[-1]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        conversion = r["canonical"] + r["probe"] + r["features"]
        print(f"{r['model']:<20}{r['params'] / 1e6:>9.2f}M{r['onnx_nodes']:>6}{r['nodes']:>6}{r['export']:>8.3f}"
              f"{r['canonical']:>8.3f}{r['probe']:>8.3f}{r['features']:>8.3f}{r['total']:>8.3f}"
              f"{conversion / r['export']:>9.2f}{r['total'] / r['export']:>8.2f}{r['peak_rss_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
