"""Mutated .keras, .pt2 and SavedModel inputs (issue 18): converters.from_file gives a graph or an
HNNError, nothing else. Each format is written once from a small model, then damaged in seeded
ways: bytes flipped, the file cut short, one member of the archive damaged and the archive
rewritten, a member dropped."""

import io
import shutil
import zipfile

import numpy as np
import pytest

from hnn_jax import HNNError, converters

pytestmark = pytest.mark.fuzz

CASES = 12  # per format and kind of damage


def _keras_file(folder):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    path = folder / "model.keras"
    model.save(path)
    return path


def _pt2_file(folder):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    path = folder / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 8),)), path)
    return path


def _saved_model(folder):
    import tensorflow as tf

    class Small(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.nn.relu(tf.matmul(x, self.w))

    path = folder / "saved"
    tf.saved_model.save(Small(), str(path))
    return path


def _flip(data: bytes, rng) -> bytes:
    out = bytearray(data)
    for i in rng.integers(0, len(out), size=max(1, len(out) // 500)):
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


def _damage_archive(data: bytes, rng, drop: bool) -> bytes:
    """One member of a zip archive damaged (or dropped), the archive rewritten."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    names = sorted(members)
    victim = names[int(rng.integers(len(names)))]
    if drop:
        del members[victim]
    else:
        members[victim] = _flip(members[victim], rng)[: int(rng.integers(0, len(members[victim]) + 1))]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buffer.getvalue()


def _mutants(data: bytes, archive: bool):
    rng = np.random.default_rng(0)
    for _ in range(CASES):
        yield "flip", _flip(data, rng)
        yield "cut", data[: int(rng.integers(0, len(data)))]
        if archive:
            yield "member", _damage_archive(data, rng, drop=False)
            yield "drop", _damage_archive(data, rng, drop=True)


def _check(path):
    try:
        converters.from_file(path)
    except HNNError:
        pass


@pytest.mark.parametrize("write", [_keras_file, _pt2_file], ids=["keras", "pt2"])
def test_damaged_archives_give_a_graph_or_an_hnn_error(write, tmp_path):
    original = write(tmp_path)
    data = original.read_bytes()
    for i, (kind, mutant) in enumerate(_mutants(data, archive=True)):
        path = tmp_path / f"m{i}{original.suffix}"
        path.write_bytes(mutant)
        try:
            _check(path)
        except Exception as e:  # noqa: BLE001 - the contract under test
            pytest.fail(f"{kind} mutant {i}: {type(e).__name__}: {e}")


def test_damaged_saved_models_give_a_graph_or_an_hnn_error(tmp_path):
    original = _saved_model(tmp_path)
    data = (original / "saved_model.pb").read_bytes()
    for i, (kind, mutant) in enumerate(_mutants(data, archive=False)):
        copy = tmp_path / f"m{i}"
        shutil.copytree(original, copy)
        (copy / "saved_model.pb").write_bytes(mutant)
        try:
            _check(copy)
        except Exception as e:  # noqa: BLE001 - the contract under test
            pytest.fail(f"{kind} mutant {i}: {type(e).__name__}: {e}")
    copy = tmp_path / "novars"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "variables")
    _check(copy)
