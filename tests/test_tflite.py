""".tflite files (converters.from_tflite, from_file): the graph and code of the Keras model they
were converted from; sparse weights densified; custom ops refused by name."""

import numpy as np
import pytest

import hnn_jax
from hnn_jax import converters
from hnn_jax.errors import CorruptFileError, UnsupportedModelError
from hnn_jax.testing import models


def to_tflite(model, path, sparse=False):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    path.write_bytes(converter.convert())
    return path


@pytest.mark.parametrize("build", [models.keras_cnn_sequential, models.keras_functional])
def test_a_tflite_file_hashes_like_the_keras_model_it_was_converted_from(tmp_path, build):
    model = build(0)
    path = to_tflite(model, tmp_path / "model.tflite")
    from_tflite, from_keras = converters.from_file(path), converters.from_keras(model)
    a, b = hnn_jax.hash(from_keras), hnn_jax.hash(from_tflite)
    assert a.distances(b).architecture == 0
    assert a.distances(b).weights <= 1
    assert a.relation(b)[0] == "same-model"
    assert a.distances(hnn_jax.hash(converters.from_keras(build(1)))).weights > 40  # another init is far


def test_sparse_weights_are_densified(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(8)])
    dense = model.layers[0]
    kernel = dense.kernel.numpy()
    kernel[np.random.default_rng(0).random(kernel.shape) < 0.9] = 0  # 90 % zeros: stored sparse
    dense.kernel.assign(kernel)
    path = to_tflite(model, tmp_path / "sparse.tflite", sparse=True)
    from hnn_jax.converters.export import _tflite_opcodes

    assert "DENSIFY" in _tflite_opcodes(path.read_bytes())
    a, b = hnn_jax.hash(converters.from_keras(model)), hnn_jax.hash(converters.from_tflite(path))
    assert a.distances(b).architecture == 0 and a.distances(b).weights <= 1


def test_custom_ops_are_refused_by_name(tmp_path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
    def f(x):
        return tf.math.special.bessel_i0(x) + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.allow_custom_ops = True
    path = tmp_path / "custom.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(UnsupportedModelError, match="custom ops .*BesselI0"):
        converters.from_file(path)


def test_a_file_that_is_not_tflite_is_a_corrupt_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptFileError, match="not a TFLite file"):
        converters.from_file(path)
