"""Sections 11-12: the comparison of models over seeds (with a study's published figures; a
compare's ensembles are rows too) and the ablation table written by `fmnist ablate`."""

from __future__ import annotations

import statistics

from fmnist.constants import CLASS_NAMES
from fmnist.fsutil import read_json
from fmnist.inference.ensemble_select import selection_summary
from fmnist.report import figures
from fmnist.report.context import ABLATION_FILE, ReportContext, ReportedRun
from fmnist.report.document import Heading, Image, Note, Section, Table, Takeaway, Text
from fmnist.report.text import count, join_words, mean_std, pct, points, published_accuracy, published_pct


def _accs(runs: list[ReportedRun]) -> list[float]:
    return [r.results.test_accuracy for r in runs]


def paired_delta(runs: list[ReportedRun], reference: list[ReportedRun]) -> list[float]:
    """Per seed: this model's accuracy minus the reference's with the same seed offset."""
    return [a.results.test_accuracy - b.results.test_accuracy for a, b in zip(runs, reference)]


def class_accuracy(runs: list[ReportedRun]) -> list[float]:
    """Per-class accuracy averaged over a model's seeds."""
    return [statistics.fmean(r.results.per_class[c]["accuracy"] for r in runs) for c in range(len(CLASS_NAMES))]


def class_winners(series: dict[str, list[float]]) -> list[tuple[int, str, float]]:
    """Per class: (class, best model, margin over the runner-up); ties go to the first model listed."""
    names = list(series)
    out = []
    for c in range(len(CLASS_NAMES)):
        ranked = sorted(names, key=lambda n: (-series[n][c], names.index(n)))
        margin = series[ranked[0]][c] - series[ranked[1]][c] if len(ranked) > 1 else 0.0
        out.append((c, ranked[0], margin))
    return out


def _published(ctx: ReportContext) -> dict[str, object]:
    return dict(ctx.compare.published) if ctx.compare else {}


def comparison_section(ctx: ReportContext) -> Section | None:
    if not ctx.is_comparison or (len(ctx.groups) < 2 and not ctx.multi_seed):
        return None
    section = Section(11, "comparison", "Comparison")
    blocks = section.blocks
    published = _published(ctx)
    labels = list(ctx.groups)
    first = labels[0]
    rows = []
    for label, runs in ctx.groups.items():
        r = runs[0].results
        delta = paired_delta(runs, ctx.groups[first])
        rows.append([label, f"`{r.model}`", count(r.params), f"{r.size_mb:.2f}",
                     mean_std(_accs(runs)) + (f" (n={len(runs)})" if len(runs) > 1 else ""),
                     "—" if label == first else _delta_text(delta),
                     published_pct(published[label]) if label in published else "",
                     f"{statistics.fmean(x.results.train_seconds for x in runs):.1f}",
                     ", ".join(str(x.results.best_epoch) for x in runs)])  # fmt: skip
    rows += _ensemble_rows(ctx, published, statistics.fmean(_accs(ctx.groups[first])))
    headers = ["name", "model", "params", "size (MB)", "test accuracy (mean ± std)", f"Δ vs {first}",
               "published", "train s (mean)", "best epoch"]  # fmt: skip
    if not any(label in published for label in [*labels, *(e.name for e in ctx.ensembles)]):
        headers.pop(6)
        rows = [row[:6] + row[7:] for row in rows]
    blocks.append(Table(headers, rows, "ll" + "r" * (len(headers) - 2)))
    means = {label: statistics.fmean(_accs(runs)) for label, runs in ctx.groups.items()}
    ranked = sorted(labels, key=lambda n: -means[n])
    best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
    if second and means[best] == means[second]:
        tied = [n for n in ranked if means[n] == means[best]]
        blocks.insert(0, Takeaway(f"{join_words(tied)} tie at {pct(means[best])} mean test accuracy."))
    elif second:
        b, s = ctx.groups[best][0].results, ctx.groups[second][0].results
        sentence = (f"{best} is the most accurate: {pct(means[best])} against runner-up {second}'s {pct(means[second])} "
                    f"({points(means[best] - means[second])}), with {b.params / max(s.params, 1):.1f}x its "
                    f"parameters")  # fmt: skip
        spread = [statistics.stdev(_accs(ctx.groups[n])) for n in (best, second) if len(ctx.groups[n]) > 1]
        if spread and max(spread) > 0:
            sentence += f"; the gap is {(means[best] - means[second]) / max(spread):.1f}x the larger seed-to-seed std"
        blocks.insert(0, Takeaway(sentence + "."))
    else:
        blocks.insert(0, Takeaway(f"{best}: {mean_std(_accs(ctx.groups[best]))} over {len(ctx.groups[best])} seeds."))
    if ctx.multi_seed:
        seeds = sorted({x.results.seed for x in ctx.runs})
        blocks.append(Note(f"Mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}; Δ pairs runs "
                           f"with the same seed."))  # fmt: skip
    if ctx.ensembles:
        blocks.append(Note("An ensemble row averages the probabilities of the members its rule chose (greedy: on the "
                           "members' shared validation split; see the Ensemble section); its Δ is "
                           f"against {first}'s mean, and its gain is over its own best member."))  # fmt: skip
    ours = {**means, **{e.name: e.results.test_accuracy for e in ctx.ensembles if not e.error}}
    blocks += _published_blocks(ctx, published, ours)

    histories = {label: [r.history for r in runs if len(r.history) > 1] for label, runs in ctx.groups.items()}
    histories = {label: rows for label, rows in histories.items() if rows}
    if histories:  # models fitted in one pass (scikit-learn) have no curve
        png = figures.mean_curves(histories, ctx.figure("compare-curves"))
        caption = "Mean over seeds; the band is ± one standard deviation."
        blocks += [Heading("Validation curves"), Image(png, "validation curves of every model", caption)]
    series = {label: class_accuracy(runs) for label, runs in ctx.groups.items()}
    wins = class_winners(series)
    rows = [[CLASS_NAMES[c], *[pct(series[n][c], 1) for n in labels], f"{w} (+{100 * m:.1f})" if m > 0 else "tie"]
            for c, w, m in wins]  # fmt: skip
    blocks += [Heading("Per-class accuracy side by side"), Table(["class", *labels, "winner (margin, pts)"], rows)]
    png = figures.grouped_class_bars(series, ctx.figure("compare-per-class"))
    blocks.append(Image(png, "per-class accuracy of every model"))
    tally = {label: [CLASS_NAMES[c] for c, w, m in wins if w == label and m > 0] for label in labels}
    parts = [f"{label} wins {len(won)} of {len(CLASS_NAMES)} classes" + (f" ({join_words(won)})" if 0 < len(won) <= 3 else "")
             for label, won in tally.items() if won]  # fmt: skip
    ties = sum(1 for _, _, m in wins if m == 0)
    if ties:
        parts.append(f"{ties} {'class is a tie' if ties == 1 else 'classes are ties'}")
    blocks.append(Takeaway("; ".join(parts) + "."))
    return section


def _ensemble_rows(ctx: ReportContext, published: dict[str, object], first_mean: float) -> list[list[str]]:
    """Rows for the comparison table: each ensemble, its member count, accuracy and gain over its best member."""
    rows = []
    for e in ctx.ensembles:
        label = f"{e.name} (ensemble of {len(e.member_names)})"
        pub = published_pct(published[e.name]) if e.name in published else ""
        if e.error:
            rows.append([label, "`ensemble`", "—", "—", "not built", "—", pub, "—", "—"])
            continue
        r = e.results
        weights = [m.weight for m in r.members]
        chosen = {name for name, w in zip(e.member_names, weights) if w > 0}
        size = sum(m.results.size_mb for m in ctx.runs if m.name in chosen)
        rule = selection_summary(r.select, e.member_names, weights, r.model_args.weighted)
        rows.append([label, "`ensemble`", count(r.params), f"{size:.2f}",
                     f"{pct(r.test_accuracy)} ({points(r.gain_over_best_member)} vs best member; {rule})",
                     points(r.test_accuracy - first_mean), pub, "—", "—"])  # fmt: skip
    return rows


def _published_blocks(ctx: ReportContext, published: dict[str, object], means: dict[str, float]) -> list:
    if not published:
        return []
    blocks: list = [Heading("Published figures")]
    rows = []
    for key, value in published.items():
        if key in means and published_accuracy(value) is not None:
            ours = means[key]
            rows.append([key, published_pct(value), pct(ours), points(ours - published_accuracy(value))])
    if rows:
        blocks.append(Table(["run", "published", "ours", "ours − published"], rows))
    facts = [[key, published_pct(value) if published_accuracy(value) is not None else str(value)]
             for key, value in published.items() if key not in means]  # fmt: skip
    if facts:
        blocks.append(Table(["published", "value"], facts, "ll"))
    split = ctx.data_info.get("split", "unknown")
    blocks.append(Note(f"The published numbers come from the study's own run: its data split, epochs and "
                       f"choices (some report the best epoch picked on the test set). Ours use the {split} split "
                       f"with a validation hold-out chosen before testing, so compare rankings and gaps, "
                       f"not decimals."))  # fmt: skip
    return blocks


def ablation_section(ctx: ReportContext) -> Section | None:
    path = ctx.folder / ABLATION_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    section = Section(12, "ablation", "Ablation")
    variants = data.get("variants", [])
    reference = data.get("reference", variants[0]["name"] if variants else "")
    rows = []
    for v in variants:
        is_ref = v["name"] == reference
        rows.append([v["name"], v.get("change", ""), mean_std(v["accuracy"]),
                     "—" if is_ref else _delta_text(v["delta"]),
                     published_pct(v["published_accuracy"]) if v.get("published_accuracy") is not None else "",
                     "—" if is_ref or v.get("published_delta") is None else points(v["published_delta"], 1)])  # fmt: skip
    section.blocks.append(Text(f"Base model `{data.get('base')}`, {data.get('seeds', 1)} seed(s) per variant; Δ is "
                               f"the paired difference to `{reference}` with the same seed."))  # fmt: skip
    section.blocks.append(Table(["variant", "change", "accuracy (mean ± std)", "Δ (mean ± std)", "published",
                                 "published Δ"], rows, "llrrrr"))  # fmt: skip
    others = [v for v in variants if v["name"] != reference]
    if others:
        worst = min(others, key=lambda v: v["delta_mean"])
        least = max(others, key=lambda v: v["delta_mean"])
        sentence = (f"Removing or shrinking parts costs most for {worst['name']} ({points(worst['delta_mean'])}) and "
                    f"least for {least['name']} ({points(least['delta_mean'])})")  # fmt: skip
        with_pub = [v for v in others if v.get("published_delta") is not None]
        if len(with_pub) >= 2:
            ours = [v["name"] for v in sorted(with_pub, key=lambda v: v["delta_mean"])]
            theirs = [v["name"] for v in sorted(with_pub, key=lambda v: v["published_delta"])]
            agree = sum(a == b for a, b in zip(ours, theirs))
            sentence += (f"; the published study ranks {theirs[0]} as the costliest, and our ranking of the "
                         f"{len(ours)} variants matches it in {agree} of {len(ours)} places")  # fmt: skip
        section.blocks.insert(0, Takeaway(sentence + "."))
    if any(len(v["accuracy"]) == 1 for v in variants):
        section.blocks.append(Note("One seed per variant: differences under about half a point are within "
                                   "seed-to-seed noise; rerun with --seeds 3 for error bars."))  # fmt: skip
    return section


def _delta_text(deltas: list[float]) -> str:
    if len(deltas) == 1:
        return points(deltas[0])
    return f"{points(statistics.fmean(deltas))} ± {100 * statistics.stdev(deltas):.2f}"
