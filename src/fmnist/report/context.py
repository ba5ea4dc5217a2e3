"""Everything a report section reads: the runs, their histories, the test images, predictions.

Expensive things (the dataset, each model's 10,000 test predictions, the untrained baselines)
are computed once and shared by every section that needs them; prepare() does the model work
first and then starts the 2-D maps in a second process, which runs while the figures are drawn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fmnist.analysis.embeddings import METHOD_NAMES
from fmnist.analysis.map_worker import Map2D, MapsJob, start_maps
from fmnist.data.dataset import FashionMNIST, ProvenanceRecord
from fmnist.data.splits import stratified_subsample
from fmnist.errors import FmnistError, RunPathError
from fmnist.experiments.compare import COMPARE_FILE, read_compare
from fmnist.inference.records import CompareFile, EnsembleResults
from fmnist.inference.rundir import ABLATION_FILE, FIGURES_DIR, RESULTS_FILE, ClassicalFit, RunRecord, read_results
from fmnist.report.options import ReportOptions

if TYPE_CHECKING:
    from fmnist.inference.predictions import RunPredictions

BASELINE_IMAGES = 1000  # test images the untrained network is scored on
__all__ = [
    "ABLATION_FILE",
    "BASELINE_IMAGES",
    "FIGURES_DIR",
    "EnsembleEntry",
    "ReportContext",
    "ReportOptions",
    "ReportedRun",
    "find_dataset",
    "load_ensembles",
    "load_runs",
]


@dataclass
class ReportedRun(RunRecord):
    """A run directory as the report names it."""

    name: str  # the compare's run name (+ seed), or the model for a single run
    label: str  # the name its seeds share (a compare's run name, or the model)
    slug: str  # file-name form of `name`, for figures

    @property
    def classical(self) -> ClassicalFit | None:
        return self.results.classical

    @property
    def family(self) -> str:
        from fmnist.models.registry import get_entry

        if self.classical:
            return "classical"
        try:
            return get_entry(self.model).family
        except FmnistError:
            return "unknown"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _reported(path: Path, name: str, label: str, slug: str) -> ReportedRun:
    record = RunRecord.read(path)
    return ReportedRun(record.path, record.results, record.history, record.config, name, label, _slug(slug))


def load_runs(folder: Path) -> tuple[CompareFile | None, list[ReportedRun]]:
    """(compare.json or None, runs) for a compare directory or a single run directory.

    Runs are named by what the user chose, never by where they happen to lie: a compare's run
    name (with the seed when a name has several), a single run's model.
    """
    folder = Path(folder)
    if (folder / COMPARE_FILE).is_file():
        compare = read_compare(folder)
        entries = compare.runs
        if not entries:
            raise FmnistError(f"{folder}: {COMPARE_FILE} lists no runs")
        labels = [entry.name for entry in entries]
        runs = []
        for entry, label in zip(entries, labels):
            run = _reported(folder / entry.run_dir, label, label, label)
            if labels.count(label) > 1:
                run.name, run.slug = f"{label} seed {run.results.seed}", _slug(f"{label}-seed{run.results.seed}")
            runs.append(run)
        return compare, runs
    if (folder / RESULTS_FILE).is_file():
        model = read_results(folder).model
        return None, [_reported(folder, model, model, model)]
    raise RunPathError(f"{folder}: neither a run directory ({RESULTS_FILE}) nor a comparison ({COMPARE_FILE})")


def find_dataset(data_info: ProvenanceRecord, data_dir: Any = None) -> tuple[FashionMNIST | None, str]:
    """(the test images results were scored on, "") or (None, why not): the given folder, the
    folder the results name, then FMNIST_DATA or the cache; test files must match by sha256."""
    from fmnist.data.dataset import load_folder
    from fmnist.data.sources import resolve_dataset

    wanted = data_info.get("sha256", {})
    candidates: list[tuple[str, Any]] = []
    if data_dir:
        candidates.append(("the given data folder", lambda: load_folder(Path(data_dir))))
    location = data_info.get("location")
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
            return dataset, ""
        problems.append(f"{label}: test files differ from those the runs were scored on")
    return None, "; ".join(problems) or "no data source"


@dataclass
class EnsembleEntry:
    """An ensemble the report shows: one of a compare's (compare.json's `ensembles`) or an ensemble folder."""

    name: str
    path: Path
    results: EnsembleResults | None  # its results.json (None when it was not built)
    member_names: list[str]  # what the report calls each member, in the ensemble's order
    error: str = ""  # why a compare could not build it


def load_ensembles(folder: Path, compare: CompareFile | None) -> list[EnsembleEntry]:
    """A compare's ensembles, or the one ensemble when `folder` is an ensemble directory."""
    from fmnist.inference.ensemble_model import is_ensemble_dir

    folder = Path(folder)
    if compare is None:
        if not is_ensemble_dir(folder):
            return []
        results = EnsembleResults.read(folder / RESULTS_FILE)  # an ensemble's own fields, not a run's
        names = [Path(m.run_dir).name for m in results.members]
        if len(set(names)) < len(names):  # members from same-named folders: their paths tell them apart
            names = [m.run_dir for m in results.members]
        return [EnsembleEntry(folder.resolve().name, folder, results, names)]  # named as the user named it
    seeds_of: dict[str, int] = {}
    for entry in compare.runs:
        seeds_of[entry.name] = seeds_of.get(entry.name, 0) + 1
    out = []
    for row in compare.ensembles or []:
        names = [m.name if seeds_of.get(m.name, 0) < 2 else f"{m.name} seed {m.seed}" for m in row.members]
        path = folder / row.dir
        if row.error:
            out.append(EnsembleEntry(row.name, path, None, names, row.error))
        else:
            out.append(EnsembleEntry(row.name, path, EnsembleResults.read(path / RESULTS_FILE), names))
    return out


class ReportContext:
    def __init__(self, folder: Path, options: ReportOptions):
        self.folder = Path(folder)
        self.options = options
        self.compare, self.runs = load_runs(self.folder)
        self.ensembles = load_ensembles(self.folder, self.compare)
        self.fig_dir = self.folder / FIGURES_DIR
        self.groups: dict[str, list[ReportedRun]] = {}
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
        self._predictions: dict[str, RunPredictions | None] = {}
        self.prediction_problems: dict[str, str] = {}
        self._baselines: dict[str, dict[str, float]] = {}
        self._maps_job: MapsJob | None = None
        self._map_names: list[str] = []

    @property
    def is_comparison(self) -> bool:
        return self.compare is not None

    @property
    def multi_seed(self) -> bool:
        return any(len(runs) > 1 for runs in self.groups.values())

    @property
    def data_info(self) -> ProvenanceRecord:
        return self.runs[0].results.data

    def takeaway(self, sentences: dict[str, str]):
        """One Takeaway from per-run sentences; its headline is the best run's sentence."""
        from fmnist.report.document import Takeaway

        best = max(self.detail_runs, key=lambda r: r.results.test_accuracy).name
        return Takeaway(" ".join(sentences.values()), sentences.get(best, ""))

    def figure(self, kind: str, run: ReportedRun | None = None) -> Path:
        """figures/<kind>-<run>.png; a single run's report drops the run (figures/curves.png)."""
        if run is None or not self.is_comparison:
            return self.fig_dir / f"{kind}.png"
        return self.fig_dir / f"{kind}-{run.slug}.png"

    @property
    def dataset(self) -> FashionMNIST | None:
        """The test images the runs were scored on, or None (see data_problem)."""
        if not self._dataset_tried:
            self._dataset_tried = True
            started = time.perf_counter()
            self._dataset = self._find_dataset()
            self.timings["loading the images"] = time.perf_counter() - started
        return self._dataset

    def _find_dataset(self) -> FashionMNIST | None:
        dataset, self.data_problem = find_dataset(self.data_info, self.options.data_dir)
        return dataset

    def predictions(self, run: ReportedRun) -> RunPredictions | None:
        """RunPredictions for `run`, or None with the reason in prediction_problems[run.name]."""
        from fmnist.inference.predictions import predict_run

        if run.name in self._predictions:
            return self._predictions[run.name]
        result = None
        if not run.has_checkpoint:
            kind = (run.classical.estimator or run.model) if run.classical else run.model
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
            self.timings[f"test predictions of {run.name}"] = time.perf_counter() - started
        self._predictions[run.name] = result
        return result

    def untrained_baseline(self, run: ReportedRun) -> dict[str, float] | None:
        """Accuracy and loss of `run`'s network with its starting weights, or None (no network or
        no predictions). Scored on a class-stratified BASELINE_IMAGES: an untrained network sits
        near 10% whatever the sample, and this measures it to about a point at a fraction of the cost."""
        from fmnist.inference.predictions import random_baseline

        preds = self.predictions(run)
        if run.classical or preds is None:
            return None
        if run.name not in self._baselines:
            started = time.perf_counter()
            chosen = torch.from_numpy(stratified_subsample(preds.labels.numpy(), BASELINE_IMAGES, self.options.seed))
            self._baselines[run.name] = random_baseline(preds.meta, preds.x[chosen], preds.labels[chosen],
                                                        run.results.seed)  # fmt: skip
            self.timings[f"untrained baseline of {run.name}"] = time.perf_counter() - started
        return self._baselines[run.name]

    def prepare(self) -> None:
        """Do the model work up front, then start the 2-D maps in a second process.

        The sections' figures are Python on one core; t-SNE, in its own interpreter, uses the
        other. Started after the last torch call, the maps never compete with torch's threads.
        """
        from fmnist.inference.predictions import extract_features

        jobs, names = [], []
        for run in self.detail_runs:
            preds = self.predictions(run)
            self.untrained_baseline(run)
            if preds is not None and self.options.embedding != "none":
                labels = preds.labels.numpy()
                chosen = stratified_subsample(labels, self.options.embedding_points, self.options.seed)
                jobs.append((extract_features(preds.model, preds.x[chosen]), labels[chosen]))
                names.append(run.name)
        if jobs:
            self._maps_job = start_maps(jobs, self.options.embedding, self.options.seed)
            self._map_names = names

    def embedding_map(self, run: ReportedRun) -> Map2D | None:
        """The 2-D map of `run`'s embedding started by prepare() (waiting for it if need be), or None."""
        if self._maps_job is None or run.name not in self._map_names:
            return None
        made = self._maps_job.results()[self._map_names.index(run.name)]
        self.timings[f"{METHOD_NAMES[made.method]} of {run.name} (in a second process)"] = made.seconds
        return made

    def close(self) -> None:
        if self._maps_job is not None:
            self._maps_job.close()
            self._maps_job = None
