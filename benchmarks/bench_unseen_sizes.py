"""Unseen 4th size of trained transformer types: family mAP of originals (held-out and validation
types left out), architecture part vs WL-subtree and op-histogram SimHash, for the shipped hasher
and any checkpoints given.

    hnn-jax zoo build zoo/hf-sizes --sources transformers --inits 2 --transformers-sizes 3 --transforms original,int8
    python benchmarks/bench_unseen_sizes.py [ZOO] [--hasher DIR ...]
"""
import argparse
import warnings

import numpy as np

from hnn_jax.training import evaluate, zoo
from hnn_jax.training.baselines import op_histogram_hash, wl_subtree_hash
from hnn_jax.hasher import Hasher, default_hasher

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("zoo", nargs="?", default="zoo/hf-sizes")
parser.add_argument("--hasher", action="append", default=[], help="a checkpoint to compare with the shipped one")
args = parser.parse_args()
warnings.simplefilter("ignore")
graphs, rows = zoo.load(args.zoo)
left_out = zoo.TRANSFORMERS_HELD_OUT | zoo.TRANSFORMERS_VALIDATION
keep = [i for i, r in enumerate(rows)
        if r.get("model_type", r["family"]) not in left_out and r["family"] not in left_out]
graphs, rows = [graphs[i] for i in keep], [rows[i] for i in keep]
print(len(rows), "graphs,", len({r["parent"] for r in rows}), "parents,", len({r["family"] for r in rows}), "families")
for name, fn in (("WL-subtree", wl_subtree_hash), ("op-histogram", op_histogram_hash)):
    print(name, round(evaluate.evaluate_codes(np.stack([fn(g) for g in graphs]), rows)["family_map"], 3))
for path in ["shipped", *args.hasher]:
    h = default_hasher() if path == "shipped" else Hasher.load(path)
    bits = np.stack([c.bits for c in h.hash(graphs)])
    learned = h.config.learned_bits
    print(path, "architecture part", round(evaluate.evaluate_codes(bits[:, :learned], rows)["family_map"], 3),
          "whole code", round(evaluate.evaluate_codes(bits, rows)["family_map"], 3))
