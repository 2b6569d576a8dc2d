"""The hnn-jax command line, end to end on the bundled example models (real subprocesses where
the process boundary matters: exit codes, stderr, the installed script)."""

import json
import re
import shutil
import os
import subprocess
import sys
import textwrap
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from hnn_jax import HashCode, HNNError, cli
from hnn_jax.files import find_models
from hnn_jax.index import HammingIndex

EXAMPLES = Path(str(files("hnn_jax") / "examples"))


def run_cli(*args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "hnn_jax.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, pattern, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hnn-jax: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A folder of copied example models, one in a subfolder, plus a file that is not a model."""
    root = tmp_path_factory.mktemp("models")
    for name in ("cnn_a", "cnn_b", "mlp"):
        shutil.copy(EXAMPLES / f"{name}.onnx", root / f"{name}.onnx")
    (root / "sub").mkdir()
    shutil.copy(EXAMPLES / "cnn_a_int8.onnx", root / "sub" / "cnn_a_int8.onnx")
    (root / "README.txt").write_text("not a model: ignored when walking folders")
    return root


EXPECTED = ["cnn_a.onnx", "cnn_b.onnx", "mlp.onnx", "sub/cnn_a_int8.onnx"]


@pytest.fixture(scope="module")
def hashed(models):
    """`hnn-jax hash DIR --json --bits` run once for the module."""
    proc = run_cli("hash", models, "--json", "--bits")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.integration
def test_the_console_script_keeps_compiled_hashers_on_disk(tmp_path):
    """A second run loads the compiled hasher from the cache folder and prints the same code;
    HNN_JAX_CACHE=off writes no cache."""
    script = Path(sys.executable).with_name("hnn-jax")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    outputs = []
    for _ in range(2):
        proc = subprocess.run([script, "hash", EXAMPLES / "cnn_a.onnx", "-q"], capture_output=True,
                              text=True, timeout=120, env={**env, "HNN_JAX_CACHE": str(tmp_path / "c")})
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
        assert any((tmp_path / "c").iterdir())
    assert outputs[0] == outputs[1] and outputs[0].startswith("hnn2:")
    proc = subprocess.run([script, "hash", EXAMPLES / "cnn_a.onnx", "-q"], capture_output=True, text=True,
                          timeout=120, env={**env, "HNN_JAX_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path / "x"),
                                            "HOME": str(tmp_path / "home")})
    assert proc.returncode == 0 and proc.stdout == outputs[0], proc.stderr
    assert not list(tmp_path.glob("x/**/hnn-jax")) and not list(tmp_path.glob("home/**/hnn-jax"))


def test_installed_script_and_help_teach_with_examples():
    script = Path(sys.executable).with_name("hnn-jax")
    assert script.is_file(), "pip install -e . installs the hnn-jax console script"
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("demo", "hash", "compare", "index", "search"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), command
    assert "examples:" in proc.stdout and "hnn-jax search models.hnnidx" in proc.stdout
    assert "exit status: 0 ok, 1 no match" in proc.stdout
    sub = subprocess.run([script, "index", "build", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0 and "-o FILE" in sub.stdout and "example" in sub.stdout
    version = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == "hnn-jax 0.1.0"


def test_building_the_parser_does_not_import_jax_or_frameworks():
    code = ("import sys; from hnn_jax import cli; cli.build_parser(); "
            "print(sorted(m for m in ('jax', 'torch', 'tensorflow', 'onnx') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_hash_folder_json_matches_library(hashed, models, capsys):
    import hnn_jax
    from hnn_jax import converters

    assert [Path(e["path"]).relative_to(models).as_posix() for e in hashed] == EXPECTED
    for entry in hashed:
        code = HashCode.from_str(entry["code"])
        assert entry["nbits"] == len(code) == 256 and entry["version"] == code.version
        assert entry["bits"] == "".join(map(str, code.bits)) and entry["probe"] == "ok"
    library = hnn_jax.hash(converters.from_file(models / "mlp.onnx"))
    assert str(library) == hashed[2]["code"]

    # text output (in process): "<code>  <path>" per model, and --bits prints 0/1
    assert cli.main(["hash", str(models)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{e['code']}  {e['path']}" for e in hashed]
    assert cli.main(["hash", str(models / "mlp.onnx"), "--bits"]) == 0
    assert capsys.readouterr().out == f"{hashed[2]['bits']}  {models / 'mlp.onnx'}\n"


def test_compare(hashed, models, capsys):
    proc = run_cli("compare", models / "cnn_a.onnx", models / "cnn_b.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    a, b = HashCode.from_str(hashed[0]["code"]), HashCode.from_str(hashed[1]["code"])
    assert (out["code_a"], out["code_b"]) == (str(a), str(b))
    assert out["distance"] == a - b and out["nbits"] == 256 and out["arch_bits"] == 48
    assert (out["architecture_distance"], out["weights_distance"]) == a.distances(b)[1:]
    assert out["relation"] == a.relation(b)[0] and out["chance"] == a.chance(b)
    assert len(out["thresholds"]["architecture"]) == 3 and out["thresholds"]["weights_same_model"] >= 0

    # codes work in place of models; text form names the relation, the chance and the bands
    far = HashCode(1 - a.bits, a.version, a.arch_bits)
    assert cli.main(["compare", str(a), str(far)]) == 0
    text = capsys.readouterr().out
    assert "distance: 256 of 256 bits (architecture 48 of 48, weights 208 of 208)" in text
    assert "relation: unrelated" in text and re.search(r"chance: 1 that two independent models", text)
    assert re.search(r"bands: architecture <= \d+ same-model, <= \d+ same-architecture, <= \d+ same-family; "
                     r"same model also needs weights <= \d+", text)
    near = HashCode(np.r_[a.bits[:48], a.bits[48:50] ^ 1, a.bits[50:]], a.version, a.arch_bits)
    assert cli.main(["compare", str(a), str(near)]) == 0
    assert re.search(r"relation: same-model .*\nchance: (< 1e-15|\d\.\de-\d\d) ", capsys.readouterr().out)
    # a length the hasher does not make is refused with the lengths it makes
    assert cli.main(["compare", str(models / "cnn_a.onnx"), str(models / "cnn_b.onnx"), "--length", "64"]) == 2
    assert "lengths are 256" in capsys.readouterr().err


@pytest.mark.slow
def test_index_build_search_add(hashed, models, tmp_path, capsys):
    index_file = tmp_path / "models.hnnidx"
    proc = run_cli("index", "build", models, "-o", index_file)
    assert proc.returncode == 0, proc.stderr
    assert "indexed 4 models" in proc.stderr
    index = HammingIndex.load(index_file)
    assert [Path(i).relative_to(models).as_posix() for i in index.ids] == EXPECTED
    assert [str(index.get(i)[0]) for i in index.ids] == [e["code"] for e in hashed]
    assert index.get(index.ids[3])[1] == {"path": str((models / EXPECTED[3]).resolve()),
                                          "format": "onnx", "probe": "ok"}

    proc = run_cli("search", index_file, models / "cnn_b.onnx", "-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert len(results) == 3 and [r["rank"] for r in results] == [1, 2, 3]
    assert results[0]["id"] == str(models / "cnn_b.onnx") and results[0]["distance"] == 0
    distances = [r["distance"] for r in results]
    assert distances == sorted(distances)

    # a code no indexed model is near: radius 0 finds nothing -> exit 1, one line on stderr
    query = HashCode.from_str(hashed[1]["code"])
    far = HashCode(1 - query.bits, query.version, query.arch_bits)
    assert index.distances(far).min() > 0
    proc = run_cli("search", index_file, str(far), "--radius", "0")
    assert_one_line_error(proc, r"no match within 0 bits", code=1)
    assert proc.stdout == ""
    # the same query without a radius lists everything, farthest last
    assert cli.main(["search", str(index_file), str(far), "-k", "10"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["rank", "distance", "arch", "weights", "relation", "chance", "id"] and len(rows) == 5
    # ranked by weights first: the query's own file, then the rest; every row says its chance
    proc = run_cli("search", index_file, models / "cnn_b.onnx", "--order", "weights", "--json")
    results = json.loads(proc.stdout)["results"]
    assert [r["weights_distance"] for r in results] == sorted(r["weights_distance"] for r in results)
    assert results[0]["relation"] == "same-model" and results[0]["chance"] < 1e-15

    # index add: a new file goes in; an id already there needs --replace
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(EXAMPLES / "transformer.onnx", extra / "transformer.onnx")
    assert cli.main(["index", "add", str(index_file), str(extra)]) == 0
    assert len(HammingIndex.load(index_file)) == 5
    assert cli.main(["index", "add", str(index_file), str(extra / "transformer.onnx")]) == 2
    assert "already in" in capsys.readouterr().err
    assert cli.main(["index", "add", str(index_file), str(extra), "--replace"]) == 0
    assert HammingIndex.load(index_file).ids[-1] == str(extra / "transformer.onnx")
    assert cli.main(["index", "info", str(index_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 5 and info["nbits"] == 256 and info["code_version"] == query.version

    # an index of another hasher is refused, not silently searched
    other = HammingIndex()
    other.add(HashCode(query.bits, "s1-otherhasher", query.arch_bits), "x")
    other.save(tmp_path / "other.hnnidx")
    proc = run_cli("search", tmp_path / "other.hnnidx", str(query))
    assert_one_line_error(proc, r"error: .*different hashers")


def test_the_single_process_build_journals_resumes_and_stops_at_a_bad_model(models, hashed, tmp_path, capsys):
    """`hnn-jax index build` without workers is cluster.build_index on a SerialRunner: a killed
    build resumes from its journal; without --skip-errors a model that fails stops it (exit 2)."""
    from hnn_jax.cluster import build_index, journal_path

    out = tmp_path / "x.hnnidx"

    def stop(summary):
        raise KeyboardInterrupt("stopped after the first batch")

    with pytest.raises(KeyboardInterrupt, match="stopped after the first batch"):
        build_index([models], out, batch=2, progress=False, on_batch=stop)
    assert len(journal_path(out).read_text().splitlines()) == 1 + 2 and not out.exists()
    assert cli.main(["index", "build", str(models), "-o", str(out), "--batch", "2", "-q"]) == 0
    err = capsys.readouterr().err
    assert f"indexed 4 models, 2 from the journal of an earlier run (256-bit codes) in {out}" in err, err
    index = HammingIndex.load(out)
    assert [str(index.get(i)[0]) for i in index.ids] == [e["code"] for e in hashed]
    assert not journal_path(out).exists()

    (tmp_path / "bad").mkdir()
    shutil.copy(models / "mlp.onnx", tmp_path / "bad" / "a.onnx")
    (tmp_path / "bad" / "b.onnx").write_bytes(b"garbage")
    assert cli.main(["index", "build", str(tmp_path / "bad"), "-o", str(tmp_path / "y.hnnidx"), "-q"]) == 2
    assert re.fullmatch(r"hnn-jax: error: .*b\.onnx is not a valid ONNX model.*\n", capsys.readouterr().err)
    assert not (tmp_path / "y.hnnidx").exists()


@pytest.mark.parametrize("case", ["missing", "corrupt-model", "empty-folder", "corrupt-index",
                                  "pickle", "bad-option"])
def test_bad_input_exits_2_with_one_line(case, tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "idx.hnnidx").write_text("not an index")
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    args, pattern = {
        "missing": (["hash", tmp_path / "nope.onnx"], r"error: no such file or folder: .*nope"),
        "corrupt-model": (["hash", tmp_path / "bad.onnx"], r"error: .*bad\.onnx"),
        "empty-folder": (["index", "build", tmp_path / "empty", "-o", tmp_path / "i"],
                         r"error: no model files"),
        "corrupt-index": (["search", tmp_path / "idx.hnnidx", "hnn1:s1-x:8:ff"],
                          r"error: .*not an hnn-jax index"),
        "pickle": (["hash", tmp_path / "model.pt"], r"error: .*pickled"),
        "bad-option": (["search", tmp_path / "idx.hnnidx"], r"error: .*required"),
    }[case]
    assert_one_line_error(run_cli(*args), pattern)


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    proc = run_cli("hash", tmp_path / "bad.onnx", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hnn-jax: error:")


def test_skip_errors_hashes_the_rest(models, tmp_path, hashed, capsys):
    shutil.copy(models / "mlp.onnx", tmp_path / "mlp.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    assert cli.main(["hash", str(tmp_path), "--skip-errors", "--json"]) == 0
    captured = capsys.readouterr()
    assert [e["code"] for e in json.loads(captured.out)] == [hashed[2]["code"]]
    assert re.search(r"warning: could not hash .*bad\.onnx.*\(skipped\)", captured.err)


def test_skip_errors_with_every_model_failing_is_an_error(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert cli.main(["hash", str(tmp_path), "--skip-errors"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 models could be hashed" in err and err.count("could not hash") == 2


def test_help_example_codes_are_of_the_shipped_hasher():
    """A code copied from --help compares against the shipped hasher's codes."""
    from hnn_jax.hasher import default_hasher

    proc = subprocess.run([sys.executable, "-m", "hnn_jax.cli", "compare", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert f"hnn2:{default_hasher().version}:48+208:" in proc.stdout


def test_demo_neighbours_agree_with_its_distance_table(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    version = re.search(r"256-bit codes \((\S+)\): 48 architecture bits", out).group(1)
    names = sorted(p.stem for p in EXAMPLES.glob("*.onnx"))
    table, codes = {}, {}
    for line in out.split("Hamming distances")[1].split("Nearest neighbours")[0].splitlines():
        parts = line.split()
        if parts and parts[0] in names:
            table[parts[0]] = dict(zip(names, (tuple(map(int, c.split("/"))) for c in parts[1:1 + len(names)])))
    for name in names:  # each example is said what it is
        m = re.search(rf"^  {name}\s+([0-9a-f]{{64}})  \S", out, re.M)
        codes[name] = HashCode.from_bytes(bytes.fromhex(m.group(1)), version=version, arch_bits=48)
    assert set(table) == set(names)
    neighbours, legend = out.split("Nearest neighbours")[1].strip().split("\n\nBands")
    for line in neighbours.splitlines()[1:]:
        m = re.match(r"\s*(\S+)\s+-> (\S+) \((\d+)/(\d+) bits: (\S+), chance ([^)]+)\), then (\S+) \((\d+)/(\d+)", line)
        name, first, a1, w1, found, chance, second, a2, w2 = m.groups()
        # ranked by architecture, then weights, ties in name order: as the table says
        others = sorted((d[0], d[1], n) for n, d in table[name].items() if n != name)
        assert [(int(a1), int(w1), first), (int(a2), int(w2), second)] == others[:2]
        assert found == codes[name].relation(codes[first])[0]
        assert codes[name].distances(codes[first])[1:] == (int(a1), int(w1))
    assert "same-architecture" in legend
    # the demo tells the truth: cnn_a's copies are the same model, nothing else is
    copies = {"cnn_a", "cnn_a_dynamo", "cnn_a_fp16", "cnn_a_int8", "cnn_a_pruned"}
    for a in names:
        for b in names:
            same = codes[a].relation(codes[b])[0] == "same-model"
            assert same == (a == b or {a, b} <= copies), (a, b)


def test_subcommands_from_other_modules(tmp_path, monkeypatch, capsys):
    (tmp_path / "hnn_plugin_ok.py").write_text(textwrap.dedent("""
        import sys
        IMPORTED = sys.modules.setdefault("hnn_plugin_ok_imported", [])  # counts imports
        IMPORTED.append(1)

        def add_arguments(parser):
            parser.add_argument("--name", default="world")
            parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)
    """))
    (tmp_path / "hnn_plugin_broken.py").write_text(
        "import a_module_that_does_not_exist\ndef add_arguments(parser): pass\n")
    (tmp_path / "hnn_plugin_unfinished.py").write_text("X = 1\n")  # no add_arguments yet
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, entry in {"hello": ("hnn_plugin_ok", "say hello"), "broken": ("hnn_plugin_broken", "broken"),
                        "later": ("hnn_plugin_unfinished", "not yet"), "missing": ("hnn_plugin_nope", "nope")}.items():
        monkeypatch.setitem(cli.COMMANDS, name, entry)
    monkeypatch.delitem(sys.modules, "hnn_plugin_ok_imported", raising=False)

    with pytest.raises(SystemExit, match="^0$") as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    listing = capsys.readouterr().out
    assert re.search(r"^\s+hello\s+say hello", listing, re.M)
    for name in ("broken", "later", "missing"):  # listed from the registry, unimported
        assert re.search(rf"^\s+{name}\s", listing, re.M), name
    assert "hnn_plugin_ok" not in sys.modules  # listing a command does not import its module

    assert cli.main(["hello", "--name", "zoo", "--debug"]) == 0
    assert capsys.readouterr().out == "hello zoo\n"
    assert cli.main(["hash", "/nonexistent"]) == 2  # other commands never import plugins
    assert "no such file" in capsys.readouterr().err
    assert sys.modules["hnn_plugin_ok_imported"] == [1]
    with pytest.raises(SystemExit, match="^2$") as exc:
        cli.main(["hello", "--bogus"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("hnn-jax: error: unrecognized arguments")

    for name in ("broken", "later", "missing"):  # a module that fails to import or lacks add_arguments
        assert cli.main([name]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hnn-jax: error: '{name}' is unavailable") and len(err.splitlines()) == 1


def test_find_models_walks_folders_for_every_format(tmp_path):
    for rel in ("b.onnx", "a.KERAS", "sub/c.pt2", "sub/notes.txt", "sub/.hidden.onnx",
                "sub/weights.pt", "saved/saved_model.pb", "saved/variables/v.onnx",
                "z/deeper/m.onnx"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_models([tmp_path])]
    # sorted walk; SavedModel folders are models (not searched inside); other files ignored
    assert found == ["a.KERAS", "b.onnx", "saved", "sub/c.pt2", "z/deeper/m.onnx"]
    # files named explicitly are taken as they are (the converter judges them), in given order
    explicit = find_models([tmp_path / "sub/weights.pt", tmp_path / "saved", tmp_path / "b.onnx"])
    assert [p.name for p in explicit] == ["weights.pt", "saved", "b.onnx"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "model.pt").write_bytes(b"")  # pickles are never picked up by a walk
    for folder in ("empty", "docs"):
        with pytest.raises(HNNError, match="no model files"):
            find_models([tmp_path / folder])
    with pytest.raises(HNNError, match="no such file"):
        find_models([tmp_path / "b.onnx", tmp_path / "missing.onnx"])


def test_hash_files_is_the_library_call_behind_the_cli(models, tmp_path, hashed):
    """hnn_jax.hash_files: files and folders -> one FileCode each, in order, per-file errors
    with skip_errors (the CLI prints what it yields)."""
    import hnn_jax

    shutil.copy(models / "mlp.onnx", tmp_path / "a_mlp.onnx")
    (tmp_path / "b_bad.onnx").write_bytes(b"garbage")
    results = list(hnn_jax.hash_files([tmp_path], skip_errors=True, progress=False))
    assert [r.path.name for r in results] == ["a_mlp.onnx", "b_bad.onnx"]
    assert str(results[0].code) == hashed[2]["code"] and results[0].probe == "ok" and results[0].error is None
    assert isinstance(results[1].error, HNNError) and "b_bad.onnx" in str(results[1].error)
    assert results[1].code is None
    with pytest.raises(HNNError, match="b_bad.onnx"):
        list(hnn_jax.hash_files([tmp_path], progress=False))


def test_verbose_puts_the_librarys_log_on_stderr_and_leaves_logging_as_it_was(capsys):
    import logging

    logger = logging.getLogger("hnn_jax")
    before = (list(logger.handlers), logger.level, logger.propagate)
    assert cli.main(["hash", str(EXAMPLES / "mlp.onnx")]) == 0
    assert "canonical nodes" not in capsys.readouterr().err
    assert cli.main(["-vv", "hash", str(EXAMPLES / "mlp.onnx")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^hnn-jax: hnn_jax\.converters: \d+ ONNX nodes -> \d+ canonical nodes", err, re.M), err
    assert (list(logger.handlers), logger.level, logger.propagate) == before
