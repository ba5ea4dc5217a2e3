"""Section 13: ensembles. How the members were chosen and weighted, each member against the
average, how often the members disagree, and which test errors averaging fixes and which it
introduces relative to the best member.

A compare's ensembles (compare.json's `ensembles`) get the section inside the compare's
report; an ensemble directory (`fmnist ensemble ... --out DIR`) gets a report of its own with
just this section (ensemble_document), since it has no training history or single network to analyse. The counts
are recomputed from predictions.safetensors, so the report shows what the saved predictions say.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from fmnist import __version__
from fmnist.analysis.calibration import DEFAULT_BINS, calibration
from fmnist.constants import CLASS_NAMES
from fmnist.errors import FmnistError
from fmnist.inference.ensemble_select import STOPPED_NO_GAIN, selection_summary
from fmnist.inference.records import ValidationScores
from fmnist.report.context import FIGURES_DIR, EnsembleEntry, ReportContext, _slug, find_dataset, load_ensembles
from fmnist.report.document import Block, Document, Heading, Image, Note, Section, Table, Takeaway, Text
from fmnist.report.figures import RED, plt, save
from fmnist.report.figures_images import GREEN, SHORT_NAMES, blank_axes
from fmnist.report.options import ReportOptions
from fmnist.report.sections.trust import COVERAGES, calibrated, set_summary
from fmnist.report.text import count, join_words, num, pct, plural, points

SECTION_NUMBER = 13  # after the comparison (11) and the ablation (12)
EXAMPLES = 6  # fixed and introduced test images shown, each
MATRIX_MEMBERS = 8  # up to this many members the disagreement is a matrix; beyond, a list of pairs


@dataclass
class Changes:
    """The ensemble's test answers against its best member's, from the saved predictions."""

    labels: np.ndarray
    probabilities: np.ndarray  # the ensemble's (N, classes)
    member_predicted: np.ndarray  # (members, N)
    best: int

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    @property
    def best_predicted(self) -> np.ndarray:
        return self.member_predicted[self.best]

    @property
    def fixed(self) -> np.ndarray:
        """Indices the best member gets wrong and the ensemble right."""
        return np.flatnonzero((self.predicted == self.labels) & (self.best_predicted != self.labels))

    @property
    def introduced(self) -> np.ndarray:
        """Indices the best member gets right and the ensemble wrong."""
        return np.flatnonzero((self.predicted != self.labels) & (self.best_predicted == self.labels))


def read_changes(folder: Path, best: int) -> Changes:
    from fmnist.inference.ensemble_model import read_predictions

    saved = read_predictions(folder)
    return Changes(saved["labels"].astype(np.int64), saved["probabilities"], saved["member_predicted"], best)


def _varied(indices: np.ndarray, confidence: np.ndarray, labels: np.ndarray) -> list[int]:
    """Up to EXAMPLES indices, most confident first, one per true class before any class repeats."""
    ranked = [int(i) for i in indices[np.lexsort((indices, -confidence))]]  # ties by index: a stable choice
    first, seen = [], set()
    for i in ranked:
        if labels[i] not in seen:
            seen.add(labels[i])
            first.append(i)
    return (first + [i for i in ranked if i not in set(first)])[:EXAMPLES]


def examples(changes: Changes) -> tuple[list[int], list[int]]:
    """A few fixed and introduced images: fixes the ensemble is surest of, and new errors it makes
    with the most confidence, spread over the classes."""
    p, labels = changes.probabilities, changes.labels
    fixed, introduced = changes.fixed, changes.introduced
    return (_varied(fixed, p[fixed, labels[fixed]], labels),
            _varied(introduced, p[introduced, changes.predicted[introduced]], labels))  # fmt: skip


def changed_images(images: np.ndarray, changes: Changes, rows: list[tuple[str, list[int]]], path: Path) -> Path:
    """One row per kind of change: each image with its true label, the best member's and the ensemble's."""
    columns = max(EXAMPLES, 1)
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.3, len(rows) * 1.9), squeeze=False)
    for r, (kind, picks) in enumerate(rows):
        for k, ax in enumerate(axes[r]):
            blank_axes(ax)
            if k == 0:
                ax.set_ylabel(kind, fontsize=9, color=GREEN if kind == "fixed" else RED)
            if k >= len(picks):
                continue
            i = picks[k]
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
            title = (f"true {SHORT_NAMES[changes.labels[i]]}\nbest: {SHORT_NAMES[changes.best_predicted[i]]}\n"
                     f"ens.: {SHORT_NAMES[changes.predicted[i]]}")  # fmt: skip
            ax.set_title(title, fontsize=7.5, color=GREEN if kind == "fixed" else RED)
    fig.tight_layout(h_pad=0.6, w_pad=0.3)
    return save(fig, path)


def _takeaway(entry: EnsembleEntry, changes: Changes | None) -> Takeaway:
    r = entry.results
    best = entry.member_names[r.best_member]
    fixed = len(changes.fixed) if changes else r.fixed
    introduced = len(changes.introduced) if changes else r.introduced
    headline = (f"{entry.name} ({_rule(entry)}) reaches {pct(r.test_accuracy)}, "
                f"{points(r.gain_over_best_member)} over its best member {best}")  # fmt: skip
    verdict = ("averaging helps" if fixed > introduced else "averaging hurts" if fixed < introduced
               else "averaging breaks even")  # fmt: skip
    text = (f"{headline}: it fixes {plural(fixed, 'test error')} of that member and introduces {introduced} "
            f"({verdict}).")  # fmt: skip
    return Takeaway(text, headline + ".")


def _rule(entry: EnsembleEntry) -> str:
    """The selection rule and the weights in one phrase (results.json from before selection rules: all, averaged)."""
    r = entry.results
    return selection_summary(r.select, entry.member_names, [m.weight for m in r.members], r.model_args.weighted)


def _members_table(entry: EnsembleEntry) -> Table:
    r = entry.results
    validation = r.validation
    val = validation.members if validation and validation.shared else None
    rows = [[name + (" (best)" if i == r.best_member else ""), f"`{m.model}`",
             pct(val[i]) if val else "—", pct(m.test_accuracy), f"{m.weight:.3f}" if m.weight > 0 else "not chosen"]
            for i, (name, m) in enumerate(zip(entry.member_names, r.members))]  # fmt: skip
    rows.append([f"**{entry.name} (ensemble)**", "`ensemble`", f"**{pct(validation.accuracy)}**" if val else "—",
                 f"**{pct(r.test_accuracy)}**", "—"])  # fmt: skip
    return Table(["name", "model", "validation accuracy", "test accuracy", "weight"], rows, "llrrr")


def _selection_text(entry: EnsembleEntry) -> str:
    """How the members and their weights were chosen."""
    r = entry.results
    if r.select != "greedy" or r.selection is None:
        how = "each member's best validation accuracy" if r.model_args.weighted else "equal"
        return f"Selection: every member, weights {how}."
    steps = r.selection.steps or []
    added = len(steps) - 1
    why = ("no further addition improved validation accuracy (or, at equal accuracy, its log-loss)"
           if r.selection.stopped == STOPPED_NO_GAIN else f"it reached {r.selection.max_steps} additions")  # fmt: skip
    first = entry.member_names[steps[0].member] if steps else "the best member"
    return (f"Selection: greedy forward selection with replacement on the members' shared validation split "
            f"(Caruana et al. 2004). It started from the best member there, {first}, added "
            f"{plural(added, 'member')} (repeats allowed) and stopped because {why}; each member's weight is the "
            f"share of the {plural(added + 1, 'pick')} it got ({_rule(entry)}). The test set was scored once, "
            f"after this choice; members not chosen take no part in the ensemble.")  # fmt: skip


def _disagreement_blocks(entry: EnsembleEntry) -> list[Block]:
    pairs = entry.results.pairwise_disagreement
    if not pairs:
        return []
    names = entry.member_names
    fractions = [p.fraction for p in pairs]
    lo, hi = min(pairs, key=lambda p: p.fraction), max(pairs, key=lambda p: p.fraction)
    if len(pairs) == 1:
        text = f"The two members give different answers on {pct(lo.fraction, 1)} of the test images"
    else:
        text = (f"Members give different answers on {pct(float(np.mean(fractions)), 1)} of the test images on "
                f"average (from {pct(lo.fraction, 1)}, {names[lo.a]} and {names[lo.b]}, to "
                f"{pct(hi.fraction, 1)}, {names[hi.a]} and {names[hi.b]})")  # fmt: skip
    text += "; an average can only fix errors where members disagree."
    blocks: list[Block] = [Heading("Pairwise disagreement"), Text(text)]
    if len(names) <= MATRIX_MEMBERS:
        cell = {(p.a, p.b): pct(p.fraction, 1) for p in pairs}
        cell.update({(b, a): v for (a, b), v in list(cell.items())})
        rows = [[names[i], *("—" if i == j else cell.get((i, j), "") for j in range(len(names)))]
                for i in range(len(names))]  # fmt: skip
        blocks.append(Table(["", *names], rows))
    else:
        rows = [[names[p.a], names[p.b], pct(p.fraction, 1)] for p in pairs]
        blocks.append(Table(["member", "member", "test images they disagree on"], rows, "llr"))
    return blocks


def _per_class_table(changes: Changes) -> Table:
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        of_class = changes.labels == c
        best_acc = float((changes.best_predicted[of_class] == c).mean()) if of_class.any() else float("nan")
        ens_acc = float((changes.predicted[of_class] == c).mean()) if of_class.any() else float("nan")
        fixed = int((changes.labels[changes.fixed] == c).sum())
        introduced = int((changes.labels[changes.introduced] == c).sum())
        rows.append([name, pct(best_acc, 1), pct(ens_acc, 1), count(fixed), count(introduced),
                     f"{fixed - introduced:+d}"])  # fmt: skip
    return Table(["class", "best member", "ensemble", "fixed", "introduced", "net"], rows)


def _validation_text(validation: ValidationScores | None) -> str:
    """The ensemble against its best member on validation, where the members held out the same images."""
    if not validation:  # built before fmnist recorded it
        return ""
    if not validation.shared:
        return f"Not scored on validation: {validation.reason or 'no shared hold-out'}."
    best = validation.members[validation.best_member]
    return (f"On the members' shared validation split ({count(validation.val_size)} training images held out "
            f"by split seed {validation.split_seed}) the ensemble scores {pct(validation.accuracy)}, "
            f"{points(validation.gain_over_best_member)} over the best member there ({pct(best)}): the figure "
            f"to choose ensembles by, since it leaves the test set alone.")  # fmt: skip


def _trust_blocks(entry: EnsembleEntry, changes: Changes) -> list[Block]:
    """The ensemble's own temperature, unknown threshold and prediction sets (trust.json), with the saved
    test probabilities before and after its temperature."""
    import torch

    from fmnist.inference.ensemble_trust import load_ensemble_trust

    trust = load_ensemble_trust(entry.path)
    blocks: list[Block] = [Heading("Calibration, unknown answer and prediction sets")]
    if trust.record.nll_before is None:
        return [*blocks, Note(f"{entry.name}: {trust.note}.")]
    logits = np.log(np.clip(changes.probabilities.astype(np.float64), np.finfo(np.float32).tiny, None))
    labels = torch.from_numpy(changes.labels)
    before = calibration(torch.from_numpy(changes.probabilities), labels, bins=DEFAULT_BINS)
    after = calibrated(trust, torch.from_numpy(logits), labels, DEFAULT_BINS)
    t, record = trust.temperature, trust.record
    rows = [["temperature T", "1", f"{t:.3f}"],
            ["validation NLL", num(record.nll_before), num(record.nll_after)],
            ["validation ECE", pct(record.ece_before), pct(record.ece_after)],
            ["test ECE", pct(before.ece), pct(after.ece)]]  # fmt: skip
    if trust.has_sets:
        coverage, size = set_summary(trust, logits, changes.labels)
        for i, target in enumerate(COVERAGES):
            rows.append([f"prediction sets at {pct(target, 0)}: test coverage, mean size", "—",
                         f"{pct(coverage[i, -1], 1)}, {size[i, -1]:.2f}"])  # fmt: skip
    blocks.append(Table(["", "before (T = 1)", "after"], rows, "lrr"))
    text = (f"{entry.name} divides the log of its mean probability by its own temperature {t:.2f}, fitted on the "
            f"{count(record.validation_images)} validation images no member trained on, as `fmnist predict`, the "
            f"server, its ONNX export and the Python API do; the predicted class never changes.")  # fmt: skip
    if trust.has_ood:
        text += (f" It calls an image unknown above its {record.ood_method} threshold, which keeps "
                 f"{pct(record.ood_keep, 0)} of those images (energy: the members' mean; Mahalanobis: on their "
                 f"features side by side).")  # fmt: skip
    blocks.append(Text(text))
    if trust.note:
        blocks.append(Note(f"{entry.name}: {trust.note}."))
    return blocks


def ensemble_blocks(entry: EnsembleEntry, dataset, data_problem: str, figure: Path) -> list[Block]:
    """Everything the section says about one ensemble; `dataset` (or None) supplies the images."""
    if entry.error:
        return [Note(f"{entry.name} was not built: {entry.error}")]
    r = entry.results
    best_name = entry.member_names[r.best_member]
    changes, problem = None, ""
    try:
        changes = read_changes(entry.path, r.best_member)
    except FmnistError as exc:
        problem = str(exc)
    blocks: list[Block] = [_takeaway(entry, changes), _members_table(entry)]
    best_acc = r.members[r.best_member].test_accuracy
    blocks.append(Text(_selection_text(entry)))
    blocks.append(Text(f"Gain over the best member on the test set ({best_name}, {pct(best_acc)}): "
                       f"{points(r.gain_over_best_member)}. The ensemble answers the argmax of the weighted mean "
                       f"probability."))  # fmt: skip
    validation = _validation_text(r.validation)
    if validation:
        blocks.append(Text(validation))
    if changes is not None:
        blocks += _trust_blocks(entry, changes)
    blocks += _disagreement_blocks(entry)
    blocks.append(Heading(f"Errors fixed and introduced against {best_name}"))
    if changes is None:
        blocks.append(Note(f"No per-image breakdown: {problem}. From results.json: {r.fixed} fixed, "
                           f"{r.introduced} introduced."))  # fmt: skip
        return blocks
    fixed, introduced = len(changes.fixed), len(changes.introduced)
    blocks.append(Text(f"Of the best member's {count(int((changes.best_predicted != changes.labels).sum()))} test "
                       f"errors the ensemble fixes **{count(fixed)}**; it introduces **{count(introduced)}** new ones "
                       f"(net {fixed - introduced:+,d} images, {points((fixed - introduced) / len(changes.labels))})."))  # fmt: skip
    if (fixed, introduced) != (r.fixed, r.introduced):
        blocks.append(Note(f"results.json says {r.fixed} fixed and {r.introduced} introduced; the saved "
                           f"predictions say otherwise, so one of the two files was changed after the build."))  # fmt: skip
    blocks.append(_per_class_table(changes))
    fixed_by, introduced_by = (np.bincount(changes.labels[i], minlength=len(CLASS_NAMES))
                               for i in (changes.fixed, changes.introduced))  # fmt: skip
    gains = {name: int(fixed_by[c] - introduced_by[c]) for c, name in enumerate(CLASS_NAMES)}
    helped = [c for c, n in sorted(gains.items(), key=lambda kv: -kv[1]) if n > 0][:3]
    if helped:
        blocks.append(Text(f"Averaging helps most on {join_words(helped)}."))
    picks = examples(changes)
    if dataset is None:
        blocks.append(Note(f"No example images: test images not available ({data_problem})."))
    elif fixed or introduced:
        rows = [(kind, chosen) for kind, chosen in zip(("fixed", "introduced"), picks) if chosen]
        png = changed_images(dataset.test_images, changes, rows, figure)
        blocks.append(Image(png, f"test images {entry.name} fixes and introduces",
                            f"Green: the best member ({best_name}) was wrong and the ensemble is right; red: the "
                            f"reverse. Each shows the true class, the best member's answer and the ensemble's; "
                            f"the most confident first, spread over the classes."))  # fmt: skip
    return blocks


def ensemble_section(ctx: ReportContext) -> Section | None:
    if not ctx.ensembles:
        return None
    section = Section(SECTION_NUMBER, "ensemble", "Ensemble")
    takeaways: dict[str, Takeaway] = {}
    for entry in ctx.ensembles:
        if len(ctx.ensembles) > 1:
            section.blocks.append(Heading(f"{entry.name}: ensemble of {len(entry.member_names)}"))
        figure = ctx.fig_dir / f"ensemble-{_slug(entry.name)}.png"
        for block in ensemble_blocks(entry, ctx.dataset, ctx.data_problem, figure):
            if isinstance(block, Takeaway):  # gathered into one, at the top
                takeaways[entry.name] = block
            else:
                section.blocks.append(block)
    if takeaways:
        best = max((e for e in ctx.ensembles if e.name in takeaways), key=lambda e: e.results.test_accuracy)
        text = " ".join(t.text for t in takeaways.values())
        section.blocks.insert(0, Takeaway(text, takeaways[best.name].headline))
    return section


def ensemble_document(folder: Path, options: ReportOptions) -> Document:
    """The report of an ensemble directory: this section alone."""
    started = time.perf_counter()
    folder = Path(folder)
    (entry,) = load_ensembles(folder, None)
    dataset, problem = find_dataset(entry.results.data, options.data_dir)
    section = Section(None, "ensemble", "Ensemble")
    section.blocks = ensemble_blocks(entry, dataset, problem, folder / FIGURES_DIR / "ensemble.png")
    members = len(entry.member_names)
    intro: list[Block] = [Text(f"Report on the ensemble of {members} runs in `{folder}`: "
                               f"{join_words(entry.member_names)}.")]  # fmt: skip
    doc = Document(f"Ensemble of {members} runs on Fashion-MNIST", intro, [section])
    doc.footer = (f"Generated by fmnist {__version__} on {datetime.now():%Y-%m-%d %H:%M} in "
                  f"{time.perf_counter() - started:.1f} s.")  # fmt: skip
    return doc
