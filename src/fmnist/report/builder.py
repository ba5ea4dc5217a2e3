"""`write_report(folder)`: report.md (+ figures/*.png) and a self-contained report.html."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from fmnist import __version__
from fmnist.analysis.embeddings import resolve_method
from fmnist.errors import UsageError
from fmnist.fsutil import atomic_write_text
from fmnist.inference.ensemble_model import is_ensemble_dir
from fmnist.inference.rundir import REPORT_HTML_FILE, REPORT_MARKDOWN_FILE, SWEEP_FILE
from fmnist.report.context import ReportContext
from fmnist.report.document import Bullets, Document, Heading, Section, Text, render_markdown
from fmnist.report.html import render_html
from fmnist.report.options import DETAIL_LEVELS, ReportOptions
from fmnist.report.sections.comparison import ablation_section, comparison_section
from fmnist.report.sections.confidence import calibration_section, mistakes_section
from fmnist.report.sections.ensemble import ensemble_document, ensemble_section
from fmnist.report.sections.explain import explanations_section
from fmnist.report.sections.results import confusion_section, pairs_section, per_class_section, test_results_section
from fmnist.report.sections.setup import data_section, models_section
from fmnist.report.sections.trained import trained_blocks
from fmnist.report.sections.training import training_section
from fmnist.report.sections.trust import prediction_sets_section, robustness_section
from fmnist.report.text import join_words

Progress = Callable[[str, int, int], None]  # (what starts now, parts done, parts in all)
BUILDERS = (
    data_section, models_section, training_section, test_results_section, per_class_section, confusion_section,
    pairs_section, mistakes_section, calibration_section, explanations_section, comparison_section, ablation_section,
    ensemble_section, prediction_sets_section, robustness_section,
)  # fmt: skip


def make_options(**options) -> ReportOptions:
    known = {f.name for f in dataclasses.fields(ReportOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown report option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    opts = ReportOptions(**options)
    resolve_method(opts.embedding)  # an unknown method or a missing extra fails now, not after minutes of work
    if opts.detail not in DETAIL_LEVELS:
        raise UsageError(f"detail must be one of {', '.join(DETAIL_LEVELS)}, not {opts.detail!r}")
    if opts.embedding_points < 10:
        raise UsageError("embedding_points must be at least 10")
    if not (opts.markdown or opts.html):
        raise UsageError("nothing to write: both markdown and html are off")
    return opts


def _quiet(_label: str, _done: int, _total: int) -> None:
    pass


def build_document(ctx: ReportContext, progress: Progress = _quiet) -> Document:
    sections: list[Section] = []
    for done, builder in enumerate(BUILDERS, start=1):
        progress(builder.__name__.removesuffix("_section").replace("_", " "), done, len(BUILDERS) + 1)
        started = time.perf_counter()
        section = builder(ctx)
        if section is not None:
            ctx.timings[section.title] = time.perf_counter() - started
            sections.append(section)
    if ctx.is_comparison:
        title = ctx.compare.title or f"Comparison of {join_words(list(ctx.groups))}"
        seeds = ctx.compare.seeds
        what = (f"{len(ctx.groups)} model(s), {seeds} seed(s) each, {len(ctx.runs)} run(s)"
                if seeds > 1 else f"{len(ctx.runs)} run(s)")  # fmt: skip
    else:
        title = f"{ctx.runs[0].name} on Fashion-MNIST"
        what = "one run"
    intro: list = [*trained_blocks(ctx), Text(f"Report on {what} in `{ctx.folder}`.")]
    if ctx.compare and ctx.compare.notes:
        intro.append(Text(str(ctx.compare.notes).strip()))
    findings = [f"**{s.title}:** {s.takeaways()[0]}" for s in _summary_order(sections) if s.takeaways()]
    if findings:
        intro += [Heading("Key findings"), Bullets(findings)]
    return Document(title, intro, sections)


def _summary_order(sections: list[Section]) -> list[Section]:
    """Comparison, ablation and ensembles first: for several models they are the headline."""
    headline = ("comparison", "ablation", "ensemble")
    top = [s for s in sections if s.key in headline]
    return top + [s for s in sections if s.key not in (*headline, "data", "models")]


def write_report(folder: Path, *, progress: Progress = _quiet, **options) -> Path:
    """Write report.md (+ figures/) and report.html for a run, compare or ensemble directory.

    Returns the HTML report's path (the Markdown one when html=False). Options: see ReportOptions.
    `progress(label, done, total)` hears of each part as it starts (the CLI's bar).
    """
    started = time.perf_counter()
    opts = make_options(**options)
    if (Path(folder) / SWEEP_FILE).is_file():  # a sweep: trials stopped early, no test results; its own report
        from fmnist.report.sections.sweep import write_sweep_report

        return write_sweep_report(Path(folder), opts.markdown, opts.html)
    if is_ensemble_dir(Path(folder)):  # averaged runs: no history or single network; the ensemble section alone
        return _write(ensemble_document(Path(folder), opts), Path(folder), opts)
    ctx = ReportContext(Path(folder), opts)
    try:
        progress("predictions", 0, len(BUILDERS) + 1)
        ctx.prepare()
        doc = build_document(ctx, progress)
    finally:
        ctx.close()
    elapsed = time.perf_counter() - started
    slowest = sorted(ctx.timings.items(), key=lambda kv: -kv[1])[:4]
    doc.footer = (f"Generated by fmnist {__version__} on {datetime.now():%Y-%m-%d %H:%M} in {elapsed:.1f} s "
                  f"(slowest parts: {', '.join(f'{k} {v:.1f} s' for k, v in slowest)}).")  # fmt: skip
    return _write(doc, ctx.folder, opts)


def _write(doc: Document, folder: Path, opts: ReportOptions) -> Path:
    written = None
    if opts.markdown:
        written = folder / REPORT_MARKDOWN_FILE
        atomic_write_text(written, render_markdown(doc, folder))
    if opts.html:
        written = folder / REPORT_HTML_FILE
        atomic_write_text(written, render_html(doc))
    return written
