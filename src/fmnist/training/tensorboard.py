"""TensorBoard scalars for a run: `tensorboard = true` (or `--tensorboard`) adds this callback.

Per epoch: training and validation loss and accuracy, the learning rate and training
images/s, written to RUN_DIR/tensorboard with the epoch as the step. A sweep's trials are run
directories too, so `tensorboard --logdir SWEEP_DIR` shows every trial side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmnist.inference.rundir import TENSORBOARD_DIR
from fmnist.training.results import EpochRecord, RunInfo, RunResult, TrainCallback

# Tag -> EpochRecord field. "loss/..." and "accuracy/..." group train and validation in one card.
SCALARS: dict[str, str] = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "accuracy/train": "train_accuracy",
    "accuracy/validation": "val_accuracy",
    "learning_rate": "lr",
    "images_per_second": "images_per_second",
}


class TensorBoardWriter(TrainCallback):
    def __init__(self, run_dir: Path):
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer: Any = None

    def on_start(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run may have logged epochs after its last saved state; purge_step makes
        # TensorBoard drop those so each epoch shows once.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=info.epoch if info.history else None)

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        for tag, name in SCALARS.items():
            value = getattr(record, name)
            if value is not None:
                self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()  # a killed run keeps every epoch it finished

    def on_end(self, result: RunResult) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
