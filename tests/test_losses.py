"""Each loss against a value worked out by hand on a tiny input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hnn_jax.training import losses


def test_classification_loss_by_hand():
    codes = jnp.array([[1.0, -1.0], [0.0, 2.0]])
    weight = jnp.eye(2)
    bias = jnp.array([0.0, 1.0])
    # row 0: logits [1, 0], label 0 -> log(1 + e^-1); row 1: logits [0, 3], label 0 -> log(1 + e^3)
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(3))) / 2
    got = losses.classification_loss(codes, jnp.array([0, 0]), weight, bias)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # without bias, row 0 logits [1, -1]: log(1 + e^-2); row 1 logits [0, 2] label 1: log(1 + e^-2)
    got = losses.classification_loss(codes, jnp.array([0, 1]), weight)
    assert float(got) == pytest.approx(math.log1p(math.exp(-2)), rel=1e-6)


def test_quantization_loss_by_hand():
    codes = jnp.array([[0.5, -2.0], [1.0, 0.0]])
    # (|h| - 1)^2 = 0.25, 1, 0, 1
    assert float(losses.quantization_loss(codes)) == pytest.approx(0.5625)
    assert float(losses.quantization_loss(jnp.array([[1.0, -1.0]]))) == 0.0


def test_code_distances_equal_hamming_on_sign_codes():
    codes = jnp.array([[1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    np.testing.assert_allclose(losses.code_distances(codes), [[0, 2], [2, 0]])


def test_graded_margin_loss_by_hand():
    codes = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    # d01 = 1, d02 = 2, d12 = 1
    levels = jnp.array([[0, 0, 1], [0, 0, 3], [1, 3, 0]])
    # anchor 0: relu(d01 - d02 + 1*(1-0)) = 0; anchor 1: relu(d10 - d12 + 3) = 3;
    # anchor 2: relu(d20 - d21 + 1*(3-1)) = 3  -> mean over 3 triplets = 2
    assert float(losses.graded_margin_loss(codes, levels, margin=1.0)) == pytest.approx(2.0)
    # unknown relations (-1) drop every triplet that uses them: only anchor 0 remains -> 0
    unknown = jnp.array([[0, 0, 1], [0, 0, -1], [1, -1, 0]])
    assert float(losses.graded_margin_loss(codes, unknown, margin=1.0)) == 0.0


def test_graded_margin_loss_is_zero_when_distances_follow_levels():
    codes = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    levels = jnp.array([[0, 0, 3], [0, 0, 3], [3, 3, 0]])  # d01 = 1, d02 = 4, d12 = 3
    assert float(losses.graded_margin_loss(codes, levels, margin=0.5)) == 0.0
    assert float(losses.graded_margin_loss(codes, levels, margin=1.0)) > 0.0  # 1 + 3 > 3


def test_bit_balance_loss_by_hand():
    codes = jnp.array([[1.0, 1.0], [1.0, -1.0]])
    # bit means [1, 0] -> mean of squares 0.5
    assert float(losses.bit_balance_loss(codes)) == pytest.approx(0.5)


def test_decorrelation_loss_by_hand():
    codes = jnp.array([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    # C01 = (1 - 1 + 1) / 3 = 1/3; two off-diagonal entries of (1/3)^2, over K(K-1) = 2
    assert float(losses.decorrelation_loss(codes)) == pytest.approx(1 / 9)
    orthogonal = jnp.array([[1.0, 1.0], [1.0, -1.0]])
    assert float(losses.decorrelation_loss(orthogonal)) == 0.0


def test_losses_are_differentiable():
    codes = jnp.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]])
    levels = jnp.array([[0, 1, 3], [1, 0, 3], [3, 3, 0]])

    def total(h):
        return (losses.quantization_loss(h) + losses.graded_margin_loss(h, levels)
                + losses.bit_balance_loss(h) + losses.decorrelation_loss(h)
                + losses.classification_loss(h, jnp.array([0, 0, 1]), jnp.eye(2)))

    grad = jax.grad(total)(codes)
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
