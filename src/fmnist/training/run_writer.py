"""Writing run directories as a run trains: config, environment, metrics, checkpoint, results.

The files and their names are fmnist.inference.rundir's; this module writes them
(`RunDirWriter`), trains into a locked run directory (`train_into`), and rebuilds a RunResult
from a finished one (`result_from_dir`).
"""

from __future__ import annotations

import dataclasses
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
from fmnist.inference.rundir import CONFIG_FILE, METRICS_FILE, RESULTS_FILE, RunLock, read_history, read_results
from fmnist.training.results import EpochRecord, RunInfo, RunResult, StopSignal, TrainCallback


def environment_info() -> dict[str, Any]:
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
    """Writes the run directory as training goes; every file lands atomically."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_start(self, info: RunInfo) -> None:
        atomic_write_text(self.run_dir / CONFIG_FILE, info.config.to_toml())
        atomic_write_json(self.run_dir / "environment.json",
                          {**environment_info(), "device": info.device, "precision": info.precision})  # fmt: skip
        # A resumed run rewrites the history it restored: a line appended just before a crash
        # but after the last saved state would otherwise appear twice.
        lines = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in info.history)
        atomic_write_text(self.run_dir / METRICS_FILE, lines)

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        append_line(self.run_dir / METRICS_FILE, json.dumps(dataclasses.asdict(record)))

    def on_end(self, result: RunResult) -> None:
        if result.model is not None:
            extra = {"test_accuracy": result.test_accuracy, "data": result.data}
            save_checkpoint(self.run_dir, result.model, checkpoint_meta(result.config, result.model, extra))
        atomic_write_json(self.run_dir / RESULTS_FILE, result.summary())


def train_into(config: TrainConfig, run_dir: Path, dataset: Any, callbacks: list[TrainCallback] | tuple = (), *,
               resume: bool = False, stop: StopSignal | None = None) -> RunResult:  # fmt: skip
    """Train `config` into the prepared `run_dir` (locked meanwhile): the run path every command shares."""
    from fmnist.training.trainer import fit

    callbacks = [*callbacks, RunDirWriter(run_dir)]
    if config.tensorboard:
        from fmnist.training.tensorboard import TensorBoardWriter

        callbacks.append(TensorBoardWriter(run_dir))
    with RunLock(run_dir):
        return fit(config, dataset, callbacks, state_dir=run_dir, resume=resume, stop=stop)


def result_from_dir(run_dir: Path, config: TrainConfig) -> RunResult:
    """A RunResult rebuilt from a run directory's files (without the model), for progress displays.

    What a run trained in another process (a Ray task, a --jobs worker) hands back to the caller.
    """
    from fmnist.inference.evaluate import Evaluation

    s = read_results(run_dir)
    test = Evaluation(s["test_accuracy"], s["test_loss"], s["confusion"], s["per_class"], s["most_confused"],
                      sum(map(sum, s["confusion"])))  # fmt: skip
    history = [EpochRecord(**row) for row in read_history(run_dir)]
    return RunResult(config, None, history, s["best_epoch"], s["epochs_run"], s["steps"], s["train_seconds"], test,
                     torch.empty(0), s["params"], s["size_mb"], s["data"], s["device"], s["precision"],
                     s.get("cpu_isa", ""), s["stopped_early"], compiled=s.get("compiled", False),
                     compile_seconds=s.get("compile_seconds", 0.0), planned_steps=s.get("planned_steps", 0))  # fmt: skip
