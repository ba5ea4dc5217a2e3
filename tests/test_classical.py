"""scikit-learn baselines: trained by fmnist compare beside the networks, saved without pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from fmnist.data.normalize import normalize
from fmnist.errors import UsageError
from fmnist.experiments.compare import run_compare
from fmnist.experiments.plan import plan_from_models
from fmnist.experiments.session import Session
from fmnist.inference.checkpoint import load_checkpoint
from fmnist.inference.rundir import prepare_run_dir, read_history
from fmnist.models import create_model
from fmnist.models.registry import check_model_args, get_entry
from fmnist.training.baselines import fit_baseline
from fmnist.training.run_writer import RunDirWriter
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import fit

SRC = Path(__file__).resolve().parents[1] / "src" / "fmnist"
CLASSICAL_MODELS = ("logreg", "linear_svc", "rbf_svc", "random_forest")


def config(name: str, **values):
    return resolve_config(name, options={"val_size": 100, **values})


@pytest.mark.parametrize("name", CLASSICAL_MODELS)
def test_each_baseline_learns_and_writes_a_run_directory(name, tiny_dataset, tmp_path: Path):
    run_dir = prepare_run_dir(tmp_path / name)
    result = fit(config(name), tiny_dataset, [RunDirWriter(run_dir)])
    assert result.test_accuracy > 0.9  # the synthetic classes are linearly separable
    results = json.loads((run_dir / "results.json").read_text())
    net_dir = prepare_run_dir(tmp_path / "net")
    fit(resolve_config("mlp", options={"epochs": 1, "val_size": 100, "model_args": {"hidden": [8]}}),
        tiny_dataset, [RunDirWriter(net_dir)])  # fmt: skip
    net_keys = set(json.loads((net_dir / "results.json").read_text()))
    assert net_keys <= set(results), net_keys - set(results)
    assert results["model"] == name and results["classical"]["library"] == "scikit-learn"
    assert results["params"] > 0 and results["size_mb"] > 0
    assert [r.epoch for r in read_history(run_dir)] == [1]
    assert (run_dir / "config.toml").is_file() and (run_dir / "environment.json").is_file()
    linear = name in ("logreg", "linear_svc")
    assert (run_dir / "model.safetensors").is_file() == linear
    assert results["classical"]["checkpoint"] == linear


@pytest.mark.parametrize("name", ["logreg", "linear_svc"])
def test_linear_models_round_trip_through_an_ordinary_checkpoint(name, tiny_dataset, tmp_path: Path):
    run_dir = prepare_run_dir(tmp_path / "run")
    result = fit(config(name), tiny_dataset, [RunDirWriter(run_dir)])
    model, meta = load_checkpoint(run_dir)
    norm = meta["normalization"]
    x = normalize(torch.from_numpy(tiny_dataset.test_images), norm["mean"], norm["std"])
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, result.test_logits, atol=1e-3, rtol=1e-3)
    assert result.params == 7850


def test_training_subset_and_smoke_mode_limit_the_images(tiny_dataset):
    result = fit(config("logreg", model_args={"train_size": 200}), tiny_dataset)
    assert result.classical.train_images == 200
    result = fit(config("random_forest", max_steps=2, batch_size=64), tiny_dataset)
    assert result.classical.train_images == 128


def test_dispatch_and_argument_errors(tiny_dataset):
    assert all(get_entry(n).is_baseline for n in CLASSICAL_MODELS)
    assert not get_entry("fastcnn").is_baseline
    result = fit(config("logreg"), tiny_dataset)
    assert result.classical.kind == "logreg" and result.has_checkpoint
    assert not fit(config("random_forest"), tiny_dataset).has_checkpoint
    with pytest.raises(UsageError, match="is a network"):
        fit_baseline(config("mlp_seed002"), tiny_dataset)
    with pytest.raises(UsageError, match="gamma"):
        check_model_args("rbf_svc", {"gamma": "wide"})
    with pytest.raises(UsageError, match="train_size"):
        create_model("logreg", train_size=-1)
    with pytest.raises(UsageError, match="all 10 classes"):
        fit(config("logreg", model_args={"train_size": 5}), tiny_dataset)


def test_compare_places_baselines_beside_networks(tiny_dataset, tmp_path: Path):
    plan = plan_from_models(["logreg", "rbf_svc", "mlp_seed002"])
    summary = run_compare(
        plan, plan.resolve({"epochs": 1, "val_size": 100}), Session(tmp_path / "cmp", data=tiny_dataset)
    ).to_json()
    assert [m["name"] for m in summary["models"]] == ["logreg", "rbf_svc", "mlp_seed002"]
    assert all(m["test_accuracy_mean"] > 0.5 for m in summary["models"])
    assert not (tmp_path / "cmp" / "rbf_svc" / "model.json").exists()


def test_cli_compare_with_a_baseline_writes_a_report(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    out = tmp_path / "cmp"
    plan = tmp_path / "plan.toml"
    plan.write_text(
        'title = "baselines"\n[defaults]\nval_size = 100\n'
        '[[runs]]\nmodel = "logreg"\n[[runs]]\nmodel = "random_forest"\n'
    )
    proc = run_cli("compare", "--config", str(plan), "--data-dir", str(tiny_data_dir), "--out", str(out),
                   env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "logreg" in proc.stdout and (out / "report.html").is_file() and (out / "report.md").is_file()
    assert "no checkpoint" in (out / "report.md").read_text()


def test_nothing_in_fmnist_unpickles():
    """Security rule: no pickle, no joblib, and torch.load only with weights_only=True."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(import|from)\s+(pickle|cPickle|joblib|dill|cloudpickle)\b", text, re.M):
            offenders.append(f"{path}: imports a pickle library")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
    assert not offenders, offenders
