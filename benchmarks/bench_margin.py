"""How close the learned bits' pre-sign values come to zero over zoo graphs (issue 18, item 7).

    python benchmarks/bench_margin.py ZOO [ZOO ...] [--hasher DIR]

The instance bits are exact integer arithmetic on every backend. The learned bits are signs of
float32 values, and two backends (CPU, GPU, TPU) may compute one value with a different rounding
or summation order: a bit flips between backends only if its value lies within that error of
zero. Prints, per zoo, how many learned bits of how many graphs lie within 1e-5, 1e-4, 1e-3 and
1e-2 of zero (relative to the bit's typical size, its median |value| over the zoo), and the
smallest. Cross-backend float32 differences of a network this size are ~1e-6 relative.
"""

import argparse
import sys

import numpy as np

from hnn_jax.training import zoo
from hnn_jax.hasher import Hasher, default_hasher

THRESHOLDS = (1e-5, 1e-4, 1e-3, 1e-2)


def margins(hasher: Hasher, graphs) -> np.ndarray:
    """|pre-sign value| of every learned bit, divided by that bit's median |value|: [graphs, bits]."""
    values = np.abs(hasher.embed(graphs)[:, :hasher.config.learned_bits])
    return values / np.maximum(np.median(values, axis=0), 1e-12)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", nargs="+", help="zoo folders (hnn-jax zoo build)")
    parser.add_argument("--hasher", help="checkpoint folder (default: the shipped hasher)")
    args = parser.parse_args(argv)
    hasher = Hasher.load(args.hasher) if args.hasher else default_hasher()
    print(f"hasher {hasher.version}: {hasher.config.learned_bits} learned bits")
    print("| zoo | graphs | " + " | ".join(f"bits < {t:g}" for t in THRESHOLDS) + " | smallest | graphs with one |")
    print("|---|---|" + "---|" * (len(THRESHOLDS) + 2))
    for folder in args.zoo:
        graphs, _ = zoo.load(folder)
        m = margins(hasher, graphs)
        counts = [int((m < t).sum()) for t in THRESHOLDS]
        at_risk = int((m < THRESHOLDS[1]).any(axis=1).sum())
        print(f"| {folder} | {len(graphs)} | " + " | ".join(map(str, counts)) + f" | {m.min():.2e} | {at_risk} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
