"""Files and folders -> codes: the folder walk and batched hashing behind `hnn-jax hash` and
`hnn-jax index`, as a library call (hnn_jax.hash_files).

Wherever a path is accepted, an fsspec URL is too (`s3://bucket/models/`, `gs://...`,
`http://host/dir/`, `file:///abs/path`, chained `zip://::file:///models.zip`): an argument holding
"://" is a URL (fsspec's own rule), anything else a local path, handled as before without importing
fsspec. URL folders are walked as local ones; each model is copied into a temporary folder to be
converted. Protocols other than file://, memory:// and the like need their fsspec package (s3fs,
gcsfs, aiohttp for http), installed by the user.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MODEL_SUFFIXES = (".onnx", ".keras", ".tflite", ".gguf", ".pt2")
"""File suffixes picked up when walking folders (TensorFlow SavedModel folders, with a
saved_model.pb, and Hugging Face snapshot folders given by name are picked up too)."""

CHUNK = 64  # models converted before each batched hash call (bounds memory on big folders)
PROBE_NAMES = {1: "ok", -1: "failed", -2: "timeout", -3: "skipped"}


@dataclass
class FileCode:
    """One model's outcome: its code and probe status, or (with skip_errors) the HNNError that
    stopped it; the warnings its conversion raised, as text."""
    path: Path | str             # a local path, or the model's URL (str)
    code: object = None          # HashCode, or None when `error` is set
    probe: str = ""              # "ok", "failed", "timeout" or "skipped" (static features only)
    error: Exception | None = None
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- URLs (fsspec)
FINGERPRINT_KEYS = ("mtime", "LastModified", "Last-Modified", "last_modified", "updated", "ETag", "etag",
                    "md5", "md5Hash", "content_md5", "generation", "version_id", "VersionId")
"""What fs.info may say of a remote file's version (besides its size), by filesystem: kept in
url_fingerprint when present."""


def is_url(arg) -> bool:
    """Whether a path argument is an fsspec URL: a str holding "://" after a protocol of two or
    more characters (fsspec.core.split_protocol's rule; a drive letter is not a protocol)."""
    if not isinstance(arg, str) or "://" not in arg:
        return False
    return len(arg.split("://", 1)[0]) > 1


def model_path(arg) -> Path | str:
    """A path argument as find_models returns it: the URL string, or a Path."""
    return arg if is_url(arg) else Path(arg)


def url_fs(url: str):
    """(fsspec filesystem, path within it) for `url`; a protocol without its package installed,
    or one fsspec does not know, is an HNNError saying what to install."""
    import fsspec.core
    from fsspec.registry import known_implementations

    from hnn_jax.errors import HNNError

    protocol = url.split("://", 1)[0].split("::")[-1]
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        cause = e.__cause__ or e.__context__
        package = known_implementations.get(protocol, {}).get("class", "").split(".")[0]
        if package in ("", "fsspec"):  # built into fsspec, needing a third-party module (http: aiohttp)
            package = (getattr(cause, "name", None) or getattr(e, "name", None) or "").split(".")[0]
        hint = f": pip install {package}" if package else ""
        raise HNNError(f"{url}: reading {protocol}:// URLs needs a package that is not installed{hint} "
                       f"({str(e).strip() or type(e).__name__})") from None
    except ValueError as e:
        if "protocol not known" in str(e).lower():
            raise HNNError(f"{url}: unknown URL protocol '{protocol}' (no fsspec filesystem is "
                           "registered for it; install the package that provides one)") from None
        raise HNNError(f"{url}: not a valid URL ({e})") from None


def _is_model_file(name: str) -> bool:
    """Whether a file met walking a folder is a model: a model suffix, not hidden."""
    return PurePosixPath(name).suffix.lower() in MODEL_SUFFIXES and not name.startswith(".")


def _no_models(arg) -> Exception:
    from hnn_jax.errors import UnsupportedModelError
    return UnsupportedModelError(f"no model files ({', '.join(MODEL_SUFFIXES)} or SavedModel folders) in {arg}")


def _join(root: str, name: str) -> str:
    root = root.rstrip("/")
    return f"{root}/{name}" if root else name


def _is_folder(fs, path: str, info: dict | None = None) -> bool:
    """Whether `path` is a folder. Some filesystems (http) call every URL a file; a name with a
    model suffix is taken as the file it names there, without asking again."""
    info = fs.info(path) if info is None else info
    if info.get("type") == "directory":
        return True
    if PurePosixPath(path.rstrip("/")).suffix.lower() in MODEL_SUFFIXES:
        return False
    return bool(fs.isdir(path))


def _url_error(url: str, error: Exception) -> Exception:
    """An HNNError naming `url` for a filesystem error (FileNotFoundError: CorruptFileError)."""
    from hnn_jax.errors import CorruptFileError, HNNError, first_line

    if isinstance(error, HNNError):
        return error
    cause = error.__cause__
    if isinstance(error, FileNotFoundError):
        if not isinstance(cause, OSError) or isinstance(cause, FileNotFoundError):
            return CorruptFileError(f"no such file or folder: {url}")
        error = cause  # http says "not found" of a server out of reach (a connection error) too
    first = first_line(error) if str(error).strip() else ""
    return HNNError(f"{url}: cannot read ({type(error).__name__}{': ' + first if first else ''})")


def _find_url_models(arg: str) -> list[str]:
    """find_models for one URL: the same walk as a local folder's, on fsspec, one listing (find)
    per folder argument; full URLs, sorted by path."""
    fs, root = url_fs(arg)
    chain = "::" + arg.split("::", 1)[1] if "::" in arg else ""
    try:
        if not _is_folder(fs, root) or fs.isfile(_join(root, "saved_model.pb")) \
                or fs.isfile(_join(root, "config.json")):
            return [fs.unstrip_protocol(root) + chain]
        listed = fs.find(root, withdirs=False)
    except Exception as e:  # any filesystem's errors, named, as HNNError
        raise _url_error(arg, e) from e
    base = root.rstrip("/")
    prefix = base + "/" if base else ""
    rels = [name[len(prefix):] for name in listed if name.startswith(prefix) and len(name) > len(prefix)]
    saved = {rel.rsplit("/", 1)[0] for rel in rels if "/" in rel and rel.rsplit("/", 1)[1] == "saved_model.pb"}

    def outer_saved(rel):  # the outermost SavedModel folder holding `rel`, if any
        parts = rel.split("/")
        return next((d for d in ("/".join(parts[:k]) for k in range(1, len(parts))) if d in saved), None)

    models = set()
    for rel in rels:
        holder = outer_saved(rel)
        if holder is not None:
            models.add(holder)
            continue
        if _is_model_file(rel.rsplit("/", 1)[-1]):
            models.add(rel)
    if not models:
        raise _no_models(arg)
    return [fs.unstrip_protocol(prefix + rel) + chain for rel in sorted(models, key=lambda r: r.split("/"))]


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "isoformat"):  # datetime (s3fs LastModified, gcsfs updated)
        return value.isoformat()
    return str(value)


def _stamp(info: dict) -> dict:
    stamp = {"size": _jsonable(info.get("size"))}
    stamp.update((k, _jsonable(info[k])) for k in FINGERPRINT_KEYS if info.get(k) is not None)
    return stamp


def url_fingerprint(url: str) -> dict:
    """What fs.info says of the model at `url` (size, and whichever of mtime, LastModified, ETag,
    md5... the filesystem gives) as JSON values, to tell whether it changed; a folder (SavedModel,
    snapshot): that of each file in it."""
    fs, path = url_fs(url)
    try:
        info = fs.info(path)
        if not _is_folder(fs, path, info):
            return _stamp(info)
        base = path.rstrip("/") + "/"
        return {"files": {name[len(base):] if name.startswith(base) else name: _stamp(i)
                          for name, i in sorted(fs.find(path, withdirs=False, detail=True).items())}}
    except Exception as e:
        raise _url_error(url, e) from e


def _fetch(url: str, folder: str) -> str:
    """Copy the model at `url` (a file, or a folder recursively) into `folder` under its own name;
    its local path. An .onnx file's external data files (relative locations beside it) come too."""
    fs, path = url_fs(url)
    info = fs.info(path)
    name = PurePosixPath(path.rstrip("/")).name or "model"
    local = os.path.join(folder, name)
    if _is_folder(fs, path, info):
        base = path.rstrip("/") + "/"
        for remote in sorted(fs.find(path, withdirs=False)):
            rel = remote[len(base):] if remote.startswith(base) else PurePosixPath(remote).name
            target = os.path.join(local, *[p for p in rel.split("/") if p not in ("", ".", "..")])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get_file(remote, target)
        return local
    fs.get_file(path, local)
    if name.lower().endswith(".onnx"):
        _fetch_external_data(fs, path, local)
    return local


def _fetch_external_data(fs, path: str, local: str) -> None:
    """The external data files an ONNX file names (plain relative locations; anything else is left
    to the converter to refuse), copied beside its local copy."""
    try:
        import onnx

        from hnn_jax.converters.load import external_tensors
        model = onnx.load(local, load_external_data=False)
        locations = {e.value for t in external_tensors(model) for e in t.external_data if e.key == "location"}
    except Exception:  # noqa: BLE001 - not a valid ONNX file: the converter says so
        return
    parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""
    for location in sorted(locations):
        parts = PurePosixPath(location.replace("\\", "/")).parts
        if not parts or location.startswith("/") or any(p in ("..", ".") for p in parts):
            continue
        target = os.path.join(os.path.dirname(local), *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            fs.get_file(_join(parent, "/".join(parts)), target)
        except FileNotFoundError:
            continue  # the converter names the missing file


def _renamed(error: Exception, local: str, url: str) -> Exception:
    """`error` with the temporary copy's path in its message replaced by the URL."""
    text = str(error)
    if local not in text:
        return error
    try:
        new = type(error)(text.replace(local, url))
    except Exception:  # noqa: BLE001 - a type with another constructor: keep it
        return error
    new.__cause__ = error
    return new


# ----------------------------------------------------------------------------- models
def model_format(path) -> str:
    """What the model at `path` (a find_models result) is: its file suffix ("onnx", "keras",
    "tflite", "gguf", "pt2"), or for a folder "savedmodel" or "snapshot" (a Hugging Face snapshot). A URL folder
    costs a request: the cluster build asks on its workers, next to the conversion."""
    if is_url(path):
        suffix = PurePosixPath(path.split("::", 1)[0].rstrip("/")).suffix.lower()
        if suffix in MODEL_SUFFIXES:
            return suffix.lstrip(".")
        fs, root = url_fs(path)
        return "savedmodel" if fs.isfile(_join(root, "saved_model.pb")) else "snapshot"
    path = Path(path)
    if path.is_file():
        return path.suffix.lower().lstrip(".")
    return "savedmodel" if (path / "saved_model.pb").is_file() else "snapshot"


def model_metadata(path, probe: str, fmt: str | None = None) -> dict:
    """An index entry's metadata for the model at `path` (a find_models result): its absolute
    path (a URL as it is), its format (model_format, unless given) and its probe status."""
    where = path if is_url(path) else str(Path(path).resolve())
    return {"path": where, "format": fmt or model_format(path), "probe": probe}


def find_models(paths) -> list[Path | str]:
    """Model files and SavedModel folders named by `paths`: files as given, folders walked
    recursively (sorted by path; SavedModel folders are not searched inside). A path that does
    not exist, or a folder holding no model, is an error. Local paths come back as Path, URLs
    (module docstring) as full URL strings."""
    from hnn_jax.errors import CorruptFileError

    found: list[Path | str] = []
    for arg in paths:
        if is_url(arg):
            found.extend(_find_url_models(arg))
            continue
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
            found.extend(root / f for f in sorted(files) if _is_model_file(f))
        found[before:] = sorted(found[before:], key=lambda p: p.parts)
        if len(found) == before:
            raise _no_models(arg)
    return found


def named_error(path, error: Exception) -> Exception:
    """`error` as an HNNError whose message names `path` (unexpected errors say their type)."""
    from hnn_jax.errors import HNNError, first_line

    message = first_line(error) if str(error).strip() else ""
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
    texts, the exception) when it cannot be converted: the warnings conversion raised are kept.
    A URL is copied into a temporary folder, converted there and the copy removed; messages name
    the URL."""
    from hnn_jax import converters, schema, weightcode

    if is_url(path):  # a copy in a temporary folder, under its own name (the suffix matters)
        with tempfile.TemporaryDirectory(prefix="hnn-jax-") as folder:
            try:
                local = _fetch(path, folder)
            except Exception as e:  # noqa: BLE001
                return None, None, [], _url_error(path, e)
            graph, probe, messages, exc = convert_file(local)
        messages = [m.replace(local, path) for m in messages]
        return graph, probe, messages, None if exc is None else _renamed(exc, local, path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            graph = converters.from_file(path)
        except Exception as e:  # noqa: BLE001 - foreign files can fail anywhere
            return None, None, [str(w.message) for w in caught], e
    probe = PROBE_NAMES.get(int(round(float(graph.globals[0, schema.GLOBAL_PROBE]))), "unknown")
    quality = weightcode.few_tensors_warning(graph)
    return graph, probe, [str(w.message) for w in caught] + ([quality] if quality else []), None


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
