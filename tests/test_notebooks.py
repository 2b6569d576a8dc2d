"""Executes notebooks/quickstart.ipynb top to bottom in a fresh kernel (as CI and Colab would,
minus the install step, which is skipped where hnn_jax is importable)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_quickstart_runs_and_shows_codes_heatmap_and_search(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    assert "colab.research.google.com/github/" in nb.cells[0].source
    assert 'find_spec("hnn_jax") is None' in nb.cells[2].source and "%pip install" in nb.cells[2].source
    # raises CellExecutionError (with the cell and traceback) if any cell fails, asserts included
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # cell timeout: a hang fails

    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert "hashed 5 models" in text and text.count("hnn2:") >= 5
    assert "cnn vs cnn fp16 copy" in text and "reloaded 5 codes" in text
    assert "architecture  0, weights   0  cnn " in text  # the rebuilt model finds its original first
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) == 1  # the distance heatmap


def test_train_on_tpu_runs_on_4_virtual_cpu_devices(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "train_on_tpu.ipynb", as_version=4)
    assert "colab.research.google.com/github/" in nb.cells[0].source
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert "cpu 4 devices" in text and "mesh: {'data': 4}" in text
    assert "restored HasherConfig" in text and "family_map" in text
