"""Real derivatives (hnn_jax.lineage): a replaced head, a merged LoRA adapter, and lineage codes
that find the parent of a fine-tune."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hnn_jax import lineage  # noqa: E402


def classifier(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    return model.eval(), torch.randn(1, 3, 8, 8)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tune_new_head_replaces_the_head_and_trains_the_body_without_touching_the_parent():
    model, x = classifier(0)
    before = weights(model)
    tuned = lineage.tune_new_head(model, x, classes=5, steps=30)
    assert tuned[-1].out_features == 5 and model[-1].out_features == 10
    after = weights(tuned)
    assert all(torch.equal(before[k], weights(model)[k]) for k in before)  # the parent is unchanged
    assert not torch.equal(after["0.weight"], before["0.weight"])  # the body trained too
    assert tuned(x).shape == (1, 5)


def test_lora_merge_changes_each_body_linear_by_a_low_rank_update_and_leaves_the_rest():
    model, x = classifier(1)
    before = weights(model)
    merged = lineage.lora_merge(model, x, rank=2, steps=30)
    after = weights(merged)
    assert set(after) == set(before)  # adapters merged away: the parent's layout, no extra modules
    assert torch.equal(after["0.weight"], before["0.weight"])  # the conv was frozen
    delta = (after["4.weight"] - before["4.weight"]).numpy()
    assert 0 < np.linalg.matrix_rank(delta, tol=1e-7) <= 2  # W + B @ A, rank 2
    assert torch.equal(after["4.bias"], before["4.bias"])
    assert merged[-1].out_features == 5  # a new head, trained in full


def test_a_base_model_without_a_head_keeps_its_layout():
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12), torch.nn.LayerNorm(12))
    x = torch.randn(1, 4, 6)
    assert not lineage._has_head(body, x)  # its last Linear feeds a LayerNorm: not a task head
    tuned = lineage.tune_new_head(body, x, steps=20)
    assert {k: v.shape for k, v in tuned.state_dict().items()} == {k: v.shape for k, v in body.state_dict().items()}
    assert not torch.equal(tuned[0].weight, body[0].weight)


def test_a_lineage_code_finds_the_parent_of_a_real_fine_tune():
    """500 steps with a replaced head on a model of 3 weight tensors (one of which is the new
    head): the 256-bit code of the fine-tune is still clearly nearest its parent."""
    import hnn_jax
    from hnn_jax import converters

    parents = [classifier(seed) for seed in range(6)]
    model, x = parents[0]
    child = lineage.tune_new_head(model, x, seed=9)
    graphs = [converters.from_torch(m, x) for m, _ in parents] + [converters.from_torch(child, x)]
    codes = hnn_jax.hash(graphs, bits=256)
    d = [codes[-1] - c for c in codes[:-1]]
    assert d[0] < 0.8 * min(d[1:]), d  # (the 64-bit code's 16 instance bits miss it here)
