"""Which parents a zoo builds (`plan`), and which split each graph is in: held out for the final
report (`held_out`), validation for choices (`validation`), or training."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from hnn_jax.training.zoo.sources import (GENERATED_FAMILIES, KERAS_MODELS, KERAS_TIMM_TWINS,
                                          KERAS_TORCHVISION_TWINS, KERAS_TRANSFORMS, TORCH_TRANSFORMS,
                                          TORCHVISION_MODELS, TRANSFORMERS_EVAL_SEEDS, TRANSFORMERS_MODALITY,
                                          TRANSFORMERS_SIZES, TRANSFORMERS_TRAIN_SIZES, TRANSFORMERS_TRANSFORMS,
                                          generated_spec, timm_family, transformers_arch)


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


def twin_choice() -> dict[str, str]:
    """The KERAS_TIMM_TWINS whose torchvision twin is not one of TORCHVISION_MODELS, so training
    never sees a build of an evaluated architecture."""
    return {keras_name: timm_name for keras_name, timm_name in KERAS_TIMM_TWINS.items()
            if not held_out(dict(source="twins", arch=keras_name))}


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
                    spec = generated_spec(family, rng)
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


TRANSFORMERS_HELD_OUT = frozenset({  # model types no training sees, from any source (issue 17)
    "albert", "bart", "deberta-v2", "electra", "gpt_neo", "opt", "phi", "qwen2", "mobilevit", "swin", "wav2vec2"})
TRANSFORMERS_VALIDATION = frozenset({  # left out of training too, for choices (zoo.validation)
    "mpnet", "squeezebert", "xlm", "bloom", "stablelm", "olmo2", "gpt_bigcode", "plbart", "longt5",
    "convnextv2", "segformer", "sew-d"})
