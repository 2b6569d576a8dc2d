"""Conversion cost per stage for torch models of 50 to 1,000+ canonical nodes.

Each model runs in a fresh subprocess (so peak RSS is its own); timings are medians of --repeat
runs. Target (issue 2): total within 2x of the export alone for models of a few million params.

    python benchmarks/bench_convert.py [--repeat 3] [--dynamo]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

MODELS = ["resnet_like", "transformer_6x256", "mlp_300x128", "transformer_48x128"]


def build(name):
    import torch
    from torch import nn

    import models

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
        layers = [nn.Linear(128, 128)]
        for _ in range(299):
            layers += [nn.ReLU(), nn.Linear(128, 128)]
        return nn.Sequential(*layers).eval(), torch.randn(1, 128)
    raise ValueError(name)


def measure(name: str, repeat: int, dynamo: bool) -> dict:
    warnings.simplefilter("ignore")
    from hnn_jax.converters import export
    from hnn_jax.converters.canonical import canonicalize
    from hnn_jax.converters.features import to_graphs_tuple
    from hnn_jax.converters.probe import run_probe

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dynamo", action="store_true", help="use the dynamo exporter")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeat, args.dynamo)))
        return
    print(f"exporter: {'dynamo' if args.dynamo else 'torchscript'}; medians of {args.repeat} runs; seconds")
    header = f"{'model':<20}{'params':>10}{'onnx':>6}{'nodes':>6}{'export':>8}{'canon':>8}{'probe':>8}{'feat':>8}{'total':>8}{'tot/exp':>8}{'peakMB':>8}"
    print(header)
    print("-" * len(header))
    for name in MODELS:
        cmd = [sys.executable, __file__, "--one", name, "--repeat", str(args.repeat)] + (["--dynamo"] if args.dynamo else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{name:<20} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['model']:<20}{r['params'] / 1e6:>9.2f}M{r['onnx_nodes']:>6}{r['nodes']:>6}{r['export']:>8.3f}"
              f"{r['canonical']:>8.3f}{r['probe']:>8.3f}{r['features']:>8.3f}{r['total']:>8.3f}"
              f"{r['total'] / r['export']:>8.2f}{r['peak_rss_mb']:>8.0f}")


if __name__ == "__main__":
    main()
