"""fit(): learning, determinism, best-epoch selection, smoke mode, callbacks and the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fmnist.checkpoint import load_checkpoint
from fmnist.config import build_config
from fmnist.device import resolve_precision
from fmnist.runs import RunDirWriter, prepare_run_dir, read_history
from fmnist.train import TrainCallback, fit


def tiny_config(model="mlp", **values):
    base = {"epochs": 3, "batch_size": 64, "val_size": 100, "lr": 3e-3, "eval_batch_size": 128}
    if model == "mlp":
        base["model_args"] = {"hidden": [32]}
    return build_config(model, cli_values={**base, **values})


def test_learns_the_synthetic_task(tiny_dataset):
    result = fit(tiny_config(), tiny_dataset)
    assert result.test_accuracy > 0.9
    assert result.epochs_run == 3 and len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert 1 <= result.best_epoch <= 3
    summary = result.summary()
    for key in ("model", "params", "test_accuracy", "test_loss", "best_epoch", "epochs_run", "train_seconds", "data"):
        assert key in summary
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["data"]["sha256"]["train_images"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_numbers(tiny_dataset, precision):
    if precision == "bf16" and resolve_precision("auto", torch.device("cpu")) != "bf16":
        pytest.skip("no fast bf16 on this CPU")
    config = dict(model="fastcnn", epochs=2, flip=True, translate=2, erase=0.3, precision=precision)
    a = fit(tiny_config(**config), tiny_dataset)
    b = fit(tiny_config(**config), tiny_dataset)
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]
    assert a.test.loss == b.test.loss
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    c = fit(tiny_config(seed=1, **config), tiny_dataset)
    assert c.history[0].train_loss != a.history[0].train_loss


def test_max_steps_smoke_mode(tiny_dataset):
    result = fit(tiny_config(epochs=50, max_steps=3), tiny_dataset)
    assert result.steps == 3 and result.epochs_run == 1


def test_best_epoch_weights_are_the_ones_kept(tiny_dataset):
    class Snapshot(TrainCallback):
        def __init__(self):
            self.val = {}

        def on_epoch_end(self, record, model, is_best):
            self.val[record.epoch] = record.val_accuracy

    snap = Snapshot()
    result = fit(tiny_config(epochs=4, lr=0.05, optimizer="sgd"), tiny_dataset, [snap])
    best = max(snap.val.values())
    assert snap.val[result.best_epoch] == best


def test_early_stopping_stops(tiny_dataset):
    result = fit(tiny_config(epochs=30, early_stopping=1, lr=1e-9, optimizer="sgd"), tiny_dataset)
    assert result.stopped_early and result.epochs_run < 30


def test_every_scheduler_and_optimizer_runs(tiny_dataset):
    for optimizer in ("adam", "adamw", "sgd"):
        for scheduler in ("none", "plateau", "onecycle", "cosine"):
            result = fit(tiny_config(epochs=1, optimizer=optimizer, scheduler=scheduler, label_smoothing=0.1), tiny_dataset)
            assert result.steps > 0


def test_run_directory_contents(tiny_dataset, tmp_path: Path):
    run_dir = prepare_run_dir(tmp_path / "run")
    result = fit(tiny_config(), tiny_dataset, [RunDirWriter(run_dir)])
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "environment.json", "metrics.jsonl", "model.safetensors", "model.json", "results.json"} <= names
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert [row["epoch"] for row in read_history(run_dir)] == [1, 2, 3]
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch"] == torch.__version__
    model, meta = load_checkpoint(run_dir)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(x), result.model(x))
    assert meta["extra"]["data"]["sha256"] == results["data"]["sha256"]
