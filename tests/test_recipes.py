"""Named recipes: each builds, each trains in smoke mode on the CPU (GPU recipes too), flags win."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from fmnist.api import make_config
from fmnist.errors import UsageError
from fmnist.training.recipes import RECIPES, accuracy_label, measured, record_measurement
from fmnist.training.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def few_test_images(tmp_path_factory: pytest.TempPathFactory):
    """The tiny data set with 20 test images: a recipe's TTA evaluates every validation and test image
    in up to six views, and for gpu-best's WRN-16-8 on a CPU those passes, not its two steps, took a minute."""
    from conftest import write_synthetic_idx
    from fmnist.data.dataset import load_idx_folder

    return load_idx_folder(write_synthetic_idx(tmp_path_factory.mktemp("few-test"), n_test=20))


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_trains_on_the_cpu_in_smoke_mode(name, few_test_images):
    config = make_config(recipe=name, max_steps=2, batch_size=16, val_size=20, eval_batch_size=256, device="cpu")
    assert config.model == RECIPES[name].model
    for key, value in RECIPES[name].settings.items():
        if key not in ("batch_size", "model_args"):
            assert getattr(config, key) == value, key
    result = fit(config, few_test_images)
    assert result.steps == 2 and len(result.test_logits) == 20 and 0 <= result.test_accuracy <= 1


def test_flags_override_a_recipe_and_models_must_match():
    config = make_config(recipe="cpu-94", epochs=3)
    assert config.epochs == 3 and config.tta == "flip-shift" and config.model_args["widths"] == (16, 32, 64)
    with pytest.raises(UsageError, match="recipe 'cpu-94' trains fastcnn, not mlp"):
        make_config("mlp", recipe="cpu-94")
    with pytest.raises(UsageError, match="unknown recipe"):
        make_config(recipe="fastest")


def test_accuracy_label_gives_the_spread_only_over_several_runs():
    assert accuracy_label({"runs": 3, "accuracy_mean": 0.94197, "accuracy_std": 0.00064}) == "94.20% ± 0.06 (3 runs)"
    assert accuracy_label({"runs": 1, "accuracy_mean": 0.934, "accuracy_std": 0.0}) == "93.40% (1 run)"


def test_a_new_measurement_replaces_its_machines_figures_and_joins_the_others():
    recorded = {"fast": [{"hardware": "cpu A", "accuracy_mean": 0.93}]}
    record_measurement(recorded, "fast", {"hardware": "cpu B", "accuracy_mean": 0.94})
    record_measurement(recorded, "fast", {"hardware": "cpu A", "accuracy_mean": 0.95})
    record_measurement(recorded, "cpu-94", {"hardware": "cpu B", "accuracy_mean": 0.96})
    assert recorded == {"fast": [{"hardware": "cpu A", "accuracy_mean": 0.95}, {"hardware": "cpu B", "accuracy_mean": 0.94}],
                        "cpu-94": [{"hardware": "cpu B", "accuracy_mean": 0.96}]}  # fmt: skip


def test_measured_reads_every_machine_and_ignores_malformed_entries(tmp_path: Path, monkeypatch):
    import fmnist.training.recipes as recipes

    path = tmp_path / "measured.json"
    monkeypatch.setattr(recipes, "MEASURED_FILE", path)
    assert measured() == {}  # no file: nothing measured, no error
    path.write_text(json.dumps({"fast": [{"hardware": "a"}, "junk", {"hardware": "b"}], "cpu-94": {"hardware": "a"}}))
    assert measured() == {"fast": [{"hardware": "a"}, {"hardware": "b"}]}
    path.write_text("[1, 2]")
    assert measured() == {}


def test_a_row_measured_on_other_settings_is_not_lent_to_the_changed_recipe(tmp_path: Path, monkeypatch):
    import fmnist.training.recipes as recipes

    path = tmp_path / "measured.json"
    monkeypatch.setattr(recipes, "MEASURED_FILE", path)
    current = recipes.settings_fingerprint("cpu-94")
    changed = json.loads(current) | {"epochs": json.loads(current)["epochs"] + 1}
    rows = [{"hardware": "now", "settings": current}, {"hardware": "before", "settings": json.dumps(changed)},
            {"hardware": "unfingerprinted"}]  # fmt: skip
    path.write_text(json.dumps({"cpu-94": rows, "gone": [{"hardware": "x", "settings": current}]}))
    assert measured() == {"cpu-94": [rows[0], rows[2]], "gone": []}


def test_accuracy_label_names_the_worst_run():
    from fmnist.training.recipes import accuracy_label

    figures = {"runs": 3, "accuracy": [0.9412, 0.9388, 0.9430], "accuracy_mean": 0.941, "accuracy_std": 0.0021}
    assert accuracy_label(figures) == "94.10% ± 0.21 (3 runs, worst 93.88%)"
    assert accuracy_label({"runs": 1, "accuracy": [0.93], "accuracy_mean": 0.93}) == "93.00% (1 run)"


def test_cli_lists_recipes_and_trains_one(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    listed = run_cli("recipes", env=isolated_env)
    assert listed.returncode == 0 and all(name in listed.stdout for name in RECIPES)
    assert "┃ recipe" in listed.stdout  # 200 columns: one table
    narrow = run_cli("recipes", env={**isolated_env, "COLUMNS": "80"})
    assert narrow.returncode == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 80
    for name, recipe in RECIPES.items():  # 80 columns: a block per recipe, its goal on one line
        assert f"{name} ({recipe.model})" in narrow.stdout and f"  for: {recipe.goal}" in narrow.stdout
    # A line per machine a recipe was measured on, and one "not measured yet" where none.
    lines = sum(max(1, len(rows)) for rows in (measured().get(name, []) for name in RECIPES))
    assert narrow.stdout.count("  measured: ") == lines
    proc = run_cli("train", "--recipe", "fast", "--max-steps", "3", "--val-size", "100", "--no-report",
                   "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "run"), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert 'model = "fastcnn"' in (tmp_path / "run" / "config.toml").read_text()


def test_frontier_harness_in_smoke_mode(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--recipes", "fast,mlp-baseline",
                           "--seeds", "2", "--max-steps", "2", "--val-size", "100", "--data-dir", str(tiny_data_dir),
                           "--ensemble", "--out", str(tmp_path / "f")], capture_output=True, text=True,
                          env=isolated_env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front:" in proc.stdout and (tmp_path / "f" / "frontier.png").stat().st_size > 1000
    # Every measured run is a normal run directory, and the seeds' ensemble is reported.
    rows = json.loads((tmp_path / "f" / "frontier.json").read_text())
    for seed in (0, 1):
        results = json.loads((tmp_path / "f" / "fast" / f"seed-{seed}" / "results.json").read_text())
        assert results["test_accuracy"] == rows["fast"]["accuracy"][seed]
    assert rows["fast"]["ensemble"]["members"] == 2 and "fast: ensemble of 2 seeds" in proc.stdout


def test_frontier_trains_the_seeds_side_by_side_with_jobs(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--recipes", "fast",
                           "--seeds", "2", "--jobs", "2", "--max-steps", "2", "--val-size", "100",
                           "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "f")], capture_output=True,
                          text=True, env=isolated_env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "f" / "frontier.json").read_text())["fast"]
    assert row["runs"] == 2 and row["command"].endswith("--seeds 2 --jobs 2")
    assert "2 runs at once" in row["hardware"]
    for seed in (0, 1):
        results = json.loads((tmp_path / "f" / "fast-jobs" / f"fast-seed{seed}" / "results.json").read_text())
        assert results["seed"] == seed and results["test_accuracy"] == row["accuracy"][seed]
    assert row["seconds_mean"] > 0
    assert "(sharing)" in proc.stdout


def test_frontier_redraws_the_recorded_figures_without_training(tmp_path: Path):
    recorded = [name for name, rows in measured().items() if any(not row.get("smoke") for row in rows)]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--plot-recorded",
                           "--out", str(tmp_path / "f")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "f" / "frontier.png").stat().st_size > 1000
    assert recorded and all(name in proc.stdout for name in recorded)
