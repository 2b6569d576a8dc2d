"""The public names of the hashing half, and that importing hnn_jax stays light."""

import subprocess
import sys

import hnn_jax


def test_public_names():
    for name in ("hash", "Hasher", "HashCode", "HasherConfig"):
        assert name in hnn_jax.__all__
        assert getattr(hnn_jax, name) is not None
    assert hnn_jax.HasherConfig() == hnn_jax.HasherConfig(bits=64, hidden=128, layers=4)


def test_import_is_light():
    script = ("import sys, hnn_jax; "
              "heavy = [m for m in ('torch', 'tensorflow', 'flax', 'orbax') "
              "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_bad_arguments_are_invalid_argument_errors_and_value_errors():
    """One policy: a bad argument raises hnn_jax.InvalidArgumentError, an HNNError and a ValueError."""
    import pytest

    import hnn_jax
    from hnn_jax.padding import pad_batch

    with pytest.raises(hnn_jax.InvalidArgumentError, match="bits must be one of"):
        hnn_jax.HasherConfig(bits=48)
    with pytest.raises(hnn_jax.HNNError, match="at least one graph"):
        pad_batch([])
    from hnn_jax.hasher import validate_graph

    with pytest.raises(hnn_jax.InvalidArgumentError, match="expected a jraph.GraphsTuple"):
        validate_graph("a graph", "graph 0")
    from hnn_jax.index import HammingIndex

    with pytest.raises(hnn_jax.InvalidArgumentError, match="k must be a positive int"):
        HammingIndex().search("hnn2:s1-x:4+4:f0", k=0)
    with pytest.raises(hnn_jax.InvalidArgumentError, match="backend must be one of"):
        HammingIndex(backend="annoy")
    assert issubclass(hnn_jax.InvalidArgumentError, ValueError)


def test_every_public_exception_class_is_in_errors_py():
    """One place for the error family: no module of the package or the converters defines a public
    exception class of its own (the test harness in hnn_jax/testing and private signals aside)."""
    import ast
    from pathlib import Path

    root = Path(hnn_jax.__file__).parent
    files = [f for f in [*root.rglob("*.py"), *(root.parent / "converters").rglob("*.py")]
             if "testing" not in f.parts and f.name != "errors.py"]
    assert len(files) > 40
    stray = [f"{f.name}:{node.name}" for f in files for node in ast.walk(ast.parse(f.read_text()))
             if isinstance(node, ast.ClassDef) and not node.name.startswith("_")
             and any(getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                     for b in node.bases)]
    assert stray == []


def test_the_runtime_imports_nothing_from_the_research_code():
    """hnn_jax.training (zoo, training, evaluation, derivatives) sits apart from the runtime:
    hashing, comparing, indexing, lineage trees and every converter run without importing it."""
    import subprocess
    import sys

    code = ("import sys, hnn_jax, hnn_jax.cli, hnn_jax.index, hnn_jax.lineage, hnn_jax.cluster, hnn_jax.files\n"
            "from hnn_jax import converters\n"
            "from hnn_jax.converters import canonical, features, gguf, hf, quantized, snapshot\n"
            "from pathlib import Path\n"
            "g = converters.from_file(Path(hnn_jax.__file__).parent / 'examples' / 'cnn_a.onnx')\n"
            "hnn_jax.hash(g)\n"
            "print(sorted(m for m in sys.modules if m.startswith('hnn_jax.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_diagnostics_go_to_the_hnn_jax_logger_and_degraded_results_warn(caplog):
    """Where a conversion's time went is DEBUG on the "hnn_jax" logger (silent unless the
    application asks: a NullHandler, `hnn-jax -v`); a result with static features only is a warning."""
    import logging
    from pathlib import Path

    import pytest

    from hnn_jax import converters

    example = Path(hnn_jax.__file__).parent / "examples" / "cnn_a.onnx"
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("hnn_jax").handlers)
    with caplog.at_level(logging.DEBUG, logger="hnn_jax"):
        converters.from_file(example)
    ours = [r for r in caplog.records if r.name.startswith("hnn_jax")]
    assert any("canonical nodes" in r.getMessage() for r in ours)
    assert any(r.getMessage() == "execution probe ran" for r in ours)
    assert all(r.levelno < logging.WARNING for r in ours)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hnn_jax"), pytest.warns(UserWarning, match="static features only"):
        converters.from_onnx(example, max_activation_bytes=1)
    assert any("did not run" in r.getMessage() for r in caplog.records if r.name.startswith("hnn_jax"))
