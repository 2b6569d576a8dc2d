"""Files and folders -> codes: the folder walk and batched hashing behind `hnn-jax hash` and
`hnn-jax index`, as a library call (hnn_jax.hash_files)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

MODEL_SUFFIXES = (".onnx", ".keras", ".pt2")
"""File suffixes picked up when walking folders (TensorFlow SavedModel folders, with a
saved_model.pb, and Hugging Face snapshot folders given by name are picked up too)."""

CHUNK = 64  # models converted before each batched hash call (bounds memory on big folders)
PROBE_NAMES = {1: "ok", -1: "failed", -2: "timeout", -3: "skipped"}


@dataclass
class FileCode:
    """One model's outcome: its code and probe status, or (with skip_errors) the HNNError that
    stopped it; the warnings its conversion raised, as text."""
    path: Path
    code: object = None          # HashCode, or None when `error` is set
    probe: str = ""              # "ok", "failed", "timeout" or "skipped" (static features only)
    error: Exception | None = None
    warnings: list[str] = field(default_factory=list)


def find_models(paths) -> list[Path]:
    """Model files and SavedModel folders named by `paths`: files as given, folders walked
    recursively (sorted by path; SavedModel folders are not searched inside). A path that does
    not exist, or a folder holding no model, is an error."""
    from hnn_jax.errors import CorruptFileError, UnsupportedModelError

    found: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if not path.exists():
            raise CorruptFileError(f"no such file or folder: {arg}")
        if path.is_file() or (path / "saved_model.pb").is_file() or (path / "config.json").is_file():
            found.append(path)
            continue
        before = len(found)
        for root, dirs, files in os.walk(path):
            dirs.sort()
            root = Path(root)
            for d in list(dirs):
                if (root / d / "saved_model.pb").is_file():
                    found.append(root / d)
                    dirs.remove(d)
            found.extend(root / f for f in sorted(files)
                         if Path(f).suffix.lower() in MODEL_SUFFIXES and not f.startswith("."))
        found[before:] = sorted(found[before:], key=lambda p: p.parts)
        if len(found) == before:
            raise UnsupportedModelError(
                f"no model files ({', '.join(MODEL_SUFFIXES)} or SavedModel folders) in {arg}")
    return found


def named_error(path, error: Exception) -> Exception:
    """`error` as an HNNError whose message names `path` (unexpected errors say their type)."""
    from hnn_jax.errors import HNNError

    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, HNNError):
        return HNNError(f"{path}: unexpected {type(error).__name__}: {message}")
    if str(path) in message:
        return error
    try:
        return type(error)(f"{path}: {message}")
    except Exception:  # noqa: BLE001 - a subclass with another constructor
        return HNNError(f"{path}: {message}")


def convert_file(path):
    """(graph, probe status, warning texts, None) for one model file, or (None, None, warning
    texts, the exception) when it cannot be converted: the warnings conversion raised are kept."""
    from hnn_jax import converters, schema

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            graph = converters.from_file(path)
        except Exception as e:  # noqa: BLE001 - foreign files can fail anywhere
            return None, None, [str(w.message) for w in caught], e
    probe = PROBE_NAMES.get(int(round(float(graph.globals[0, schema.GLOBAL_PROBE]))), "unknown")
    return graph, probe, [str(w.message) for w in caught], None


def hash_files(paths, *, skip_errors: bool = False, progress: bool = True, hasher=None,
               bits: int | None = None):
    """Yield a FileCode for every model the files and folders in `paths` name (find_models), in
    order, converting up to CHUNK models before each batched hash call, with a progress bar on
    stderr. A model that fails raises an HNNError naming it; with skip_errors it is yielded with
    `error` set and the rest go on. `hasher`: the shipped default when None; `bits`: the code
    length (hnn_jax.hash)."""
    from tqdm import tqdm

    import hnn_jax

    models = find_models(paths)
    pending: list[FileCode] = []

    def flush():
        codes = hnn_jax.hash([g for _, g in pending], bits=bits, hasher=hasher)
        out = []
        for (result, _), code in zip(pending, codes):
            result.code = code
            out.append(result)
        pending.clear()
        return out

    bar = tqdm(models, desc="hashing", unit="model", disable=None if progress else True, leave=False)
    for path in bar:
        graph, probe, messages, exc = convert_file(path)
        if exc is not None:
            error = named_error(path, exc)
            if not skip_errors:
                if error is exc:
                    raise exc
                raise error from exc
            yield from flush() if pending else ()  # in order: the models before it first
            yield FileCode(path, error=error, warnings=messages)
            continue
        pending.append((FileCode(path, probe=probe, warnings=messages), graph))
        if len(pending) == CHUNK:
            yield from flush()
    bar.close()
    if pending:
        yield from flush()
