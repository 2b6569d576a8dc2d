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

from hnn_jax.training.zoo.build import add_arguments, build, finetune, keras_parent
from hnn_jax.training.zoo.sources import (GENERATED_FAMILIES, KERAS_MODELS, KERAS_TIMM_TWINS, KERAS_TORCHVISION_TWINS,
                                          KERAS_TRANSFORMS, TORCH_TRANSFORMS, TORCHVISION_MODELS,
                                          TRANSFORMERS_EVAL_SEEDS, TRANSFORMERS_MAX_PARAMS, TRANSFORMERS_MODALITY,
                                          TRANSFORMERS_SAME_GRAPH, TRANSFORMERS_SIZES, TRANSFORMERS_TRAIN_SIZES,
                                          TRANSFORMERS_TRANSFORMS, TRANSFORMERS_TYPES, timm_family,
                                          transformers_arch, transformers_config, transformers_model)
from hnn_jax.training.zoo.splits import (TIMM_BUILDS_OF_HELD_OUT, TRANSFORMERS_HELD_OUT, TRANSFORMERS_VALIDATION,
                                         Parent, held_out, plan, timm_choice, twin_choice, validation)
from hnn_jax.training.zoo.store import load, load_graph, read_manifest, save_graph

__all__ = [
    "add_arguments", "build", "finetune", "keras_parent",
    "GENERATED_FAMILIES", "KERAS_MODELS", "KERAS_TIMM_TWINS", "KERAS_TORCHVISION_TWINS", "KERAS_TRANSFORMS",
    "TORCH_TRANSFORMS", "TORCHVISION_MODELS", "TRANSFORMERS_EVAL_SEEDS", "TRANSFORMERS_MAX_PARAMS",
    "TRANSFORMERS_MODALITY", "TRANSFORMERS_SAME_GRAPH", "TRANSFORMERS_SIZES", "TRANSFORMERS_TRAIN_SIZES",
    "TRANSFORMERS_TRANSFORMS", "TRANSFORMERS_TYPES", "timm_family", "transformers_arch", "transformers_config",
    "transformers_model",
    "TIMM_BUILDS_OF_HELD_OUT", "TRANSFORMERS_HELD_OUT", "TRANSFORMERS_VALIDATION", "Parent", "held_out", "plan",
    "timm_choice", "twin_choice", "validation",
    "load", "load_graph", "read_manifest", "save_graph",
]
