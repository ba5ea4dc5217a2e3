"""Results written by fmnist 0.3.1 (before the package moved into training/, experiments/,
inference/) still load, evaluate, export, serve and report.

tests/fixtures/runs-0.3.1.tar.gz was made by fmnist 0.3.1 on the real data (smoke-sized runs):
    run-a     `train -m mlp --model-arg 'hidden=[32]' --max-steps 20 --split-seed 0 --seed 0`
    run-b     `train -m lenet5 --tta flip --max-steps 20 --split-seed 0 --seed 1 --no-report`
    ensemble  `ensemble run-a run-b -o ensemble` (members referenced as ../run-a, ../run-b)
    compare   `compare --config cmp.toml --seeds 2 --max-steps 10 --no-report` (mlp [16], lenet5)
    sweep     `sweep sw.toml` (2 trials of mlp; its ray/ folder dropped to keep the fixture small)
Report figures were dropped from run-a and the sweep to keep it small.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import fmnist
import fmnist.api
import fmnist.constants
from conftest import run_cli
from fmnist.inference.predict import Predictor

FIXTURE = Path(__file__).parent / "fixtures" / "runs-0.3.1.tar.gz"


def unpack(tmp_path_factory: pytest.TempPathFactory, fixture: Path, name: str) -> Path:
    """A fixture tarball of run directories, unpacked into a fresh temporary folder."""
    folder = tmp_path_factory.mktemp(name)
    with tarfile.open(fixture) as archive:
        archive.extractall(folder, filter="data")
    return folder


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    return unpack(tmp_path_factory, FIXTURE, "old-runs")


def recorded(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.mark.parametrize("name", ["run-a", "run-b"])
def test_old_runs_evaluate_to_their_recorded_accuracy(old, name, real_data_dir, tmp_path):
    out = tmp_path / "evaluation.json"
    proc = run_cli("evaluate", str(old / name), "--out", str(out), "--data-dir", str(real_data_dir))
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(out.read_text())
    assert scored["accuracy"] == pytest.approx(recorded(old / name)["test_accuracy"], abs=2e-3)


def test_old_run_and_ensemble_load_and_predict(old, real_data_dir):
    data = fmnist.load_data(real_data_dir)
    images = data.test_images[:64]
    for name in ("run-a", "run-b", "ensemble"):
        probabilities = Predictor(old / name).probabilities(images)
        assert probabilities.shape == (64, 10)
        assert np.allclose(probabilities.sum(1), 1, atol=1e-4)
    run = fmnist.load_run(old / "run-b")
    assert run.results["model"] == "lenet5"
    ensemble = Predictor(old / "ensemble").probabilities(data.test_images).argmax(1)
    accuracy = float((ensemble == data.test_labels).mean())
    assert accuracy == pytest.approx(recorded(old / "ensemble")["test_accuracy"], abs=2e-3)


@pytest.mark.parametrize("name", ["run-a", "ensemble"])
def test_old_runs_export_to_onnx(old, name, tmp_path, real_data_dir):
    pytest.importorskip("onnxruntime")
    out = tmp_path / f"{name}.onnx"
    proc = run_cli("export", str(old / name), "--out", str(out), "--data-dir", str(real_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_old_run_serves(old):
    pytest.importorskip("fastapi")
    import httpx

    from test_serve import start_server, stop_server

    proc, url = start_server(old / "run-a")
    try:
        answer = httpx.post(f"{url}/predict", json={"pixels": [[0] * 28] * 28}, timeout=30)
        assert answer.status_code == 200 and answer.json()["label"] in fmnist.constants.CLASS_NAMES
    finally:
        stop_server(proc)


@pytest.mark.parametrize("name", ["compare", "sweep", "run-b"])
def test_old_comparison_sweep_and_run_report(old, name, real_data_dir):
    proc = run_cli("report", str(old / name), "--data-dir", str(real_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert (old / name / "report.html").stat().st_size > 0


def test_old_ensemble_reports_as_a_plain_average(old, real_data_dir):
    """Built before selection rules: every member, equal weights, which is what the report must say."""
    proc = run_cli("report", str(old / "ensemble"), "--data-dir", str(real_data_dir))
    assert proc.returncode == 0, proc.stderr
    text = (old / "ensemble" / "report.md").read_text()
    assert "Selection: every member, weights equal." in text and "all 2, equal weights" in text


def test_old_comparison_loads(old):
    comparison = fmnist.api.Comparison(old / "compare")
    assert [m["name"] for m in comparison.models] == ["mlp", "lenet5"]


@pytest.mark.parametrize("run", ["run-a", "run-b", "compare/mlp-seed0", "sweep/trials/trial-000"])
def test_old_results_read_with_defaults_and_back_unchanged(old, run):
    """0.3.1 wrote no planned_steps, compiled or compile_seconds: they read as their defaults (not a
    smoke run, not compiled), and the results written back hold exactly the keys and values read."""
    from fmnist.inference.rundir import read_history, read_results

    results = read_results(old / run)
    assert (results.planned_steps, results.compiled, results.compile_seconds) == (0, False, 0.0)
    assert results.smoke_steps is None and results.trained_words().startswith("best epoch")
    assert json.loads(json.dumps(results.to_json())) == recorded(old / run)
    lines = (old / run / "metrics.jsonl").read_text().splitlines()
    assert [row.to_json() for row in read_history(old / run)] == [json.loads(line) for line in lines]
