"""HammingIndex benchmark: the numpy and faiss backends side by side at 1M and 10M random codes.

    python benchmarks/bench_index.py [--sizes 1000000 10000000] [--with-100m] [--bits 64]
                                     [--queries 30] [--backends numpy faiss]

Latency is the median (and 90th percentile) over --queries random queries of one search call,
including the result objects; "top-10" is search(q, k=10), "radius 4" is
search(q, k=None, radius=4), "top-10 in 8" is search(q, k=10, radius=8). Half the queries are
indexed codes (a distance-0 hit), half fresh random codes. Build is one add_many of a [n, bits]
0/1 array with auto ids; load reads the .npz file save() wrote (the same file for both backends)
into an index of that backend. Memory: "codes" is what the backend stores the codes in (numpy's
word columns, faiss's IndexBinaryFlat rows) against the packed codes (n x bits/8 bytes); "index"
is HammingIndex.nbytes (codes, ids, metadata: auto ids are not stored); "RSS" is the growth of the
process's resident memory that the built index keeps. Every query's results are compared with the
numpy backend's ("same": all identical, ties included). The backends run one after the other, so
only one index is in memory at a time. --with-100m adds 100M codes (about 6.4 GB of input bits and
2.4 GB per index for 64 bits: needs a machine with room for it).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hnn_jax import HashCode
from hnn_jax.index import HammingIndex

VERSION = "bench"


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def timed(fn, queries):
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - start)
    times.sort()
    ms = (statistics.median(times) * 1e3, times[int(0.9 * (len(times) - 1))] * 1e3)
    return ms, [[(m.id, m.distance) for m in r] for r in results]


def run(backend: str, bits: np.ndarray, queries: list, path: Path) -> dict:
    n, nbits = bits.shape
    gc.collect()
    rss0 = rss_mb()
    start = time.perf_counter()
    index = HammingIndex(nbits, VERSION, backend=backend)
    index.add_many(bits)
    build = time.perf_counter() - start
    gc.collect()
    rss_growth = rss_mb() - rss0
    codes_bytes = index._codes.words.nbytes  # numpy: no spare columns right after one add_many
    index_bytes = index.nbytes  # codes, ids (none while auto), metadata
    index.search(queries[0], k=10)  # warm-up
    top10, r1 = timed(lambda q: index.search(q, k=10), queries)
    radius4, r2 = timed(lambda q: index.search(q, k=None, radius=4), queries)
    top10r, r3 = timed(lambda q: index.search(q, k=10, radius=8), queries)
    if not path.exists():
        index.save(path)
    index = None  # (the lambdas above refer to it by name)
    gc.collect()
    start = time.perf_counter()
    HammingIndex.load(path, backend=backend)
    load = time.perf_counter() - start
    packed = n * (-(-nbits // 64)) * 8
    return dict(build=build, load=load, top10=top10, radius4=radius4, top10r=top10r,
                codes_mb=codes_bytes / 2**20, codes_x=codes_bytes / packed,
                index_mb=index_bytes / 2**20, index_x=index_bytes / packed, rss_mb=rss_growth,
                rss_x=rss_growth * 2**20 / packed, results=(r1, r2, r3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--with-100m", action="store_true", help="also 100M codes")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--backends", nargs="+", default=["numpy", "faiss"])
    args = parser.parse_args()
    sizes = args.sizes + ([100_000_000] if args.with_100m else [])
    rng = np.random.default_rng(0)
    try:
        import faiss
        faiss_version = f"faiss-cpu {faiss.__version__} ({faiss.omp_get_max_threads()} threads)"
    except ImportError:
        faiss_version = "faiss-cpu not installed"
        args.backends = [b for b in args.backends if b != "faiss"]
    print(f"HammingIndex, {args.bits}-bit random codes, numpy {np.__version__}, {faiss_version}, "
          f"{os.cpu_count()} CPUs; latency = median / p90 of {args.queries} queries, ms\n")
    print("| codes | backend | build s | load s | top-10 ms | radius 4 ms | top-10 within 8 ms "
          "| codes MB (x packed) | index MB (x packed) | RSS growth MB (x packed) | same as numpy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        bits = rng.integers(0, 2, (n, args.bits), dtype=np.uint8)
        picks = rng.integers(0, n, args.queries // 2)
        fresh = rng.integers(0, 2, (args.queries - len(picks), args.bits), dtype=np.uint8)
        queries = [HashCode(b, VERSION) for b in np.concatenate([bits[picks], fresh])]
        reference = None
        with tempfile.TemporaryDirectory() as tmp:
            for backend in args.backends:
                r = run(backend, bits, queries, Path(tmp) / "bench.hnnidx")
                reference = reference or r["results"]
                same = "yes" if r["results"] == reference else "NO"
                print(f"| {n:,} | {backend} | {r['build']:.2f} | {r['load']:.2f} "
                      f"| {r['top10'][0]:.2f} / {r['top10'][1]:.2f} "
                      f"| {r['radius4'][0]:.2f} / {r['radius4'][1]:.2f} "
                      f"| {r['top10r'][0]:.2f} / {r['top10r'][1]:.2f} "
                      f"| {r['codes_mb']:.0f} ({r['codes_x']:.2f}x) | {r['index_mb']:.0f} ({r['index_x']:.2f}x) "
                      f"| {r['rss_mb']:.0f} ({r['rss_x']:.2f}x) | {same} |", flush=True)
        del bits


if __name__ == "__main__":
    main()
