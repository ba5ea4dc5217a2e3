"""Rich progress display for training, as a TrainCallback (the library itself never prints)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from fmnist.train import EpochRecord, RunResult, TrainCallback, Trainer

# Redrawing more often than this costs more than it tells on a 2-core CPU.
REFRESH_SECONDS = 0.25


class RichProgress(TrainCallback):
    """A live bar (loss, accuracy, images/s, ETA) and one line per finished epoch."""

    def __init__(self, console: Console, label: str = ""):
        self.console = console
        self.label = label
        self.progress: Progress | None = None
        self.task = None
        self._last_draw = 0.0

    def on_start(self, trainer: Trainer) -> None:
        config = self.config = trainer.config
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        name = self.label or config.model
        self.task = self.progress.add_task(name, total=trainer.total_steps, completed=trainer.step, stats="")

    def on_step(self, step: int, epoch: int, loss, accuracy, images_per_second: float) -> None:
        now = time.monotonic()
        if self.progress is None or now - self._last_draw < REFRESH_SECONDS:
            if self.progress is not None:
                self.progress.update(self.task, completed=step)
            return
        self._last_draw = now
        # float() reads the tensors only at redraw time, a few times a second.
        stats = (f"ep {epoch}/{self.config.epochs}  loss {float(loss):.3f}  acc {float(accuracy):.3f}  "
                 f"{images_per_second:,.0f} img/s")  # fmt: skip
        self.progress.update(self.task, completed=step, stats=stats)

    def on_epoch_end(self, record: EpochRecord, model: nn.Module, is_best: bool) -> None:
        val = ""
        if record.val_accuracy is not None:
            val = f"  val loss {record.val_loss:.4f}  val acc {record.val_accuracy:.4f}"
        mark = " *" if is_best else ""
        name = self.label or self.config.model
        self.console.print(
            f"  {name} epoch {record.epoch:>3}  train loss {record.train_loss:.4f}  acc {record.train_accuracy:.4f}"
            f"{val}  {record.images_per_second:,.0f} img/s  {record.seconds:.1f}s{mark}",
            highlight=False,
        )

    def on_end(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        """Remove the live bar; safe to call twice (the CLI also calls it when training fails)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
