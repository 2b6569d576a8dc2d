"""Device check, one prepared script for a lent accelerator: the jit path on the default backend
(GPU/TPU when there is one), agreement of its codes with the CPU's bit for bit, and throughput.

    python benchmarks/device_check.py [--graphs 256] [--runs 5]

Prints one table. Exit status 1 if any code differs between the backends.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hnn_jax.hasher import default_hasher
from synthetic import mixed_sizes


def codes_on(device, graphs):
    """The shipped hasher's codes for `graphs`, computed with `device` as the default device."""
    with jax.default_device(device):
        return [c.bits for c in default_hasher().hash(graphs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    graphs = mixed_sizes(args.graphs, seed=0)
    cpu, accel = jax.devices("cpu")[0], jax.devices()[0]
    print(f"jax {jax.__version__}; default backend {jax.default_backend()} ({accel.device_kind}); "
          f"{len(graphs)} synthetic graphs of 5-700 nodes")

    reference = codes_on(cpu, graphs)
    rows = []
    for device in dict.fromkeys([cpu, accel]):
        with jax.default_device(device):
            hasher = default_hasher()
            start = time.perf_counter()
            codes = [c.bits for c in hasher.hash(graphs)]
            first = time.perf_counter() - start
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                hasher.hash(graphs)
                times.append(time.perf_counter() - start)
            one_by_one = [hasher.hash(g).bits for g in graphs[:16]]
        differ = sum(not np.array_equal(a, b) for a, b in zip(codes, reference))
        alone = sum(not np.array_equal(a, b) for a, b in zip(one_by_one, codes[:16]))
        rows.append((device.platform, first, len(graphs) / statistics.median(times), differ, alone))

    print("| backend | first call s | graphs/s (median) | codes differing from CPU | alone vs batch (16) |")
    print("|---|---|---|---|---|")
    for platform, first, rate, differ, alone in rows:
        print(f"| {platform} | {first:.2f} | {rate:,.0f} | {differ} | {alone} |")
    return 1 if any(r[3] or r[4] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
