"""The model zoo: a labelled set of converted graphs to train and evaluate the hasher on.

Every parent model (an architecture with one seeded initialisation) is exported once; its
derivatives (fp16, int8, pruning, weight noise, real fine-tuning steps, the other exporter or
another opset) come from it. Each graph is saved as one .npz under graphs/ and one JSON line in
manifest.jsonl with its labels: source, family, arch, parent, transform. The build runs parents in
parallel processes, shows a progress bar, and resumes after an interruption: a parent whose
graphs are all in the manifest is skipped.

Sources: `generated` (MLP, CNN, ResNet-like, RNN, transformer and encoder-decoder families with
random depth/width/kernels, torch), `timm` (family = timm module, or the model name's stem in
modules that mix families: `timm_family`), `keras` (keras.applications, weights=None), `twins`
(timm builds of those keras.applications architectures, labelled like them), `torchvision`
(classifiers, family = builder module; the held-out evaluation set). Training leaves out every
graph that `held_out` names: the torchvision models, any build of their architectures from another
framework, and the keras models the twins evaluation queries with. timm, twins and torchvision need
`pip install torch==2.14.1 torchvision==0.29.1 timm`, kept out of the core install.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import re
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jraph
import numpy as np

# "finetune": 5 Adam steps; "tune" and "lora": the real fine-tunes of hnn_jax.lineage (500 steps,
# a replaced task head; a merged LoRA adapter)
TORCH_TRANSFORMS = ("original", "fp16", "int8", "prune10", "prune30", "prune50", "noise",
                    "finetune", "tune", "lora", "dynamo")
KERAS_TRANSFORMS = ("original", "fp16", "int8", "prune10", "prune30", "prune50", "noise", "opset13")
GENERATED_FAMILIES = ("mlp", "cnn", "resnet", "rnn", "transformer", "encdec")


@dataclass(frozen=True)
class Parent:
    """One architecture with one initialisation, and the derivatives to make of it."""
    source: str                # generated | timm | keras | twins | torchvision | transformers
    family: str
    arch: str                  # unique architecture name within the zoo
    seed: int
    spec: dict = field(default_factory=dict, hash=False, compare=False)
    transforms: tuple[str, ...] = ("original",)

    @property
    def name(self) -> str:
        return f"{self.source}.{self.arch}.s{self.seed}"

    def graph_id(self, transform: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.name}.{transform}")


# ----------------------------------------------------------------------------- generated families

def _generated_spec(family: str, rng: np.random.Generator) -> dict:
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


def _generated_model(family: str, spec: dict):
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


# ----------------------------------------------------------------------------- planning

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

def twin_choice() -> dict[str, str]:
    """The KERAS_TIMM_TWINS whose torchvision twin is not one of TORCHVISION_MODELS, so training
    never sees a build of an evaluated architecture."""
    return {keras_name: timm_name for keras_name, timm_name in KERAS_TIMM_TWINS.items()
            if not held_out(dict(source="twins", arch=keras_name))}


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


TIMM_BUILDS_OF_HELD_OUT = frozenset({  # timm names of TORCHVISION_MODELS' architectures
    "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121",
    "densenet169", "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv3_large_100",
    "tf_mobilenetv3_small_100", "tf_mobilenetv3_large_100", "efficientnet_b0", "efficientnet_b1",
    "tf_efficientnet_b0", "tf_efficientnet_b1", "efficientnetv2_s", "tf_efficientnetv2_s",
    "regnetx_004", "regnetx_004_tv", "regnety_004", "regnetx_008", "mnasnet_050", "mnasnet_100",
    "convnext_tiny",
})  # timm_choice skips them: no build of an evaluated architecture, from any framework, is trained on


def held_out(row: dict) -> bool:
    """Whether a zoo graph belongs to the evaluation, so training must not see it: a torchvision
    model; a build of one of their architectures from another framework (timm's resnet50, keras's
    ResNet50, the twins source's timm build of it); or a keras.applications model that the twins
    evaluation queries with (KERAS_TORCHVISION_TWINS, e.g. ResNet101); a transformers model of a
    type in TRANSFORMERS_HELD_OUT, or at the evaluation size."""
    source, arch = row.get("source"), row["arch"]
    if source == "transformers":  # the held-out types, and the unseen size of the others
        return row.get("model_type", row["family"]) in TRANSFORMERS_HELD_OUT or arch.endswith(
            transformers_arch("", TRANSFORMERS_SIZES[TRANSFORMERS_TRAIN_SIZES]))
    return (source == "torchvision" or (source == "timm" and arch in TIMM_BUILDS_OF_HELD_OUT)
            or (source == "keras" and arch in KERAS_TORCHVISION_TWINS)
            or (source == "twins" and KERAS_TORCHVISION_TWINS.get(arch) in TORCHVISION_MODELS))


def validation(row: dict) -> bool:
    """Whether a zoo graph is in the validation split: model types training leaves out so that
    choices (steps, shape, readout) are made on types it never saw, before the held-out types are
    looked at once for the report."""
    return row.get("source") == "transformers" and row.get("model_type", row["family"]) in TRANSFORMERS_VALIDATION


def plan(sources=("generated",), *, archs_per_family: int = 6, inits: int = 3,
         timm_models: list[tuple[str, str]] | None = None, keras_models: dict | None = None,
         twin_models: dict | None = None, torchvision_models: dict | None = None, seed: int = 0,
         transforms=None, families=GENERATED_FAMILIES, transformers_types=None,
         transformers_sizes=None) -> list[Parent]:
    """The parents to build. Every initialisation of an architecture gets all derivatives.
    transformers_sizes: indices into TRANSFORMERS_SIZES (default: all)."""
    parents: list[Parent] = []
    rng = np.random.default_rng(seed)
    for source in sources:
        if source == "generated":
            for family in families:
                specs = []
                while len(specs) < archs_per_family:
                    spec = _generated_spec(family, rng)
                    if spec not in specs:
                        specs.append(spec)
                for spec in specs:
                    arch = family + "-" + "-".join(f"{k}{v}" for k, v in spec.items())
                    parents += [Parent("generated", family, arch, s, dict(spec),
                                       tuple(transforms or TORCH_TRANSFORMS)) for s in range(inits)]
        elif source == "timm":
            for name, family in timm_models or []:
                parents += [Parent("timm", family, name, s, {}, tuple(transforms or TORCH_TRANSFORMS))
                            for s in range(inits)]
        elif source == "keras":
            for name, family in (keras_models or KERAS_MODELS).items():
                parents += [Parent("keras", family, name, s, {}, tuple(transforms or KERAS_TRANSFORMS))
                            for s in range(inits)]
        elif source == "twins":
            for name, timm_name in (twin_choice() if twin_models is None else twin_models).items():
                parents += [Parent("twins", KERAS_MODELS[name], name, s, {"timm": timm_name},
                                   tuple(transforms or TORCH_TRANSFORMS)) for s in range(inits)]
        elif source == "torchvision":
            for name, family in (torchvision_models or TORCHVISION_MODELS).items():
                parents += [Parent("torchvision", family, name, s, {}, tuple(transforms or TORCH_TRANSFORMS))
                            for s in range(inits)]
        elif source == "transformers":  # every size at seeds 0, 1; the evaluation size at its own seeds
            for model_type in transformers_types or TRANSFORMERS_MODALITY:
                for k, size in enumerate(TRANSFORMERS_SIZES):
                    if transformers_sizes is not None and k not in transformers_sizes:
                        continue
                    seeds = range(min(inits, 2)) if k < TRANSFORMERS_TRAIN_SIZES else TRANSFORMERS_EVAL_SEEDS
                    parents += [Parent("transformers", model_type, transformers_arch(model_type, size), s,
                                       {"size": list(size)}, tuple(transforms or TRANSFORMERS_TRANSFORMS))
                                for s in seeds]
        else:
            raise ValueError(f"unknown zoo source {source!r} (generated, timm, keras, twins, torchvision, "
                             "transformers)")
    return parents


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


def timm_choice(per_family: int = 2, max_params: float = 25e6) -> list[tuple[str, str]]:
    """The `per_family` smallest timm models of every family (`timm_family`), between 0.3M and
    max_params parameters, counted on the meta device (no memory, no download); timm's `test_*`
    models, distilled twins and TIMM_BUILDS_OF_HELD_OUT are skipped."""
    import timm
    import torch
    from timm.models import _registry

    chosen: dict[str, list[tuple[int, str]]] = {}
    for name in timm.list_models():
        family = timm_family(name, _registry.model_entrypoint(name).__module__.split(".")[-1])
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
        except Exception:  # noqa: BLE001 - models that need extra args are skipped
            continue
        if (3e5 < params <= max_params and not name.startswith("test_") and "_dist" not in name
                and not held_out(dict(source="timm", arch=name))):
            chosen.setdefault(family, []).append((params, name))
    return [(name, family) for family, models in sorted(chosen.items())
            for _, name in sorted(models)[:per_family]]


# ----------------------------------------------------------------------------- transformers

TRANSFORMERS_TRANSFORMS = ("original", "fp16", "int8", "prune30", "noise", "finetune", "tune", "lora")
# Sizes of a transformers model type: (layers, hidden, heads, key/value heads, vocabulary).
# Training sees the first three; the fourth, with initialisations TRANSFORMERS_EVAL_SEEDS, is the
# unseen-size evaluation of the types trained on.
TRANSFORMERS_SIZES = ((1, 32, 2, 1, 128), (2, 48, 4, 2, 256), (3, 64, 4, 4, 512), (2, 96, 6, 2, 384))
TRANSFORMERS_TRAIN_SIZES = 3
TRANSFORMERS_MAX_PARAMS = 20_000_000
TRANSFORMERS_EVAL_SEEDS = (2, 3)
TRANSFORMERS_HELD_OUT = frozenset({  # model types no training sees, from any source (issue 17)
    "albert", "bart", "deberta-v2", "electra", "gpt_neo", "opt", "phi", "qwen2", "mobilevit", "swin", "wav2vec2"})
TRANSFORMERS_VALIDATION = frozenset({  # left out of training too, for choices (zoo.validation)
    "mpnet", "squeezebert", "xlm", "bloom", "stablelm", "olmo2", "gpt_bigcode", "plbart", "longt5",
    "convnextv2", "segformer", "sew-d"})
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


# ----------------------------------------------------------------------------- building

def _torch_parent(parent: Parent):
    import torch

    torch.manual_seed(parent.seed)
    if parent.source == "generated":
        model, x = _generated_model(parent.family, parent.spec)
    elif parent.source in ("timm", "twins"):
        import timm

        model = timm.create_model(parent.spec.get("timm", parent.arch), pretrained=False)
        size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
        x = torch.randn(1, *size)
    elif parent.source == "transformers":
        return transformers_model(parent.family, tuple(parent.spec["size"]), parent.seed)
    elif parent.source == "torchvision":
        import torchvision

        model = getattr(torchvision.models, parent.arch)(weights=None)
        size = 299 if parent.arch == "inception_v3" else 224
        x = torch.randn(1, 3, size, size)
    else:
        raise ValueError(parent.source)
    return model.eval(), x


def _finetune(model, x, steps: int = 5, lr: float = 1e-4, seed: int = 0):
    """A copy of the model after a few real Adam steps on synthetic data (derivatives.synthetic_batch),
    its first output regressed on noise: the mildest fine-tune (derivatives.tune_new_head is a real one)."""
    import copy

    import torch

    from hnn_jax.training.derivatives import synthetic_batch, vocab_size

    tuned = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    vocab = vocab_size(model)
    for _ in range(steps):
        inputs = synthetic_batch(x, g, 4, vocab)
        out = tuned(**inputs)[0] if isinstance(x, dict) else tuned(inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = torch.nn.functional.mse_loss(out, torch.randn(out.shape, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


def _keras_parent(parent: Parent):
    import keras

    keras.utils.set_random_seed(parent.seed)
    model = getattr(keras.applications, parent.arch)(weights=None)
    if None in model.input_shape[1:3]:  # MobileNetV3 leaves its image size open: build it at the
        # 224 x 224 its torchvision and timm twins are exported at, not the converter's default 32
        keras.utils.set_random_seed(parent.seed)
        model = getattr(keras.applications, parent.arch)(weights=None, input_shape=(224, 224, 3))
    return model


def _variant_models(parent: Parent):
    """Yield (transform, onnx.ModelProto, error) for every derivative of the parent, original
    first; a derivative that cannot be made yields its error instead of stopping the others."""
    from hnn_jax.training import variants
    from hnn_jax.converters import export, hf

    if parent.source == "keras":
        model = _keras_parent(parent)
        original = export.keras_to_onnx(model)
        torch_model = None
    elif parent.source == "transformers":
        torch_model, x = _torch_parent(parent)
        original = hf.transformers_to_onnx(torch_model)
    else:
        torch_model, x = _torch_parent(parent)
        original = export.torch_to_onnx(torch_model, x)
    makers = {
        "original": lambda: original,
        "fp16": lambda: variants.fp16_weights(original),
        "int8": lambda: variants.int8_dynamic(original),
        "noise": lambda: variants.perturb(original, 0.01, seed=parent.seed),
    }
    if torch_model is not None:
        from hnn_jax.training import derivatives

        def torch_export(model):
            return (hf.transformers_to_onnx(model) if parent.source == "transformers"
                    else export.torch_to_onnx(model, x))
        makers["finetune"] = lambda: torch_export(_finetune(torch_model, x, seed=parent.seed))
        makers["tune"] = lambda: torch_export(derivatives.tune_new_head(torch_model, x, seed=parent.seed))
        makers["lora"] = lambda: torch_export(derivatives.lora_merge(torch_model, x, seed=parent.seed))
    if torch_model is not None and parent.source != "transformers":
        makers["dynamo"] = lambda: export.torch_to_onnx(torch_model, x, dynamo=True)
    for t in parent.transforms:
        if t.startswith("prune"):
            make = lambda t=t: variants.prune(original, int(t[5:]) / 100)  # noqa: E731
        elif t.startswith("opset") and parent.source == "keras":
            make = lambda t=t: export.keras_to_onnx(model, opset=int(t[5:]))  # noqa: E731
        elif t in makers:
            make = makers[t]
        else:
            raise ValueError(f"transform {t!r} does not apply to {parent.source} models")
        try:
            yield t, make(), None
        except Exception as e:  # noqa: BLE001 - e.g. quantize_dynamic on an op it does not know
            yield t, None, e


def save_graph(path: Path, graph: jraph.GraphsTuple) -> None:
    np.savez(path, **{k: np.asarray(v) for k, v in graph._asdict().items()})


def load_graph(path: Path) -> jraph.GraphsTuple:
    with np.load(path) as data:
        return jraph.GraphsTuple(**{k: data[k] for k in jraph.GraphsTuple._fields})


def _build_parent(parent: Parent, out_dir: str) -> list[dict]:
    """Worker: export, derive and convert one parent; return manifest rows (or an error row).
    The exporters' warnings are ignored for this parent only (workers=1 runs in-process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from hnn_jax import converters, schema

    graphs_dir = Path(out_dir) / "graphs"
    rows = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for transform, proto, error in _variant_models(parent):
                if error is not None:
                    if transform == "original":
                        raise error
                    continue  # the parent stays without this derivative (retried on resume)
                graph = converters.from_onnx(proto)
                gid = parent.graph_id(transform)
                save_graph(graphs_dir / f"{gid}.npz", graph)
                rows.append(dict(id=gid, source=parent.source, family=parent.family, arch=parent.arch,
                                 parent=parent.name, seed=parent.seed, transform=transform,
                                 nodes=int(graph.n_node[0]), edges=int(graph.n_edge[0]),
                                 probe=float(graph.globals[0, schema.GLOBAL_PROBE])))
    except Exception as e:  # noqa: BLE001 - one broken model must not stop the zoo
        return [dict(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                     parent=parent.name, trace=traceback.format_exc(limit=3))]
    return rows


def read_manifest(zoo_dir) -> list[dict]:
    path = Path(zoo_dir) / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build(zoo_dir, parents: list[Parent], *, workers: int = 2, progress: bool = True) -> dict:
    """Build (or resume) a zoo in zoo_dir; returns counts of built, skipped and failed parents."""
    from tqdm import tqdm

    zoo_dir = Path(zoo_dir)
    (zoo_dir / "graphs").mkdir(parents=True, exist_ok=True)
    done = {row["id"] for row in read_manifest(zoo_dir)}
    todo = [p for p in parents if not all(p.graph_id(t) in done for t in p.transforms)]
    stats = dict(built=0, skipped=len(parents) - len(todo), failed=0)
    (zoo_dir / "plan.json").write_text(json.dumps([asdict(p) for p in parents], indent=0))
    if not todo:
        return stats
    if workers > 1:  # spawned processes: torch and tensorflow are not fork-safe
        pool = cf.ProcessPoolExecutor(max_workers=workers,
                                      mp_context=multiprocessing.get_context("spawn"))
        results = (f.result() for f in cf.as_completed([pool.submit(_build_parent, p, str(zoo_dir)) for p in todo]))
    else:
        pool = None
        results = (_build_parent(p, str(zoo_dir)) for p in todo)
    with open(zoo_dir / "manifest.jsonl", "a") as manifest, open(zoo_dir / "errors.jsonl", "a") as errors, \
            tqdm(total=len(todo), desc="zoo", unit="model", disable=not progress, file=sys.stderr) as bar:
        for rows in results:
            if rows and "error" in rows[0]:
                errors.write(json.dumps(rows[0]) + "\n")
                errors.flush()
                stats["failed"] += 1
                bar.set_postfix_str(f"failed: {rows[0]['parent']}")
            else:
                for row in rows:
                    if row["id"] not in done:
                        manifest.write(json.dumps(row) + "\n")
                manifest.flush()
                stats["built"] += 1
            bar.update()
    if pool is not None:
        pool.shutdown()
    return stats


def load(zoo_dirs, *, sources=None) -> tuple[list[jraph.GraphsTuple], list[dict]]:
    """All graphs of one zoo folder or several, with their manifest rows (optionally only some
    sources). Transformers model types that are one graph under two names count as one family
    (TRANSFORMERS_SAME_GRAPH; the row keeps the type as model_type)."""
    dirs = [zoo_dirs] if isinstance(zoo_dirs, (str, os.PathLike)) else list(zoo_dirs)
    graphs, unique, seen = [], [], set()
    for d in dirs:
        for r in read_manifest(d):
            if (sources is None or r["source"] in sources) and r["id"] not in seen:  # resumed builds may repeat
                seen.add(r["id"])
                if r["source"] == "transformers" and r["family"] in TRANSFORMERS_SAME_GRAPH:
                    r = dict(r, model_type=r["family"], family=TRANSFORMERS_SAME_GRAPH[r["family"]])
                unique.append(r)
                graphs.append(load_graph(Path(d) / "graphs" / f"{r['id']}.npz"))
    return graphs, unique


# ----------------------------------------------------------------------------- command line

def add_arguments(parser) -> None:
    """`hnn-jax zoo build|info`."""
    sub = parser.add_subparsers(dest="zoo_command", required=True)
    b = sub.add_parser("build", help="build or resume a zoo", description=(
        "Build (or resume) a labelled zoo of converted graphs. Example: hnn-jax zoo build zoo/gen "
        "--sources generated --archs-per-family 8 --inits 3. timm/twins/torchvision sources need "
        "`pip install torch==2.14.1 torchvision==0.29.1 timm`; keras needs the tf extra."))
    b.add_argument("out", help="zoo folder (graphs/ and manifest.jsonl are written there)")
    b.add_argument("--sources", default="generated",
                   help="comma-separated: generated,keras,timm,twins,torchvision,transformers")
    b.add_argument("--transformers-types", help="comma-separated model types (default: zoo.TRANSFORMERS_TYPES, all)")
    b.add_argument("--transformers-sizes", help="comma-separated indices into zoo.TRANSFORMERS_SIZES "
                   "(default: all; the last is the unseen-size evaluation set, built at its own seeds)")
    b.add_argument("--archs-per-family", type=int, default=6, help="generated architectures per family")
    b.add_argument("--inits", type=int, default=3, help="independent initialisations per architecture")
    b.add_argument("--seed", type=int, default=0, help="draws the generated architectures (the training "
                   "zoo: 0; another seed gives other architectures, e.g. for validation)")
    b.add_argument("--timm-per-family", type=int, default=2,
                   help="smallest timm models per timm family (zoo.timm_family)")
    b.add_argument("--transforms", help="comma-separated derivatives (default: all that apply)")
    b.add_argument("--workers", type=int, default=2, help="parallel processes (1: in this process)")
    b.set_defaults(func=_cli_build)
    i = sub.add_parser("info", help="counts by source, family and transform")
    i.add_argument("zoo", help="zoo folder")
    i.set_defaults(func=_cli_info)


def _cli_build(args) -> int:
    from hnn_jax.errors import HNNError

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    timm_models = timm_choice(args.timm_per_family) if "timm" in sources else None
    transforms = tuple(args.transforms.split(",")) if args.transforms else None
    try:
        types = args.transformers_types.split(",") if args.transformers_types else None
        sizes = [int(k) for k in args.transformers_sizes.split(",")] if args.transformers_sizes else None
        parents = plan(sources, archs_per_family=args.archs_per_family, inits=args.inits,
                       timm_models=timm_models, transforms=transforms, transformers_types=types,
                       transformers_sizes=sizes, seed=args.seed)
    except ValueError as e:
        raise HNNError(str(e)) from None
    stats = build(args.out, parents, workers=args.workers)
    print(f"{args.out}: {stats['built']} parents built, {stats['skipped']} already there, "
          f"{stats['failed']} failed (see errors.jsonl)")
    return 0


def _cli_info(args) -> int:
    from collections import Counter

    from hnn_jax.errors import HNNError

    rows = read_manifest(args.zoo)
    if not rows:
        raise HNNError(f"{args.zoo} has no manifest.jsonl entries: not a zoo, or not built yet")
    print(f"{len(rows)} graphs, {len({r['parent'] for r in rows})} parents, "
          f"{len({r['arch'] for r in rows})} architectures, {len({r['family'] for r in rows})} families")
    for key in ("source", "family", "transform"):
        print(f"by {key}: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r[key] for r in rows).items())))
    return 0
