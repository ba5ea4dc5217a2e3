"""How far to trust a run's answers: its temperature (in the calibration section), prediction sets
(section 14) and robustness to corrupted images (section 15), all from the run's own records
(trust.json via fmnist.inference.trust, robustness.json via fmnist.inference.robustness)."""

from __future__ import annotations

import numpy as np
import torch

from fmnist.analysis.calibration import Calibration, calibration
from fmnist.constants import CLASS_NAMES
from fmnist.data.corruptions import SEVERITY_LEVELS
from fmnist.inference.robustness import CorruptionRow, RobustnessFile, read_robustness
from fmnist.inference.rundir import ROBUSTNESS_FILE
from fmnist.inference.trust import NO_TRUST_NOTE, Trust, TrustFile
from fmnist.report import figures
from fmnist.report.context import ReportContext, ReportedRun
from fmnist.report.document import Heading, Image, Note, Section, Table
from fmnist.report.text import num, pct

COVERAGES = (0.8, 0.9, 0.95)  # the prediction-set targets the table shows
SUMMARY_COVERAGE = 0.9  # the one the takeaway speaks of
WORST = 3  # corruption-severity pairs named as the worst


def run_trust(run: ReportedRun) -> tuple[Trust | None, str]:
    """(the run's Trust, "") or (None, why the run has none to show)."""
    record = TrustFile.read(run.path)
    if record is None:
        return None, f"{run.name}: {NO_TRUST_NOTE}"
    return Trust(record), ""


def temperature_blocks(ctx: ReportContext, runs: list[ReportedRun], bins: int) -> tuple[list, dict[str, str], list]:
    """(blocks, a sentence per run, notes) for the calibration section: test ECE before and after the
    run's temperature, and both reliability diagrams in one figure."""
    rows, diagram, sentences, notes = [], {}, {}, []
    for run in runs:
        preds = ctx.predictions(run)
        if preds is None or run.classical:
            continue
        trust, why = run_trust(run)
        if trust is None:
            notes.append(why)
            continue
        before = calibration(preds.probabilities, preds.labels, bins=bins)
        after = calibrated(trust, preds.logits, preds.labels, bins)
        t = trust.temperature
        rows.append([run.name, f"{t:.3f}", pct(before.ece), pct(after.ece), pct(after.mean_confidence, 1)])
        diagram[f"{run.name} before (T = 1)"] = before.bins
        diagram[f"{run.name} after (T = {t:.2f})"] = after.bins
        sentences[run.name] = (f"Dividing {run.name}'s logits by its temperature {t:.2f} (fitted on its validation "
                               f"images) takes its test ECE from {pct(before.ece)} to {pct(after.ece)}.")  # fmt: skip
        if trust.note:
            notes.append(f"{run.name}: {trust.note}")
    if not rows:
        return [], sentences, notes
    png = figures.reliability_diagram(diagram, ctx.figure("reliability-calibrated"))
    blocks = [
        Heading("Before and after temperature scaling"),
        Table(["run", "temperature T", "ECE before", "ECE after", "mean confidence after"], rows, "lrrrr"),
        Image(png, "reliability diagram before and after calibration",
              "The same test images at T = 1 and with softmax(logits / T), T as `fmnist predict` and the API "
              "apply it (trust.json). T < 1 sharpens the probabilities, T > 1 softens them; the predicted "
              "class never changes."),
    ]  # fmt: skip
    return blocks, sentences, notes


def calibrated(trust: Trust, logits: torch.Tensor, labels: torch.Tensor, bins: int) -> Calibration:
    return calibration(torch.from_numpy(trust.probabilities(logits.numpy())), labels, bins=bins)


def set_summary(trust: Trust, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, mean set size), each (len(COVERAGES), classes + 1): per class, the last column all
    images; NaN for a class with no test images."""
    probabilities = trust.probabilities(logits)
    groups = [labels == c for c in range(len(CLASS_NAMES))] + [np.ones(len(labels), bool)]
    coverage = np.full((len(COVERAGES), len(groups)), np.nan)
    size = np.full_like(coverage, np.nan)
    for i, target in enumerate(COVERAGES):
        sets = trust.sets(probabilities, target)
        covered, sizes = sets[np.arange(len(labels)), labels], sets.sum(1)
        for j, mask in enumerate(groups):
            if mask.any():
                coverage[i, j], size[i, j] = covered[mask].mean(), sizes[mask].mean()
    return coverage, size


def prediction_sets_section(ctx: ReportContext) -> Section | None:
    section = Section(14, "prediction-sets", "Prediction sets")
    notes, sentences = [], {}
    for run in ctx.detail_runs:
        preds = ctx.predictions(run)
        if preds is None or run.classical:
            continue
        trust, why = run_trust(run)
        if trust is None or not trust.has_sets:
            notes.append(why or f"{run.name}: {trust.note or 'no prediction sets'}")
            continue
        coverage, size = set_summary(trust, preds.logits.numpy(), preds.labels.numpy())
        rows = []
        for j, name in enumerate([*CLASS_NAMES, "all"]):
            rows.append([name] + [cell for i in range(len(COVERAGES))
                                  for cell in (pct(coverage[i, j], 1), num(size[i, j], 2))])  # fmt: skip
        headers = ["class"] + [h for c in COVERAGES for h in (f"coverage at {pct(c, 0)}", f"set size at {pct(c, 0)}")]
        section.blocks += [Heading(run.name), Table(headers, rows, "l" + "r" * (len(headers) - 1))]
        i = COVERAGES.index(SUMMARY_COVERAGE)
        least = int(np.nanargmin(coverage[i, :-1]))
        sentences[run.name] = (f"{run.name}'s {pct(SUMMARY_COVERAGE, 0)} prediction sets hold the true class for "
                               f"{pct(coverage[i, -1], 1)} of test images with {size[i, -1]:.2f} classes on average; "
                               f"{CLASS_NAMES[least]} is covered least ({pct(coverage[i, least], 1)}).")  # fmt: skip
    if not section.blocks and not notes:
        return None
    if sentences:
        section.blocks.insert(0, ctx.takeaway(sentences))
        section.blocks.append(Note(
            "A prediction set holds every class whose calibrated probability is at least 1 − q, q read from "
            "the validation images' scores (split-conformal, `fmnist predict --coverage`): it should contain "
            "the true class for at least the target share of images. Coverage: the share of test images whose "
            "set holds their true class; set size: classes per set (0 when no class is likely enough)."
        ))  # fmt: skip
    if notes:
        section.blocks.append(Note("; ".join(notes) + "."))
    return section


def robustness_section(ctx: ReportContext) -> Section | None:
    """Only for runs with a robustness.json (`fmnist robustness RUN_DIR`)."""
    section = Section(15, "robustness", "Robustness")
    sentences: dict[str, str] = {}
    for run in ctx.detail_runs:
        if not (run.path / ROBUSTNESS_FILE).is_file():
            continue
        record = read_robustness(run.path)
        worst = ", ".join(f"{r.corruption} at severity {r.severity} ({pct(r.accuracy, 1)})"
                          for r in record.worst(WORST))  # fmt: skip
        sentences[run.name] = (f"{run.name} is {pct(record.clean_accuracy, 1)} accurate on clean test images and "
                               f"{pct(record.mean_corruption_accuracy, 1)} on average over every corruption and "
                               f"severity; worst: {worst}.")  # fmt: skip
        section.blocks.append(Heading(run.name))
        section.blocks.append(corruption_table(record))
        if record.note:
            section.blocks.append(Note(f"{run.name}: {record.note}"))
    if not sentences:
        return None
    section.blocks.insert(0, ctx.takeaway(sentences))
    section.blocks.append(Note("Accuracy on the test images under each corruption of `fmnist robustness` "
                               "(robustness.json), from mild (severity 1) to strong (3); ECE of the calibrated "
                               "probabilities and the share the run calls unknown, each a mean over the "
                               "severities."))  # fmt: skip
    return section


def corruption_table(record: RobustnessFile) -> Table:
    """The table `fmnist robustness` prints: clean, then accuracy per corruption and severity."""
    by_name: dict[str, list[CorruptionRow]] = {}
    for r in record.rows:
        by_name.setdefault(r.corruption, []).append(r)
    blank = [""] * (len(SEVERITY_LEVELS) - 1)
    rows = [["clean", pct(record.clean_accuracy, 1), *blank, pct(record.clean_ece, 1), pct(record.clean_ood_rate, 1)]]
    for name, found in by_name.items():
        accuracy = {r.severity: r.accuracy for r in found}
        rates = [r.ood_rate for r in found if r.ood_rate is not None]
        rows.append([name, *(pct(accuracy.get(s), 1) for s in SEVERITY_LEVELS),
                     pct(float(np.mean([r.ece for r in found])), 1),
                     pct(float(np.mean(rates)) if rates else None, 1)])  # fmt: skip
    headers = ["corruption", *(f"severity {s}" for s in SEVERITY_LEVELS), "ECE (mean)", "unknown (mean)"]
    return Table(headers, rows, "l" + "r" * (len(headers) - 1))
