"""Sections 4-7: test results against a random-weights baseline, per-class table, confusion
matrices and the most-confused pairs."""

from __future__ import annotations

import math

import numpy as np
import torch

from fmnist.analysis import metrics
from fmnist.constants import CLASS_NAMES
from fmnist.models.baselines import PAPER_BENCHMARK
from fmnist.report import figures
from fmnist.report.context import BASELINE_IMAGES, ReportContext, ReportedRun
from fmnist.report.document import Heading, Image, Note, Section, Table
from fmnist.report.text import count, join_words, num, pct, points

# Garment groups whose members the seeds report confusing with one another.
GROUPS = {
    "upper-body garments": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
    "footwear": ("Sandal", "Sneaker", "Ankle boot"),
}


def _loss(run: ReportedRun) -> str:
    if run.classical and not run.classical.probabilistic:
        return "n/a (decision scores)"
    return num(run.results.test_loss)


def test_results_section(ctx: ReportContext) -> Section:
    section = Section(4, "test", "Test results")
    blocks = section.blocks
    baselines, problems = {}, []
    for run in ctx.detail_runs:
        if run.classical:
            continue
        base = ctx.untrained_baseline(run)
        if base is None:
            problems.append(f"{run.name}: {ctx.prediction_problems.get(run.name)}")
        else:
            baselines[run.name] = base
    rows = []
    for run in ctx.runs:
        r = run.results
        base = baselines.get(run.name)
        if base:
            extra = [pct(base["accuracy"], 1), num(base["loss"], 2), points(r.test_accuracy - base["accuracy"], 1)]
        else:
            extra = ["n/a (not a network)" if run.classical else "—", "", ""]
        rows.append([run.name, pct(r.test_accuracy), _loss(run), *extra])
    blocks.append(Table(["run", "test accuracy", "test loss", "random weights: accuracy", "random weights: loss",
                         "gain from training"], rows))  # fmt: skip
    n_test = sum(ctx.runs[0].results.per_class[c]["support"] for c in range(len(CLASS_NAMES)))
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        r, base = run.results, baselines.get(run.name)
        s = f"{run.name} classifies {pct(r.test_accuracy, 1)} of {count(n_test)} test images correctly"
        if base:
            s += (f", {points(r.test_accuracy - base['accuracy'], 1)} over the same network with its untrained "
                  f"starting weights ({pct(base['accuracy'], 1)}, loss {base['loss']:.2f}; guessing uniformly "
                  f"gives 10% and loss ln 10 = {math.log(10):.2f})")  # fmt: skip
        if run.classical and run.model in PAPER_BENCHMARK:
            s += f" (the Fashion-MNIST paper's benchmark: {pct(PAPER_BENCHMARK[run.model], 1)})"
        sentences[run.name] = s + "."
    blocks.append(ctx.takeaway(sentences))
    if baselines:
        blocks.append(Note(f"The random-weights baseline rebuilds each network with the seed its training started "
                           f"from, so it is exactly the model before its first step; it is scored on a "
                           f"class-stratified sample of {count(min(BASELINE_IMAGES, n_test))} test images."))  # fmt: skip
    drift = [f"{run.name} {pct(ctx.predictions(run).accuracy)} (recorded {pct(run.results.test_accuracy)})"
             for run in ctx.detail_runs if run.name in baselines
             and abs(ctx.predictions(run).accuracy - run.results.test_accuracy) > 1e-9]  # fmt: skip
    if drift:
        blocks.append(
            Note(
                "Sections 8-10 recompute the test predictions from each checkpoint; reduced-precision "
                "(bf16) arithmetic can move a few borderline images: " + ", ".join(drift) + "."
            )
        )
    if problems:
        blocks.append(Note("No random-weights baseline for " + "; ".join(problems) + "."))
    return section


def hardest_class_sentence(run: ReportedRun) -> str:
    per_class = run.results.per_class
    cm = np.asarray(run.results.confusion)
    order = sorted(range(len(per_class)), key=lambda c: per_class[c]["accuracy"])
    hard, easy = order[0], order[-1]
    row = cm[hard].copy()
    row[hard] = 0
    if row.sum() == 0:
        return f"{run.name} classifies every class perfectly."
    taken = int(np.argmax(row))
    share = row[taken] / max(cm[hard].sum(), 1)
    return (f"{per_class[hard]['name']} is the hardest class for {run.name}: {pct(per_class[hard]['accuracy'], 1)}; "
            f"most often taken for {CLASS_NAMES[taken]} ({pct(share, 1)}). Easiest: {per_class[easy]['name']} "
            f"({pct(per_class[easy]['accuracy'], 1)}).")  # fmt: skip


def per_class_section(ctx: ReportContext) -> Section:
    section = Section(5, "per-class", "Per-class results")
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        per_class = sorted(run.results.per_class, key=lambda r: -r["accuracy"])
        rows = [[r["name"], pct(r["accuracy"], 1), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                 f"{count(r['correct'])}/{count(r['support'])}", count(r["support"] - r["correct"])]
                for r in per_class]  # fmt: skip
        png = figures.per_class_bars([r["name"] for r in per_class], [r["accuracy"] for r in per_class],
                                     ctx.figure("per-class", run), f"{run.name}: accuracy per class")  # fmt: skip
        section.blocks += [Heading(run.name),
                           Table(["class", "accuracy", "precision", "recall", "F1", "correct/total", "errors"], rows),
                           Image(png, f"per-class accuracy of {run.name}")]  # fmt: skip
        sentences[run.name] = hardest_class_sentence(run)
    section.blocks.insert(0, ctx.takeaway(sentences))
    section.blocks.insert(1, Note("Accuracy of a class = its recall: the share of that class's test images "
                                  "predicted correctly. Sorted from best to worst."))  # fmt: skip
    return section


def group_share(cm: np.ndarray, members: tuple[str, ...]) -> float:
    """Share of all errors that are one member of the group mistaken for another member."""
    idx = [CLASS_NAMES.index(m) for m in members]
    errors = cm.sum() - np.trace(cm)
    inside = cm[np.ix_(idx, idx)].sum() - np.trace(cm[np.ix_(idx, idx)])
    return float(inside / errors) if errors else 0.0


def confusion_section(ctx: ReportContext) -> Section:
    section = Section(6, "confusion", "Confusion matrices")
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        cm = np.asarray(run.results.confusion)
        counts = figures.confusion_matrix(cm, ctx.figure("confusion", run), f"{run.name}: counts")
        shares = figures.confusion_matrix(cm, ctx.figure("confusion-share", run),
                                          f"{run.name}: % of each true class", share=True)  # fmt: skip
        outlined = f"red outlines: the {figures.OUTLINED_CELLS} largest errors"
        section.blocks += [
            Heading(run.name),
            Image(counts, f"confusion matrix of {run.name} (counts)",
                  f"Rows: true class; columns: prediction. Log colour scale, so single errors show; {outlined}."),
            Image(shares, f"confusion matrix of {run.name} (share of each true class)",
                  f"Each row divided by its class total, in %; only the errors are coloured (the grey diagonal is "
                  f"each class's accuracy); {outlined}."),
        ]  # fmt: skip
        errors = int(cm.sum() - np.trace(cm))
        if not errors:
            sentences[run.name] = f"{run.name} makes no errors: every count lies on the diagonal."
            continue
        shares = [f"{name} ({join_words(members)}) mistaken for one another make up {pct(group_share(cm, members), 0)}"
                  for name, members in GROUPS.items()]  # fmt: skip
        sentences[run.name] = f"{run.name}: of {count(errors)} errors, " + "; ".join(shares) + "."
    section.blocks.insert(0, ctx.takeaway(sentences))
    return section


def pairs_section(ctx: ReportContext) -> Section:
    section = Section(7, "pairs", "Most-confused pairs")
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        cm = torch.tensor(run.results.confusion)
        pairs = metrics.most_confused_pairs(cm, 10)
        errors = int(cm.sum() - cm.trace())
        rows = [[CLASS_NAMES[p.true_class], CLASS_NAMES[p.predicted_class], count(p.count), pct(p.fraction_of_true, 1)]
                for p in pairs]  # fmt: skip
        section.blocks += [Heading(run.name), Table(["true", "predicted as", "count", "% of true class"], rows, "llrr")]
        if not pairs:
            sentences[run.name] = f"{run.name} makes no errors."
            continue
        covered = sum(p.count for p in pairs)
        keys = {(p.true_class, p.predicted_class) for p in pairs}
        both = sorted({tuple(sorted(k)) for k in keys if (k[1], k[0]) in keys})
        top = pairs[0]
        s = (f"{run.name}'s top pair, {CLASS_NAMES[top.true_class]} → {CLASS_NAMES[top.predicted_class]}, is "
             f"{count(top.count)} images ({pct(top.fraction_of_true, 1)} of {CLASS_NAMES[top.true_class]}); the top "
             f"{len(pairs)} pairs hold {pct(covered / errors, 0)} of its {count(errors)} errors")  # fmt: skip
        if both:
            s += "; confused both ways: " + join_words([f"{CLASS_NAMES[a]} ↔ {CLASS_NAMES[b]}" for a, b in both])
        sentences[run.name] = s + "."
    section.blocks.insert(0, ctx.takeaway(sentences))
    return section
