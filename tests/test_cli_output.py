"""What people read: output off a terminal (one line per epoch, nothing past 80 columns) and `--help`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_cli
from fmnist.training.progress import PLAIN_WIDTH

EPOCH_LINE = re.compile(r"^(\S+)\s+(\d+)/(\d+)\s+loss ")
COMMANDS = ["", "data", "data info", "data samples", "data fetch", "models", "train", "evaluate", "compare", "report",
            "ablate", "predict", "export", "serve"]  # fmt: skip


def test_piped_compare_prints_one_short_line_per_epoch(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    env = {**isolated_env, "COLUMNS": "80", "TERM": "dumb"}
    env.pop("FORCE_COLOR", None)
    proc = run_cli("compare", "--models", "mlp_seed002,lenet5", "--epochs", "2", "--val-size", "100",
                   "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "cmp"), "--no-report", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    lines = output.splitlines()
    # Progress lines fit the plain width; a line that names a path is never wrapped, so the path stays whole.
    long = [line for line in lines if len(line) > PLAIN_WIDTH and str(tmp_path) not in line]
    assert not long, long
    assert str(tmp_path / "cmp") in output
    assert "\r" not in output and "\x1b[" not in output  # no progress-bar redraws, no cursor codes
    epochs = [EPOCH_LINE.match(line).groups()[:2] for line in lines if EPOCH_LINE.match(line)]
    assert epochs == [("mlp_seed002", "1"), ("mlp_seed002", "2"), ("lenet5", "1"), ("lenet5", "2")]


def _help(command: str) -> str:
    proc = run_cli(*command.split(), "--help", env=None)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_python_types_or_cut_offs(command: str):
    text = _help(command)
    assert "<str>" not in text and "<list[" not in text and "<int" not in text and "<float" not in text
    assert not re.search(r"\w\.\.\.$", text, re.M), "a description is cut with '...'"


def test_commands_are_listed_in_workflow_order():
    text = _help("")
    listed = re.findall(r"^  (\w+) ", text.split("Commands:")[1], re.M)
    order = ["data", "models", "train", "evaluate", "compare", "report", "ablate", "predict", "export", "serve"]
    assert [c for c in listed if c in order] == order


def test_train_help_shows_effective_defaults_and_choices():
    text = " ".join(_help("train").split())
    assert "[default: fastcnn]" in text
    from fmnist.training.recipes import FAST_SETTINGS

    for fragment in (f"fastcnn: {FAST_SETTINGS['epochs']}", f"fastcnn: {FAST_SETTINGS['optimizer']}", f"fastcnn: {FAST_SETTINGS['lr']}", "fastcnn: onecycle", "[default: 128",
                     "[adam|adamw|muon|sgd]", "[none|plateau|onecycle|cosine]", "[none|flip|flip-shift]"):  # fmt: skip
        assert fragment in text, fragment
