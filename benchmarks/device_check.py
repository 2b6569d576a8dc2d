"""Device check, one prepared script for a lent accelerator: the jit path on the default backend
(GPU/TPU when there is one), agreement of its codes with the CPU's bit for bit, and throughput.

    python benchmarks/device_check.py [--graphs 256] [--zoo DIR ...] [--runs 5]

Codes of the bundled example models, synthetic graphs and any zoo folders, on the CPU and on the
default backend, compared bit for bit; throughput at batch 256 and 4,096. Prints one table.
Exit status 1 if any code differs between the backends.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np


from hnn_jax.hasher import default_hasher
from hnn_jax.testing.synthetic import mixed_sizes


def cpu_values(cpu, graphs) -> np.ndarray:
    """The shipped hasher's pre-sign values for `graphs` on the CPU: the reference codes are
    their signs (0 counts as 1), and their sizes say how near zero a bit that flips lay."""
    with jax.default_device(cpu):
        return default_hasher().embed(graphs)


def _flip_margins(values: np.ndarray, codes) -> list[float]:
    """For every bit where `codes` differ from the CPU's: its CPU pre-sign value relative to
    that bit's median magnitude."""
    magnitude = np.abs(values)
    scale = np.maximum(np.median(magnitude, axis=0), 1e-12)
    return [float(magnitude[i, j] / scale[j]) for i, code in enumerate(codes)
            for j in np.flatnonzero(code != (values[i] >= 0))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--zoo", nargs="*", default=[], help="zoo folders whose graphs are compared too")
    args = parser.parse_args()
    from hnn_jax import converters
    from hnn_jax.training import zoo

    examples = Path(__file__).resolve().parents[1] / "hnn_jax" / "examples"
    graphs = [converters.from_file(p) for p in sorted(examples.glob("*.onnx"))]
    graphs += mixed_sizes(args.graphs, seed=0) + [g for folder in args.zoo for g in zoo.load(folder)[0]]
    big = mixed_sizes(4096, seed=1)
    cpu, accel = jax.devices("cpu")[0], jax.devices()[0]
    print(f"jax {jax.__version__}; default backend {jax.default_backend()} ({accel.device_kind}); "
          f"{len(graphs)} graphs: the bundled examples, {args.graphs} synthetic ones of 5-700 nodes, "
          f"{len(args.zoo)} zoo folders")

    values = cpu_values(cpu, graphs)
    reference = list(values >= 0)
    rows = []
    for device in dict.fromkeys([cpu, accel]):
        with jax.default_device(device):
            hasher = default_hasher()
            start = time.perf_counter()
            codes = [c.bits for c in hasher.hash(graphs)]
            first = time.perf_counter() - start
            rates = []
            for batch in (graphs[:256], big):
                hasher.hash(batch)  # compiles its buckets
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    hasher.hash(batch)
                    times.append(time.perf_counter() - start)
                rates.append(len(batch) / statistics.median(times))
            one_by_one = [hasher.hash(g).bits for g in graphs[:16]]
        differ = sum(not np.array_equal(a, b) for a, b in zip(codes, reference))
        alone = sum(not np.array_equal(a, b) for a, b in zip(one_by_one, codes[:16]))
        rows.append((device.platform, first, *rates, differ, alone))

    flipped = _flip_margins(values, codes) if differ else []
    if flipped:  # bits that differ between backends lie this close to zero on the CPU
        print(f"{len(flipped)} bits differ from the CPU's; their CPU |pre-sign| / the bit's median: "
              f"largest {max(flipped):.2e} (benchmarks/bench_margin.py: how many bits lie that close)")
    print(f"| backend | first call s | graphs/s at 256 | graphs/s at 4,096 | codes of {len(graphs)} differing "
          "from CPU | alone vs batch (16) |")
    print("|---|---|---|---|---|---|")
    for platform, first, rate, rate_big, differ, alone in rows:
        print(f"| {platform} | {first:.2f} | {rate:,.0f} | {rate_big:,.0f} | {differ} | {alone} |")
    return 1 if any(r[4] or r[5] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
