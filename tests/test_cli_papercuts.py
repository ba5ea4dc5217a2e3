"""A newcomer's paper cuts (issue 28), each as the user met it: through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import run_cli
from fmnist import __version__
from test_cli import assert_one_line_error
from test_cli_output import COMMANDS, _help

TINY = ["--val-size", "100", "--batch-size", "50"]


def run_merged(*args: str, env: dict[str, str]) -> list[str]:
    """The lines of stdout and stderr as a reader of a log sees them: one stream, in order."""
    proc = subprocess.run([sys.executable, "-m", "fmnist", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    return proc.stdout.splitlines()


def test_version():
    proc = run_cli("--version", env=None)
    assert proc.returncode == 0 and proc.stdout.strip() == f"fmnist {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_an_example_of_its_command(command: str):
    text = _help(command)
    assert "Examples:" in text
    assert f"$ fmnist {command}".rstrip() in text, text


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["trian"], "Did you mean 'train'?"),
        (["train", "--model", "fastcn"], "(did you mean 'fastcnn'?)"),
        (["compare", "--models", "mlp,lenet"], "(did you mean 'lenet5'?)"),
        (["train", "--recipe", "cpu94"], "(did you mean 'cpu-94'?)"),
        (["models", "efficientnet"], "(did you mean 'efficientnet_b0'?)"),
    ],
)
def test_mistyped_names_get_a_suggestion(args, fragment, isolated_env, tmp_path: Path):
    assert_one_line_error(run_cli(*args, env=isolated_env, cwd=tmp_path), 2, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [  # a path given that is not there, or not what the command takes: a usage mistake, like a bad option
        (["evaluate", "no-such-run"], "no such run directory"),
        (["export", "no-such-run"], "no such run directory"),
        (["report", "no-such-run"], "neither a run directory"),
        (["report", "."], "neither a run directory"),
        (["data", "info", "--data-dir", "/no/such/folder"], "does not exist"),
        (["train", "--config", "missing.toml"], "config file not found"),
        (["compare", "--config", "missing.toml"], "config file not found"),
    ],
)
def test_usage_mistakes_exit_2(args, fragment, isolated_env, tmp_path: Path):
    assert_one_line_error(run_cli(*args, env=isolated_env, cwd=tmp_path), 2, fragment)


def test_model_args_as_lists_and_bad_values(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    out = tmp_path / "mlp"
    proc = run_cli("train", "--model", "mlp", "--model-arg", "hidden=32,16", "--max-steps", "3", "--no-report",
                   "--out", str(out), *TINY, "--data-dir", str(tiny_data_dir), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "results.json").read_text())["model_args"]["hidden"] == [32, 16]
    assert "hidden = [ 32, 16,]" in (out / "config.toml").read_text().replace("\n", "").replace("    ", " ")
    for bad, fragment in [("hidden=32,x", "mlp.hidden[1] must be an integer, not 'x'"),
                          ("dropout=high", "mlp.dropout must be a number, not 'high'"),
                          ("batch_norm=1", "mlp.batch_norm must be true or false")]:  # fmt: skip
        proc = run_cli("train", "--model", "mlp", "--model-arg", bad, env=isolated_env, cwd=tmp_path)
        assert_one_line_error(proc, 2, fragment)
        assert "not supported" not in proc.stderr


def test_models_shows_arguments_and_defaults_uncut_off_a_terminal(isolated_env):
    env = {**isolated_env, "COLUMNS": "80"}  # even where a narrow width is set, a pipe gets whole lines
    proc = run_cli("models", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if line.startswith("efficientnet_b0 "))
    assert "EfficientNet-B0" in line and "total_stride=4" in line  # description and arguments on one line
    assert "hidden=256,128" in proc.stdout
    proc = run_cli("models", "fastcnn", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "--model-arg widths=16,32,64" in proc.stdout and "recipes: fast, cpu-94" in proc.stdout


def test_train_says_its_result_before_the_report_and_flags_a_smoke_run(tiny_data_dir: Path, tmp_path: Path,
                                                                       isolated_env):  # fmt: skip
    out = tmp_path / "a-rather-long-folder-name-so-that-the-result-line-is-well-past-eighty-columns" / "run"
    env = {**isolated_env, "COLUMNS": "80"}
    lines = run_merged("train", "--model", "mlp_seed002", "--epochs", "2", "--max-steps", "3", "--out", str(out),
                       *TINY, "--data-dir", str(tiny_data_dir), env=env)  # fmt: skip
    result = next(i for i, line in enumerate(lines) if "test accuracy" in line)
    writing = lines.index("writing report…")
    report = next(i for i, line in enumerate(lines) if line.startswith("report: "))
    assert result < writing < report, lines
    assert str(out) in lines[result] and lines[report] == f"report: {out / 'report.html'}"  # paths whole, one line
    assert "3 steps of" in lines[result] and "best epoch 1/1" not in lines[result]
    assert "smoke run: 3 steps, not a trained model" in lines
    assert not (out / ".lock").exists()  # released and removed once the run finished
    markdown = (out / "report.md").read_text()
    top = markdown.split("## Contents")[0]
    assert "smoke run: 3 steps, not a trained model" in top
    assert "| mlp_seed002 | `mlp_seed002` | none (built-in defaults) | 1 of 2 |" in top
    html = (out / "report.html").read_text()
    assert 'class="banner"' in html and "smoke run: 3 steps, not a trained model" in html


def test_compare_takes_a_runs_config_and_names_the_file_of_a_bad_value(tiny_data_dir: Path, tmp_path: Path,
                                                                         isolated_env):  # fmt: skip
    run = tmp_path / "run"
    proc = run_cli("train", "--model", "mlp", "--model-arg", "hidden=16", "--epochs", "1", "--no-report",
                   "--out", str(run), *TINY, "--data-dir", str(tiny_data_dir), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "again"
    proc = run_cli("compare", "--config", str(run / "config.toml"), "--seeds", "2", "--no-report", "--out", str(out),
                   "--data-dir", str(tiny_data_dir), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "compare.json").read_text())
    assert [r["run_dir"] for r in summary["runs"]] == ["mlp-seed0", "mlp-seed1"]
    assert summary["runs"][0]["model_args"]["hidden"] == [16]
    assert "mlp (mlp)" not in proc.stdout and "(1 epochs)" not in proc.stdout + proc.stderr
    assert "(1 epoch)" in proc.stdout + proc.stderr

    bad = tmp_path / "bad" / "config.toml"
    bad.parent.mkdir()
    bad.write_text((run / "config.toml").read_text().replace("epochs = 1", "epochs = 0"))
    for command in ("train", "compare"):
        proc = run_cli(command, "--config", str(bad), env=isolated_env)
        assert_one_line_error(proc, 2, f"{bad}")
        assert "epochs must be a positive integer" in proc.stderr
    plan = tmp_path / "plan.toml"
    plan.write_text('[[runs]]\nname = "wide"\nmodel = "mlp"\nlr = -1\n')
    assert_one_line_error(run_cli("compare", "--config", str(plan), env=isolated_env), 2, f"{plan}, run 'wide': lr")


def test_show_config_prints_each_setting_with_its_source_and_trains_nothing(tmp_path: Path, isolated_env):
    proc = run_cli("train", "--show-config", env=isolated_env, cwd=tmp_path)  # no data anywhere: none is loaded
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in proc.stdout.splitlines()[1:]}
    assert rows["model"] == ['"fastcnn"', "default"] and rows["recipe"] == ['"fast"', "model fastcnn"]
    assert rows["optimizer"] == ['"muon"', "model fastcnn"] and rows["momentum"] == ["0.9", "default"]
    assert proc.stderr == "" and not (tmp_path / "runs").exists()
    file = tmp_path / "my.toml"
    file.write_text("epochs = 2\n[model_args]\nwidths = [12, 36, 72]\n")
    proc = run_cli("train", "--show-config", "--recipe", "cpu-94", "--config", str(file), "--model-arg",
                   "pool_before_last_conv=false", "--lr", "0.01", "--no-flip", env=isolated_env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in proc.stdout.splitlines()[1:]}
    assert rows["epochs"] == ["2", f"file {file}"] and rows["model_args.widths"][1].endswith(f"file {file}")
    assert rows["model_args.pool_before_last_conv"] == ["false", "option"] and rows["lr"] == ["0.01", "option"]
    assert rows["tta"] == ['"none"', "rule: --no-flip turns off mirror TTA"]
    assert rows["weight_decay"] == ["0.05", "recipe cpu-94"] and rows["recipe"] == ['"cpu-94"', "option"]
    assert not (tmp_path / "runs").exists()


def test_a_runs_config_toml_records_where_each_setting_came_from(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    out = tmp_path / "run"
    proc = run_cli("train", "--model", "mlp", "--model-arg", "hidden=16", "--max-steps", "2", "--no-report",
                   "--out", str(out), *TINY, "--data-dir", str(tiny_data_dir), env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sources = tomllib.loads((out / "config.toml").read_text())["sources"]
    assert sources["model"] == sources["max_steps"] == sources["model_args.hidden"] == "option"
    assert sources["epochs"] == "default" and sources["model_args.dropout"] == "default"
    proc = run_cli("train", "--resume", str(out), "--show-config", env=isolated_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split() == ["model", '"mlp"', "option"]


@pytest.mark.parametrize("command", ["train", "train-with-model-arg", "compare", "sweep"])
def test_a_malformed_config_file_is_one_line_naming_the_file_and_the_line(command, tmp_path: Path, isolated_env):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 2\n[model_args]\nhidden = [16,\nlr = 0.1\n")
    args = {"train": ["train", "--config"], "train-with-model-arg": ["train", "--model-arg", "hidden=8", "--config"],
            "compare": ["compare", "--config"], "sweep": ["sweep"]}[command]  # fmt: skip
    proc = run_cli(*args, str(bad), env=isolated_env, cwd=tmp_path)
    assert_one_line_error(proc, 2, f"{bad}:4: invalid TOML (")
