"""Zoo, training and evaluation on a tiny generated zoo, on 4 virtual CPU devices."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hnn_jax.training import evaluate, train, zoo
from hnn_jax.config import HasherConfig
from hnn_jax.testing.synthetic import random_graph

TRANSFORMS = ("original", "fp16", "noise", "prune30")


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo")
    parents = zoo.plan(["generated"], archs_per_family=2, inits=2, transforms=TRANSFORMS,
                       families=("mlp", "cnn", "rnn"))
    stats = zoo.build(path, parents, workers=1, progress=False)
    assert stats == dict(built=len(parents), skipped=0, incomplete=0, failed=0)
    return path


def config(**overrides):
    base = dict(hasher=HasherConfig(bits=32, hidden=32, layers=2, instance_bits=8), steps=40, families_per_batch=3,
                archs_per_family=2, parents_per_arch=2, variants_per_parent=2, learning_rate=3e-3,
                warmup_steps=4, checkpoint_every=4, log_every=2)
    base.update(overrides)
    return train.TrainConfig(**base)


def test_tiny_zoo_has_labelled_graphs_and_resumes(tiny_zoo):
    graphs, rows = zoo.load(tiny_zoo)
    assert len(graphs) == len(rows) == 3 * 2 * 2 * len(TRANSFORMS)
    assert {r["family"] for r in rows} == {"mlp", "cnn", "rnn"}
    assert {r["transform"] for r in rows} == set(TRANSFORMS)
    assert all(r["probe"] == 1.0 for r in rows)
    assert len({r["arch"] for r in rows}) == 6 and len({r["parent"] for r in rows}) == 12
    again = zoo.build(tiny_zoo, zoo.plan(["generated"], archs_per_family=2, inits=2, transforms=TRANSFORMS,
                                         families=("mlp", "cnn", "rnn")), workers=1, progress=False)
    assert again == dict(built=0, skipped=12, incomplete=0, failed=0)


def _failing_prune(*args, **kwargs):
    raise RuntimeError("pruning failed")


def _unconvertible_prune(*args, **kwargs):
    import onnx

    return onnx.ModelProto()  # made, but the converter refuses it


@pytest.mark.parametrize("prune, error", [
    (_failing_prune, "RuntimeError: pruning failed"),
    (_unconvertible_prune, "CorruptFileError: the ONNX model has no graph nodes")])
def test_a_parent_without_one_derivative_counts_as_incomplete_and_a_resume_retries_it(tmp_path, monkeypatch,
                                                                                        prune, error):
    """A derivative that cannot be made, or made but not converted, leaves the parent without it."""
    from hnn_jax.training import variants

    parents = zoo.plan(["generated"], archs_per_family=1, inits=1, transforms=("original", "fp16", "prune30"),
                       families=("mlp",))
    monkeypatch.setattr(variants, "prune", prune)
    assert zoo.build(tmp_path, parents, workers=1, progress=False) == dict(built=0, skipped=0, incomplete=1,
                                                                            failed=0)
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [e["transform"] for e in errors] == ["prune30"] and error in errors[0]["error"], errors
    assert [r["transform"] for r in zoo.read_manifest(tmp_path)] == ["original", "fp16"]
    monkeypatch.undo()
    assert zoo.build(tmp_path, parents, workers=1, progress=False) == dict(built=1, skipped=0, incomplete=0,
                                                                            failed=0)
    assert [r["transform"] for r in zoo.read_manifest(tmp_path)] == ["original", "fp16", "prune30"]


def test_sampler_covers_every_relation_level(tiny_zoo):
    data = train.Dataset(*zoo.load(tiny_zoo))
    cfg = config()
    idx = data.sample(cfg, 7)
    assert len(idx) == cfg.batch_size and np.array_equal(idx, data.sample(cfg, 7))
    assert set(np.unique(data.levels(idx))) == {0, 1, 2}  # as the architecture part sees them
    rows = [data.rows[i] for i in idx]
    assert len({r["parent"] for r in rows}) < len({(r["parent"], r["transform"]) for r in rows})  # derivatives
    assert len({r["arch"] for r in rows}) < len({r["parent"] for r in rows})  # and other inits


def test_neighbour_families_put_close_relatives_in_one_batch():
    """With neighbour_families, part of each batch is drawn among the structurally nearest
    families of the others: a family that differs from another by one node's op is the other's
    nearest, and every batch holds, for each neighbour-drawn family, a family it neighbours."""
    from hnn_jax.testing.synthetic import random_graph

    base = random_graph(0, 60)
    near = base._replace(nodes=base.nodes.copy())
    near.nodes[30, 0] = (near.nodes[30, 0] + 1) % 20
    graphs = [base, near] + [random_graph(seed, 60) for seed in range(1, 9)]
    rows = [dict(id=f"g{i}", family=f"f{i}", arch=f"a{i}", parent=f"p{i}", transform="original") for i in range(10)]
    data = train.Dataset(graphs, rows)
    assert data.neighbours["f0"][0] == "f1" and data.neighbours["f1"][0] == "f0"
    assert all(len(n) == train.NEIGHBOURS and f not in n for f, n in data.neighbours.items())

    cfg = config(families_per_batch=3, neighbour_families=1, archs_per_family=1, parents_per_arch=1,
                 variants_per_parent=1)
    for step in range(40):
        families = [data.rows[i]["family"] for i in data.sample(cfg, step)]
        assert len(families) == cfg.batch_size == 3
        assert families[2] in data.neighbours[families[0]] + data.neighbours[families[1]]
    # the families drawn at random are those a batch without neighbours draws, so neighbour_families=0
    # keeps the batches the shipped weights were trained on
    plain = dataclasses.replace(cfg, families_per_batch=2, neighbour_families=0)
    assert np.array_equal(data.sample(cfg, 5)[:2], data.sample(plain, 5))
    with pytest.raises(ValueError, match="neighbour_families"):
        config(families_per_batch=3, neighbour_families=3)


def test_distinct_picks_fill_a_batch_with_distinct_graphs(tiny_zoo):
    """One graph per family (as transformers, timm and keras architectures are in the zoos): the
    default sampler repeats it in 8 slots of a batch; distinct_picks fills them with more families.
    Where derivatives exist (the generated zoo) every relation level stays in the batch."""
    from hnn_jax.testing.synthetic import random_graph

    single = train.Dataset([random_graph(seed, 30) for seed in range(20)],
                           [dict(id=f"g{i}", family=f"f{i}", arch=f"a{i}", parent=f"p{i}") for i in range(20)])
    cfg = config(families_per_batch=2, distinct_picks=True)
    assert cfg.batch_size == 16
    for step in range(5):
        assert len(np.unique(single.sample(dataclasses.replace(cfg, distinct_picks=False), step))) == 2
        idx = single.sample(cfg, step)
        assert len(idx) == 16 and len(np.unique(idx)) == 16 and np.array_equal(idx, single.sample(cfg, step))
    small = config(families_per_batch=8, distinct_picks=True)  # 64 slots, 20 graphs: repeats, but full
    assert len(single.sample(small, 0)) == 64 and len(np.unique(single.sample(small, 0))) == 20

    data = train.Dataset(*zoo.load(tiny_zoo))
    idx = data.sample(config(distinct_picks=True), 3)
    assert len(np.unique(idx)) == len(idx) == 24
    assert set(np.unique(data.levels(idx))) == {0, 1, 2}  # as the architecture part sees them
    rows = [data.rows[i] for i in idx]
    assert len({r["parent"] for r in rows}) < len({(r["parent"], r["transform"]) for r in rows})  # derivatives
    assert len({r["arch"] for r in rows}) < len({r["parent"] for r in rows})  # and other inits


@pytest.mark.slow
def test_training_on_4_devices_lowers_the_loss_and_orders_relations(tiny_zoo, tmp_path):
    assert jax.device_count() == 4
    data = train.Dataset(*zoo.load(tiny_zoo))
    trainer = train.Trainer(config(), data, tmp_path, progress=False)
    assert trainer.n_devices == 4
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([m["total"] for m in log[:3]]), np.mean([m["total"] for m in log[-3:]])
    assert last < 0.8 * first, (first, last)
    assert log[-1]["devices"] == 4 and log[-1]["compiles"] <= 4
    bits = np.stack([c.bits for c in trainer.hasher().hash(data.graphs)])
    groups = evaluate.relation_distances(bits, data.rows)
    variants = groups["same model (derivative)"].mean()
    inits = groups["same architecture, other init"].mean()
    families = groups["other family"].mean()
    assert variants + 2 < families, (variants, families)
    assert variants + 1 < inits, (variants, inits)  # the instance bits tell initialisations apart


def test_eval_measures_the_architecture_bands_and_saves_them_in_the_checkpoint(tiny_zoo, tmp_path, capsys):
    """A user-trained hasher gets its own architecture bands from `hnn-jax eval --save-thresholds`,
    and the weight part's bands of the shipped hasher (no network computes that part); its codes
    then read them (and the shipped hasher's architecture bands are not used)."""
    from hnn_jax import cli
    from hnn_jax.hashcode import NoThresholdsError, shipped_weight_bands
    from hnn_jax.hasher import Hasher

    hasher = Hasher.init(HasherConfig(bits=256, hidden=16, layers=1, instance_bits=208), seed=5)
    hasher.save(tmp_path / "hasher")
    a, b = hasher.hash([random_graph(1, 30), random_graph(2, 40)])
    with pytest.raises(NoThresholdsError, match="no relation bands are known"):
        a.relation(b)
    assert cli.main(["eval", str(tiny_zoo), "-o", str(tmp_path / "out"), "--hasher", str(tmp_path / "hasher"),
                     "--save-thresholds", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "architecture part's bands" in out and "same model (derivative)" in out
    loaded = Hasher.load(tmp_path / "hasher")
    assert loaded.version == hasher.version and loaded.relations.weights == shipped_weight_bands()
    arch = loaded.relations.architecture
    assert len(arch) == 3 and arch[1] <= arch[2] and arch[0] <= arch[2] <= 48
    a, b = loaded.hash([random_graph(1, 30), random_graph(2, 40)])
    assert a.relation(a)[0] == "same-model" and a.relation(b)[0] in ("same-architecture", "same-family", "unrelated")
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert tuple(summary["architecture_bands"]) == arch
    called = summary["verdicts"]["256"]["same architecture, other init"]["called"]
    assert called["same-model"] == 0  # the tiny zoo's other initialisations are never the same model


@pytest.mark.slow
def test_members_are_trained_apart_and_their_bits_spliced(tiny_zoo, tmp_path):
    """members=2: two ordinary runs (seeds s and s+1) in workdir/member<i>; the saved hasher's
    learned bits are the first half of each member's, and a rerun resumes instead of training."""
    from hnn_jax.hasher import Hasher

    cfg = config(steps=6, seed=3, hasher=HasherConfig(bits=32, hidden=32, layers=2, instance_bits=8, members=2))
    trainers = train.train(tiny_zoo, tmp_path / "run", cfg, progress=False)
    assert [(t.config.seed, t.config.hasher.members, t.step) for t in trainers] == [(3, 1, 6), (4, 1, 6)]
    assert all((tmp_path / "run" / f"member{i}" / "metrics.jsonl").is_file() for i in (0, 1))
    graphs = zoo.load(tiny_zoo)[0]
    spliced = Hasher.load(tmp_path / "run" / "hasher")
    assert spliced.config.members == 2
    alone = [np.stack([c.bits for c in t.hasher().hash(graphs)]) for t in trainers]
    assert not np.array_equal(alone[0][:, :12], alone[1][:, :12])  # two seeds, two networks
    np.testing.assert_array_equal(np.stack([c.bits for c in spliced.hash(graphs)]),
                                  np.concatenate([alone[0][:, :12], alone[1][:, :12], alone[0][:, 24:]], axis=1))
    again = train.train(tiny_zoo, tmp_path / "run", cfg, progress=False)
    assert [t.step for t in again] == [6, 6]
    assert Hasher.load(tmp_path / "run" / "hasher").version == spliced.version
    with pytest.raises(ValueError, match="one network"):  # members are trained apart, never jointly
        train.Trainer(cfg, train.Dataset(*zoo.load(tiny_zoo)), tmp_path / "joint", progress=False)


CHILD = """
import jax, json, sys
jax.config.update("jax_num_cpu_devices", 4)
from hnn_jax.training import train, zoo
cfg = train.TrainConfig.from_dict(json.loads(sys.argv[3]))
train.Trainer(cfg, train.Dataset(*zoo.load(sys.argv[1])), sys.argv[2], progress=False).run()
"""


@pytest.mark.integration
def test_kill_and_resume_restores_the_same_step_and_parameters(tiny_zoo, tmp_path):
    cfg = config(steps=2000)  # far more than we let it run
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_zoo), str(killed),
                              json.dumps(cfg.to_dict())])
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(x)["step"] >= 10 for x in metrics.read_text().splitlines()):
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    data = train.Dataset(*zoo.load(tiny_zoo))
    resumed = train.Trainer(cfg, data, killed, progress=False)
    # the last checkpoint that finished writing before the kill (a half-written one is ignored)
    assert 4 <= resumed.step <= 12 and resumed.step % cfg.checkpoint_every == 0
    start = resumed.step
    resumed.run(stop_at=start + 4)
    reference = train.Trainer(cfg, data, tmp_path / "reference", progress=False)
    reference.run(stop_at=start + 4)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        resumed.state["params"], reference.state["params"])
    assert all(jax.tree.leaves(same))


def test_twins_are_labelled_like_their_keras_architecture():
    """timm builds of keras.applications models share the keras arch and family labels, so the
    sampler pairs them as "same architecture"."""
    twins = zoo.plan(["twins"], inits=1, transforms=("original",))
    keras = {p.arch: p for p in zoo.plan(["keras"], inits=1, transforms=("original",))}
    assert twins and all(t.arch in keras and t.family == keras[t.arch].family for t in twins)
    assert all(t.spec["timm"] != t.arch and t.name.startswith("twins.") for t in twins)
    rows = [dict(family=p.family, arch=p.arch, parent=p.name) for p in (twins[0], keras[twins[0].arch])]
    data = train.Dataset.__new__(train.Dataset)
    data.rows = rows
    assert data.levels(np.arange(2))[0, 1] == 0  # same architecture, another "initialisation"


def test_twins_leave_out_every_held_out_architecture():
    """By default no timm build of an evaluated torchvision architecture reaches training; the
    others (e.g. ResNet101, Xception) still teach that keras and timm builds are one architecture."""
    twins = {p.arch for p in zoo.plan(["twins"], inits=1, transforms=("original",))}
    held_out = {k for k, tv in zoo.KERAS_TORCHVISION_TWINS.items() if tv in zoo.TORCHVISION_MODELS}
    assert held_out and not twins & held_out
    assert {"ResNet101", "Xception", "MobileNet"} <= twins
    every = zoo.plan(["twins"], inits=1, transforms=("original",), twin_models=zoo.KERAS_TIMM_TWINS)
    assert {p.arch for p in every} == set(zoo.KERAS_TIMM_TWINS)
    # the timm source skips the same builds: every left-out twin is a known build of a held-out arch
    assert {zoo.KERAS_TIMM_TWINS[k] for k in held_out} <= zoo.TIMM_BUILDS_OF_HELD_OUT


@pytest.mark.slow
def test_training_never_sees_held_out_architectures_or_twin_queries(tiny_zoo, tmp_path):
    """train() leaves out what the evaluation uses, whichever zoo folders it is given: torchvision
    models, keras/timm/twins builds of their architectures, and the keras models the twins
    evaluation queries with; nor the validation split's transformers types. Other keras models
    (Xception) are trained on."""
    import shutil

    labels = [("keras", "resnet", "ResNet50"), ("keras", "resnet", "ResNet101"), ("timm", "resnet", "resnet50"),
              ("twins", "densenet", "DenseNet121"), ("torchvision", "resnet", "resnet18"),
              ("keras", "xception", "Xception"), ("twins", "resnet", "ResNet101"),
              ("transformers", "bloom", "bloom-L1-H32-A2-KV1-V128")]
    held = [zoo.held_out(dict(source=s, family=f, arch=a)) for s, f, a in labels]
    assert held == [True, True, True, True, True, False, False, False]
    held[-1] = zoo.validation(dict(source="transformers", family="bloom", arch=labels[-1][2]))
    other = tmp_path / "other"
    (other / "graphs").mkdir(parents=True)
    first = zoo.read_manifest(tiny_zoo)[0]
    with open(other / "manifest.jsonl", "w") as manifest:
        for source, family, arch in labels:
            gid = f"{source}.{arch}.s0.original"
            shutil.copy(tiny_zoo / "graphs" / f"{first['id']}.npz", other / "graphs" / f"{gid}.npz")
            manifest.write(json.dumps(dict(first, id=gid, source=source, family=family, arch=arch,
                                           parent=f"{source}.{arch}.s0")) + "\n")
    (trainer,) = train.train([tiny_zoo, other], tmp_path / "run", config(steps=2), progress=False)
    trained = {(r["source"], r["arch"]) for r in trainer.data.rows}
    assert ("keras", "Xception") in trained and ("twins", "ResNet101") in trained
    assert not trained & {(s, a) for (s, _, a), h in zip(labels, held) if h}
    assert len(trainer.data.rows) == len(zoo.read_manifest(tiny_zoo)) + 2


def test_keras_models_with_an_open_image_size_are_built_at_224():
    """keras.applications.MobileNetV3Small(weights=None) leaves its image size open; the
    converter would fill 32x32, far from the 224x224 of its torch twins."""
    model = zoo.keras_parent(zoo.Parent("keras", "mobilenet_v3", "MobileNetV3Small", 0, {}, ("original",)))
    assert model.input_shape == (None, 224, 224, 3)


def test_timm_family_splits_modules_that_mix_architecture_families():
    """timm files MnasNet, MobileNetV2 and EfficientNet in one module; torchvision and keras keep
    them apart, so those modules' families come from the model names."""
    fam = zoo.timm_family
    assert fam("mnasnet_small", "efficientnet") == fam("semnasnet_075", "efficientnet") == "mnasnet"
    assert fam("tf_efficientnet_lite0", "efficientnet") == fam("efficientnet_b2", "efficientnet")
    assert fam("gc_efficientnetv2_rw_t", "efficientnet") == fam("tf_efficientnetv2_b0", "efficientnet")
    assert fam("efficientnetv2_rw_t", "efficientnet") != fam("efficientnet_b0", "efficientnet")
    assert fam("lcnet_050", "mobilenetv3") == "lcnet" != fam("mobilenetv3_small_075", "mobilenetv3")
    # spelled like keras.applications' modules where the family is the same
    for timm_name, module, keras_name in [("mobilenetv2_035", "efficientnet", "MobileNetV2"),
                                          ("mobilenetv1_100", "efficientnet", "MobileNet"),
                                          ("mobilenetv3_small_075", "mobilenetv3", "MobileNetV3Small"),
                                          ("efficientnet_lite0", "efficientnet", "EfficientNetB0"),
                                          ("tf_efficientnetv2_b0", "efficientnet", "EfficientNetV2B0")]:
        assert fam(timm_name, module) == zoo.KERAS_MODELS[keras_name]
    assert fam("mobilenet_edgetpu_100", "efficientnet") != zoo.KERAS_MODELS["MobileNet"]
    assert fam("resnext26ts", "byobnet") == fam("repvgg_a0", "byobnet") == "byobnet"  # others: module
    assert fam("seresnext26d_32x4d", "resnet") == "resnet"


def test_unequal_families_across_label_sources_can_be_left_unrelated():
    rows = [dict(source="timm", family="lcnet", arch="lcnet_050", parent="a"),
            dict(source="keras", family="mobilenet_v2", arch="MobileNetV2", parent="b"),
            dict(source="twins", family="mobilenet_v2", arch="MobileNetV2", parent="c"),
            dict(source="keras", family="resnet", arch="ResNet50", parent="d")]
    data = train.Dataset.__new__(train.Dataset)
    data.rows = rows
    assert data.levels(np.arange(4))[0].tolist() == [0, 2, 2, 2]
    masked = data.levels(np.arange(4), cross_taxonomy_negatives=False)
    assert masked[0].tolist() == [0, -1, -1, -1]   # timm vs keras labels: no relation
    assert masked[1].tolist() == [-1, 0, 0, 2]     # twins share keras's labels


def test_config_round_trips_through_json():
    cfg = config(seed=5)
    assert train.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert dataclasses.replace(train.tiny_cpu()).batch_size == 8


@pytest.mark.integration
def test_zoo_train_eval_from_the_command_line(tmp_path):
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "hnn_jax.cli", *map(str, args)], capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    zoo_dir, run_dir, results = tmp_path / "zoo", tmp_path / "run", tmp_path / "results"
    cli("zoo", "build", zoo_dir, "--archs-per-family", 1, "--inits", 2, "--transforms", "original,fp16",
        "--workers", 1)
    assert "24 graphs, 12 parents" in cli("zoo", "info", zoo_dir)
    assert "trained 12 steps" in cli("train", zoo_dir, "-o", run_dir, "--config", "tiny")
    assert (run_dir / "hasher" / "hasher.json").exists()
    cli("train", zoo_dir, "-o", tmp_path / "run2", "--config", "tiny", "--steps", 2, "--distinct-picks",
        "--neighbour-families", 1)
    sampler = json.loads((tmp_path / "run2" / "config.json").read_text())["train"]
    assert sampler["distinct_picks"] is True and sampler["neighbour_families"] == 1
    table = cli("eval", zoo_dir, "-o", results, "--hasher", run_dir / "hasher", "--no-plots")
    assert "WL-subtree SimHash" in table
    summary = json.loads((results / "results.json").read_text())
    assert summary["graphs"] == 24 and 0 <= summary["results"]["hnn-jax"]["copy_map"] <= 1
    assert {"hnn-jax: architecture part (24 bits)", "hnn-jax: weight part (8 bits)"} <= set(summary["results"])
    # one architecture per family: no same-family pairs to set that threshold from, said so
    assert "relation bands: not measured" in table and "same family, other architecture" in table
    bad = subprocess.run([sys.executable, "-m", "hnn_jax.cli", "train", tmp_path / "nothing", "-o", run_dir],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a zoo" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "hnn_jax.cli", "train", zoo_dir, "-o", run_dir, "--config", "tiny",
                          "--neighbour-families", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "neighbour_families" in bad.stderr and "Traceback" not in bad.stderr
