"""Quantised LLM files traced to their source checkpoint: GGUF files (converters.from_gguf) and
GPTQ / AWQ safetensors snapshots (converters.from_snapshot, quantized.py)."""

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
    """A tiny Llama as an fp16 safetensors snapshot, as GGUF F16, Q8_0 and Q4_0 (written as
    llama.cpp's converter writes them: renamed, query and key rows permuted), as 4-bit GPTQ and
    AWQ snapshots, and three independent bases of the same architecture as snapshots."""
    root = tmp_path_factory.mktemp("gguf")
    source = models.tiny_llama(0)
    source.half().save_pretrained(root / "source")
    source.float()
    files = {q: root / f"source-{q}.gguf" for q in ("F16", "Q8_0", "Q4_0")}
    for quantisation, path in files.items():
        models.write_llama_gguf(source, path, quantisation)
    for method in ("gptq", "awq"):
        models.write_quantized_snapshot(source, root / method, method)
        files[method] = root / method
    for seed in (1, 2, 3):
        models.tiny_llama(seed).half().save_pretrained(root / f"base{seed}")
    return root, files


@pytest.mark.slow
def test_quantised_files_of_a_checkpoint_are_its_same_model_and_no_other_bases(llama_files):
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_gptq_snapshot_dequantises_to_its_source_weights(llama_files):
    """The dequantised query projection is the source's to within half a quantisation step."""
    import json

    from hnn_jax.converters import quantized, snapshot

    root, files = llama_files
    data, shards = snapshot.read_shards(files["gptq"])
    config = json.loads((files["gptq"] / "config.json").read_text())["quantization_config"]
    prefix = "model.layers.0.self_attn.q_proj"
    parts = {p: quantized._read(data, shards[f"{prefix}.{p}"]) for p in ("qweight", "qzeros", "scales", "g_idx")}
    weight = quantized.dequantize(parts, config)
    source = models.tiny_llama(0).model.layers[0].self_attn.q_proj.weight.detach().numpy()
    step = np.repeat(np.asarray(parts["scales"], np.float32), 32, axis=0).T  # [out, in]
    assert weight.shape == source.shape
    assert np.all(np.abs(weight - source) <= 0.5 * step + 1e-3 * np.abs(source) + 1e-6)


def test_a_snapshot_of_an_unread_quantisation_method_is_refused(tmp_path):
    import json

    from hnn_jax.errors import UnsupportedModelError

    models.tiny_llama(0).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="'bitsandbytes' are not read"):
        converters.from_snapshot(tmp_path)


@pytest.mark.slow
def test_a_gguf_tensor_read_in_row_blocks_gives_the_same_graph(llama_files, monkeypatch):
    """Large tensors are dequantised a block of rows at a time (gguf.CHUNK_ROWS_VALUES): with tiny
    blocks, every matrix but the query and key ones (which llama.cpp permuted as a whole) is cut,
    and the graph is the one read whole."""
    from hnn_jax.converters import gguf

    root, files = llama_files
    whole = converters.from_file(files["Q8_0"])
    monkeypatch.setattr(gguf, "CHUNK_ROWS_VALUES", 256)
    blocks = converters.from_file(files["Q8_0"])
    np.testing.assert_array_equal(np.asarray(whole.nodes), np.asarray(blocks.nodes))


@pytest.mark.slow
def test_a_gguf_whose_processor_transposes_matrices_is_read_whole_where_row_blocks_would_break(
        tmp_path, monkeypatch):
    """transformers' GPT-2 tensor processor transposes the matrices llama.cpp transposed: a block
    of rows would come back as columns, so such a tensor is read whole (its first row shows it),
    and with tiny blocks the graph is the one read whole, the checkpoint's own weights."""
    from hnn_jax.converters import gguf

    path = tmp_path / "tiny-gpt2.gguf"
    models.write_gpt2_gguf(models.tiny_gpt2(0), path)
    whole = converters.from_file(path)
    monkeypatch.setattr(gguf, "CHUNK_ROWS_VALUES", 256)
    blocks = converters.from_file(path)
    np.testing.assert_array_equal(np.asarray(whole.nodes), np.asarray(blocks.nodes))
