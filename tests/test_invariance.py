"""One model, one code: canonical order from structure alone, and instance bits that only weights
which tell initialisations apart move."""

import itertools

import numpy as np
import pytest

import hnn_jax
from hnn_jax.training import variants
from hnn_jax import converters
from hnn_jax.converters import canonicalize, export


def attention_encoder(seed: int, d: int = 32, seq: int = 8):
    """An encoder block with separate q, k and v projections (BERT's layout): three linears of
    one input, op and shape, told apart only by where their outputs go."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, d)
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, ids):
            x = self.embed(ids)
            h = self.ln1(x)
            att = torch.softmax(self.q(h) @ self.k(h).transpose(-2, -1) / d ** 0.5, dim=-1)
            x = x + self.o(att @ self.v(h))
            return x + self.down(nn.functional.gelu(self.up(self.ln2(x))))

    return Block().eval(), torch.randint(0, 100, (1, seq))


def layer_norm_mlp(seed: int, d: int = 32, depth: int = 6):
    """Linear + LayerNorm + GELU blocks: at initialisation half the weight tensors are the
    LayerNorms' ones and zeros, the same for every seed."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(d, d), nn.LayerNorm(d), nn.GELU()]
    return nn.Sequential(*layers).eval(), torch.randn(1, d)


@pytest.fixture(scope="module")
def encoder_file():
    model, x = attention_encoder(0)
    return export.torch_to_onnx(model, x)


@pytest.mark.parametrize("transform", ["fp16", "int8", "prune30", "noise"])
def test_canonical_order_does_not_depend_on_weight_values(encoder_file, transform):
    """q, k and v keep their places under every weight-changing transform: each linear node of
    the copy carries the weight of the original's node at its position."""
    copy = {"fp16": variants.fp16_weights, "int8": variants.int8_dynamic,
            "prune30": lambda m: variants.prune(m, 0.3), "noise": lambda m: variants.perturb(m, 0.01)}[transform]
    a, b = canonicalize(encoder_file), canonicalize(copy(encoder_file))
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    assert [(e.sender, e.receiver, e.slot) for e in a.edges] == [(e.sender, e.receiver, e.slot) for e in b.edges]
    linears = [(x.weights[0], y.weights[0]) for x, y in zip(a.nodes, b.nodes) if x.op == "linear"]
    assert len(linears) == 6
    for wa, wb in linears:
        same = np.corrcoef(np.asarray(wa, np.float64).ravel(), np.asarray(wb, np.float64).ravel())[0, 1]
        assert same > 0.9, "a linear node took another's place"


@pytest.mark.parametrize("build", [attention_encoder, layer_norm_mlp])
def test_weight_parts_of_different_initialisations_differ_in_about_half(build):
    """Tensors that are constant at initialisation (LayerNorm's ones and zeros, zero biases)
    carry nothing into the weight part, so 6 random initialisations are ~104 of 208 bits apart,
    and never within the same-model band."""
    codes = [hnn_jax.hash(hnn_jax.converters.from_torch(*build(seed))) for seed in range(6)]
    assert len({c.architecture.bits.tobytes() for c in codes}) == 1  # one architecture
    distances = [a.distances(b).weights for a, b in itertools.combinations(codes, 2)]
    assert 80 <= np.mean(distances) <= 128, distances
    assert all(a.relation(b)[0] == "same-architecture" for a, b in itertools.combinations(codes, 2))


def small_cnn(seed: int):
    """Conv-ReLU twice, global pool, linear: onnxruntime fuses each Conv+ReLU ("extended"), and
    static int8 quantisation folds each ReLU into its output's range."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return model.eval(), torch.randn(1, 3, 16, 16)


REWRITTEN = {  # files onnxruntime writes: fused com.microsoft ops, QDQ and QOperator int8
    "ort_extended": lambda m: variants.ort_optimized(m, "ORT_ENABLE_EXTENDED"),
    "int8_static_qdq": lambda m: variants.int8_static(m, "QDQ"),
    "int8_static_qop": lambda m: variants.int8_static(m, "QOperator"),
}


@pytest.mark.parametrize("way", sorted(REWRITTEN))
@pytest.mark.parametrize("build", [small_cnn, attention_encoder])
def test_files_onnxruntime_wrote_give_the_reference_graph(build, way):
    """FusedConv, FusedMatMul (its alpha a Div's reciprocal), QLinearConv, QGemm, QLinearAdd,
    QLinearSoftmax, quantised embedding tables read twice: spelled back, the canonical graph is
    the float export's, and so are the learned bits."""
    from hnn_jax.hasher import default_hasher

    reference = export.torch_to_onnx(*build(0))
    rewritten = REWRITTEN[way](reference)
    assert any(n.domain == "com.microsoft" or n.op_type.startswith("QLinear") or n.op_type == "DequantizeLinear"
               for n in rewritten.graph.node), "the way did not rewrite the file"
    a, b = canonicalize(reference), canonicalize(rewritten)
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    assert [(e.sender, e.receiver, e.slot) for e in a.edges] == [(e.sender, e.receiver, e.slot) for e in b.edges]
    k = default_hasher().config.instance_bits
    code_a, code_b = (hnn_jax.hash(hnn_jax.converters.from_onnx(m)) for m in (reference, rewritten))
    assert np.array_equal(code_a.bits[:-k], code_b.bits[:-k])


def tiny_bert(seed: int):
    """BERT without token_type_ids: its token-type embedding is read at the indices of a zero
    buffer, a lookup whose result is a constant."""
    import torch
    import transformers as tr

    torch.manual_seed(seed)
    config = tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    bert = tr.BertModel(config, add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids):
            return self.bert(input_ids=ids, return_dict=False)[0]

    return Encoder().eval(), torch.randint(1, 100, (1, 8))


def test_a_lookup_that_tools_fold_into_a_constant_leaves_the_weight_part_where_it_was():
    """onnxruntime's basic level (as onnxsim and onnxslim) folds the token-type lookup into a
    constant; the weight part reads the same tensors in either file (it moved 29 of 208 bits)."""
    module, ids = tiny_bert(0)
    reference = export.torch_to_onnx(module, ids)
    folded = variants.ort_optimized(reference, "ORT_ENABLE_BASIC")
    assert len(folded.graph.node) < len(reference.graph.node)
    a = hnn_jax.hash(converters.from_onnx(reference))
    b = hnn_jax.hash(converters.from_onnx(folded))
    assert a.distances(b).weights <= 1
    other = hnn_jax.hash(converters.from_onnx(export.torch_to_onnx(*tiny_bert(1))))
    assert a.distances(other).weights > 40
