"""Config layering, validation and the TOML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmnist.config import TrainConfig, load_config_file
from fmnist.errors import UsageError
from fmnist.training.recipes import build_config


def test_layers_defaults_recipe_file_flags():
    config = build_config("fastcnn")
    assert config.optimizer == "muon" and config.flip is True  # from fastcnn's recipe
    assert config.model_args["whiten"] is True and config.model_args["widths"] == (16, 32, 64)
    config = build_config(file_values={"model": "fastcnn", "epochs": 3, "lr": 0.01}, cli_values={"epochs": 2})
    assert config.epochs == 2 and config.lr == 0.01
    assert build_config("mlp_seed002").optimizer == "adam"  # no recipe: built-in defaults


def test_model_args_merge_key_by_key():
    # A flag changes one argument and keeps the recipe's others (it used to replace them all).
    config = build_config("fastcnn", cli_values={"model_args": {"whiten": False}})
    assert config.model_args["whiten"] is False and config.model_args["widths"] == (16, 32, 64)
    config = build_config(
        "fastcnn", file_values={"model_args": {"widths": [8, 16, 32]}}, cli_values={"model_args": {"whiten": False}}
    )
    assert config.model_args["widths"] == (8, 16, 32) and config.model_args["whiten"] is False
    # A named recipe's net is the one it was measured with, whatever the model's own recipe adds.
    cpu94 = build_config(recipe="cpu-94")
    assert cpu94.model_args["whiten"] is False and cpu94.model_args["widths"] == (24, 72, 144)


def test_toml_round_trip(tmp_path: Path):
    config = build_config("mlp", cli_values={"model_args": {"hidden": [64, 32]}, "epochs": 3, "flip": True})
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    again = load_config_file(path)
    assert again == config
    assert again.model_args["hidden"] == (64, 32)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": -3}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"lr": 0}, "lr must be a number in"),
        ({"lr": "nan"}, "finite"),
        ({"optimizer": "adagrad"}, "optimizer must be one of adam, adamw, muon, sgd"),
        ({"scheduler": "step"}, "scheduler must be one of"),
        ({"flip": "maybe"}, "flip must be true or false"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"erase": 1.5}, "erase must be a probability"),
        ({"colour": "red"}, "unknown config key 'colour'"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"model_args": {"widths": [8]}}, "invalid arguments"),
        ({"model_args": {"depth": 3}}, "has no argument 'depth'"),
    ],
)
def test_invalid_values_are_usage_errors(values, message):
    with pytest.raises(UsageError, match=message):
        build_config("fastcnn", file_values=values)


def test_config_file_errors(tmp_path: Path):
    with pytest.raises(UsageError, match="config file not found"):
        load_config_file(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    with pytest.raises(UsageError, match="invalid TOML"):
        load_config_file(bad)


def test_normalisation_switch():
    config = TrainConfig(normalize=False)
    assert (config.input_mean, config.input_std) == (0.0, 1.0)


def test_turning_flips_off_drops_a_default_mirror_tta_but_not_an_explicit_one():
    assert build_config("fastcnn").tta == "flip"  # fastcnn's recipe: flips and the mirror average
    assert build_config("fastcnn", cli_values={"flip": False}).tta == "none"
    assert build_config(recipe="cpu-94", file_values={"flip": False}).tta == "none"
    assert build_config("fastcnn", cli_values={"flip": False, "tta": "flip"}).tta == "flip"
    assert build_config("fastcnn", file_values={"flip": False, "tta_flip": True}).tta == "flip"
    assert build_config(recipe="cpu-94", cli_values={"flip": True}).tta == "flip-shift"
