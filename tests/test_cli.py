"""The command line as users run it: subprocesses, exit codes, one-line errors, files left intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli


def assert_one_line_error(proc, code: int, fragment: str):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_and_models(isolated_env):
    proc = run_cli("--help", env=isolated_env)
    assert proc.returncode == 0
    for command in ("data", "models", "train", "evaluate", "compare", "report"):
        assert command in proc.stdout
    proc = run_cli("models", env=isolated_env)
    assert proc.returncode == 0 and "fastcnn" in proc.stdout and "1,625,866" in proc.stdout


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["train", "--model", "nope"], 2, "unknown model 'nope'"),
        (["train", "--epochs", "0"], 2, "epochs must be a positive integer"),
        (["train", "--epochs", "-1"], 2, "epochs must be a positive integer"),
        (["train", "--batch-size", "0"], 2, "batch_size must be a positive integer"),
        (["train", "--lr", "fast"], 2, "Invalid value for '--lr'"),
        (["train", "--optimizer", "rmsprop"], 2, "'rmsprop' is not one of 'adam'"),
        (["train", "--model-arg", "depth=3"], 2, "has no argument 'depth'"),
        (["train", "--config", "missing.toml"], 2, "config file not found"),
        (["train", "--bogus"], 2, "No such option"),
        (["compare", "--models", "mlp,nope"], 2, "unknown model 'nope'"),
        (["evaluate", "no-such-run"], 2, "no such run directory"),
        (["data", "info", "--data-dir", "/no/such/folder"], 2, "does not exist"),
        (["report", "."], 2, "neither a run directory"),
    ],
)
def test_bad_input_gets_one_line_and_an_exit_code(args, code, fragment, isolated_env, tmp_path: Path):
    assert_one_line_error(run_cli(*args, env=isolated_env, cwd=tmp_path), code, fragment)


def test_validation_split_larger_than_the_training_set(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    # Found by the corpus: this used to surface as an internal error.
    proc = run_cli("train", "--model", "mlp_seed002", "--out", str(tmp_path / "r"), "--val-size", "600",
                   "--data-dir", str(tiny_data_dir), env=isolated_env)  # fmt: skip
    assert_one_line_error(proc, 2, "val_size 600 must be smaller than the 600 training images")


def test_output_folder_that_is_a_file(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    proc = run_cli("train", "--model", "mlp_seed002", "--out", str(target), "--data-dir", str(tiny_data_dir),
                   env=isolated_env)  # fmt: skip
    assert_one_line_error(proc, 2, "is a file")
    assert target.read_text() == "keep me"


def test_train_evaluate_report_and_no_clobbering(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    run_dir = tmp_path / "run"
    common = ["--data-dir", str(tiny_data_dir)]
    proc = run_cli("train", "--model", "mlp_seed002", "--epochs", "2", "--val-size", "100", "--out", str(run_dir),
                   *common, env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "mlp_seed002" and results["epochs_run"] == 2
    assert (run_dir / "report.md").is_file() and (run_dir / "figures" / "curves.png").is_file()

    proc = run_cli("evaluate", str(run_dir), *common, env=isolated_env)
    assert proc.returncode == 0, proc.stderr
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(results["test_accuracy"])
    assert len(evaluation["per_class"]) == 10 and len(evaluation["most_confused"]) <= 5
    assert "Most confused pairs" in proc.stdout

    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    proc = run_cli("train", "--model", "mlp_seed002", "--out", str(run_dir), *common, env=isolated_env)
    assert_one_line_error(proc, 2, "already holds a run")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_data_info_and_samples(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    proc = run_cli("data", "info", "--data-dir", str(tiny_data_dir), env=isolated_env)
    assert proc.returncode == 0, proc.stderr
    assert "Class distribution" in proc.stdout and "Ankle boot" in proc.stdout and "sha256" in proc.stdout
    out = tmp_path / "grid.png"
    proc = run_cli("data", "samples", "--out", str(out), "--data-dir", str(tiny_data_dir), env=isolated_env)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_folder_that_is_a_file_or_holds_mnist_digits(tmp_path: Path, isolated_env):
    from conftest import synthetic_arrays
    from fmnist.data.idx import write_idx

    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("x")
    assert_one_line_error(run_cli("data", "info", "--data-dir", str(not_a_folder), env=isolated_env), 2, "not a folder")
    digits = tmp_path / "mnist"
    digits.mkdir()
    (train_x, train_y), (test_x, test_y) = synthetic_arrays(100, 20)
    write_idx(digits / "train-images-idx3-ubyte.gz", train_x // 8)
    write_idx(digits / "train-labels-idx1-ubyte.gz", train_y)
    write_idx(digits / "t10k-images-idx3-ubyte.gz", test_x // 8)
    write_idx(digits / "t10k-labels-idx1-ubyte.gz", test_y)
    proc = run_cli("train", "--model", "mlp_seed002", "--out", str(tmp_path / "r"), "--data-dir", str(digits),
                   env=isolated_env)  # fmt: skip
    assert_one_line_error(proc, 1, "MNIST digits")


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 256 KiB tmpfs: a full disk for real, where this machine lets root mount one."""
    import os
    import subprocess

    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_gives_one_line_and_keeps_earlier_runs(tiny_disk: Path, tiny_data_dir: Path, isolated_env):
    earlier = tiny_disk / "earlier"
    proc = run_cli("train", "--model", "mlp", "--model-arg", "hidden=[8]", "--epochs", "1", "--out", str(earlier),
                   "--val-size", "100", "--no-report", "--data-dir", str(tiny_data_dir), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    # mlp_seed002's optimizer state alone is ~1.2 MB: it cannot fit in what is left.
    proc = run_cli("train", "--model", "mlp_seed002", "--epochs", "2", "--out", str(tiny_disk / "big"), "--no-report",
                   "--val-size", "100", "--data-dir", str(tiny_data_dir), env=isolated_env)  # fmt: skip
    assert_one_line_error(proc, 1, "no space left on device")
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before
    assert not [p for p in (tiny_disk / "big").iterdir() if p.name.endswith(".tmp")]


def test_train_with_seeds_reports_mean_and_std(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    out = tmp_path / "seeds"
    proc = run_cli("train", "--model", "mlp_seed002", "--epochs", "1", "--val-size", "100", "--seeds", "2",
                   "--seed", "5", "--out", str(out), "--no-report", "--data-dir", str(tiny_data_dir),
                   env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "compare.json").read_text())
    (model,) = summary["models"]
    assert model["seeds"] == [5, 6] and len(model["test_accuracy"]) == 2
    assert model["test_accuracy_std"] >= 0 and "±" in proc.stdout
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"mlp_seed002-seed5", "mlp_seed002-seed6"}
