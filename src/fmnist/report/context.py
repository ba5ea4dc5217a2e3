"""Everything a report section reads: the runs, their histories, the test images, predictions.

Expensive things (the dataset, each model's 10,000 test predictions) are computed once, on
first use, and shared by every section that needs them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fmnist.models.classical  # noqa: F401  (a run may be a scikit-learn baseline)
from fmnist.compare import COMPARE_FILE, read_compare
from fmnist.config import read_toml
from fmnist.data.dataset import FashionMNIST
from fmnist.errors import FmnistError
from fmnist.runs import CONFIG_FILE, RESULTS_FILE, read_history, read_results

FIGURES_DIR = "figures"
ABLATION_FILE = "ablation.json"


@dataclass
class ReportOptions:
    data_dir: str | Path | None = None  # where the test images are; default: where the run found them
    embedding: str = "auto"  # "auto" (UMAP if installed, else t-SNE), "tsne", "umap" or "none"
    embedding_points: int = 2000  # t-SNE on a class-stratified subsample keeps the report fast
    gradcam: bool = True
    detail: str = "first-seed"  # which runs get model-level analysis: "first-seed" per model, or "all"
    markdown: bool = True
    html: bool = True
    seed: int = 0  # for the random picks (samples shown, subsample): the same report every time


@dataclass
class Run:
    name: str  # run directory name, e.g. "cnn-seed1"
    label: str  # the model's name in the plan, shared by its seeds
    path: Path
    results: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def model(self) -> str:
        return self.results["model"]

    @property
    def classical(self) -> dict[str, Any] | None:
        return self.results.get("classical")

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / "model.json").is_file()

    @property
    def family(self) -> str:
        from fmnist.models.registry import get_entry

        if self.classical:
            return "classical"
        try:
            return get_entry(self.model).family
        except FmnistError:
            return "unknown"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return read_toml(path / CONFIG_FILE)
    except FmnistError:
        return {}


def load_runs(folder: Path) -> tuple[dict[str, Any] | None, list[Run]]:
    """(compare.json or None, runs) for a compare directory or a single run directory."""
    folder = Path(folder)
    if (folder / COMPARE_FILE).is_file():
        compare = read_compare(folder)
        runs = []
        for entry in compare.get("runs", []):
            path = folder / entry["run_dir"]
            runs.append(Run(entry["run_dir"], entry.get("name", entry["run_dir"]), path, read_results(path),
                            read_history(path), _read_config(path)))  # fmt: skip
        if not runs:
            raise FmnistError(f"{folder}: {COMPARE_FILE} lists no runs")
        return compare, runs
    if (folder / RESULTS_FILE).is_file():
        run = Run(folder.name, folder.name, folder, read_results(folder), read_history(folder), _read_config(folder))
        return None, [run]
    raise FmnistError(f"{folder}: neither a run directory ({RESULTS_FILE}) nor a comparison ({COMPARE_FILE})")


class ReportContext:
    def __init__(self, folder: Path, options: ReportOptions):
        self.folder = Path(folder)
        self.options = options
        self.compare, self.runs = load_runs(self.folder)
        self.fig_dir = self.folder / FIGURES_DIR
        self.groups: dict[str, list[Run]] = {}
        for run in self.runs:
            self.groups.setdefault(run.label, []).append(run)
        if options.detail == "all":
            self.detail_runs = list(self.runs)
        else:
            self.detail_runs = [runs[0] for runs in self.groups.values()]
        self.timings: dict[str, float] = {}
        self._dataset: FashionMNIST | None = None
        self._dataset_tried = False
        self.data_problem = ""
        self._predictions: dict[str, Any] = {}
        self.prediction_problems: dict[str, str] = {}

    @property
    def is_comparison(self) -> bool:
        return self.compare is not None

    @property
    def multi_seed(self) -> bool:
        return any(len(runs) > 1 for runs in self.groups.values())

    @property
    def data_info(self) -> dict[str, Any]:
        return self.runs[0].results.get("data", {})

    def takeaway(self, sentences: dict[str, str]):
        """One Takeaway from per-run sentences; its headline is the best run's sentence."""
        from fmnist.report.document import Takeaway

        best = max(self.detail_runs, key=lambda r: r.results["test_accuracy"]).name
        return Takeaway(" ".join(sentences.values()), sentences.get(best, ""))

    def figure(self, kind: str, name: str = "") -> Path:
        """figures/<kind>-<run>.png; a single run's report drops the run name (figures/curves.png)."""
        name = name if self.is_comparison else ""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        return self.fig_dir / (f"{kind}-{safe}.png" if safe else f"{kind}.png")

    @property
    def dataset(self) -> FashionMNIST | None:
        """The test images the runs were scored on, or None (see data_problem)."""
        if not self._dataset_tried:
            self._dataset_tried = True
            started = time.perf_counter()
            self._dataset = self._find_dataset()
            self.timings["load data"] = time.perf_counter() - started
        return self._dataset

    def _find_dataset(self) -> FashionMNIST | None:
        from fmnist.data.dataset import load_folder
        from fmnist.data.sources import resolve_dataset

        wanted = self.data_info.get("sha256", {})
        candidates: list[tuple[str, Any]] = []
        if self.options.data_dir:
            candidates.append(("the given data folder", lambda: load_folder(Path(self.options.data_dir))))
        location = self.data_info.get("location")
        if location and Path(location).is_dir():
            candidates.append((f"{location}", lambda: load_folder(Path(location))))
        candidates.append(("FMNIST_DATA or the cache", lambda: resolve_dataset(None, allow_download=False)))
        problems = []
        for label, load in candidates:
            try:
                dataset = load()
            except FmnistError as exc:
                problems.append(f"{label}: {exc}")
                continue
            got = dataset.provenance.to_dict().get("sha256", {})
            if all(got.get(k) == wanted.get(k) for k in ("test_images", "test_labels") if wanted.get(k)):
                return dataset
            problems.append(f"{label}: test files differ from those the runs were scored on")
        self.data_problem = "; ".join(problems) or "no data source"
        return None

    def predictions(self, run: Run):
        """RunPredictions for `run`, or None with the reason in prediction_problems[run.name]."""
        from fmnist.analysis.predictions import predict_run

        if run.name in self._predictions:
            return self._predictions[run.name]
        result = None
        if not run.has_checkpoint:
            kind = run.classical.get("estimator", run.model) if run.classical else run.model
            self.prediction_problems[run.name] = (
                f"no checkpoint ({kind} is a scikit-learn model kept as results only)" if run.classical
                else "no checkpoint in the run directory"
            )  # fmt: skip
        elif self.dataset is None:
            self.prediction_problems[run.name] = f"test images not available ({self.data_problem})"
        else:
            started = time.perf_counter()
            try:
                result = predict_run(run.path, self.dataset.test_images, self.dataset.test_labels)
            except FmnistError as exc:
                self.prediction_problems[run.name] = str(exc)
            self.timings[f"predict {run.name}"] = time.perf_counter() - started
        self._predictions[run.name] = result
        return result
