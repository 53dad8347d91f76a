"""notebooks/01_start_here.ipynb: committed without outputs, and it runs top to bottom
(headless, the venv's ``python3`` kernel) on the tiny project, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import KERMANY_SAMPLE

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_start_here.ipynb"
# phantom test scans, reconstructions, heatmap, score distributions, ROC curves
FIGURES = 5


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    assert [c.execution_count for c in code] == [None] * len(code)
    assert [c.outputs for c in code] == [[]] * len(code), (
        "strip the notebook's outputs before committing (see notebooks/README.md)"
    )
    assert nb.metadata["kernelspec"]["name"] == "python3"


def _texts(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
            parts.append(data.get("text/html", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_notebook_runs_on_the_tiny_project(tiny_project, tmp_path, monkeypatch):
    monkeypatch.setenv("OCT_VAE_PROJECT", str(tiny_project.path))
    monkeypatch.setenv("OCT_VAE_ENV", "tiny")
    monkeypatch.setenv("OCT_VAE_KERMANY_SAMPLE", str(KERMANY_SAMPLE.resolve()))
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel starts outside any Kedro project: `%load_ext kedro.ipython` would otherwise
    # load the repository's project (and its mlflow.db) before `%reload_kedro` picks the
    # tiny one. CellExecutionError (the cell and its traceback) if any cell fails.
    NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    expected = FIGURES + (1 if KERMANY_SAMPLE.is_dir() else 0)  # + the real sample scans
    assert len(pngs) == expected

    text = _texts(nb)
    assert f"project: {tiny_project.path.resolve()}" in text
    assert "environment: tiny" in text
    if not KERMANY_SAMPLE.is_dir():
        assert "no real sample" in text
    # the last cell: the AUC table from the catalog, rendered with one row per score
    table = nb.cells[-2].outputs[-1]["data"]["text/html"]
    for word in ("Reconstruction", "KL", "VAE", "Baseline: mean intensity", "Drusen", "All"):
        assert word in table, word
