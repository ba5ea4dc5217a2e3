"""End to end on the real dataset (FMNIST_DATA); skipped where it is not available."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_train_mlp_one_epoch_on_real_data(real_data_dir: Path, tmp_path: Path, isolated_env):
    run_dir = tmp_path / "mlp"
    proc = run_cli("train", "--model", "mlp_seed002", "--epochs", "1", "--out", str(run_dir), "--no-report",
                   "--data-dir", str(real_data_dir), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_accuracy"] >= 0.80
    # Whichever split the folder holds (the Kaggle files here, the official ones elsewhere),
    # the run records that folder's files.
    from fmnist.data.sources import resolve_dataset

    provenance = resolve_dataset(str(real_data_dir)).provenance.to_dict()
    assert results["data"]["split"] == provenance["split"] in ("kaggle", "official")
    assert results["data"]["sha256"] == provenance["sha256"]
    assert results["params"] == 101_770 and results["epochs_run"] == 1


def test_compare_smoke_produces_a_report(real_data_dir: Path, tmp_path: Path, isolated_env):
    out = tmp_path / "cmp"
    proc = run_cli("compare", "--max-steps", "20", "--out", str(out), "--data-dir", str(real_data_dir),
                   env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "compare.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["mlp_wide", "fastcnn"]
    for run in summary["runs"]:
        assert (out / run["run_dir"] / "model.safetensors").is_file()
        assert run["steps"] == 20
    report = (out / "report.md").read_text()
    assert "mlp_wide" in report and "fastcnn" in report and "kaggle" in report
    for figure in ("compare-per-class.png", "confusion-mlp.png", "confusion-cnn.png"):
        assert (out / "figures" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "test accuracy" in proc.stdout
