"""Large and odd models: streamed external weights, size limits, symbolic and empty dimensions."""

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from hnn_jax.testing import models
from hnn_jax.testing import synthetic
import hnn_jax
from hnn_jax import CorruptFileError, ModelTooLargeError, converters, schema
from hnn_jax.padding import MAX_NODES


def peak_rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS


def test_external_weights_are_streamed_not_loaded(tmp_path):
    path = models.external_data_mlp(tmp_path / "big", layers=16, width=2304)  # 16 x 20 MiB = 324 MiB
    total = (tmp_path / "big" / "weights.bin").stat().st_size
    converters.from_onnx(models.external_data_mlp(tmp_path / "warm", 2, 64), probe=False)  # imports, caches
    reset_peak_rss()
    before = peak_rss_bytes()
    with pytest.warns(UserWarning, match="weights .* larger than max_weight_bytes"):
        g = converters.from_onnx(path, max_weight_bytes=total // 2)
    extra = peak_rss_bytes() - before
    assert g.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_SKIPPED
    assert int(g.n_node[0]) == 1 + 2 * 16
    assert extra < 0.4 * total, f"peak RSS grew by {extra >> 20} MiB for {total >> 20} MiB of weights"


def test_streamed_weights_give_the_same_graph_as_loaded_ones(tmp_path):
    path = models.external_data_mlp(tmp_path / "m", layers=3, width=2304)  # views, not copies
    streamed = converters.from_onnx(path)  # probed by onnxruntime from the model's folder
    assert streamed.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK
    loaded = converters.from_onnx(onnx.load(path))
    for a, b in zip(streamed, loaded):
        np.testing.assert_array_equal(a, b)


def test_truncated_or_mis_sized_external_data_is_a_clear_error(tmp_path):
    path = models.external_data_mlp(tmp_path / "m", layers=2, width=64)
    data = tmp_path / "m" / "weights.bin"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="runs past the end"):
        converters.from_onnx(path)
    path = models.external_data_mlp(tmp_path / "m2", layers=2, width=64)
    m = onnx.load(path, load_external_data=False)
    for entry in m.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = "12"
    onnx.save(m, path)
    with pytest.raises(CorruptFileError, match="needs"):
        converters.from_onnx(path)
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([2**40, 2**40])  # 2**80 elements: np.prod in int64 wrapped to 0
    onnx.save(m, path)
    with pytest.raises(CorruptFileError, match="needs 4835703278458516698824704"):
        converters.from_onnx(path)


def test_models_beyond_the_size_limits_are_refused_clearly():
    m, x = models.torch_mlp(0)
    proto = converters.export.torch_to_onnx(m, x)
    with pytest.raises(ModelTooLargeError, match="max_nodes=2"):
        converters.from_onnx(proto, max_nodes=2)
    too_big = synthetic.random_graph(0, MAX_NODES)  # one more than fits with the padding node
    with pytest.raises(ModelTooLargeError, match="largest padding bucket"):
        hnn_jax.hash(too_big)


@pytest.mark.parametrize("shape", [["batch", "seq", 4], ["n", 4], [0, 4], [2, 0, 4], [-1, 4]])
def test_symbolic_and_empty_input_dims_get_defaults_and_a_probe(shape):
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    proto = models.onnx_model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [models.float_input("z", None)], [("w", w)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the probe runs
        g = converters.from_onnx(proto)
    assert g.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK
    assert g.nodes[:, schema.NODE_ACT_STATS].any()
    assert isinstance(hnn_jax.hash(g), hnn_jax.HashCode)


def test_a_graph_without_nodes_is_a_clear_error():
    empty = models.onnx_model([], [models.float_input("x", [2])], [models.float_input("x", [2])])
    with pytest.raises(CorruptFileError, match="no graph nodes"):
        converters.from_onnx(empty)


def current_rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_repeated_conversions_and_failures_do_not_grow_memory():
    from pathlib import Path

    paths = sorted((Path(hnn_jax.__file__).parent / "examples").glob("*.onnx"))[:4]
    truncated = paths[0].read_bytes()[:2000]

    def round_trip():
        hnn_jax.hash([converters.from_onnx(p) for p in paths])
        with pytest.raises(CorruptFileError, match="not a valid ONNX model"):
            converters.from_onnx(truncated)

    for _ in range(3):
        round_trip()
    before = current_rss_bytes()
    for _ in range(15):
        round_trip()
    growth = current_rss_bytes() - before
    assert growth < 24 << 20, f"RSS grew by {growth >> 20} MiB over 15 rounds"
