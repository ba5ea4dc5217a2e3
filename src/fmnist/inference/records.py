"""The run-directory format's other files: compare.json, an ensemble directory's ensemble.json and
results.json, and sweep.json, each a dataclass whose fields are its keys in the order they are
written. fmnist.inference.rundir names the files and declares a run's own records; these build on
its reading rules (keys an older file lacks take their defaults and are not written back) and add
nesting: a field typed as a record, or a list of them, is read and written as one.

`Record._absent()` names the keys a file leaves out as written now (an ensemble that was not
built has no scores, a plain average no greedy steps), as these files always left them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Self, Union, get_args, get_origin, get_type_hints

from fmnist.analysis.metrics import ClassRow, ConfusedRow
from fmnist.data.dataset import ProvenanceRecord
from fmnist.errors import RunPathError
from fmnist.fsutil import atomic_write_json, read_json
from fmnist.inference.rundir import EpochRecord, RunResultsFile, _from_json, _to_json

SearchValue = float | int | str | bool  # a sampled value of a searched option


class Record:
    """A JSON object of a results folder: a dataclass whose fields are its keys."""

    def _absent(self) -> tuple[str, ...]:
        """Fields left out of the file as written now (the file format has always left them out)."""
        return ()

    def to_json(self) -> dict[str, object]:
        return {k: _plain(v) for k, v in _to_json(self, self._absent()).items()}

    @classmethod
    def from_json(cls, row: object, where: Path) -> Self:
        if isinstance(row, dict):
            hints = get_type_hints(cls)
            row = {k: _typed(hints[k], v, where) if k in hints else v for k, v in row.items()}
        return _from_json(cls, row, where)

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.from_json(read_json(path), path)

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())


def _plain(value: object) -> object:
    if hasattr(value, "to_json"):  # a record: these, or fmnist.inference.rundir's
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _typed(hint: object, value: object, where: Path) -> object:
    """`value` read as `hint` says: records (and lists of them, or None) become their dataclass."""
    if value is None:
        return None
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, UnionType):
        return _typed(args[0], value, where) if len(args) == 1 else value
    if isinstance(hint, type) and hasattr(hint, "from_json"):
        return hint.from_json(value, where)
    if get_origin(hint) is list and isinstance(value, list) and args:
        return [_typed(args[0], v, where) for v in value]
    return value


# -- compare.json ------------------------------------------------------------------------------------


@dataclass
class CompareRun:
    """compare.json's `runs`: one run's results.json, less its per-class tables and data, with its folder and name."""

    results: RunResultsFile | None  # None: a hand-written compare.json naming only the run's folder
    run_dir: str  # its folder in the compare directory
    name: str  # its run name in the plan (shared by its seeds)

    LEFT_OUT = ("per_class", "confusion", "data")  # in the run's own results.json

    def to_json(self) -> dict[str, object]:
        row = {k: v for k, v in self.results.to_json().items() if k not in self.LEFT_OUT} if self.results else {}
        return {**row, "run_dir": self.run_dir, "name": self.name}

    @classmethod
    def from_json(cls, row: object, where: Path) -> CompareRun:
        if not isinstance(row, dict) or not isinstance(row.get("run_dir"), str):
            raise RunPathError(f"{where}: a run without its run_dir")
        name = row.get("name") or row.get("model") or row["run_dir"]  # 0.2's files named no run
        if "test_accuracy" not in row:
            return cls(None, row["run_dir"], name)
        results = {k: v for k, v in row.items() if k not in ("run_dir", "name")}
        return cls(RunResultsFile.from_json(results, where), row["run_dir"], name)


@dataclass(kw_only=True)
class ModelSummary(Record):
    """compare.json's `models`: one run name over its seeds."""

    name: str
    model: str
    params: int
    size_mb: float
    seeds: list[int]
    test_accuracy: list[float]
    test_accuracy_mean: float
    test_accuracy_std: float
    test_loss_mean: float
    best_epoch: list[int | None]
    epochs_run: list[int]
    train_seconds_mean: float


@dataclass(kw_only=True)
class EnsembleMemberRow(Record):
    """A member of a compare's ensemble: which run, and (once built) how it scored and weighed."""

    name: str
    run_dir: str
    seed: int
    model: str
    test_accuracy: float | None = None  # these four: None (and not written) when the ensemble was not built
    validation_accuracy: float | None = None
    weight: float | None = None
    chosen: bool | None = None

    def _absent(self) -> tuple[str, ...]:
        return ("test_accuracy", "validation_accuracy", "weight", "chosen") if self.weight is None else ()


@dataclass(kw_only=True)
class EnsembleRow(Record):
    """compare.json's `ensembles`: one ensemble of the compare, or why it could not be built (`error`)."""

    name: str
    kind: str  # "seeds" or "runs" (fmnist.experiments.plan.PlannedEnsemble)
    dir: str
    select: str | None
    members: list[EnsembleMemberRow]
    params: int = 0
    test_accuracy: float = 0.0
    test_loss: float = 0.0
    validation_accuracy: float | None = None
    best_member: str = ""  # its run_dir
    best_member_accuracy: float = 0.0
    gain_over_best_member: float = 0.0
    fixed: int = 0
    introduced: int = 0
    mean_disagreement: float = 0.0
    error: str = ""
    size_mb: float = 0.0  # the chosen members' checkpoints, together

    def _absent(self) -> tuple[str, ...]:
        scores = ("params", "test_accuracy", "test_loss", "validation_accuracy", "best_member", "best_member_accuracy",
                  "gain_over_best_member", "fixed", "introduced", "mean_disagreement")  # fmt: skip
        return scores if self.error else ("error",)


@dataclass(kw_only=True)
class CompareFile(Record):
    """compare.json: what a compare ran, each run's results, each run name over its seeds, the ensembles."""

    title: str = ""
    notes: str = ""
    seeds: int = 1
    published: dict[str, object] = field(default_factory=dict)  # the study's figures: numbers or phrases
    runs: list[CompareRun] = field(default_factory=list)
    data: ProvenanceRecord = field(default_factory=dict)  # the data the runs loaded
    models: list[ModelSummary] = field(default_factory=list)
    ensembles: list[EnsembleRow] | None = None  # None: none asked for (not written)

    def _absent(self) -> tuple[str, ...]:
        return ("ensembles",) if self.ensembles is None else ()


# -- an ensemble directory: ensemble.json and results.json ---------------------------------------------


@dataclass(kw_only=True)
class ManifestMember(Record):
    path: str  # relative to the ensemble directory
    model: str
    weights_sha256: str
    weight: float
    tta: str


@dataclass(kw_only=True)
class EnsembleManifest(Record):
    """ensemble.json: the chosen members only, so predict, export and serve run exactly the selection."""

    format: str
    format_version: int
    fmnist_version: str
    select: str | None = None  # None: written before selection rules (0.3), every member averaged
    weighted: bool
    class_names: list[str]
    normalization: dict[str, float]  # {"mean", "std"} of the input the ensemble takes
    members: list[ManifestMember]

    def _absent(self) -> tuple[str, ...]:
        return ("select",) if self.select is None else ()


@dataclass(kw_only=True)
class GreedyStep(Record):
    member: int  # index among the members offered
    accuracy: float  # the ensemble's validation accuracy after this step
    loss: float


@dataclass(kw_only=True)
class SelectionRecord(Record):
    """How an ensemble's weights were chosen (fmnist.inference.ensemble_select); greedy adds its steps."""

    rule: str
    weighted: bool = False
    max_steps: int | None = None
    counts: list[int] | None = None  # times each member was added
    steps: list[GreedyStep] | None = None
    stopped: str | None = None

    def _absent(self) -> tuple[str, ...]:
        return () if self.rule == "greedy" else ("max_steps", "counts", "steps", "stopped")


@dataclass(kw_only=True)
class ValidationScores(Record):
    """The chosen weights on the members' shared validation split, or (shared False) why there is none."""

    shared: bool
    reason: str = ""
    val_size: int = 0
    split_seed: int = 0
    accuracy: float = 0.0
    loss: float | None = None  # not recorded before fmnist 0.4
    members: list[float] = field(default_factory=list)  # each member's accuracy there
    best_member: int = 0
    gain_over_best_member: float = 0.0

    def _absent(self) -> tuple[str, ...]:
        if not self.shared:
            return ("val_size", "split_seed", "accuracy", "loss", "members", "best_member", "gain_over_best_member")
        return ("reason",) if self.loss is not None else ("reason", "loss")


@dataclass(kw_only=True)
class EnsembleMember(Record):
    """results.json's `members` of an ensemble: every member offered, chosen or not."""

    run_dir: str
    model: str
    tta: str
    test_accuracy: float
    validation_accuracy: float | None = None
    weight: float = 0.0
    chosen: bool = True  # 0.3's ensembles averaged every member


@dataclass(kw_only=True)
class Disagreement(Record):
    a: int
    b: int
    fraction: float  # of the test images the two members answer differently


@dataclass(kw_only=True)
class EnsembleArgs(Record):
    """An ensemble's results.json `model_args`: its chosen members' models and how they were chosen."""

    members: list[str]
    select: str | None = None  # not recorded before fmnist 0.4
    weighted: bool = False


@dataclass(kw_only=True)
class EnsembleResults(Record):
    """An ensemble directory's results.json: test metrics like a run's, its members and what averaging changed."""

    model: str
    model_args: EnsembleArgs
    params: int
    select: str | None = None  # None: built before selection rules (0.3): every member averaged
    selection: SelectionRecord | None = None
    test_accuracy: float
    test_loss: float
    validation_accuracy: float | None = None  # on the shared validation split (None: none)
    ece: float
    mean_confidence: float
    members: list[EnsembleMember]
    best_member: int  # by test accuracy, among every member offered (chosen or not)
    gain_over_best_member: float
    fixed: int  # test images the best member gets wrong and the ensemble right
    introduced: int
    pairwise_disagreement: list[Disagreement]
    validation: ValidationScores | None = None
    device: str
    precision: str
    data: ProvenanceRecord
    num_images: int
    confusion: list[list[int]]
    per_class: list[ClassRow]
    most_confused: list[ConfusedRow]


# -- a sweep folder: sweep.json -----------------------------------------------------------------------


@dataclass(kw_only=True)
class TrialBest(Record):
    value: float  # the trial's best value of the sweep's metric
    epoch: int


@dataclass(kw_only=True)
class TrialNode(Record):
    """Where a trial's latest epoch ran (a retried trial: the node it finished on)."""

    id: str
    ip: str | None = None
    hostname: str | None = None


@dataclass(kw_only=True)
class SweepTrial(Record):
    name: str
    trial_id: str
    run_dir: str  # relative to the sweep folder
    status: str  # finished, stopped, failed or unfinished
    why: str
    config: dict[str, SearchValue]  # the sampled values of the searched options
    best: TrialBest | None  # None: no epoch reported the metric
    failures: int = 0
    resumed_from_epoch: int = 0
    node: TrialNode | None = None  # None before any epoch (and in 0.3's sweeps)
    epochs: list[EpochRecord] = field(default_factory=list)  # its metrics.jsonl


@dataclass(kw_only=True)
class SweepBest(Record):
    trial: str
    run_dir: str
    value: float
    epoch: int
    config: dict[str, SearchValue]


@dataclass(kw_only=True)
class SweepFile(Record):
    """sweep.json: the sweep's settings, every trial and how it ended, and the best trial."""

    fmnist: str  # the version that wrote it
    metric: str
    mode: str  # max or min
    scheduler: dict[str, str | int | float]  # {"name": "none"} or ASHA's settings
    num_samples: int
    total_trials: int
    search: dict[str, dict[str, list[SearchValue] | SearchValue]]  # option -> {distribution: its arguments}
    base: dict[str, Any]  # the sweep config's training settings, as its TOML gave them
    resources: dict[str, float]
    started: str
    ray: str
    data: ProvenanceRecord  # the data, with array_sha256: a resume must match it
    updated: str = ""
    complete: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # trials by status
    best: SweepBest | None = None
    trials: list[SweepTrial] = field(default_factory=list)
