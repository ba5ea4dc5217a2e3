"""Runs of one model with different seeds share their validation split by default, so `fmnist ensemble` of
them chooses greedily on it; a run saved before split_seed existed keeps the split its own seed drew."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import tomli_w

from conftest import run_cli
from fmnist.config import load_config_file
from fmnist.data.splits import saved_holdout

TRAIN = ["--model", "mlp", "--model-arg", "hidden=[16]", "--epochs", "1", "--val-size", "100", "--no-report"]


def test_two_seeds_then_ensemble_chooses_greedily_on_their_shared_split(tiny_data_dir: Path, tmp_path: Path):
    runs = [tmp_path / "seed1", tmp_path / "seed2"]
    for seed, run_dir in enumerate(runs, start=1):
        proc = run_cli("train", *TRAIN, "--seed", str(seed), "--out", str(run_dir), "--data-dir", str(tiny_data_dir))
        assert proc.returncode == 0, proc.stderr
        assert tomllib.loads((run_dir / "config.toml").read_text())["split_seed"] == 0
    proc = run_cli("ensemble", *map(str, runs), "--out", str(tmp_path / "ens"), "--data-dir", str(tiny_data_dir))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "ens" / "results.json").read_text())
    assert results["select"] == "greedy" and "held out by split seed 0" in proc.stdout

    # The same run as fmnist 0.4 wrote it (no split_seed key): its hold-out is its seed's, wherever it is read.
    old = tomllib.loads((runs[1] / "config.toml").read_text())
    del old["split_seed"]
    (runs[1] / "config.toml").write_text(tomli_w.dumps(old))
    assert saved_holdout(old) == (100, 2)
    assert load_config_file(runs[1] / "config.toml").validation_seed == 2
