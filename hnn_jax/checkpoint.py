"""Hasher checkpoints: parameters through orbax, config and provenance in a JSON file.

Layout of a checkpoint directory:
    hasher.json  {"format": "hnn-jax-hasher", "format_version": 2, "schema_version": ...,
                  "bits": ..., "config": {...}, "version": "<code version>",
                  "relations": {"architecture": [3 distances], "weights": {weight bits: band}}}
    params/      orbax StandardCheckpointer tree of the network parameters (nnx pure dict)
The JSON is written last, so a directory with it holds a complete checkpoint.
"""

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hnn_jax.config import HasherConfig
from hnn_jax.errors import CorruptFileError, HNNError, SchemaMismatchError
from hnn_jax.hashcode import Bands
from hnn_jax.schema import SCHEMA_VERSION

FORMAT = "hnn-jax-hasher"
FORMAT_VERSION = 2  # 2: code v2 (weight part of hnn_jax.weightcode, relation bands by part)
META_FILE = "hasher.json"
PARAMS_DIR = "params"


def path_key(path) -> str:
    """"a/0/kernel" for a jax tree path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """Flat {"a/b/kernel": (shape, dtype)} view, used to report parameter mismatches by name."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_key(p): (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for p, leaf in flat}


def save(directory, config: HasherConfig, params: dict, version: str, relations: Bands | None = None) -> Path:
    """Write params (an nnx pure dict) and metadata under directory, replacing what was there.
    `relations`: the relation bands (hashcode.Bands) measured for this hasher."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).unlink(missing_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, params, force=True)
        ckptr.wait_until_finished()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
            "bits": config.bits, "config": config.to_dict(), "version": version}
    if relations:
        meta["relations"] = relations.to_json()
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def read_meta(directory) -> dict[str, Any]:
    """The checkpoint's metadata, checked against this build of hnn-jax."""
    path = Path(directory).absolute() / META_FILE
    if not path.is_file():
        raise HNNError(f"no hasher checkpoint at {path.parent} (missing {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not an hnn-jax hasher checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        why = (" (written before code v2: its weight bits were computed otherwise, so this hnn-jax cannot "
               "make its codes; use the release that wrote it)" if meta.get("format_version") == 1 else "")
        raise SchemaMismatchError(
            f"checkpoint format version {meta.get('format_version')!r}, this hnn-jax reads "
            f"{FORMAT_VERSION}{why}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"checkpoint was trained on feature schema version {meta.get('schema_version')!r}, "
            f"but this hnn-jax builds graphs of schema version {SCHEMA_VERSION}")
    try:
        meta["config"] = HasherConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: bad hasher config: {exc}") from exc
    if meta.get("bits") != meta["config"].bits:
        raise CorruptFileError(
            f"{path}: bits {meta.get('bits')!r} disagrees with config bits {meta['config'].bits}")
    if not isinstance(meta.get("version"), str):
        raise CorruptFileError(f"{path}: missing code version")
    try:
        meta["relations"] = Bands.from_json(meta["relations"]) if meta.get("relations") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: bad relation bands: {exc}") from exc
    return meta


def write_relations(directory, relations: Bands) -> None:
    """Store measured relation bands in a checkpoint's metadata; the weights and the code version
    do not change."""
    path = Path(directory).absolute() / META_FILE
    read_meta(directory)  # a checkpoint this hnn-jax reads
    meta = json.loads(path.read_text())
    meta["relations"] = relations.to_json()
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def restore(directory, target: dict) -> dict:
    """Restore params shaped like target (a pure dict of ShapeDtypeStructs).

    Differences in parameter names or shapes are reported one by one, since they mean the stored
    weights belong to another network configuration.
    """
    path = Path(directory).absolute() / PARAMS_DIR
    with ocp.StandardCheckpointer() as ckptr:
        try:
            stored = ckptr.metadata(path).item_metadata.tree
        except (FileNotFoundError, ValueError) as exc:
            raise CorruptFileError(f"cannot read parameters under {path}: {exc}") from exc
        want, have = _shapes(target), _shapes(stored)
        diffs = [f"{k}: missing from checkpoint" for k in sorted(want.keys() - have.keys())]
        diffs += [f"{k}: unexpected in checkpoint" for k in sorted(have.keys() - want.keys())]
        diffs += [f"{k}: checkpoint has {have[k][1]}{list(have[k][0])}, config needs "
                  f"{want[k][1]}{list(want[k][0])}"
                  for k in sorted(want.keys() & have.keys()) if want[k] != have[k]]
        if diffs:
            raise SchemaMismatchError(
                "checkpoint parameters do not match its config: " + "; ".join(diffs))
        return ckptr.restore(path, target)
