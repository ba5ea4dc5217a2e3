"""A run's settings, resolved in one place with the layer that set each key.

Layers, later ones winning: TrainConfig's defaults -> the model's own settings -> a named recipe ->
a config file -> flags or keyword options. `resolve_config` is the one function every entry point
resolves a run through (`fmnist train`, `train --seeds`, `compare`, `ablate`, `sweep`, the API and
the benchmarks); the config it returns records each key's source (`TrainConfig.sources`), which
`fmnist train --show-config` prints and every run's config.toml keeps.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from pathlib import Path

from fmnist.config import FIELD_TYPES, TrainConfig, apply_layer, split_sources
from fmnist.errors import UsageError
from fmnist.fsutil import read_toml
from fmnist.training.recipes import Recipe, get_recipe, model_settings, own_recipe

DEFAULT = "default"  # TrainConfig's default, or the model builder's for a model argument
OPTION = "option"  # a flag of the command, a keyword of the API
PLAN = "plan"  # a run of a plan that no file wrote (`compare --models`, an ablation's variant)
# Built-in layers: a key they set is the recipe's choice, which a user's flip setting may revise.
_BUILT_IN = (DEFAULT, "model ", "recipe ", "rule: ")


def resolve_config(
    model: str | None = None,
    *,
    recipe: str | None = None,
    config_file: str | Path | None = None,
    file_values: Mapping[str, object] | None = None,
    options: Mapping[str, object] | None = None,
    origin: str = "",
    base: TrainConfig | None = None,
) -> TrainConfig:
    """The validated TrainConfig of defaults -> `model`'s settings -> `recipe` -> the file -> `options`.

    The file layer is `config_file` (read here) or `file_values` (a plan's run, as its file wrote
    it); `origin` names where those were written ("cmp.toml, run 'cnn'"): a bad value there is
    reported as that file's, and the keys it sets have the source "file ORIGIN". `model` is the
    command's --model (the options' or the file's `model` wins over it). `base` is a config
    resolved already (`fmnist.train(config=..., epochs=2)`): `options` apply on top of it.
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if base is not None:
        if recipe or config_file or file_values:
            raise UsageError("a resolved config takes options on top, not a recipe or a config file: "
                             "give those to make_config")  # fmt: skip
        return _on_top(base, model, options)
    if config_file is not None:
        if file_values is not None:
            raise UsageError("give a config file or its values, not both")
        file_values, origin = read_toml(Path(config_file)), origin or str(config_file)
    values, _recorded = split_sources(file_values or {}, origin or "config")  # a run's record, not settings
    file_label = f"file {origin}" if origin else PLAN

    file_recipe, asked_recipe = values.pop("recipe", None), recipe or options.pop("recipe", None)
    chosen, recipe_label = (asked_recipe, OPTION) if asked_recipe else (file_recipe or None, file_label)
    with _blame(origin if recipe_label == file_label else ""):
        if chosen is not None and not isinstance(chosen, str):
            raise UsageError(f"recipe must be a recipe's name, not {chosen!r}")
        named = get_recipe(chosen) if chosen else None
    name, model_label = _model(model, named, values, options, file_label)
    with _blame(origin if file_label in (recipe_label, model_label) else ""):
        if not isinstance(name, str):
            raise UsageError(f"model must be a name, not {name!r}")
        if named and model_label != f"recipe {named.name}" and name != named.model:
            raise UsageError(f"recipe {named.name!r} trains {named.model}, not {name}; drop --model or the recipe")

    config = TrainConfig(model=name)
    config.sources = {key: DEFAULT for key in FIELD_TYPES if key != "model_args"}
    apply_layer(config, model_settings(name), f"model {name}", "recipe")
    if named:
        apply_layer(config, named.settings, f"recipe {named.name}", f"recipe {named.name}")
    with _blame(origin):
        apply_layer(config, values, file_label).model = name
        if origin and values and options:  # a bad value of a file is the file's, whatever the flags say
            config.validate()
    apply_layer(config, options, OPTION, OPTION)
    config.model, config.sources["model"] = name, model_label
    if named:
        config.recipe, config.sources["recipe"] = named.name, recipe_label
    else:
        config.recipe = own_recipe(name)
        config.sources["recipe"] = f"model {name}" if config.recipe else file_label if file_recipe == "" else DEFAULT
    with _blame("" if options else origin):  # with no flags, whatever fails is the file's
        return _finish(config)


def _model(model: str | None, named: Recipe | None, values: Mapping[str, object], options: Mapping[str, object],
           file_label: str) -> tuple[object, str]:  # fmt: skip
    """(the model trained, the layer that chose it): the options', the file's, --model, the recipe's;
    a file's or an option's is not checked yet (a model's name is text: resolve_config checks it)."""
    if options.get("model"):
        return options["model"], OPTION
    if values.get("model"):
        return values["model"], file_label
    if model:
        return model, OPTION
    return (named.model, f"recipe {named.name}") if named else (TrainConfig.model, DEFAULT)


def _on_top(base: TrainConfig, model: str | None, options: dict[str, object]) -> TrainConfig:
    """`options` over a copy of a config resolved already, as flags over a config file."""
    for name in (model, options.pop("model", None)):
        if name and name != base.model:
            raise UsageError(f"the config trains {base.model}, not {name}: make a config for {name} instead")
    if options.pop("recipe", base.recipe) != base.recipe:
        raise UsageError("the config's recipe is resolved already: make a config with the other recipe instead")
    config = copy.deepcopy(base)
    if not options:
        return config
    return _finish(apply_layer(config, options, OPTION, OPTION), fill=bool(base.sources))


def _finish(config: TrainConfig, fill: bool = True) -> TrainConfig:
    """The flip rule, the check of the whole config, and (`fill`) the builder's default as the source
    of every model argument no layer set."""
    sources = config.sources
    flip, tta = sources.get("flip", DEFAULT), sources.get("tta", DEFAULT)
    if not flip.startswith(_BUILT_IN) and not config.flip and tta.startswith(_BUILT_IN) and config.tta != "none":
        # Mirrored views hurt a net never trained on them (`--recipe fast --no-flip` scored 85.85%
        # with the mirror average), so a built-in mirror TTA goes with the flips unless asked for.
        config.tta = "none"
        sources["tta"] = f"rule: {'--no-flip' if flip == OPTION else 'flip = false'} turns off mirror TTA"
    config.validate()
    for name in config.model_args if fill else ():
        sources.setdefault(f"model_args.{name}", DEFAULT)
    # In the order config.toml writes the keys, each model argument under model_args.
    config.sources = {key: sources[key] for key, _value, _source in config.source_rows() if key in sources}
    return config


@contextlib.contextmanager
def _blame(origin: str) -> Iterator[None]:
    """A UsageError raised inside names `origin`, the file whose value it is (nothing when empty)."""
    try:
        yield
    except UsageError as exc:
        if not origin or str(exc).startswith(origin):
            raise
        raise UsageError(f"{origin}: {exc}") from None
