"""The network: straight-through sign, gradients, direction awareness, and a short training run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hnn_jax import HasherConfig
from hnn_jax.training import losses
from hnn_jax.model import HashNet, ste_sign
from hnn_jax.padding import pad_batch
from hnn_jax.testing.synthetic import family_graph, random_graph

SMALL = HasherConfig(bits=16, hidden=32, layers=2)
apply = nnx.jit(lambda model, graph: model(graph))  # eager op-by-op dispatch is slow


def test_ste_sign_forward_and_clipped_identity_gradient():
    x = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.5])
    np.testing.assert_array_equal(ste_sign(x), [-1, -1, 1, 1, 1])  # sign(0) = +1
    grad = jax.grad(lambda v: jnp.sum(ste_sign(v) * jnp.arange(1.0, 6.0)))(x)
    np.testing.assert_array_equal(grad, [0, 2, 3, 4, 0])  # identity inside [-1, 1], 0 outside


@pytest.mark.parametrize("bits", [16, 32, 64, 128, 256])
def test_output_shape_per_bit_count(bits):
    model = HashNet(HasherConfig(bits=bits, hidden=16, layers=1), rngs=nnx.Rngs(0))
    batch = pad_batch([random_graph(1, 20), random_graph(2, 30)], n_graph=4)
    out = apply(model, batch)
    assert out.shape == (4, bits) and np.all(np.isfinite(out))


def test_config_rejects_bad_values():
    for bad in ({"bits": 48}, {"bits": 64.0}, {"hidden": 33}, {"layers": 0}):
        with pytest.raises(ValueError, match="must be one of|must be an even int|must be an int"):
            HasherConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        HasherConfig.from_dict({"bits": 64, "width": 3})
    assert HasherConfig.from_dict(SMALL.to_dict()) == SMALL


def test_message_direction_matters():
    model = HashNet(SMALL, rngs=nnx.Rngs(0))
    g = random_graph(5, 40)
    flipped = g._replace(senders=g.receivers, receivers=g.senders)
    a = apply(model, pad_batch([g], n_graph=2))[0]
    b = apply(model, pad_batch([flipped], n_graph=2))[0]
    assert not np.allclose(a, b, atol=1e-3)


def test_gradients_flow_through_the_sign_layer():
    model = HashNet(SMALL, rngs=nnx.Rngs(0))
    batch = pad_batch([random_graph(i, 30) for i in range(3)], n_graph=4)
    target = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], size=(3, 16)))

    @nnx.jit
    def grad_fn(m, batch):
        return nnx.grad(lambda m: jnp.mean(jnp.square(ste_sign(m(batch)[:3]) - target)))(m)

    grads = grad_fn(model, batch)
    for name in ("op_embed", "node_proj", "edge_proj", "to_bits"):
        leaves = jax.tree.leaves(getattr(grads, name))
        assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0, name
    first = grads.layers[0].message.kernel
    assert float(jnp.abs(first[...]).sum()) > 0


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_groups_families():
    families, variants = 4, 4
    graphs = [family_graph(f, v, n_node=40) for f in range(families) for v in range(variants)]
    labels = jnp.repeat(jnp.arange(families), variants)
    levels = jnp.where(labels[:, None] == labels[None, :], 2, 3)
    batch = pad_batch(graphs, n_graph=len(graphs) + 1)
    n = len(graphs)

    model = HashNet(SMALL, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    head = {"w": jnp.zeros((SMALL.bits, families)), "b": jnp.zeros(families)}
    state = {"net": params, "head": head}
    tx = optax.adam(1e-2)
    opt_state = tx.init(state)

    def loss_fn(state):
        h = nnx.merge(graphdef, state["net"])(batch)[:n]
        return (losses.classification_loss(h, labels, state["head"]["w"], state["head"]["b"])
                + 0.1 * losses.quantization_loss(h)
                + 0.5 * losses.graded_margin_loss(h, levels)
                + 0.1 * losses.bit_balance_loss(h) + 0.1 * losses.decorrelation_loss(h))

    @jax.jit
    def step(state, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(state)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    history = []
    for _ in range(40):
        state, opt_state, loss = step(state, opt_state)
        history.append(float(loss))
    assert history[-1] < 0.5 * history[0], history

    codes = np.asarray(ste_sign(nnx.merge(graphdef, state["net"])(batch)[:n]))
    dist = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    same = np.asarray(labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    diff = np.asarray(labels[:, None] != labels[None, :])
    assert dist[same].mean() < dist[diff].mean()


# ----------------------------------------------------------------------------- instance bits

INSTANCE = HasherConfig(bits=32, hidden=16, layers=1, instance_bits=12)


def test_the_network_computes_the_architecture_part_blind_to_weights():
    from hnn_jax.model import WEIGHT_DEPENDENT_COLUMNS

    model = HashNet(INSTANCE, rngs=nnx.Rngs(0))
    g = random_graph(3, 40)
    other = g._replace(nodes=g.nodes.copy())
    other.nodes[:, WEIGHT_DEPENDENT_COLUMNS] = np.random.default_rng(9).standard_normal(
        (g.nodes.shape[0], len(WEIGHT_DEPENDENT_COLUMNS)))
    a, b = (np.asarray(apply(model, pad_batch([x], n_graph=2))[0]) for x in (g, other))
    assert a.shape == (INSTANCE.learned_bits,)  # the weight part is not the network's (weightcode)
    np.testing.assert_array_equal(a, b)         # another init: the same architecture part
    c = HashNet(dataclasses.replace(INSTANCE, instance_bits=0), rngs=nnx.Rngs(0))  # all learned: reads them
    assert not np.array_equal(*(np.asarray(apply(c, pad_batch([x], n_graph=2))[0]) for x in (g, other)))


def test_instance_bits_config():
    assert INSTANCE.learned_bits == 20
    assert HasherConfig.from_dict(INSTANCE.to_dict()) == INSTANCE
    assert "instance_bits" not in SMALL.to_dict()  # older checkpoints keep their code versions
    for bad in (-1, 32, 40, 1.5):
        with pytest.raises(ValueError, match="instance_bits"):
            HasherConfig(bits=32, instance_bits=bad)
    model = HashNet(INSTANCE, rngs=nnx.Rngs(0))
    assert model.to_bits.kernel.shape == (16, 20)


def test_members_config():
    three = HasherConfig(bits=64, instance_bits=16, members=3)
    assert HasherConfig.from_dict(three.to_dict()) == three
    assert three.member == HasherConfig(bits=64, instance_bits=16)
    assert "members" not in SMALL.to_dict()  # older checkpoints keep their code versions
    for bad in (0, 5, 2.0):  # 48 learned bits do not split 5 ways
        with pytest.raises(ValueError, match="members"):
            HasherConfig(bits=64, instance_bits=16, members=bad)
    model = HashNet(HasherConfig(bits=32, hidden=16, layers=1, instance_bits=8, members=2), rngs=nnx.Rngs(0))
    assert len(model.members) == 2 and model.members[0].to_bits.kernel.shape == (16, 24)


@pytest.mark.slow
def test_size_blind_learned_bits_read_no_absolute_size():
    """HasherConfig.size_blind: scaling every size column (numels, widths, parameter count) moves
    no learned value; a plain network does move; old configs keep their dict (and versions)."""
    from hnn_jax import schema
    from hnn_jax.model import SIZE_COLUMNS, SIZE_EDGE_COLUMNS, SIZE_GLOBAL_COLUMNS

    graph = random_graph(0, 40)
    nodes, edges, globals_ = (np.array(a, np.float32) for a in (graph.nodes, graph.edges, graph.globals))
    nodes[:, SIZE_COLUMNS] += 1.5
    edges[:, SIZE_EDGE_COLUMNS] += 1.5
    globals_[:, SIZE_GLOBAL_COLUMNS] += 1.5
    wider = graph._replace(nodes=nodes, edges=edges, globals=globals_)
    assert schema.NODE_SHAPE.start + 1 not in SIZE_COLUMNS  # the rank stays
    for blind in (True, False):
        model = HashNet(HasherConfig(bits=32, hidden=16, layers=2, instance_bits=8, size_blind=blind),
                        rngs=nnx.Rngs(0))
        values = [np.asarray(model(pad_batch([g], n_graph=2)))[:1, :24] for g in (graph, wider)]
        same = np.allclose(*values)
        assert same == blind
    assert "size_blind" not in SMALL.to_dict()
    blind = HasherConfig(bits=64, instance_bits=16, size_blind=True)
    assert HasherConfig.from_dict(blind.to_dict()) == blind
