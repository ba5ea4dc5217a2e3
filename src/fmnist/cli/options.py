"""Options several commands share, and the training settings derived from TrainConfig.

A training setting is declared once, on `fmnist.config.TrainConfig` (default and help text);
`training_settings` turns every such field into a `--flag` of `fmnist train` and
`fmnist compare`, so a new setting is one edit there.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from enum import Enum
from typing import Any

import typer

from fmnist.config import TrainConfig, settings
from fmnist.device import DEVICES, PRECISIONS
from fmnist.experiments.ray_runtime import ADDRESS_ENV, LOCAL
from fmnist.inference.ensemble_select import SELECT_RULES


def choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A choice type built from the tuple that defines the values, so `--help` lists them."""
    return Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


def value(option: Enum | None) -> str | None:
    """The plain string of a choice option (None stays None: 'not given')."""
    return option.value if option is not None else None


Precision = choice("Precision", PRECISIONS)
Device = choice("Device", DEVICES)
Split = choice("Split", ("train", "test"))
Backend = choice("Backend", ("torch", "onnx"))
Select = choice("Select", SELECT_RULES)  # how an ensemble's members are chosen

DataDirOption = typer.Option(
    None, "--data-dir", help="Folder with the 4 IDX files (gz or raw) or the Kaggle CSV pair [env: FMNIST_DATA]"
)
RayOption = typer.Option(None, "--ray", metavar="ADDRESS", show_default=False,
                         help=f"Run on Ray: a cluster's head HOST:PORT, or '{LOCAL}' to start a Ray here for this "
                              f"command [default: ${ADDRESS_ENV}, else train here]")  # fmt: skip
JobsOption = typer.Option(None, "--jobs", "-j", min=1, show_default=False,
                          help="Train N runs at once here, each in its own process with 1/N of the CPU threads "
                               "(or sharing the GPU) [default: 1]")  # fmt: skip
TensorBoardOption = typer.Option(
    None, "--tensorboard", show_default=False, help="TensorBoard scalars for every run (tensorboard --logdir FOLDER)"
)
RunDirArgument = typer.Argument(
    ..., help="Run or ensemble directory (model.json + model.safetensors, or ensemble.json)"
)
# Options `fmnist train` and `fmnist distill` (which is train with a teacher) share.
RunOutOption = typer.Option(
    None, "--out", "-o", show_default=False, help="Run directory [default: runs/MODEL-TIMESTAMP]"
)
ConfigFileOption = typer.Option(None, "--config", "-c", show_default=False,
                                help="TOML file with any of the options below (flags win)")  # fmt: skip
ModelArgOption = typer.Option(None, "--model-arg", metavar="KEY=VALUE", show_default=False,
                              help="Model argument, repeatable (see `fmnist models`)")  # fmt: skip
OverwriteOption = typer.Option(False, "--overwrite", help="Replace a finished run in --out")
SeedsOption = typer.Option(1, "--seeds", min=1, help="Repeat with N seeds (seed, seed+1, ...): mean ± std")
NoReportOption = typer.Option(False, "--no-report", help="Do not write the report (report.html + report.md)")
ShowConfigOption = typer.Option(False, "--show-config",
                                help="Print the resolved settings, each with the layer that set it; train nothing")  # fmt: skip
BackendOption = typer.Option("torch", "--backend", help="torch (PyTorch eager) or onnx (ONNX Runtime)")
PrecisionOption = typer.Option("auto", "--precision",
                               help="torch backend: auto (bf16 where the CPU has it natively, else fp32), fp32 or bf16")  # fmt: skip


def ray_address(option: str | None) -> str | None:
    """--ray, else $RAY_ADDRESS, else None (train here, Ray never imported)."""
    return option or os.environ.get(ADDRESS_ENV) or None


def _option(f: dataclasses.Field, default_note: Callable[[str], str]) -> inspect.Parameter:
    meta = f.metadata
    kind: Any = (
        f.type if not isinstance(f.type, str) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]
    )
    flag = "--" + f.name.replace("_", "-")
    flags = list(meta["flags"]) or [flag]
    if kind is bool and meta["negatable"]:
        flags = [f"{flags[0]}/--no-{flags[0][2:]}"]
    if meta["choices"]:
        kind = choice(f.name.title().replace("_", ""), meta["choices"])
    option = typer.Option(None, *flags, help=f"{meta['help']} {default_note(f.name)}".strip(), show_default=False,
                          metavar=meta["metavar"])  # fmt: skip
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)


def training_settings(
    default_note: Callable[[str], str], *, after: str, leave_out: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add every TrainConfig setting as an option; the command gets them as `settings`,
    a dict of the ones given (config names, plain values; unset ones are absent).

    The options follow the command's parameter `after` in `--help`; `default_note(name)` words
    an option's default there (the model's recipe may set it). Settings in `leave_out` get no
    option (the command takes them its own way: `fmnist distill TEACHER`).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"]  # fmt: skip
        cut = [p.name for p in own].index(after) + 1
        added = [_option(f, default_note) for f in settings() if f.name not in leave_out]
        names = [p.name for p in added]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names}
            values = {n: (v.value if isinstance(v, Enum) else v) for n, v in given.items() if v is not None}
            return command(settings=values, **kwargs)

        wrapper.__signature__ = inspect.Signature([*own[:cut], *added, *own[cut:]])  # type: ignore[attr-defined]
        # Typer reads the annotations too: real types, not the strings of postponed evaluation.
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
        return wrapper

    return decorate


def recipe_default(name: str) -> str:
    """`fmnist train`'s words for a default: the built-in one, and fastcnn's where its recipe differs."""
    from fmnist.training.recipes import model_settings

    base, fast = getattr(TrainConfig(), name), model_settings(TrainConfig.model)
    if name in fast and fast[name] != base:
        return f"[default: from the model's recipe; {TrainConfig.model}: {fast[name]}, else {base}]"
    return f"[default: {base}, unless the model's recipe sets it]"


def every_run_default(name: str) -> str:
    """`fmnist compare`'s words: a flag replaces every run's value."""
    return "[for every run; default: each run's own]"
