"""The run-directory format: the name of every file fmnist writes into a results folder, the
types its JSON files are written and read through, creating and locking a folder for writing.

    RUN_DIR/                     (fmnist train; each run of a compare, ablation or sweep)
      config.toml                CONFIG_FILE: the full, resolved TrainConfig
      environment.json           ENVIRONMENT_FILE: versions of Python, torch, numpy, fmnist; device; CPU
      metrics.jsonl              METRICS_FILE: one EpochRecord per finished epoch
      model.safetensors          WEIGHTS_FILE: best-by-validation weights (fmnist.inference.checkpoint)
      model.json                 META_FILE: how to rebuild the model (fmnist.inference.checkpoint)
      results.json               RESULTS_FILE: RunResultsFile
      trust.json, trust.safetensors
                                 TRUST_FILE, TRUST_TENSORS_FILE: temperature, OOD threshold, conformal
                                 scores (fmnist.inference.trust); absent in older runs
      robustness.json            ROBUSTNESS_FILE: `fmnist robustness` (fmnist.inference.robustness)
      neighbours.safetensors     NEIGHBOURS_FILE: `predict --explain`'s training features (fmnist.inference.explain)
      state.json, state-<step>.safetensors
                                 STATE_FILE, STATE_TENSORS_GLOB: resumable state, until the run ends
                                 (fmnist.training.state)
      tensorboard/               TENSORBOARD_DIR: with --tensorboard
      report.md, report.html     REPORT_MARKDOWN_FILE, REPORT_HTML_FILE (+ FIGURES_DIR/)
      .lock                      LOCK_FILE: held while a process writes the run (RunLock)

    COMPARE_DIR/                 (fmnist compare, fmnist ablate, fmnist train --seeds N)
      compare.json               COMPARE_FILE: the plan and one row per run and per ensemble
      ablation.json              ABLATION_FILE: fmnist ablate's variants and their Δ
      <name>/, <name>-seed<k>/   one RUN_DIR per run and seed
      ensembles/<name>/          ENSEMBLES_DIR: one ENSEMBLE_DIR per --ensemble / [[ensembles]]
      report.md, report.html, figures/, .lock

    ENSEMBLE_DIR/                (fmnist ensemble)
      ensemble.json              ENSEMBLE_FILE: members (paths, weights' sha256, weights), selection
      predictions.safetensors    PREDICTIONS_FILE: labels, test probabilities, each member's top-1
      results.json               RESULTS_FILE: the ensemble's scores (its own fields, not RunResultsFile)
      trust.json, trust.safetensors
                                 TRUST_FILE, TRUST_TENSORS_FILE: the ensemble's own record
                                 (fmnist.inference.ensemble_trust); absent in older ensembles
      report.md, report.html, figures/

    SWEEP_DIR/                   (fmnist sweep)
      sweep.toml                 SWEEP_SPEC_FILE: the search as given
      sweep.json                 SWEEP_FILE: every trial's status, settings and epochs; the best
      best.toml                  BEST_FILE: the best trial's settings, for fmnist train --config
      trials/trial-NNN/          TRIALS_DIR: one RUN_DIR per trial
      ray/                       TUNE_DIR: Ray Tune's own state, for --resume
      report.md, report.html, figures/

A run directory's records are declared here (RunResultsFile, EpochRecord, RunRecord); compare.json,
an ensemble's ensemble.json and results.json, and sweep.json build on them in fmnist.inference.records.
Writing a run as it trains is fmnist.training.run_writer's job. Files written by older versions
load: every field they lack takes its default, and is left out when the record is written back.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist.errors import FmnistError, RunLockedError, RunPathError, UsageError
from fmnist.fsutil import read_json, read_toml

if TYPE_CHECKING:
    from fmnist.analysis.metrics import ClassRow, ConfusedRow
    from fmnist.data.dataset import ProvenanceRecord

# --- file names: each declared here once ---------------------------------------------------------
CONFIG_FILE = "config.toml"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
RESULTS_FILE = "results.json"
TRUST_FILE = "trust.json"
TRUST_TENSORS_FILE = "trust.safetensors"
ROBUSTNESS_FILE = "robustness.json"
NEIGHBOURS_FILE = "neighbours.safetensors"
STATE_FILE = "state.json"
STATE_TENSORS_GLOB = "state-*.safetensors"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
REPORT_MARKDOWN_FILE = "report.md"
REPORT_HTML_FILE = "report.html"
FIGURES_DIR = "figures"
COMPARE_FILE = "compare.json"
ABLATION_FILE = "ablation.json"
ENSEMBLES_DIR = "ensembles"
ENSEMBLE_FILE = "ensemble.json"
PREDICTIONS_FILE = "predictions.safetensors"
SWEEP_SPEC_FILE = "sweep.toml"
SWEEP_FILE = "sweep.json"
BEST_FILE = "best.toml"
TRIALS_DIR = "trials"
TUNE_DIR = "ray"
RUNS_ROOT = Path("runs")  # where new results go when no --out is given


# --- a run directory's records --------------------------------------------------------------------
def _from_json(kind: type, row: Any, where: Path) -> Any:
    """`kind` from a JSON object: keys it lacks take their defaults (written by an older fmnist) and
    are not written back; keys `kind` does not know go to its `extra` field if it has one (written
    by a newer one), else are dropped."""
    if not isinstance(row, dict):
        raise RunPathError(f"{where}: expected a JSON object, found {type(row).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    known = {k: v for k, v in row.items() if k in names and k != "extra"}
    if "extra" in names:
        known["extra"] = {k: v for k, v in row.items() if k not in names}
    try:
        record = kind(**known)
    except TypeError:
        missing = sorted(f.name for f in dataclasses.fields(kind)
                         if f.name not in row and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)  # fmt: skip
        raise RunPathError(f"{where}: not an fmnist {kind.__name__} (missing {', '.join(missing)})") from None
    record._not_read = names - row.keys() - {"extra"}
    return record


def _to_json(record: Any, leave_out: tuple[str, ...] = ()) -> dict[str, object]:
    """A record's fields in order, less those its file lacked when it was read."""
    skip = set(leave_out) | getattr(record, "_not_read", set())
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name not in skip}


@dataclass
class EpochRecord:
    """One line of metrics.jsonl: a finished epoch."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    lr: float = 0.0
    steps: int = 0
    seconds: float = 0.0  # training time so far, validation included
    images_per_second: float = 0.0

    def to_json(self) -> dict[str, object]:
        return _to_json(self)

    @classmethod
    def from_json(cls, row: Any, where: Path = Path(METRICS_FILE)) -> EpochRecord:
        return _from_json(cls, row, where)


@dataclass(kw_only=True)
class ClassicalFit:
    """results.json's `classical`: how a scikit-learn baseline was fitted (fmnist.training.baselines)."""

    kind: str = ""  # the registered model
    library: str = "scikit-learn"
    estimator: str = ""  # its class, e.g. "LogisticRegression"
    train_images: int = 0
    fit_seconds: float = 0.0
    converged: bool | None = None  # None: the estimator does not iterate
    scores: str = ""  # what its outputs are: log-probabilities or decision-function values
    probabilistic: bool = False
    checkpoint: bool = False  # whether it has a network form saved as a checkpoint

    def to_json(self) -> dict[str, object]:
        return _to_json(self)


@dataclass(kw_only=True)
class TeacherRecord:
    """What a distilled run learned from (fmnist.training.distill) and what that teacher cost."""

    path: str  # the run or ensemble directory, absolute
    kind: str = "run"  # "run" or "ensemble"
    members: int = 1
    member_sha256: list[str] = field(default_factory=list)  # each member's weights
    tta: str = "flip"  # the views each member scored an image in
    val_accuracy: float | None = None  # the teacher's, on the student's validation split, at `tta`
    members_train_seconds: float = 0.0  # the members' own train_seconds, summed
    targets_seconds: float = 0.0  # scoring the training split: before the first step, not in train_seconds

    def to_json(self) -> dict[str, object]:
        return _to_json(self)


@dataclass(kw_only=True)
class RunResultsFile:
    """results.json of a run directory, in the order its keys are written.

    A run trained by fmnist 0.3 lacks planned_steps, compiled and compile_seconds: they read as
    0, False and 0.0. A scikit-learn baseline adds `classical` (its estimator and settings).
    """

    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    params: int = 0
    size_mb: float = 0.0
    test_accuracy: float
    test_loss: float = 0.0
    best_epoch: int = 0
    best_val_accuracy: float | None = None
    epochs_run: int = 0
    steps: int = 0
    planned_steps: int = 0  # steps `epochs` would take; more than `steps` when --max-steps cut the run
    stopped_early: bool = False
    train_seconds: float = 0.0
    compiled: bool = False
    compile_seconds: float = 0.0  # compiling the step, before training: not in train_seconds
    seed: int = 0
    device: str = ""
    precision: str = ""
    cpu_isa: str = ""
    checkpoint: bool = True  # whether the run saved weights (a random forest keeps results only)
    data: ProvenanceRecord = field(default_factory=dict)  # where the images came from
    confusion: list[list[int]] = field(default_factory=list)
    per_class: list[ClassRow] = field(default_factory=list)
    most_confused: list[ConfusedRow] = field(default_factory=list)
    classical: ClassicalFit | None = None
    teacher: TeacherRecord | None = None  # a distilled run's (fmnist distill)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    def to_json(self) -> dict[str, object]:
        row = _to_json(self, ("classical", "teacher", "extra"))
        for name in ("classical", "teacher"):
            part = getattr(self, name)
            if part is not None:
                row[name] = part.to_json()
        return {**row, **self.extra}

    @classmethod
    def from_json(cls, row: Any, where: Path = Path(RESULTS_FILE)) -> RunResultsFile:
        results = _from_json(cls, row, where)
        if results.classical is not None:
            results.classical = _from_json(ClassicalFit, results.classical, where)
        if results.teacher is not None:
            results.teacher = _from_json(TeacherRecord, results.teacher, where)
        return results

    @property
    def seconds_with_teacher(self) -> float:
        """Training time counting the teacher's: every member's training and scoring the training split."""
        t = self.teacher
        return self.train_seconds + (t.members_train_seconds + t.targets_seconds if t else 0.0)

    @property
    def smoke_steps(self) -> int | None:
        """The steps trained when --max-steps cut the run short of its epochs (a smoke run), else
        None (also for runs written before fmnist recorded `planned_steps`)."""
        cut = self.planned_steps and self.steps < self.planned_steps and not self.stopped_early
        return self.steps if cut else None

    def trained_words(self) -> str:
        """How much the run trained, truthfully: "best epoch 3 of 4", or "20 steps of ... (smoke run: ...)"."""
        if self.smoke_steps is not None:
            return f"{plural(self.smoke_steps, 'step')} of {self.planned_steps:,} planned (smoke run: --max-steps)"
        if not self.epochs_run:  # a scikit-learn baseline: fitted, no epochs
            return "fitted"
        early = " (stopped early)" if self.stopped_early else ""
        return f"best epoch {self.best_epoch} of {self.epochs_run}{early}"


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs', '1,000 steps'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def read_results(run_dir: Path) -> RunResultsFile:
    """A run directory's results.json (not an ensemble's: that file has its own fields)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise RunPathError(f"{run_dir}: no {RESULTS_FILE} (not a finished run directory)")
    return RunResultsFile.from_json(read_json(path), path)


def read_history(run_dir: Path) -> list[EpochRecord]:
    """metrics.jsonl's epochs; a line cut short by a crash ends the readable history."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(EpochRecord.from_json(json.loads(line), path))
            except (json.JSONDecodeError, RunPathError):
                break
    return rows


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.toml as written ({} when missing or unreadable: the results stand without it)."""
    try:
        return read_toml(Path(run_dir) / CONFIG_FILE)
    except FmnistError:
        return {}


@dataclass
class RunRecord:
    """A finished run directory as its files record it: what `fmnist.Run` and reports build on."""

    path: Path
    results: RunResultsFile
    history: list[EpochRecord]
    config: dict[str, Any]  # config.toml as written ({} when unreadable)

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        path = Path(path)
        return cls(path, read_results(path), read_history(path), read_config(path))

    @property
    def model(self) -> str:
        return self.results.model

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / META_FILE).is_file()


# --- writing: creating and locking a results folder ---------------------------------------------
def new_run_dir(out: str | Path | None, name: str, *, overwrite: bool = False, resume_hint: str = "") -> Path:
    """Name and create the folder for a new run, comparison, ablation, ensemble or sweep.

    `out`, or RUNS_ROOT/NAME-YYYYmmdd-HHMMSS. The one place results folders are named; the
    checks are `prepare_run_dir`'s. With `resume_hint` (sweeps, whose folders hold no run),
    any non-empty folder is refused, and the message says how to continue it instead.
    """
    path = Path(out) if out else RUNS_ROOT / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if resume_hint and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path}: exists and is not empty; choose another --out (or {resume_hint})")
    return prepare_run_dir(path, overwrite=overwrite)


def prepare_run_dir(path: Path, *, overwrite: bool = False) -> Path:
    """Create `path` for a new run; refuse to mix a new run into a finished or foreign one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is a file, not a run directory")
    if path.is_dir() and any(path.iterdir()):
        finished = (path / RESULTS_FILE).exists() or (path / META_FILE).exists()
        if finished and not overwrite:
            raise UsageError(f"{path}: already holds a run; choose another --out (or pass --overwrite)")
        if not finished and not (path / CONFIG_FILE).exists() and not overwrite:
            raise UsageError(f"{path}: folder is not empty and is not a run directory; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FmnistError(f"{path}: cannot create run directory ({exc.strerror})") from None
    return path


class RunLock:
    """An exclusive advisory lock on RUN_DIR/.lock for as long as a run writes there.

    The OS drops the lock when the process dies, so a killed run never leaves a stale lock; a
    released lock removes its file, so a finished run leaves none behind either.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise FmnistError(f"{self.path}: cannot create lock file ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent}: another fmnist process is writing to this run directory"
                ) from None
            # The holder we waited on may have removed the file between our open and our lock:
            # a lock on that orphaned file guards nothing, so start again on the file there now.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            # Removed while still held: whoever opened it meanwhile sees it gone and retries.
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
