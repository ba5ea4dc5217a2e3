"""Ensembles on the validation split: one split_seed shares the hold-out, and the scores match the oracles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_synthetic_idx
from fmnist.config import TrainConfig
from fmnist.data.dataset import load_idx_folder
from fmnist.data.splits import saved_holdout, stratified_split
from fmnist.errors import UsageError
from fmnist.inference.ensemble_build import build_ensemble, validate_ensemble
from fmnist.inference.predict import Predictor
from fmnist.report.document import render_markdown
from fmnist.report.options import ReportOptions
from fmnist.report.sections.ensemble import ensemble_document
from test_cli import assert_one_line_error
from test_predict import train_run

COMMON = {"model_args": {"hidden": [16]}, "max_steps": 6, "epochs": 1, "val_size": 120}


def test_split_seed_draws_the_holdout_and_minus_one_follows_the_run_seed():
    assert TrainConfig(seed=3, split_seed=-1).validation_seed == 3
    assert TrainConfig(seed=3, split_seed=0).validation_seed == 0
    assert TrainConfig(seed=3).validation_seed == TrainConfig(seed=4).validation_seed  # one split by default
    with pytest.raises(UsageError, match="split_seed must be"):
        TrainConfig(split_seed=-2).validate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three MLPs on the synthetic bars: two share split seed 5 (other seeds, TTA, normalisation), one does not."""
    data_dir = write_synthetic_idx(tmp_path_factory.mktemp("data"))
    dataset = load_idx_folder(data_dir)
    base = tmp_path_factory.mktemp("runs")
    a = train_run(base / "a", dataset, "mlp", seed=1, split_seed=5, tta="flip-shift", mean=0.5, std=0.5, **COMMON)
    b = train_run(base / "b", dataset, "mlp", seed=2, split_seed=5, **COMMON)
    c = train_run(base / "c", dataset, "mlp", seed=3, **COMMON)
    return (a, b, c), data_dir, dataset


def test_shared_holdout_scores_match_training_and_the_average(runs):
    (a, b, _), _, dataset = runs
    chosen = validate_ensemble([a, b], dataset=dataset, select="all", precision="fp32")
    scores = chosen.scores.to_json()
    # Oracle 1: each member's accuracy is the one its training measured on its own hold-out.
    recorded = [json.loads((m / "results.json").read_text())["best_val_accuracy"] for m in (a, b)]
    assert scores["members"] == pytest.approx(recorded)
    # Oracle 2: the ensemble is the argmax of the members' mean probability on split seed 5's images.
    _, val_idx = stratified_split(dataset.train_labels, COMMON["val_size"], 5)
    images, labels = dataset.train_images[val_idx], dataset.train_labels[val_idx]
    mean = np.mean([Predictor(m, precision="fp32").probabilities(images) for m in (a, b)], axis=0)
    assert scores["accuracy"] == pytest.approx((mean.argmax(1) == labels).mean())
    best = int(np.argmax(recorded))
    assert scores["best_member"] == best and scores["gain_over_best_member"] == pytest.approx(
        scores["accuracy"] - recorded[best])  # fmt: skip
    assert (scores["val_size"], scores["split_seed"], chosen.weights) == (120, 5, [0.5, 0.5])


def test_different_holdouts_are_refused_or_recorded_with_the_reason(runs, tmp_path: Path):
    (a, _, c), _, dataset = runs
    with pytest.raises(UsageError, match="held out different validation images.*--split-seed"):
        validate_ensemble([a, c], dataset=dataset, precision="fp32")
    results = build_ensemble([a, c], tmp_path / "ens", dataset=dataset, select="all", precision="fp32").to_json()
    assert results["validation"]["shared"] is False and "--split-seed" in results["validation"]["reason"]
    text = render_markdown(ensemble_document(tmp_path / "ens", ReportOptions(html=False)), tmp_path / "ens")
    assert "Not scored on validation: the members held out different validation images" in text


def test_build_ensemble_records_the_validation_scores_and_the_report_says_them(runs, tmp_path: Path):
    (a, b, _), data_dir, dataset = runs
    results = build_ensemble([a, b], tmp_path / "ens", dataset=dataset, precision="fp32").to_json()  # greedy: split 5
    chosen = validate_ensemble([a, b], dataset=dataset, precision="fp32")
    scores = chosen.scores.to_json()
    assert results["validation"] == scores
    assert results["selection"] == chosen.selection.to_json() and results["select"] == "greedy"
    assert [m["weight"] for m in results["members"]] == chosen.weights
    assert results["validation"]["accuracy"] >= max(results["validation"]["members"])
    doc = ensemble_document(tmp_path / "ens", ReportOptions(data_dir=data_dir, html=False))
    text = render_markdown(doc, tmp_path / "ens")
    assert (f"On the members' shared validation split (120 training images held out by split seed 5) the ensemble "
            f"scores {100 * scores['accuracy']:.2f}%") in text  # fmt: skip


def test_cli_validation_only_prints_the_scores_and_writes_nothing(runs, tmp_path: Path, isolated_env):
    (a, b, c), data_dir, _ = runs
    before = sorted(p.name for p in Path(a).parent.iterdir())
    proc = run_cli("ensemble", str(a), str(b), "--validation-only", "--precision", "fp32",
                   "--data-dir", str(data_dir), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "validation accuracy" in proc.stdout and "120 images held out by split seed 5" in proc.stdout
    assert "test accuracy" not in proc.stdout and sorted(p.name for p in Path(a).parent.iterdir()) == before
    proc = run_cli("ensemble", str(a), str(c), "--validation-only", "--data-dir", str(data_dir), env=isolated_env)
    assert proc.returncode == 2 and "the members held out different" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    proc = run_cli("ensemble", str(a), str(b), "--validation-only", "--out", str(tmp_path / "x"), env=isolated_env)
    assert_one_line_error(proc, 2, "--validation-only writes nothing")
    proc = run_cli("ensemble", str(a), str(b), env=isolated_env)
    assert_one_line_error(proc, 2, "--out DIR is required")


def test_a_saved_config_names_its_holdout_and_old_files_follow_their_seed():
    assert saved_holdout({"val_size": 5000, "seed": 3}) == (5000, 3)  # written before split_seed existed
    assert saved_holdout({"val_size": 5000, "seed": 3, "split_seed": 0}) == (5000, 0)
    assert saved_holdout({"val_size": 0, "seed": 3, "split_seed": -1}) == (0, 3)
