"""Results written by fmnist 0.4-dev (commit 97c749b, the first with the Muon fast recipe) still
load, evaluate, predict and report.

tests/fixtures/runs-0.4-dev.tar.gz was made from a git worktree of that commit on the real data
(smoke-sized runs; --split-seed 0 everywhere so the ensembles share one validation split):
    run-a     `train --seed 0 --split-seed 0 --max-steps 20` (the default recipe: fastcnn 16-32-64,
              whitened, Muon)
    run-b     `train -m mlp --model-arg 'hidden=[32]' --tta flip --seed 1 --split-seed 0 --max-steps 20
              --no-report`
    ensemble  `ensemble run-a run-b -o ensemble` (greedy, the default: it chose run-a alone)
    compare   `compare --config cmp.toml --seeds 2 --ensemble --max-steps 10 --no-report` (cmp.toml:
              [defaults] split_seed = 0 and one [[runs]] of fastcnn widths [8, 16, 16], whitened),
              so it holds compare/ensembles/fastcnn
    sweep     `sweep sw.toml --max-steps 10` (2 trials of mlp [16] drawing lr; scheduler "none")
    ablate    `ablate --base lenet5 --max-steps 10 --no-report`
To stay under ~1.5 MB: run-a's report and figures, the sweep's report, figures and ray/ folder,
and the ablation's two model.safetensors were dropped (its report reads results only); one model
in compare, since each ensemble's predictions.safetensors costs ~380 kB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fmnist
from conftest import run_cli
from fmnist.inference.predict import Predictor
from test_old_runs import recorded, unpack

FIXTURE = Path(__file__).parent / "fixtures" / "runs-0.4-dev.tar.gz"
RUNS = ["run-a", "run-b", "compare/fastcnn-seed0", "compare/fastcnn-seed1", "sweep/trials/trial-000",
        "ablate/full"]  # fmt: skip


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    return unpack(tmp_path_factory, FIXTURE, "runs-0.4")


@pytest.mark.parametrize("name", ["run-a", "run-b"])
def test_runs_evaluate_to_their_recorded_accuracy(old, name, real_data_dir, tmp_path):
    out = tmp_path / "evaluation.json"
    proc = run_cli("evaluate", str(old / name), "--out", str(out), "--data-dir", str(real_data_dir))
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(out.read_text())
    # Trained and scored in bf16 where the CPU has it; evaluate scores in fp32.
    assert scored["accuracy"] == pytest.approx(recorded(old / name)["test_accuracy"], abs=5e-3)


def test_runs_and_ensembles_load_and_predict(old, real_data_dir):
    data = fmnist.load_data(real_data_dir)
    for name in ("run-a", "run-b", "ensemble", "compare/ensembles/fastcnn"):
        probabilities = Predictor(old / name).probabilities(data.test_images[:64])
        assert probabilities.shape == (64, 10)
        assert np.allclose(probabilities.sum(1), 1, atol=1e-4)
    run = fmnist.load_run(old / "run-a")
    assert run.results["model"] == "fastcnn" and run.results["model_args"]["whiten"] is True
    assert [h["epoch"] for h in run.history] == [1]
    ensemble = Predictor(old / "ensemble").probabilities(data.test_images).argmax(1)
    accuracy = float((ensemble == data.test_labels).mean())
    assert accuracy == pytest.approx(recorded(old / "ensemble")["test_accuracy"], abs=5e-3)


@pytest.mark.parametrize("name", ["compare", "sweep", "run-b", "ablate", "ensemble"])
def test_comparison_sweep_ablation_ensemble_and_run_report(old, name, real_data_dir):
    proc = run_cli("report", str(old / name), "--data-dir", str(real_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert (old / name / "report.html").stat().st_size > 0


def test_comparison_loads_with_its_ensemble(old):
    comparison = fmnist.load_run(old / "compare")
    assert [m["name"] for m in comparison.models] == ["fastcnn"]
    assert len(comparison.runs) == 2


@pytest.mark.parametrize("run", RUNS)
def test_results_read_back_unchanged(old, run):
    """results.json read through the run-directory format and written again holds the same keys
    and values: what a finished run reports does not drift when fmnist reads and rewrites it."""
    from fmnist.inference.rundir import read_results

    path = old / run
    assert json.loads(json.dumps(read_results(path).to_json())) == recorded(path)
