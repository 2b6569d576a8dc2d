"""Small models built in code for the tests and benchmarks (no downloads, weights from seeds)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def torch_cnn(seed: int = 0, width: int = 8):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
            self.bn2 = nn.BatchNorm2d(2 * width)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * width, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    model = CNN().eval()
    for bn in (model.bn1, model.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model, torch.randn(1, 3, 16, 16)


def torch_mlp(seed: int = 0, depth: int = 2, width: int = 32):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = [nn.Linear(16, width), nn.LayerNorm(width), nn.GELU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.GELU(approximate="tanh"), nn.Dropout(0.1)]
    layers += [nn.Linear(width, 4), nn.SiLU()]
    return nn.Sequential(*layers).eval(), torch.randn(1, 16)


def torch_transformer(seed: int = 0, layers: int = 1, d_model: int = 32, seq: int = 8):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, d_model)
            self.blocks = nn.ModuleList()
            for _ in range(layers):
                self.blocks.append(nn.ModuleDict(dict(
                    ln1=nn.LayerNorm(d_model), qkv=nn.Linear(d_model, 3 * d_model),
                    proj=nn.Linear(d_model, d_model), ln2=nn.LayerNorm(d_model),
                    up=nn.Linear(d_model, 4 * d_model), down=nn.Linear(4 * d_model, d_model))))
            self.head = nn.Linear(d_model, 5)

        def forward(self, ids):
            x = self.embed(ids)
            for b in self.blocks:
                q, k, v = b["qkv"](b["ln1"](x)).chunk(3, dim=-1)
                att = torch.softmax(q @ k.transpose(-2, -1) / d_model ** 0.5, dim=-1)
                x = x + b["proj"](att @ v)
                x = x + b["down"](torch.nn.functional.gelu(b["up"](b["ln2"](x))))
            return self.head(x.mean(dim=1))

    return Encoder().eval(), torch.randint(0, 100, (1, seq))


def keras_cnn_sequential(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.LayerNormalization(),
        keras.layers.Dense(16, activation="gelu"), keras.layers.Dense(4, activation="swish")])


def keras_functional(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((10,))
    a = keras.layers.Dense(8)(x)
    b = keras.layers.Dense(8, activation="tanh")(x)
    y = keras.layers.Softmax()(keras.layers.Add()([a, b]))
    return keras.Model(x, y)


def onnx_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def onnx_mlp(seed: int, layers: int, width: int, *, activation: int = 0, d_in: int = 12) -> onnx.ModelProto:
    """A small ONNX MLP: per layer MatMul, Add and an activation (Relu, Tanh, Sigmoid in turn,
    starting at `activation`), `width` wide, weights drawn from `seed`; milliseconds to build."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, d = [], [], "x", d_in
    for k in range(layers):
        inits += [(f"w{k}", (rng.standard_normal((d, width)) / np.sqrt(d)).astype(np.float32)),
                  (f"b{k}", (0.1 * rng.standard_normal(width)).astype(np.float32))]
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"]),
                  helper.make_node(("Relu", "Tanh", "Sigmoid")[(activation + k) % 3], [f"a{k}"], [f"h{k}"])]
        x, d = f"h{k}", width
    return onnx_model(nodes, [float_input("x", [1, d_in])], [float_input(x, [1, width])], inits)


def torch_twin_of_keras_cnn(seed: int = 0):
    """The architecture of keras_cnn_sequential, written in PyTorch."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.ln, self.fc1, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
            x = nn.functional.gelu(self.fc1(self.ln(x)))
            return nn.functional.silu(self.fc2(x))

    return Twin().eval(), torch.randn(1, 3, 16, 16)


def copy_keras_weights_into_twin(keras_model, twin, statistics: bool = True) -> None:
    """keras_cnn_sequential's state into torch_twin_of_keras_cnn: kernels from HWIO to OIHW,
    dense kernels transposed, BatchNorm statistics and both frameworks' epsilons. With
    `statistics`, an untrained model's BatchNorm statistics are first moved off their initial
    values, so the copy carries them (a trained model's are kept)."""
    import torch

    conv, bn, ln, fc1, fc2 = [layer for layer in keras_model.layers if layer.weights]
    if statistics:
        rng = np.random.default_rng(0)
        bn.moving_mean.assign(rng.uniform(-0.5, 0.5, 8).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype(np.float32))

    def put(param, value):
        param.copy_(torch.tensor(np.asarray(value)))

    with torch.no_grad():
        put(twin.conv.weight, conv.kernel.numpy().transpose(3, 2, 0, 1))
        put(twin.conv.bias, conv.bias.numpy())
        for name, weight in zip(("weight", "bias", "running_mean", "running_var"), bn.weights):
            put(getattr(twin.bn, name), weight.numpy())
        twin.bn.eps = bn.epsilon
        put(twin.ln.weight, ln.gamma.numpy())
        put(twin.ln.bias, ln.beta.numpy())
        twin.ln.eps = ln.epsilon
        for linear, dense in ((twin.fc1, fc1), (twin.fc2, fc2)):
            put(linear.weight, dense.kernel.numpy().T)
            put(linear.bias, dense.bias.numpy())


def external_data_mlp(folder, layers: int, width: int, seed: int = 0):
    """An ONNX MLP whose weights (layers x width x width float32) lie in `folder`/weights.bin,
    written a layer at a time so that making a model of several GB needs one layer of memory.
    Layers alternate MatMul ([in, out] weight) and Gemm with transB ([out, in]). Returns the
    .onnx path."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    nodes, initializers, offset = [], [], 0
    with open(folder / "weights.bin", "wb") as f:
        for i in range(layers):
            weight = rng.standard_normal((width, width), dtype=np.float32)
            weight *= np.float32(1 / np.sqrt(width))
            f.write(weight.tobytes())
            t = onnx.TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[width, width],
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "weights.bin"), ("offset", offset), ("length", weight.nbytes)):
                t.external_data.add(key=key, value=str(value))
            offset += weight.nbytes
            initializers.append(t)
            op = (helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"z{i}"]) if i % 2 == 0 else
                  helper.make_node("Gemm", [f"h{i}", f"w{i}"], [f"z{i}"], transB=1))
            nodes += [op, helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"])]
    graph = helper.make_graph(nodes, "external_mlp", [float_input("h0", [1, width])],
                              [float_input(f"h{layers}", [1, width])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


def tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               vocab: int = 256):
    """A Llama-shaped causal LM (transformers) with seeded random weights, rows a multiple of 32
    so that GGUF's block quantisers take every matrix."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      num_key_value_heads=kv_heads, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to query and key rows (its rotary layout)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_llama_gguf(model, path, quantisation: str = "F32") -> None:
    """Write a transformers Llama model as llama.cpp's converter does (write_gguf)."""
    config = model.config
    size = dict(hidden=config.hidden_size, layers=config.num_hidden_layers, intermediate=config.intermediate_size,
                heads=config.num_attention_heads, kv_heads=config.num_key_value_heads, vocab=config.vocab_size)
    write_gguf(path, size, ((name, t.detach().float().numpy()) for name, t in model.state_dict().items()),
               quantisation, name="tiny-llama", context=config.max_position_embeddings,
               rope_theta=float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]),
               rms_eps=config.rms_norm_eps)


def write_gguf(path, size: dict, tensors, quantisation: str = "F32", *, name: str, context: int,
               rope_theta: float, rms_eps: float) -> None:
    """Write Llama weights as llama.cpp's converter does: its metadata (`size`: hidden, layers,
    intermediate, heads, kv_heads, vocab), its tensor names (blk.N.attn_q ...) for the
    checkpoint's (name, float32 array) `tensors`, query and key rows permuted, norms in F32 and
    every matrix in `quantisation` (F32, F16, Q8_0, Q4_0: gguf's own quantisers; F16 for rows
    that are not whole 32-value blocks, as llama.cpp falls back)."""
    import gguf

    kind = gguf.GGMLQuantizationType[quantisation.upper()]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(size["hidden"])
    writer.add_block_count(size["layers"])
    writer.add_feed_forward_length(size["intermediate"])
    writer.add_head_count(size["heads"])
    writer.add_head_count_kv(size["kv_heads"])
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(rms_eps)
    writer.add_vocab_size(size["vocab"])
    writer.add_rope_dimension_count(size["hidden"] // size["heads"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, size["layers"])
    for checkpoint_name, value in tensors:
        stem, _, suffix = checkpoint_name.rpartition(".")
        target = names.get_name(stem)
        if target is None:
            continue
        if stem.endswith("q_proj"):
            value = _llama_cpp_permute(value, size["heads"])
        elif stem.endswith("k_proj"):
            value = _llama_cpp_permute(value, size["kv_heads"])
        _add_gguf_tensor(writer, f"{target}.{suffix}", value, kind)
    _close_gguf(writer)


def _add_gguf_tensor(writer, name: str, value: np.ndarray, kind) -> None:
    """One tensor as llama.cpp stores it: vectors in F32, matrices in `kind` (F16 where rows are
    not whole 32-value blocks)."""
    import gguf

    if value.ndim == 1 or kind == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, value.astype(np.float32))
    elif kind == gguf.GGMLQuantizationType.F16 or value.shape[-1] % 32:
        writer.add_tensor(name, value.astype(np.float16))
    else:
        quantised = gguf.quants.quantize(value, kind)  # [rows, bytes]: the writer reads its shape
        writer.add_tensor(name, quantised, raw_shape=quantised.shape, raw_dtype=kind)


def _close_gguf(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_gpt2(seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, vocab: int = 256):
    """A GPT-2-shaped causal LM (transformers) with seeded random weights; 1,024 positions, as
    transformers' GGUF reader leaves GPT-2's n_positions at its default."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=hidden, n_layer=layers,
                                     n_head=heads)
    return transformers.GPT2LMHeadModel(config).eval()


def write_gpt2_gguf(model, path, quantisation: str = "F32") -> None:
    """Write a transformers GPT-2 model as llama.cpp's converter does: its metadata and tensor
    names, the Conv1D matrices transposed (which transformers' GPT-2 tensor processor undoes), no
    output.weight (tied to the token embedding), a token list for the vocabulary size."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name("tiny-gpt2")
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(config.vocab_size)])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, config.n_layer)
    kind = gguf.GGMLQuantizationType[quantisation.upper()]
    for checkpoint_name, tensor in model.state_dict().items():
        stem, _, suffix = checkpoint_name.rpartition(".")
        target = names.get_name(stem)
        if target is None or stem == "lm_head":
            continue
        value = tensor.detach().float().numpy()
        if suffix == "weight" and stem.rpartition(".")[2] in ("c_attn", "c_proj", "c_fc"):
            value = np.ascontiguousarray(value.T)
        _add_gguf_tensor(writer, f"{target}.{suffix}", value, kind)
    _close_gguf(writer)


def _pack(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Values below 2**bits -> int32 words of 32 // bits values each along `axis`, lowest bits
    first (GPTQ's and AWQ's packing)."""
    per = 32 // bits
    moved = np.moveaxis(values.astype(np.uint32), axis, -1)
    moved = moved.reshape(*moved.shape[:-1], -1, per) << (np.arange(per, dtype=np.uint32) * bits)
    return np.ascontiguousarray(np.moveaxis(np.bitwise_or.reduce(moved, axis=-1), -1, axis)).view(np.int32)


def write_quantized_snapshot(model, folder, method: str = "gptq", bits: int = 4, group_size: int = 32) -> None:
    """Save a transformers model as a GPTQ (original checkpoint format) or AWQ (GEMM) snapshot:
    every Linear but lm_head as symmetric `bits`-bit integers in groups of `group_size` inputs,
    packed as those formats pack them, the rest in fp16; config.json with its
    quantization_config. Written here because their quantisers need a GPU; converters/quantized.py
    documents the layouts both follow."""
    import json
    from pathlib import Path

    import torch
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    middle = 1 << (bits - 1)
    for name, value in model.state_dict().items():
        prefix, _, leaf = name.rpartition(".")
        if prefix not in linears or leaf != "weight":
            tensors[name] = value.detach().half().numpy()
            continue
        weight = value.detach().float().numpy().T                                    # [in, out]
        grouped = weight.reshape(-1, group_size, weight.shape[1])
        scales = (np.abs(grouped).max(1) / (middle - 1)).astype(np.float16)          # [groups, out]
        q = np.clip(np.rint(grouped / scales.astype(np.float32)[:, None, :]) + middle, 0, 2 * middle - 1)
        q = q.reshape(weight.shape).astype(np.uint32)
        zeros = np.full(scales.shape, middle, np.uint32)
        if method == "gptq":
            tensors[f"{prefix}.qweight"] = _pack(q, bits, 0)
            tensors[f"{prefix}.qzeros"] = _pack(zeros - 1, bits, 1)  # the original format: zero point less one
            tensors[f"{prefix}.g_idx"] = (np.arange(weight.shape[0]) // group_size).astype(np.int32)
        else:
            order = np.array([0, 2, 4, 6, 1, 3, 5, 7])
            per_word = q.reshape(q.shape[0], -1, 8)[:, :, order].reshape(q.shape)
            tensors[f"{prefix}.qweight"] = _pack(per_word, bits, 1)
            tensors[f"{prefix}.qzeros"] = _pack(zeros.reshape(zeros.shape[0], -1, 8)[:, :, order].reshape(zeros.shape),
                                                bits, 1)
        tensors[f"{prefix}.scales"] = scales
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    config = model.config.to_dict()
    config["quantization_config"] = (
        {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False, "sym": True,
         "checkpoint_format": "gptq"} if method == "gptq" else
        {"quant_method": "awq", "bits": bits, "group_size": group_size, "version": "gemm", "zero_point": True})
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
