"""Section 3: training curves, the best epoch, and the overfitting flag."""

from __future__ import annotations

from fmnist.analysis.curves import OVERFIT_PATIENCE, best_row, detect_overfitting
from fmnist.report import figures
from fmnist.report.context import ReportContext
from fmnist.report.document import Heading, Image, Note, Section, Table
from fmnist.report.text import num, pct


def training_section(ctx: ReportContext) -> Section:
    section = Section(3, "training", "Training curves")
    blocks = section.blocks
    rows, skipped = [], []
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        history = run.history
        if run.classical or len(history) < 2:
            why = "fitted in one pass, no epochs" if run.classical else f"{len(history)} epoch(s) recorded"
            skipped.append(f"{run.name} ({why})")
            continue
        flag = detect_overfitting(history)
        best_epoch = run.results.best_epoch
        best = best_row(history, best_epoch)
        val_rows = [r for r in history if r.val_loss is not None]
        min_row = min(val_rows, key=lambda r: r.val_loss) if val_rows else None
        rows.append([
            run.name, str(len(history)), str(best_epoch),
            pct(best.val_accuracy) if best else "n/a",
            num(history[-1].train_loss),
            f"{num(min_row.val_loss)} (epoch {min_row.epoch})" if min_row else "n/a",
            f"yes, from epoch {flag.started_epoch}" if flag else "no",
        ])  # fmt: skip
        png = figures.training_curves({run.name: history}, ctx.figure("curves", run), {run.name: best_epoch},
                                      {run.name: flag.started_epoch} if flag else None)  # fmt: skip
        blocks += [Heading(run.name), Image(png, f"training curves of {run.name}")]
        if flag:
            sentences[run.name] = (
                f"{run.name} overfits from epoch {flag.started_epoch}: validation loss bottomed at "
                f"{flag.val_loss_min:.4f} in epoch {flag.min_epoch} and stayed above it for the next "
                f"{flag.rising_epochs} epochs (last {flag.val_loss_last:.4f}) while training loss kept falling "
                f"({flag.train_loss_at_min:.4f} → {flag.train_loss_last:.4f}); the checkpoint keeps epoch {best_epoch}."
            )
        elif best:
            where = "the last epoch" if best_epoch == len(history) else f"epoch {best_epoch} of {len(history)}"
            still = (
                "; validation accuracy was still rising, so more epochs may help" if best_epoch == len(history) else ""
            )
            sentences[run.name] = (f"{run.name} peaks at {where} ({pct(best.val_accuracy)} validation accuracy), "
                             f"no overfitting signal{still}.")  # fmt: skip
    if rows:
        table = Table(["run", "epochs", "best epoch", "best val accuracy", "final train loss", "lowest val loss",
                       f"overfitting (val loss up ≥ {OVERFIT_PATIENCE} epochs)"], rows, "lrrrrrl")  # fmt: skip
        blocks.insert(0, table)
        if sentences:
            blocks.insert(1, ctx.takeaway(sentences))
    if skipped:
        blocks.append(Note("No curves for " + ", ".join(skipped) + "."))
    if not rows and not skipped:
        blocks.append(Note("No training history found (metrics.jsonl is missing)."))
    if ctx.multi_seed and ctx.options.detail != "all":
        blocks.append(Note("With several seeds, curves are shown for each model's first seed; "
                           "section 11 overlays the mean over seeds."))  # fmt: skip
    return section
