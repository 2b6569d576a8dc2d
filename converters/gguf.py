"""A GGUF file (llama.cpp's format, quantised or not) -> ONNX graph + dequantised weights, for
tracing a quantised LLM file to its source checkpoint.

The graph is the one from_snapshot builds: the transformers model of the file's config (which
transformers maps from the GGUF metadata), parameters on the meta device, exported by the dynamo
exporter. The weights are dequantised one tensor at a time (gguf's own dequantisers), renamed
back to the checkpoint's names and un-permuted where llama.cpp's converter permuted them (the
query and key rows, for its rotary layout: transformers' GGUF tensor processors), and written to
a float32 data file that the graph's initializers point into: no more than one tensor is held
in memory, a large one a block of rows at a time, and the file's pages are dropped once read.
The code is then the source checkpoint's, up to what quantisation moved.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

from hnn_jax.converters import hf, snapshot
from hnn_jax.converters.load import release_pages
from hnn_jax.errors import CorruptFileError, UnsupportedModelError, first_line

log = logging.getLogger(__name__)
MAGIC = b"GGUF"
CHUNK_ROWS_VALUES = 1 << 22  # a large tensor is dequantised this many values at a time
# Tensors the GGUF tensor processors may reorder as a whole (llama.cpp's query / key permutation,
# split or fused projections): never cut into row chunks. A processor that changes a row block's
# shape (a transpose) is found on the tensor's first row, and that tensor is read whole too.
_WHOLE = ("attn_q", "attn_k", "attn_qkv", "attn_kv")


def _imports():
    try:
        import gguf
    except ImportError:
        raise UnsupportedModelError("hashing a GGUF file needs the gguf package: pip install 'hnn-jax[hf]'") from None
    torch, transformers = hf.imports()
    return gguf, torch, transformers


def _reader(path: Path):
    gguf, _, _ = _imports()
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise CorruptFileError(f"{path}: not a GGUF file (no GGUF magic)")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError, struct.error, IndexError...
        raise CorruptFileError(f"{path}: gguf cannot read it: {first_line(e)}") from None


def gguf_to_onnx(path, data_folder) -> tuple[onnx.ModelProto, Path]:
    """(ONNX model whose weights are external data in `data_folder` (snapshot.ScratchData), that folder).
    The caller owns the folder (a temporary one) and removes it after the conversion."""
    path, data_folder = Path(path), Path(data_folder)
    gguf, _, transformers = _imports()
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    reader = _reader(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError, KeyError, OSError...
        raise UnsupportedModelError(f"{path}: transformers cannot map its GGUF metadata to a config: "
                                    f"{first_line(e)}") from None
    architecture = str(getattr(config, "model_type", ""))
    gguf_architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    processor = hf_gguf.TENSOR_PROCESSORS.get(gguf_architecture, hf_gguf.TensorProcessor)(config=config.to_dict())
    meta_model = hf.build_meta_model(path, set(), config=config)
    key_map = hf_gguf.get_gguf_hf_weights_map(meta_model, processor)
    config_dict = config.to_dict()

    def dequantised(tensor, rows: slice):
        """(checkpoint name, float32 values, whether the processor kept the rows' shape) of some
        rows of a GGUF tensor, un-permuted. A fresh parsed_parameters each time: a processor that
        stashes a tensor there (GPT-2's output.weight, MoE experts) must not keep it alive."""
        values = gguf.quants.dequantize(tensor.data[rows], tensor.tensor_type)
        result = processor.process(weights=values, name=tensor.name, tensor_key_mapping=key_map,
                                   parsed_parameters={"config": config_dict, "tensors": {}})
        processed = np.asarray(result.weights, np.float32)
        return result.name, processed, processed.shape == values.shape

    started = time.perf_counter()
    with snapshot.ScratchData(data_folder) as out:
        for tensor in reader.tensors:
            log.debug("dequantising %s %s (%s)", tensor.name, list(tensor.shape), tensor.tensor_type.name)
            rows = tensor.data.shape[0] if tensor.data.ndim > 1 else 0
            whole = not rows or tensor.n_elements <= CHUNK_ROWS_VALUES or any(k in tensor.name for k in _WHOLE)
            if not whole:  # a processor that reshapes rows (GPT-2 transposes its matrices) needs them all
                name, _, keeps_shape = dequantised(tensor, slice(0, 1))
                whole = not keeps_shape
            if whole:
                name, values, _ = dequantised(tensor, slice(None))
                if name in key_map:
                    out.put(key_map[name], values, onnx.TensorProto.FLOAT)
            else:  # one block of rows at a time: a large tensor is never held dequantised whole
                step = max(1, CHUNK_ROWS_VALUES // (tensor.n_elements // rows))
                if name in key_map:
                    out.put(key_map[name], (dequantised(tensor, slice(first, first + step))[1]
                                            for first in range(0, rows, step)), onnx.TensorProto.FLOAT)
            release_pages(tensor.data)  # the file's pages, read once
    shards = out.tensors
    log.info("%s: %d tensors dequantised into %s in %.1f s", path.name, len(shards), data_folder,
             time.perf_counter() - started)
    if not shards:
        raise UnsupportedModelError(f"{path}: none of its tensors maps to a {architecture} checkpoint's names")
    proto = hf.meta_model_to_onnx(hf.build_meta_model(path, set(shards), config=config), shards)
    return proto, data_folder
