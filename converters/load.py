"""Read an ONNX model from a path, bytes or ModelProto, refusing anything outside its folder.

External weights are never loaded into the ModelProto: each external file is memory-mapped once
and tensors are read-only views into it, so a model of many GB costs address space, not memory.
Code that reads a large view whole calls `release_pages` afterwards to drop it from the process.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from hnn_jax.errors import CorruptFileError, HNNError


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in external_data_helper._get_all_tensors(model)
            if external_data_helper.uses_external_data(t)]


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _checked_location(tensor: onnx.TensorProto, folder: Path) -> Path:
    """The real path of the tensor's data file, which must lie inside `folder`, with its byte
    range inside the file."""
    info = _external_info(tensor)
    location = info.get("location", "")
    if not isinstance(location, str) or "\0" in location:  # protobuf hands invalid UTF-8 back as bytes
        raise CorruptFileError(f"tensor '{tensor.name}': external data location {location!r} is not a "
                               "file name. The file is corrupt; re-export the model")
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise CorruptFileError(f"tensor '{tensor.name}' points at external data '{location}': only "
                               "relative paths inside the model's folder are read")
    target = (folder / location)
    real = Path(os.path.realpath(target))
    if target.is_symlink() or not real.is_relative_to(Path(os.path.realpath(folder))):
        raise CorruptFileError(f"tensor '{tensor.name}': external data '{location}' is a link or "
                               "leaves the model's folder; refusing to read it")
    if not real.is_file():
        raise CorruptFileError(f"tensor '{tensor.name}': external data file '{location}' is missing "
                               f"next to the model (looked in {folder})")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
    except ValueError:
        raise CorruptFileError(f"tensor '{tensor.name}': external data offset/length are not integers") from None
    size = real.stat().st_size
    if offset < 0 or offset > size or length > size - offset:
        raise CorruptFileError(f"tensor '{tensor.name}': external data range (offset {offset}, length "
                               f"{length}) runs past the end of '{location}' ({size} bytes): truncated file?")
    return real


def load_onnx(source, folder=None) -> tuple[onnx.ModelProto, Path | None]:
    """(ModelProto, folder of its external data or None) from a path, bytes or ModelProto.

    External data is read only from the model's own folder (no absolute paths, no '..', no
    symlinks out) and is not loaded: `tensor_array` maps it when a tensor is needed. A
    ModelProto may name `folder`, where its external data lies (a snapshot's shards).
    """
    if folder is not None and not isinstance(source, onnx.ModelProto):
        raise HNNError("folder= goes with an onnx.ModelProto; a path's folder is the file's own")
    if isinstance(source, onnx.ModelProto):
        model = source
        folder = Path(folder).resolve() if folder is not None else None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise CorruptFileError("empty bytes given as an ONNX model")
        try:
            model = onnx.load_from_string(bytes(source))
        except Exception as e:  # noqa: BLE001 - protobuf raises several types
            raise CorruptFileError(f"not a valid ONNX model: {e}") from None
        folder = None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise CorruptFileError(f"no such file: {path}")
        if path.stat().st_size == 0:
            raise CorruptFileError(f"{path} is empty")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001
            raise CorruptFileError(f"{path} is not a valid ONNX model: {e}") from None
        folder = path.resolve().parent
    else:
        raise HNNError(f"from_onnx takes a path, bytes or onnx.ModelProto, not {type(source).__name__}")
    if not model.HasField("graph") or not model.graph.node:
        raise CorruptFileError("the ONNX model has no graph nodes (empty, truncated or not ONNX)")
    external = external_tensors(model)
    if not external:
        return model, None
    if folder is None:
        raise CorruptFileError("the model keeps weights in external data files; pass its path, "
                               "not bytes or a ModelProto without the data loaded")
    for t in external:
        _checked_location(t, folder)
    return model, folder


def tensor_array(tensor: onnx.TensorProto, folder: Path | None, maps: dict[Path, mmap.mmap]) -> np.ndarray:
    """The tensor's values; external data becomes a read-only view of the mapped file (`maps`
    caches one mapping per file)."""
    if not external_data_helper.uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    if folder is None:
        raise CorruptFileError(f"tensor '{tensor.name}' keeps its data in an external file, but the "
                               "model was not given as a path; pass the .onnx file's path")
    path = _checked_location(tensor, folder)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if any(d < 0 for d in tensor.dims):
        raise CorruptFileError(f"tensor '{tensor.name}' has a negative dimension: {list(tensor.dims)}")
    count = math.prod(tensor.dims)  # exact: np.prod wraps around for huge dims
    info = _external_info(tensor)
    offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
    packed = tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    if packed or dtype.kind in "OUS":  # sub-byte or string data: let onnx read it into memory
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        external_data_helper.load_external_data_for_tensor(copy, str(folder))
        return numpy_helper.to_array(copy)
    needed = count * dtype.itemsize
    if length >= 0 and length < needed:
        raise CorruptFileError(f"tensor '{tensor.name}': external data holds {length} bytes, but "
                               f"shape {list(tensor.dims)} needs {needed}")
    if count == 0:
        return np.zeros(tuple(tensor.dims), dtype)
    if path not in maps:
        with open(path, "rb") as f:
            maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if offset + needed > len(maps[path]):
        raise CorruptFileError(f"tensor '{tensor.name}': external data runs past the end of "
                               f"'{path.name}': truncated file?")
    return np.frombuffer(maps[path], dtype, count, offset).reshape(tuple(tensor.dims))


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of the mapped file behind `array` (if any) from this process: they were
    read once and stay in the OS page cache, so reading again is cheap."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap):
        base.obj.madvise(mmap.MADV_DONTNEED)
    elif isinstance(base, mmap.mmap):  # a numpy.memmap's (gguf's reader maps its file so)
        base.madvise(mmap.MADV_DONTNEED)


def is_float(values: np.ndarray) -> bool:
    """Whether an array holds floats, bfloat16 (ml_dtypes, which numpy does not count) included."""
    return np.issubdtype(values.dtype, np.floating) or values.dtype.name == "bfloat16"


def values_at(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """values.reshape(-1)[positions] (C order), without copying a non-contiguous view whole."""
    if values.flags.c_contiguous:
        return values.reshape(-1)[positions]
    return values[np.unravel_index(positions, values.shape)]
