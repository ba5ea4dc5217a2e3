"""Plans of several runs: what `fmnist compare`, `ablate` and `train --seeds` will train.

A ComparePlan names runs (model + settings) and ensembles of them; `resolve` builds and checks
every run's TrainConfig before any data loads, and names each run's folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fmnist.config import FIELD_TYPES, LEGACY_KEYS, SOURCES_KEY, RawSettings, TrainConfig, merged
from fmnist.errors import UsageError
from fmnist.fsutil import read_toml
from fmnist.inference.ensemble_select import DEFAULT_SELECT, SELECT_RULES, fallback_note
from fmnist.inference.rundir import CONFIG_FILE, ENSEMBLES_DIR
from fmnist.models.registry import get_entry
from fmnist.training.settings import resolve_config

# The seeds' experiment: the MLP baseline against fmnist's default CNN, each with its recipe.
DEFAULT_RUNS: tuple[tuple[str, str], ...] = (("mlp", "mlp_wide"), ("cnn", "fastcnn"))


@dataclass
class RunSpec:
    name: str
    values: RawSettings  # TrainConfig fields (model, epochs, ...) for this run, as its file gives them
    origin: str = ""  # where the values were written ("FILE, run 'NAME'"): its errors and sources name it
    # A config resolved already (`train --seeds`, a benchmark's recipe): each seed's run is a copy of
    # it, the plan's overrides on top; `values` are then empty.
    resolved: TrainConfig | None = None

    @property
    def model(self) -> object:  # a name, unless its file gives something else (resolving says so)
        return self.resolved.model if self.resolved is not None else self.values.get("model")

    def config(self, overrides: Mapping[str, object], seed_offset: int = 0) -> TrainConfig:
        if self.resolved is not None:
            config = resolve_config(options=overrides, base=self.resolved)
        else:
            config = resolve_config(file_values=self.values, options=overrides, origin=self.origin)
        config.seed += seed_offset
        return config


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan, its configuration built and validated once."""

    spec_name: str
    run_name: str  # its folder in the compare directory
    config: TrainConfig


@dataclass(frozen=True)
class EnsembleSpec:
    """An `[[ensembles]]` table: several runs of the plan averaged into one model."""

    name: str
    members: tuple[str, ...]  # run names of the plan
    select: str | None = None  # its `select` key: "greedy" or "all" (None: the plan's rule)


@dataclass(frozen=True)
class PlannedEnsemble:
    name: str  # its row in the comparison and its folder under ENSEMBLES_DIR
    kind: str  # "seeds": one run name's seeds; "runs": runs named in [[ensembles]]
    members: tuple[PlannedRun, ...]
    select: str = DEFAULT_SELECT  # how its members are chosen (fmnist.inference.ensemble_select)
    note: str = ""  # why the default rule became "all": its members share no validation split

    @property
    def folder(self) -> str:
        return f"{ENSEMBLES_DIR}/{self.name}"


@dataclass
class ComparePlan:
    runs: list[RunSpec]
    seeds: int = 1
    title: str = "MLP baseline vs CNN"
    notes: str = ""
    # figures from the study a config reproduces: accuracies, or phrases (compare.json's `published`)
    published: dict[str, object] = field(default_factory=dict)
    ensemble: bool = False  # average each run name's seeds (needs seeds >= 2)
    ensembles: list[EnsembleSpec] = field(default_factory=list)
    select: str | None = None  # `compare --ensemble-select`: every ensemble's rule, over each table's own

    def select_for(self, spec: EnsembleSpec | None = None) -> str | None:
        """The rule asked for, or None for the default (`_planned_ensemble`)."""
        return self.select or (spec.select if spec else None)

    def check_ensembles(self, where: str = "compare") -> None:
        """Ensemble settings that cannot work fail here, before anything trains."""
        if self.select is not None and self.select not in SELECT_RULES:
            raise UsageError(f"{where}: unknown ensemble selection {self.select!r} (known: {', '.join(SELECT_RULES)})")
        if self.ensemble and self.seeds < 2:
            raise UsageError(f"{where}: --ensemble (ensemble = true) averages each run's seeds, so it needs "
                             f"--seeds 2 or more (got {self.seeds})")  # fmt: skip
        run_names = [s.name for s in self.runs]
        models = {s.name: s.model for s in self.runs}
        seen: set[str] = set()
        for e in self.ensembles:
            if e.name in seen or e.name in run_names:
                raise UsageError(f"{where}: ensemble name {e.name!r} is already a run's or another ensemble's")
            seen.add(e.name)
            unknown = [m for m in e.members if m not in run_names]
            if unknown:
                raise UsageError(f"{where}: ensemble {e.name!r} names unknown run {unknown[0]!r} "
                                 f"(runs: {', '.join(run_names)})")  # fmt: skip
            if len(set(e.members)) < 2 or len(set(e.members)) != len(e.members):
                raise UsageError(f"{where}: ensemble {e.name!r} needs two or more different runs as members")
        for name in [m for e in self.ensembles for m in e.members] + (run_names if self.ensemble else []):
            if models.get(name) and not get_entry(str(models[name])).has_network:
                raise UsageError(f"{where}: run {name!r} ({models[name]}) keeps no model, so it cannot be an "
                                 f"ensemble member")  # fmt: skip

    def planned_ensembles(self, planned: list[PlannedRun]) -> list[PlannedEnsemble]:
        """The ensembles to build once `planned` has trained: each name's seeds, then [[ensembles]] per seed."""
        by_name: dict[str, list[PlannedRun]] = {}
        for run in planned:
            by_name.setdefault(run.spec_name, []).append(run)
        out = []
        if self.ensemble:
            out += [_planned_ensemble(name, "seeds", tuple(runs), self.select_for())
                    for name, runs in by_name.items() if len(runs) > 1]  # fmt: skip
        for e in self.ensembles:
            for k in range(self.seeds):  # with several seeds, one ensemble of the k-th seed of each member
                members = tuple(by_name[m][k] for m in e.members)
                name = e.name if self.seeds == 1 else f"{e.name}-seed{members[0].config.seed}"
                out.append(_planned_ensemble(name, "runs", members, self.select_for(e)))
        return out

    def resolve(self, overrides: Mapping[str, object] | None = None) -> list[PlannedRun]:
        """Every run x seed with its validated config: bad values fail here, before any data loads."""
        self.check_ensembles()
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        planned = []
        for spec in self.runs:
            for k in range(self.seeds):
                config = spec.config(overrides, k)
                run_name = spec.name if self.seeds == 1 else f"{spec.name}-seed{config.seed}"
                planned.append(PlannedRun(spec.name, run_name, config))
        for ensemble in self.planned_ensembles(planned):
            check_greedy_holdout(ensemble)
        return planned


def _holdout_problem(members: tuple[PlannedRun, ...]) -> str:
    """Why `members` share no validation split to choose on, or "" when they do."""
    holdouts = {(run.config.val_size, run.config.validation_seed) for run in members}
    if any(size <= 0 for size, _ in holdouts):
        return "some of its runs hold out no validation images (val_size 0)"
    if len(holdouts) > 1:
        return "its runs hold out different validation images (different val_size or split_seed)"
    return ""


def _planned_ensemble(name: str, kind: str, members: tuple[PlannedRun, ...], select: str | None) -> PlannedEnsemble:
    """With no rule asked for, greedy where the members share a validation split, else all of them with a note."""
    if select is None and _holdout_problem(members):
        size_zero = any(run.config.val_size <= 0 for run in members)
        note = fallback_note("some of these runs held out no validation images") if size_zero else fallback_note()
        return PlannedEnsemble(name, kind, members, "all", note)
    return PlannedEnsemble(name, kind, members, select or DEFAULT_SELECT)


def check_greedy_holdout(ensemble: PlannedEnsemble) -> None:
    """Greedy selection needs one validation split its members all held out: fail before anything trains."""
    if ensemble.select != "greedy" or not (problem := _holdout_problem(ensemble.members)):
        return
    raise UsageError(f"ensemble {ensemble.name!r} is chosen greedily on its members' shared validation split, but "
                     f"{problem}: give them one --split-seed (split_seed in [defaults]) and a val_size, or average "
                     f"every member with --ensemble-select all (select = \"all\" in its [[ensembles]] table)")  # fmt: skip


def default_plan() -> ComparePlan:
    return ComparePlan([RunSpec(name, {"model": model}) for name, model in DEFAULT_RUNS])


def plan_from_models(models: Sequence[str]) -> ComparePlan:
    names = [m.strip() for m in models if m.strip()]
    if not names:
        raise UsageError("--models needs at least one model name")
    if len(set(names)) != len(names):
        raise UsageError("--models lists a model twice")
    return ComparePlan([RunSpec(name, {"model": name}) for name in names], title=" vs ".join(names))


def is_run_config(data: Mapping[str, object]) -> bool:
    """Whether a TOML table is one run's settings (a run directory's config.toml), not a plan."""
    return "runs" not in data and "model" in data and set(data) <= set(FIELD_TYPES) | set(LEGACY_KEYS) | {SOURCES_KEY}


def plan_from_file(path: Path) -> ComparePlan:
    """A TOML file: optional title/notes/seeds, a [defaults] table, and [[runs]] with name + model;
    or one run's config.toml (as a run directory holds it), which plans that one run."""
    data = read_toml(path)
    if is_run_config(data):
        name = str(data["model"])
        where = f"{path} (the settings of run {path.parent})" if path.name == CONFIG_FILE else str(path)
        return ComparePlan([RunSpec(name, data, where)], title=f"{name} as in {path}")
    known = {"title", "notes", "seeds", "defaults", "runs", "published", "ensemble", "ensembles"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown top-level key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    defaults = data.get("defaults", {})
    runs = data.get("runs")
    if not isinstance(defaults, dict) or not isinstance(runs, list) or not runs:
        raise UsageError(f"{path}: needs a [[runs]] list (each with a name and a model)")
    specs = []
    for i, run in enumerate(runs, start=1):
        if not isinstance(run, dict) or "model" not in run:
            raise UsageError(f"{path}: run {i} needs a model")
        values = merged(defaults, {k: v for k, v in run.items() if k != "name"})
        name = str(run.get("name") or run["model"])
        specs.append(RunSpec(name, values, f"{path}, run {name!r}"))
    if len({s.name for s in specs}) != len(specs):
        raise UsageError(f"{path}: run names must be unique")
    seeds = data.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"{path}: seeds must be a positive integer")
    ensemble = data.get("ensemble", False)
    if not isinstance(ensemble, bool):
        raise UsageError(f"{path}: ensemble must be true or false")
    plan = ComparePlan(specs, seeds, str(data.get("title", path.stem)), str(data.get("notes", "")),
                       dict(data.get("published", {})), ensemble, _ensemble_specs(path, data.get("ensembles", [])))  # fmt: skip
    plan.check_ensembles(str(path))
    return plan


def _ensemble_specs(path: Path, tables: object) -> list[EnsembleSpec]:
    if not isinstance(tables, list):
        raise UsageError(f"{path}: ensembles must be [[ensembles]] tables, each with a name and members")
    specs = []
    for i, table in enumerate(tables, start=1):
        members = table.get("members") if isinstance(table, dict) else None
        if not isinstance(table, dict) or not isinstance(table.get("name"), str) or not table["name"] \
                or not isinstance(members, list) or not all(isinstance(m, str) for m in members):  # fmt: skip
            raise UsageError(f"{path}: ensemble {i} needs a name and members, a list of run names")
        extra = sorted(set(table) - {"name", "members", "select"})
        if extra:
            raise UsageError(
                f"{path}: ensemble {table['name']!r}: unknown key {extra[0]!r} (known: members, name, select)"
            )
        select = table.get("select")
        if select is not None and select not in SELECT_RULES:
            raise UsageError(f"{path}: ensemble {table['name']!r}: select must be one of {', '.join(SELECT_RULES)}, "
                             f"not {select!r}")  # fmt: skip
        specs.append(EnsembleSpec(table["name"], tuple(members), select))
    return specs
