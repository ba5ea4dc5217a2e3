"""Progress display for training, as TrainCallbacks (the library itself never prints).

On a terminal (or in Jupyter) a live bar shows loss, accuracy, images/s and ETA, and
disappears when the run ends. Off a terminal (CI logs, `| tee`, files) there is no bar at
all: exactly one line per finished epoch, never longer than `PLAIN_WIDTH` columns.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fmnist.inference.rundir import TeacherRecord, plural
from fmnist.training.results import EpochRecord, RunInfo, RunResult, TrainCallback

# Redrawing more often than this costs more than it tells on a 2-core CPU.
REFRESH_SECONDS = 0.25
# Epoch lines fit an 80-column terminal, log viewer or notebook cell without wrapping.
PLAIN_WIDTH = 80
LABEL_WIDTH = 14


def epoch_line(label: str, record: EpochRecord, epochs: int, is_best: bool) -> str:
    """One finished epoch in at most PLAIN_WIDTH characters."""
    name = label if len(label) <= LABEL_WIDTH else label[: LABEL_WIDTH - 1] + "…"
    val = f" val {record.val_loss:.3f} {100 * record.val_accuracy:5.2f}%" if record.val_accuracy is not None else ""
    line = (f"{name:<{LABEL_WIDTH}} {record.epoch:>3}/{epochs:<3} loss {record.train_loss:.3f} "
            f"{100 * record.train_accuracy:5.2f}%{val} {record.images_per_second:>6,.0f}/s "
            f"{record.seconds:>5.0f}s{' *' if is_best else ''}")  # fmt: skip
    return line[:PLAIN_WIDTH]


def compiled_line(label: str, seconds: float) -> str:
    """The compile step's line: its time is shown here and kept out of the epochs' training time."""
    name = label if len(label) <= LABEL_WIDTH else label[: LABEL_WIDTH - 1] + "…"
    return f"{name:<{LABEL_WIDTH}} compiled the training step in {seconds:.1f}s (not training time)"[:PLAIN_WIDTH]


def teacher_line(label: str, teacher: TeacherRecord) -> str:
    """A distilled run's teacher: what it is, how it scored on validation, how long scoring took."""
    name = label if len(label) <= LABEL_WIDTH else label[: LABEL_WIDTH - 1] + "…"
    who = f"an ensemble of {teacher.members}" if teacher.kind == "ensemble" else "one run"
    val = f", {100 * teacher.val_accuracy:.2f}% val" if teacher.val_accuracy is not None else ""
    return f"{name:<{LABEL_WIDTH}} teacher: {who}{val}, scored in {teacher.targets_seconds:.1f}s"[:PLAIN_WIDTH]


def is_live(console: Console) -> bool:
    """Whether a live bar can redraw in place: a real terminal or a notebook, not a pipe or file."""
    return (console.is_terminal and not console.is_dumb_terminal) or console.is_jupyter


class RichProgress(TrainCallback):
    """A live bar for one run (where the console can redraw) and one line per finished epoch."""

    def __init__(self, console: Console, label: str = ""):
        self.console = console
        self.label = label
        self.live = is_live(console)
        self.progress: Progress | None = None
        self.task = None
        self.epochs = 0
        self._last_draw = 0.0

    def on_start(self, info: RunInfo) -> None:
        self.epochs = info.config.epochs
        self.label = self.label or info.config.model
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )  # fmt: skip
        self.progress.start()
        stats = "compiling the training step…" if info.compiled else ""
        self.task = self.progress.add_task(self.label, total=info.total_steps, completed=info.step, stats=stats)

    def on_step(self, step: int, epoch: int, loss, accuracy, images_per_second: float) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_draw < REFRESH_SECONDS:
            self.progress.update(self.task, completed=step)
            return
        self._last_draw = now
        # float() reads the tensors only at redraw time, a few times a second: each read waits for
        # the GPU to finish what is queued, so reading every step would serialise a GPU run.
        stats = (f"ep {epoch}/{self.epochs} loss {float(loss):.3f} acc {float(accuracy):.3f} "
                 f"{images_per_second:,.0f}/s")  # fmt: skip
        self.progress.update(self.task, completed=step, stats=stats)

    def on_compiled(self, seconds: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, stats="")
        self.console.print(compiled_line(self.label, seconds), highlight=False, markup=False, soft_wrap=True)

    def on_teacher(self, teacher: TeacherRecord) -> None:
        self.console.print(teacher_line(self.label, teacher), highlight=False, markup=False, soft_wrap=True)

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        line = epoch_line(self.label, record, self.epochs, is_best)
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def on_end(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        """Remove the live bar; safe to call twice (callers also call it when training fails)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _trained(result: RunResult) -> str:
    """'1 epoch', '4 epochs', or '20 steps, smoke run' where --max-steps cut the run."""
    steps = result.to_results().smoke_steps
    if steps is not None:
        return f"{plural(steps, 'step')}, smoke run"
    return plural(result.epochs_run, "epoch") if result.epochs_run else "fitted"


class MultiRunProgress:
    """Progress for a series of runs (compare, ablate, --seeds): a bar per run and a result line each."""

    def __init__(self, console: Console):
        self.console = console
        self.bars: list[RichProgress] = []

    def callbacks(self, name: str, config) -> list[TrainCallback]:
        self.bars.append(RichProgress(self.console, label=name))
        return [self.bars[-1]]

    def announce(self, name: str, result: RunResult) -> None:
        compiling = f" (+{result.compile_seconds:.1f}s compiling)" if result.compiled else ""
        line = (f"{name}: test accuracy {100 * result.test_accuracy:.2f}% in {result.train_seconds:.1f}s{compiling} "
                f"({_trained(result)})")  # fmt: skip
        self.console.print(line[:PLAIN_WIDTH], highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
