"""Training dynamics read from metrics.jsonl rows (fmnist.inference.rundir.EpochRecord): best epoch and the
overfitting U-shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

OVERFIT_PATIENCE = 3  # epochs of validation loss above its minimum that count as overfitting (the seeds' U-shape)


class EpochRecord(Protocol):
    """What is read of a metrics.jsonl row (the record itself is fmnist.inference.rundir's)."""

    epoch: int
    train_loss: float
    val_loss: float | None


@dataclass(frozen=True)
class Overfitting:
    min_epoch: int  # epoch of the lowest validation loss
    started_epoch: int  # first epoch after the minimum: where the U turns upwards
    rising_epochs: int  # epochs after the minimum
    val_loss_min: float
    val_loss_last: float
    train_loss_at_min: float
    train_loss_last: float


def detect_overfitting(history: Sequence[EpochRecord], patience: int = OVERFIT_PATIENCE) -> Overfitting | None:
    """The U-shape seeds 000 and 004 describe, or None.

    Flagged when the validation loss has its minimum at least `patience` epochs before the
    end, ends above that minimum, and every later epoch stays above it, while the training
    loss at the end is below its value at the minimum (the model still fits the training set
    better and the held-out set worse).
    """
    rows = [r for r in history if r.val_loss is not None and r.train_loss is not None]
    if len(rows) < patience + 1:
        return None
    val = [float(r.val_loss) for r in rows]
    i_min = min(range(len(val)), key=lambda i: (val[i], i))
    after = val[i_min + 1 :]
    if len(after) < patience or not all(v > val[i_min] for v in after):
        return None
    train_at_min, train_last = float(rows[i_min].train_loss), float(rows[-1].train_loss)
    if not train_last < train_at_min:
        return None
    return Overfitting(
        min_epoch=rows[i_min].epoch,
        started_epoch=rows[i_min + 1].epoch,
        rising_epochs=len(after),
        val_loss_min=val[i_min],
        val_loss_last=val[-1],
        train_loss_at_min=train_at_min,
        train_loss_last=train_last,
    )


def best_row(history: Sequence[EpochRecord], best_epoch: int) -> EpochRecord | None:
    return next((r for r in history if r.epoch == best_epoch), None)
