"""Hugging Face snapshots (config.json + safetensors shards) hashed without materialising the
model give the code of the same model materialised in torch and exported the ordinary way."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
import transformers

import hnn_jax
from hnn_jax import CorruptFileError, UnsupportedModelError, converters
from hnn_jax.converters import snapshot

pytestmark = pytest.mark.integration

SEQ = 16


def _save(model, folder, shard):
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
    shards = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
    assert len(shards) >= 3, shards  # several shards: weights are found across files
    return folder


def _tiny_llama(seed, layers, tied):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                      max_position_embeddings=64, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """Tied embeddings (lm_head.weight is not in the checkpoint), rotary inv_freq buffers."""
    return _save(_tiny_llama(0, layers=2, tied=True), tmp_path_factory.mktemp("llama"), "10KB")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """An encoder: token types, position-id buffers, the MLM decoder tied to the embeddings."""
    torch.manual_seed(1)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=128, max_position_embeddings=64)
    return _save(transformers.BertForMaskedLM(config), tmp_path_factory.mktemp("bert"), "10KB")


@pytest.fixture(scope="module")
def llama_bf16_dir(tmp_path_factory):
    """Weights stored in bfloat16: the graph reads them through a Cast to float32."""
    return _save(_tiny_llama(2, layers=1, tied=False).to(torch.bfloat16), tmp_path_factory.mktemp("bf16"), "4KB")


def ordinary(folder, inputs):
    """The model materialised in torch (from_pretrained, float32), exported with the same
    exporter settings, weights as ordinary initializers, then converted by from_onnx."""
    config = transformers.AutoConfig.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(transformers, config.architectures[0]).from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            program = torch.export.export(model, (), inputs, strict=False)
            proto = torch.onnx.export(program, dynamo=True, optimize=False, verbose=False).model_proto
    assert any(t.name.endswith("q_proj.weight") or t.name.endswith("query.weight") for t in proto.graph.initializer)
    return converters.from_onnx(proto)


def ids(*extra):
    inputs = {"input_ids": torch.arange(SEQ).reshape(1, SEQ) % 7,
              "attention_mask": torch.ones(1, SEQ, dtype=torch.long)}
    inputs.update({k: torch.zeros(1, SEQ, dtype=torch.long) for k in extra})
    return inputs


@pytest.mark.parametrize("name, inputs, convert", [
    ("llama_dir", dict(ids(), use_cache=False), converters.from_snapshot),
    ("bert_dir", ids("token_type_ids"), converters.from_file),  # from_file dispatches a snapshot folder
    ("llama_bf16_dir", dict(ids(), use_cache=False), converters.from_snapshot)])
def test_snapshot_equals_ordinary_conversion(name, inputs, convert, request):
    """Bit for bit: both graphs hold the same float32 values (bf16 widened exactly) in the same
    canonical order, so every feature is computed from identical numbers in identical order and
    np.array_equal (not allclose) is the right test; any difference is a real mismatch (the
    weights are read from the shards: the ordinary model has them from from_pretrained)."""
    folder = request.getfixturevalue(name)
    g = convert(folder)
    reference = ordinary(folder, inputs)
    assert g.globals[0, hnn_jax.schema.GLOBAL_PROBE] == hnn_jax.schema.PROBE_OK  # small: the probe ran
    for field in ("nodes", "edges", "senders", "receivers", "globals", "n_node", "n_edge"):
        assert np.array_equal(getattr(g, field), getattr(reference, field)), field
    a, b = hnn_jax.hash([g, reference])
    assert a - b == 0 and str(a) == str(b)


def test_pickled_weights_are_refused(tmp_path, llama_dir):
    shutil.copy(llama_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle: must not be opened
    for convert in (converters.from_snapshot, converters.from_file):
        with pytest.raises(UnsupportedModelError, match="never unpickled.*safe_serialization=True"):
            convert(tmp_path)


def test_corrupt_snapshots(tmp_path, llama_dir):
    def copy(name):
        folder = tmp_path / name
        shutil.copytree(llama_dir, folder)
        return folder, sorted(folder.glob("*.safetensors"))

    folder, shards = copy("truncated")
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        converters.from_snapshot(folder)

    folder, shards = copy("garbage")
    shards[0].write_bytes(os.urandom(4096))
    with pytest.raises(CorruptFileError, match=shards[0].name):
        converters.from_snapshot(folder)

    folder, shards = copy("missing")
    shards[-1].unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        converters.from_snapshot(folder)

    folder, _ = copy("no_config")
    (folder / "config.json").unlink()
    with pytest.raises(UnsupportedModelError, match="neither a TensorFlow SavedModel"):  # nor a snapshot
        converters.from_file(folder)
    with pytest.raises(CorruptFileError, match="config.json"):
        converters.from_snapshot(folder)


def test_hub_cache_links(tmp_path, llama_dir):
    """The Hugging Face cache links snapshots/<rev>/*.safetensors to ../../blobs/: followed there
    (data read from the repository folder), refused when a link leaves it."""
    repo = tmp_path / "models--tiny"
    (repo / "blobs").mkdir(parents=True)
    rev = repo / "snapshots" / "abc"
    rev.mkdir(parents=True)
    for p in llama_dir.iterdir():
        blob = repo / "blobs" / f"blob_{p.name}"
        shutil.copy(p, blob)
        (rev / p.name).symlink_to(os.path.relpath(blob, rev))
    data_folder, tensors = snapshot.read_shards(rev)
    assert data_folder == repo.resolve() and all(t["location"].startswith("blobs/") for t in tensors.values())
    outside = tmp_path / "elsewhere.safetensors"
    shard = next(rev.glob("*.safetensors"))
    shutil.copy(shard, outside)
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(CorruptFileError, match="outside the snapshot"):
        converters.from_snapshot(rev)


def test_bad_config_is_unsupported(tmp_path, llama_dir):
    for p in llama_dir.iterdir():
        shutil.copy(p, tmp_path / p.name)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="no_such_model_type", architectures=["pipeline"])  # not a model class
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="config.json"):
        converters.from_snapshot(tmp_path)
