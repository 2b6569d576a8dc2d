"""Transformers models as inputs (converters.from_transformers) and the zoo's transformers source:
tiny models built from configs, no downloads."""

import json

import numpy as np
import pytest

import hnn_jax
from hnn_jax import converters, schema
from hnn_jax.training import zoo
from hnn_jax.errors import UnsupportedModelError

pytestmark = pytest.mark.integration

pytest.importorskip("transformers")


@pytest.mark.parametrize("model_type", ["bert", "llama", "t5", "vit", "wav2vec2"])
def test_every_modality_exports_with_the_inputs_its_task_needs(model_type):
    """Token ids and mask, decoder ids for an encoder-decoder, pixels at the config's image size,
    raw audio: each gets a probed graph whose canonical ops hold the model's parameters."""
    model, _ = zoo.transformers_model(model_type, zoo.TRANSFORMERS_SIZES[0], seed=0)
    graph = converters.from_transformers(model)
    assert graph.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK
    ops = {schema.OPS[int(i)] for i in graph.nodes[:, schema.NODE_OP]}
    assert "linear" in ops or "conv" in ops
    assert "unknown" not in ops


def test_a_built_model_and_its_snapshot_folder_give_one_learned_code(tmp_path):
    """from_transformers(model) (the built model's export) and from_transformers(folder) (the
    meta-device export, weights read from safetensors) give the same learned bits. (The snapshot's
    export builds the attention mask once per layer; canonical.merge_duplicates makes it one.)"""
    from hnn_jax.hasher import default_hasher

    model, _ = zoo.transformers_model("bert", zoo.TRANSFORMERS_SIZES[1], seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    built, saved = (hnn_jax.hash(converters.from_transformers(x)) for x in (model, tmp_path))
    learned = default_hasher().config.learned_bits
    assert np.array_equal(built.bits[:learned], saved.bits[:learned])


def test_a_failed_trace_prints_nothing_to_standard_output(capfd):
    """FNet's FFT fails the TorchScript exporter, which then prints its whole IR graph from C++
    before dynamo takes over; none of it may reach standard output (`hnn-jax hash --json` reads it)."""
    model, _ = zoo.transformers_model("fnet", zoo.TRANSFORMERS_SIZES[0], seed=0)
    print("before")
    graph = converters.from_transformers(model)
    print("after")
    assert graph.globals[0, schema.GLOBAL_PROBE] == schema.PROBE_OK
    assert capfd.readouterr().out == "before\nafter\n"


def test_not_a_model_is_refused():
    with pytest.raises(UnsupportedModelError, match="PreTrainedModel"):
        converters.from_transformers(object())


def test_sizes_change_the_architecture_not_the_family():
    """The zoo's sizes give different graphs of one model type, and held_out names the held-out
    types and the evaluation size of the others."""
    sizes = zoo.TRANSFORMERS_SIZES
    archs = {zoo.transformers_arch("gpt2", s) for s in sizes}
    assert len(archs) == len(sizes)
    parents = zoo.plan(["transformers"], inits=2, transformers_types=["gpt2", "opt"])
    assert {p.family for p in parents} == {"gpt2", "opt"}
    rows = [dict(source=p.source, family=p.family, arch=p.arch) for p in parents]
    held = [zoo.held_out(r) for r in rows]
    assert all(h for r, h in zip(rows, held) if r["family"] == "opt")  # a held-out type, every size
    eval_arch = zoo.transformers_arch("gpt2", sizes[zoo.TRANSFORMERS_TRAIN_SIZES])
    assert [r["arch"] == eval_arch for r in rows if r["family"] == "gpt2"] == \
        [h for r, h in zip(rows, held) if r["family"] == "gpt2"]
    eval_seeds = {p.seed for p in parents if p.arch == eval_arch}
    assert eval_seeds == set(zoo.TRANSFORMERS_EVAL_SEEDS)  # initialisations training never saw
    assert zoo.TRANSFORMERS_HELD_OUT <= set(zoo.TRANSFORMERS_MODALITY)
    assert zoo.TRANSFORMERS_VALIDATION <= set(zoo.TRANSFORMERS_MODALITY) - zoo.TRANSFORMERS_HELD_OUT
    assert zoo.validation(dict(source="transformers", family="bloom", arch="x"))
    assert not zoo.validation(dict(source="transformers", family="gpt2", arch="x"))


def test_zoo_builds_a_transformers_parent_with_its_derivatives(tmp_path):
    parent = zoo.Parent("transformers", "llama", zoo.transformers_arch("llama", zoo.TRANSFORMERS_SIZES[0]), 0,
                        {"size": list(zoo.TRANSFORMERS_SIZES[0])}, ("original", "fp16", "finetune"))
    import warnings

    filters = list(warnings.filters)
    stats = zoo.build(tmp_path, [parent], workers=1, progress=False)
    assert stats == dict(built=1, skipped=0, incomplete=0, failed=0), (tmp_path / "errors.jsonl").read_text()
    assert warnings.filters == filters  # built in this process: the warning filters are as they were
    rows = zoo.read_manifest(tmp_path)
    assert [r["transform"] for r in rows] == ["original", "fp16", "finetune"]
    graphs, _ = zoo.load(tmp_path)
    codes = {r["transform"]: c for r, c in zip(rows, hnn_jax.hash(graphs))}
    assert codes["original"] - codes["fp16"] <= 2
    assert json.loads((tmp_path / "plan.json").read_text())[0]["family"] == "llama"
    assert np.isfinite(np.concatenate([g.nodes for g in graphs])).all()


def test_one_graph_under_two_names_is_one_family(tmp_path):
    """zoo.TRANSFORMERS_SAME_GRAPH: Mistral at a zoo size is Llama's graph as the learned bits read
    it, so zoo.load names both llama and keeps the type; no merged name is held out or validation."""
    from hnn_jax.model import WEIGHT_DEPENDENT_COLUMNS

    size = zoo.TRANSFORMERS_SIZES[0]
    parents = [zoo.Parent("transformers", t, zoo.transformers_arch(t, size), 0, {"size": list(size)}, ("original",))
               for t in ("llama", "mistral")]
    assert zoo.build(tmp_path, parents, workers=1, progress=False)["built"] == 2
    graphs, rows = zoo.load(tmp_path)
    assert [(r["family"], r.get("model_type")) for r in rows] == [("llama", None), ("llama", "mistral")]
    learned = [np.asarray(g.nodes).copy() for g in graphs]
    for nodes in learned:
        nodes[:, WEIGHT_DEPENDENT_COLUMNS] = 0
    assert np.array_equal(*learned) and np.array_equal(graphs[0].senders, graphs[1].senders)
    merged = set(zoo.TRANSFORMERS_SAME_GRAPH) | set(zoo.TRANSFORMERS_SAME_GRAPH.values())
    assert merged <= set(zoo.TRANSFORMERS_MODALITY)
    assert not merged & (zoo.TRANSFORMERS_HELD_OUT | zoo.TRANSFORMERS_VALIDATION)
