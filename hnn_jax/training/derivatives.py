"""Derivatives of a PyTorch model as people really make them, for the zoo and the lineage
benchmark: a fine-tune with a replaced task head, a merged LoRA adapter, a fine-tune of a
fine-tune, a copy with its hidden units renumbered (hnn_jax.lineage reads lineage back from
codes). All train for real (AdamW, hundreds of steps) on a synthetic task: fixed random
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


def _permute_(tensor, perm, dim: int):
    """Reorder `tensor` along `dim` by `perm`, in place (a parameter or a buffer)."""
    import torch

    with torch.no_grad():
        tensor.copy_(tensor.index_select(dim, perm))


def _renumber_channels(model, generator) -> int:
    """Renumber the output channels of every Conv2d or Linear in a Sequential whose channels only
    BatchNorms and elementwise modules carry to the next Conv2d or Linear; how many were."""
    import torch

    carriers = (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.GELU,
                torch.nn.SiLU, torch.nn.Tanh, torch.nn.Identity, torch.nn.Dropout, torch.nn.AdaptiveAvgPool2d,
                torch.nn.AdaptiveMaxPool2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.Flatten)
    count = 0
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        layers = list(seq)
        for i, layer in enumerate(layers):
            if not isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) or getattr(layer, "groups", 1) != 1:
                continue
            between, consumer = [], None
            for nxt in layers[i + 1:]:
                if isinstance(nxt, (torch.nn.Conv2d, torch.nn.Linear)):
                    consumer = nxt
                    break
                if not isinstance(nxt, carriers):
                    break
                between.append(nxt)
            if consumer is None or getattr(consumer, "groups", 1) != 1:
                continue
            width = layer.weight.shape[0]
            spatial = any(isinstance(m, torch.nn.Flatten) for m in between)
            if consumer.weight.shape[1] != width and not spatial:
                continue
            if spatial and consumer.weight.shape[1] != width:  # a Flatten of more than one position
                continue
            perm = torch.randperm(width, generator=generator)
            _permute_(layer.weight, perm, 0)
            if layer.bias is not None:
                _permute_(layer.bias, perm, 0)
            for norm in between:
                if isinstance(norm, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                    for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                        if t is not None:
                            _permute_(t, perm, 0)
            _permute_(consumer.weight, perm, 1)
            count += 1
    return count


def _renumber_attention_and_ffn(model, generator) -> int:
    """In every transformers layer with BERT's module names (attention.self.query/key/value,
    attention.output.dense, intermediate.dense, output.dense): renumber the FFN units, the heads,
    and the dimensions inside each head (q and k together, v and the output projection together);
    how many layers were."""
    import torch

    count = 0
    for layer in model.modules():
        attention = getattr(getattr(layer, "attention", None), "self", None)
        if attention is None or not hasattr(layer, "intermediate") or not hasattr(layer, "output"):
            continue
        heads, size = attention.num_attention_heads, attention.attention_head_size
        head_order = torch.randperm(heads, generator=generator)

        # the same head order for q, k, v and the output projection; a permutation of the
        # dimensions inside each head for q and k together, another for v and the output
        qk, vo = (torch.cat([h * size + torch.randperm(size, generator=generator) for h in head_order.tolist()])
                  for _ in range(2))
        for linear, perm in ((attention.query, qk), (attention.key, qk), (attention.value, vo)):
            _permute_(linear.weight, perm, 0)
            _permute_(linear.bias, perm, 0)
        _permute_(layer.attention.output.dense.weight, vo, 1)
        units = torch.randperm(layer.intermediate.dense.out_features, generator=generator)
        _permute_(layer.intermediate.dense.weight, units, 0)
        _permute_(layer.intermediate.dense.bias, units, 0)
        _permute_(layer.output.dense.weight, units, 1)
        count += 1
    return count


def renumber(model, example, *, seed: int = 0, atol: float = 1e-4):
    """A copy of `model` with its hidden units renumbered: the same function, other weights at
    each place. A CNN's inner channels (with their BatchNorms), a transformer's FFN units, heads
    and the dimensions inside each head. The cheapest obfuscation a model thief has; checked by
    running both models on `example` (ValueError if the outputs differ, or nothing was
    renumbered)."""
    import torch

    renumbered = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    count = _renumber_attention_and_ffn(renumbered, generator) or _renumber_channels(renumbered, generator)
    if not count:
        raise ValueError(f"{type(model).__name__}: no hidden units found to renumber")
    with torch.no_grad():
        before, after = _run(copy.deepcopy(model).eval(), example), _run(renumbered, example)
    if not torch.allclose(before, after, atol=atol, rtol=1e-4):
        raise ValueError(f"renumbering {type(model).__name__} changed its outputs by "
                         f"{float((before - after).abs().max()):.3g}")
    return renumbered
