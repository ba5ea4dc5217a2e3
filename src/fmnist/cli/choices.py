"""Choice types for options, built from the tuples that define them, so `--help` lists the choices."""

from __future__ import annotations

from enum import Enum

from fmnist.config import OPTIMIZERS, SCHEDULERS
from fmnist.device import DEVICES, PRECISIONS
from fmnist.inference.tta import TTA_LEVELS


def choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


def value(option: Enum | None) -> str | None:
    """The plain string of a choice option (None stays None: 'not given')."""
    return option.value if option is not None else None


Optimizer = choice("Optimizer", OPTIMIZERS)
Scheduler = choice("Scheduler", SCHEDULERS)
Device = choice("Device", DEVICES)
Precision = choice("Precision", PRECISIONS)
Tta = choice("Tta", TTA_LEVELS)
Split = choice("Split", ("train", "test"))
