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


def test_dataset_shows_itself_in_a_line_and_as_html(tiny_dataset):
    text = repr(tiny_dataset)
    assert "\n" not in text and len(text) < 300 and "train=600 images" in text, text
    html = tiny_dataset._repr_html_()
    assert "<table>" in html and "600" in html and "28 x 28 uint8" in html


def test_load_run_reads_a_run_or_a_comparison(tiny_dataset, tmp_path: Path):
    from fmnist import api
    from fmnist.errors import UsageError

    out = tmp_path / "cmp"
    api.compare(["mlp_seed002"], out=out, data=tiny_dataset, progress=False, report=False, max_steps=2, val_size=100)
    comparison = api.load_run(out)
    assert isinstance(comparison, api.Comparison) and [m["name"] for m in comparison.models] == ["mlp_seed002"]
    run = api.load_run(out / "mlp_seed002")
    assert isinstance(run, api.Run) and "2 steps of" in run.summary_row()[3]
    with pytest.raises(UsageError, match="not a finished run directory"):
        api.load_run(tmp_path)
