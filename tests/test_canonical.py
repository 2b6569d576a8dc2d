"""The merge operation on hand-built ONNX graphs: every fusion and removal, checked numerically."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from hnn_jax import CorruptFileError, converters
from hnn_jax.converters import canonicalize
from hnn_jax.testing.models import float_input, onnx_mlp, onnx_model

RNG = np.random.default_rng(0)


def ops(model):
    return [n.op for n in canonicalize(model).nodes]


def node(graph, op):
    return next(n for n in graph.nodes if n.op == op)


def test_conv_batchnorm_folds_into_conv_weights():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    gamma, beta = RNG.uniform(0.5, 2, 4).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    mean, var = RNG.standard_normal(4).astype(np.float32), RNG.uniform(0.5, 2, 4).astype(np.float32)
    model = onnx_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["y"], epsilon=1e-5)],
        [float_input("x", [1, 3, 8, 8])], [float_input("y", None)],
        [("w", w), ("b", b), ("g", gamma), ("be", beta), ("m", mean), ("v", var)])
    graph = canonicalize(model)
    assert [n.op for n in graph.nodes] == ["input", "conv"]
    scale = gamma / np.sqrt(var + 1e-5)
    conv = node(graph, "conv")
    np.testing.assert_allclose(conv.weights[0], w * scale[:, None, None, None], rtol=1e-5)
    np.testing.assert_allclose(conv.weights[1], (b - mean) * scale + beta, rtol=1e-5, atol=1e-6)


def test_matmul_add_becomes_linear_with_out_in_weight():
    w = RNG.standard_normal((6, 5)).astype(np.float32)
    model = onnx_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        [float_input("x", [2, 6])], [float_input("y", None)], [("w", w), ("b", np.ones(5, np.float32))])
    graph = canonicalize(model)
    assert [n.op for n in graph.nodes] == ["input", "linear"]
    lin = node(graph, "linear")
    np.testing.assert_array_equal(lin.weights[0], w.T)
    np.testing.assert_array_equal(lin.weights[1], np.ones(5, np.float32))


def test_shape_arithmetic_and_noops_are_removed():
    # x -> Identity -> Shape -> Gather(0) -> Concat([n, -1]) -> Reshape(x) -> Dropout -> Relu
    model = onnx_model(
        [helper.make_node("Identity", ["x"], ["xi"]),
         helper.make_node("Shape", ["xi"], ["s"]),
         helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
         helper.make_node("Reshape", ["xi", "shape"], ["r"]),
         helper.make_node("Dropout", ["r"], ["d"]),
         helper.make_node("Relu", ["d"], ["y"])],
        [float_input("x", ["batch", 4, 5])], [float_input("y", None)],
        [("zero", np.array(0, np.int64)), ("zero1", np.array([0], np.int64)),
         ("minus1", np.array([-1], np.int64))])
    assert ops(model) == ["input", "reshape", "relu"]


def test_dynamic_shape_chain_is_dropped_even_when_not_foldable():
    # NonZero makes a data-dependent size; the Shape chain feeding Expand's shape input goes away.
    model = onnx_model(
        [helper.make_node("NonZero", ["x"], ["nz"]),
         helper.make_node("Shape", ["nz"], ["s"]),
         helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
         helper.make_node("Expand", ["nzf", "s"], ["y"])],
        [float_input("x", [4])], [float_input("y", None)])
    assert ops(model) == ["input", "nonzero", "cast", "expand"]


def _activation_model(nodes, extra=()):
    return onnx_model(nodes, [float_input("x", [1, 16])], [float_input("y", None)], list(extra))


def test_decomposed_erf_gelu_fuses():
    model = _activation_model(
        [helper.make_node("Div", ["x", "sqrt2"], ["a"]), helper.make_node("Erf", ["a"], ["b"]),
         helper.make_node("Add", ["b", "one"], ["c"]), helper.make_node("Mul", ["x", "c"], ["d"]),
         helper.make_node("Mul", ["d", "half"], ["y"])],
        [("sqrt2", np.array(np.sqrt(2), np.float32)), ("one", np.array(1, np.float32)),
         ("half", np.array(0.5, np.float32))])
    assert ops(model) == ["input", "gelu"]


def test_decomposed_tanh_gelu_fuses_and_differs_from_erf_gelu():
    c = np.float32(np.sqrt(2 / np.pi))
    model = _activation_model(
        [helper.make_node("Pow", ["x", "three"], ["x3"]), helper.make_node("Mul", ["x3", "k"], ["a"]),
         helper.make_node("Add", ["x", "a"], ["b"]), helper.make_node("Mul", ["b", "c"], ["d"]),
         helper.make_node("Tanh", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["f"]),
         helper.make_node("Mul", ["f", "x"], ["g"]), helper.make_node("Mul", ["g", "half"], ["y"])],
        [("three", np.array(3, np.float32)), ("k", np.array(0.044715, np.float32)),
         ("c", np.array(c)), ("one", np.array(1, np.float32)), ("half", np.array(0.5, np.float32))])
    assert ops(model) == ["input", "gelu_tanh"]


def test_sigmoid_times_input_is_silu_and_unknown_chain_is_one_elementwise_node():
    assert ops(_activation_model([helper.make_node("Sigmoid", ["x"], ["s"]),
                                  helper.make_node("Mul", ["s", "x"], ["y"])])) == ["input", "silu"]
    odd = _activation_model([helper.make_node("Mul", ["x", "k"], ["a"]), helper.make_node("Exp", ["a"], ["y"])],
                            [("k", np.array(0.3, np.float32))])
    assert ops(odd) == ["input", "elementwise"]


def test_decomposed_layernorm_fuses_and_recovers_gamma_beta():
    gamma = RNG.uniform(0.5, 2, 16).astype(np.float32)
    beta = RNG.standard_normal(16).astype(np.float32)
    model = onnx_model(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]), helper.make_node("Sub", ["x", "m"], ["c"]),
         helper.make_node("Mul", ["c", "c"], ["c2"]), helper.make_node("ReduceMean", ["c2"], ["v"], axes=[-1]),
         helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
         helper.make_node("Div", ["c", "s"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
         helper.make_node("Add", ["ng", "b"], ["y"])],
        [float_input("x", [1, 4, 16])], [float_input("y", None)],
        [("eps", np.array(1e-5, np.float32)), ("g", gamma), ("b", beta)])
    graph = canonicalize(model)
    assert [n.op for n in graph.nodes] == ["input", "layer_norm"]
    ln = node(graph, "layer_norm")
    np.testing.assert_allclose(ln.weights[0], gamma, rtol=1e-3)
    np.testing.assert_allclose(ln.weights[1], beta, atol=1e-3)


def test_spatial_reducemean_is_global_average_pool_like_GlobalAveragePool():
    reduce = onnx_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
                        [float_input("x", [1, 4, 5, 5])], [float_input("y", None)], opset=13)
    gap = onnx_model([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                      helper.make_node("Flatten", ["p"], ["y"])],
                     [float_input("x", [1, 4, 5, 5])], [float_input("y", None)])
    assert ops(reduce) == ops(gap) == ["input", "global_avg_pool"]
    a, b = converters.from_onnx(reduce), converters.from_onnx(gap)
    np.testing.assert_allclose(a.nodes, b.nodes, atol=1e-5)  # two kernels, same figures


def test_transpose_sandwich_around_nhwc_conv_is_removed():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = onnx_model(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["t", "w"], ["c"]),
         helper.make_node("Transpose", ["c"], ["t2"], perm=[0, 2, 3, 1]),
         helper.make_node("Transpose", ["t2"], ["t3"], perm=[0, 3, 1, 2]),
         helper.make_node("Relu", ["t3"], ["r"]),
         helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1])],
        [float_input("x", [1, 8, 8, 3])], [float_input("y", None)], [("w", w)])
    graph = canonicalize(model)
    assert [n.op for n in graph.nodes] == ["input", "conv", "relu"]
    assert graph.nodes[0].shape == (1, 3, 8, 8)


def test_unknown_ops_are_kept_in_the_unknown_bucket_and_probe_falls_back():
    model = onnx_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("FancyOp", ["r"], ["y"], domain="com.example")],
                       [float_input("x", [1, 4])], [float_input("y", [1, 4])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert ops(model) == ["input", "relu", "unknown"]
    with pytest.warns(UserWarning, match="static features"):
        g = converters.from_onnx(model)
    from hnn_jax import schema
    assert g.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_FAILED
    assert not g.nodes[:, schema.NODE_ACT_STATS].any()
    assert g.nodes[2, schema.NODE_OP] == schema.OP_INDEX["unknown"]


def test_cycle_and_dangling_inputs_are_clear_errors():
    cyc = onnx_model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                     [float_input("x", [2])], [float_input("b", None)])
    with pytest.raises(CorruptFileError, match="cycle"):
        canonicalize(cyc)
    dangling = onnx_model([helper.make_node("Add", ["x", "ghost"], ["y"])],
                          [float_input("x", [2])], [float_input("y", None)])
    with pytest.raises(CorruptFileError, match="ghost"):
        canonicalize(dangling)


def test_slices_covering_a_tensor_become_one_split():
    def sl(out, a, b):
        return helper.make_node("Slice", ["x", f"s{a}", f"e{b}", "ax"], [out])
    consts = [("ax", np.array([1], np.int64))] + [
        (f"s{v}", np.array([v], np.int64)) for v in (0, 4, 8)] + [
        (f"e{v}", np.array([v], np.int64)) for v in (4, 8, 12)]
    model = onnx_model([sl("a", 0, 4), sl("b", 4, 8), sl("c", 8, 12),
                        helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "c"], ["y"])],
                       [float_input("x", [1, 12])], [float_input("y", None)], consts)
    graph = canonicalize(model)
    assert [n.op for n in graph.nodes] == ["input", "split", "mul", "add"]
    assert node(graph, "split").n_outputs == 3


def test_nested_concats_along_one_axis_flatten_like_pytorch_densenet():
    """Keras's DenseNet: concat(concat(x, a), b), the inner one also read by the next layer;
    PyTorch's: concat(x, a) and concat(x, a, b). Both give one graph."""
    def model(nested):
        relu = lambda i, o: helper.make_node("Relu", [i], [o])  # noqa: E731
        cat = lambda ins, o: helper.make_node("Concat", ins, [o], axis=1)  # noqa: E731
        nodes = [relu("x", "a"), cat(["x", "a"], "xa"), relu("xa", "b"),
                 cat(["xa", "b"] if nested else ["x", "a", "b"], "xab"), relu("xab", "c"),
                 cat(["xab", "c"] if nested else ["x", "a", "b", "c"], "y")]
        return onnx_model(nodes, [float_input("x", [1, 2, 4, 4])], [float_input("y", None)])
    keras_like, torch_like = canonicalize(model(True)), canonicalize(model(False))
    assert [n.op for n in keras_like.nodes] == [n.op for n in torch_like.nodes]
    assert [n.op for n in keras_like.nodes].count("concat") == 3
    edges = lambda g: sorted((e.sender, e.receiver, e.slot) for e in g.edges)  # noqa: E731
    assert edges(keras_like) == edges(torch_like)
    fan_in = lambda g: sorted(sum(e.receiver == i for e in g.edges) for i, n in enumerate(g.nodes)  # noqa: E731
                              if n.op == "concat")
    assert fan_in(keras_like) == [2, 3, 4]
    # another axis is another operation: nothing flattens
    mixed = onnx_model([helper.make_node("Concat", ["x", "x"], ["xx"], axis=1),
                        helper.make_node("Concat", ["xx", "xx"], ["y"], axis=2)],
                       [float_input("x", [1, 2, 4, 4])], [float_input("y", None)])
    g = canonicalize(mixed)
    assert [n.op for n in g.nodes].count("concat") == 2 and len(g.edges) == 4

def test_zero_padding_folds_into_the_following_pool():
    model = onnx_model(
        [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
         helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2])],
        [float_input("x", [1, 4, 8, 8])], [float_input("y", None)],
        [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    reference = onnx_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1])],
                           [float_input("x", [1, 4, 8, 8])], [float_input("y", None)])
    a, b = canonicalize(model), canonicalize(reference)
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes] == ["input", "max_pool"]
    assert a.nodes[1].attrs["pads"] == [1, 1, 1, 1] and a.nodes[1].shape == b.nodes[1].shape


@pytest.mark.parametrize("stride", [1, 2])
def test_auto_pad_same_is_the_explicit_pads_it_stands_for(stride):
    w = ("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))
    x = [float_input("x", [1, 3, 9, 9])]
    auto = onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[stride] * 2,
                                        auto_pad="SAME_UPPER")], x, [float_input("y", None)], [w])
    # stride 1: one each side; stride 2 on 9 pixels: 2 in all, 1 each side (SAME_UPPER puts any odd one after)
    explicit = onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[stride] * 2,
                                            pads=[1, 1, 1, 1])], x, [float_input("y", None)], [w])
    a, b = converters.from_onnx(auto), converters.from_onnx(explicit)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    assert canonicalize(auto).nodes[1].attrs["pads"] == [1, 1, 1, 1]


def _squeeze_excite(gate_nodes, extra_readers=()):
    """x -> pool -> 1x1 conv (bias b) -> gate -> x * gate: the squeeze-excite of MobileNetV3."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Conv", ["p", "w", "b"], ["s"]), *gate_nodes,
             helper.make_node("Mul", ["x", "gate"], ["y"]), *extra_readers]
    outputs = [float_input("y", None)] + [float_input(n.output[0], None) for n in extra_readers]
    return nodes, outputs


def test_hard_sigmoid_whose_plus_3_went_into_the_conv_bias_is_the_hard_sigmoid_pytorch_exports():
    """Keras: hard_sigmoid(s) = relu6(s + 3) / 6, and tf2onnx folds the + 3 into the conv's bias;
    PyTorch: conv, then HardSigmoid. Both give one graph, the conv with PyTorch's bias."""
    w = RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    x = [float_input("x", [1, 4, 6, 6])]
    relu6_over_6 = [helper.make_node("Clip", ["s", "lo", "hi"], ["r"]),
                    helper.make_node("Mul", ["r", "sixth"], ["gate"])]
    consts = [("lo", np.float32(0)), ("hi", np.float32(6)), ("sixth", np.float32(1 / 6))]
    nodes, outputs = _squeeze_excite(relu6_over_6)
    keras_like = onnx_model(nodes, x, outputs, [("w", w), ("b", b + 3)] + consts)
    nodes, outputs = _squeeze_excite([helper.make_node("HardSigmoid", ["s"], ["gate"], alpha=1 / 6)])
    torch_like = onnx_model(nodes, x, outputs, [("w", w), ("b", b)])
    a, b_ = canonicalize(keras_like), canonicalize(torch_like)
    assert [n.op for n in a.nodes] == [n.op for n in b_.nodes] == ["input", "global_avg_pool", "conv",
                                                                   "hard_sigmoid", "mul"]
    np.testing.assert_allclose(node(a, "conv").weights[1], b, atol=1e-6)
    np.testing.assert_allclose(converters.from_onnx(keras_like).nodes, converters.from_onnx(torch_like).nodes,
                               atol=1e-5)
    # the conv's output read elsewhere too: its bias cannot move, relu6(s) / 6 stays what it is
    nodes, outputs = _squeeze_excite(relu6_over_6, [helper.make_node("Relu", ["s"], ["other"])])
    shared = canonicalize(onnx_model(nodes, x, outputs, [("w", w), ("b", b + 3)] + consts))
    assert "hard_sigmoid" not in [n.op for n in shared.nodes]
    np.testing.assert_allclose(node(shared, "conv").weights[1], b + 3, atol=1e-6)


def test_head_of_1x1_convs_on_the_pooled_map_is_the_flatten_then_linear_head():
    """Keras MobileNetV3 and timm's conv_head keep the pool's 1x1 map, run 1x1 convs and flatten
    last; torchvision flattens first and runs linear layers. Both give one graph."""
    w1, b1 = RNG.standard_normal((8, 4, 1, 1)).astype(np.float32), RNG.standard_normal(8).astype(np.float32)
    w2 = RNG.standard_normal((5, 8, 1, 1)).astype(np.float32)
    x = [float_input("x", [1, 4, 6, 6])]
    conv_head = onnx_model([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                            helper.make_node("Conv", ["p", "w1", "b1"], ["c1"]),
                            helper.make_node("HardSwish", ["c1"], ["h"]),
                            helper.make_node("Conv", ["h", "w2"], ["c2"]),
                            helper.make_node("Flatten", ["c2"], ["y"])],
                           x, [float_input("y", None)], [("w1", w1), ("b1", b1), ("w2", w2)])
    linear_head = onnx_model([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                              helper.make_node("Flatten", ["p"], ["f"]),
                              helper.make_node("Gemm", ["f", "l1", "b1"], ["c1"], transB=1),
                              helper.make_node("HardSwish", ["c1"], ["h"]),
                              helper.make_node("Gemm", ["h", "l2"], ["y"], transB=1)],
                             x, [float_input("y", None)],
                             [("l1", w1[:, :, 0, 0]), ("b1", b1), ("l2", w2[:, :, 0, 0])])
    a, b = canonicalize(conv_head), canonicalize(linear_head)
    assert [(n.op, n.shape) for n in a.nodes] == [(n.op, n.shape) for n in b.nodes] == [
        ("input", (1, 4, 6, 6)), ("global_avg_pool", (1, 4)), ("linear", (1, 8)),
        ("hard_swish", (1, 8)), ("linear", (1, 5))]
    for m, n in zip(a.nodes, b.nodes):
        assert len(m.weights) == len(n.weights)
        for u, v in zip(m.weights, n.weights):
            np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(converters.from_onnx(conv_head).nodes, converters.from_onnx(linear_head).nodes,
                               atol=1e-5)
    # a squeeze-excite's 1x1 conv feeds a product with the feature map, not a flatten: a conv it stays
    nodes, outputs = _squeeze_excite([helper.make_node("Sigmoid", ["s"], ["gate"])])
    se = canonicalize(onnx_model(nodes, x, outputs, [("w", RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)),
                                                     ("b", RNG.standard_normal(4).astype(np.float32))]))
    assert [(n.op, n.shape) for n in se.nodes][1:3] == [("global_avg_pool", (1, 4, 1, 1)), ("conv", (1, 4, 1, 1))]


def test_infinite_masks_and_nan_activations_give_finite_features():
    mask = np.zeros((1, 8), np.float32)
    mask[0, ::2] = -np.inf  # an attention-style mask constant
    model = onnx_model([helper.make_node("Add", ["x", "mask"], ["a"]),
                        helper.make_node("Sub", ["a", "a"], ["y"])],  # -inf - -inf = NaN on the probe
                       [float_input("x", [1, 8])], [float_input("y", None)], [("mask", mask)])
    g = converters.from_onnx(model)
    assert np.isfinite(g.nodes).all() and np.isfinite(g.edges).all()


def test_tensors_read_only_inside_a_subgraph_are_kept():
    """A Loop body (bodies stay inside their node; If branches are written out, test_control.py)
    reading the enclosing graph's tensor keeps that tensor's producer."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Neg", ["r"], ["t"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), float_input("t", [1, 4])])
    model = onnx_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Loop", ["trips", ""], ["y"], body=body)],
                       [float_input("x", [1, 4])], [float_input("y", None)],
                       [("trips", np.array(2, np.int64))])
    assert "relu" in ops(model)


def test_order_does_not_depend_on_whether_a_folded_bias_is_zero():
    """A fresh BatchNorm (mean 0, beta 0) folds into a zero bias, which counts as no bias; after
    fine-tuning the bias is there. Node order, and so every position-keyed feature, must not move."""
    branches = 8

    def model(bn_mean):
        nodes, inits = [], []
        for k in range(branches):
            c = 2 + k  # other output widths: structurally different branches, all ready at once
            nodes += [helper.make_node("Conv", ["x", f"w{k}"], [f"c{k}"]),
                      helper.make_node("BatchNormalization", [f"c{k}", f"g{k}", f"be{k}", f"m{k}", f"v{k}"], [f"y{k}"])]
            inits += [(f"w{k}", RNG.standard_normal((c, 3, 1, 1)).astype(np.float32)),
                      (f"g{k}", np.ones(c, np.float32)), (f"be{k}", np.zeros(c, np.float32)),
                      (f"m{k}", np.full(c, bn_mean, np.float32)), (f"v{k}", np.ones(c, np.float32))]
        nodes.append(helper.make_node("Concat", [f"y{k}" for k in range(branches)], ["y"], axis=1))
        return onnx_model(nodes, [float_input("x", [1, 3, 4, 4])], [float_input("y", None)], inits)

    fresh, tuned = canonicalize(model(0.0)), canonicalize(model(0.1))
    assert all(len(n.weights) == 1 for n in fresh.nodes if n.op == "conv")   # zero bias: none
    assert all(len(n.weights) == 2 for n in tuned.nodes if n.op == "conv")
    shapes = lambda g: [n.weights[0].shape if n.weights else None for n in g.nodes]  # noqa: E731
    assert shapes(fresh) == shapes(tuned)


def _with_pass(monkeypatch, rewrite):
    """canonicalize with `rewrite` run after the shipped passes."""
    from hnn_jax.converters import canonical

    monkeypatch.setattr(canonical, "PASSES", canonical.PASSES + (rewrite,))


@pytest.mark.parametrize("breakage", ["unknown_tensor", "written_twice", "bad_kind", "dangling", "edits_model"])
def test_invariant_check_after_each_pass_catches_a_broken_rewrite(monkeypatch, breakage):
    """HNN_CHECK_PASSES=1 (set for every test in conftest) checks the Work graph after each pass
    and that the prepared model, which the probe runs, is left as it was."""
    from hnn_jax.converters.canonical import InvariantError

    def broken(w):
        n = w.nodes[0]
        if breakage == "unknown_tensor":
            n.outputs = ["made_up"]
        elif breakage == "written_twice":
            w.nodes.append(type(n)("Relu", list(n.inputs), list(n.outputs)))
        elif breakage == "bad_kind":
            n.kind = "not_an_op"
        elif breakage == "dangling":
            n.inputs = ["nowhere"]
        else:
            w.model.graph.node.append(helper.make_node("Relu", ["x"], ["extra"]))

    model = onnx_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Softmax", ["y"], ["s"]),
                        helper.make_node("Relu", ["s"], ["z"])],
                       [float_input("x", [1, 4])], [float_input("z", [1, 4])])
    assert ops(model) == ["input", "relu", "softmax", "relu"]
    _with_pass(monkeypatch, broken)
    with pytest.raises(InvariantError, match="broken|prepared model"):
        canonicalize(model)


def test_a_new_rewrite_is_one_function_and_one_line_in_PASSES(monkeypatch):
    """What the package docstring promises a newcomer: a rewrite added to PASSES runs, checked."""
    def tanh_is_softsign(w):
        for n in w.nodes:
            if n.op == "Tanh":
                n.kind = "softsign"

    model = onnx_model([helper.make_node("Tanh", ["x"], ["y"])], [float_input("x", [1, 4])], [float_input("y", [1, 4])])
    _with_pass(monkeypatch, tanh_is_softsign)
    assert ops(model) == ["input", "softsign"]


def half_rms_norm(cast_to):
    """x (fp16) -> Cast(to=cast_to) -> x / sqrt(mean(x^2) + eps) -> Cast(fp16) -> * gamma, every
    tensor declared fp16, as onnxconverter-common writes Llama's RMSNorm (cast_to=FLOAT: the
    model's own upcast, left unconverted, which onnxruntime refuses)."""
    half = TensorProto.FLOAT16
    d = 16
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=cast_to),
             helper.make_node("Pow", ["xf", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["xf", "rms"], ["n"]),
             helper.make_node("Cast", ["n"], ["nh"], to=half),
             helper.make_node("Mul", ["nh", "gamma"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", half, [4, d])],
        [helper.make_tensor_value_info("y", half, None)],
        [helper.make_tensor("two", half, [], [2.0]), helper.make_tensor("eps", half, [], [1e-5]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [-1]),
         helper.make_tensor("gamma", half, [d], RNG.uniform(0.5, 2, d).astype(np.float16).tolist())],
        value_info=[helper.make_tensor_value_info(t, half, None) for t in ("xf", "sq", "ms", "mse", "rms", "n")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_a_half_precision_norm_is_the_norm_and_its_unconverted_upcast_is_repaired():
    import onnxruntime as ort

    from hnn_jax.converters.canonical import prepare

    broken = half_rms_norm(TensorProto.FLOAT)
    with pytest.raises(Exception, match="Type Error"):
        ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(prepare(broken).SerializeToString(), providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((4, 16)).astype(np.float16)
    y = session.run(None, {"x": x})[0].astype(np.float32)
    xf = x.astype(np.float32)
    normed = xf / np.sqrt((xf ** 2).mean(-1, keepdims=True))
    gamma = (y / normed)[0]
    assert np.allclose(y, normed * gamma, rtol=0.05, atol=0.02)  # a norm times gamma, to half precision
    assert ops(broken) == ops(half_rms_norm(TensorProto.FLOAT16)) == ["input", "rms_norm"]
    assert converters.from_onnx(broken).globals[0, 1] == 1.0  # the probe ran


def test_a_gather_of_every_element_in_order_is_no_op():
    """The dynamo exporter writes as_strided of a channels-last input as Reshape -> Gather of
    0..n-1 -> Reshape before the head; a permutation stays a gather."""
    w = RNG.standard_normal((16, 4)).astype(np.float32)

    def head(indices):
        return onnx_model(
            [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Reshape", ["m", "flat"], ["f"]),
             helper.make_node("Gather", ["f", "idx"], ["g"], axis=0),
             helper.make_node("Reshape", ["g", "row"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])],
            [float_input("x", [1, 16, 4, 4])], [float_input("y", None)],
            [("flat", np.array([-1], np.int64)),
             ("idx", np.asarray(indices, np.int64).reshape(1, 16, 1, 1)), ("row", np.array([1, 16], np.int64)),
             ("w", w)])

    assert ops(head(np.arange(16))) == ["input", "global_avg_pool", "linear"]
    assert "gather" in ops(head(np.arange(16)[::-1]))


def test_index_gathers_that_only_reshape_or_select_constants_leave_the_graph():
    """BERT's exports: the dynamo exporter broadcasts the mask with a GatherND of every element
    in order; the token-type ids are a GatherElements slice of a zero buffer, a constant once the
    shapes are known (onnxsim, onnxslim and onnxruntime fold it in their files)."""
    every = np.stack(np.unravel_index(np.arange(8), (1, 8)), -1).reshape(1, 1, 1, 8, 2)
    broadcast = onnx_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GatherND", ["r", "idx"], ["g"]),
         helper.make_node("Add", ["g", "s"], ["y"])],
        [float_input("x", [1, 8]), float_input("s", [1, 4, 8, 8])], [float_input("y", None)],
        [("idx", every.astype(np.int64))])
    assert ops(broadcast) == ["input", "input", "relu", "add"]
    table = RNG.standard_normal((2, 8)).astype(np.float32)
    lookup = onnx_model(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
         helper.make_node("Unsqueeze", ["length", "zero_axis"], ["end"]),
         helper.make_node("Slice", ["positions", "start", "end", "one_axis"], ["cols"]),
         helper.make_node("GatherElements", ["buffer", "cols"], ["types"], axis=1),
         helper.make_node("Gather", ["table", "types"], ["embedded"]),
         helper.make_node("Add", ["x", "embedded"], ["y"])],
        [float_input("x", [1, 8, 8])], [float_input("y", None)],
        [("buffer", np.zeros((1, 64), np.int64)), ("positions", np.arange(64, dtype=np.int64)[None]),
         ("one", np.array(1, np.int64)), ("zero_axis", np.array([0], np.int64)), ("start", np.array([0], np.int64)),
         ("one_axis", np.array([1], np.int64)), ("table", table)])
    assert ops(lookup) == ["input", "add"]



def test_the_invariant_check_is_an_argument_too(monkeypatch):
    """check=False skips the checks the environment asks for; check=True runs them without it."""
    from hnn_jax.converters import canonical
    from hnn_jax.converters.canonical import InvariantError

    def broken(w):
        w.nodes[0].outputs = ["made_up"]

    model = onnx_mlp(0, 2, 8)
    _with_pass(monkeypatch, broken)
    with pytest.raises(InvariantError, match="made_up"):
        canonical.canonicalize(model)                    # HNN_CHECK_PASSES=1 (conftest)
    monkeypatch.delenv("HNN_CHECK_PASSES")
    canonical.canonicalize(model, check=False)           # no check: the broken pass goes unseen
    with pytest.raises(InvariantError, match="made_up"):
        canonical.canonicalize(model, check=True)
