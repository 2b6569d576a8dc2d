"""HammingIndex benchmark: build time, memory and search latency for 10k / 100k / 1M random codes.

    python benchmarks/bench_index.py [--sizes 10000 100000 1000000] [--bits 64] [--queries 50]

Latency is the median (and 90th percentile) over --queries random queries of one search call,
including the result objects; "top-10" is search(q, k=10), "radius 4" is
search(q, k=None, radius=4), "top-10 in 8" is search(q, k=10, radius=8). Memory is the index's
own arrays (packed words + ids) and the growth of the process's peak RSS while building
(including the temporary bit array the codes come in). Build is add_many of a [n, bits] 0/1
array with auto ids; save/load use one .npz file.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hnn_jax import HashCode
from hnn_jax.index import HammingIndex

VERSION = "bench"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, queries):
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e3, times[int(0.9 * (len(times) - 1))] * 1e3


def run(n: int, nbits: int, n_queries: int, rng) -> dict:
    bits = rng.integers(0, 2, (n, nbits), dtype=np.uint8)
    rss0 = peak_rss_mb()
    start = time.perf_counter()
    index = HammingIndex(nbits, VERSION)
    index.add_many(bits)
    build = time.perf_counter() - start
    rss_growth = max(0.0, peak_rss_mb() - rss0)
    arrays_mb = (index._words[:, :len(index)].nbytes + index._ids[:len(index)].nbytes) / 2**20
    # queries: half are indexed codes (distance-0 hits), half fresh random codes
    picks = rng.integers(0, n, n_queries // 2)
    fresh = rng.integers(0, 2, (n_queries - len(picks), nbits), dtype=np.uint8)
    queries = [HashCode(b, VERSION) for b in np.concatenate([bits[picks], fresh])]
    del bits
    index.search(queries[0], k=10)  # warm-up
    top10 = timed(lambda q: index.search(q, k=10), queries)
    radius4 = timed(lambda q: index.search(q, k=None, radius=4), queries)
    top10r = timed(lambda q: index.search(q, k=10, radius=8), queries)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.hnnidx"
        start = time.perf_counter()
        index.save(path)
        save = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 2**20
        start = time.perf_counter()
        HammingIndex.load(path)
        load = time.perf_counter() - start
    return dict(n=n, build=build, top10=top10, radius4=radius4, top10r=top10r,
                arrays_mb=arrays_mb, rss_mb=rss_growth, save=save, load=load, file_mb=size_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"HammingIndex, {args.bits}-bit random codes, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs; latency = median / p90 of {args.queries} queries, ms\n")
    print("| codes | build s | top-10 ms | radius 4 ms | top-10 within 8 ms | index arrays MB "
          "| peak RSS growth MB | save s | load s | file MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        r = run(n, args.bits, args.queries, rng)
        print(f"| {n:,} | {r['build']:.3f} | {r['top10'][0]:.2f} / {r['top10'][1]:.2f} "
              f"| {r['radius4'][0]:.2f} / {r['radius4'][1]:.2f} "
              f"| {r['top10r'][0]:.2f} / {r['top10r'][1]:.2f} | {r['arrays_mb']:.1f} "
              f"| {r['rss_mb']:.0f} | {r['save']:.3f} | {r['load']:.3f} | {r['file_mb']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
