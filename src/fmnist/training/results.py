"""What a run reports while it goes (`RunInfo`, `EpochRecord`, callbacks) and when it ends (`RunResult`).

An EpochRecord is a line of metrics.jsonl and `RunResult.to_results()` is results.json: both types
are the run-directory format's (fmnist.inference.rundir).

Networks and scikit-learn baselines produce the same types, so progress displays, run
directories, `compare` and reports handle both without asking which is which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.config import TrainConfig
from fmnist.data.dataset import ProvenanceRecord
from fmnist.inference.evaluate import Evaluation
from fmnist.inference.rundir import ClassicalFit, EpochRecord, RunResultsFile, TeacherRecord
from fmnist.models.base import Classifier


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
    data: ProvenanceRecord
    device: str
    precision: str
    isa: str = ""
    stopped_early: bool = False
    compiled: bool = False
    compile_seconds: float = 0.0  # compiling the step, before training: not in train_seconds
    classical: ClassicalFit | None = None  # how a scikit-learn baseline was fitted
    planned_steps: int = 0  # steps `epochs` would take; more than `steps` when --max-steps cut the run
    teacher: TeacherRecord | None = None  # a distilled run's teacher and its cost (fmnist.training.distill)

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

    @classmethod
    def from_results(cls, config: TrainConfig, results: RunResultsFile, history: list[EpochRecord]) -> RunResult:
        """A run rebuilt from its results.json and history, without the model or test logits: what a run
        trained in another process (a Ray task, a --jobs worker) hands back to the caller."""
        r = results
        test = Evaluation(r.test_accuracy, r.test_loss, r.confusion, r.per_class, r.most_confused,
                          sum(map(sum, r.confusion)))  # fmt: skip
        return cls(config=config, model=None, history=history, best_epoch=r.best_epoch, epochs_run=r.epochs_run,
                   steps=r.steps, train_seconds=r.train_seconds, test=test, test_logits=torch.empty(0),
                   params=r.params, size_mb=r.size_mb, data=r.data, device=r.device, precision=r.precision,
                   isa=r.cpu_isa, stopped_early=r.stopped_early, compiled=r.compiled,
                   compile_seconds=r.compile_seconds, classical=r.classical, planned_steps=r.planned_steps,
                   teacher=r.teacher)  # fmt: skip

    def to_results(self) -> RunResultsFile:
        """What results.json holds."""
        return RunResultsFile(
            model=self.config.model,
            model_args=self.config.to_dict()["model_args"],
            params=self.params,
            size_mb=round(self.size_mb, 4),
            test_accuracy=self.test.accuracy,
            test_loss=self.test.loss,
            best_epoch=self.best_epoch,
            best_val_accuracy=self.best_val_accuracy,
            epochs_run=self.epochs_run,
            steps=self.steps,
            planned_steps=self.planned_steps,
            stopped_early=self.stopped_early,
            train_seconds=round(self.train_seconds, 3),
            compiled=self.compiled,
            compile_seconds=round(self.compile_seconds, 3),
            seed=self.config.seed,
            device=self.device,
            precision=self.precision,
            cpu_isa=self.isa,
            checkpoint=self.has_checkpoint,
            data=self.data,
            confusion=self.test.confusion,
            per_class=self.test.per_class,
            most_confused=self.test.most_confused,
            classical=self.classical,
            teacher=self.teacher,
        )


class TrainCallback:
    """Hooks for progress display and run-directory writing; every method is optional."""

    def on_start(self, info: RunInfo) -> None: ...
    def on_step(self, step: int, epoch: int, loss: torch.Tensor, accuracy: torch.Tensor,
                images_per_second: float) -> None:  # fmt: skip
        """`loss` and `accuracy` are 0-d tensors of this batch; call float() only when displaying."""

    def on_compiled(self, seconds: float) -> None:
        """The training step was compiled, in `seconds` (before the first step; not training time)."""

    def on_teacher(self, teacher: TeacherRecord) -> None:
        """A distilled run's teacher scored the training split (before the first step; not training time)."""

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
