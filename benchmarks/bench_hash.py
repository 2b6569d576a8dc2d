"""Hashing throughput, first-call compile time and compile count of the default-size hasher.

Usage: python benchmarks/bench_hash.py [--runs 7] [--nodes 300] [--members 1] [--node-budget N] ...
Graphs are synthetic (hnn_jax/testing/synthetic.py), ~300 nodes each, so the figures measure the hasher,
not the converters.
"""

import argparse
import statistics
import time

import jax


from hnn_jax import Hasher, HasherConfig
from hnn_jax.testing.synthetic import mixed_sizes, random_graph


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--bits", type=int, default=256, help="as the shipped hasher")
    parser.add_argument("--length", type=int, help="code length to hash at (default --bits; longer: a longer "
                        "weight part)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--instance-bits", type=int, default=208, help="the weight part, as the shipped hasher")
    parser.add_argument("--members", type=int, default=1, help="as the shipped hasher")
    parser.add_argument("--node-budget", type=int, help="default: the hasher's (4096, 2048 for members)")
    parser.add_argument("--edge-budget", type=int, help="default: the hasher's (8192, 4096 for members)")
    parser.add_argument("--max-graphs", type=int, default=64)
    args = parser.parse_args()

    config = HasherConfig(bits=args.bits, hidden=args.hidden, layers=args.layers,
                          instance_bits=args.instance_bits, members=args.members)
    budgets = dict(node_budget=args.node_budget, edge_budget=args.edge_budget,
                   max_graphs=args.max_graphs)
    graphs = [random_graph(i, args.nodes + i % 21 - 10) for i in range(256)]
    probe = Hasher.init(config, seed=0, **budgets)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {config}; node_budget "
          f"{probe.node_budget}, edge_budget {probe.edge_budget}, max_graphs {probe.max_graphs}")
    print(f"graphs: {args.nodes} +- 10 nodes, "
          f"{sum(int(g.n_edge[0]) for g in graphs) / len(graphs):.0f} edges on average\n")

    print(f"{'batch':>6} {'first call s':>13} {'~compile s':>11} {'median s':>10} {'graphs/s':>10}")
    for batch in (1, 16, 256):
        hasher = Hasher.init(config, seed=0, **budgets)  # fresh: first call includes compiling
        chunk = graphs[:batch]
        first = timed(lambda hasher=hasher, chunk=chunk: hasher.hash(chunk, bits=args.length))
        runs = [timed(lambda hasher=hasher, chunk=chunk: hasher.hash(chunk, bits=args.length))
                for _ in range(args.runs)]
        median = statistics.median(runs)
        print(f"{batch:>6} {first:>13.2f} {first - median:>11.2f} {median:>10.4f} "
              f"{batch / median:>10.0f}")

    hasher = Hasher.init(config, seed=0, **budgets)
    workload = mixed_sizes(200, seed=1, low=5, high=1500)
    for g in workload[:50]:
        hasher.hash(g)
    for start in range(0, 200, 16):
        hasher.hash(workload[start:start + 16])
    hasher.hash(workload)
    print(f"\ncompilations (trace_count) for 200 mixed graphs (5-1500 nodes) hashed alone, by 16 and all at "
          f"once: {hasher.trace_count}")


if __name__ == "__main__":
    main()
