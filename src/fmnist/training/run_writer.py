"""Writing run directories as a run trains: config, environment, metrics, checkpoint, results.

The files, their names and types are fmnist.inference.rundir's; this module writes them
(`RunDirWriter`), trains into a locked run directory (`train_into`), and rebuilds a RunResult
from a finished one (`result_from_dir`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist import __version__
from fmnist.config import TrainConfig
from fmnist.device import cpu_isa, cpu_model, hardware_isa
from fmnist.fsutil import append_line, atomic_write_json, atomic_write_text
from fmnist.inference.checkpoint import CheckpointMeta, save_checkpoint
from fmnist.inference.rundir import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    RunLock,
    read_history,
    read_results,
)
from fmnist.training.results import EpochRecord, RunInfo, RunResult, StopSignal, TrainCallback


def environment_info() -> dict[str, object]:
    return {
        "fmnist": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),  # the level fmnist used (after any ONEDNN_MAX_CPU_ISA cap)
        "cpu_isa_hardware": hardware_isa(),
        "isa_caps": {
            k: os.environ[k]
            for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
            if k in os.environ
        },
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "argv": sys.argv,
    }


def checkpoint_meta(config: TrainConfig, model: nn.Module, extra: dict[str, Any] | None = None) -> CheckpointMeta:
    from fmnist.models.registry import count_parameters

    return CheckpointMeta(
        model=config.model,
        model_args=dict(config.model_args),
        mean=config.input_mean,
        std=config.input_std,
        tta=config.tta,
        params=count_parameters(model),
        extra=extra or {},
    )


class RunDirWriter(TrainCallback):
    """Writes the run directory as training goes; every file lands atomically. With the `dataset`
    it trained on, a network run also gets its trust record (fmnist.inference.trust)."""

    def __init__(self, run_dir: Path, dataset: Any = None):
        self.run_dir = Path(run_dir)
        self.dataset = dataset

    def on_start(self, info: RunInfo) -> None:
        atomic_write_text(self.run_dir / CONFIG_FILE, info.config.to_toml())
        atomic_write_json(self.run_dir / ENVIRONMENT_FILE,
                          {**environment_info(), "device": info.device, "precision": info.precision})  # fmt: skip
        # A resumed run rewrites the history it restored: a line appended just before a crash
        # but after the last saved state would otherwise appear twice.
        lines = "".join(json.dumps(r.to_json()) + "\n" for r in info.history)
        atomic_write_text(self.run_dir / METRICS_FILE, lines)

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        append_line(self.run_dir / METRICS_FILE, json.dumps(record.to_json()))

    def on_end(self, result: RunResult) -> None:
        if result.model is not None:
            extra = {"test_accuracy": result.test_accuracy, "data": result.data}
            save_checkpoint(self.run_dir, result.model, checkpoint_meta(result.config, result.model, extra))
            if self.dataset is not None and result.classical is None:  # a baseline has no features
                from fmnist.inference.trust import fit_trust_for_config

                fit_trust_for_config(result.model, self.dataset, result.config).write(self.run_dir)
        atomic_write_json(self.run_dir / RESULTS_FILE, result.to_results().to_json())


def train_into(config: TrainConfig, run_dir: Path, dataset: Any, callbacks: list[TrainCallback] | tuple = (), *,
               resume: bool = False, stop: StopSignal | None = None) -> RunResult:  # fmt: skip
    """Train `config` into the prepared `run_dir` (locked meanwhile): the run path every command shares."""
    from fmnist.training.trainer import fit

    callbacks = [*callbacks, RunDirWriter(run_dir, dataset)]
    if config.tensorboard:
        from fmnist.training.tensorboard import TensorBoardWriter

        callbacks.append(TensorBoardWriter(run_dir))
    with RunLock(run_dir):
        return fit(config, dataset, callbacks, state_dir=run_dir, resume=resume, stop=stop)


def result_from_dir(run_dir: Path, config: TrainConfig) -> RunResult:
    """A RunResult rebuilt from a run directory's files (without the model), for progress displays."""
    return RunResult.from_results(config, read_results(run_dir), read_history(run_dir))
