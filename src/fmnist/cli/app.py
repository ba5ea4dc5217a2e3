"""The `fmnist` command: the Typer app, its commands (one module each), and one-line errors.

The command modules know nothing of the app: this module imports them and registers their
functions, so no command imports the app back.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer

from fmnist.cli import (
    ablate,
    calibrate,
    compare,
    data,
    distill,
    ensemble,
    evaluate,
    export,
    models,
    predict,
    recipes,
    report,
    robustness,
    serve,
    sweep,
    train,
)
from fmnist.cli.examples import epilog
from fmnist.cli.output import console, fail, say
from fmnist.errors import INTERRUPTED, FmnistError, did_you_mean

app = typer.Typer(
    name="fmnist",
    help="Train, compare, explain and serve Fashion-MNIST classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(show: bool) -> None:
    if show:
        from fmnist import __version__

        say(f"fmnist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the version and exit"
    ),
) -> None:
    """Train, compare, explain and serve Fashion-MNIST classifiers."""


data_app = typer.Typer(help="Inspect and obtain the dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.command("info")(data.data_info)
data_app.command("samples")(data.data_samples)
data_app.command("fetch")(data.data_fetch)
for name, command in {
    "models": models.models_cmd, "recipes": recipes.recipes_cmd, "train": train.train_cmd,
    "evaluate": evaluate.evaluate_cmd, "compare": compare.compare_cmd, "report": report.report_cmd,
    "ablate": ablate.ablate_cmd, "ensemble": ensemble.ensemble_cmd, "sweep": sweep.sweep_cmd,
    "predict": predict.predict_cmd, "export": export.export_cmd, "serve": serve.serve_cmd,
    "calibrate": calibrate.calibrate_cmd, "robustness": robustness.robustness_cmd, "distill": distill.distill_cmd,
}.items():  # fmt: skip
    app.command(name)(command)

DEBUG_ENV = "FMNIST_DEBUG"


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """Exception class `name` from Click and from the copy of Click newer Typers vendor."""
    found = []
    for module_name in ("click.exceptions", "typer._click.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            found.append(getattr(module, name))
    return tuple(found)


# Bare group command (`fmnist data`): Click raises this to show help; it is not an error.
NO_ARGS_HELP = _click_exceptions("NoArgsIsHelpError") + _click_exceptions("NoArgsIsHelp")
USAGE_ERROR = _click_exceptions("UsageError")
ABORT = _click_exceptions("Abort")
CLICK_EXCEPTION = _click_exceptions("ClickException")


# `fmnist --help` lists commands in the order people use them.
WORKFLOW_ORDER = ("data", "models", "recipes", "train", "evaluate", "compare", "report", "ablate", "ensemble",
                  "sweep", "calibrate", "predict", "robustness", "export", "serve")  # fmt: skip


def _metavar(param) -> str | None:
    """Plain metavars (N, X, PATH, TEXT, [a|b|c]) instead of Python type names like <str>."""
    import typing
    from enum import Enum
    from pathlib import Path

    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    kind = desc.annotation
    if typing.get_origin(kind) is list:
        kind = typing.get_args(kind)[0]
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "[" + "|".join(str(m.value) for m in kind) + "]"
    names = {int: "N", float: "X", str: "TEXT", Path: "PATH"}
    return names.get(kind)


def polish(command, path: str = "") -> None:
    """Help that reads right: workflow order, whole one-line descriptions, no Python type names,
    and an example for every command."""
    commands = getattr(command, "commands", None)
    if commands is not None:
        ordered = {n: commands[n] for n in WORKFLOW_ORDER if n in commands}
        ordered.update({n: c for n, c in commands.items() if n not in ordered})
        command.commands = ordered
        for name, sub in ordered.items():
            polish(sub, f"{path} {name}".strip())
    command.epilog = epilog(path)
    if command.help and not command.short_help:
        command.short_help = command.help.strip().splitlines()[0]
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            # An argument is named by itself (RUN_DIR); its type adds nothing there.
            param.display_type_rich = lambda ctx=None: ""
        elif not getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = _metavar(param)


def _command_hint(exc) -> str:
    """'did you mean' for a mistyped command (Click suggests for options, not commands)."""
    message, group = exc.format_message(), getattr(exc.ctx, "command", None)
    if not message.startswith("No such command") or not hasattr(group, "commands") or "did you mean" in message.lower():
        return ""
    typed = message.split("'")[1] if message.count("'") >= 2 else ""
    return did_you_mean(typed, list(group.commands))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every anticipated error becomes one line on stderr."""
    command = typer.main.get_command(app)
    polish(command)
    try:
        # Without standalone mode Click raises instead of printing boxed usage errors and
        # returns the code a command exits with.
        code = command.main(args=argv, prog_name="fmnist", standalone_mode=False)
    except FmnistError as exc:
        fail(str(exc), exc.exit_code)
    except NO_ARGS_HELP as exc:
        # Click's no-argument help: shown to stdout, like --help, and not an error.
        console.print(exc.ctx.get_help() if exc.ctx else "", markup=False)
        raise SystemExit(0) from None
    except USAGE_ERROR as exc:
        where = f" ({exc.ctx.command_path})" if exc.ctx else ""
        fail(f"{exc.format_message()}{_command_hint(exc)}{where}; see --help", 2)
    except ABORT:
        fail("aborted", INTERRUPTED)
    except KeyboardInterrupt:
        fail("interrupted", INTERRUPTED)
    except CLICK_EXCEPTION as exc:
        fail(exc.format_message(), exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # a bug, not bad input: say so in one line, trace on request
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        fail(f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)", 1)
    if code == INTERRUPTED:  # Typer turns a Ctrl-C inside a command into this code, silently
        fail("interrupted", INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
