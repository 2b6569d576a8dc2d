"""Writes notebooks/quickstart.ipynb (outputs cleared). Edit the cells here, then run
`python notebooks/make_quickstart.py`; tests/test_notebooks.py executes the result."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = "OWNER/hnn-jax"  # replace OWNER with the GitHub owner once the repository is public
COLAB = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/quickstart.ipynb"

cells = [
    new_markdown_cell(f"""\
# hnn-jax quickstart: perceptual hashes of neural networks

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB})

hnn-jax turns a PyTorch, Keras/TensorFlow or ONNX model into a short binary code (64 bits by
default). Related models get nearby codes, so the **Hamming distance** (number of differing
bits) between two codes says how related two models are, and a `HammingIndex` finds a model's
relatives among millions of codes.

This notebook builds a few small PyTorch models (random weights, nothing is downloaded), hashes
them, compares them, draws their distance matrix and searches an index."""),
    new_markdown_cell("""\
**Runtime.** A CPU runtime is enough (*Runtime → Change runtime type → CPU*); the whole
notebook runs in well under a minute once installed. The setup cell installs hnn-jax from GitHub
(about a minute in Colab) and does nothing where `hnn_jax` is already importable. Colab already
ships PyTorch, so it installs the `notebooks` extra only; on your own machine use
`pip install "hnn-jax[torch,notebooks]"`. If pip reports that it upgraded numpy or jax, use
*Runtime → Restart session* and run the notebook again."""),
    new_code_cell(f"""\
# Setup: install hnn-jax unless it is importable already (CI and local installs skip this).
import importlib.util

if importlib.util.find_spec("hnn_jax") is None:
    %pip install -q "hnn-jax[notebooks] @ git+https://github.com/{REPO}" """.rstrip()),
    new_code_cell("""\
import copy
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import hnn_jax
from hnn_jax import converters
from hnn_jax.index import HammingIndex

warnings.filterwarnings("ignore")  # exporter chatter
print("hnn-jax", hnn_jax.__version__, "| torch", torch.__version__)"""),
    new_markdown_cell("""\
## Three small models, and two relatives

A CNN, the same CNN initialised with another seed, a wider CNN and an MLP, plus a copy of the
first CNN whose weights went through float16 (what a "half precision" release of a model does)."""),
    new_code_cell("""\
def cnn(seed, width=8):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10)).eval()


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.GELU(),
                         nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)).eval()


image = torch.randn(1, 3, 32, 32)  # example input: fixes the shapes the exporter traces
models = {
    "cnn": cnn(seed=0),
    "cnn fp16 copy": copy.deepcopy(cnn(seed=0)).half().float(),
    "cnn other seed": cnn(seed=1),
    "cnn wide": cnn(seed=0, width=16),
    "mlp": mlp(seed=0),
}
for name, model in models.items():
    print(f"{name:<15} {sum(p.numel() for p in model.parameters()):>7,} parameters")"""),
    new_markdown_cell("""\
## Hash them

`converters.from_torch` exports to ONNX, builds the canonical graph, runs it once on fixed probe
inputs and returns a graph; `hnn_jax.hash` turns a list of graphs into codes in one batch."""),
    new_code_cell("""\
start = time.perf_counter()
graphs = [converters.from_torch(model, image) for model in models.values()]
codes = dict(zip(models, hnn_jax.hash(graphs)))
print(f"hashed {len(codes)} models in {time.perf_counter() - start:.1f} s\\n")
for name, code in codes.items():
    print(f"{name:<15} {code}")
print("\\nfirst code as bits:", "".join(map(str, codes["cnn"].bits)))"""),
    new_markdown_cell("""\
## Compare

A code has two parts: 48 architecture bits (learned; they read no weight value) and 208 weight
bits (an exact SimHash of the trained parameters). `a - b` is the Hamming distance,
`a.distances(b)` gives each part's, and `a.compare(b)` reads them with the bands measured for the
codes' hasher (stored in its `hasher.json`; the same ones `hnn-jax compare` prints): "same model"
needs both parts close, and `chance` is the measured probability that two independent models of
one architecture have weight parts this close."""),
    new_code_cell("""\
names = list(codes)
distance = np.array([[codes[a] - codes[b] for b in names] for a in names])
nbits = len(codes["cnn"])
for other in names[1:]:
    found = codes["cnn"].compare(codes[other])
    print(f"cnn vs {other:<15} architecture {found.distances.architecture:>2}, weights "
          f"{found.distances.weights:>3} of 208 -> {found.relation} (chance {found.chance:.1e})")
assert codes["cnn"].relation(codes["cnn fp16 copy"])[0] == "same-model"  # a near copy
assert codes["cnn"].relation(codes["cnn other seed"])[0] != "same-model"  # another initialisation"""),
    new_code_cell("""\
fig, ax = plt.subplots(figsize=(5.5, 4.5))
im = ax.imshow(distance, cmap="viridis", vmin=0, vmax=max(1, distance.max()))
ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
ax.set_yticks(range(len(names)), names)
for i in range(len(names)):
    for j in range(len(names)):
        ax.text(j, i, distance[i, j], ha="center", va="center",
                color="white" if distance[i, j] < distance.max() / 2 else "black")
fig.colorbar(im, label="Hamming distance (bits)")
ax.set_title(f"Hamming distances between {nbits}-bit codes")
fig.tight_layout()
plt.show()"""),
    new_markdown_cell("""\
## Search an index

A `HammingIndex` holds codes with ids and JSON metadata, answers top-k and radius queries
exactly (ties in insertion order) and saves to one file; `order="architecture"` ranks a model's
relatives, `order="weights"` its copies. Below, a model rebuilt from scratch (the same
architecture and seed, exported again) finds its original at distance 0."""),
    new_code_cell("""\
index = HammingIndex()
index.add_many(list(codes.values()), ids=names,
               metadata=[{"params": sum(p.numel() for p in m.parameters())}
                         for m in models.values()])

query = hnn_jax.hash(converters.from_torch(cnn(seed=0), image))
print("top 3:")
for match in index.search(query, k=3, order="weights"):
    d = match.distances
    print(f"  architecture {d.architecture:>2}, weights {d.weights:>3}  {match.id:<15} {match.relation()[0]:<17} "
          f"{match.metadata}")
print("weights within 48 bits:", [m.id for m in index.search(query, k=None, radius=48, order="weights")])

path = Path(tempfile.mkdtemp()) / "models.hnnidx"
index.save(path)
reloaded = HammingIndex.load(path, nbits=nbits, version=query.version)
top = reloaded.search(query, k=1)[0]
print(f"reloaded {len(reloaded)} codes from {path.name}; nearest: {top.id} at {top.distance} bits")
assert top.id == "cnn" and top.distance == 0"""),
    new_markdown_cell("""\
## From the command line

The same operations on model files (`.onnx`, `.keras`, torch.export `.pt2`, SavedModel folders):

```bash
hnn-jax demo                                  # the example models bundled with hnn-jax
hnn-jax hash models/ --json                   # codes of every model under models/
hnn-jax compare a.onnx b.onnx                 # distance and the relation it suggests
hnn-jax index build models/ -o models.hnnidx  # an index file
hnn-jax search models.hnnidx query.onnx -k 5  # nearest models; --radius R exits 1 if none
hnn-jax search models.hnnidx query.onnx --order weights   # copies and derivatives first
```"""),
]

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
})
out = Path(__file__).with_name("quickstart.ipynb")
nbformat.validate(nb)
nbformat.write(nb, out)
print(f"wrote {out}")
