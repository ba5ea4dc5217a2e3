"""What a run reports while it goes (`RunInfo`, `EpochRecord`, callbacks) and when it ends (`RunResult`).

Networks and scikit-learn baselines produce the same types, so progress displays, run
directories, `compare` and reports handle both without asking which is which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmnist.config import TrainConfig
from fmnist.inference.evaluate import Evaluation
from fmnist.models.base import Classifier


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    steps: int
    seconds: float  # training time so far, validation included
    images_per_second: float


@dataclass(frozen=True)
class RunInfo:
    """What callbacks learn when a run starts (or resumes)."""

    config: TrainConfig
    total_steps: int
    steps_per_epoch: int
    step: int  # steps already done (non-zero when resumed)
    epoch: int  # the epoch about to run
    history: tuple[EpochRecord, ...]  # epochs already finished (restored on resume)
    device: str
    precision: str
    isa: str  # CPU instruction-set level (fmnist.device.cpu_isa)
    compiled: bool = False  # the step will be compiled before the first step (fmnist.training.compiled)


@dataclass
class RunResult:
    config: TrainConfig
    model: Classifier | None  # best-by-validation weights in eval mode; None for a baseline with no network form
    history: list[EpochRecord]
    best_epoch: int
    epochs_run: int
    steps: int
    train_seconds: float
    test: Evaluation
    test_logits: torch.Tensor
    params: int
    size_mb: float
    data: dict[str, Any]
    device: str
    precision: str
    isa: str = ""
    stopped_early: bool = False
    compiled: bool = False
    compile_seconds: float = 0.0  # compiling the step, before training: not in train_seconds
    extra: dict[str, Any] = field(default_factory=dict)
    planned_steps: int = 0  # steps `epochs` would take; more than `steps` when --max-steps cut the run

    @property
    def has_checkpoint(self) -> bool:
        """Whether the run has weights to save (networks and linear baselines)."""
        return self.model is not None

    @property
    def test_accuracy(self) -> float:
        return self.test.accuracy

    @property
    def best_val_accuracy(self) -> float | None:
        return self.history[self.best_epoch - 1].val_accuracy if self.best_epoch else None

    def summary(self) -> dict[str, Any]:
        """What results.json holds."""
        return {
            "model": self.config.model,
            "model_args": self.config.to_dict()["model_args"],
            "params": self.params,
            "size_mb": round(self.size_mb, 4),
            "test_accuracy": self.test.accuracy,
            "test_loss": self.test.loss,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "epochs_run": self.epochs_run,
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "stopped_early": self.stopped_early,
            "train_seconds": round(self.train_seconds, 3),
            "compiled": self.compiled,
            "compile_seconds": round(self.compile_seconds, 3),
            "seed": self.config.seed,
            "device": self.device,
            "precision": self.precision,
            "cpu_isa": self.isa,
            "checkpoint": self.has_checkpoint,
            "data": self.data,
            "confusion": self.test.confusion,
            "per_class": self.test.per_class,
            "most_confused": self.test.most_confused,
            **self.extra,
        }


class TrainCallback:
    """Hooks for progress display and run-directory writing; every method is optional."""

    def on_start(self, info: RunInfo) -> None: ...
    def on_step(self, step: int, epoch: int, loss: torch.Tensor, accuracy: torch.Tensor,
                images_per_second: float) -> None:  # fmt: skip
        """`loss` and `accuracy` are 0-d tensors of this batch; call float() only when displaying."""

    def on_compiled(self, seconds: float) -> None:
        """The training step was compiled, in `seconds` (before the first step; not training time)."""

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None: ...
    def on_state_saved(self, state_dir: Path) -> None:
        """Resumable state is on disk in `state_dir` (after each epoch but the last, and on a stop)."""

    def on_end(self, result: RunResult) -> None: ...


class StopSignal:
    """Set from outside (a Ctrl-C handler) to make a run save its state and stop after this step."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True


def smoke_steps(results: dict[str, Any]) -> int | None:
    """The steps a run trained when --max-steps cut it short of its epochs (a smoke run), else None
    (also for runs written before fmnist recorded `planned_steps`)."""
    steps, planned = results.get("steps") or 0, results.get("planned_steps") or 0
    return steps if planned and steps < planned and not results.get("stopped_early") else None


def trained_words(results: dict[str, Any]) -> str:
    """How much a run trained, truthfully: "best epoch 3 of 4", or "20 steps (smoke run: ...)"."""
    epochs, best = results.get("epochs_run", 0), results.get("best_epoch", 0)
    smoke = smoke_steps(results)
    if smoke is not None:
        return f"{plural(smoke, 'step')} of {results['planned_steps']:,} planned (smoke run: --max-steps)"
    if not epochs:  # a scikit-learn baseline: fitted, no epochs
        return "fitted"
    early = " (stopped early)" if results.get("stopped_early") else ""
    return f"best epoch {best} of {epochs}{early}"


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs', '1,000 steps'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
