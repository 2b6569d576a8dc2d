"""A Hugging Face snapshot folder (config.json + *.safetensors shards) -> ONNX graph + weights in
place, without materialising the model: the safetensors reader (and the scratch file quantised
weights are dequantised into) here, the model built on the meta device in hf.py.

The weights are never read here: each graph weight becomes an ONNX external-data initializer pointing
at its byte range inside a shard (safetensors is a JSON header + raw little-endian arrays, the
layout ONNX external data describes), so canonicalisation, the probe and the features memory-map
them like any external ONNX weight. Pickled weights (pytorch_model.bin, *.pt) are never read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from hnn_jax.converters import hf
from hnn_jax.errors import CorruptFileError, UnsupportedModelError, first_line

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# safetensors dtype -> ONNX element type
DTYPES = {"F64": onnx.TensorProto.DOUBLE, "F32": onnx.TensorProto.FLOAT, "F16": onnx.TensorProto.FLOAT16,
          "BF16": onnx.TensorProto.BFLOAT16, "I64": onnx.TensorProto.INT64, "I32": onnx.TensorProto.INT32,
          "I16": onnx.TensorProto.INT16, "I8": onnx.TensorProto.INT8, "U8": onnx.TensorProto.UINT8,
          "U16": onnx.TensorProto.UINT16, "U32": onnx.TensorProto.UINT32, "U64": onnx.TensorProto.UINT64,
          "BOOL": onnx.TensorProto.BOOL, "F8_E4M3": onnx.TensorProto.FLOAT8E4M3FN,
          "F8_E5M2": onnx.TensorProto.FLOAT8E5M2}


# ----------------------------------------------------------------------------- shards

def _read_header(path: Path, location: str) -> dict[str, dict]:
    """name -> {dtype, shape, offset, length} (offset from the start of the file), checked
    against the file's size: a truncated or garbled shard is a CorruptFileError here."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{location}: {size} bytes, too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CorruptFileError(f"{location}: header of {length} bytes does not fit the {size}-byte file "
                                   "(truncated, or not safetensors)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(f"{location}: the safetensors header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{location}: the safetensors header is not a JSON object")
    start, out = 8 + length, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{location}: tensor '{name}' has a malformed header entry") from None
        if dtype not in DTYPES:
            raise UnsupportedModelError(f"{location}: tensor '{name}' has dtype {dtype}, which hnn-jax does "
                                        "not read")
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(DTYPES[dtype])).itemsize
        if any(d < 0 for d in shape) or not 0 <= begin <= end or end - begin != math.prod(shape) * itemsize:
            raise CorruptFileError(f"{location}: tensor '{name}' ({dtype} {shape}) has byte range "
                                   f"[{begin}, {end}), which does not fit its shape")
        if start + end > size:
            raise CorruptFileError(f"{location}: tensor '{name}' runs past the end of the file ({size} bytes): "
                                   "truncated shard?")
        out[name] = dict(dtype=DTYPES[dtype], shape=shape, offset=start + begin, length=end - begin,
                         location=location)
    return out


def _data_folder(folder: Path, shards: list[Path]) -> tuple[Path, dict[Path, str]]:
    """The folder external data is read from and each shard's location in it. A plain snapshot
    holds its shards; the Hugging Face cache's snapshots/<rev>/ links each one to ../../blobs/,
    so there the repository folder is used and the links' targets in blobs/ are read (links
    anywhere else are refused when load.load_onnx checks the locations)."""
    if not any(s.is_symlink() for s in shards):
        return folder, {s: s.name for s in shards}
    root = Path(os.path.realpath(folder)).parent.parent
    blobs = root / "blobs"
    locations = {}
    for s in shards:
        real = Path(os.path.realpath(s))
        if real.parent != blobs:
            raise CorruptFileError(f"shard '{s.name}' links to {real}, outside the snapshot (only links into "
                                   "the Hugging Face cache's ../../blobs are followed)")
        locations[s] = f"blobs/{real.name}"
    return root, locations


def read_shards(folder: Path) -> tuple[Path, dict[str, dict]]:
    """(data folder, tensor name -> where it lies) for every *.safetensors shard of the snapshot.
    Pickled weights alone are refused; a shard the index names but the folder lacks is corrupt."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UnsupportedModelError(
                f"{folder} holds only pickled weights ({', '.join(pickles[:3])}): pickles are never unpickled "
                "(that can run arbitrary code). Convert them once where you trust the file: "
                "model = AutoModel.from_pretrained(dir); model.save_pretrained(dir, safe_serialization=True)")
        raise CorruptFileError(f"{folder} has config.json but no *.safetensors weights")
    for index in folder.glob("*.safetensors.index.json"):
        try:
            named = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CorruptFileError(f"{index.name} is not a valid safetensors index") from None
        missing = sorted(str(n) for n in named if not (folder / str(n)).is_file())
        if missing:
            raise CorruptFileError(f"{folder}: shards named in {index.name} are missing: {missing[:3]}")
    data_folder, locations = _data_folder(folder, shards)
    tensors: dict[str, dict] = {}
    for shard in shards:
        for name, info in _read_header(shard, locations[shard]).items():
            if name in tensors:
                raise CorruptFileError(f"tensor '{name}' is in two shards: {tensors[name]['location']} and "
                                       f"{info['location']}")
            tensors[name] = info
    return data_folder, tensors


class ScratchData:
    """Tensors written one after another into one data file, each recorded as read_shards records
    a shard's (name -> dtype, shape, offset, length, location), for attach_weights: where a
    quantised file's weights are dequantised to (gguf.py, quantized.py). A tensor may come in
    blocks of rows, so a large one is never held whole."""

    FILE = "weights.bin"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tensors: dict[str, dict] = {}
        self._file = open(self.folder / self.FILE, "wb")
        self._offset = 0

    def put(self, name: str, blocks, dtype: int) -> None:
        """Append tensor `name` of ONNX element type `dtype`, given as one array or an iterable
        of blocks of its rows."""
        shape = list(blocks.shape) if isinstance(blocks, np.ndarray) else None
        rows, rest, length = 0, (), 0
        for block in [blocks] if shape is not None else blocks:
            data = np.ascontiguousarray(block)
            rows, rest = rows + data.shape[0], data.shape[1:]
            self._file.write(data.tobytes())
            length += data.nbytes
        self.tensors[name] = {"dtype": dtype, "shape": shape if shape is not None else [rows, *rest],
                              "offset": self._offset, "length": length, "location": self.FILE}
        self._offset += length

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def snapshot_to_onnx(folder, scratch) -> tuple[onnx.ModelProto, Path]:
    """(ONNX model whose weights are external data inside the shards, the folder that data is
    read from). from_onnx -> load.load_onnx checks every location against that folder. A GPTQ or
    AWQ checkpoint's weights are dequantised into `scratch` (a folder the caller removes) and
    read from there (quantized.py)."""
    from hnn_jax.converters import quantized

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CorruptFileError(f"{folder} has no config.json: not a Hugging Face snapshot")
    data_folder, shards = read_shards(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{folder}/config.json: {first_line(e)}") from None
    method = quantized.quantization(config) if isinstance(config, dict) else None
    if method is not None:
        data_folder, shards = quantized.dequantized_shards(data_folder, shards, method, Path(scratch))
    return hf.meta_model_to_onnx(hf.build_meta_model(folder, set(shards)), shards), data_folder
