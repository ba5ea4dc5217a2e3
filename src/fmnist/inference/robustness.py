"""How a run holds up off its training data: `fmnist robustness RUN_DIR` and `Run.robustness()`.

The test split, clean and under every corruption of fmnist.data.corruptions at each severity (built
here, deterministically: the same run and data give the same numbers), scored through one
evaluation path (fmnist.inference.trust.embed, the run's normalisation and test-time views):
accuracy, the calibration error of the calibrated probabilities, and the share of images the run's
OOD score calls unknown. Written to ROBUSTNESS_FILE in the run directory.

Speed: the corruptions are cheap (about 6 s for all 42 sets on one core); the model's passes are
the cost, so they run at the precision inference uses ("auto": bf16 where the CPU computes it
natively, as training does) and by default on one thread: on a shared 2-core machine two threads
were measured 6x slower than one under load (benchmarks/ood_screen.py's note).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist.analysis.calibration import DEFAULT_BINS
from fmnist.analysis.metrics import expected_calibration_error
from fmnist.data.corruptions import CORRUPTIONS, SEVERITY_LEVELS, corrupted_sets
from fmnist.fsutil import atomic_write_json, read_json
from fmnist.inference.rundir import ROBUSTNESS_FILE, _from_json, _to_json
from fmnist.inference.trust import Trust, embed

DEFAULT_THREADS = 1


@dataclass
class CorruptionRow:
    corruption: str  # "clean" for the test split as it is
    severity: int  # 0 for clean
    accuracy: float
    ece: float  # of the calibrated probabilities (the report's bins)
    ood_rate: float | None  # share called unknown; None: the run has no OOD score


@dataclass(kw_only=True)
class RobustnessFile:
    """robustness.json, in the order its keys are written."""

    model: str = ""
    images: int = 0
    temperature: float = 1.0
    ood_method: str = ""
    clean_accuracy: float = 0.0
    clean_ece: float = 0.0
    clean_ood_rate: float | None = None
    mean_corruption_accuracy: float = 0.0  # over every corruption and severity
    mean_corruption_ece: float = 0.0
    mean_corruption_ood_rate: float | None = None
    rows: list[CorruptionRow] = field(default_factory=list)  # every corruption x severity, in CORRUPTIONS order
    precision: str = ""
    threads: int = DEFAULT_THREADS
    seconds: float = 0.0
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return {**_to_json(self, ("rows",)), "rows": [_to_json(r) for r in self.rows]}

    @classmethod
    def from_json(cls, row: Any, where: Path = Path(ROBUSTNESS_FILE)) -> RobustnessFile:
        record = _from_json(cls, row, where)
        record.rows = [_from_json(CorruptionRow, r, where) for r in record.rows]
        return record

    def worst(self, n: int = 3) -> list[CorruptionRow]:
        """The n corruption-severity pairs with the lowest accuracy."""
        return sorted(self.rows, key=lambda r: r.accuracy)[:n]


def _row(name: str, severity: int, logits: np.ndarray, features: np.ndarray, labels: np.ndarray,
         trust: Trust) -> CorruptionRow:  # fmt: skip
    assessment = trust.assess(logits, features)
    probabilities = torch.from_numpy(assessment.probabilities)
    return CorruptionRow(
        corruption=name, severity=severity, accuracy=float((logits.argmax(1) == labels).mean()),
        ece=expected_calibration_error(probabilities, torch.from_numpy(labels), DEFAULT_BINS),
        ood_rate=None if assessment.unknown is None else float(assessment.unknown.mean()),
    )  # fmt: skip


def measure(run_dir: Path, images: np.ndarray, labels: np.ndarray, *, precision: str = "auto",
            threads: int = DEFAULT_THREADS, notify=lambda _: None) -> RobustnessFile:  # fmt: skip
    """Score the run on `images` (the test split) clean and under every corruption and severity."""
    from fmnist.device import resolve_precision
    from fmnist.inference.checkpoint import load_checkpoint, normalization, tta_settings

    started = time.perf_counter()
    model, meta = load_checkpoint(run_dir)
    trust = Trust.load(run_dir)
    mean, std = normalization(meta)
    precision = resolve_precision(precision, torch.device("cpu"))
    settings = {"mean": mean, "std": std, "tta": tta_settings(meta)["tta"], "precision": precision}
    labels = np.asarray(labels).astype(np.int64)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        clean = _row("clean", 0, *embed(model, images, **settings), labels, trust)
        rows = []
        for name, severity, corrupted in corrupted_sets(np.asarray(images)):
            rows.append(_row(name, severity, *embed(model, corrupted, **settings), labels, trust))
            if severity == SEVERITY_LEVELS[-1]:
                notify(f"{name}: {', '.join(f'{100 * r.accuracy:.1f}%' for r in rows[-len(SEVERITY_LEVELS) :])}")
    finally:
        torch.set_num_threads(previous)
    rates = [r.ood_rate for r in rows if r.ood_rate is not None]
    return RobustnessFile(
        model=meta["model"], images=len(labels), temperature=trust.temperature, ood_method=trust.record.ood_method,
        clean_accuracy=clean.accuracy, clean_ece=clean.ece, clean_ood_rate=clean.ood_rate,
        mean_corruption_accuracy=float(np.mean([r.accuracy for r in rows])),
        mean_corruption_ece=float(np.mean([r.ece for r in rows])),
        mean_corruption_ood_rate=float(np.mean(rates)) if rates else None,
        rows=rows, precision=precision, threads=threads, seconds=time.perf_counter() - started, note=trust.note,
    )  # fmt: skip


def run_robustness(run_dir: Path, data_dir: str | None = None, *, threads: int = DEFAULT_THREADS,
                   notify=lambda _: None) -> RobustnessFile:  # fmt: skip
    """`measure` on the test split of the dataset, written to RUN_DIR/robustness.json."""
    from fmnist.data.sources import resolve_dataset
    from fmnist.inference.checkpoint import checkpoint_folder, read_meta

    run_dir = checkpoint_folder(Path(run_dir))
    read_meta(run_dir)  # a bad path or a folder without a checkpoint fails here, before the data loads
    dataset = resolve_dataset(data_dir, notify=notify)
    record = measure(run_dir, dataset.test_images, dataset.test_labels, threads=threads, notify=notify)
    atomic_write_json(run_dir / ROBUSTNESS_FILE, record.to_json())
    return record


def read_robustness(run_dir: Path) -> RobustnessFile:
    path = Path(run_dir) / ROBUSTNESS_FILE
    return RobustnessFile.from_json(read_json(path), path)


__all__ = ["CORRUPTIONS", "CorruptionRow", "RobustnessFile", "measure", "read_robustness", "run_robustness"]
