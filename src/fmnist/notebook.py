"""`Run` and `Comparison`: finished results as Python objects that show themselves in Jupyter.

Both read only the files a run directory holds (results.json, metrics.jsonl, the
checkpoint), so an object made in one session and one loaded later are the same thing.
"""

from __future__ import annotations

import base64
import html
import io
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmnist.errors import FmnistError

if TYPE_CHECKING:
    from fmnist.inference.rundir import EpochRecord


def _curve_png(histories: dict[str, list[EpochRecord]]) -> str:
    """Validation (or training) accuracy per epoch, one line per run, as a base64 PNG ('' if no epochs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {name: rows for name, rows in histories.items() if len(rows) > 1}
    if not drawn:
        return ""
    fig, ax = plt.subplots(figsize=(4.8, 2.6), dpi=90)
    for name, rows in drawn.items():
        key = "val_accuracy" if rows[0].val_accuracy is not None else "train_accuracy"
        ax.plot(
            [r.epoch for r in rows], [100 * getattr(r, key) for r in rows], marker=".", label=f"{name} ({key[:-9]})"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(png: str) -> str:
    return f'<img alt="accuracy per epoch" src="data:image/png;base64,{png}"/>' if png else ""


class Run:
    """A finished run directory: its numbers, its model, and what you can do with them.

    `record` is the directory as typed records (fmnist.inference.rundir.RunRecord); `results` and
    `history` show the same numbers as results.json and metrics.jsonl hold them, as dicts.
    """

    def __init__(self, path: str | Path):
        from fmnist.inference.rundir import RunRecord

        self.path = Path(path)
        self.record = RunRecord.read(self.path)

    @property
    def results(self) -> dict[str, Any]:
        return self.record.results.to_json()

    @property
    def name(self) -> str:
        return self.record.model

    @property
    def test_accuracy(self) -> float:
        return self.record.results.test_accuracy

    @property
    def history(self) -> list[dict[str, Any]]:
        return [row.to_json() for row in self.record.history]

    @cached_property
    def config(self):
        from fmnist.config import load_config_file
        from fmnist.inference.rundir import CONFIG_FILE

        return load_config_file(self.path / CONFIG_FILE)

    @cached_property
    def _predictor(self):
        from fmnist.inference.predict import Predictor

        if not self.record.results.checkpoint:
            raise FmnistError(f"{self.path}: {self.name} keeps results only; it has no model to predict with")
        return Predictor(self.path)

    def predict(self, images: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Class probabilities (N, 10) for uint8 images (N,28,28) or one image (28,28) in the dataset's form:
        calibrated by the run's temperature (1 for a run trained before fmnist calibrated runs), or the
        raw softmax with `calibrated=False`."""
        images = np.asarray(images)
        batch = images[None] if images.ndim == 2 else images
        predictor = self._predictor
        return predictor.trust.probabilities(predictor.logits(batch)) if calibrated else predictor.probabilities(batch)

    def assess(self, images: np.ndarray, coverage: float | None = None):
        """Calibrated probabilities, OOD scores and unknown flags, and prediction sets at `coverage`
        (e.g. 0.9) for uint8 images: an `fmnist.inference.trust.Assessment` (what the run cannot give,
        for want of a trust record, is None, and its `note` says why)."""
        images = np.asarray(images)
        return self._predictor.assess(images[None] if images.ndim == 2 else images, coverage)

    def robustness(self, data_dir: str | Path | None = None, threads: int = 1):
        """Accuracy, calibration error and unknown rate under 14 corruptions at 3 severities, written to
        robustness.json: an `fmnist.inference.robustness.RobustnessFile`."""
        from fmnist.inference.robustness import run_robustness

        return run_robustness(self.path, str(data_dir) if data_dir else None, threads=threads)

    def evaluate(self, data_dir: str | Path | None = None):
        """Score the checkpoint on the test split again: an `fmnist.inference.evaluate.Evaluation`."""
        from fmnist.inference.evaluate import evaluate_run

        evaluation, _ = evaluate_run(self.path, str(data_dir) if data_dir else None)
        return evaluation

    def report(self, **options: Any) -> Path:
        """Write report.html and report.md (options as `fmnist report`); returns the HTML path."""
        from fmnist.report import write_report

        return write_report(self.path, **options)

    def summary_row(self) -> list[str]:
        r = self.record.results
        return [r.model, f"{r.params:,}", f"{100 * r.test_accuracy:.2f}%", r.trained_words(), f"{r.train_seconds:.1f}"]

    def _repr_html_(self) -> str:
        table = _table(["model", "params", "test accuracy", "trained", "train s"], [self.summary_row()])
        title = f"<b>fmnist run</b> <code>{html.escape(str(self.path))}</code>"
        return f"<div>{title}{table}{_figure(_curve_png({self.name: self.record.history}))}</div>"

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.name!r}, test_accuracy={self.test_accuracy:.4f})"


class Comparison:
    """A finished comparison directory: what `fmnist.compare`, `fmnist.ablate` and
    `fmnist train --seeds N` write (compare.json, one run directory per run and seed, and the
    ensembles). In Jupyter it shows its table and the accuracy curves of its runs.

        cmp = fmnist.compare(["mlp_wide", "fastcnn"], seeds=3)   # or fmnist.load_run("runs/compare-...")
        cmp.models[0]["test_accuracy_mean"]                        # per run name, over its seeds
        cmp.runs["fastcnn-seed0"].predict(images)                  # each run is a `Run`
        cmp.report()                                               # report.html of the whole comparison

    `record` is compare.json as a typed record (fmnist.inference.records.CompareFile); `summary`,
    `models` and `ensembles` show the same as compare.json holds it, as dicts.
    """

    def __init__(self, path: str | Path):
        from fmnist.experiments.compare import read_compare

        self.path = Path(path)
        self.record = read_compare(self.path)

    @property
    def summary(self) -> dict[str, Any]:
        """compare.json as it holds it."""
        return self.record.to_json()

    @property
    def models(self) -> list[dict[str, Any]]:
        """One row per run name (a model with its settings), over its seeds: name, model, params,
        size_mb, seeds, test_accuracy (a list), test_accuracy_mean / _std, best_epoch, epochs_run,
        train_seconds_mean."""
        return [m.to_json() for m in self.record.models]

    @property
    def ensembles(self) -> list[dict[str, Any]]:
        """The rows of `--ensemble` / [[ensembles]]: members, test accuracy, gain over the best member."""
        return [e.to_json() for e in self.record.ensembles or []]

    @cached_property
    def runs(self) -> dict[str, Run]:
        """Every run as a `Run`, by its folder in the comparison ("fastcnn", or "fastcnn-seed1" with seeds)."""
        return {r.run_dir: Run(self.path / r.run_dir) for r in self.record.runs}

    def report(self, **options: Any) -> Path:
        """Write the comparison's report.html and report.md (options as `fmnist report`); returns the HTML path."""
        from fmnist.report import write_report

        return write_report(self.path, **options)

    def _repr_html_(self) -> str:
        from fmnist.experiments.compare import ensemble_row_text

        rows = []
        for m in self.record.models:
            acc = f"{100 * m.test_accuracy_mean:.2f}%"
            if len(m.seeds) > 1:
                acc += f" ± {100 * m.test_accuracy_std:.2f}"
            rows.append([m.name, m.model, f"{m.params:,}", acc, f"{m.train_seconds_mean:.1f}"])
        for e in self.record.ensembles or []:
            label, params, accuracy = ensemble_row_text(e)
            rows.append([label, "ensemble", params, accuracy, "–"])
        table = _table(["name", "model", "params", "test accuracy", "train s (mean)"], rows)
        curves = _curve_png({name: run.record.history for name, run in self.runs.items()})
        title = f"<b>{html.escape(self.record.title or 'comparison')}</b> <code>{html.escape(str(self.path))}</code>"
        return f"<div>{title}{table}{_figure(curves)}</div>"

    def __repr__(self) -> str:
        return f"Comparison({str(self.path)!r}, models={[m.name for m in self.record.models]})"
