"""The sweep's progress: trials running / done / stopped / failed, the best so far, and an ETA.

Off a terminal (CI logs, `| tee`) it is one line per event, at most 80 columns: a trial
started (with its values), finished or was stopped by ASHA (with the counts, the best so far
and the ETA), failed, or is retried. On a terminal a status line under those lines also
redraws as epochs come in.

Tune pickles its callbacks with the experiment (for `--resume`), so `SweepEvents` holds
nothing: it forwards each event to the display of the command running now (`listening`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from fmnist.experiments.ray_runtime import task_error
from fmnist.experiments.sweep_config import METRICS, SweepSpec, format_metric
from fmnist.experiments.sweep_trial import TrialReport, trial_name
from fmnist.inference.records import SearchValue
from fmnist.training.progress import PLAIN_WIDTH, REFRESH_SECONDS, is_live


def format_values(values: dict[str, SearchValue]) -> str:
    """A trial's sampled values, as its progress lines show them."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def failure_reason(trial: Trial) -> str:
    """The one line a trial failed with (fmnist's own message when it raised one)."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # the error file may be unreadable; the status still says it failed
        error = None
    return str(task_error(error, trial_name(trial.trial_id))) if error is not None else "its worker process died"


def ended_as(trial: Trial) -> str:
    """done / stopped / failed for a trial Tune reports as ended."""
    if trial.status == Trial.ERROR:
        return "failed"
    return "done" if (trial.last_result or {}).get("finished") else "stopped"


class SweepDisplay:
    """Counts, best so far and ETA from Tune's events; prints through a rich Console (or stays silent)."""

    def __init__(self, console: Console | None, spec: SweepSpec, on_update: Callable[[list[Trial]], None]):
        self.console = console
        self.spec = spec
        self.metric = spec.settings.metric
        self.on_update = on_update
        self.trials: list[Trial] = []
        # How each ended trial ended: those restored as ended, plus those that end now. Tune
        # also marks the trials it stops on Ctrl-C as TERMINATED, but never reports them as
        # complete, so a trial missing here was interrupted and `--resume` continues it.
        self.outcome: dict[str, str] | None = None
        self.best: tuple[float, str] | None = None  # (value, trial)
        self.epochs_seen: dict[str, int] = {}
        self.started = time.monotonic()
        self.epochs_this_run = 0
        self.progress: Progress | None = None
        self._last_draw = 0.0
        if console is not None and is_live(console):
            self.progress = Progress(TextColumn("trials"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), console=console, transient=True)  # fmt: skip
            self.task = self.progress.add_task("", total=spec.total_trials, status="")
            self.progress.start()

    # -- events (called by SweepEvents on the driver) -----------------------------------
    def step(self, trials: list[Trial]) -> None:
        self.trials = trials
        if self.outcome is None:
            self.outcome = {trial_name(t.trial_id): ended_as(t) for t in trials
                            if t.status in (Trial.TERMINATED, Trial.ERROR)}  # fmt: skip

    def final_outcome(self) -> dict[str, str]:
        """How each ended trial ended (see `outcome`); from the statuses when Tune had nothing left to run."""
        if self.outcome is None:
            return {trial_name(t.trial_id): ended_as(t) for t in self.trials
                    if t.status in (Trial.TERMINATED, Trial.ERROR)}  # fmt: skip
        return dict(self.outcome)

    def started_trial(self, trials: list[Trial], trial: Trial) -> None:
        self.step(trials)
        if trial.checkpoint is None:
            self._say(trial, "started", format_values(trial.config), with_status=False)
        else:  # --resume, or a retry after its worker died
            epoch = self.epochs_seen.get(trial_name(trial.trial_id)) or (trial.last_result or {}).get("epoch", 0)
            self._say(trial, "resumed", f"after epoch {epoch}", with_status=False)

    def result(self, trials: list[Trial], trial: Trial, result: TrialReport) -> None:
        self.step(trials)
        name = trial_name(trial.trial_id)
        epoch = int(result.get("epoch", 0))
        self.epochs_this_run += max(0, epoch - self.epochs_seen.get(name, result.get("resumed_from_epoch", 0)))
        self.epochs_seen[name] = epoch
        value = result.get(self.metric)
        if value is not None and (self.best is None or self._better(value, self.best[0])):
            self.best = (value, name)
        self._redraw(force=False)

    def completed(self, trials: list[Trial], trial: Trial) -> None:
        self.step(trials)
        last = trial.last_result or {}
        how = self.outcome[trial_name(trial.trial_id)] = "done" if last.get("finished") else "stopped"
        epoch, value = last.get("epoch", 0), format_metric(self.metric, last.get(self.metric))
        if how == "done":
            self._say(trial, "done", f"ep {epoch} {value}")
        else:
            self._say(trial, "stopped", f"ep {epoch} {value}")  # by ASHA: trials end early no other way
        self.on_update(trials)

    def recovering(self, trials: list[Trial], trial: Trial) -> None:
        self.step(trials)
        epoch = self.epochs_seen.get(trial_name(trial.trial_id), 0)
        where = f"resuming after epoch {epoch}" if epoch else "starting again"
        self._say(trial, "retried", f"{where}: {failure_reason(trial)}", with_status=False)

    def failed(self, trials: list[Trial], trial: Trial) -> None:
        self.step(trials)
        self.outcome[trial_name(trial.trial_id)] = "failed"
        self._say(trial, "failed", failure_reason(trial), with_status=False)
        self.on_update(trials)

    def ended(self, trials: list[Trial]) -> None:
        self.trials = trials
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    # -- what is shown ---------------------------------------------------------------
    def _better(self, value: float, than: float) -> bool:
        return value > than if METRICS[self.metric] == "max" else value < than

    def counts(self) -> dict[str, int]:
        outcome = self.outcome or {}
        counts = {"running": 0, "done": 0, "stopped": 0, "failed": 0}
        for how in outcome.values():
            counts[how] += 1
        counts["running"] = sum(
            t.status == Trial.RUNNING and trial_name(t.trial_id) not in outcome for t in self.trials
        )
        return counts

    def eta(self) -> str:
        """Epochs still allowed (ASHA may stop some) at the pace of this command so far."""
        elapsed = time.monotonic() - self.started
        if not self.epochs_this_run or elapsed <= 0:
            return "?"
        ended = self.outcome or {}
        left = sum(self.spec.max_epochs - self.epochs_seen.get(trial_name(t.trial_id), 0)
                   for t in self.trials if trial_name(t.trial_id) not in ended)  # fmt: skip
        left += max(0, self.spec.total_trials - len(self.trials)) * self.spec.max_epochs
        return format_duration(left * elapsed / self.epochs_this_run) if left else "0m00s"

    def status(self, short: bool = False) -> str:
        """Counts, best so far and ETA: in full for the live line, in under 50 columns for event lines."""
        c = self.counts()
        value = format_metric(self.metric, self.best[0]) if self.best else "n/a"
        if short:
            failed = f" fail {c['failed']}" if c["failed"] else ""
            return (f"run {c['running']} done {c['done']} stop {c['stopped']}{failed}/{self.spec.total_trials} "
                    f"best {value} ETA {self.eta()}")  # fmt: skip
        best = f"best {self.metric} {value}" + (f" ({self.best[1]})" if self.best else "")
        failed = f", {c['failed']} failed" if c["failed"] else ""
        return (f"{c['running']} running, {c['done']} done, {c['stopped']} stopped{failed} of "
                f"{self.spec.total_trials}; {best}; ETA {self.eta()}")  # fmt: skip

    def _say(self, trial: Trial, event: str, detail: str, with_status: bool = True) -> None:
        """One line, at most PLAIN_WIDTH columns, like the epoch lines of `fmnist train`."""
        if self.console is None:
            return
        line = f"{trial_name(trial.trial_id)} {event:<7} {detail}"
        if with_status:
            line += f" | {self.status(short=True)}"
        if len(line) > PLAIN_WIDTH:
            line = line[: PLAIN_WIDTH - 1] + "…"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self._redraw(force=True)

    def _redraw(self, force: bool) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self._last_draw < REFRESH_SECONDS):
            return
        self._last_draw = now
        c = self.counts()
        self.progress.update(self.task, completed=c["done"] + c["stopped"] + c["failed"], status=self.status())


_listener: SweepDisplay | None = None


@contextmanager
def listening(display: SweepDisplay) -> Iterator[SweepDisplay]:
    global _listener
    _listener = display
    try:
        yield display
    finally:
        _listener = None
        display.close()


class SweepEvents(Callback):
    """Tune's callback: forwards to the active SweepDisplay (stateless, so it pickles with the experiment)."""

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if _listener:
            _listener.step(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        if _listener:
            _listener.started_trial(trials, trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        if _listener:
            _listener.result(trials, trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        if _listener:
            _listener.completed(trials, trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        if _listener:
            _listener.recovering(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        if _listener:
            _listener.failed(trials, trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if _listener:
            _listener.ended(trials)
