"""The quickstart notebook runs clean, top to bottom, in a real Jupyter kernel (smoke mode)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_clean(tiny_data_dir: Path, tmp_path: Path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("FMNIST_SMOKE", "1")
    monkeypatch.setenv("FMNIST_DATA", str(tiny_data_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("fastcnn" in h and "<table>" in h for h in html)  # the Comparison showed itself
    assert any("image/png" in o.get("data", {}) for o in outputs)  # figures inline
    assert (tmp_path / "runs").is_dir() and os.listdir(tmp_path / "runs")
