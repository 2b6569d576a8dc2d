"""Training losses on continuous (pre-sign) codes h of shape [batch, bits].

Pure functions of arrays, so they compose inside any jax.grad / optax step. Distances use the
relaxed Hamming distance (bits - <h_i, h_j>) / 2, which equals the Hamming distance when the
codes are exactly +-1.
"""

import jax
import jax.numpy as jnp
import optax


def classification_loss(codes, labels, weight, bias=None):
    """HNN-Net's classification loss: softmax cross-entropy of a linear head over the code,
    with model families as classes (weight: [bits, classes], labels: int [batch])."""
    logits = codes @ weight
    if bias is not None:
        logits = logits + bias
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def quantization_loss(codes):
    """HNN-Net's quantization loss, mean (|h| - 1)^2: pulls codes towards +-1 so that taking
    the sign loses little."""
    return jnp.mean(jnp.square(jnp.abs(codes) - 1.0))


def code_distances(codes):
    """[batch, batch] relaxed Hamming distances."""
    return 0.5 * (codes.shape[-1] - codes @ codes.T)


def graded_margin_loss(codes, levels, margin: float = 2.0):
    """Orders distances by relation level (0 same variant < 1 same architecture < 2 same family
    < 3 unrelated): for every anchor i and pairs (i, j), (i, k) with levels[i, j] < levels[i, k],
    hinge on d(i, j) + margin * (levels[i, k] - levels[i, j]) - d(i, k), averaged over such
    triplets. levels: int [batch, batch]; negative entries (unknown relation) and the diagonal
    are ignored. margin is in bits per level step."""
    d = code_distances(codes)
    levels = jnp.asarray(levels)
    known = (levels >= 0) & ~jnp.eye(levels.shape[0], dtype=bool)
    near, far = levels[:, :, None], levels[:, None, :]
    valid = known[:, :, None] & known[:, None, :] & (near < far)
    hinge = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin * (far - near))
    return jnp.sum(jnp.where(valid, hinge, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def bit_balance_loss(codes):
    """Mean over bits of the squared batch mean: each bit should split the batch in half."""
    return jnp.mean(jnp.square(jnp.mean(codes, axis=0)))


def decorrelation_loss(codes):
    """Mean squared off-diagonal entry of codes^T codes / batch: bits should carry separate
    information instead of copying each other."""
    bits = codes.shape[-1]
    corr = codes.T @ codes / codes.shape[0]
    off_diagonal = jnp.sum(jnp.square(corr)) - jnp.sum(jnp.square(jnp.diagonal(corr)))
    return off_diagonal / (bits * (bits - 1))
