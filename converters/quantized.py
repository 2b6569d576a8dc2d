"""Quantised Hugging Face checkpoints (GPTQ and AWQ 4/8-bit linears in safetensors) -> the
dequantised weights of the model they were quantised from, for tracing such a file to its source.

A GPTQ or AWQ snapshot keeps its config (with a `quantization_config`) and stores each quantised
Linear as packed integers (`qweight`), per-group zero points (`qzeros`) and scales (`scales`),
GPTQ with a group index per input (`g_idx`). The graph is built from the config as for any
snapshot (snapshot.py; transformers quantises only in from_pretrained, so the model built from
the config has plain Linear weights); here every tensor is written to one float32 data file in a
scratch folder, each quantised Linear dequantised to the [out, in] weight it stands for, one
tensor at a time. Layouts: GPTQ packs 32 // bits values of the input axis into each int32 of
qweight [in * bits / 32, out] and of the output axis into qzeros [groups, out * bits / 32], and
its original checkpoint format ("gptq", not "gptq_v2") stores each zero point less one; AWQ's GEMM
layout packs the output axis of qweight [in, out * bits / 32] and qzeros, in the order
0, 2, 4, 6, 1, 3, 5, 7. compressed-tensors checkpoints are not read yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from hnn_jax.converters.snapshot import ScratchData
from hnn_jax.errors import CorruptFileError, UnsupportedModelError

METHODS = ("gptq", "awq")
_AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # the column a packed nibble holds (AWQ's GEMM layout)
_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def quantization(config_dict: dict) -> dict | None:
    """The checkpoint's quantization_config if hnn-jax reads its method, None if it has none."""
    found = config_dict.get("quantization_config")
    if not found:
        return None
    method = str(found.get("quant_method", "")).lower()
    if method not in METHODS:
        raise UnsupportedModelError(f"checkpoints quantised with '{method}' are not read (hnn-jax reads "
                                    f"{', '.join(METHODS)} safetensors and GGUF files)")
    return found


def _read(data_folder: Path, info: dict) -> np.ndarray:
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(info["dtype"]))
    return np.memmap(data_folder / info["location"], dtype=dtype, mode="r", offset=info["offset"],
                     shape=tuple(info["shape"]))


def _unpack(packed: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """int32 words of 32 // bits values each (lowest bits first) -> the values, along `axis`."""
    shifts = np.arange(0, 32, bits, dtype=np.uint32)
    words = np.ascontiguousarray(packed).view(np.uint32)
    values = (np.expand_dims(words, axis + 1) >> np.expand_dims(shifts, tuple(i for i in range(words.ndim + 1)
                                                                                if i != axis + 1)))
    values &= np.uint32((1 << bits) - 1)
    shape = list(words.shape)
    shape[axis] *= len(shifts)
    return values.reshape(shape)


def dequantize(parts: dict[str, np.ndarray], config: dict) -> np.ndarray:
    """float32 [out, in] weight of one quantised Linear from its qweight, qzeros, scales (and
    GPTQ's g_idx)."""
    method, bits = str(config["quant_method"]).lower(), int(config.get("bits", config.get("w_bit", 4)))
    if bits not in (2, 4, 8):
        raise UnsupportedModelError(f"{method} with {bits}-bit weights is not read (2, 4 and 8 bits are)")
    scales = np.asarray(parts["scales"], np.float32)                          # [groups, out]
    if method == "gptq":
        weight = _unpack(parts["qweight"], bits, 0).astype(np.float32)         # [in, out]
        zeros = _unpack(parts["qzeros"], bits, 1).astype(np.float32)           # [groups, out]
        if str(config.get("checkpoint_format", "gptq")).lower() == "gptq":
            zeros += 1  # the original format stores each zero point less one
        group_size = int(config.get("group_size", -1))
        groups = (np.asarray(parts["g_idx"], np.int64) if "g_idx" in parts
                  else np.arange(weight.shape[0]) // (group_size if group_size > 0 else weight.shape[0]))
    else:  # awq, GEMM layout
        inverse = np.argsort(_AWQ_ORDER[:32 // bits] if bits == 4 else np.arange(32 // bits))
        weight = _unpack(parts["qweight"], bits, 1)                             # [in, out] in packed order
        zeros = _unpack(parts["qzeros"], bits, 1)
        per = 32 // bits
        weight = weight.reshape(weight.shape[0], -1, per)[:, :, inverse].reshape(weight.shape).astype(np.float32)
        zeros = zeros.reshape(zeros.shape[0], -1, per)[:, :, inverse].reshape(zeros.shape).astype(np.float32)
        group_size = int(config.get("group_size", config.get("q_group_size", 128)))
        groups = np.arange(weight.shape[0]) // group_size
    if weight.shape[1] != scales.shape[1] or groups.max(initial=0) >= scales.shape[0]:
        raise CorruptFileError(f"{method} tensors disagree: qweight gives {weight.shape}, scales {scales.shape}")
    return np.ascontiguousarray(((weight - zeros[groups]) * scales[groups]).T)


def dequantized_shards(data_folder: Path, shards: dict[str, dict], config: dict,
                       out_folder: Path) -> tuple[Path, dict[str, dict]]:
    """(out_folder, tensor name -> where it lies in out_folder's ScratchData file): every tensor
    of the snapshot, each quantised Linear as `<prefix>.weight`, float32 [out, in]."""
    quantised = sorted({name[:-len(".qweight")] for name in shards if name.endswith(".qweight")})
    if not quantised:
        raise CorruptFileError(f"the config says {config.get('quant_method')} but no tensor is a qweight")
    members = {f"{prefix}.{part}" for prefix in quantised for part in _PARTS}
    with ScratchData(out_folder) as out:
        for prefix in quantised:
            missing = [p for p in _PARTS[:3] if f"{prefix}.{p}" not in shards]
            if missing:
                raise CorruptFileError(f"quantised linear '{prefix}' lacks {', '.join(missing)}")
            parts = {p: _read(data_folder, shards[f"{prefix}.{p}"]) for p in _PARTS if f"{prefix}.{p}" in shards}
            out.put(f"{prefix}.weight", dequantize(parts, config), onnx.TensorProto.FLOAT)
        for name, info in shards.items():
            if name not in members:
                out.put(name, _read(data_folder, info), info["dtype"])
    return out_folder, out.tensors
