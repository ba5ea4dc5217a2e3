"""Runs survive interruption: SIGKILL at random points (and mid-write), resume, identical result."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
from safetensors.torch import load_file

from conftest import default_sigint, run_cli
from fmnist.config import TrainConfig, setting
from fmnist.errors import CheckpointError
from fmnist.training.results import StopSignal, TrainCallback
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import Trainer, TrainingInterrupted, fit

TRAIN_ARGS = ["--model", "mlp", "--model-arg", "hidden=[64]", "--epochs", "6", "--batch-size", "32",
              "--val-size", "100", "--flip", "--translate", "1", "--erase", "0.2", "--scheduler", "onecycle",
              "--early-stopping", "0", "--ema", "0.9", "--no-report"]  # fmt: skip


def train(run_dir: Path, data_dir: Path, env, extra=()):
    return run_cli("train", *TRAIN_ARGS, "--out", str(run_dir), "--data-dir", str(data_dir), *extra, env=env)


def resume(run_dir: Path, data_dir: Path, env):
    return run_cli("train", "--resume", str(run_dir), "--data-dir", str(data_dir), "--no-report", env=env)


def final_state(run_dir: Path):
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("train_seconds",):
        results.pop(key)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in history:
        row.pop("seconds"), row.pop("images_per_second")
    return results, history, load_file(run_dir / "model.safetensors")


def assert_identical(a: Path, b: Path):
    results_a, history_a, weights_a = final_state(a)
    results_b, history_b, weights_b = final_state(b)
    assert results_a == results_b
    assert history_a == history_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert weights_a[name].equal(weights_b[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    from conftest import write_synthetic_idx

    base = tmp_path_factory.mktemp("resume")
    data = write_synthetic_idx(base / "data", n_train=1200, n_test=200)
    env = dict(os.environ, COLUMNS="200")
    env.pop("FMNIST_DATA", None)
    proc = train(base / "reference", data, env)
    assert proc.returncode == 0, proc.stderr
    return base, data, env


def test_kill_at_random_points_then_resume_matches_uninterrupted_run(reference):
    base, data, env = reference
    rng = random.Random(1234)
    for attempt in range(3):
        run_dir = base / f"killed-{attempt}"
        cmd = [sys.executable, "-m", "fmnist", "train", *TRAIN_ARGS, "--out", str(run_dir), "--data-dir", str(data)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for the first saved epoch, then kill somewhere in the rest of the run.
        deadline = time.monotonic() + 120
        while not (run_dir / "state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(10):  # resume until the run finishes (it may have finished before the kill)
            if (run_dir / "results.json").exists():
                break
            result = resume(run_dir, data, env)
            assert result.returncode == 0, result.stderr
        assert_identical(base / "reference", run_dir)


@pytest.mark.parametrize("target", ["state-:2", "state.json:3", "metrics.jsonl:2", "model.safetensors:1"])
def test_kill_during_a_write_then_resume(reference, target):
    base, data, env = reference
    run_dir = base / f"write-{target.replace(':', '-').replace('.', '_')}"
    proc = train(run_dir, data, {**env, "FMNIST_FAULT_KILL_WRITE": target})
    assert proc.returncode == -signal.SIGKILL
    # The kill came mid-write: a temp file may remain, but what the run will read is whole.
    from fmnist.training.state import has_state, load_state

    if has_state(run_dir):
        load_state(run_dir)  # raises on a torn state.json or a tensor file that does not match it
    for name in ("config.toml", "environment.json"):
        assert (run_dir / name).stat().st_size > 0, name
    for _ in range(10):
        if (run_dir / "results.json").exists():
            break
        result = resume(run_dir, data, env)
        assert result.returncode == 0, result.stderr
    assert_identical(base / "reference", run_dir)


def test_ctrl_c_saves_state_exits_130_and_resumes(reference):
    base, data, env = reference
    run_dir = base / "interrupted"
    cmd = [sys.executable, "-m", "fmnist", "train", *TRAIN_ARGS, "--out", str(run_dir), "--data-dir", str(data)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_dir / "state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, stderr
    assert "fmnist train --resume" in stderr and "Traceback" not in stderr
    result = resume(run_dir, data, env)
    assert result.returncode == 0, result.stderr
    assert_identical(base / "reference", run_dir)


def test_resume_refuses_finished_and_foreign_directories(reference, tmp_path: Path):
    base, data, env = reference
    proc = resume(base / "reference", data, env)
    assert proc.returncode == 2 and "already finished" in proc.stderr
    proc = resume(tmp_path, data, env)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_second_run_on_a_locked_directory_fails_clearly(reference):
    base, data, env = reference
    run_dir = base / "locked"
    cmd = [sys.executable, "-m", "fmnist", "train", *TRAIN_ARGS, "--epochs", "40", "--out", str(run_dir),
           "--data-dir", str(data)]  # fmt: skip
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "state.json").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        second = resume(run_dir, data, env)
        assert second.returncode == 1
        assert "another fmnist process is writing to this run directory" in second.stderr
    finally:
        first.kill()
        first.wait()


class StopAt(TrainCallback):
    """Asks the run to stop after step `step`, as Ctrl-C would."""

    def __init__(self, stop: StopSignal, step: int) -> None:
        self.stop, self.step = stop, step

    def on_step(self, step, *args) -> None:
        if step == self.step:
            self.stop.request()


@dataclasses.dataclass
class NewerConfig(TrainConfig):
    """TrainConfig as a later fmnist may declare it: one setting more, which older states never saved."""

    new_setting: float = setting(0.5, "A setting added after the state was saved.")


def test_a_setting_added_since_the_state_was_saved_takes_its_default_and_the_run_resumes(tiny_dataset, tmp_path):
    config = resolve_config("mlp", options={"model_args": {"hidden": [32]}, "epochs": 3, "batch_size": 64,
                                             "val_size": 100, "seed": 1, "flip": True, "ema": 0.9})  # fmt: skip
    reference = fit(config, tiny_dataset)
    stop = StopSignal()
    with pytest.raises(TrainingInterrupted):  # mid-epoch 2: a state with history, best weights and sums
        Trainer(config, tiny_dataset, [StopAt(stop, 14)], state_dir=tmp_path, stop=stop).run()
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2
    newer = NewerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    trainer = Trainer(newer, tiny_dataset, state_dir=tmp_path)
    trainer.resume()
    resumed = trainer.run()
    assert resumed.test_logits.equal(reference.test_logits)
    assert [dataclasses.replace(r, seconds=0, images_per_second=0) for r in resumed.history] == [
        dataclasses.replace(r, seconds=0, images_per_second=0) for r in reference.history
    ]
    for (name, a), b in zip(resumed.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert a.equal(b), name


def test_a_run_stopped_in_a_low_resolution_epoch_resumes_at_that_resolution(tiny_dataset, tmp_path):
    config = resolve_config("fastcnn_deep", options={"model_args": {"widths": [8, 8, 8]}, "epochs": 3,
                                                     "low_res_epochs": 2, "batch_size": 64, "val_size": 100,
                                                     "flip": True})  # fmt: skip
    reference = fit(config, tiny_dataset)
    stop = StopSignal()
    with pytest.raises(TrainingInterrupted):  # mid-epoch 2, the second of the two at 24x24
        Trainer(config, tiny_dataset, [StopAt(stop, 14)], state_dir=tmp_path, stop=stop).run()
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2
    trainer = Trainer(config, tiny_dataset, state_dir=tmp_path)
    trainer.resume()
    resumed = trainer.run()
    assert resumed.test_logits.equal(reference.test_logits)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in reference.history]


def test_a_setting_both_configs_have_but_with_another_value_still_refuses(tiny_dataset, tmp_path):
    config = resolve_config("mlp", options={"model_args": {"hidden": [16]}, "epochs": 2, "batch_size": 64,
                                             "val_size": 100})  # fmt: skip
    stop = StopSignal()
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tiny_dataset, [StopAt(stop, 3)], state_dir=tmp_path, stop=stop).run()
    for changed, said in ((dataclasses.replace(config, lr=2e-3), "lr: 0.001 -> 0.002"),
                          (NewerConfig(**{**config.to_dict(), "new_setting": 0.7}), "new_setting: 0.5 -> 0.7"),
                          (dataclasses.replace(config, model_args={"hidden": (32,)}), "model_args")):  # fmt: skip
        with pytest.raises(CheckpointError, match=rf"saved state belongs to a different configuration \(.*{said}"):
            Trainer(changed.validate(), tiny_dataset, state_dir=tmp_path).resume()


def _drop_setting(run_dir: Path, *keys: str) -> None:
    """Make a run directory look written by an fmnist from before `keys` existed: config.toml and state."""
    config = tomllib.loads((run_dir / "config.toml").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    for key in keys:
        del config[key], state["config"][key]
    (run_dir / "config.toml").write_text(tomli_w.dumps(config))
    (run_dir / "state.json").write_text(json.dumps(state))


def test_a_run_saved_before_split_seed_existed_resumes_on_the_split_of_its_own_seed(reference):
    """0.3.1 wrote no split_seed: its runs held out what their seed drew, which the new default (0) must not change."""
    base, data, env = reference
    seed_1 = ["--seed", "1", "--split-seed", "-1"]  # as every run before split_seed's default became 0
    expected = train(base / "seed1-follow", data, env, seed_1)
    assert expected.returncode == 0, expected.stderr
    run_dir = base / "seed1-old"
    killed = train(run_dir, data, {**env, "FMNIST_FAULT_KILL_WRITE": "state-:3"}, seed_1)
    assert killed.returncode == -signal.SIGKILL and json.loads((run_dir / "state.json").read_text())["epoch"] == 3
    _drop_setting(run_dir, "split_seed", "cutmix")  # cutmix: a setting "added since", left at its default
    result = resume(run_dir, data, env)
    assert result.returncode == 0, result.stderr
    assert_identical(base / "seed1-follow", run_dir)


def test_state_json_keeps_the_layout_older_runs_were_saved_in(tiny_dataset, tmp_path):
    """state.json as fmnist 0.4 wrote it, before SavedState: the tensor file's name and sha256 first, then the
    trainer's progress at the top level, then config, optimizer, scheduler, RNGs and data; and a state read back
    writes the very bytes it was read from, so a resumed old run's file changes only as training changes it."""
    from fmnist.training.state import load_state
    from fmnist.training.trainer import Progress

    config = resolve_config("lenet5", options={"epochs": 2, "batch_size": 64, "val_size": 100, "optimizer": "muon"})
    stop = StopSignal()
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tiny_dataset, [StopAt(stop, 3)], state_dir=tmp_path, stop=stop).run()
    raw = (tmp_path / "state.json").read_text()
    # Progress's fields in declaration order, less those in the tensor file (mid-epoch, epoch_order is a tensor).
    progress = [f.name for f in dataclasses.fields(Progress) if f.name not in ("epoch_order", "best")]
    assert progress[:3] == ["epoch", "batch_in_epoch", "step"]
    assert list(json.loads(raw)) == ["state_version", "tensors_file", "tensors_sha256", *progress, "config",
                                     "optimizer", "scheduler", "rng", "data_sha256"]  # fmt: skip
    assert list(json.loads(raw)["optimizer"]) == ["param_groups", "scalars"]
    _, saved = load_state(tmp_path)
    assert json.dumps(saved.to_json(), indent=2) + "\n" == raw
