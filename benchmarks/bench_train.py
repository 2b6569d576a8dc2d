"""Training throughput: graphs/s and step time for the default network, by device count.

Synthetic ~300-node graphs (hnn_jax/testing/synthetic.py) with a family/arch/parent tree; each device count
runs in its own process (XLA fixes it at start). On this 2-core CPU, 4 virtual devices share the
same two cores: the row shows that sharding works, not a speed-up.

    python benchmarks/bench_train.py [--steps 20] [--devices 1 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time



def measure(devices: int, steps: int) -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    import tempfile

    from hnn_jax.testing.synthetic import random_graph

    from hnn_jax.training import train

    graphs, rows = [], []
    for f in range(8):
        for a in range(2):
            for p in range(2):
                for v in range(2):
                    graphs.append(random_graph(f * 100 + a * 10 + p, 300))
                    rows.append(dict(id=f"{f}{a}{p}{v}", family=f"f{f}", arch=f"a{f}{a}", parent=f"p{f}{a}{p}"))
    cfg = train.member_configs(train.default())[0]  # one network (the shipped hasher trains three)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train.Trainer(cfg, train.Dataset(graphs, rows), tmp, progress=False)
        t0 = time.perf_counter()
        trainer.run(stop_at=1)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.run(stop_at=1 + steps)
        step_s = (time.perf_counter() - t0) / steps
    return dict(devices=devices, batch=cfg.batch_size, first_step_s=compile_s, step_s=step_s,
                graphs_per_s=cfg.batch_size / step_s)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    print("default network (64 bits, 4 layers, 128 wide), batch of 64 synthetic 300-node graphs, CPU")
    print(f"{'devices':>8}{'first step s':>14}{'step s':>10}{'graphs/s':>10}")
    for d in args.devices:
        out = subprocess.run([sys.executable, __file__, "--one", str(d), "--steps", str(args.steps)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{d:>8}  failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['devices']:>8}{r['first_step_s']:>14.2f}{r['step_s']:>10.3f}{r['graphs_per_s']:>10.1f}")


if __name__ == "__main__":
    main()
