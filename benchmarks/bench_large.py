"""Large models: several GB of external data (peak memory, time) and many nodes (time).

The model (hnn_jax/testing/models.py external_data_mlp: MatMul/Gemm layers of width x width float32) is
written once to --dir. Each row runs in a fresh process; "peak extra" is the growth of the
process's peak RSS (VmHWM, reset just before the step) over what it held after warming up on a
tiny model, so imports and jit compilation are not counted. Target (issue 6): near the largest
tensor plus a fixed overhead, not the total.

The second table converts and hashes chains of N ONNX nodes (MatMul, Relu, residual Add), up to
converters.MAX_ONNX_NODES, to show the time grows about linearly and stays bounded.

    python benchmarks/bench_large.py [--layers 12] [--width 8192] [--dir /tmp/hnn_large] [--nodes 1000 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEP = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import onnx, hnn_jax
from hnn_jax.testing import models
from hnn_jax import converters

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

small = models.external_data_mlp({small!r}, 2, 64)
hnn_jax.hash(converters.from_onnx(small, max_weight_bytes=0))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
base = status("VmRSS")
start = time.perf_counter()
if {step!r} == "onnx.load":
    onnx.load({path!r})
    code = ""
else:
    code = str(hnn_jax.hash(converters.from_onnx({path!r})))
print(json.dumps(dict(seconds=time.perf_counter() - start, base=base, extra=status("VmHWM") - base, code=code)))
"""


def run(step: str, path: Path, folder: Path) -> dict:
    code = STEP.format(small=str(folder / "small"), step=step, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{step} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def chain(n: int):
    """n ONNX nodes: MatMul (8x8 weight), Relu, Add of the last two tensors, repeated."""
    import numpy as np
    from onnx import helper

    from hnn_jax.testing import models

    rng = np.random.default_rng(0)
    nodes, weights = [], []
    for i in range(n):
        if i % 3 == 0:
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
            weights.append((f"w{i}", rng.standard_normal((8, 8)).astype(np.float32)))
        elif i % 3 == 1:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"h{i + 1}"]))
        else:
            nodes.append(helper.make_node("Add", [f"h{i}", f"h{i - 1}"], [f"h{i + 1}"]))
    return models.onnx_model(nodes, [models.float_input("h0", [1, 8])], [models.float_input(f"h{n}", None)], weights)


def node_scaling(sizes: list[int]) -> None:
    import time
    import warnings

    import hnn_jax
    from hnn_jax import converters

    warnings.simplefilter("ignore")
    hnn_jax.hash(converters.from_onnx(chain(30)))  # load the hasher and compile once
    print("\n| ONNX nodes | canonical nodes | convert (s) | hash (s, incl. compile) |")
    print("|---|---|---|---|")
    for n in sizes:
        model = chain(n)
        start = time.perf_counter()
        graph = converters.from_onnx(model)
        converted = time.perf_counter()
        hnn_jax.hash(graph)
        print(f"| {n} | {int(graph.n_node[0])} | {converted - start:.1f} | {time.perf_counter() - converted:.1f} |",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hnn_large"))
    parser.add_argument("--nodes", type=int, nargs="*", default=[1000, 4000, 16000, 64000, 100000])
    args = parser.parse_args()

    from hnn_jax.testing import models

    big = args.dir / f"mlp_{args.layers}x{args.width}"
    path = big / "model.onnx"
    if not path.is_file():
        print(f"writing {args.layers * args.width ** 2 * 4 / 2**30:.1f} GiB of weights to {big} ...", flush=True)
        models.external_data_mlp(big, args.layers, args.width)
    total = (big / "weights.bin").stat().st_size
    largest = args.width ** 2 * 4
    print(f"\nexternal data {total / 2**30:.2f} GiB in {args.layers} tensors; largest tensor "
          f"{largest / 2**20:.0f} MiB\n")
    print("| step | time (s) | peak RSS extra (MiB) | extra / largest tensor | extra / total |")
    print("|---|---|---|---|---|")
    for step, label in (("hash", "from_onnx + hash (probe skipped: weights > 1 GiB)"),
                        ("onnx.load", "reference: onnx.load with external data")):
        r = run(step, path, args.dir)
        print(f"| {label} | {r['seconds']:.1f} | {r['extra'] / 2**20:.0f} | {r['extra'] / largest:.2f} | "
              f"{r['extra'] / total:.2f} |", flush=True)
        if r["code"]:
            print(f"\ncode: {r['code']}\n")
    node_scaling(args.nodes)


if __name__ == "__main__":
    main()
