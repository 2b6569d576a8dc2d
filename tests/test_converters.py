"""Converters end to end on models built in the tests: torch, Keras, tf.function, ONNX files."""

import os
import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest

import hnn_jax
from hnn_jax.testing import models
import transforms
from hnn_jax import CorruptFileError, HNNError, UnsupportedModelError, converters, schema
from hnn_jax.converters import export
from hnn_jax.errors import first_line


def check_graph(g):
    n, e = int(g.n_node[0]), int(g.n_edge[0])
    assert g.nodes.shape == (n, schema.NODE_WIDTH) and g.nodes.dtype == np.float32
    assert g.edges.shape == (e, schema.EDGE_WIDTH) and g.edges.dtype == np.float32
    assert g.globals.shape == (1, schema.GLOBAL_WIDTH)
    assert np.isfinite(g.nodes).all() and np.isfinite(g.edges).all() and np.isfinite(g.globals).all()
    assert schema.graph_schema_version(g) == schema.SCHEMA_VERSION
    ops = g.nodes[:, schema.NODE_OP]
    assert (ops == np.round(ops)).all() and (ops >= 0).all() and (ops < schema.VOCAB_SIZE).all()
    assert ((0 <= g.senders) & (g.senders < n)).all() and ((0 <= g.receivers) & (g.receivers < n)).all()
    assert (g.senders < g.receivers).all()  # canonical order is topological
    return [schema.OPS[int(i)] for i in ops]


def feature_distance(a, b):
    assert np.array_equal(a.senders, b.senders) and np.array_equal(a.receivers, b.receivers)
    assert np.array_equal(a.nodes[:, schema.NODE_OP], b.nodes[:, schema.NODE_OP])
    return float(np.linalg.norm(a.nodes - b.nodes))


@pytest.fixture(scope="module")
def cnn():
    model, x = models.torch_cnn(0)
    return model, x, export.torch_to_onnx(model, x)


@pytest.fixture(scope="module")
def transformer():
    model, x = models.torch_transformer(0)
    return model, x, export.torch_to_onnx(model, x)


def test_from_torch_cnn(cnn):
    model, x, _ = cnn
    g = converters.from_torch(model, x)
    assert check_graph(g) == ["input", "conv", "relu", "conv", "relu", "global_avg_pool", "linear"]
    assert g.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK
    assert (g.nodes[:, schema.NODE_ACT_STATS][:, -1] == 1).all()  # every node was probed
    has_weights = g.nodes[:, schema.NODE_WEIGHT_STATS][:, 0] > 0  # weights folded into nodes
    assert has_weights.tolist() == [False, True, False, True, False, False, True]


def test_from_torch_transformer_with_integer_ids(transformer):
    g = converters.from_onnx(transformer[2])
    ops = check_graph(g)
    assert ops[:2] == ["input", "embedding"]
    assert ops.count("layer_norm") == 2 and ops.count("split") == 1 and "softmax" in ops and "gelu" in ops
    assert "shape" not in ops and "unknown" not in ops  # shape arithmetic is gone


@pytest.mark.parametrize("build", [models.torch_cnn, models.torch_mlp, models.torch_transformer])
def test_dynamo_and_torchscript_exporters_agree(build):
    model, x = build(0)
    legacy = converters.from_torch(model, x, dynamo=False)
    dynamo = converters.from_torch(model, x, dynamo=True)
    assert check_graph(legacy) == check_graph(dynamo)
    assert np.array_equal(legacy.senders, dynamo.senders)
    np.testing.assert_allclose(legacy.nodes, dynamo.nodes, atol=1e-5)
    np.testing.assert_allclose(legacy.edges, dynamo.edges, atol=1e-6)


@pytest.mark.parametrize("fixture", ["cnn", "transformer"])
def test_renamed_and_shuffled_onnx_gives_identical_graphs_tuple(fixture, request):
    proto = request.getfixturevalue(fixture)[2]
    a = converters.from_onnx(proto)
    b = converters.from_onnx(transforms.rename_and_shuffle(proto, seed=3))
    for field in ("nodes", "edges", "senders", "receivers", "n_node", "n_edge", "globals"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("fixture", ["cnn", "transformer"])
def test_variants_keep_topology_and_stay_closer_than_another_init(fixture, request, tmp_path):
    model, x, proto = request.getfixturevalue(fixture)
    build = models.torch_cnn if fixture == "cnn" else models.torch_transformer
    original = converters.from_onnx(proto)
    other_init = converters.from_onnx(export.torch_to_onnx(build(1)[0], x))
    far = feature_distance(original, other_init)
    variants = {
        "fp16": (transforms.fp16_weights(proto), 0.01),
        "int8": (transforms.int8_dynamic(proto), 0.05),
        "noise": (transforms.perturb(proto, 0.01), 0.05),
        "prune30": (transforms.prune(proto, 0.3), 0.25),
    }
    for name, (variant, ratio) in variants.items():
        near = feature_distance(original, converters.from_onnx(variant))
        assert near < ratio * far, (name, near, far)
    # relation 2 is in the instance-specific columns, not only in summary statistics
    cols = np.r_[schema.NODE_WEIGHT_PROJ, schema.NODE_UNIT_PROJ]
    assert np.abs(original.nodes[1:, cols] - other_init.nodes[1:, cols]).mean() > 0.3


def test_keras_sequential_and_its_torch_twin_give_the_same_canonical_graph():
    keras_graph = converters.from_keras(models.keras_cnn_sequential(0))
    torch_model, x = models.torch_twin_of_keras_cnn(0)
    torch_graph = converters.from_torch(torch_model, x)
    ops = check_graph(keras_graph)
    assert ops == check_graph(torch_graph)
    assert ops == ["input", "conv", "relu", "global_avg_pool", "layer_norm", "linear", "gelu", "linear", "silu"]
    assert np.array_equal(keras_graph.senders, torch_graph.senders)
    assert keras_graph.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK  # Erfc was made runnable


def test_keras_model_and_its_torch_twin_holding_the_same_weights_give_one_code():
    """Cross-framework identity: the same trained weights (channel-last kernels transposed) in a
    Keras model and a PyTorch module are one model, weight part included."""
    import torch

    keras_model = models.keras_cnn_sequential(0)
    twin, x = models.torch_twin_of_keras_cnn(0)
    models.copy_keras_weights_into_twin(keras_model, twin)
    image = np.random.default_rng(1).standard_normal((1, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(keras_model(image).numpy(), twin(torch.tensor(image.transpose(0, 3, 1, 2))).numpy(),
                                   atol=1e-4)
    a = hnn_jax.hash(converters.from_keras(keras_model))
    b = hnn_jax.hash(converters.from_torch(twin, x))
    assert a.distances(b).total == 0
    other, _ = models.torch_twin_of_keras_cnn(1)  # the same architecture, its own weights
    assert a.distances(hnn_jax.hash(converters.from_torch(other, x))).weights > 40


def test_keras_functional_model():
    g = converters.from_keras(models.keras_functional(0))
    # the closing Softmax packages the classifier (torchvision models end in logits): dropped
    assert sorted(check_graph(g)) == sorted(["input", "linear", "linear", "tanh", "add"])
    assert int(g.n_edge[0]) == 5


def test_keras_applications_packaging_and_layout_come_out_like_pytorch():
    """The patterns of keras.applications models: input Rescaling, NHWC convs with ZeroPadding,
    BatchNormalization after a depthwise conv and (standing alone) after a Concatenate, hard-swish,
    a closing softmax. The canonical graph has no transposes, pads, input scaling or softmax, and
    the lone BatchNormalization is a batch_norm (at initialisation it is close to x*1)."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((32, 32, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(h)
    h = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(h))
    h = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(h)
    d = keras.layers.DepthwiseConv2D(3, strides=2, use_bias=False)(h)
    d = keras.layers.BatchNormalization()(d)
    d = d * keras.layers.ReLU(6.0)(d + 3.0) * (1.0 / 6.0)
    c = keras.layers.Concatenate()([d, keras.layers.Conv2D(8, 1)(d)])
    c = keras.layers.ReLU()(keras.layers.BatchNormalization(epsilon=1.001e-5)(c))
    y = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(c))
    ops = check_graph(converters.from_keras(keras.Model(x, y)))
    assert not {"transpose", "pad", "softmax", "mul", "elementwise"} & set(ops), ops
    assert ops[:2] == ["input", "conv"] and ops.count("batch_norm") == 1
    assert ops[ops.index("concat") + 1] == "batch_norm" and "hard_swish" in ops


def test_from_tf_function():
    import tensorflow as tf

    w = tf.Variable(np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32))

    def fn(x):
        return tf.nn.relu(tf.matmul(x, w) + 1.0)

    g = converters.from_tf(fn, [tf.TensorSpec((None, 6), tf.float32)])
    assert check_graph(g) == ["input", "linear", "relu"]


def test_from_onnx_accepts_path_bytes_and_proto(cnn, tmp_path):
    proto = cnn[2]
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    a, b, c = (converters.from_onnx(s) for s in (proto, proto.SerializeToString(), path))
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.nodes, c.nodes)
    assert np.array_equal(converters.from_file(path).nodes, a.nodes)


def test_external_data_is_read_only_from_the_model_folder(cnn, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(transforms.copy(cnn[2]), path, save_as_external_data=True,  # save() edits its argument
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert np.array_equal(converters.from_onnx(path).nodes, converters.from_onnx(cnn[2]).nodes)

    def with_location(location):
        m = onnx.load(path, load_external_data=False)
        for t in m.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        bad = folder / "bad.onnx"
        onnx.save(m, bad)
        return bad

    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    for location, message in [("../outside.bin", "relative paths inside"),
                              (str(tmp_path / "outside.bin"), "relative paths inside"),
                              ("link.bin", "link"), ("missing.bin", "missing")]:
        with pytest.raises(CorruptFileError, match=message):
            converters.from_onnx(with_location(location))
    with pytest.raises(CorruptFileError, match="external data"):
        converters.from_onnx(onnx.load(path, load_external_data=False).SerializeToString())


def test_corrupt_and_wrong_inputs_are_clear_errors(cnn, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(cnn[2].SerializeToString()[:300])
    for path in (empty, noise, truncated, tmp_path / "absent.onnx"):
        with pytest.raises(CorruptFileError, match="is empty|not a valid ONNX model|no such file"):
            converters.from_onnx(path)
    with pytest.raises(HNNError, match="path, bytes or onnx.ModelProto"):
        converters.from_onnx(12345)


def test_from_file_dispatches_and_refuses_pickles(tmp_path):
    import tensorflow as tf
    import torch

    keras_path = tmp_path / "m.keras"
    models.keras_functional(0).save(keras_path)
    assert sorted(check_graph(converters.from_file(keras_path))) == sorted(
        ["input", "linear", "linear", "tanh", "add"])

    class Scale(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))

        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
        def __call__(self, x):
            return tf.nn.sigmoid(tf.matmul(x, self.w))

    saved = tmp_path / "saved"
    module = Scale()
    tf.saved_model.save(module, str(saved), signatures=module.__call__)
    assert check_graph(converters.from_file(saved)) == ["input", "linear", "sigmoid"]

    torch_model, x = models.torch_mlp(0)
    pt2 = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(torch_model, (x,)), pt2)
    assert check_graph(converters.from_file(pt2)) == check_graph(converters.from_torch(torch_model, x))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    pickled = tmp_path / "m.pt"
    pickled.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsupportedModelError, match="never unpickled"):
        converters.from_file(pickled)
    fake_pt2 = tmp_path / "evil.pt2"
    import zipfile
    with zipfile.ZipFile(fake_pt2, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Evil()))
    with pytest.raises(UnsupportedModelError, match="refusing to unpickle"):
        converters.from_file(fake_pt2)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "plain").mkdir()
    with pytest.raises(UnsupportedModelError, match="SavedModel"):
        converters.from_file(tmp_path / "plain")
    (tmp_path / "m.xyz").write_bytes(b"x")
    with pytest.raises(UnsupportedModelError, match="unknown model format"):
        converters.from_file(tmp_path / "m.xyz")


def slow_model(steps=100, width=2048):
    """0.27 GFLOP a node (a few ms on one fast core, 0.3 s or more in all): a 0.02 s probe limit
    stops it between nodes."""
    from onnx import helper

    w = (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(steps)]
    return models.onnx_model(nodes, [models.float_input("h0", [64, width])],
                             [models.float_input(f"h{steps}", None)], [("w", w)])


def test_probe_fallbacks_are_recorded(cnn):
    static = converters.from_onnx(cnn[2], probe=False)
    assert static.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_SKIPPED
    assert not static.nodes[:, schema.NODE_ACT_STATS].any()
    with pytest.warns(UserWarning, match="ran past"):
        timed_out = converters.from_onnx(slow_model(), probe_timeout=0.02)
    assert timed_out.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_TIMEOUT
    with pytest.warns(UserWarning, match="activations larger"):
        big = converters.from_onnx(cnn[2], max_activation_bytes=10)
    assert big.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_SKIPPED
    full = converters.from_onnx(cnn[2])
    np.testing.assert_array_equal(static.nodes[:, schema.NODE_WEIGHT_PROJ], full.nodes[:, schema.NODE_WEIGHT_PROJ])


def test_probe_inputs_depend_on_position_and_shape_not_names(cnn):
    from hnn_jax.converters.canonical import prepare
    from hnn_jax.converters.probe import probe_inputs

    a = probe_inputs(prepare(cnn[2]))
    b = probe_inputs(prepare(transforms.rename_and_shuffle(cnn[2])))
    assert len(a) == len(b) == 1
    np.testing.assert_array_equal(next(iter(a.values())), next(iter(b.values())))


def test_import_does_not_load_torch_or_tensorflow():
    code = ("import sys, hnn_jax, hnn_jax.converters; "
            "print('torch' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_file_named_keras_that_is_not_a_zip_is_corrupt_not_missing(tmp_path):
    from hnn_jax import CorruptFileError

    path = tmp_path / "bad.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(CorruptFileError, match="not a .keras file: a .keras file is a zip archive"):
        converters.from_file(path)


def test_dynamo_export_writes_nothing_on_stderr_and_keeps_the_logger_level(capfd):
    import logging

    import torch

    from hnn_jax.converters import export

    level = logging.getLogger("torch.onnx").level
    export.torch_to_onnx(torch.nn.Linear(4, 2), torch.randn(1, 4), dynamo=True)
    assert capfd.readouterr().err == ""  # no "torchvision is not installed" lines
    assert logging.getLogger("torch.onnx").level == level
    assert first_line(ValueError("")) == "ValueError"
