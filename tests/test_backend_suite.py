"""Every ONNX backend test model the installed `onnx` package defines, through from_onnx and hash.

The models are generated at test time from the package: the node cases (onnx.backend.test.case,
built in memory by `load_model_tests(kind="node")`) plus the model folders shipped in
onnx/backend/test/data (pytorch-converted, pytorch-operator, simple) and the light models
(data/light/*.onnx). The "real" folder only names URLs to download and is left out.

Contract per model: a graph and a HashCode, or an HNNError subclass; nothing else, no model past
its time limit, nothing on stderr. benchmarks/bench_backend_suite.py reuses `backend_cases` and
`convert_case` for its table.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import time
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hnn_jax
from hnn_jax import HNNError, UnsupportedModelError, converters, schema
from hnn_jax.converters.canonical import prepare
from hnn_jax.converters.probe import probe_inputs

pytestmark = pytest.mark.slow

FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")  # data/<kind>/test_*/model.onnx
CASE_TIME_LIMIT_S = 20.0  # per model, conversion and probe; the slowest takes about 1 s


@dataclass
class Case:
    name: str                     # "<kind>/<test name>"
    source: object                # a path (folders) or an onnx.ModelProto (node cases)
    inputs: list | None = None    # the model's own test inputs, in graph-input order (None: none shipped)

    def model(self) -> onnx.ModelProto:
        return self.source if isinstance(self.source, onnx.ModelProto) else onnx.load(self.source)


def _data_dir() -> str:
    from onnx.backend.test.loader import DATA_DIR
    return DATA_DIR


def _read_value(path: str, type_proto: onnx.TypeProto):
    """One test_data_set_* input file, as onnxruntime's Python API takes it."""
    with open(path, "rb") as f:
        data = f.read()
    if type_proto.HasField("sequence_type"):
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return numpy_helper.to_list(proto)
    if type_proto.HasField("optional_type"):
        proto = onnx.OptionalProto()
        proto.ParseFromString(data)
        return numpy_helper.to_optional(proto)
    if type_proto.HasField("map_type"):
        proto = onnx.MapProto()
        proto.ParseFromString(data)
        return numpy_helper.to_dict(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(data)
    return numpy_helper.to_array(proto)


def _folder_inputs(case_dir: str, model: onnx.ModelProto) -> list | None:
    sets = sorted(glob.glob(os.path.join(case_dir, "test_data_set_*")))
    if not sets:
        return None
    files = sorted(glob.glob(os.path.join(sets[0], "input_*.pb")),
                   key=lambda p: int(os.path.basename(p)[len("input_"):-len(".pb")]))
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(files) > len(graph_inputs):
        graph_inputs = list(model.graph.input)
    return [_read_value(p, v.type) for p, v in zip(files, graph_inputs)]


def backend_cases(with_inputs: bool = False) -> list[Case]:
    """Every backend test model of the installed onnx package, sorted by name. `with_inputs`
    also reads each model's own first test data set (the benchmark runs onnxruntime on it)."""
    from onnx.backend.test.loader import load_model_tests

    cases = []
    with warnings.catch_warnings():  # the node cases' numpy references overflow on purpose
        warnings.simplefilter("ignore")
        node_cases = load_model_tests(kind="node")
    for t in node_cases:
        inputs = list(t.data_sets[0][0]) if with_inputs and t.data_sets else None
        cases.append(Case(f"node/{t.name}", t.model, inputs))
    root = _data_dir()
    for kind in FOLDERS:
        for case_dir in sorted(glob.glob(os.path.join(root, kind, "test_*"))):
            path = os.path.join(case_dir, "model.onnx")
            if not os.path.isfile(path):
                continue
            inputs = _folder_inputs(case_dir, onnx.load(path)) if with_inputs else None
            cases.append(Case(f"{kind}/{os.path.basename(case_dir)}", path, inputs))
    for path in sorted(glob.glob(os.path.join(root, "light", "*.onnx"))):
        if path.endswith("_output_0.pb"):
            continue
        inputs = None
        if with_inputs:  # onnx's runner feeds light models dummy data; zeros of the declared shape
            model = onnx.load(path)
            initializers = {t.name for t in model.graph.initializer}
            inputs = [np.zeros([d.dim_value for d in v.type.tensor_type.shape.dim],
                               helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
                      for v in model.graph.input if v.name not in initializers]
        cases.append(Case(f"light/{os.path.basename(path)[:-len('.onnx')]}", path, inputs))
    return sorted(cases, key=lambda c: c.name)


class CaseTimeout(Exception):
    """A model ran past CASE_TIME_LIMIT_S (not an HNNError: a test failure)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"ran past {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    name: str
    graph: object = None          # jraph.GraphsTuple, or None when refused
    error: BaseException | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def probed(self) -> bool:
        return self.graph is not None and self.graph.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK


def convert_case(case: Case, time_limit_s: float = CASE_TIME_LIMIT_S) -> Outcome:
    """from_onnx on one case. HNNError is an outcome; any other exception (CaseTimeout
    included) propagates."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, time_limit(time_limit_s):
        warnings.simplefilter("always")
        try:
            graph, error = converters.from_onnx(case.source, probe_timeout=time_limit_s), None
        except HNNError as e:
            graph, error = None, e
    return Outcome(case.name, graph, error, tuple(str(w.message) for w in caught), time.perf_counter() - start)


def hash_outcomes(outcomes: list[Outcome]) -> dict[str, object]:
    """name -> HashCode or HNNError for every converted graph: one batched call (each padding
    bucket compiles once, which is most of the time), one by one if the batch is refused."""
    coded = [o for o in outcomes if o.graph is not None]
    try:
        return dict(zip([o.name for o in coded], hnn_jax.hash([o.graph for o in coded])))
    except HNNError:
        result = {}
        for o in coded:
            try:
                result[o.name] = hnn_jax.hash(o.graph)
            except HNNError as e:
                result[o.name] = e
        return result


def test_every_backend_model_gives_a_code_or_an_hnn_error(capfd):
    """About a minute: loading the node cases ~10 s, from_onnx twice ~35 s (HNN_CHECK_PASSES=1),
    hashing ~20 s (nearly all of it compiling the padding buckets)."""
    cases = backend_cases()
    assert len(cases) > 1500, "the onnx package's backend test models were not found"
    capfd.readouterr()  # what loading the node cases printed is not ours
    outcomes, problems = [], []
    for case in cases:
        try:
            outcome = convert_case(case)
            outcomes.append(outcome)
            if outcome.probed:  # made-up inputs, read again: the same features bit for bit
                again = convert_case(case)
                if not all(np.array_equal(a, b) for a, b in zip(outcome.graph, again.graph) if a is not None):
                    problems.append(f"{case.name}: features differ between two conversions")
        except Exception as e:  # noqa: BLE001 - gathered, so one run names every bad model
            problems.append(f"{case.name}: {type(e).__name__}: {e}".splitlines()[0][:300])
    codes = hash_outcomes(outcomes)
    problems += [f"{name}: hash gave {code!r}" for name, code in codes.items()
                 if not isinstance(code, (hnn_jax.HashCode, HNNError))]
    err = capfd.readouterr().err
    if err.strip():
        problems.append(f"printed on stderr:\n{err[:3000]}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])
    coded = [o for o in outcomes if isinstance(codes.get(o.name), hnn_jax.HashCode)]
    assert len(coded) > 0.9 * len(cases)
    probed = sum(o.probed for o in coded)
    assert probed > 0.85 * len(coded), f"the probe ran on {probed} of {len(coded)} coded models"


# Regression tests: small models built here, one per fix.

def _model(nodes, inputs, outputs, initializers=(), opset=21, domains=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *(helper.make_opsetid(d, v) for d, v in domains)])


def _info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def _probed(model) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a probe that does not run warns: fail here
        g = converters.from_onnx(model)
    assert g.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK
    assert isinstance(hnn_jax.hash(g), hnn_jax.HashCode)
    return g


def _same_features(model):
    a, b = converters.from_onnx(model), converters.from_onnx(model)
    for x, y in zip(a, b):
        if x is not None:
            np.testing.assert_array_equal(x, y)  # bit for bit, inputs made up afresh each time
    return a


def test_ragged_sequence_outputs_do_not_break_the_probe():
    """simple/test_sequence_model1: SequenceConstruct of a [2,3] and a [1,3] tensor, SequenceAt;
    onnxruntime hands the ragged sequence back as a list (np.asarray raised ValueError)."""
    model = _model([helper.make_node("SequenceConstruct", ["x", "y"], ["seq"]),
                    helper.make_node("SequenceAt", ["seq", "pos"], ["at"]),
                    helper.make_node("Relu", ["at"], ["out"])],
                   [_info("x", TensorProto.FLOAT, [2, 3]), _info("y", TensorProto.FLOAT, [1, 3])],
                   [_info("out", TensorProto.FLOAT, None)],
                   [numpy_helper.from_array(np.array(1, np.int64), "pos")], opset=13)
    _probed(model)
    _same_features(model)


def test_sequence_optional_and_map_inputs_are_made():
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [None, 3])
    opt = helper.make_value_info("o", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 3])))
    model = _model([helper.make_node("SequenceInsert", ["s", "x"], ["s2"]),
                    helper.make_node("ConcatFromSequence", ["s2"], ["cat"], axis=0),
                    helper.make_node("Relu", ["cat"], ["out"]),
                    helper.make_node("OptionalGetElement", ["o"], ["oe"]),
                    helper.make_node("Sigmoid", ["oe"], ["out2"])],
                   [seq, _info("x", TensorProto.FLOAT, [1, 3]), opt],
                   [_info("out", TensorProto.FLOAT, None), _info("out2", TensorProto.FLOAT, None)], opset=18)
    feeds = probe_inputs(prepare(model))
    assert [np.shape(v) for v in feeds["s"]] == [(1, 3), (1, 3)] and feeds["o"].shape == (2, 3)
    _probed(model)
    _same_features(model)
    dict_vectorizer = _model(
        [helper.make_node("DictVectorizer", ["m"], ["v"], domain="ai.onnx.ml", string_vocabulary=["k0", "k1", "k2"]),
         helper.make_node("Relu", ["v"], ["out"])],
        [helper.make_value_info("m", helper.make_map_type_proto(TensorProto.STRING,
                                                                helper.make_tensor_type_proto(TensorProto.FLOAT, [])))],
        [_info("out", TensorProto.FLOAT, None)], opset=13, domains=[("ai.onnx.ml", 1)])
    assert sorted(probe_inputs(prepare(dict_vectorizer))["m"]) == ["k0", "k1", "k2"]


def test_shape_and_size_inputs_take_values_the_model_implies():
    x = _info("x", TensorProto.FLOAT, [2, 3, 4])
    cases = {  # node reading x and the integer input "v" of the given length -> check on v's values
        "Reshape": (helper.make_node("Reshape", ["x", "v"], ["y"]), [2], lambda v: np.prod(v) == 24),
        "Expand": (helper.make_node("Expand", ["x", "v"], ["y"]), [4], lambda v: list(v) == [1, 2, 3, 4]),
        "Split": (helper.make_node("Split", ["x", "v"], ["y", "y2"], axis=2), [2], lambda v: list(v) == [2, 2]),
        "Tile": (helper.make_node("Tile", ["x", "v"], ["y"]), [3], lambda v: (v >= 1).all()),
        "Pad": (helper.make_node("Pad", ["x", "v"], ["y"], mode="reflect"), [6], lambda v: (v <= 1).all()),
        "Resize": (helper.make_node("Resize", ["x", "", "", "v"], ["y"]), [3], lambda v: list(v) == [2, 3, 4]),
        "Unsqueeze": (helper.make_node("Unsqueeze", ["x", "v"], ["y"]), [2], lambda v: list(v) == [0, 1]),
        "ReduceSum": (helper.make_node("ReduceSum", ["x", "v"], ["y"]), [2], lambda v: list(v) == [0, 1]),
        "CumSum": (helper.make_node("CumSum", ["x", "v"], ["y"]), [], lambda v: v == 0),
        "TopK": (helper.make_node("TopK", ["x", "v"], ["y", "y2"]), [1], lambda v: 1 <= v[0] <= 4),
    }
    for op, (node, length, check) in cases.items():
        outputs = [_info(o, TensorProto.INT64 if (op, o) == ("TopK", "y2") else TensorProto.FLOAT, None)
                   for o in node.output]
        model = _model([node], [x, _info("v", TensorProto.INT64, length)], outputs, opset=18)
        v = probe_inputs(prepare(model))["v"]
        assert v.dtype == np.int64 and v.shape == tuple(length) and check(v), (op, v)
        _probed(model)
    slicing = _model([helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])],
                     [x, *(_info(n, TensorProto.INT64, [2]) for n in "seat")], [_info("y", TensorProto.FLOAT, None)])
    feeds = probe_inputs(prepare(slicing))
    assert [feeds[n].tolist() for n in "seat"] == [[0, 0], [2, 3], [0, 1], [1, 1]]
    _probed(slicing)
    divide = _model([helper.make_node("Div", ["a", "b"], ["y"]), helper.make_node("Cast", ["y"], ["f"], to=1),
                     helper.make_node("Relu", ["f"], ["out"])],
                    [_info("a", TensorProto.INT32, [3, 4]), _info("b", TensorProto.INT32, [3, 4])],
                    [_info("out", TensorProto.FLOAT, None)])
    assert (probe_inputs(prepare(divide))["b"] != 0).all()
    _probed(divide)
    # the declared output shape says what the shape input held: [2, 3, 4] -> [6, 4]
    stated = _model([helper.make_node("Reshape", ["x", "v"], ["y"])], [x, _info("v", TensorProto.INT64, [2])],
                    [_info("y", TensorProto.FLOAT, [6, 4])])
    assert probe_inputs(prepare(stated))["v"].tolist() == [6, 4]


TYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FLOAT16", "DOUBLE",
         "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E5M2", "INT4", "UINT4"]


@pytest.mark.parametrize("type_name", TYPES)
def test_a_typed_input_for_every_type_onnxruntime_takes(type_name):
    elem = getattr(TensorProto, type_name)
    model = _model([helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
                    helper.make_node("Relu", ["f"], ["y"]),
                    helper.make_node("Cast", ["y"], ["back"], to=elem)],  # read back in its own type
                   [_info("x", elem, [2, 5])], [_info("back", elem, None)])
    x = probe_inputs(prepare(model))["x"]
    assert x.dtype == helper.tensor_dtype_to_np_dtype(elem) and x.shape == (2, 5)
    g = _probed(model)
    assert (g.nodes[:, schema.NODE_ACT_STATS][:, -1] == 1).any()
    _same_features(model)


def test_string_and_scalar_boolean_inputs():
    model = _model([helper.make_node("Where", ["c", "a", "b"], ["w"]),
                    helper.make_node("Equal", ["w", "a"], ["eq"]),
                    helper.make_node("Cast", ["eq"], ["f"], to=TensorProto.FLOAT),
                    helper.make_node("Relu", ["f"], ["y"])],
                   [_info("a", TensorProto.STRING, [4]), _info("b", TensorProto.STRING, [4]),
                    _info("c", TensorProto.BOOL, [])], [_info("y", TensorProto.FLOAT, None)])
    feeds = probe_inputs(prepare(model))
    assert feeds["a"].dtype == object and all(isinstance(s, str) for s in feeds["a"])
    assert isinstance(feeds["c"], np.ndarray) and feeds["c"].shape == ()
    _probed(model)
    _same_features(model)


def test_a_node_whose_first_output_is_unnamed_is_probed():
    """GRU with Y left out (output ""): the probe asked onnxruntime for a tensor named ""."""
    rng = np.random.default_rng(0)
    model = _model([helper.make_node("GRU", ["x", "w", "r"], ["", "h"], hidden_size=4),
                    helper.make_node("Relu", ["h"], ["y"])],
                   [_info("x", TensorProto.FLOAT, [3, 1, 2])], [_info("y", TensorProto.FLOAT, None)],
                   [numpy_helper.from_array(rng.standard_normal((1, 12, 2)).astype(np.float32), "w"),
                    numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "r")], opset=14)
    _probed(model)


@pytest.mark.parametrize("node, stripped", [
    (helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0]), True),
    (helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE), True),
    (helper.make_node("Unsqueeze", ["x", "axes"], ["y"]), True),
    (helper.make_node("Identity", ["x"], ["y"]), False),
    (helper.make_node("Shape", ["x"], ["y"]), False),
])
def test_an_empty_canonical_graph_says_why(node, stripped):
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    model = _model([node], [_info("x", TensorProto.FLOAT, [2, 3])], [_info("y", TensorProto.UNDEFINED, None)],
                   [axes] if "axes" in node.input else [])
    with pytest.raises(UnsupportedModelError, match="strips on purpose|computes no function of its inputs") as e:
        converters.from_onnx(model)
    if stripped:
        assert "strips on purpose" in str(e.value) and node.op_type in str(e.value)
    else:
        assert "computes no function of its inputs" in str(e.value)
