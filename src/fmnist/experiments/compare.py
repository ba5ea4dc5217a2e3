"""`fmnist compare`: train several models (optionally over several seeds) into one directory.

runs/compare-<timestamp>/
  compare.json      what was run and each run's summary
  <name>/ or <name>-seed<k>/   one run directory each (see fmnist.inference.rundir)
  ensembles/<name>/            with --ensemble or [[ensembles]]: one ensemble directory each
                               (see fmnist.inference.ensemble_build), built here from the run directories
  report.md, figures/          written by fmnist.report
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmnist.data.dataset import FashionMNIST
from fmnist.errors import FmnistError
from fmnist.experiments.executor import Executor, InProcessExecutor, MakeCallbacks, OnResult
from fmnist.experiments.plan import ComparePlan, PlannedEnsemble, PlannedRun
from fmnist.fsutil import atomic_write_json, read_json
from fmnist.inference.ensemble_select import selection_summary
from fmnist.inference.rundir import RunLock, new_run_dir

COMPARE_FILE = "compare.json"


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
        results = (executor or InProcessExecutor())(planned, out_dir, dataset, make_callbacks, on_result)
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
    row: dict[str, Any] = {"name": planned.name, "kind": planned.kind, "dir": planned.folder, "select": planned.select,
                           "members": members}  # fmt: skip
    device = resolve_device(planned.members[0].config.device).type
    if planned.note:
        step(f"ensemble {planned.name}: {planned.note}")
    try:
        results = build_ensemble([out_dir / m.run_name for m in planned.members], out_dir / planned.folder,
                                 dataset=dataset, select=planned.select, device=device, overwrite=True,
                                 step=lambda label: step(f"ensemble {planned.name}: {label}"))  # fmt: skip
    except FmnistError as exc:
        return {**row, "error": str(exc)}
    for member, scored in zip(members, results["members"]):
        member.update(test_accuracy=scored["test_accuracy"], validation_accuracy=scored["validation_accuracy"],
                      weight=scored["weight"], chosen=scored["chosen"])  # fmt: skip
    best = members[results["best_member"]]
    pairs = [p["fraction"] for p in results["pairwise_disagreement"]]
    return {
        **row,
        "params": results["params"],
        "test_accuracy": results["test_accuracy"],
        "test_loss": results["test_loss"],
        "validation_accuracy": results["validation_accuracy"],
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
    rule = selection_summary(row.get("select"), [m["run_dir"] for m in row["members"]],
                             [m["weight"] for m in row["members"]])  # fmt: skip
    accuracy = f"{100 * row['test_accuracy']:.2f}% ({100 * row['gain_over_best_member']:+.2f} vs best member; {rule})"
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
        summary["ensembles"] = [{**e, "size_mb": sum(size_mb[m["run_dir"]] for m in e["members"] if m.get("chosen", True))}
                                for e in ensembles]  # fmt: skip
    return summary


def read_compare(out_dir: Path) -> dict[str, Any]:
    return read_json(Path(out_dir) / COMPARE_FILE)
