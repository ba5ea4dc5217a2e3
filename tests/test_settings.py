"""Training settings are declared once, on TrainConfig: the CLI options of `train` and `compare`
and the TOML keys come from that declaration, so all three must agree on every setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fmnist import api
from fmnist.cli.app import main
from fmnist.config import TrainConfig, load_config_file, settings
from fmnist.training.settings import resolve_config

# Fields that are not options of their own (each command spells --model, --model-arg and
# --data-dir itself; mean/std follow --normalize and recipes; eval_batch_size is internal; sources
# records which layer set each of the others).
NOT_OPTIONS = {"model", "model_args", "recipe", "mean", "std", "eval_batch_size", "data_dir", "sources"}
# Values the generic rule below would make invalid (a teacher is recorded as an absolute path).
SPECIAL = {"ema": 0.99, "crop_pad": 3, "device": "cpu", "precision": "fp32", "teacher": "/runs/teacher"}


def other_value(field: dataclasses.Field) -> Any:
    """A valid value different from the field's default."""
    if field.name in SPECIAL:
        return SPECIAL[field.name]
    default = field.default
    if field.metadata["choices"]:
        return next(c for c in field.metadata["choices"] if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 2
    return default / 2 if default else 0.125


def as_args(field: dataclasses.Field, value: Any) -> list[str]:
    flag = (field.metadata["flags"] or ("--" + field.name.replace("_", "-"),))[0]
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, str(value)]


class Captured(BaseException):  # passes through the CLI's one-line error handling
    pass


def parsed_options(monkeypatch, argv: list[str], target: str) -> dict[str, Any]:
    """What the CLI hands the API for `argv`, captured before anything trains."""
    seen: dict[str, Any] = {}

    def capture(*args: Any, **kwargs: Any):
        seen.update(kwargs)
        raise Captured

    monkeypatch.setattr(api, target, capture)
    with pytest.raises(Captured):
        main(argv)
    return {k: v for k, v in seen.items() if v is not None}


def test_every_config_field_is_a_setting_or_deliberately_not():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {f.name for f in settings()} == names - NOT_OPTIONS


@pytest.mark.parametrize("field", settings(), ids=lambda f: f.name)
def test_cli_toml_and_config_agree(field, monkeypatch, tmp_path: Path):
    value = other_value(field)
    assert value != field.default
    from_flag = parsed_options(monkeypatch, ["train", *as_args(field, value)], "make_config")
    assert from_flag == {field.name: value}
    toml = tmp_path / "config.toml"
    toml.write_text(tomli_w.dumps({field.name: value}))
    by_flag = resolve_config("mlp", options=from_flag)
    by_file = resolve_config("mlp", file_values={field.name: value})
    assert getattr(by_flag, field.name) == getattr(by_file, field.name) == value
    saved = tmp_path / "saved.toml"
    saved.write_text(by_flag.to_toml())
    assert load_config_file(saved) == by_flag  # a run's config.toml reads back as the same config


@pytest.mark.parametrize("field", settings(), ids=lambda f: f.name)
def test_compare_takes_every_setting_for_every_run(field, monkeypatch):
    value = other_value(field)
    options = parsed_options(monkeypatch, ["compare", *as_args(field, value)], "compare")
    assert options[field.name] == value
