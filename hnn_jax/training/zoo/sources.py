"""Where the zoo's models come from: the generated families (torch; random depth, width and
kernels), keras.applications, timm, torchvision, and tiny configs of transformers model types;
and the derivatives each source gets."""

from __future__ import annotations


import numpy as np



# "finetune": 5 Adam steps; "tune" and "lora": the real fine-tunes of hnn_jax.training.derivatives (500 steps,
# a replaced task head; a merged LoRA adapter)
TORCH_TRANSFORMS = ("original", "fp16", "int8", "prune10", "prune30", "prune50", "noise",
                    "finetune", "tune", "lora", "dynamo")
KERAS_TRANSFORMS = ("original", "fp16", "int8", "prune10", "prune30", "prune50", "noise", "opset13")
GENERATED_FAMILIES = ("mlp", "cnn", "resnet", "rnn", "transformer", "encdec")


def generated_spec(family: str, rng: np.random.Generator) -> dict:
    pick = lambda *xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    if family == "mlp":
        return dict(depth=int(rng.integers(2, 7)), width=pick(32, 64, 128, 256),
                    act=pick("relu", "gelu", "tanh", "silu"), norm=pick(False, True))
    if family == "cnn":
        return dict(stages=int(rng.integers(2, 5)), width=pick(8, 16, 32), kernel=pick(3, 5),
                    bn=pick(True, False), act=pick("relu", "silu"))
    if family == "resnet":
        return dict(blocks=int(rng.integers(2, 7)), width=pick(8, 16, 32), bottleneck=pick(False, True))
    if family == "rnn":
        return dict(cell=pick("lstm", "gru"), layers=int(rng.integers(1, 3)), hidden=pick(32, 64, 128))
    if family == "transformer":
        return dict(layers=int(rng.integers(1, 5)), d_model=pick(32, 64, 128), heads=pick(2, 4),
                    ff=pick(2, 4), act=pick("gelu", "relu"))
    if family == "encdec":
        return dict(depth=int(rng.integers(2, 4)), width=pick(8, 16, 32), kernel=pick(3, 5))
    raise ValueError(f"unknown generated family {family!r}")


def generated_model(family: str, spec: dict):
    """(torch module, example inputs) for a generated family member."""
    import torch
    from torch import nn

    act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
    ResNet, RNN, Transformer, AutoEncoder = _torch_classes()
    if family == "mlp":
        layers, width = [], 32
        for _ in range(spec["depth"]):
            layers += [nn.Linear(width, spec["width"])]
            layers += [nn.LayerNorm(spec["width"])] if spec["norm"] else []
            layers += [act[spec["act"]]()]
            width = spec["width"]
        return nn.Sequential(*layers, nn.Linear(width, 10)), torch.randn(1, 32)
    if family == "cnn":
        layers, cin = [], 3
        for s in range(spec["stages"]):
            cout = spec["width"] * 2 ** s
            layers += [nn.Conv2d(cin, cout, spec["kernel"], padding=spec["kernel"] // 2)]
            layers += [nn.BatchNorm2d(cout)] if spec["bn"] else []
            layers += [act[spec["act"]](), nn.MaxPool2d(2)]
            cin = cout
        return (nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)),
                torch.randn(1, 3, 32, 32))
    if family == "resnet":
        return ResNet(spec), torch.randn(1, 3, 32, 32)
    if family == "rnn":
        return RNN(spec), torch.randn(1, 16, 16)
    if family == "transformer":
        return Transformer(spec), torch.randint(0, 1000, (1, 16))
    if family == "encdec":
        return AutoEncoder(spec), torch.randn(1, 3, 32, 32)
    raise ValueError(f"unknown generated family {family!r}")


def _torch_classes():
    """Module classes of the generated families, defined lazily so torch loads only when used."""
    from torch import nn

    class ResNet(nn.Module):
        def __init__(self, spec):
            super().__init__()
            w = spec["width"]
            self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
            self.blocks = nn.ModuleList()
            for _ in range(spec["blocks"]):
                if spec["bottleneck"]:
                    body = nn.Sequential(nn.Conv2d(w, w // 2, 1), nn.BatchNorm2d(w // 2), nn.ReLU(),
                                         nn.Conv2d(w // 2, w // 2, 3, padding=1), nn.BatchNorm2d(w // 2),
                                         nn.ReLU(), nn.Conv2d(w // 2, w, 1), nn.BatchNorm2d(w))
                else:
                    body = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                                         nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w))
                self.blocks.append(body)
            self.fc = nn.Linear(w, 10)

        def forward(self, x):
            x = self.stem(x)
            for body in self.blocks:
                x = nn.functional.relu(x + body(x))
            return self.fc(x.mean(dim=(2, 3)))

    class RNN(nn.Module):
        def __init__(self, spec):
            super().__init__()
            cell = nn.LSTM if spec["cell"] == "lstm" else nn.GRU
            self.rnn = cell(16, spec["hidden"], num_layers=spec["layers"], batch_first=True)
            self.fc = nn.Linear(spec["hidden"], 10)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    class Transformer(nn.Module):
        def __init__(self, spec):
            super().__init__()
            d = spec["d_model"]
            self.embed = nn.Embedding(1000, d)
            layer = nn.TransformerEncoderLayer(d, spec["heads"], spec["ff"] * d, dropout=0.0,
                                               activation=spec["act"], batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, spec["layers"], enable_nested_tensor=False)
            self.fc = nn.Linear(d, 10)

        def forward(self, ids):
            return self.fc(self.encoder(self.embed(ids)).mean(dim=1))

    class AutoEncoder(nn.Module):
        def __init__(self, spec):
            super().__init__()
            enc, dec, c, k = [], [], 3, spec["kernel"]
            for i in range(spec["depth"]):
                w = spec["width"] * 2 ** i
                enc += [nn.Conv2d(c, w, k, stride=2, padding=k // 2), nn.ReLU()]
                dec = [nn.ConvTranspose2d(w, c, 4, stride=2, padding=1)] + ([nn.ReLU()] if i else []) + dec
                c = w
            self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec, nn.Sigmoid())

        def forward(self, x):
            return self.decoder(self.encoder(x))

    return ResNet, RNN, Transformer, AutoEncoder


KERAS_MODELS = {  # keras.applications constructor -> family (its module)
    "MobileNet": "mobilenet", "MobileNetV2": "mobilenet_v2", "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3", "EfficientNetB0": "efficientnet", "EfficientNetB1": "efficientnet",
    "EfficientNetV2B0": "efficientnet_v2", "EfficientNetV2B1": "efficientnet_v2",
    "ResNet50": "resnet", "ResNet101": "resnet", "ResNet50V2": "resnet_v2", "DenseNet121": "densenet",
    "DenseNet169": "densenet", "NASNetMobile": "nasnet", "InceptionV3": "inception_v3",
    "Xception": "xception", "VGG16": "vgg",
}  # not here: ConvNeXt* (tf2onnx 1.17 cannot convert its layers), RegNet* (not in Keras 3.15)


KERAS_TIMM_TWINS = {  # keras.applications constructor -> the same architecture in timm
    "MobileNet": "mobilenetv1_100", "MobileNetV2": "mobilenetv2_100",
    "MobileNetV3Small": "mobilenetv3_small_100", "MobileNetV3Large": "mobilenetv3_large_100",
    "EfficientNetB0": "efficientnet_b0", "EfficientNetB1": "efficientnet_b1",
    "EfficientNetV2B0": "tf_efficientnetv2_b0", "EfficientNetV2B1": "tf_efficientnetv2_b1",
    "ResNet50": "resnet50", "ResNet101": "resnet101", "ResNet50V2": "resnetv2_50",
    "DenseNet121": "densenet121", "DenseNet169": "densenet169", "InceptionV3": "inception_v3",
    "Xception": "legacy_xception",
}  # source `twins`: labelled with the keras arch and family, so training sees one architecture
# built by two frameworks (relation "same architecture") without touching torchvision


KERAS_TORCHVISION_TWINS = {  # keras.applications constructor -> the same architecture in torchvision
    "ResNet50": "resnet50", "ResNet101": "resnet101", "DenseNet121": "densenet121",
    "DenseNet169": "densenet169", "MobileNetV2": "mobilenet_v2", "MobileNetV3Small": "mobilenet_v3_small",
    "MobileNetV3Large": "mobilenet_v3_large", "EfficientNetB0": "efficientnet_b0",
    "EfficientNetB1": "efficientnet_b1", "InceptionV3": "inception_v3", "VGG16": "vgg16",
}  # the twins evaluation asks each keras model to find its torchvision twin


TORCHVISION_MODELS = {  # torchvision.models builder -> family (its module); held out
    "resnet18": "resnet", "resnet34": "resnet", "resnet50": "resnet", "resnext50_32x4d": "resnet",
    "wide_resnet50_2": "resnet", "densenet121": "densenet", "densenet169": "densenet",
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3_small": "mobilenet_v3", "mobilenet_v3_large": "mobilenet_v3",
    "efficientnet_b0": "efficientnet", "efficientnet_b1": "efficientnet", "efficientnet_v2_s": "efficientnet",
    "regnet_x_400mf": "regnet", "regnet_y_400mf": "regnet", "regnet_x_800mf": "regnet",
    "shufflenet_v2_x0_5": "shufflenetv2", "shufflenet_v2_x1_0": "shufflenetv2",
    "squeezenet1_0": "squeezenet", "squeezenet1_1": "squeezenet", "mnasnet0_5": "mnasnet",
    "mnasnet1_0": "mnasnet", "convnext_tiny": "convnext", "googlenet": "googlenet",
}  # left out of the evaluated set for conversion time and memory on a 2-core, 24 GB machine:
# vgg11/vgg16 (a worker converting VGG with derivatives was OOM-killed at ~12 GB), alexnet,
# inception_v3, vit_b_16, swin_t, maxvit_t


TIMM_MIXED_MODULES = ("efficientnet", "mobilenetv3")  # timm modules that hold several architecture
# families (MnasNet, MobileNetV1/V2, EfficientNet, MixNet, FBNet, TinyNet ... / MobileNetV3, V4, LCNet,
# FBNetV3): their family is the model name's stem, as torchvision and keras.applications keep them apart
TIMM_STEM_ALIASES = {  # stems spelled as keras.applications' modules where the family is one
    "mobilenetv1": "mobilenet", "mobilenetv2": "mobilenet_v2", "mobilenetv3": "mobilenet_v3",
    "efficientnetv2": "efficientnet_v2", "semnasnet": "mnasnet",  # MnasNet-A1 (with SE) and -B1
    "mobilenet": "mobilenet_edgetpu"}  # not MobileNet v1


def timm_family(name: str, module: str) -> str:
    """The family label of a timm model: its module, or for TIMM_MIXED_MODULES the name's stem
    ("tf_mixnet_s" -> "mixnet", "gc_efficientnetv2_rw_t" -> "efficientnet_v2")."""
    if module not in TIMM_MIXED_MODULES:
        return module
    stem = next(token for token in name.split("_") if token not in ("tf", "gc"))
    return TIMM_STEM_ALIASES.get(stem, stem)


TRANSFORMERS_TRANSFORMS = ("original", "fp16", "int8", "prune30", "noise", "finetune", "tune", "lora")
# Sizes of a transformers model type: (layers, hidden, heads, key/value heads, vocabulary).
# Training sees the first three; the fourth, with initialisations TRANSFORMERS_EVAL_SEEDS, is the
# unseen-size evaluation of the types trained on.
TRANSFORMERS_SIZES = ((1, 32, 2, 1, 128), (2, 48, 4, 2, 256), (3, 64, 4, 4, 512), (2, 96, 6, 2, 384))
TRANSFORMERS_TRAIN_SIZES = 3
TRANSFORMERS_MAX_PARAMS = 20_000_000
TRANSFORMERS_EVAL_SEEDS = (2, 3)


# Model types that are one graph under two names: their canonical graphs, as the learned bits read
# them, are identical at every training size (found by comparing the zoo's graphs, 2026-12-01).
# They count as one family, named by the first type here; a row keeps its type as model_type.
TRANSFORMERS_SAME_GRAPH = {alias: name for name, aliases in {
    "bert": ("ernie",), "roberta": ("camembert", "data2vec-text", "xlm-roberta"), "cohere": ("cohere2",),
    "helium": ("ernie4_5",), "llama": ("internlm3", "mistral", "seed_oss", "smollm3"),
    "pegasus": ("blenderbot",), "unispeech": ("unispeech-sat",)}.items() for alias in aliases}
# Model types that build from a tiny config and export here (transformers 5.24, torch 2.13; see
# benchmarks/bench_transformers.py --explore for how the list was made). Mixture-of-experts
# decoders (mixtral, olmoe, qwen2_moe, qwen3_moe) fail the dynamo exporter and are not listed.
TRANSFORMERS_TYPES = {
    "text-encoder": ("albert", "bert", "big_bird", "camembert", "canine", "convbert", "data2vec-text",
                     "deberta", "deberta-v2", "distilbert", "electra", "ernie", "flaubert", "fnet",
                     "ibert", "layoutlm", "longformer", "luke", "markuplm", "megatron-bert", "mobilebert",
                     "modernbert", "mpnet", "mra", "nomic_bert", "nystromformer", "rembert", "roberta",
                     "roberta-prelayernorm", "roc_bert", "roformer", "splinter", "squeezebert", "xlm",
                     "xlm-roberta", "xlm-roberta-xl", "yoso"),
    "decoder": ("apertus", "arcee", "biogpt", "bitnet", "bloom", "codegen", "cohere", "cohere2", "ctrl", "doge",
                "ernie4_5", "exaone4", "falcon", "falcon_mamba", "gemma", "gemma2", "gemma3_text", "glm", "glm4",
                "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "granite", "helium", "hunyuan_v1_dense",
                "internlm3", "jetmoe", "lfm2", "llama", "mamba", "ministral", "mistral", "mpt", "nemotron",
                "olmo", "olmo2", "openai-gpt", "opt", "persimmon", "phi", "phi3", "qwen2", "qwen3", "seed_oss",
                "smollm3", "stablelm", "starcoder2", "vaultgemma", "xglm"),
    "encoder-decoder": ("bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "fsmt", "led", "longt5",
                        "m2m_100", "marian", "mbart", "mt5", "mvp", "pegasus", "pegasus_x", "plbart", "t5", "umt5"),
    "vision": ("beit", "convnext", "convnextv2", "cvt", "data2vec-vision", "deit", "dinov2",
               "dinov2_with_registers", "dpt", "efficientnet", "focalnet", "hgnet_v2", "ijepa", "mobilenet_v1",
               "mobilenet_v2", "mobilevit", "mobilevitv2", "poolformer", "pvt_v2", "regnet", "resnet", "segformer",
               "swiftformer", "swin", "swinv2", "textnet", "vit", "vit_msn", "yolos"),
    "speech": ("data2vec-audio", "hubert", "moonshine", "sew", "sew-d", "unispeech", "unispeech-sat", "wav2vec2",
               "wav2vec2-conformer", "wavlm", "whisper"),
}
TRANSFORMERS_MODALITY = {t: m for m, types in TRANSFORMERS_TYPES.items() for t in types}


def transformers_config(model_type: str, size: tuple[int, int, int, int, int]):
    """A tiny config of `model_type` at `size` (layers, hidden, heads, kv heads, vocabulary):
    every size attribute the config knows (and its text/vision/audio sub-configs) is set, an int
    as an int; a vision model's per-stage lists are cut to 2 stages ([hidden/2, hidden] wide,
    [1, layers] deep); special token ids stay inside the vocabulary."""
    from transformers import AutoConfig

    layers, hidden, heads, kv, vocab = size
    values = dict(num_hidden_layers=layers, num_layers=layers, n_layer=layers, encoder_layers=layers,
                  decoder_layers=layers, num_decoder_layers=layers, hidden_size=hidden, d_model=hidden,
                  n_embd=hidden, embed_dim=hidden, embedding_size=hidden, num_attention_heads=heads,
                  num_heads=heads, n_head=heads, encoder_attention_heads=heads, decoder_attention_heads=heads,
                  num_key_value_heads=kv, intermediate_size=2 * hidden, encoder_ffn_dim=2 * hidden,
                  decoder_ffn_dim=2 * hidden, d_ff=2 * hidden, n_inner=2 * hidden, d_kv=hidden // heads,
                  head_dim=hidden // heads, rotary_dim=hidden // heads, vocab_size=vocab, image_size=32,
                  patch_size=8, max_position_embeddings=64, max_source_positions=16, max_target_positions=16,
                  window_size=2, num_encoder_blocks=2, num_stages=2)
    stage_lists = dict(depths=[1, layers], num_heads=[max(1, heads // 2), heads],
                       num_attention_heads=[max(1, heads // 2), heads], hidden_sizes=[hidden // 2, hidden],
                       embed_dim=[hidden // 2, hidden], embed_dims=[hidden // 2, hidden])
    config = AutoConfig.for_model(model_type)
    stages = len(config.depths) if isinstance(getattr(config, "depths", None), (list, tuple)) else None
    for c in [config] + [getattr(config, k) for k in ("text_config", "vision_config", "audio_config")
                         if hasattr(getattr(config, k, None), "to_dict")]:
        for key, value in values.items():  # attribute_map aliases too (flaubert's emb_dim is hidden_size)
            current = getattr(c, key, None) if hasattr(c, key) or key in getattr(c, "attribute_map", {}) else None
            if isinstance(current, int) and not isinstance(current, bool):
                try:
                    setattr(c, key, value)
                except (AttributeError, TypeError, ValueError):  # a read-only or derived attribute
                    pass
        for key, current in list(vars(c).items()) if stages else []:
            if isinstance(current, (list, tuple)) and len(current) == stages:
                try:
                    setattr(c, key, stage_lists.get(key, list(current)[:2]))
                except (AttributeError, TypeError, ValueError):
                    pass
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
                    "cls_token_id", "mask_token_id", "unk_token_id"):
            if isinstance(getattr(c, key, None), int) and getattr(c, key) >= vocab:
                setattr(c, key, 1)
    return config


def transformers_arch(model_type: str, size) -> str:
    layers, hidden, heads, kv, vocab = size
    return f"{model_type}-L{layers}-H{hidden}-A{heads}-KV{kv}-V{vocab}"


def transformers_model(model_type: str, size, seed: int):
    """(transformers model with random weights, seeded, eval mode, example kwargs)."""
    import torch
    import transformers
    from transformers import AutoModel

    from hnn_jax.converters.hf import example_inputs

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = AutoModel.from_config(transformers_config(model_type, size)).eval()
    params = sum(p.numel() for p in model.parameters())
    if params > TRANSFORMERS_MAX_PARAMS:  # a size attribute the config spells its own way was not set
        raise ValueError(f"{model_type} at {size} has {params:,} parameters, over the zoo's "
                         f"{TRANSFORMERS_MAX_PARAMS:,}: its config keeps a default size")
    return model, example_inputs(model, device="cpu")
