"""spelling.respell on hand-built graphs: onnxruntime's fused and QOperator ops, Gemm with a
computed C, and transposes moved below elementwise ops. Each rewrite is checked numerically:
onnxruntime runs the file as written and as prepared, and the outputs agree."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hnn_jax.converters.canonical import canonicalize, prepare
from hnn_jax.testing.models import float_input, onnx_model

RNG = np.random.default_rng(0)
MS = "com.microsoft"


def contrib_model(nodes, inputs, outputs, initializers=(), opset=17):
    model = onnx_model(nodes, inputs, outputs, initializers, opset)
    model.opset_import.append(helper.make_opsetid(MS, 1))
    return model


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_function(model, feeds, atol=1e-5):
    """The prepared model holds standard ops only and computes what the file computes."""
    prepared = prepare(model)
    assert not [n.op_type for n in prepared.graph.node if n.domain == MS]
    for a, b in zip(run(model, feeds), run(prepared, feeds)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)
    return prepared


def kinds(model):
    return [n.op for n in canonicalize(model).nodes]


def test_fused_conv_is_conv_then_its_activation():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    model = contrib_model(
        [helper.make_node("FusedConv", ["x", "w", "b"], ["c"], domain=MS, activation="LeakyRelu",
                          activation_params=[0.2], pads=[1, 1, 1, 1]),
         helper.make_node("FusedConv", ["c", "w2"], ["y"], domain=MS, activation="Relu")],
        [float_input("x", [1, 3, 8, 8])], [float_input("y", None)],
        [("w", w), ("b", b), ("w2", RNG.standard_normal((2, 4, 1, 1)).astype(np.float32))])
    assert_same_function(model, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)})
    assert kinds(model) == ["input", "conv", "leaky_relu", "conv", "relu"]


def test_fused_matmul_transposes_and_scales_like_the_div_it_replaced():
    """q @ k^T * alpha (FusedMatMul) and q @ k^T / (1/alpha) (the export) are one graph."""
    shape = [1, 2, 4, 8]
    fused = contrib_model(
        [helper.make_node("FusedMatMul", ["q", "k"], ["y"], domain=MS, transB=1, alpha=0.25)],
        [float_input("q", shape), float_input("k", shape)], [float_input("y", None)])
    exported = onnx_model(
        [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
         helper.make_node("MatMul", ["q", "kt"], ["s"]),
         helper.make_node("Div", ["s", "four"], ["y"])],
        [float_input("q", shape), float_input("k", shape)], [float_input("y", None)],
        [("four", np.array(4.0, np.float32))])
    feeds = {n: RNG.standard_normal(shape).astype(np.float32) for n in ("q", "k")}
    assert_same_function(fused, feeds)
    np.testing.assert_allclose(run(fused, feeds)[0], run(exported, feeds)[0], rtol=1e-5, atol=1e-6)
    assert kinds(fused) == kinds(exported)


def test_quick_gelu_with_alpha_one_is_silu():
    model = contrib_model([helper.make_node("QuickGelu", ["x"], ["y"], domain=MS, alpha=1.0)],
                          [float_input("x", [2, 16])], [float_input("y", None)])
    assert_same_function(model, {"x": RNG.standard_normal((2, 16)).astype(np.float32)})
    assert kinds(model) == ["input", "silu"]


def test_skip_layer_norm_is_add_then_layer_norm_and_its_sum_output_is_kept():
    d = 16
    gamma, beta = RNG.uniform(0.5, 2, d).astype(np.float32), RNG.standard_normal(d).astype(np.float32)
    model = contrib_model(
        [helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y", "", "", "sum"], domain=MS,
                          epsilon=1e-5),
         helper.make_node("Add", ["y", "sum"], ["z"])],
        [float_input("x", [1, 4, d]), float_input("s", [1, 4, d])], [float_input("z", None)],
        [("g", gamma), ("b", beta)])
    feeds = {n: RNG.standard_normal((1, 4, d)).astype(np.float32) for n in ("x", "s")}
    assert_same_function(model, feeds)
    assert sorted(kinds(model)) == sorted(["input", "input", "add", "layer_norm", "add"])


def test_gemm_adding_a_computed_tensor_is_a_linear_then_an_add():
    """onnxruntime's basic level folds a residual Add into the Gemm before it."""
    w = RNG.standard_normal((8, 8)).astype(np.float32)
    model = onnx_model(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Gemm", ["r", "w", "x"], ["y"], beta=1.0)],
        [float_input("x", [2, 8])], [float_input("y", None)], [("w", w)])
    assert_same_function(model, {"x": RNG.standard_normal((2, 8)).astype(np.float32)})
    assert kinds(model) == ["input", "relu", "linear", "add"]


def test_qoperator_ops_become_the_float_ops_between_quantisation_steps():
    """QLinearConv -> QLinearGlobalAveragePool -> Flatten (of int8 values) -> QGemm: the float
    graph a QDQ file dequantises to (conv, pool, linear), weights dequantised."""
    u8 = lambda v: np.array(v, np.uint8)  # noqa: E731
    f32 = lambda v: np.array(v, np.float32)  # noqa: E731
    wq = RNG.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    fq = RNG.integers(-100, 100, (5, 4)).astype(np.int8)
    model = contrib_model(
        [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "cs", "cz"], ["cq"], pads=[1, 1, 1, 1]),
         helper.make_node("QLinearGlobalAveragePool", ["cq", "cs", "cz", "ps", "pz"], ["pq"], domain=MS),
         helper.make_node("Flatten", ["pq"], ["fq_in"]),
         helper.make_node("QGemm", ["fq_in", "ps", "pz", "fq", "fs", "fz", "", "ys", "yz"], ["yq"], domain=MS,
                          transB=1),
         helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])],
        [float_input("x", [1, 3, 8, 8])], [float_input("y", None)],
        [("xs", f32(0.02)), ("xz", u8(128)), ("wq", wq), ("ws", f32(0.01)), ("wz", np.array(0, np.int8)),
         ("cs", f32(0.05)), ("cz", u8(128)), ("ps", f32(0.01)), ("pz", u8(128)), ("fq", fq),
         ("fs", f32(0.01)), ("fz", np.array(0, np.int8)), ("ys", f32(0.02)), ("yz", u8(128))])
    assert_same_function(model, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}, atol=0.05)
    assert kinds(model) == ["input", "conv", "global_avg_pool", "linear"]


@pytest.mark.parametrize("top, kind", [(6.0, "relu6"), (4.3, "relu")])
def test_quantisation_range_starting_at_zero_after_a_conv_is_the_activation_it_replaced(top, kind):
    """Static int8 drops a Relu (or Clip(0, 6)) after a Conv and quantises over [0, max]: the
    range's zero point at the type's minimum puts the activation back."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = onnx_model(
        [helper.make_node("Conv", ["x", "w"], ["c"]),
         helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        [float_input("x", [1, 3, 8, 8])], [float_input("y", None)],
        [("w", w), ("s", np.array(top / 255, np.float32)), ("z", np.array(0, np.uint8))])
    assert kinds(model) == ["input", "conv", kind]
    signed = onnx_model(model.graph.node, model.graph.input, model.graph.output,
                        [("w", w), ("s", np.array(top / 255, np.float32)), ("z", np.array(128, np.uint8))])
    assert kinds(signed) == ["input", "conv"]


def test_nhwc_transposes_around_pad_clip_and_bias_cancel():
    """tf2onnx's spelling of an NHWC block: Conv -> Transpose -> bias Add -> Clip -> Pad ->
    Transpose -> Conv. The transposes meet below the elementwise ops and cancel."""
    w1 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    nhwc = onnx_model(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["xt", "w1"], ["c"]),
         helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1]),
         helper.make_node("Add", ["ct", "b"], ["a"]),
         helper.make_node("Clip", ["a", "lo", "hi"], ["r"]),
         helper.make_node("Pad", ["r", "pads"], ["p"]),
         helper.make_node("Transpose", ["p"], ["pt"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["pt", "w2"], ["y"])],
        [float_input("x", [1, 8, 8, 3])], [float_input("y", None)],
        [("w1", w1), ("w2", w2), ("b", RNG.standard_normal(4).astype(np.float32)),
         ("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32)),
         ("pads", np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64))])
    prepared = assert_same_function(nhwc, {"x": RNG.standard_normal((1, 8, 8, 3)).astype(np.float32)})
    second = next(n for n in prepared.graph.node if n.output[0] == "pt")  # the conv's input
    assert second.op_type == "Transpose" and list(second.attribute[0].ints) == [0, 1, 2, 3]
    assert kinds(nhwc) == ["input", "conv", "relu6", "conv"]


def test_a_squeeze_excite_gate_reshaped_to_nhwc_meets_the_transposes_like_a_transposed_one():
    """TFLite files (through tf2onnx) reshape the [1, C, 1, 1] gate to [1, 1, 1, C] where a Keras
    file transposes it: the reshape of unit axes reads as the transpose, so the transposes
    around the Mul still cancel. A reshape that moves two axes of size > 1 stays a reshape."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)

    def model(gate_shape, nhwc_gate, image=(6, 6)):
        return onnx_model(
            [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1]),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["st"]),
             helper.make_node("Mul", ["ct", "st"], ["m"]),
             helper.make_node("Transpose", ["m"], ["y"], perm=[0, 3, 1, 2])],
            [float_input("x", [1, 3, *image]), float_input("g", gate_shape)], [float_input("y", None)],
            [("w", w), ("shape", np.array(nhwc_gate, np.int64))])

    gate = model([1, 4, 1, 1], [1, 1, 1, 4])
    feeds = {"x": RNG.standard_normal((1, 3, 6, 6)).astype(np.float32),
             "g": RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)}
    prepared = assert_same_function(gate, feeds)
    assert [n.op_type for n in prepared.graph.node if n.op_type == "Transpose"
            and list(n.attribute[0].ints) != [0, 1, 2, 3]] == []
    assert "transpose" not in kinds(gate)
    grid = model([1, 4, 2, 3], [1, 2, 3, 4], (4, 5))  # a real reshape: the transpose stays
    feeds["g"] = RNG.standard_normal((1, 4, 2, 3)).astype(np.float32)
    feeds["x"] = RNG.standard_normal((1, 3, 4, 5)).astype(np.float32)
    assert_same_function(grid, feeds)
    assert "transpose" in kinds(grid)


def test_transpose_read_by_an_elementwise_op_and_a_matmul_is_written_once():
    """Where a non-elementwise op reads the transpose too, nothing moves (no second copy)."""
    model = onnx_model(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
         helper.make_node("Mul", ["t", "c"], ["m"]),
         helper.make_node("MatMul", ["t", "x"], ["mm"]),
         helper.make_node("Add", ["m", "mm"], ["y"])],
        [float_input("x", [1, 4, 4])], [float_input("y", None)], [("c", np.float32(2.0))])
    prepared = assert_same_function(model, {"x": RNG.standard_normal((1, 4, 4)).astype(np.float32)})
    assert [n.op_type for n in prepared.graph.node].count("Transpose") == 1


def test_dequantize_linear_below_opset_19_folds_on_weights():
    """onnx.reference implements DequantizeLinear from opset 19 on: weights of an opset-17 QDQ
    file still fold (they stayed `unknown` nodes)."""
    wq = RNG.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    model = onnx_model(
        [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
         helper.make_node("Conv", ["x", "w"], ["y"])],
        [float_input("x", [1, 3, 8, 8])], [float_input("y", None)],
        [("wq", wq), ("s", np.array(0.01, np.float32))], opset=17)
    graph = canonicalize(model)
    assert [n.op for n in graph.nodes] == ["input", "conv"]
    np.testing.assert_allclose(graph.nodes[1].weights[0], wq.astype(np.float32) * 0.01, rtol=1e-6)


def test_ort_level_all_nchwc_file_warns_that_it_is_machine_specific():
    model = contrib_model(
        [helper.make_node("ReorderInput", ["x"], ["r"], domain="com.microsoft.nchwc"),
         helper.make_node("ReorderOutput", ["r"], ["y"], domain="com.microsoft.nchwc", channels=8)],
        [float_input("x", [1, 8, 4, 4])], [float_input("y", None)])
    model.opset_import.append(helper.make_opsetid("com.microsoft.nchwc", 1))
    with pytest.warns(UserWarning, match="NCHWc"):
        prepare(model)


def test_spelled_constants_take_the_half_precision_type_of_their_tensor():
    """Spelled constants take the float type of the tensor they meet (fp16 here)."""
    model = contrib_model([helper.make_node("QuickGelu", ["x"], ["y"], domain=MS, alpha=1.702)],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    assert_same_function(model, {"x": RNG.standard_normal((2, 8)).astype(np.float16)}, atol=2e-3)


# ----------------------------------------------------------------------------- transformer fusions
# (what onnxruntime.transformers' optimize_model and optimum write)

def int_input(name, shape, elem=TensorProto.INT32):
    return helper.make_tensor_value_info(name, elem, shape)


def padding_mask(batch, seq):
    """1 for kept tokens, 0 for the padding at the end of the second sequence."""
    mask = np.ones((batch, seq), np.int32)
    mask[-1, seq // 2:] = 0
    return mask


@pytest.mark.parametrize("unidirectional", [0, 1])
def test_attention_is_three_projections_scaled_scores_mask_and_softmax(unidirectional):
    batch, seq, hidden, heads = 2, 6, 16, 4
    weights = (RNG.standard_normal((hidden, 3 * hidden)) / 4).astype(np.float32)
    bias = RNG.standard_normal(3 * hidden).astype(np.float32)
    model = contrib_model(
        [helper.make_node("Attention", ["x", "w", "b", "mask"], ["y"], domain=MS, num_heads=heads,
                          unidirectional=unidirectional)],
        [float_input("x", [batch, seq, hidden]), int_input("mask", [batch, seq])], [float_input("y", None)],
        [("w", weights), ("b", bias)])
    feeds = {"x": RNG.standard_normal((batch, seq, hidden)).astype(np.float32), "mask": padding_mask(batch, seq)}
    prepared = assert_same_function(model, feeds)
    projections = [n for n in prepared.graph.node if n.op_type == "MatMul" and n.input[0] == "x"]
    assert len(projections) == 3  # one weight per projection, as an exporter writes them
    assert kinds(model).count("softmax") == 1


def test_attention_masks_from_embed_layer_norm_are_one_term_for_all_layers():
    """EmbedLayerNormalization's mask_index (the count of kept tokens) feeds every Attention; the
    spelling reads the raw mask it counted, once."""
    batch, seq, hidden, heads, vocab = 2, 6, 16, 2, 20
    inits = [("word", RNG.standard_normal((vocab, hidden)).astype(np.float32)),
             ("pos", RNG.standard_normal((32, hidden)).astype(np.float32)),
             ("seg", RNG.standard_normal((2, hidden)).astype(np.float32)),
             ("gamma", RNG.uniform(0.5, 2, hidden).astype(np.float32)),
             ("beta", RNG.standard_normal(hidden).astype(np.float32))]
    nodes = [helper.make_node("EmbedLayerNormalization", ["ids", "segments", "word", "pos", "seg", "gamma", "beta",
                                                          "mask"], ["h0", "lengths"], domain=MS, epsilon=1e-12)]
    for k in range(2):
        inits += [(f"w{k}", (RNG.standard_normal((hidden, 3 * hidden)) / 4).astype(np.float32)),
                  (f"b{k}", RNG.standard_normal(3 * hidden).astype(np.float32))]
        nodes.append(helper.make_node("Attention", [f"h{k}", f"w{k}", f"b{k}", "lengths"], [f"h{k + 1}"], domain=MS,
                                      num_heads=heads))
    model = contrib_model(nodes, [int_input("ids", [batch, seq]), int_input("segments", [batch, seq]),
                                  int_input("mask", [batch, seq])], [float_input("h2", None)], inits)
    feeds = {"ids": RNG.integers(0, vocab, (batch, seq)).astype(np.int32),
             "segments": RNG.integers(0, 2, (batch, seq)).astype(np.int32), "mask": padding_mask(batch, seq)}
    prepared = assert_same_function(model, feeds, atol=1e-4)
    assert sum(n.op_type == "Where" for n in prepared.graph.node) == 1
    assert kinds(model).count("layer_norm") == 1


def test_multi_head_attention_with_bias_and_key_padding_mask():
    batch, seq, hidden, heads = 2, 5, 16, 4
    names = ("q", "k", "v")
    model = contrib_model(
        [helper.make_node("MultiHeadAttention", [*names, "b", "mask"], ["y"], domain=MS, num_heads=heads)],
        [float_input(x, [batch, seq, hidden]) for x in names] + [int_input("mask", [batch, seq])],
        [float_input("y", None)], [("b", RNG.standard_normal(3 * hidden).astype(np.float32))])
    feeds = {x: RNG.standard_normal((batch, seq, hidden)).astype(np.float32) for x in names}
    feeds["mask"] = padding_mask(batch, seq)
    assert_same_function(model, feeds)


def test_rotary_embedding_rotates_each_heads_halves():
    batch, heads, seq, size = 2, 2, 5, 8
    angles = np.arange(16)[:, None] * (1e-2 ** (np.arange(size // 2) / (size // 2)))[None]
    model = contrib_model(
        [helper.make_node("RotaryEmbedding", ["x", "positions", "cos", "sin"], ["y"], domain=MS)],
        [float_input("x", [batch, heads, seq, size]), int_input("positions", [batch, seq], TensorProto.INT64)],
        [float_input("y", None)],
        [("cos", np.cos(angles).astype(np.float32)), ("sin", np.sin(angles).astype(np.float32))])
    feeds = {"x": RNG.standard_normal((batch, heads, seq, size)).astype(np.float32),
             "positions": np.tile(np.arange(seq), (batch, 1)) + np.array([[0], [3]])}
    assert_same_function(model, feeds)


@pytest.mark.parametrize("bits", [4, 8])
def test_matmul_nbits_is_a_matmul_on_the_weights_it_decodes_to(bits):
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    k, n = 64, 24
    w = RNG.standard_normal((k, n)).astype(np.float32)
    model = onnx_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", [3, k])],
                       [float_input("y", None)], [("w", w)])
    quantizer = MatMulNBitsQuantizer(model, algo_config=DefaultWeightOnlyQuantConfig(
        block_size=32, is_symmetric=False, bits=bits))
    quantizer.process()
    quantized = quantizer.model.model
    assert [node.op_type for node in quantized.graph.node] == ["MatMulNBits"]
    prepared = assert_same_function(quantized, {"x": RNG.standard_normal((3, k)).astype(np.float32)}, atol=1e-4)
    decoded = next(t for t in prepared.graph.node if t.op_type == "Constant")
    error = np.abs(numpy_helper.to_array(decoded.attribute[0].t) - w).max()
    assert error < (0.25 if bits == 4 else 0.02) * np.abs(w).max()  # the weights, to the step of the grid


def test_a_bert_file_fused_by_onnxruntime_transformers_keeps_its_code(tmp_path):
    """optimize_model (what optimum writes) fuses attention, embeddings, skip layer norms and gelu;
    spelled back, no node is unknown and the code is the exported file's, bit for bit."""
    import torch
    import transformers as tr
    from onnxruntime.transformers.optimizer import optimize_model

    import hnn_jax
    from hnn_jax import converters
    from hnn_jax.converters import export

    torch.manual_seed(0)
    bert = tr.BertModel(tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, attn_implementation="eager"), add_pooling_layer=False)

    class Padded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert.eval()

        def forward(self, ids):
            return self.bert(input_ids=ids, attention_mask=(ids != 0).long(), return_dict=False)[0]

    exported = export.torch_to_onnx(Padded().eval(), torch.randint(1, 100, (1, 8)))
    onnx_path = tmp_path / "bert.onnx"
    onnx.save(exported, onnx_path)
    fused = optimize_model(str(onnx_path), model_type="bert", num_heads=4, hidden_size=32, opt_level=0).model
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= {n.op_type for n in fused.graph.node}
    assert "unknown" not in kinds(fused)
    a, b = hnn_jax.hash(converters.from_onnx(exported)), hnn_jax.hash(converters.from_onnx(fused))
    assert a.distances(b).total == 0
