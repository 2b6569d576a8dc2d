"""The zoo on disk: one .npz per graph under graphs/, one JSON line of labels per graph in
manifest.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jraph
import numpy as np

from hnn_jax.training.zoo.sources import TRANSFORMERS_SAME_GRAPH


def save_graph(path: Path, graph: jraph.GraphsTuple) -> None:
    np.savez(path, **{k: np.asarray(v) for k, v in graph._asdict().items()})


def load_graph(path: Path) -> jraph.GraphsTuple:
    with np.load(path) as data:
        return jraph.GraphsTuple(**{k: data[k] for k in jraph.GraphsTuple._fields})


def read_manifest(zoo_dir) -> list[dict]:
    path = Path(zoo_dir) / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(zoo_dirs, *, sources=None) -> tuple[list[jraph.GraphsTuple], list[dict]]:
    """All graphs of one zoo folder or several, with their manifest rows (optionally only some
    sources). Transformers model types that are one graph under two names count as one family
    (TRANSFORMERS_SAME_GRAPH; the row keeps the type as model_type)."""
    dirs = [zoo_dirs] if isinstance(zoo_dirs, (str, os.PathLike)) else list(zoo_dirs)
    graphs, unique, seen = [], [], set()
    for d in dirs:
        for r in read_manifest(d):
            if (sources is None or r["source"] in sources) and r["id"] not in seen:  # resumed builds may repeat
                seen.add(r["id"])
                if r["source"] == "transformers" and r["family"] in TRANSFORMERS_SAME_GRAPH:
                    r = dict(r, model_type=r["family"], family=TRANSFORMERS_SAME_GRAPH[r["family"]])
                unique.append(r)
                graphs.append(load_graph(Path(d) / "graphs" / f"{r['id']}.npz"))
    return graphs, unique
