"""`fmnist compare`: train several models (optionally over several seeds) into one directory.

    runs/compare-<timestamp>/
      compare.json      what was run and each run's summary
      <name>/ or <name>-seed<k>/   one run directory each (see fmnist.runs)
      report.md, figures/          written by fmnist.report
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fmnist.config import TrainConfig, build_config, read_toml
from fmnist.data.dataset import FashionMNIST
from fmnist.errors import UsageError
from fmnist.fsutil import atomic_write_json, read_json
from fmnist.results import RunResult, TrainCallback
from fmnist.runs import RunLock, prepare_run_dir, train_into

COMPARE_FILE = "compare.json"
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


@dataclass
class ComparePlan:
    runs: list[RunSpec]
    seeds: int = 1
    title: str = "MLP baseline vs CNN"
    notes: str = ""
    published: dict[str, Any] = field(default_factory=dict)  # figures from the study a config reproduces

    def resolve(self, overrides: dict[str, Any] | None = None) -> list[PlannedRun]:
        """Every run x seed with its validated config: bad values fail here, before any data loads."""
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
    known = {"title", "notes", "seeds", "defaults", "runs", "published"}
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
    return ComparePlan(specs, seeds, str(data.get("title", path.stem)), str(data.get("notes", "")),
                       dict(data.get("published", {})))  # fmt: skip


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
# results.json, in plan order. The default trains here, one after another; fmnist.distributed
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
) -> dict[str, Any]:
    """Train every run of `plan` (x seeds) into `out_dir`; returns and writes compare.json.

    `planned` is `plan.resolve(overrides)` when the caller has already built it; `executor`
    trains the runs (default: here, one after another).
    """
    planned = planned if planned is not None else plan.resolve(overrides)
    out_dir = prepare_run_dir(out_dir)
    with RunLock(out_dir):
        results = (executor or run_sequentially)(planned, out_dir, dataset, make_callbacks, on_result)
        summary = compare_summary(plan, planned, results, dataset.provenance.to_dict())
        atomic_write_json(out_dir / COMPARE_FILE, summary)
    return summary


def compare_summary(plan: ComparePlan, planned: list[PlannedRun], results: list[dict[str, Any]],
                    data: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """compare.json from each run's results.json, in plan order (pure: local and Ray runs share it)."""
    summary: dict[str, Any] = {"title": plan.title, "notes": plan.notes, "seeds": plan.seeds,
                               "published": plan.published, "runs": [], "data": data}  # fmt: skip
    per_spec: dict[str, list[dict[str, Any]]] = {}
    for run, result in zip(planned, results):
        entry = {**result, "run_dir": run.run_name, "name": run.spec_name}
        per_spec.setdefault(run.spec_name, []).append(entry)
        summary["runs"].append({k: v for k, v in entry.items() if k not in ("per_class", "confusion", "data")})
    summary["models"] = [summarize(name, rows) for name, rows in per_spec.items()]
    return summary


def read_compare(out_dir: Path) -> dict[str, Any]:
    return read_json(Path(out_dir) / COMPARE_FILE)
