"""Read an ONNX model from a path, bytes or ModelProto, refusing anything outside its folder."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import external_data_helper

from hnn_jax.errors import CorruptFileError, HNNError


def _external_tensors(model: onnx.ModelProto):
    return [t for t in external_data_helper._get_all_tensors(model)
            if external_data_helper.uses_external_data(t)]


def _check_external_location(tensor: onnx.TensorProto, folder: Path) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
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


def load_onnx(source) -> onnx.ModelProto:
    """ModelProto from a path, bytes or ModelProto; external data is read only from the model's
    own folder (no absolute paths, no '..', no symlinks out)."""
    if isinstance(source, onnx.ModelProto):
        model = source
        folder = None
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
    external = _external_tensors(model)
    if external:
        if folder is None:
            raise CorruptFileError("the model keeps weights in external data files; pass its path, "
                                   "not bytes or a ModelProto without the data loaded")
        for t in external:
            _check_external_location(t, folder)
        external_data_helper.load_external_data_for_model(model, str(folder))
    return model
