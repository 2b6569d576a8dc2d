"""`hnn-jax index build` on workers (hnn_jax.cluster): throughput with 1 and 2 Ray workers and
local processes against the single-process build, on a folder of generated ONNX models.

    python benchmarks/bench_cluster.py [--models 200] [--depth 12] [--width 64] [--batch 10]
                                       [--workers 1 2] [--no-processes] [--cache warm|cold]

Each run builds the same index (checked against the single-process one, array for array).
"models/s" is the whole build from the call to the saved index (worker start, hasher load and
first jit compile included); "steady" is the rate between the first and the last finished batch
(the workers warm), which is what a long job runs at. The Ray cluster is started here on
loopback only, with as many CPUs as --workers asks at most. "conversion ms" is the
single-process build's time per model (converters.from_file plus its share of the hash call),
the figure the cost model in docs/usage.md ("Building on a cluster") scales. --cache: the workers'
on-disk compilation cache (hnn_jax.config.use_compilation_cache) "cold" (off: every worker
compiles each padding bucket, as on a machine's first job) or "warm" (a folder of this run's,
filled by one untimed build first, as on later jobs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback only
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--depth", type=int, default=12, help="layers of the deepest generated MLP")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-processes", action="store_true", help="Ray only")
    parser.add_argument("--cache", choices=["warm", "cold"], default="warm",
                        help="workers' compilation cache: filled first, or off")
    args = parser.parse_args()

    import numpy as np
    import psutil
    import ray
    from test_cluster import assert_same_index, write_models

    from hnn_jax.cluster import ProcessRunner, RayRunner, build_index
    from hnn_jax.files import hash_files
    from hnn_jax.hashcode import HashCode  # noqa: F401 - imported before timing
    from hnn_jax.index import HammingIndex

    root = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    os.environ["HNN_JAX_CACHE"] = str(root / "jax-cache") if args.cache == "warm" else "off"  # workers inherit it
    t = time.perf_counter()
    write_models(root / "models", args.models, depth=args.depth, width=args.width, uniform=True)
    print(f"{args.models} models written in {time.perf_counter() - t:.1f} s ({root / 'models'})")

    # single process: warm (one pass first), then timed
    list(hash_files([root / "models"], progress=False))
    t, c = time.perf_counter(), sum(os.times()[:2])
    results = list(hash_files([root / "models"], progress=False))
    single, single_cpu = time.perf_counter() - t, sum(os.times()[:2]) - c
    reference = root / "single.hnnidx"
    index = HammingIndex()
    index.add_many([r.code for r in results], [str(r.path) for r in results],
                   [{"path": str(r.path.resolve()), "format": "onnx", "probe": r.probe} for r in results])
    index.save(reference)
    rows = [("single process (warm)", 1, args.models / single, args.models / single,
             1000 * single_cpu / args.models, 0.0)]
    if args.cache == "warm":  # one untimed build compiles every bucket into the cache
        build_index([root / "models"], root / "warmup.hnnidx", runner=ProcessRunner(1), batch=args.batch,
                    progress=False)

    def worker_cpu() -> float:
        """CPU seconds of this process's hnn-jax workers (Ray actors or spawned processes)."""
        total = 0.0
        for p in psutil.Process().children(recursive=True):
            try:
                line = " ".join(p.cmdline())
                if line.startswith("ray::_Worker") or "multiprocessing" in line:
                    total += sum(p.cpu_times()[:2])
            except psutil.Error:
                continue
        return total

    def run(label, n, runner):
        marks = []
        out = root / f"{label.replace(' ', '_')}_{n}.hnnidx"

        def mark(s):
            marks.append((time.perf_counter(), s.converted, worker_cpu(), sum(os.times()[:2])))

        t0 = time.perf_counter()
        summary = build_index([root / "models"], out, runner=runner, batch=args.batch, progress=False,
                              on_batch=mark)
        total = time.perf_counter() - t0
        assert_same_index(out, reference)
        (t1, c1, w1, d1), (t2, c2, w2, d2) = marks[0], marks[-1]
        steady = (c2 - c1) / (t2 - t1) if t2 > t1 else float("nan")
        rows.append((label, n, summary.converted / total, steady, 1000 * (w2 - w1) / (c2 - c1),
                     1000 * (d2 - d1) / (c2 - c1)))
        print(f"  {label} x{n}: {total:.1f} s, retries {summary.retries}", flush=True)

    ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        for n in args.workers:
            run("Ray workers", n, RayRunner("auto", n))
    finally:
        ray.shutdown()
    if not args.no_processes:
        for n in args.workers:
            run("local processes", n, ProcessRunner(n))

    base = {label: steady for label, n, _, steady, *_ in rows if n == 1}
    print(f"\n{args.models} models, batch {args.batch}, {args.cache} compilation cache, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; conversion {1000 * single / args.models:.1f} ms/model "
          f"({1000 * single_cpu / args.models:.1f} CPU ms) single-process\n")
    print("| build | workers | models/s (whole build) | models/s (steady) | steady vs 1 worker "
          "| worker CPU ms/model | driver CPU ms/model |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, n, whole, steady, wcpu, dcpu in rows:
        ratio = steady / base[label] if label in base and np.isfinite(steady) else float("nan")
        print(f"| {label} | {n} | {whole:.1f} | {steady:.1f} | {ratio:.2f}x | {wcpu:.1f} | {dcpu:.1f} |")


if __name__ == "__main__":
    main()
