"""The `fmnist` command: Typer app, shared console, and one-line error handling."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer
from rich.console import Console

from fmnist.errors import FmnistError

app = typer.Typer(
    name="fmnist",
    help="Train, compare, explain and serve Fashion-MNIST classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Inspect and obtain the dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

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


def fail(message: str, code: int = 1) -> None:
    """Print `error: message` on one line of stderr and exit with `code`."""
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every anticipated error becomes one line on stderr."""
    from fmnist.cli import commands  # noqa: F401  (registers the commands)

    command = typer.main.get_command(app)
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
        fail(f"{exc.format_message()}{where}; see --help", 2)
    except ABORT:
        fail("aborted", 130)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except CLICK_EXCEPTION as exc:
        fail(exc.format_message(), exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # a bug, not bad input: say so in one line, trace on request
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        fail(f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)
