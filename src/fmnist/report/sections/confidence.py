"""Sections 8-9: the mistakes (most confident wrong, random right and wrong with their
probability bars) and calibration (ECE, reliability diagram; before and after the run's
temperature in sections/trust.py)."""

from __future__ import annotations

from fmnist.analysis.calibration import calibration, confident_accuracy
from fmnist.analysis.mistakes import most_confident_mistakes, random_examples
from fmnist.constants import CLASS_NAMES
from fmnist.report import figures
from fmnist.report.context import ReportContext
from fmnist.report.document import Heading, Image, Note, Section, Table
from fmnist.report.figures_images import labelled_images, probability_bars
from fmnist.report.sections.trust import temperature_blocks
from fmnist.report.text import count, pct

SURE = 0.9  # "confident" in the prose: top-class probability of at least 90%
BINS = 15  # equal-width confidence bins of the reliability diagram and the ECE


def _skips(ctx: ReportContext, runs) -> list[str]:
    return [f"{run.name}: {ctx.prediction_problems[run.name]}" for run in runs if run.name in ctx.prediction_problems]


def mistakes_section(ctx: ReportContext) -> Section:
    section = Section(8, "mistakes", "Mistakes")
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        preds = ctx.predictions(run)
        if preds is None:
            continue
        probs, labels = preds.probabilities, preds.labels
        confidence, predicted = probs.max(1)
        worst = most_confident_mistakes(probs, labels, 16)
        titles = [f"true {CLASS_NAMES[int(labels[i])]}\npred {CLASS_NAMES[int(predicted[i])]}\n{pct(float(confidence[i]), 1)}"
                  for i in worst]  # fmt: skip
        section.blocks.append(Heading(run.name))
        if worst:
            png = labelled_images(preds.images[worst], titles, ctx.figure("mistakes", run))
            section.blocks.append(
                Image(
                    png,
                    f"most confident mistakes of {run.name}",
                    f"The {len(worst)} wrong predictions {run.name} made with the highest confidence.",
                )
            )
        right, wrong = random_examples(predicted, labels, 5, ctx.options.seed)
        png = probability_bars(
            preds.images, probs.numpy(), labels.numpy(), right, wrong, ctx.figure("predictions", run)
        )
        section.blocks.append(Image(png, f"random predictions of {run.name}",
                                    "5 random correct (left) and 5 random wrong (right) test predictions with all "
                                    "ten class probabilities (green: the true class; red: the wrong top pick)."))  # fmt: skip
        errors = int((predicted != labels).sum())
        sure_wrong = int(((predicted != labels) & (confidence >= SURE)).sum())
        s = f"{run.name} is wrong on {count(errors)} test images"
        if errors:
            i = worst[0]
            s += (f", {count(sure_wrong)} of them ({pct(sure_wrong / errors, 0)}) with at least {pct(SURE, 0)} "
                  f"confidence; its most confident mistake calls a {CLASS_NAMES[int(labels[i])]} a "
                  f"{CLASS_NAMES[int(predicted[i])]} at {pct(float(confidence[i]), 1)}")  # fmt: skip
        if run.classical and not run.classical.probabilistic:
            s += " (confidence here is a softmax of decision scores, not a probability)"
        sentences[run.name] = s + "."
    if sentences:
        section.blocks.insert(0, ctx.takeaway(sentences))
    skipped = _skips(ctx, ctx.detail_runs)
    if skipped:
        section.blocks.append(Note("Skipped (these need the model and the test images): " + "; ".join(skipped) + "."))
    return section


def _verdict(cal) -> str:
    if cal.ece < 0.015:
        return "well calibrated"
    return "over-confident" if cal.gap > 0 else "under-confident"


def calibration_section(ctx: ReportContext) -> Section:
    section = Section(9, "calibration", "Calibration")
    rows, bins, skipped = [], {}, []
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        preds = ctx.predictions(run)
        if preds is None:
            continue
        if run.classical and not run.classical.probabilistic:
            skipped.append(f"{run.name}: {run.classical.estimator} gives decision scores, not probabilities")
            continue
        cal = calibration(preds.probabilities, preds.labels, bins=BINS)
        bins[run.name] = cal.bins
        n_sure, acc_sure = confident_accuracy(preds.probabilities, preds.labels, SURE)
        rows.append([run.name, pct(cal.ece), pct(cal.mean_confidence), pct(cal.accuracy),
                     f"{100 * cal.gap:+.2f} pts", _verdict(cal)])  # fmt: skip
        s = (f"{run.name} is {_verdict(cal)} (ECE {pct(cal.ece)}): average confidence {pct(cal.mean_confidence, 1)} "
             f"against {pct(cal.accuracy, 1)} accuracy")  # fmt: skip
        if n_sure:
            s += f"; on the {count(n_sure)} images it is at least {pct(SURE, 0)} sure of, it is right {pct(acc_sure, 1)} of the time"
        smoothing = float(run.config.get("label_smoothing", 0) or 0)
        if smoothing > 0:
            s += f" (trained with label smoothing {smoothing:g}, which pulls confidences down)"
        sentences[run.name] = s + "."
    if rows:
        section.blocks.append(
            Table(["run", "ECE", "mean confidence", "accuracy", "confidence − accuracy", "verdict"], rows, "lrrrrl")
        )
        png = figures.reliability_diagram(bins, ctx.figure("reliability"))
        section.blocks.append(
            Image(
                png,
                "reliability diagram",
                f"Each point: the images whose top-class probability falls in one of {BINS} equal-width "
                f"bins; on the diagonal, confidence equals accuracy. Below: how many images each bin holds "
                f"(log scale); bins with fewer than {figures.MIN_BIN_COUNT} are hollow, their accuracy is "
                f"mostly chance.",
            )
        )
        section.blocks.append(Note("ECE (expected calibration error) is the bin-size-weighted mean of "
                                   "|accuracy − confidence| over those bins: the average gap between how sure "
                                   "the model is and how often it is right."))  # fmt: skip
        blocks, after, notes = temperature_blocks(ctx, ctx.detail_runs, BINS)
        section.blocks += blocks
        sentences.update({name: f"{sentences[name]} {s}" for name, s in after.items()})
        section.blocks.insert(0, ctx.takeaway(sentences))
        if notes:
            section.blocks.append(Note("; ".join(notes) + "."))
    skipped += _skips(ctx, ctx.detail_runs)
    if skipped:
        section.blocks.append(Note("Skipped: " + "; ".join(skipped) + "."))
    return section
