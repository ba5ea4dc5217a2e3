"""The report of a sweep folder: the trials table, the metric against each searched option, and
every trial's learning curve.

A sweep's trials are run directories, but many stopped early (ASHA) and none was chosen on
the test set, so the sweep gets its own one-section report from sweep.json instead of the
per-model analyses; `fmnist report SWEEP_DIR` and `fmnist sweep` both write it.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from matplotlib import pyplot as plt
from matplotlib.colors import to_hex
from matplotlib.ticker import PercentFormatter

from fmnist import __version__
from fmnist.experiments.sweep_config import format_metric
from fmnist.fsutil import atomic_write_text
from fmnist.inference.records import SearchValue, SweepFile
from fmnist.inference.rundir import BEST_FILE, FIGURES_DIR, SWEEP_FILE
from fmnist.report import figures  # first: it selects matplotlib's headless backend
from fmnist.report.document import Document, Image, Note, Section, Table, Takeaway, Text, render_markdown
from fmnist.report.text import join_words

MIN_TRIALS_FOR_TREND = 6  # fewer scored trials say little about a trend


def _value_text(value: SearchValue) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _is_numeric(values: list[SearchValue]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _trend(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation, or None when it cannot be computed."""
    from scipy.stats import spearmanr

    if len(xs) < MIN_TRIALS_FOR_TREND or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def _best_name(sweep: SweepFile) -> str | None:
    return sweep.best.trial if sweep.best else None


def metric_vs_options(sweep: SweepFile, path: Path) -> Path:
    """One panel per searched option: each trial's best metric against its value (hollow: stopped early)."""
    metric, keys = sweep.metric, list(sweep.search)
    best_name = _best_name(sweep)
    trials = [t for t in sweep.trials if t.best is not None and all(k in t.config for k in keys)]
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    color = figures.colors()[0]
    for ax, key in zip(axes.flat, keys):
        values = [t.config[key] for t in trials]
        numeric = _is_numeric(values)
        labels = sorted({_value_text(v) for v in values}) if not numeric else []
        for t, v in zip(trials, values):
            x = v if numeric else labels.index(_value_text(v))
            y = t.best.value
            filled = t.status == "finished"
            ax.plot([x], [y], "o", color=color, markerfacecolor=color if filled else "none", markersize=6)
            if t.name == best_name:
                ax.plot([x], [y], "*", color=figures.RED, markersize=14)
        if numeric and "loguniform" in sweep.search[key]:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels), default=0) > 6 else 0,
                          fontsize=8)  # fmt: skip
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
        if metric.endswith("accuracy"):
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    axes[0][0].set_ylabel(f"best {metric}")
    fig.suptitle(f"Best {metric} of each trial (filled: trained to the end; hollow: stopped early; star: best)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return figures.save(fig, path)


def all_curves(sweep: SweepFile, path: Path) -> Path:
    """The metric per epoch for every trial; trials ASHA stopped are thin and grey, the best is bold."""
    metric = sweep.metric
    best_name = _best_name(sweep)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    palette = [c for c in figures.colors() if to_hex(c) != "#d62728"]  # red marks the best trial
    for i, t in enumerate(sweep.trials):
        rows = [r for r in t.epochs if getattr(r, metric, None) is not None]
        if not rows:
            continue
        xs, ys = [r.epoch for r in rows], [getattr(r, metric) for r in rows]
        if t.name == best_name:
            ax.plot(xs, ys, "-", marker="o", color=figures.RED, linewidth=2.5, label=f"{t.name} (best)", zorder=3)
        elif t.status == "finished":
            ax.plot(xs, ys, "-", marker=".", color=palette[i % len(palette)], linewidth=1.2, alpha=0.8)
        else:
            ax.plot(xs, ys, "-", marker=".", color="grey", linewidth=0.8, alpha=0.6)
    ax.set(title=f"{metric} per epoch, every trial (grey: stopped early)", xlabel="epoch", ylabel=metric)
    if metric.endswith("accuracy"):
        figures._accuracy_axis(ax, metric)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if best_name:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return figures.save(fig, path)


def _takeaway(sweep: SweepFile) -> Takeaway:
    metric, best = sweep.metric, sweep.best
    if not best:
        return Takeaway("No trial reported a validation metric; see the table for why each trial ended.")
    options = ", ".join(f"{k} {_value_text(v)}" for k, v in best.config.items())
    counts = sweep.counts
    text = (f"The best trial, {best.trial} ({options}), reached {metric} {format_metric(metric, best.value)} at "
            f"epoch {best.epoch}.")  # fmt: skip
    trained = sum(len(t.epochs) for t in sweep.trials)
    budget = sweep.total_trials * int(sweep.scheduler.get("max_epochs", 0))
    if counts.get("stopped") and budget:
        text += (f" ASHA stopped {counts['stopped']} of {len(sweep.trials)} trials early: they trained "
                 f"{trained} epochs where running every trial to the end would take {budget} "
                 f"({100 * (1 - trained / budget):.0f}% saved).")  # fmt: skip
    trends = []
    scored = [t for t in sweep.trials if t.best is not None]
    sign = 1 if sweep.mode == "max" else -1
    for key in sweep.search:
        pairs = [(t.config[key], t.best.value) for t in scored if key in t.config]
        if pairs and _is_numeric([p[0] for p in pairs]):
            rho = _trend([float(p[0]) for p in pairs], [sign * p[1] for p in pairs])
            if rho is not None and abs(rho) >= 0.5:
                trends.append(f"{'higher' if rho > 0 else 'lower'} {key} did better (Spearman ρ {sign * rho:+.2f})")
    if trends:
        text += " Across trials, " + join_words(trends) + "."
    return Takeaway(text, text.split(". ")[0] + ".")


def sweep_section(folder: Path, sweep: SweepFile) -> Section:
    section = Section(None, "sweep", "Hyperparameter sweep")
    metric, keys = sweep.metric, list(sweep.search)
    blocks = section.blocks
    blocks.append(_takeaway(sweep))
    scheduler = sweep.scheduler
    how = (f"ASHA (grace period {scheduler['grace_period']} epochs, reduction factor {scheduler['reduction_factor']:g},"
           f" at most {scheduler['max_epochs']} epochs)" if scheduler["name"] == "asha" else "no early stopping")  # fmt: skip
    search = "; ".join(f"`{k}` {kind} {v}" for k, spec in sweep.search.items() for kind, v in spec.items())
    blocks.append(Text(f"{len(sweep.trials)} trials chosen on `{metric}` ({sweep.mode}), {how}. Search: {search}."))
    sign = 1 if sweep.mode == "max" else -1
    ranked = sorted(sweep.trials, key=lambda t: -sign * t.best.value if t.best else float("inf"))
    rows = [[t.name, t.status, str(len(t.epochs)), *(_value_text(t.config.get(k, "")) for k in keys),
             format_metric(metric, t.best.value if t.best else None), str(t.best.epoch if t.best else ""), t.why]
            for t in ranked]  # fmt: skip
    blocks.append(Table(["trial", "status", "epochs", *keys, f"best {metric}", "at epoch", "why it ended"], rows,
                        "llr" + "r" * len(keys) + "rrl"))  # fmt: skip
    fig_dir = folder / FIGURES_DIR
    if any(t.best for t in sweep.trials):
        blocks.append(Image(metric_vs_options(sweep, fig_dir / "sweep-options.png"), f"{metric} against each option"))
        blocks.append(Image(all_curves(sweep, fig_dir / "sweep-curves.png"), f"{metric} per epoch of every trial"))
    if (folder / BEST_FILE).is_file():
        blocks.append(Text(f"The best config is in `{BEST_FILE}`: `fmnist train --config {folder / BEST_FILE}`."))
    blocks.append(Note("No test accuracy here: the sweep chooses on validation data only. Train the best config and "
                       "evaluate it once; `tensorboard --logdir` on this folder shows every trial's curves."))  # fmt: skip
    return section


def write_sweep_report(folder: Path, markdown: bool = True, html: bool = True) -> Path:
    """report.md (+ figures/) and report.html for a sweep folder; returns the HTML path (else the Markdown one)."""
    from fmnist.report.html import render_html

    started = time.perf_counter()
    folder = Path(folder)
    sweep = SweepFile.read(folder / SWEEP_FILE)
    section = sweep_section(folder, sweep)
    model = sweep.base.get("model", "fmnist")
    doc = Document(f"Sweep of {model} on Fashion-MNIST", [Text(f"Report on the sweep in `{folder}`.")], [section])
    doc.footer = (f"Generated by fmnist {__version__} on {datetime.now():%Y-%m-%d %H:%M} in "
                  f"{time.perf_counter() - started:.1f} s.")  # fmt: skip
    written = folder / "report.md"
    if markdown:
        atomic_write_text(written, render_markdown(doc, folder))
    if html:
        written = folder / "report.html"
        atomic_write_text(written, render_html(doc))
    return written
