"""Hasher checkpoints: parameters through orbax, config and provenance in a JSON file.

Layout of a checkpoint directory:
    hasher.json  {"format": "hnn-jax-hasher", "format_version": 1, "schema_version": ...,
                  "bits": ..., "config": {...}, "version": "<code version>"}
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
from hnn_jax.schema import SCHEMA_VERSION

FORMAT = "hnn-jax-hasher"
FORMAT_VERSION = 1
META_FILE = "hasher.json"
PARAMS_DIR = "params"


def path_key(path) -> str:
    """"a/0/kernel" for a jax tree path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """Flat {"a/b/kernel": (shape, dtype)} view, used to report parameter mismatches by name."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_key(p): (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for p, leaf in flat}


def save(directory, config: HasherConfig, params: dict, version: str, relations: dict | None = None) -> Path:
    """Write params (an nnx pure dict) and metadata under directory, replacing what was there.
    `relations`: {nbits: relation thresholds} (hashcode.RELATIONS) measured for this hasher."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).unlink(missing_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, params, force=True)
        ckptr.wait_until_finished()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
            "bits": config.bits, "config": config.to_dict(), "version": version}
    if relations:
        meta["relations"] = _relations_json(relations)
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
        raise SchemaMismatchError(
            f"checkpoint format version {meta.get('format_version')!r}, this hnn-jax reads "
            f"{FORMAT_VERSION}")
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
    relations = meta.setdefault("relations", {})
    if not isinstance(relations, dict) or not all(
            isinstance(n, str) and n.isdigit() and isinstance(b, list) and len(b) == 3
            and all(isinstance(x, int) and 0 <= x <= int(n) for x in b) and b == sorted(b)
            for n, b in relations.items()):
        raise CorruptFileError(f"{path}: relations must map code lengths to 3 ascending distances")
    meta["relations"] = {int(n): tuple(b) for n, b in relations.items()}
    return meta


def _relations_json(relations: dict) -> dict:
    """{nbits: thresholds} as hasher.json stores it (read_meta reads it back)."""
    return {str(n): list(map(int, b)) for n, b in sorted(relations.items())}


def write_relations(directory, relations: dict) -> None:
    """Store measured relation thresholds {nbits: (3 distances)} in a checkpoint's metadata; the
    weights and the code version do not change."""
    path = Path(directory).absolute() / META_FILE
    read_meta(directory)  # a checkpoint this hnn-jax reads
    meta = json.loads(path.read_text())
    meta["relations"] = _relations_json(relations)
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
