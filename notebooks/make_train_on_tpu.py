"""Writes notebooks/train_on_tpu.ipynb (outputs cleared). Edit the cells here, then run
`python notebooks/make_train_on_tpu.py`; tests/test_notebooks.py executes the result."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = "OWNER/hnn-jax"  # replace OWNER with the GitHub owner once the repository is public
COLAB = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/train_on_tpu.ipynb"

cells = [
    new_markdown_cell(f"""\
# Train an hnn-jax hasher on every device (TPU, GPU or CPU)

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB})

Builds a small zoo of generated models and their derivatives (fp16 copies, weight noise), trains
the hashing network data-parallel over every device JAX sees (a 1-D `Mesh` with
`NamedSharding`), checkpoints with orbax, restores the trained hasher and evaluates it."""),
    new_markdown_cell("""\
**Runtime.** On Colab choose *Runtime → Change runtime type → TPU* (or GPU); the notebook then
uses the `default` training configuration on a larger zoo. On a CPU runtime it uses the `tiny`
configuration and splits the CPU into 4 virtual devices, so the sharded code still runs for real;
that takes about a minute. The setup cell installs hnn-jax unless it is importable already."""),
    new_code_cell(f"""\
# Setup: install hnn-jax unless it is importable already (CI and local installs skip this).
import importlib.util

if importlib.util.find_spec("hnn_jax") is None:
    %pip install -q "hnn-jax[notebooks] @ git+https://github.com/{REPO}" """.rstrip()),
    new_code_cell("""\
import jax

# 4 virtual CPU devices when there is no accelerator (must be set before JAX touches a device;
# it changes nothing on a TPU or GPU runtime, where the accelerator is the default backend)
jax.config.update("jax_num_cpu_devices", 4)
ON_CPU = jax.default_backend() == "cpu"

import dataclasses
import tempfile
import warnings
from pathlib import Path

import numpy as np

from hnn_jax.training import evaluate, train, zoo
from hnn_jax.hasher import Hasher

warnings.filterwarnings("ignore")
print(jax.default_backend(), jax.device_count(), "devices:", jax.devices())
WORK = Path(tempfile.mkdtemp())"""),
    new_markdown_cell("""\
## A zoo of generated models

Every parent (an architecture with one initialisation) gets derivatives; each graph is labelled
with its family, architecture, parent and transform. `zoo.build` is resumable: run it again and
finished parents are skipped."""),
    new_code_cell("""\
parents = zoo.plan(["generated"], archs_per_family=1 if ON_CPU else 6, inits=2,
                   transforms=("original", "fp16", "noise"))
stats = zoo.build(WORK / "zoo", parents, workers=1)
graphs, rows = zoo.load(WORK / "zoo")
print(stats, "->", len(graphs), "graphs of", len({r["family"] for r in rows}), "families")"""),
    new_markdown_cell("""\
## Train on all devices

The batch is split over a 1-D mesh (`"data"`); parameters are replicated and XLA adds the
gradient all-reduce. Checkpoints go to `workdir/checkpoints` every few steps; re-running `run()`
after an interruption resumes exactly."""),
    new_code_cell("""\
config = train.tiny_cpu() if ON_CPU else dataclasses.replace(train.default(), steps=1000)
trainer = train.Trainer(config, train.Dataset(graphs, rows), WORK / "run", progress=False)
print("mesh:", dict(trainer.mesh.shape), "| batch", config.batch_size, "graphs per step")
metrics = trainer.run()
print(f"step {metrics['step']}: loss {metrics['total']:.3f}, {metrics['graphs_per_s']:.0f} graphs/s "
      f"on {metrics['devices']} devices, {metrics['compiles']} compilation(s)")"""),
    new_markdown_cell("## Save, restore, hash"),
    new_code_cell("""\
trainer.hasher().save(WORK / "hasher")
hasher = Hasher.load(WORK / "hasher")
codes = hasher.hash(graphs)
assert [str(c) for c in codes] == [str(c) for c in trainer.hasher().hash(graphs)]
print("restored", hasher.config, "->", codes[0])"""),
    new_markdown_cell("""\
## Evaluate

Family and copy-detection retrieval by Hamming distance (here on the training zoo itself; the
project's held-out evaluation uses torchvision: `hnn-jax eval`)."""),
    new_code_cell("""\
bits = np.stack([c.bits for c in codes])
result = evaluate.evaluate_codes(bits, rows)
print({k: round(v, 3) for k, v in result.items() if isinstance(v, float)})
print("distance to the original:", result["distance_to_original"])"""),
]

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "accelerator": "TPU", "colab": {"provenance": []}})
nbformat.write(nb, Path(__file__).with_name("train_on_tpu.ipynb"))
