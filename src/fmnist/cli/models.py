"""`fmnist models [NAME]`: every registered model with what it costs and the arguments it takes."""

from __future__ import annotations

import typer
from rich.table import Table

from fmnist.cli.output import console, say
from fmnist.models.base import ModelArgs


def arg_text(value: object) -> str:
    """A default as `--model-arg KEY=VALUE` spells it: lists without brackets, booleans as TOML."""
    if isinstance(value, (list, tuple)):
        return ",".join(arg_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _arguments(defaults: ModelArgs) -> str:
    return " ".join(f"{key}={arg_text(value)}" for key, value in defaults.items()) or "-"


def _costs(name: str) -> tuple[str, str, str]:
    """(parameters, MB, MFLOPs) of `name` at its defaults; dashes for a model with no tensor form."""
    from fmnist.models.flops import forward_flops
    from fmnist.models.registry import count_parameters, create_model, get_entry, model_size_mb

    if not get_entry(name).has_network:  # a scikit-learn model with no tensor form to count
        return "-", "-", "-"
    model = create_model(name)
    return f"{count_parameters(model):,}", f"{model_size_mb(model):.1f}", f"{forward_flops(model) / 1e6:,.1f}"


def models_cmd(
    name: str | None = typer.Argument(None, show_default=False, help="One model: its arguments, defaults and recipe"),
) -> None:
    """List every registered model with its parameters, size, FLOPs and arguments (defaults)."""
    from fmnist.models.registry import get_entry, list_models

    if name is not None:
        _one_model(get_entry(name))
        return
    # Rich wraps a long cell on a terminal rather than cutting it; off a terminal nothing wraps.
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header in ("model", "params", "MB", "MFLOPs", "description", "arguments (defaults)"):
        table.add_column(header, justify="right" if header in ("params", "MB", "MFLOPs") else "left")
    for model in list_models():
        entry = get_entry(model)
        table.add_row(model, *_costs(model), entry.description, _arguments(entry.defaults))
    console.print(table)
    say("one model in full: fmnist models NAME   set an argument: fmnist train --model NAME --model-arg KEY=VALUE")


def _one_model(entry) -> None:
    from fmnist.training.recipes import RECIPES, model_settings

    params, size, flops = _costs(entry.name)
    say(f"{entry.name}: {entry.description}")
    say(f"family: {entry.family}   parameters: {params}   size: {size} MB   forward: {flops} MFLOPs")
    if entry.defaults:
        table = Table("argument", "default", "set with", box=None, pad_edge=False, header_style="bold")
        for key, value in entry.defaults.items():
            table.add_row(key, arg_text(value), f"--model-arg {key}={arg_text(value)}")
        console.print(table)
    else:
        say("arguments: none")
    settings = model_settings(entry.name)
    if settings:
        say("trains by default with: " + " ".join(f"{k}={arg_text(v)}" for k, v in settings.items()))
    recipes = [r.name for r in RECIPES.values() if r.model == entry.name]
    if recipes:
        say(f"recipes: {', '.join(recipes)} (fmnist recipes)")
