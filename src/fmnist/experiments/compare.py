"""`fmnist compare`: train several models (optionally over several seeds) into one directory.

    runs/compare-<timestamp>/
      compare.json      what was run and each run's summary
      <name>/ or <name>-seed<k>/   one run directory each (see fmnist.training.rundirs)
      ensembles/<name>/            with --ensemble or [[ensembles]]: one ensemble directory each
                                   (see fmnist.inference.ensemble_build), built here from the run directories
      report.md, figures/          written by fmnist.report
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fmnist.config import TrainConfig, read_toml
from fmnist.data.dataset import FashionMNIST
from fmnist.errors import FmnistError, UsageError
from fmnist.fsutil import atomic_write_json, read_json
from fmnist.inference.rundir import RunLock, new_run_dir, prepare_run_dir
from fmnist.models.registry import get_entry
from fmnist.training.recipes import build_config
from fmnist.training.results import RunResult, TrainCallback
from fmnist.training.rundirs import train_into

COMPARE_FILE = "compare.json"
ENSEMBLES_DIR = "ensembles"
# The seeds' experiment: the MLP baseline against fmnist's default CNN, each with its recipe.
DEFAULT_RUNS: tuple[tuple[str, str], ...] = (("mlp", "mlp_wide"), ("cnn", "fastcnn"))


@dataclass
class RunSpec:
    name: str
    values: dict[str, Any]  # TrainConfig fields (model, epochs, ...) for this run

    def config(self, overrides: dict[str, Any], seed_offset: int = 0) -> TrainConfig:
        config = build_config(self.values.get("model"), file_values=self.values, cli_values=overrides)
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


@dataclass(frozen=True)
class PlannedEnsemble:
    name: str  # its row in the comparison and its folder under ENSEMBLES_DIR
    kind: str  # "seeds": one run name's seeds; "runs": runs named in [[ensembles]]
    members: tuple[PlannedRun, ...]

    @property
    def folder(self) -> str:
        return f"{ENSEMBLES_DIR}/{self.name}"


@dataclass
class ComparePlan:
    runs: list[RunSpec]
    seeds: int = 1
    title: str = "MLP baseline vs CNN"
    notes: str = ""
    published: dict[str, Any] = field(default_factory=dict)  # figures from the study a config reproduces
    ensemble: bool = False  # average each run name's seeds (needs seeds >= 2)
    ensembles: list[EnsembleSpec] = field(default_factory=list)

    def check_ensembles(self, where: str = "compare") -> None:
        """Ensemble settings that cannot work fail here, before anything trains."""
        if self.ensemble and self.seeds < 2:
            raise UsageError(f"{where}: --ensemble (ensemble = true) averages each run's seeds, so it needs "
                             f"--seeds 2 or more (got {self.seeds})")  # fmt: skip
        run_names = [s.name for s in self.runs]
        models = {s.name: s.values.get("model") for s in self.runs}
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
            out += [PlannedEnsemble(name, "seeds", tuple(runs)) for name, runs in by_name.items() if len(runs) > 1]
        for e in self.ensembles:
            for k in range(self.seeds):  # with several seeds, one ensemble of the k-th seed of each member
                members = tuple(by_name[m][k] for m in e.members)
                name = e.name if self.seeds == 1 else f"{e.name}-seed{members[0].config.seed}"
                out.append(PlannedEnsemble(name, "runs", members))
        return out

    def resolve(self, overrides: dict[str, Any] | None = None) -> list[PlannedRun]:
        """Every run x seed with its validated config: bad values fail here, before any data loads."""
        self.check_ensembles()
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        planned = []
        for spec in self.runs:
            for k in range(self.seeds):
                config = spec.config(overrides, k)
                run_name = spec.name if self.seeds == 1 else f"{spec.name}-seed{config.seed}"
                planned.append(PlannedRun(spec.name, run_name, config))
        return planned


def default_plan() -> ComparePlan:
    return ComparePlan([RunSpec(name, {"model": model}) for name, model in DEFAULT_RUNS])


def plan_from_models(models: Sequence[str]) -> ComparePlan:
    names = [m.strip() for m in models if m.strip()]
    if not names:
        raise UsageError("--models needs at least one model name")
    if len(set(names)) != len(names):
        raise UsageError("--models lists a model twice")
    return ComparePlan([RunSpec(name, {"model": name}) for name in names], title=" vs ".join(names))


def plan_from_file(path: Path) -> ComparePlan:
    """A TOML file: optional title/notes/seeds, a [defaults] table, and [[runs]] with name + model."""
    data = read_toml(path)
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
        values = {**defaults, **{k: v for k, v in run.items() if k != "name"}}
        if isinstance(defaults.get("model_args"), dict) and isinstance(run.get("model_args"), dict):
            values["model_args"] = {**defaults["model_args"], **run["model_args"]}
        specs.append(RunSpec(str(run.get("name") or run["model"]), values))
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


def _ensemble_specs(path: Path, tables: Any) -> list[EnsembleSpec]:
    if not isinstance(tables, list):
        raise UsageError(f"{path}: ensembles must be [[ensembles]] tables, each with a name and members")
    specs = []
    for i, table in enumerate(tables, start=1):
        members = table.get("members") if isinstance(table, dict) else None
        if not isinstance(table, dict) or not isinstance(table.get("name"), str) or not table["name"] \
                or not isinstance(members, list) or not all(isinstance(m, str) for m in members):  # fmt: skip
            raise UsageError(f"{path}: ensemble {i} needs a name and members, a list of run names")
        extra = sorted(set(table) - {"name", "members"})
        if extra:
            raise UsageError(f"{path}: ensemble {table['name']!r}: unknown key {extra[0]!r} (known: members, name)")
        specs.append(EnsembleSpec(table["name"], tuple(members)))
    return specs


def default_out_dir(root: Path = Path("runs")) -> Path:
    return root / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def summarize(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [r["test_accuracy"] for r in results]
    secs = [r["train_seconds"] for r in results]
    return {
        "name": name,
        "model": results[0]["model"],
        "params": results[0]["params"],
        "size_mb": results[0]["size_mb"],
        "seeds": [r["seed"] for r in results],
        "test_accuracy": accs,
        "test_accuracy_mean": statistics.fmean(accs),
        "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "test_loss_mean": statistics.fmean(r["test_loss"] for r in results),
        "best_epoch": [r["best_epoch"] for r in results],
        "epochs_run": [r["epochs_run"] for r in results],
        "train_seconds_mean": statistics.fmean(secs),
    }


MakeCallbacks = Callable[[str, TrainConfig], list[TrainCallback]]
OnResult = Callable[[str, RunResult], None]
# Trains planned runs into their folders under the compare directory; returns each run's
# results.json, in plan order. The default trains here, one after another; fmnist.experiments.ray_runtime
# has one that runs them as Ray tasks.
Executor = Callable[[list[PlannedRun], Path, FashionMNIST, MakeCallbacks, OnResult], list[dict[str, Any]]]


def run_sequentially(planned: list[PlannedRun], out_dir: Path, dataset: FashionMNIST, make_callbacks: MakeCallbacks,
                     on_result: OnResult) -> list[dict[str, Any]]:  # fmt: skip
    results = []
    for run in planned:
        result = train_into(run.config, prepare_run_dir(out_dir / run.run_name), dataset,
                            make_callbacks(run.run_name, run.config))  # fmt: skip
        on_result(run.run_name, result)
        results.append(result.summary())
    return results


def run_compare(
    plan: ComparePlan,
    out_dir: Path,
    dataset: FashionMNIST,
    *,
    planned: list[PlannedRun] | None = None,
    overrides: dict[str, Any] | None = None,
    make_callbacks: MakeCallbacks = lambda name, cfg: [],
    on_result: OnResult = lambda name, result: None,
    executor: Executor | None = None,
    step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Train every run of `plan` (x seeds) into `out_dir`, then build its ensembles; returns and writes compare.json.

    `planned` is `plan.resolve(overrides)` when the caller has already built it; `executor`
    trains the runs (default: here, one after another); `step` hears each ensemble member being scored.
    """
    planned = planned if planned is not None else plan.resolve(overrides)
    out_dir = new_run_dir(out_dir, "compare")
    with RunLock(out_dir):
        results = (executor or run_sequentially)(planned, out_dir, dataset, make_callbacks, on_result)
        # Built here from the run directories, wherever the runs trained (locally or as Ray tasks).
        ensembles = [build_planned_ensemble(e, out_dir, dataset, step) for e in plan.planned_ensembles(planned)]
        summary = compare_summary(plan, planned, results, dataset.provenance.to_dict(), ensembles)
        atomic_write_json(out_dir / COMPARE_FILE, summary)
    return summary


def build_planned_ensemble(planned: PlannedEnsemble, out_dir: Path, dataset: FashionMNIST,
                           step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    """Build one ensemble of a compare into out_dir/ensembles/NAME; returns its row for compare.json.

    An ensemble that cannot be built (members that came out identical, say) gets its reason in
    the row instead: the runs it would average are already trained and must still be summarised.
    """
    from fmnist.device import resolve_device
    from fmnist.inference.ensemble_build import build_ensemble

    members = [{"name": run.spec_name, "run_dir": run.run_name, "seed": run.config.seed, "model": run.config.model}
               for run in planned.members]  # fmt: skip
    row: dict[str, Any] = {"name": planned.name, "kind": planned.kind, "dir": planned.folder, "members": members}
    device = resolve_device(planned.members[0].config.device).type
    try:
        results = build_ensemble([out_dir / m.run_name for m in planned.members], out_dir / planned.folder,
                                 dataset=dataset, device=device, overwrite=True,
                                 step=lambda label: step(f"ensemble {planned.name}: {label}"))  # fmt: skip
    except FmnistError as exc:
        return {**row, "error": str(exc)}
    for member, scored in zip(members, results["members"]):
        member.update(test_accuracy=scored["test_accuracy"], weight=scored["weight"])
    best = members[results["best_member"]]
    pairs = [p["fraction"] for p in results["pairwise_disagreement"]]
    return {
        **row,
        "params": results["params"],
        "test_accuracy": results["test_accuracy"],
        "test_loss": results["test_loss"],
        "best_member": best["run_dir"],
        "best_member_accuracy": best["test_accuracy"],
        "gain_over_best_member": results["gain_over_best_member"],
        "fixed": results["fixed"],
        "introduced": results["introduced"],
        "mean_disagreement": statistics.fmean(pairs),
    }


def ensemble_row_text(row: dict[str, Any]) -> tuple[str, str, str]:
    """(label, params, accuracy) of a compare.json ensemble row, as the CLI and the notebook show it."""
    label = f"{row['name']} (ensemble of {len(row['members'])})"
    if "error" in row:
        return label, "–", f"not built: {row['error']}"
    accuracy = f"{100 * row['test_accuracy']:.2f}% ({100 * row['gain_over_best_member']:+.2f} vs best member)"
    return label, f"{row['params']:,}", accuracy


def compare_summary(plan: ComparePlan, planned: list[PlannedRun], results: list[dict[str, Any]],
                    data: dict[str, Any], ensembles: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """compare.json from each run's results.json (plan order) and the ensembles' rows (pure: local and Ray runs share it)."""
    summary: dict[str, Any] = {"title": plan.title, "notes": plan.notes, "seeds": plan.seeds,
                               "published": plan.published, "runs": [], "data": data}  # fmt: skip
    per_spec: dict[str, list[dict[str, Any]]] = {}
    for run, result in zip(planned, results):
        entry = {**result, "run_dir": run.run_name, "name": run.spec_name}
        per_spec.setdefault(run.spec_name, []).append(entry)
        summary["runs"].append({k: v for k, v in entry.items() if k not in ("per_class", "confusion", "data")})
    summary["models"] = [summarize(name, rows) for name, rows in per_spec.items()]
    if ensembles:
        size_mb = {r["run_dir"]: r["size_mb"] for r in summary["runs"]}
        summary["ensembles"] = [{**e, "size_mb": sum(size_mb[m["run_dir"]] for m in e["members"])} for e in ensembles]
    return summary


def read_compare(out_dir: Path) -> dict[str, Any]:
    return read_json(Path(out_dir) / COMPARE_FILE)
