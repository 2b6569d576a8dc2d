"""Flax/JAX input: converters.from_flax translates the jaxpr to ONNX (converters/jaxpr.py).

The ONNX must compute what JAX computes (onnxruntime against the JAX function), and a Flax model
must hash near the same architecture written in PyTorch: its canonical graph should be the
PyTorch export's, so only the instance bits (weights) differ.
"""

import math

import numpy as np
import pytest

pytest.importorskip("flax")

import jax
import jax.numpy as jnp
import onnx
import onnxruntime as ort
from flax import linen, nnx

import hnn_jax
from hnn_jax import converters
from hnn_jax.converters import export
from hnn_jax.converters.jaxpr import jaxpr_to_onnx
from hnn_jax.errors import UnsupportedModelError



def _init(seed: int) -> dict:
    """kernel_init drawing Lecun-normal kernels with numpy: jax.random compiles for seconds per
    kernel shape on a busy CPU, which would be most of these tests' time."""
    rng = np.random.default_rng(seed)

    def init(key, shape, dtype=jnp.float32, out_sharding=None):
        return jnp.asarray(rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1])), dtype)

    return {"kernel_init": init}


def _run(model: onnx.ModelProto, *args) -> list[np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: np.asarray(a) for i, a in zip(session.get_inputs(), args)})


def _assert_matches_jax(model: onnx.ModelProto, fn, *args, atol=1e-4):
    want = jax.tree_util.tree_leaves(fn(*args))
    got = _run(model, *args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, np.asarray(w), atol=atol, rtol=1e-4)


def _canonical_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op for n in converters.canonicalize(model).nodes]


def _assert_twins(flax_model: onnx.ModelProto, torch_model: onnx.ModelProto):
    """The architecture parts all but equal and the same canonical op sequence; the weight parts
    read the weights, which differ (each framework's own initialiser), so never "same model"."""
    ops_a, ops_b = _canonical_ops(flax_model), _canonical_ops(torch_model)
    a, b = hnn_jax.hash([converters.from_onnx(flax_model), converters.from_onnx(torch_model)])
    d = a.distances(b)
    report = f"distances {d}, relation {a.relation(b)[0]}\nflax:  {ops_a}\ntorch: {ops_b}"
    assert d.architecture <= 3, report
    assert a.relation(b)[0] != "same-model" and a.chance(b) > 1e-3, report
    assert ops_a == ops_b, report


class MLP(nnx.Module):
    def __init__(self, rngs, seed=0):
        init = _init(seed)
        self.fc1 = nnx.Linear(16, 32, rngs=rngs, **init)
        self.fc2 = nnx.Linear(32, 10, rngs=rngs, **init)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


class CNN(nnx.Module):
    def __init__(self, rngs, seed=0):
        init = _init(seed)
        self.conv = nnx.Conv(3, 8, (3, 3), padding=1, rngs=rngs, **init)
        self.depthwise = nnx.Conv(8, 8, (3, 3), strides=2, feature_group_count=8, padding="VALID",
                                  rngs=rngs, **init)
        self.fc = nnx.Linear(8, 10, rngs=rngs, **init)

    def __call__(self, x):  # NHWC, as Flax is
        x = nnx.avg_pool(nnx.relu(self.conv(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.depthwise(x)), (2, 2), strides=(1, 1), padding="SAME")
        return self.fc(x.mean(axis=(1, 2)))


class Block(nnx.Module):
    """A pre-norm transformer encoder block: LayerNorm, q/k/v/out projections, softmax
    attention, GELU MLP, residuals."""

    def __init__(self, dim, heads, rngs, seed=0):
        init = _init(seed)
        self.ln1, self.ln2 = nnx.LayerNorm(dim, rngs=rngs), nnx.LayerNorm(dim, rngs=rngs)
        self.q, self.k, self.v, self.o = (nnx.Linear(dim, dim, rngs=rngs, **init) for _ in range(4))
        self.fc1 = nnx.Linear(dim, 4 * dim, rngs=rngs, **init)
        self.fc2 = nnx.Linear(4 * dim, dim, rngs=rngs, **init)
        self.heads = heads

    def __call__(self, x):
        b, t, d = x.shape
        y = self.ln1(x)

        def split(z):
            return z.reshape(b, t, self.heads, d // self.heads).transpose(0, 2, 1, 3)

        q, k, v = split(self.q(y)), split(self.k(y)), split(self.v(y))
        a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // self.heads), axis=-1)
        x = x + self.o((a @ v).transpose(0, 2, 1, 3).reshape(b, t, d))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x)), approximate=False))


def _torch_twins():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TorchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    class TorchBlock(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
            self.fc1, self.fc2, self.act = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), nn.GELU()
            self.heads = heads

        def forward(self, x):
            b, t, d = x.shape
            y = self.ln1(x)

            def split(z):
                return z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

            q, k, v = split(self.q(y)), split(self.k(y)), split(self.v(y))
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
            x = x + self.o((a @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))

    return torch, TorchMLP, TorchBlock


def _normal(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)  # jax.random compiles: slow


def test_nnx_mlp_matches_jax():
    model = MLP(nnx.Rngs(0))
    x = _normal(4, 16)
    onnx_model = export.flax_to_onnx(model, x)
    assert len(onnx_model.graph.initializer) == 4  # two kernels, two biases: parameters are constants
    assert [i.name for i in onnx_model.graph.input] == ["input_0"]
    _assert_matches_jax(onnx_model, model, x)


def test_nnx_cnn_matches_jax():
    model = CNN(nnx.Rngs(0))
    x = _normal(2, 16, 16, 3)
    onnx_model = export.flax_to_onnx(model, x)
    ops = {n.op_type for n in onnx_model.graph.node}
    assert {"Conv", "AveragePool", "MaxPool", "ReduceMean"} <= ops
    groups = [onnx.helper.get_attribute_value(a) for n in onnx_model.graph.node if n.op_type == "Conv"
              for a in n.attribute if a.name == "group"]
    assert sorted(groups) == [1, 8]  # feature_group_count: the depthwise conv
    _assert_matches_jax(onnx_model, model, x)
    graph = converters.from_flax(model, x)
    assert graph.n_node[0] == len(converters.canonicalize(onnx_model).nodes)


def test_nnx_module_keeps_its_mode_and_statistics():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc, self.bn = nnx.Linear(8, 8, rngs=rngs, **_init(0)), nnx.BatchNorm(8, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.bn(self.fc(x)))

    model = Net(nnx.Rngs(0))
    stats = [np.asarray(v).copy() for v in jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))]
    x = _normal(4, 8)
    onnx_model = export.flax_to_onnx(model, x)  # converted in eval mode, on a copy
    assert not model.drop.deterministic and not model.bn.use_running_average
    assert all(np.array_equal(a, np.asarray(b)) for a, b in
               zip(stats, jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))))
    model.eval()
    _assert_matches_jax(onnx_model, model, x)


def test_nnx_language_model_matches_jax_and_reads_as_its_parts():
    """Token ids in (int64 graph input, as given), Embed as Gather, RMSNorm, MultiHeadAttention (dense
    layers with [heads, head_dim] outputs, a causal mask), a head: each a canonical node."""
    class LM(nnx.Module):
        def __init__(self, rngs):
            init = _init(0)
            self.embed = nnx.Embed(50, 32, rngs=rngs, embedding_init=init["kernel_init"])
            self.norm = nnx.RMSNorm(32, rngs=rngs)
            self.attention = nnx.MultiHeadAttention(4, 32, decode=False, rngs=rngs, **init)
            self.head = nnx.Linear(32, 50, rngs=rngs, **init)

        def __call__(self, ids):
            x = self.embed(ids)
            x = x + self.attention(self.norm(x), mask=nnx.make_causal_mask(ids))
            return self.head(x)

    model, ids = LM(nnx.Rngs(0)), np.array([[1, 5, 7, 2, 9, 11]], np.int64)
    onnx_model = export.flax_to_onnx(model, ids)
    assert onnx_model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # as given
    _assert_matches_jax(onnx_model, model, ids)
    ops = _canonical_ops(onnx_model)
    assert ops[:3] == ["input", "embedding", "rms_norm"] and ops.count("linear") == 5
    assert "softmax" in ops and "add" not in ops[:-2]  # the projections' biases are in their `linear`


def test_linen_module_converts():
    init = _init(0)

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.Conv(4, (3, 3), **init)(x)
            x = linen.LayerNorm()(linen.gelu(x))
            return linen.Dense(5, **init)(x.reshape(x.shape[0], -1))

    x = _normal(2, 8, 8, 3)
    net = Net()
    variables = net.init(jax.random.key(0), x)
    onnx_model = export.flax_to_onnx(net, x, variables=variables)
    _assert_matches_jax(onnx_model, lambda a: net.apply(variables, a), x)
    graph = converters.from_flax(net, x, variables=variables)
    assert graph.n_node[0] > 3
    with pytest.raises(UnsupportedModelError, match="variables"):
        converters.from_flax(net, x)


def test_jax_function_primitives_match_jax():
    """A plain function: indexing (Gather, Slice, Split), einsum spellings of dot_general,
    reductions, comparisons and select, pad, custom_jvp activations, a nested jit."""
    table = jnp.asarray(_normal(10, 6, seed=2))

    def fn(x, ids):
        h = x @ table.T  # [4, 10]: a closed-over constant
        return (table[ids], jnp.take(x, ids, axis=1), x[:, 1:5:2], jnp.split(x, 2, axis=1)[1],
                jax.lax.dynamic_slice(x, (1, -1), (2, 2)), jnp.einsum("bi,bj->bij", x, x),
                jnp.einsum("ij,kj->ik", x, x), jnp.argmax(h, axis=1), jnp.where(x > 0, x, 0.1 * x),
                jnp.pad(x, ((1, 0), (0, 2))), jax.nn.softmax(h), jax.nn.silu(x), jax.nn.gelu(x),
                jax.jit(jnp.tanh)(x) ** 3, jax.lax.rsqrt(jnp.abs(x) + 1), jnp.max(x, axis=0) - jnp.min(x),
                jnp.concatenate([x, jnp.sign(x)], axis=0), (x != 0).astype(jnp.int32), jnp.cumsum(x, axis=1),
                jax.nn.sigmoid(x) * jnp.exp(-x) + jnp.log1p(jnp.abs(x)), jax.lax.erf(x), jnp.sqrt(x * x))

    x, ids = _normal(4, 6), jnp.array([3, 0, 5], jnp.int32)
    onnx_model = jaxpr_to_onnx(fn, x, ids)
    assert [i.type.tensor_type.elem_type for i in onnx_model.graph.input] == [onnx.TensorProto.FLOAT,
                                                                             onnx.TensorProto.INT32]
    assert "Gather" in {n.op_type for n in onnx_model.graph.node}
    _assert_matches_jax(onnx_model, fn, x, ids)


def test_batched_dot_general_with_contracting_dims_in_the_middle():
    def fn(a, b):
        return jax.lax.dot_general(a, b, (((1, 3), (2, 0)), ((2,), (1,))))

    a, b = _normal(2, 3, 4, 5), _normal(5, 4, 3, 6, seed=2)
    _assert_matches_jax(jaxpr_to_onnx(fn, a, b), fn, a, b)


def test_unsupported_primitive_raises():
    with pytest.raises(UnsupportedModelError, match="'sort'"):
        jaxpr_to_onnx(lambda x: jnp.sort(x, axis=-1), _normal(3, 4))
    with pytest.raises(UnsupportedModelError, match="takes a Flax NNX or Linen module"):
        converters.from_flax(42, _normal(3))


def test_transformer_block_hashes_near_its_torch_twin():
    torch, _, TorchBlock = _torch_twins()
    dim, heads, tokens = 32, 4, 8
    block = Block(dim, heads, nnx.Rngs(0))
    x = _normal(1, tokens, dim)
    flax_model = export.flax_to_onnx(block, x)
    _assert_matches_jax(flax_model, block, x)
    torch.manual_seed(0)
    torch_model = export.torch_to_onnx(TorchBlock(dim, heads), torch.zeros(1, tokens, dim))
    ops = _canonical_ops(flax_model)
    assert ops.count("layer_norm") == 2 and "softmax" in ops and "gelu" in ops and ops.count("linear") == 6
    _assert_twins(flax_model, torch_model)


def test_mlp_hashes_near_its_torch_twin():
    torch, TorchMLP, _ = _torch_twins()
    flax_model = export.flax_to_onnx(MLP(nnx.Rngs(0)), _normal(1, 16))
    torch.manual_seed(0)
    torch_model = export.torch_to_onnx(TorchMLP(), torch.zeros(1, 16))
    assert _canonical_ops(flax_model) == ["input", "linear", "relu", "linear"]
    _assert_twins(flax_model, torch_model)
