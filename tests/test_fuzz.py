"""Fuzzing: mutated ONNX models get a HashCode or an HNNError, never another exception, a hang
or a huge allocation. Mutators and the harness are in hnn_jax/testing/fuzzing.py.

The CI run is bounded and deterministic; HNN_FUZZ_EXAMPLES=2000 runs more cases per family
(or use benchmarks/fuzz.py for a table of outcomes).
"""

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from onnx import TensorProto, helper, numpy_helper

from hnn_jax.testing import fuzzing
import hnn_jax
from hnn_jax.testing import models
from hnn_jax import CorruptFileError, HNNError, converters, schema
from hnn_jax.hasher import validate_graph

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("HNN_FUZZ_EXAMPLES", "1000"))  # per family; the file takes ~20 s here
fuzz_settings = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("seed", fuzzing.SEEDS)
def test_seed_models_hash(seed):
    assert fuzzing.run_case(("bytes", seed, [], fuzzing.IN_MEMORY)) == "HashCode"


@fuzz_settings
@given(case=fuzzing.cases("bytes"))
def test_byte_mutations_give_a_code_or_an_hnn_error(case):
    event(fuzzing.run_case(case))


@fuzz_settings
@given(case=fuzzing.cases("structure"))
def test_structure_mutations_give_a_code_or_an_hnn_error(case):
    event(fuzzing.run_case(case))


@fuzz_settings
@given(case=fuzzing.cases("graphs"))
def test_small_random_graphs_give_a_code_or_an_hnn_error(case):
    event(fuzzing.run_case(case))


# ----------------------------------------------------------------------------- regressions
# One explicit small input per bug the fuzzer found.

def outcome(model, **kwargs):
    """What run_case checks, for one hand-made model: HashCode or the HNNError's name."""
    import warnings

    with warnings.catch_warnings(), fuzzing.limits():
        warnings.simplefilter("ignore")
        try:
            graph = converters.from_onnx(model, **kwargs)
        except HNNError as e:
            return type(e).__name__, str(e)
        validate_graph(graph)
        return "HashCode", hnn_jax.hash(graph)


def one_node(op, inputs=("x",), attrs=None, shape=(1, 8), inits=(), domain="", opset=17):
    """x -> op -> y; attrs values may be AttributeProtos (an empty list needs its type)."""
    node = helper.make_node(op, list(inputs), ["y"], domain=domain)
    node.attribute.extend(v if isinstance(v, onnx.AttributeProto) else helper.make_attribute(k, v)
                          for k, v in (attrs or {}).items())
    model = models.onnx_model([node], [models.float_input("x", list(shape))], [models.float_input("y", None)],
                              inits, opset=opset)
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def test_local_functions_are_inlined():
    """onnx.inliner is a submodule that `import onnx` does not load."""
    swish = helper.make_function("custom", "Swish", ["a"], ["b"],
                                 [helper.make_node("Sigmoid", ["a"], ["s"]),
                                  helper.make_node("Mul", ["a", "s"], ["b"])],
                                 [helper.make_opsetid("", 17)])
    model = one_node("Swish", domain="custom")
    model.functions.append(swish)
    g = converters.from_onnx(model)
    assert [schema.OPS[int(i)] for i in g.nodes[:, schema.NODE_OP]] == ["input", "silu"]


@pytest.mark.parametrize("build, error, message", [
    # initializer data that does not fill its dims (was a ValueError from numpy's reshape)
    (lambda: _truncated(one_node("Add", ["x", "b"], inits=[("b", np.ones(8, np.float32))])),
     CorruptFileError, "holds 16 bytes, but its dims"),
    # attributes of the wrong type: a Constant whose `value` is not a tensor (TypeError in
    # onnx.numpy_helper), an axis that is a string
    (lambda: models.onnx_model([helper.make_node("Constant", [], ["c"], value=helper.make_attribute("v", 1.0).f),
                                helper.make_node("Add", ["x", "c"], ["y"])],
                               [models.float_input("x", [1, 8])], [models.float_input("y", None)]),
     CorruptFileError, "'value' is not TENSOR"),
    # nodes with too few or too many inputs, or none at all (were IndexErrors in the passes)
    (lambda: one_node("Relu", []), CorruptFileError, "takes 1 to 1 inputs"),
    (lambda: one_node("Relu", ["x", "x"]), CorruptFileError, "takes 1 to 1 inputs"),
    (lambda: one_node("Mul", ["x", ""]), CorruptFileError, "takes 2 to 2 inputs"),  # KeyError ''
    (lambda: _no_outputs(one_node("Relu")), CorruptFileError, "has no outputs"),
    (lambda: one_node("Softmax", attrs={"axis": "last"}), CorruptFileError, "'axis' is not INT"),
    # a constant of a type the op does not take (int() of complex Slice starts: TypeError)
    (lambda: one_node("Slice", ["x", "s", "e"], inits=[("s", np.array([0j], np.complex64)), ("e", np.array([4]))]),
     CorruptFileError, "input 1 is a constant of type tensor.complex64."),
    # a tensor written twice: remove_noops' alias map got a loop (a hang)
    (lambda: fuzzing.graph_model("d", [("Sigmoid", ("x",), "b"), ("Dropout", ("b",), "d"), ("Dropout", ("d",), "d")]),
     CorruptFileError, "writes tensor 'd', which"),
    # a Constant whose 4 bytes claim 10**9 elements (shape inference's data propagation: bad_alloc)
    (lambda: models.onnx_model([helper.make_node("Constant", [], ["c"], value=onnx.TensorProto(
                                    name="c", data_type=TensorProto.FLOAT, dims=[10**9], raw_data=b"\0" * 4)),
                                helper.make_node("Add", ["x", "c"], ["y"])],
                               [models.float_input("x", [1, 8])], [models.float_input("y", None)]),
     CorruptFileError, "holds 4 bytes, but its dims"),
    # a perm that is not a permutation (IndexError)
    (lambda: one_node("Transpose", attrs={"perm": [0, 5]}), CorruptFileError, "not a permutation"),
    # an opset version that does not exist
    (lambda: one_node("Relu", opset=0), CorruptFileError, "version 0 of the ONNX operator set"),
    # names that are not UTF-8 (protobuf returns them as bytes: UnicodeDecodeError)
    (lambda: one_node("Relu").SerializeToString().replace(b"Relu", b"R\xeelu"), CorruptFileError, "UTF-8"),
])
def test_malformed_models_are_clear_errors(build, error, message):
    with pytest.raises(error, match=message), fuzzing.limits():
        converters.from_onnx(build())


def _truncated(model):
    t = model.graph.initializer[0]
    t.raw_data = t.raw_data[:16]
    return model


def _no_outputs(model):
    del model.graph.node[0].output[:]
    return model


def test_constant_with_external_data_is_never_read_from_the_working_directory(tmp_path, monkeypatch):
    """An attribute tensor (a Constant's value) in an external file is read from the model's
    folder or refused; onnx's to_array would read the path relative to the working directory."""
    def model(value):
        return models.onnx_model([helper.make_node("Constant", [], ["c"], value=value),
                                  helper.make_node("Add", ["x", "c"], ["y"])],
                                 [models.float_input("x", [1, 8])], [models.float_input("y", None)])

    values = np.arange(8, dtype=np.float32)
    value = numpy_helper.from_array(values, "c")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="c.bin")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "c.bin").write_bytes(values.tobytes())
    (tmp_path / "c.bin").write_bytes(np.zeros(8, np.float32).tobytes())  # the wrong file
    onnx.save(model(value), tmp_path / "model" / "m.onnx")
    monkeypatch.chdir(tmp_path)
    try:
        external = converters.from_onnx(tmp_path / "model" / "m.onnx")
    except HNNError as e:
        assert "external" in str(e)
    else:
        inline = converters.from_onnx(model(numpy_helper.from_array(values, "c")))
        np.testing.assert_array_equal(external.nodes, inline.nodes)


def int8_with_scale(scale):
    """onnxruntime's dynamic int8 MatMul pattern with weight scale `scale` (x [1, 8], weight [8, 4])."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["mi"]),
             helper.make_node("Cast", ["mi"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["mf", "s"], ["y"])]
    return models.onnx_model(nodes, [models.float_input("x", [1, 8])], [models.float_input("y", None)],
                             [("wq", np.ones((8, 4), np.uint8)), ("wz", np.array(0, np.uint8)), ("ws", scale)])


def transpose_between_relus(**attrs):
    return models.onnx_model([helper.make_node("Relu", ["x"], ["a"]),
                              helper.make_node("Transpose", ["a"], ["t"], **attrs),
                              helper.make_node("Relu", ["t"], ["y"])],
                             [models.float_input("x", [1, 2, 3])], [models.float_input("y", None)])


@pytest.mark.parametrize("model", [
    # a tensor attribute (several values) on a foldable node: "in attrs.values()" compared arrays
    models.onnx_model([helper.make_node("Add", ["c", "c"], ["r"], note=numpy_helper.from_array(np.ones(3, np.float32))),
                       helper.make_node("Add", ["x", "r"], ["y"])],
                      [models.float_input("x", [1, 8])], [models.float_input("y", None)],
                      [("c", np.ones(8, np.float32))]),
    # an empty list attribute could not be written back for shape inference / evaluation
    one_node("ReduceMean", attrs={"axes": helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS)},
             opset=13),
    # a Transpose without perm reverses the axes: not a no-op (and not an IndexError)
    transpose_between_relus(),
    # Clip with non-scalar bounds (float() of an array)
    one_node("Clip", ["x", "lo", "hi"], inits=[("lo", np.zeros(8, np.float32)), ("hi", np.full(8, 6, np.float32))]),
    # an op of another domain without inputs (dequantize read inputs[0])
    models.onnx_model([helper.make_node("Source", [], ["s"], domain="com.example"),
                       helper.make_node("Add", ["x", "s"], ["y"])],
                      [models.float_input("x", [1, 8])], [models.float_input("y", None)]),
    # attributes of any type on an op of another domain, non-finite ones on a known op (features
    # did max/sum/prod on them: TypeError, NaN)
    one_node("Conv2D", domain="com.example", attrs={"strides": numpy_helper.from_array(np.ones((3, 4), np.float32)),
                                                    "kernel_shape": [1.5, -2.0], "group": "two", "pads": 7}),
    one_node("Celu", attrs={"alpha": float("inf")}),
    one_node("InstanceNormalization", ["x", "s", "b"], shape=(1, 2, 4), attrs={"epsilon": float("inf")},
             inits=[("s", np.ones(2, np.float32)), ("b", np.zeros(2, np.float32))]),
    # negative pads are valid for Pad (opset 10 attribute): log1p(sum) was NaN
    one_node("Pad", attrs={"pads": [0, -1, 0, -1]}, opset=10),
    # zero-size and huge input dims: region fusion evaluated an empty or a 1 TiB probe array
    models.onnx_model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                      [models.float_input("x", [1, 0, 8])], [models.float_input("y", None)]),
    models.onnx_model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                      [models.float_input("x", [1, 2**31, 8])], [models.float_input("y", None)]),
    # BatchNormalization whose scale is empty and mean has 4 values (broadcast ValueError)
    one_node("BatchNormalization", ["x", "s", "b", "m", "v"], shape=(1, 4, 2, 2),
             inits=[("s", np.zeros(0, np.float32))] + [(k, np.ones(4, np.float32)) for k in "bmv"]),
    # a Conv whose bias is computed, followed by a per-channel Mul (KeyError folding it)
    models.onnx_model([helper.make_node("ReduceMean", ["x"], ["bias"], axes=[0, 2, 3], keepdims=0),
                       helper.make_node("Conv", ["x", "w", "bias"], ["c"], kernel_shape=[1, 1]),
                       helper.make_node("Mul", ["c", "k"], ["y"])],
                      [models.float_input("x", [1, 4, 2, 2])], [models.float_input("y", None)],
                      [("w", np.ones((4, 4, 1, 1), np.float32)), ("k", np.full((4, 1, 1), 2, np.float32))]),
    # int8 MatMulInteger whose weight scale does not fit the weight (broadcast ValueError)
    int8_with_scale(np.ones(3, np.float32)),
    # Slice and Split of a scalar (axis % rank: ZeroDivisionError)
    models.onnx_model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                       helper.make_node("Slice", ["s", "zero", "one", "zero"], ["y"])],
                      [models.float_input("x", [1, 8])], [models.float_input("y", None)],
                      [("zero", np.array([0])), ("one", np.array([1]))]),
    models.onnx_model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                       helper.make_node("Split", ["s"], ["y", "z"], axis=0)],
                      [models.float_input("x", [1, 8])],
                      [models.float_input("y", None), models.float_input("z", None)]),
], ids=["array_attribute", "empty_list_attribute", "transpose_without_perm", "clip_vector_bounds",
        "source_op", "odd_attribute_types", "infinite_alpha", "infinite_epsilon", "negative_pads",
        "zero_size_input", "huge_input", "batch_norm_params_of_other_sizes", "computed_conv_bias",
        "int8_scale_of_another_shape", "slice_of_scalar", "split_of_scalar"])
def test_odd_but_convertible_models_hash(model):
    assert outcome(model)[0] == "HashCode"


def test_transpose_without_perm_reverses_the_axes():
    """Moved below the second Relu (spelling), it keeps its meaning: perm (2, 1, 0)."""
    import onnxruntime as ort

    model = transpose_between_relus()
    prepared = converters.canonical.prepare(model)
    assert [list(n.attribute[0].ints) for n in prepared.graph.node if n.op_type == "Transpose"] == [[2, 1, 0]]
    x = np.random.default_rng(0).standard_normal((1, 2, 3)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (model, prepared)]
    np.testing.assert_array_equal(*run)


@pytest.mark.parametrize("mutation", [
    # 10**9 elements declared over 40 bytes: ONNX's data propagation in prepare() allocated GBs
    # (std::bad_alloc under the cap, an OOM kill without) before load's size check ran
    ("initializer", 15, "dims_huge", 0),
    # an element type ONNX does not define: KeyError in load.tensor_array
    ("elem_type", "initializer", 15, 99),
])
def test_external_weights_are_checked_before_use(mutation):
    case = ("structure", "handmade_vision", [mutation], fuzzing.EXTERNAL_DATA)
    assert fuzzing.run_case(case) == "CorruptFileError"


def test_activation_statistics_do_not_copy_the_activation():
    """std(dtype=float64) made a float64 copy of each activation: 2.4 GB more for a 1.2 GB Range
    output (within max_activation_bytes), a MemoryError under the fuzzer's cap."""
    import tracemalloc

    from hnn_jax.converters.features import _activation_features

    value = np.random.default_rng(0).standard_normal(1 << 24).astype(np.float32)  # 64 MB
    tracemalloc.start()
    _activation_features(value)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < value.nbytes  # one float64 chunk at a time, never the whole array


@pytest.mark.parametrize("dims", [[1, 10**9], [2**32, 2**32]])
def test_probe_skips_inputs_too_large_to_make(dims):
    """Inputs count toward max_activation_bytes (they did not: a [1, 10**9] input of an op shape
    inference cannot follow made the probe allocate 8 GB); sizes are exact (np.prod wrapped)."""
    model = one_node("Foo", domain="com.example", shape=dims)
    with pytest.warns(UserWarning, match="activations larger"):
        g = converters.from_onnx(model)
    assert g.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_SKIPPED


@pytest.mark.parametrize("location", [b"w\xc8bin", b"w\x00bin"])
def test_external_location_that_is_not_a_path_is_a_clear_error(tmp_path, location):
    """A location that is not UTF-8 (protobuf gives bytes) or holds a NUL raised TypeError/ValueError."""
    model = one_node("Add", ["x", "b"], inits=[("b", np.ones(8, np.float32))])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    data = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "m.onnx").write_bytes(data.replace(b"w.bin", location))
    with pytest.raises(CorruptFileError, match="is not a file name"):
        converters.from_onnx(tmp_path / "m.onnx")


def test_gemm_bias_of_shape_m_n():
    """form_linear broadcast a Gemm's C to [out] (ValueError); C of shape [M, N] is valid."""
    rng = np.random.default_rng(0)
    model = models.onnx_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"])], [models.float_input("x", [8, 16])],
                              [models.float_input("y", [8, 4])],
                              [("w", rng.standard_normal((16, 4)).astype(np.float32)),
                               ("c", rng.standard_normal((8, 4)).astype(np.float32))])
    assert outcome(model)[0] == "HashCode"


def test_int8_product_that_is_a_graph_output_is_not_dequantised_away():
    """Found by the pass invariants (HNN_CHECK_PASSES): dequantize replaced a MatMulInteger whose
    integer output was also a graph output, leaving that output written by nothing."""
    seed = fuzzing.build(("structure", "int8_mlp", [], fuzzing.IN_MEMORY), None)
    product = next(n.output[0] for n in seed.graph.node if n.op_type == "MatMulInteger")
    seed.graph.output[0].name = product
    assert outcome(seed)[0] == "HashCode"
