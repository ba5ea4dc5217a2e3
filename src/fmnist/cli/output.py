"""Where the commands write: one console for results (stdout), one for messages (stderr)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> None:
    """Print `error: message` on one line of stderr and exit with `code`."""
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    raise SystemExit(code)


def notify(message: str) -> None:
    """A progress or status line on stderr, printed as given (paths and URLs stay whole)."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """A result line on stdout, printed as given."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def steps_progress(total: int | None, description: str):
    """A transient bar on stderr (so `--json` on stdout stays clean), shown only on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    progress = Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal)
    return progress, progress.add_task(description, total=total)


def print_comparison(comparison, title: str) -> None:
    """The comparison table and where the results are (compare, ablate and `train --seeds`)."""
    from fmnist.experiments.compare import ensemble_row_text

    table = Table("model", "params", "size MB", "test accuracy", "best ep", "train s", title=title)
    for m in comparison.models:
        acc = f"{100 * m['test_accuracy_mean']:.2f}%"
        if len(m["seeds"]) > 1:
            acc += f" ± {100 * m['test_accuracy_std']:.2f}"
        table.add_row(m["name"] + f" ({m['model']})", f"{m['params']:,}", f"{m['size_mb']:.2f}", acc,
                      ",".join(map(str, m["best_epoch"])), f"{m['train_seconds_mean']:.1f}")  # fmt: skip
    for e in comparison.summary.get("ensembles", []):
        label, params, acc = ensemble_row_text(e)
        table.add_row(label, params, "–" if "error" in e else f"{e['size_mb']:.2f}", acc, "–", "–")
    console.print(table)
    data = comparison.summary["data"]
    say(f"data: {data['source']} ({data['split']} split)  -> {comparison.path}")
