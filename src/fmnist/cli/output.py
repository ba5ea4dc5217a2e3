"""Where the commands write: one console for results (stdout), one for messages (stderr).

Off a terminal (a pipe, `| tee`, a CI log) nothing is wrapped: Rich would otherwise fold every
line at 80 columns (or $COLUMNS), splitting paths and URLs and cutting names in tables. There a
console is as wide as its longest line; on a terminal it follows the window.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

UNWRAPPED = 10_000  # columns off a terminal: wide enough that no line or table is ever folded


def _console(**kwargs) -> Console:
    made = Console(highlight=False, **kwargs)
    if not made.is_terminal and not made.is_jupyter:
        made.width = UNWRAPPED
    return made


console = _console()
err_console = _console(stderr=True)


def layout_width() -> int:
    """The width to choose a layout for (a table, or a narrow block per item): the window on a
    terminal; off one, $COLUMNS where the user set it, else unlimited. Lines are still never folded."""
    import os

    if console.is_terminal:
        return console.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() else UNWRAPPED


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


def report_with_progress(result, **options):
    """`result.report(**options)` (a Run or a Comparison; some seconds) announced on stderr, with a
    bar on a terminal; returns the report's path."""
    notify("writing report…")
    progress, task = steps_progress(None, "report")
    with progress:

        def step(label: str, done: int, total: int) -> None:
            progress.update(task, description=f"report: {label}", completed=done, total=total)

        return result.report(progress=step, **options)


def print_comparison(comparison, title: str) -> None:
    """The comparison table and where the results are (compare, ablate and `train --seeds`)."""
    from fmnist.experiments.compare import ensemble_row_text

    record = comparison.record  # compare.json (fmnist.inference.records.CompareFile)
    cut: dict[str, list[int]] = {}  # run name -> steps of each seed cut by --max-steps
    for run in record.runs:
        steps = run.results.smoke_steps if run.results else None
        if steps is not None:
            cut.setdefault(run.name, []).append(steps)
    table = Table("model", "params", "size MB", "test accuracy", "best ep", "train s", title=title)
    for m in record.models:
        acc = f"{100 * m.test_accuracy_mean:.2f}%"
        if len(m.seeds) > 1:
            acc += f" ± {100 * m.test_accuracy_std:.2f}"
        label = m.name if m.name == m.model else f"{m.name} ({m.model})"
        best = f"{max(cut[m.name]):,} steps" if m.name in cut else ",".join(map(str, m.best_epoch))
        table.add_row(label, f"{m.params:,}", f"{m.size_mb:.2f}", acc, best, f"{m.train_seconds_mean:.1f}")
    for e in record.ensembles or []:
        label, params, acc = ensemble_row_text(e)
        table.add_row(label, params, "–" if e.error else f"{e.size_mb:.2f}", acc, "–", "–")
    console.print(table)
    if cut:
        steps = max(s for seeds in cut.values() for s in seeds)
        notify(f"smoke run: {steps:,} steps, not a trained model (--max-steps cut training short)")
    data = record.data
    say(f"data: {data['source']} ({data['split']} split)  -> {comparison.path}")
