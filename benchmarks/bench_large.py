"""Hashing an ONNX model with several GB of external data: peak memory and time.

The model (tests/models.py external_data_mlp: MatMul/Gemm layers of width x width float32) is
written once to --dir. Each row runs in a fresh process; "peak extra" is the growth of the
process's peak RSS (VmHWM, reset just before the step) over what it held after warming up on a
tiny model, so imports and jit compilation are not counted. Target (issue 6): near the largest
tensor plus a fixed overhead, not the total.

    python benchmarks/bench_large.py [--layers 12] [--width 8192] [--dir /tmp/hnn_large]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

STEP = r"""
import json, sys, time, warnings
sys.path.insert(0, {tests!r})
warnings.simplefilter("ignore")
import onnx, models, hnn_jax
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
    code = STEP.format(tests=str(ROOT / "tests"), small=str(folder / "small"), step=step, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{step} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hnn_large"))
    args = parser.parse_args()

    import models

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


if __name__ == "__main__":
    main()
