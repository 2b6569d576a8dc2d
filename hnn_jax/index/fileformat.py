"""The index file (HammingIndex.save/load): one uncompressed ``.npz`` (a zip, read without pickle)
holding ``header`` (JSON text: format name, ``format_version``, ``nbits``, ``arch_bits``,
``code_version``, ``count``, ``id_kind``, ``next_auto_id``; version 1 files, of codes without parts,
lack ``arch_bits``), ``words`` (uint64, shape [words per code, count], big-endian word = the code's
bits most significant first, padding bits zero), ``ids`` (int64 or unicode) and ``metadata`` (JSON
text: ``[[row, {...}], ...]`` for the entries that have metadata).
"""

import io
import json
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hnn_jax.errors import CorruptFileError, HNNError, IndexFormatError, SchemaMismatchError
from hnn_jax.index.packing import MAX_BITS, words_per_code

FORMAT = "hnn-jax-index"
FORMAT_VERSION = 2  # 2: arch_bits in the header (code v2)


class IndexFile(NamedTuple):
    """An index's contents as its file holds them."""

    nbits: int | None
    arch_bits: int | None
    version: str | None
    id_kind: str | None  # "int", "str", or None before the first entry
    next_auto_id: int
    words: np.ndarray  # uint64 [words per code, count]
    ids: np.ndarray  # [count]: int64, or object (str)
    metadata: dict[int, dict]  # row -> metadata, for the rows that have some


def write(path, contents: IndexFile) -> Path:
    """Write `contents` to `path` (atomically: a temporary file renamed over it)."""
    path = Path(path)
    n = contents.words.shape[1]
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "nbits": contents.nbits,
              "arch_bits": contents.arch_bits, "code_version": contents.version, "count": n,
              "id_kind": contents.id_kind, "next_auto_id": contents.next_auto_id}
    ids = contents.ids
    if contents.id_kind == "str":
        ids = np.array(ids.tolist() or [""], dtype=str)[:n]
    metadata = [[r, contents.metadata[r]] for r in sorted(contents.metadata)]
    arrays = {"header": np.array(json.dumps(header)),
              "words": contents.words.astype("<u8"),
              "ids": ids.astype("<i8") if contents.id_kind != "str" else ids,
              "metadata": np.array(json.dumps(metadata, allow_nan=False))}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read(path, nbits: int | None = None, version: str | None = None) -> IndexFile | None:
    """The checked contents of a file written by write(); None for an index that never held a
    code. `nbits`/`version`, when given, are what the caller expects (e.g. its hasher's); a file
    of other codes raises SchemaMismatchError."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"no such index file: {path}")
    if not zipfile.is_zipfile(path):
        raise CorruptFileError(f"{path} is not an hnn-jax index file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            missing = {"header", "words", "ids", "metadata"} - set(npz.files)
            if missing:
                raise ValueError(f"missing {sorted(missing)}")
            header = json.loads(str(npz["header"]))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError("not an hnn-jax index")
            if header.get("format_version") not in (1, FORMAT_VERSION):
                raise IndexFormatError(
                    f"{path}: index file format version {header.get('format_version')!r}; "
                    f"this hnn-jax reads version {FORMAT_VERSION} (rebuild the index or "
                    "use the hnn-jax that wrote it)")
            words, ids = npz["words"], npz["ids"]
            metadata = json.loads(str(npz["metadata"]))
    except HNNError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError,
            io.UnsupportedOperation) as e:
        raise CorruptFileError(f"{path}: not a readable hnn-jax index file ({e})") from None

    try:
        n, file_bits, file_version = header["count"], header["nbits"], header["code_version"]
        id_kind = header["id_kind"]
        arch_bits = header.get("arch_bits") if header["format_version"] >= 2 else None
        if n == 0 and file_bits is None:
            return None
        if arch_bits is not None and not (isinstance(arch_bits, int) and 0 <= arch_bits <= file_bits):
            raise ValueError(f"bad arch_bits {arch_bits!r}")
        if not (isinstance(n, int) and n >= 0 and isinstance(file_bits, int)
                and 0 < file_bits <= MAX_BITS and isinstance(file_version, str)):
            raise ValueError("bad header")
        nwords = words_per_code(file_bits)
        if words.dtype != np.dtype("<u8") or words.shape != (nwords, n):
            raise ValueError(f"words have shape {words.shape}, expected {(nwords, n)}")
        if id_kind == "int" and (ids.dtype != np.dtype("<i8") or ids.shape != (n,)):
            raise ValueError("bad int ids")
        if id_kind == "str" and (ids.dtype.kind != "U" or ids.shape != (n,)):
            raise ValueError("bad str ids")
        if id_kind not in ("int", "str") and n:
            raise ValueError(f"unknown id kind {id_kind!r}")
        pad = nwords * 64 - file_bits
        if pad and n and (words[-1] & np.uint64((1 << pad) - 1)).any():
            raise ValueError("padding bits are not zero")
        if not isinstance(metadata, list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], int)
                and 0 <= e[0] < n and isinstance(e[1], dict) for e in metadata):
            raise ValueError("bad metadata")
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{path}: damaged hnn-jax index file ({e})") from None

    if nbits is not None and nbits != file_bits:
        raise SchemaMismatchError(
            f"{path} holds {file_bits}-bit codes, expected {nbits}-bit codes")
    if version is not None and version != file_version:
        raise SchemaMismatchError(
            f"{path} holds codes of version {file_version!r}, expected {version!r}: the index "
            "was built by another hasher (rebuild it with the current one)")
    return IndexFile(nbits=file_bits, arch_bits=arch_bits, version=file_version, id_kind=id_kind,
                     next_auto_id=int(header.get("next_auto_id", 0)), words=words.astype(np.uint64, copy=False),
                     ids=ids.astype(np.int64) if id_kind == "int" else np.array(ids.tolist(), dtype=object),
                     metadata={row: meta for row, meta in metadata})
