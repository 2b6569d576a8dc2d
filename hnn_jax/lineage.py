"""Derivatives of a PyTorch model as people really make them, for the zoo and the lineage
benchmark: a fine-tune with a replaced task head, a merged LoRA adapter, a fine-tune of a
fine-tune. All train for real (AdamW, hundreds of steps) on a synthetic task: fixed random
inputs like the model's example, each with a fixed random label.

The task head is the last `torch.nn.Linear` in module order (a classifier's `fc`, `head` or
`classifier`). A model without one (a transformers base model) is tuned through a temporary
head on its pooled first output, which is dropped again: its published form has no head either.
"""

from __future__ import annotations

import copy

import numpy as np

STEPS = 500          # a short but real fine-tune
# AdamW learning rates: transformers.Trainer's default for transformers models (config-bearing),
# the usual Adam fine-tuning rate for others (CNNs)
LEARNING_RATE = {"transformers": 5e-5, "other": 1e-4}
BATCH = 8
DATASET = 64         # synthetic examples, cycled
LORA_RANK = 8
LORA_ALPHA = 16


def synthetic_batch(example, generator, rows: int = BATCH, vocab: int = 1000):
    """`rows` random inputs shaped like `example` (a tensor or a dict of them): floats N(0, 1),
    token ids below `vocab`, an attention mask of ones, other integers 0 (token types)."""
    import torch

    def like(t, name="x"):
        shape = (rows, *t.shape[1:])
        if t.is_floating_point():
            return torch.randn(shape, generator=generator)
        if name == "attention_mask":
            return torch.ones(shape, dtype=t.dtype)
        if name == "x" or name.endswith("input_ids"):
            return torch.randint(0, min(vocab, 1000), shape, generator=generator)
        return torch.zeros(shape, dtype=t.dtype)

    if isinstance(example, dict):
        return {k: like(v, k) if isinstance(v, torch.Tensor) else v for k, v in example.items()}
    return like(example)


def _run(model, inputs):
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    while isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        out = out.to_tuple()[0] if hasattr(out, "to_tuple") else out[0]
    return out


def vocab_size(model) -> int:
    return getattr(getattr(model, "config", None), "vocab_size", 1000) or 1000


def _pooled(out):
    """[batch, features] from a model output of any rank (mean over the middle axes)."""
    return out.reshape(out.shape[0], -1, out.shape[-1]).mean(1) if out.ndim > 2 else out.reshape(out.shape[0], -1)


def _owner(model, name: str):
    """(module holding the submodule called `name`, its attribute name there)."""
    parent, _, attr = name.rpartition(".")
    return model.get_submodule(parent), attr


def task_head(model):
    """(parent module, attribute name, Linear) of the model's task head, or None."""
    import torch

    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return None
    name, head = linears[-1]
    return (*_owner(model, name), head)


def replace_head(model, classes: int, seed: int):
    """A copy of the model with its task head replaced by a fresh Linear of `classes` outputs."""
    import torch

    found = task_head(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no Linear task head to replace")
    model = copy.deepcopy(model)
    parent, attr, head = task_head(model)
    torch.manual_seed(seed)
    setattr(parent, attr, torch.nn.Linear(head.in_features, classes, bias=head.bias is not None))
    if hasattr(getattr(model, "config", None), "num_labels"):
        model.config.num_labels = classes
    return model


def learning_rate(model) -> float:
    return LEARNING_RATE["transformers" if hasattr(model, "config") else "other"]


def finetune(model, example, *, steps: int = STEPS, lr: float | None = None, seed: int = 0,
             classes: int | None = None, params=None):
    """A copy of `model` trained for `steps` AdamW steps on the synthetic task (cross-entropy on
    `classes` labels, default the head's width). With `params` (a function of the copy giving
    the tensors to train) only those train, else all."""
    import torch

    tuned = copy.deepcopy(model).train()
    generator = torch.Generator().manual_seed(seed)
    vocab = vocab_size(model)
    with torch.no_grad():
        width = _pooled(_run(tuned.eval(), synthetic_batch(example, generator, 1, vocab))).shape[1]
    tuned.train()
    head = None
    if not _has_head(tuned, example):  # a base model: a temporary head
        head = torch.nn.Linear(width, classes or 4)
    classes = classes or (head or task_head(tuned)[2]).out_features
    data = [synthetic_batch(example, generator, BATCH, vocab) for _ in range(DATASET // BATCH)]
    labels = [torch.randint(0, classes, (BATCH,), generator=generator) for _ in data]
    trained = list(params(tuned) if params else tuned.parameters()) + (list(head.parameters()) if head else [])
    opt = torch.optim.AdamW(trained, lr=lr or learning_rate(model), weight_decay=0.01)
    for step in range(steps):
        logits = _pooled(_run(tuned, data[step % len(data)]))
        logits = head(logits) if head is not None else logits
        loss = torch.nn.functional.cross_entropy(logits[:, :classes], labels[step % len(data)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


def tune_new_head(model, example, *, classes: int = 5, seed: int = 0, **kwargs):
    """Replace the task head (when there is one) and fine-tune the whole model."""
    if _has_head(model, example):
        model = replace_head(model, classes, seed)
    return finetune(model, example, seed=seed, classes=classes, **kwargs)


def _has_head(model, example) -> bool:
    """Whether the model has a Linear whose output, the last one's, is the model's (first)
    output: a classifier, not a base model whose last Linear is a pooler beside its output."""
    import torch

    if task_head(model) is None:
        return False
    model = copy.deepcopy(model).eval()
    seen = []
    handle = task_head(model)[2].register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        out = _run(model, synthetic_batch(example, torch.Generator().manual_seed(0), 1, vocab_size(model)))
    handle.remove()
    return bool(seen) and seen[-1] is out


def _lora_linear():
    import torch

    class LoRALinear(torch.nn.Module):
        """base(x) + alpha / rank * x A^T B^T, with the base frozen and B zero at the start."""

        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base, self.scale = base.requires_grad_(False), alpha / rank
            self.a = torch.nn.Parameter(torch.randn(rank, base.in_features) / np.sqrt(base.in_features))
            self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

        def forward(self, x):
            return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale

        def merged(self):
            with torch.no_grad():
                self.base.weight += (self.b @ self.a) * self.scale
            return self.base.requires_grad_(True)

    return LoRALinear


def lora_merge(model, example, *, rank: int = LORA_RANK, alpha: float = LORA_ALPHA, seed: int = 0,
               classes: int = 5, **kwargs):
    """Fine-tune a LoRA adapter (rank `rank`) on every Linear but the task head, with a new task
    head trained in full (when the model has one), then merge W += alpha / rank * B @ A."""
    import torch

    lora = _lora_linear()
    has_head = _has_head(model, example)
    model = replace_head(model, classes, seed) if has_head else copy.deepcopy(model)
    head = task_head(model)[2] if has_head else None
    model.requires_grad_(False)
    torch.manual_seed(seed)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    for name in names:
        parent, attr = _owner(model, name)
        setattr(parent, attr, lora(getattr(parent, attr), rank, alpha))
    if head is not None:
        head.requires_grad_(True)
    tuned = finetune(model, example, seed=seed, classes=classes,
                     params=lambda m: [p for p in m.parameters() if p.requires_grad], **kwargs)
    for name in names:
        parent, attr = _owner(tuned, name)
        setattr(parent, attr, getattr(parent, attr).merged())
    return tuned.requires_grad_(True).eval()
