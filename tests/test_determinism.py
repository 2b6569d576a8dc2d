"""The same model gives the same code bit for bit: in fresh processes, with 1 or 2 threads in
onnxruntime and XLA, alone or in any batch, in any padding bucket. (Hasher-only checks on
synthetic graphs are in test_hasher.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from hnn_jax.testing import models
import hnn_jax
from hnn_jax import converters

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(hnn_jax.__file__).parent / "examples").glob("*.onnx"))
TESTS = Path(__file__).resolve().parent

# Converts the bundled examples (probe on `threads` onnxruntime threads) and hashes them alone, as
# one batch, reversed, and next to a large graph that moves them to another bucket; prints JSON.
SCRIPT = r"""
import json, os, sys, warnings
threads = int(sys.argv[1])
os.sched_setaffinity(0, set(range(threads)))  # XLA and onnxruntime size their pools from this
if threads == 1:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
sys.path.insert(0, sys.argv[2])
warnings.simplefilter("ignore")
import hnn_jax
from hnn_jax import converters
from hnn_jax.testing.synthetic import random_graph
graphs = [converters.from_onnx(p, probe_threads=threads) for p in sys.argv[3:]]
alone = [str(hnn_jax.hash(g)) for g in graphs]
batch = [str(c) for c in hnn_jax.hash(graphs)]
reverse = [str(c) for c in hnn_jax.hash(graphs[::-1])][::-1]
big = [str(c) for c in hnn_jax.hash([random_graph(0, 5000)] + graphs)][1:]
print(json.dumps(dict(alone=alone, batch=batch, reverse=reverse, big=big)))
"""


def codes_in_fresh_process(threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(threads), str(TESTS), *map(str, EXAMPLES)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to compare 1 and 2 threads")
def test_codes_identical_across_processes_threads_batches_and_buckets():
    here = [str(c) for c in hnn_jax.hash([converters.from_onnx(p) for p in EXAMPLES])]
    assert len(set(here)) >= 5  # variants of cnn_a may share its code; the other models do not
    for threads in (1, 2):
        runs = codes_in_fresh_process(threads)
        for name, codes in runs.items():
            assert codes == here, f"{threads} thread(s), {name}"


def wide_model():
    """Big enough that onnxruntime splits its MatMul, Conv and reductions across threads."""
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((64, 16, 3, 3)).astype(np.float32)
    dense = rng.standard_normal((64 * 32 * 32, 64)).astype(np.float32) / 256
    nodes = [helper.make_node("Conv", ["x", "conv"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "dense"], ["d"]),
             helper.make_node("Softmax", ["d"], ["s"], axis=-1),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3])]
    return models.onnx_model(nodes, [models.float_input("x", [8, 16, 32, 32])],
                             [models.float_input("s", None), models.float_input("m", None)],
                             [("conv", conv), ("dense", dense)], opset=17)


def test_probe_features_identical_with_one_and_two_onnxruntime_threads():
    a = converters.from_onnx(wide_model(), probe_threads=1)
    b = converters.from_onnx(wide_model(), probe_threads=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert hnn_jax.hash(a) == hnn_jax.hash(b)
