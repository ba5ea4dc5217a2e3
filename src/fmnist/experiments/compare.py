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
from pathlib import Path

from fmnist.data.dataset import ProvenanceRecord
from fmnist.errors import FmnistError
from fmnist.experiments.plan import ComparePlan, PlannedEnsemble, PlannedRun
from fmnist.experiments.session import Session
from fmnist.inference.ensemble_select import selection_summary
from fmnist.inference.records import CompareFile, CompareRun, EnsembleMemberRow, EnsembleRow, ModelSummary
from fmnist.inference.rundir import COMPARE_FILE, RunLock, RunResultsFile


def summarize(name: str, results: list[RunResultsFile]) -> ModelSummary:
    """One run name over its seeds (`results` in seed order)."""
    accs = [r.test_accuracy for r in results]
    return ModelSummary(
        name=name,
        model=results[0].model,
        params=results[0].params,
        size_mb=results[0].size_mb,
        seeds=[r.seed for r in results],
        test_accuracy=accs,
        test_accuracy_mean=statistics.fmean(accs),
        test_accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
        test_loss_mean=statistics.fmean(r.test_loss for r in results),
        best_epoch=[r.best_epoch for r in results],
        epochs_run=[r.epochs_run for r in results],
        train_seconds_mean=statistics.fmean(r.train_seconds for r in results),
    )


def run_compare(plan: ComparePlan, planned: list[PlannedRun], session: Session) -> CompareFile:
    """Train `planned` (`plan.resolve(...)`: every run x seed) in `session`, then build the plan's ensembles;
    returns and writes compare.json in the session's folder."""
    with RunLock(session.folder):
        dataset = session.dataset  # loaded once, before anything trains
        results = session.executor(planned, session)
        # Built here from the run directories, wherever the runs trained (locally or as Ray tasks).
        ensembles = [build_planned_ensemble(e, session) for e in plan.planned_ensembles(planned)]
        summary = compare_summary(plan, planned, results, dataset.provenance.to_dict(), ensembles)
        summary.write(session.folder / COMPARE_FILE)
    return summary


def build_planned_ensemble(planned: PlannedEnsemble, session: Session) -> EnsembleRow:
    """Build one ensemble of a compare into FOLDER/ensembles/NAME; returns its row for compare.json.

    An ensemble that cannot be built (members that came out identical, say) gets its reason in
    the row instead: the runs it would average are already trained and must still be summarised.
    Each member being scored is a line of the session's notifications.
    """
    from fmnist.device import resolve_device
    from fmnist.inference.ensemble_build import build_ensemble

    out_dir = session.folder
    members = [EnsembleMemberRow(name=run.spec_name, run_dir=run.run_name, seed=run.config.seed, model=run.config.model)
               for run in planned.members]  # fmt: skip
    row = EnsembleRow(name=planned.name, kind=planned.kind, dir=planned.folder, select=planned.select, members=members)
    device = resolve_device(planned.members[0].config.device).type
    if planned.note:
        session.notify(f"ensemble {planned.name}: {planned.note}")
    try:
        results = build_ensemble([out_dir / m.run_name for m in planned.members], out_dir / planned.folder,
                                 dataset=session.dataset, select=planned.select, device=device, overwrite=True,
                                 step=lambda label: session.notify(f"ensemble {planned.name}: {label}"))  # fmt: skip
    except FmnistError as exc:
        row.error = str(exc)
        return row
    for member, scored in zip(members, results.members):
        member.test_accuracy, member.validation_accuracy = scored.test_accuracy, scored.validation_accuracy
        member.weight, member.chosen = scored.weight, scored.chosen
    best = members[results.best_member]
    row.params, row.test_accuracy, row.test_loss = results.params, results.test_accuracy, results.test_loss
    row.validation_accuracy = results.validation_accuracy
    row.best_member, row.best_member_accuracy = best.run_dir, best.test_accuracy
    row.gain_over_best_member, row.fixed, row.introduced = (
        results.gain_over_best_member,
        results.fixed,
        results.introduced,
    )
    row.mean_disagreement = statistics.fmean(p.fraction for p in results.pairwise_disagreement)
    return row


def ensemble_row_text(row: EnsembleRow) -> tuple[str, str, str]:
    """(label, params, accuracy) of a compare.json ensemble row, as the CLI and the notebook show it."""
    label = f"{row.name} (ensemble of {len(row.members)})"
    if row.error:
        return label, "–", f"not built: {row.error}"
    rule = selection_summary(row.select, [m.run_dir for m in row.members], [m.weight or 0.0 for m in row.members])
    accuracy = f"{100 * row.test_accuracy:.2f}% ({100 * row.gain_over_best_member:+.2f} vs best member; {rule})"
    return label, f"{row.params:,}", accuracy


def compare_summary(plan: ComparePlan, planned: list[PlannedRun], results: list[RunResultsFile],
                    data: ProvenanceRecord, ensembles: list[EnsembleRow] | None = None) -> CompareFile:  # fmt: skip
    """compare.json from each run's results.json (plan order) and the ensembles' rows (pure: local and Ray runs share it)."""
    runs = [CompareRun(result, run.run_name, run.spec_name) for run, result in zip(planned, results)]
    per_spec: dict[str, list[RunResultsFile]] = {}
    for run in runs:
        per_spec.setdefault(run.name, []).append(run.results)
    summary = CompareFile(title=plan.title, notes=plan.notes, seeds=plan.seeds, published=plan.published, runs=runs,
                          data=data, models=[summarize(name, rows) for name, rows in per_spec.items()])  # fmt: skip
    if ensembles:
        size_mb = {r.run_dir: r.results.size_mb for r in runs}
        for e in ensembles:  # members not built count as chosen: their checkpoints are there all the same
            e.size_mb = sum(size_mb[m.run_dir] for m in e.members if m.chosen is not False)
        summary.ensembles = ensembles
    return summary


def read_compare(out_dir: Path) -> CompareFile:
    """A compare directory's compare.json (files from fmnist 0.3 on)."""
    return CompareFile.read(Path(out_dir) / COMPARE_FILE)
