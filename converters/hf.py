"""A transformers model -> ONNX: built from its config with parameters on the meta device (no
memory, no init time) for a snapshot or a GGUF file, traced by torch.export and converted by the
dynamo ONNX exporter, its weights attached as external data where a reader (snapshot.py, gguf.py)
found them; or a model in memory exported with the inputs its task needs."""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from hnn_jax.converters import export
from hnn_jax.errors import CorruptFileError, HNNError, UnsupportedModelError, first_line

log = logging.getLogger(__name__)
SEQUENCE = 16                   # tokens in the example text input
AUDIO_SAMPLES = 16_000          # one second at 16 kHz for speech models
FLOATS = {onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
          onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}


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


def imports():
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
    _, transformers = imports()
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
    torch, _ = imports()
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
            if not (found["dtype"] in FLOATS and elem_type in FLOATS):
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


def meta_model_to_onnx(model, shards: dict) -> onnx.ModelProto:
    """The graph of a model built on meta (build_meta_model), its weights external data at the
    places `shards` records (name -> dtype, shape, offset, length, location), matched under every
    name from_pretrained would match them by."""
    aliases = _aliases(model, getattr(model, "base_model_prefix", "") or "")
    proto, weights, values = export_meta(model, example_inputs(model))
    attach_weights(proto, weights, values, shards, aliases)
    return proto


def transformers_to_onnx(model) -> onnx.ModelProto:
    """A transformers.PreTrainedModel with the inputs its task needs (example_inputs: token ids
    and mask, pixels at the config's image size, raw audio or log-mel features, decoder ids for
    encoder-decoders, cache off). The TorchScript exporter first; dynamo where tracing fails (most
    of transformers 5's decoders)."""
    kwargs = example_inputs(model, device="cpu")
    try:
        return export.torch_to_onnx(model, kwargs=kwargs)
    except UnsupportedModelError as e:
        log.info("%s: TorchScript export failed (%s); exporting with dynamo", type(model).__name__, first_line(e))
        return export.torch_to_onnx(model, kwargs=kwargs, dynamo=True)
