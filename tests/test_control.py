"""`If` nodes written into the graph (canonical.control): a constant condition takes its branch,
any other keeps both branches joined by Where. The prepared model computes what the file
computes (onnxruntime runs both), and the weights inside the branches reach the code."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hnn_jax
from hnn_jax import converters
from hnn_jax.converters.canonical import canonicalize, prepare
from hnn_jax.testing.models import float_input, onnx_model

D = 16


def mlp_branch(name, seed, width):
    """x -> MatMul -> Relu -> MatMul, weights held by the branch itself (as silero-vad's are)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((D, width)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((width, 4)) / 4).astype(np.float32)
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        name, [], [float_input("y", [1, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])


def rate_switched(then_seed=0, else_seed=1):
    """Two networks behind an If on the sample rate input, as a voice-activity model holds them."""
    return onnx_model(
        [helper.make_node("Equal", ["sr", "sixteen_k"], ["is16"]),
         helper.make_node("If", ["is16"], ["out"], then_branch=mlp_branch("then", then_seed, 32),
                          else_branch=mlp_branch("else", else_seed, 24))],
        [float_input("x", [1, D]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [float_input("out", [1, 4])], [("sixteen_k", np.array(16000, np.int64))])


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def kinds(model):
    return [n.op for n in canonicalize(model).nodes]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_both_branches_are_written_and_the_prepared_model_computes_what_the_file_does(rate):
    model = rate_switched()
    prepared = prepare(model)
    assert "If" not in [n.op_type for n in prepared.graph.node]
    feeds = {"x": np.random.default_rng(2).standard_normal((1, D)).astype(np.float32), "sr": np.array(rate)}
    np.testing.assert_allclose(run(prepared, feeds), run(model, feeds), rtol=1e-6)
    ops = kinds(model)
    assert ops.count("linear") + ops.count("matmul") == 4 and "where" in ops and "unknown" not in ops


def test_the_weights_inside_the_branches_reach_the_weight_part():
    """Two releases that differ only in the trained weights inside the If: different codes."""
    a, b = (hnn_jax.hash(converters.from_onnx(rate_switched(then_seed=s))) for s in (0, 7))
    again = hnn_jax.hash(converters.from_onnx(rate_switched(then_seed=0)))
    assert a.distances(again).total == 0
    assert a.distances(b).architecture == 0 and a.distances(b).weights > 20


def test_a_constant_condition_takes_its_branch_and_drops_the_other():
    branch = mlp_branch("then", 0, 32)
    switched = onnx_model(
        [helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=mlp_branch("else", 1, 24))],
        [float_input("x", [1, D])], [float_input("out", [1, 4])], [("flag", np.array([True]))])
    plain = onnx_model(list(branch.node), [float_input("x", [1, D])], [float_input("y", [1, 4])],
                       [(t.name, numpy_helper.to_array(t)) for t in branch.initializer])
    assert kinds(switched) == kinds(plain) == ["input", "linear", "relu", "linear"]
    a, b = hnn_jax.hash(converters.from_onnx(switched)), hnn_jax.hash(converters.from_onnx(plain))
    assert a.distances(b).total == 0


def test_branches_whose_outputs_differ_in_type_stay_an_if():
    other = mlp_branch("else", 1, 24)
    other.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    model = onnx_model(
        [helper.make_node("Equal", ["sr", "k"], ["c"]),
         helper.make_node("If", ["c"], ["out"], then_branch=mlp_branch("then", 0, 32), else_branch=other)],
        [float_input("x", [1, D]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [float_input("out", None)], [("k", np.array(16000, np.int64))])
    assert "If" in [n.op_type for n in prepare(model).graph.node]
