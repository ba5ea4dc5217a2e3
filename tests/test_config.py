"""Config layering, validation and the TOML round trip."""

from __future__ import annotations

import json
import re
import tarfile
import tomllib
from pathlib import Path

import pytest

from fmnist import api
from fmnist.api import make_config
from fmnist.config import TrainConfig, load_config_file, parse_model_args
from fmnist.errors import UsageError
from fmnist.experiments.plan import plan_from_file
from fmnist.models.registry import list_models, saved_model_args
from fmnist.training.recipes import FAST_SETTINGS, MODEL_RECIPES, RECIPES, model_settings, own_recipe
from fmnist.training.settings import resolve_config


def test_layers_defaults_recipe_file_flags():
    config = resolve_config("fastcnn")
    assert config.optimizer == "muon" and config.flip is True  # from fastcnn's recipe
    assert config.model_args["whiten"] is True and config.model_args["widths"] == (16, 32, 64)
    config = resolve_config(file_values={"model": "fastcnn", "epochs": 3, "lr": 0.01}, options={"epochs": 2})
    assert config.epochs == 2 and config.lr == 0.01
    assert resolve_config("mlp_seed002").optimizer == "adam"  # no recipe: built-in defaults


def test_model_args_merge_key_by_key():
    # A flag changes one argument and keeps the recipe's others (it used to replace them all).
    config = resolve_config("fastcnn", options={"model_args": {"whiten": False}})
    assert config.model_args["whiten"] is False and config.model_args["widths"] == (16, 32, 64)
    config = resolve_config(
        "fastcnn", file_values={"model_args": {"widths": [8, 16, 32]}}, options={"model_args": {"whiten": False}}
    )
    assert config.model_args["widths"] == (8, 16, 32) and config.model_args["whiten"] is False
    # A named recipe's net is the one it was measured with, whatever the model's own recipe adds.
    cpu94 = resolve_config(recipe="cpu-94")
    assert cpu94.model_args["whiten"] is True and cpu94.model_args["widths"] == (16, 32, 64)
    assert cpu94.sources["model_args.widths"] == "recipe cpu-94" and cpu94.sources["epochs"] == "recipe cpu-94"


def test_toml_round_trip(tmp_path: Path):
    config = resolve_config("mlp", options={"model_args": {"hidden": [64, 32]}, "epochs": 3, "flip": True})
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
        ({"low_res_size": 28}, "low_res_size must be 8 to 27 pixels"),
        ({"low_res_size": 4}, "low_res_size must be 8 to 27 pixels"),
        ({"low_res_epochs": -1}, "low_res_epochs must be zero or a positive integer"),
        ({"epochs": 3, "low_res_epochs": 3}, r"low_res_epochs \(3\) must be fewer than epochs \(3\)"),
        ({"colour": "red"}, "unknown config key 'colour'"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"model_args": {"widths": [8]}}, "invalid arguments"),
        ({"model_args": {"depth": 3}}, "has no argument 'depth'"),
    ],
)
def test_invalid_values_are_usage_errors(values, message):
    with pytest.raises(UsageError, match=message):
        resolve_config("fastcnn", file_values=values)


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
    assert resolve_config("fastcnn").tta == "flip"  # fastcnn's recipe: flips and the mirror average
    assert resolve_config("fastcnn", options={"flip": False}).tta == "none"
    assert resolve_config(recipe="cpu-94", file_values={"flip": False}).tta == "none"
    assert resolve_config("fastcnn", options={"flip": False, "tta": "flip"}).tta == "flip"
    assert resolve_config("fastcnn", file_values={"flip": False, "tta_flip": True}).tta == "flip"
    assert resolve_config(recipe="cpu-94", options={"flip": True}).tta == "flip-shift"


# fmnist 0.4's resolved configs (build_config as of 97c749b), the oracle of the one resolver.
RESOLVED_04 = json.loads((Path(__file__).parent / "fixtures" / "resolved-configs-0.4.json").read_text())
OLD_RUNS = Path(__file__).parent / "fixtures" / "runs-0.3.1.tar.gz"


# Recipes chosen again since 0.4, each by its recorded validation screen (issue 38): their settings
# changed on purpose, so 0.4's values are no oracle for them.
RECHOSEN = {
    "cpu-94": "configs/screens/cpu-94.toml",
    "cpu-95": "configs/screens/cpu-95-epochs.toml",  # after cpu-95.toml (the net) and cpu-95-lr.toml
    "mlp-baseline": "configs/screens/mlp-baseline.toml",
}


def same_as_04(config: TrainConfig, recorded: dict) -> bool:
    # split_seed's default changed on purpose (issue 37: runs of one model share a split); no model
    # or recipe sets it, so each takes the new default. A model argument newer than 0.4 must take
    # the value 0.4's net had, the one its old checkpoints load with (the registry's legacy value).
    # A setting newer than 0.4 must hold its default, which does what 0.4 did (val_tta "same": the
    # epochs validate on the run's TTA views).
    got = config.to_dict()
    legacy = saved_model_args(config.model, {})
    new_args = {k: v for k, v in got["model_args"].items() if k not in recorded["model_args"]}
    defaults = TrainConfig().to_dict()
    expected = {
        **{k: defaults[k] for k in got if k not in recorded},
        **recorded,
        "split_seed": TrainConfig.split_seed,
        "model_args": {**recorded["model_args"], **{k: legacy.get(k, "absent in 0.4") for k in new_args}},
    }
    return got["split_seed"] == TrainConfig.split_seed and got == expected  # fmt: skip


@pytest.mark.parametrize("model", sorted(m for m in RESOLVED_04["models"] if own_recipe(m) not in RECHOSEN))
def test_every_model_resolves_as_in_04(model):
    assert same_as_04(resolve_config(model), RESOLVED_04["models"][model])
    assert same_as_04(make_config(model), RESOLVED_04["models"][model])


@pytest.mark.parametrize("recipe", sorted(set(RESOLVED_04["recipes"]) - set(RECHOSEN)))
def test_every_recipe_resolves_as_in_04(recipe):
    assert same_as_04(resolve_config(recipe=recipe), RESOLVED_04["recipes"][recipe])


def test_every_rechosen_recipe_names_its_screen():
    for recipe, screen in RECHOSEN.items():
        assert (Path(__file__).parents[1] / screen).is_file()
        assert same_as_04(resolve_config(recipe=recipe), RESOLVED_04["recipes"][recipe]) is False


@pytest.mark.parametrize("case", [c for c in RESOLVED_04["cases"] if c["recipe"] not in RECHOSEN],
                         ids=lambda c: json.dumps([c["file_values"], c["options"]]))  # fmt: skip
def test_layered_cases_resolve_as_in_04(case):
    config = resolve_config(case["model"], recipe=case["recipe"], file_values=case["file_values"],
                            options=case["options"])  # fmt: skip
    assert same_as_04(config, case["config"])


def test_the_oracle_covers_every_registered_model_and_recipe():
    assert set(RESOLVED_04["models"]) == set(list_models()) and set(RESOLVED_04["recipes"]) == set(RECIPES)


def test_a_models_own_recipe_is_found_by_name():
    for model, name in MODEL_RECIPES.items():
        assert RECIPES[name].model == model and own_recipe(model) == name
        assert model_settings(model) == RECIPES[name].settings and model_settings(model) is not RECIPES[name].settings
    assert own_recipe("fastcnn_deep") == "" and model_settings("fastcnn_deep") == {}


def expected_sources(**changed: str) -> dict[str, str]:
    keys = [k for k in TrainConfig().to_dict() if k != "model_args"]
    return {**dict.fromkeys(keys, "default"), **changed}


def test_sources_name_the_layer_that_set_each_key(tmp_path: Path):
    file = tmp_path / "x.toml"
    file.write_text("epochs = 2\nflip = false\n[model_args]\nwidths = [12, 36, 72]\n")
    config = make_config(recipe="cpu-94", config_file=file, lr=0.01, model_args={"pool_before_last_conv": False})
    cpu94 = dict.fromkeys(("batch_size", "optimizer", "weight_decay", "scheduler", "label_smoothing", "val_tta"),
                          "recipe cpu-94")  # fmt: skip
    assert config.sources == {
        **expected_sources(**cpu94, model="recipe cpu-94", recipe="option", epochs=f"file {file}",
                           flip=f"file {file}", lr="option", tta="rule: flip = false turns off mirror TTA"),
        "model_args.widths": f"file {file}",
        "model_args.pool_before_last_conv": "option",
        "model_args.whiten": "recipe cpu-94",
        "model_args.num_classes": "default",
    }  # fmt: skip
    assert config.tta == "none" and config.model_args["widths"] == (12, 36, 72)
    assert not config.model_args["pool_before_last_conv"] and config.lr == 0.01 and config.epochs == 2
    # The model's own settings are a layer of their own; a flag turning flips off takes the mirror TTA.
    config = make_config("fastcnn", flip=False)
    fast = {k: "model fastcnn" for k in FAST_SETTINGS if k != "model_args"}
    fast.update(model="option", recipe="model fastcnn", flip="option", tta="rule: --no-flip turns off mirror TTA")
    assert {k: v for k, v in config.sources.items() if not k.startswith("model_args.")} == expected_sources(**fast)
    assert config.sources["model_args.widths"] == "model fastcnn" and config.tta == "none"
    # Without a --model, the default model is the default's; a plan's run without a file is the plan's.
    assert make_config().sources["model"] == "default"
    assert resolve_config(file_values={"model": "mlp", "epochs": 2}).sources["epochs"] == "plan"


def test_describe_renders_every_key_with_its_value_and_source():
    config = make_config("fastcnn", flip=False, model_args={"whiten": False})
    lines = config.describe().splitlines()
    assert lines[0].split() == ["key", "value", "source"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == list(config.sources)  # every key, model arguments one by one, in config.toml's order
    assert rows["tta"].split(None, 2) == ["tta", '"none"', "rule: --no-flip turns off mirror TTA"]
    assert rows["model_args.widths"].split(None, 4) == ["model_args.widths", "[16,", "32,", "64]", "model fastcnn"]
    assert rows["model_args.whiten"].split() == ["model_args.whiten", "false", "option"]
    assert rows["lr"].split() == ["lr", "0.02", "model", "fastcnn"]


def test_config_toml_records_the_sources_and_reads_back(tmp_path: Path):
    config = make_config(recipe="cpu-94", epochs=2)
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert tomllib.loads(path.read_text())["sources"] == config.sources
    again = load_config_file(path)
    assert again == config and again.sources == config.sources
    # A run's config.toml is a config file like any other: its [sources] table is a record, not a setting.
    reused = make_config(config_file=path, seed=3)
    assert reused.to_dict() == {**config.to_dict(), "seed": 3} and reused.sources["epochs"] == f"file {path}"
    assert plan_from_file(path).runs[0].config({}) == config


def test_a_config_toml_without_sources_still_loads(tmp_path: Path):
    with tarfile.open(OLD_RUNS) as archive:
        archive.extractall(tmp_path, filter="data")
    path = tmp_path / "run-a" / "config.toml"
    assert "sources" not in tomllib.loads(path.read_text())
    old = load_config_file(path)
    assert old.sources == {} and old.model == "mlp" and old.model_args["hidden"] == (32,)
    assert all(source == "not recorded" for _key, _value, source in old.source_rows())
    assert make_config(config_file=path).model_args["hidden"] == (32,)
    assert plan_from_file(path).runs[0].config({}).model_args["hidden"] == (32,)


def test_train_applies_its_options_on_top_of_a_config(tiny_dataset, tmp_path: Path):
    config = make_config("mlp", epochs=3, val_size=100, model_args={"hidden": [8]})
    run = api.train(config=config, out=tmp_path / "run", data=tiny_dataset, progress=False, epochs=1, max_steps=2)
    saved = load_config_file(run.path / "config.toml")
    assert saved == resolve_config("mlp", options={"epochs": 1, "max_steps": 2, "val_size": 100,
                                                   "model_args": {"hidden": [8]}})  # fmt: skip
    assert saved.sources["epochs"] == "option" and saved.sources["model_args.hidden"] == "option"
    assert config.epochs == 3  # the given config is left as it was
    # Options over a config follow the same rules as flags: turning flips off takes fastcnn's mirror TTA.
    fast = resolve_config(options={"flip": False}, base=make_config("fastcnn"))
    assert fast == make_config("fastcnn", flip=False)
    with pytest.raises(UsageError, match="the config trains mlp, not fastcnn"):
        api.train("fastcnn", config=config, data=tiny_dataset, progress=False)
    with pytest.raises(UsageError, match="not a recipe or a config file"):
        api.train(config=config, recipe="cpu-94", data=tiny_dataset, progress=False)


def test_a_malformed_file_is_one_line_naming_the_file_and_the_line(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 2\nlr = \nseed = 1\n")
    with pytest.raises(UsageError, match=rf"^{re.escape(str(bad))}:2: invalid TOML \(invalid value, column 6\)$"):
        make_config(config_file=bad, model_args={"hidden": [8]})
    bad.write_text("epochs = 2\n[model_args\n")
    with pytest.raises(UsageError, match=rf"^{re.escape(str(bad))}:2: invalid TOML"):
        load_config_file(bad)
    bad.write_text("epochs = [1,\n")
    with pytest.raises(UsageError, match=rf"^{re.escape(str(bad))}:1: invalid TOML \(.*at the end of the file\)$"):
        load_config_file(bad)


def test_a_bad_value_of_the_file_is_the_files_whatever_the_flags(tmp_path: Path):
    file = tmp_path / "x.toml"
    file.write_text("epochs = 0\n")
    for options in ({}, {"epochs": 2}, {"lr": 0.1}):
        with pytest.raises(UsageError, match=rf"^{re.escape(str(file))}: epochs must be a positive integer"):
            make_config("mlp", config_file=file, **options)
    file.write_text('recipe = "cpu94"\n')
    with pytest.raises(UsageError, match=rf"^{re.escape(str(file))}: unknown recipe 'cpu94'"):
        make_config(config_file=file, epochs=2)
    with pytest.raises(UsageError, match="^epochs must be a positive integer"):
        make_config("mlp", epochs=0)


def test_model_args_from_the_command_line_are_parsed_by_the_config_layer():
    assert parse_model_args(["hidden=[512, 256]", "dropout=0.2", "batch_norm=true", "act=gelu", "widths=8,16"]) == {
        "hidden": [512, 256], "dropout": 0.2, "batch_norm": True, "act": "gelu", "widths": "8,16"}  # fmt: skip
    with pytest.raises(UsageError, match="--model-arg expects KEY=VALUE"):
        parse_model_args(["hidden"])
