"""An ensemble of finished runs that hold out different validation images: the default rule averages
every member and says so in one line; greedy asked for by name is refused with the reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fmnist.inference.ensemble_select import fallback_note
from fmnist.inference.predict import Predictor
from fmnist.inference.trust import Trust

SMOKE = ("-m", "mlp", "--model-arg", "hidden=[32]", "--epochs", "1", "--max-steps", "10", "--val-size", "1000",
         "--precision", "fp32", "--no-report")  # fmt: skip


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    """Two tiny real MLPs, seeds 1 and 2, each holding out the images its own split seed draws (as 0.3's runs did)."""
    data = os.environ.get("FMNIST_DATA")
    if not data or not Path(data).is_dir():
        pytest.skip("FMNIST_DATA is not set to the Fashion-MNIST folder")
    base = tmp_path_factory.mktemp("fallback")
    for seed in (1, 2):
        proc = run_cli("train", *SMOKE, "--seed", str(seed), "--split-seed", str(seed), "--out",
                       str(base / f"run{seed}"), "--data-dir", data)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return [base / "run1", base / "run2"], Path(data), base


def _note_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "every member is averaged" in line]


def test_the_default_rule_averages_every_member_and_says_so_once(split_runs):
    runs, data, base = split_runs
    out = base / "ens"
    proc = run_cli("ensemble", *map(str, runs), "--out", str(out), "--precision", "fp32", "--data-dir", str(data),
                   env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _note_lines(proc) == [fallback_note()]
    results = json.loads((out / "results.json").read_text())
    assert results["select"] == "all" and results["validation"]["shared"] is False
    assert [Path(m["run_dir"]).name for m in results["members"]] == ["run1", "run2"]
    assert [m["weight"] for m in results["members"]] == [0.5, 0.5]
    manifest = json.loads((out / "ensemble.json").read_text())
    assert [Path(m["path"]).name for m in manifest["members"]] == ["run1", "run2"]
    # Oracle: the plain mean of the two runs' test probabilities, from Predictor.
    from fmnist.data.sources import resolve_dataset

    dataset = resolve_dataset(str(data))
    mean = np.mean([Predictor(r, precision="fp32").probabilities(dataset.test_images) for r in runs], axis=0)
    assert results["test_accuracy"] == pytest.approx((mean.argmax(1) == dataset.test_labels).mean(), abs=2e-4)


def test_greedy_asked_for_by_name_is_refused_with_the_reason(split_runs):
    runs, data, base = split_runs
    proc = run_cli("ensemble", *map(str, runs), "--select", "greedy", "--out", str(base / "greedy"), "--data-dir",
                   str(data))  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "held out different validation images" in line and "--select all" in line
    assert not (base / "greedy").exists()


def test_the_api_hears_the_note_and_records_every_member(split_runs, tmp_path: Path):
    from fmnist.data.sources import resolve_dataset
    from fmnist.inference.ensemble_build import build_ensemble

    runs, data, _ = split_runs
    heard: list[str] = []
    results = build_ensemble(runs, tmp_path / "ens", dataset=resolve_dataset(str(data)), precision="fp32",
                             notify=heard.append)  # fmt: skip
    # Their hold-outs of 1,000 images each share too few to calibrate on, and the user hears that too.
    assert heard[0] == fallback_note() and results.select == "all"
    assert heard[1:] == [f"note: {Trust.load(tmp_path / 'ens').note}"] and "cannot be calibrated" in heard[1]
    assert all(m.chosen for m in results.members) and len(results.members) == 2


def test_compare_ensemble_of_seeds_with_their_own_splits_averages_them(split_runs, tmp_path: Path):
    _, data, _ = split_runs
    out = tmp_path / "cmp"
    proc = run_cli("compare", "--models", "mlp", "--seeds", "2", "--ensemble", "--epochs", "1", "--max-steps", "10",
                   "--val-size", "1000", "--split-seed", "-1", "--out", str(out), "--no-report", "--data-dir",
                   str(data), env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = _note_lines(proc)
    assert line.endswith(fallback_note())
    (row,) = json.loads((out / "compare.json").read_text())["ensembles"]
    assert row["select"] == "all" and [m["run_dir"] for m in row["members"]] == ["mlp-seed0", "mlp-seed1"]
    assert [m["weight"] for m in row["members"]] == [0.5, 0.5]
