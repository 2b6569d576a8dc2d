"""GGUF files (converters.from_gguf): a quantised llama.cpp file traced to its source checkpoint."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

import hnn_jax
from hnn_jax import converters
from hnn_jax.errors import CorruptFileError
from hnn_jax.testing import models


@pytest.fixture(scope="module")
def llama_files(tmp_path_factory):
    """A tiny Llama as an fp16 safetensors snapshot and as GGUF F16, Q8_0 and Q4_0 (written as
    llama.cpp's converter writes them: renamed, query and key rows permuted), and three
    independent bases of the same architecture as snapshots."""
    root = tmp_path_factory.mktemp("gguf")
    source = models.tiny_llama(0)
    source.half().save_pretrained(root / "source")
    source.float()
    files = {q: root / f"source-{q}.gguf" for q in ("F16", "Q8_0", "Q4_0")}
    for quantisation, path in files.items():
        models.write_llama_gguf(source, path, quantisation)
    for seed in (1, 2, 3):
        models.tiny_llama(seed).half().save_pretrained(root / f"base{seed}")
    return root, files


@pytest.mark.slow
def test_gguf_files_of_a_checkpoint_are_its_same_model_and_no_other_bases(llama_files):
    root, files = llama_files
    source = converters.from_snapshot(root / "source")
    bases = [converters.from_snapshot(root / f"base{seed}") for seed in (1, 2, 3)]
    quantised = [converters.from_file(path) for path in files.values()]
    codes = hnn_jax.hash([source, *bases, *quantised])
    source_code, base_codes, file_codes = codes[0], codes[1:4], codes[4:]
    for name, code in zip(files, file_codes):
        d = code.distances(source_code)
        assert d.architecture == 0, (name, d)
        assert code.relation(source_code)[0] == "same-model", (name, d)
        for base in base_codes:
            assert code.relation(base)[0] != "same-model", (name, code.distances(base))
            assert code.distances(base).weights > 3 * max(d.weights, 4), (name, d, code.distances(base))


def test_the_llama_cpp_permutation_is_undone(llama_files):
    """The query and key rows the file holds permuted come back in the checkpoint's order: the
    F16 file's graph, probe activations included (rotary pairs up rows, so permuted rows compute
    other attention scores), is the fp16 snapshot's. The weight columns alone could not tell:
    they do not move when rows are renumbered (features.unit_sets)."""
    root, files = llama_files
    a = converters.from_snapshot(root / "source")
    b = converters.from_file(files["F16"])
    assert a.nodes.shape == b.nodes.shape
    np.testing.assert_allclose(np.asarray(a.nodes), np.asarray(b.nodes), atol=1e-4)


def test_a_file_without_the_gguf_magic_is_corrupt(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGML" + bytes(64))
    with pytest.raises(CorruptFileError, match="not a GGUF file"):
        converters.from_file(path)
