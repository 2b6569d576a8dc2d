"""Real derivatives (hnn_jax.training.derivatives): a replaced head, a merged LoRA adapter, and lineage codes
that find the parent of a fine-tune."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hnn_jax import lineage  # noqa: E402
from hnn_jax.training import derivatives  # noqa: E402


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
    tuned = derivatives.tune_new_head(model, x, classes=5, steps=30)
    assert tuned[-1].out_features == 5 and model[-1].out_features == 10
    after = weights(tuned)
    assert all(torch.equal(before[k], weights(model)[k]) for k in before)  # the parent is unchanged
    assert not torch.equal(after["0.weight"], before["0.weight"])  # the body trained too
    assert tuned(x).shape == (1, 5)


def test_lora_merge_changes_each_body_linear_by_a_low_rank_update_and_leaves_the_rest():
    model, x = classifier(1)
    before = weights(model)
    merged = derivatives.lora_merge(model, x, rank=2, steps=30)
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
    assert not derivatives._has_head(body, x)  # its last Linear feeds a LayerNorm: not a task head
    tuned = derivatives.tune_new_head(body, x, steps=20)
    assert {k: v.shape for k, v in tuned.state_dict().items()} == {k: v.shape for k, v in body.state_dict().items()}
    assert not torch.equal(tuned[0].weight, body[0].weight)


def test_a_lineage_code_finds_the_parent_of_a_real_fine_tune():
    """500 steps with a replaced head on a model of 3 weight tensors (one of which is the new
    head): the 256-bit code of the fine-tune is still clearly nearest its parent."""
    import hnn_jax
    from hnn_jax import converters

    parents = [classifier(seed) for seed in range(6)]
    model, x = parents[0]
    child = derivatives.tune_new_head(model, x, seed=9)
    graphs = [converters.from_torch(m, x) for m, _ in parents] + [converters.from_torch(child, x)]
    codes = hnn_jax.hash(graphs, bits=256)
    d = [codes[-1] - c for c in codes[:-1]]
    assert d[0] < 0.8 * min(d[1:]), d  # (the 64-bit code's 16 instance bits miss it here)


def test_renumber_keeps_the_function_and_moves_the_weights():
    model, x = classifier(3)
    renumbered = derivatives.renumber(model, x, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(renumbered(x), model(x), atol=1e-5, rtol=1e-5)
    assert not torch.equal(renumbered[0].weight, model[0].weight)
    assert torch.equal(renumbered[0].weight.sort(0).values, model[0].weight.sort(0).values)  # rows reordered


def test_renumber_refuses_a_model_without_hidden_units():
    with pytest.raises(ValueError, match="no hidden units"):
        derivatives.renumber(torch.nn.Linear(4, 2), torch.randn(1, 4))


def test_forest_links_derivatives_to_their_base_and_leaves_others_alone():
    """The bundled examples: cnn_a's dynamo, fp16, int8 and pruned files hang from cnn_a; the
    other models stand alone."""
    from pathlib import Path

    import hnn_jax
    from hnn_jax import converters

    folder = Path(hnn_jax.__file__).parent / "examples"
    names = sorted(p.name for p in folder.glob("*.onnx"))
    codes = hnn_jax.hash([converters.from_onnx(folder / n) for n in names])
    edges, roots = lineage.forest(codes)
    family = {names[e.child] for e in edges}
    assert {names[e.parent] for e in edges} <= {n for n in names if n.startswith("cnn_a")}
    assert family | {names[r] for r in roots if names[r].startswith("cnn_a")} == {
        n for n in names if n.startswith("cnn_a")}
    assert len(roots) == len(names) - len(edges)
    assert all(e.chance <= 1e-6 and e.architecture == 0 for e in edges)


def test_renumbered_units_leave_the_unit_sets_and_so_half_the_weight_part():
    """A CNN whose inner channels are renumbered (same outputs): every weight's unit-set numbers
    (schema.NODE_UNIT_PROJ) are the original's, so the odd bits of the weight part, which read
    them (weightcode.READINGS), agree; the fixed-place reading, the even bits, does not."""
    from hnn_jax import converters, schema, weightcode

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x = torch.randn(1, 3, 12, 12)
    a = converters.from_torch(model, x)
    b = converters.from_torch(derivatives.renumber(model, x, seed=2), x)
    np.testing.assert_allclose(a.nodes[:, schema.NODE_UNIT_PROJ], b.nodes[:, schema.NODE_UNIT_PROJ], atol=1e-4)
    assert np.abs(a.nodes[:, schema.NODE_WEIGHT_PROJ] - b.nodes[:, schema.NODE_WEIGHT_PROJ]).max() > 0.5
    bits = weightcode.weight_bits([a, b], 208)
    assert np.array_equal(bits[0, 1::2], bits[1, 1::2])
    assert np.count_nonzero(bits[0, ::2] != bits[1, ::2]) > 20
