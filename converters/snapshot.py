"""A Hugging Face snapshot folder (config.json + *.safetensors shards) -> ONNX graph + weights in
place, without materialising the model.

The graph comes from the model built from its config with parameters on the meta device (no
memory, no init time), traced by torch.export and converted by the dynamo ONNX exporter. The
weights are never read here: each graph weight becomes an ONNX external-data initializer pointing
at its byte range inside a shard (safetensors is a JSON header + raw little-endian arrays, the
layout ONNX external data describes), so canonicalisation, the probe and the features memory-map
them like any external ONNX weight. Pickled weights (pytorch_model.bin, *.pt) are never read.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hnn_jax.converters import export
from hnn_jax.errors import CorruptFileError, HNNError, UnsupportedModelError, first_line

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
SEQUENCE = 16                   # tokens in the example text input
AUDIO_SAMPLES = 16_000          # one second at 16 kHz for speech models
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# safetensors dtype -> ONNX element type
DTYPES = {"F64": onnx.TensorProto.DOUBLE, "F32": onnx.TensorProto.FLOAT, "F16": onnx.TensorProto.FLOAT16,
          "BF16": onnx.TensorProto.BFLOAT16, "I64": onnx.TensorProto.INT64, "I32": onnx.TensorProto.INT32,
          "I16": onnx.TensorProto.INT16, "I8": onnx.TensorProto.INT8, "U8": onnx.TensorProto.UINT8,
          "U16": onnx.TensorProto.UINT16, "U32": onnx.TensorProto.UINT32, "U64": onnx.TensorProto.UINT64,
          "BOOL": onnx.TensorProto.BOOL, "F8_E4M3": onnx.TensorProto.FLOAT8E4M3FN,
          "F8_E5M2": onnx.TensorProto.FLOAT8E5M2}
_FLOATS = {onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
           onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}


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


# ----------------------------------------------------------------------------- the model on meta

@contextlib.contextmanager
def meta_parameters():
    """Parameters created inside go to the meta device (no memory, free init); buffers stay
    real, so computed ones (rotary inv_freq, position ids) keep their values. What accelerate's
    init_empty_weights(include_buffers=False) does."""
    import torch

    register = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":  # a tied parameter stays itself
            p = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _imports():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise UnsupportedModelError(f"hashing a Hugging Face snapshot needs transformers and torch ({e.name} is "
                                    "missing): pip install 'hnn-jax[torch,hf]'") from None
    return torch, transformers


def build_meta_model(folder: Path, checkpoint_names: set[str], config=None):
    """The model of the snapshot's config (or `config`: a GGUF file's) (architectures[0], else
    AutoModelForCausalLM for a GGUF file, AutoModel otherwise), parameters on meta, float32, eval
    mode, weights tied as from_pretrained ties them for this checkpoint. No code from the folder
    runs: trust_remote_code stays off."""
    _, transformers = _imports()
    auto = transformers.AutoModel if config is None else transformers.AutoModelForCausalLM
    if config is None:
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError...
            raise UnsupportedModelError(f"{folder}/config.json: transformers cannot read it: "
                                        f"{first_line(e)}") from None
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names and isinstance(names[0], str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with meta_parameters():
                model = cls(config) if cls is not None else auto.from_config(config)
            missing = {n for n, _ in model.named_parameters(remove_duplicate=False)} - checkpoint_names
            if "missing_keys" in inspect.signature(model.tie_weights).parameters:  # transformers >= 5
                model.tie_weights(missing_keys=missing)  # from_pretrained's tying: what the checkpoint lacks
            else:
                model.tie_weights()
    except HNNError:
        raise
    except Exception as e:  # noqa: BLE001 - any model __init__ error
        raise UnsupportedModelError(f"transformers could not build {names[:1] or config.model_type} from "
                                    f"{folder}/config.json: {first_line(e)}") from None
    return model.eval()


def example_inputs(model, device: str = "meta") -> dict:
    """Example inputs by the model's main input and forward signature: token ids [1, 16]
    (+ attention mask, token types), pixels [1, C, S, S] at the config's image size, audio
    [1, 16000], log-mel features [1, mels, frames]; decoder token ids [1, 4] for encoder-decoders;
    no KV cache. On the meta device for a snapshot, on "cpu" for a built model."""
    import torch

    params = inspect.signature(model.forward).parameters
    main = getattr(model, "main_input_name", "input_ids")
    config = model.config
    on = dict(device=device)
    if main == "input_ids":
        kwargs = {"input_ids": torch.zeros(1, SEQUENCE, dtype=torch.long, **on)}
        for extra in ("attention_mask", "token_type_ids"):
            if extra in params:
                kwargs[extra] = torch.ones(1, SEQUENCE, dtype=torch.long, **on) if extra == "attention_mask" \
                    else torch.zeros(1, SEQUENCE, dtype=torch.long, **on)
    elif main == "pixel_values":
        vision = getattr(config, "vision_config", None) or config
        size = getattr(vision, "image_size", 224)
        size = size if isinstance(size, int) else int(list(size.values() if isinstance(size, dict) else size)[0])
        kwargs = {"pixel_values": torch.zeros(1, getattr(vision, "num_channels", 3), size, size, **on)}
    elif main == "input_values":
        kwargs = {"input_values": torch.zeros(1, AUDIO_SAMPLES, **on)}
    elif main == "input_features":  # Whisper reads exactly 2 x max_source_positions frames
        mels = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", 80)
        frames = 2 * getattr(config, "max_source_positions", 32)
        kwargs = {"input_features": torch.zeros(1, mels, frames, **on)}
    else:
        raise UnsupportedModelError(f"{type(model).__name__} takes '{main}' as its main input, for which hnn-jax "
                                    "has no example input (it has token ids, pixel_values, input_values and "
                                    "input_features)")
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        kwargs["decoder_input_ids"] = torch.zeros(1, 4, dtype=torch.long, **on)
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def export_meta(model, kwargs: dict) -> tuple[onnx.ModelProto, dict, dict]:
    """(graph without initializers, name -> (ONNX type, shape) of each weight it reads,
    name -> numpy value of each buffer or constant, recorded before the model goes to meta)."""
    torch, _ = _imports()
    values = {n: b.detach().numpy().copy() for n, b in model.named_buffers(remove_duplicate=False)
              if b.device.type != "meta"}
    model.to(device="meta", dtype=torch.float32)
    try:
        with torch.no_grad(), warnings.catch_warnings(), export.quiet_logger():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (), kwargs, strict=False)
            for name, c in program.constants.items():
                if isinstance(c, torch.Tensor) and c.device.type != "meta":
                    values.setdefault(name, c.detach().numpy().copy())
            # optimize=True folds constants, which meta weights cannot be
            onnx_program = torch.onnx.export(program, dynamo=True, optimize=False, verbose=False)
    except HNNError:
        raise
    except Exception as e:  # torch.export and the exporter raise many types
        raise UnsupportedModelError(f"torch.export of {type(model).__name__} failed: "
                                    f"{first_line(e)}") from e
    import onnx_ir

    initializers = dict(onnx_program.model.graph.initializers)
    weights = {name: (int(v.dtype), [int(d) for d in v.shape]) for name, v in initializers.items()}
    onnx_program.model.graph.initializers.clear()  # meta tensors cannot be serialised
    try:
        proto = onnx_ir.serde.serialize_model(onnx_program.model)
    finally:
        onnx_program.model.graph.initializers.update(initializers)
    return proto, weights, values


def _aliases(model, prefix: str) -> dict[str, list[str]]:
    """name -> every name of the same parameter or buffer (tied weights share one object), with
    the base model's prefix added and taken off: how from_pretrained matches checkpoints."""
    groups: dict[int, list[str]] = {}
    for n, p in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(p), []).append(n)
    out = {}
    for names in groups.values():
        spelled = list(names)
        if prefix:
            spelled += [n[len(prefix) + 1:] for n in names if n.startswith(prefix + ".")]
            spelled += [f"{prefix}.{n}" for n in names if not n.startswith(prefix + ".")]
        for n in names:
            out[n] = list(dict.fromkeys(spelled))
    return out


def attach_weights(proto: onnx.ModelProto, weights: dict, values: dict, shards: dict, aliases: dict) -> None:
    """Give the graph its initializers: external data into the shards for checkpoint weights (a
    stored dtype other than the graph's gets a Cast), inline values for buffers and constants."""
    graph = proto.graph
    casts = []
    for name, (elem_type, shape) in weights.items():
        found = next((shards[a] for a in aliases.get(name, [name]) if a in shards), None)
        if found is None:
            if name not in values:
                raise CorruptFileError(f"weight '{name}' is not in the snapshot's safetensors shards")
            value = values[name]
            graph.initializer.append(numpy_helper.from_array(value, name))
            continue
        if list(found["shape"]) != list(shape):
            raise CorruptFileError(f"weight '{name}' has shape {found['shape']} in {found['location']}, but the "
                                   f"config's model needs {shape}")
        stored = name
        if found["dtype"] != elem_type:
            if not (found["dtype"] in _FLOATS and elem_type in _FLOATS):
                raise CorruptFileError(f"weight '{name}' is {helper.tensor_dtype_to_string(found['dtype'])} in "
                                       f"{found['location']}; the model needs "
                                       f"{helper.tensor_dtype_to_string(elem_type)}")
            stored = f"{name}__stored"
            casts.append(helper.make_node("Cast", [stored], [name], to=elem_type, name=f"{name}__cast"))
        tensor = onnx.TensorProto(name=stored, data_type=found["dtype"], dims=shape,
                                  data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", found["location"]), ("offset", found["offset"]),
                           ("length", found["length"])):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        graph.initializer.append(tensor)
    if casts:
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)


def snapshot_to_onnx(folder, scratch=None) -> tuple[onnx.ModelProto, Path]:
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
        if scratch is None:
            raise HNNError("a quantised snapshot needs a scratch folder for its dequantised weights")
        data_folder, shards = quantized.dequantized_shards(data_folder, shards, method, Path(scratch))
    model = build_meta_model(folder, set(shards))
    aliases = _aliases(model, getattr(model, "base_model_prefix", "") or "")
    proto, weights, values = export_meta(model, example_inputs(model))
    attach_weights(proto, weights, values, shards, aliases)
    return proto, data_folder
