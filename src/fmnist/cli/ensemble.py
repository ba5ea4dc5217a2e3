"""`fmnist ensemble`: choose runs on validation and average their probabilities into one model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption, Precision, Select, value
from fmnist.cli.output import console, err_console, notify
from fmnist.inference.ensemble_select import DEFAULT_SELECT, MAX_STEPS
from fmnist.inference.records import ValidationScores


def ensemble_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more finished run directories"),
    out: Path | None = typer.Option(
        None, "--out", "-o", show_default=False, help="Ensemble directory to write (required unless --validation-only)"
    ),  # fmt: skip
    select: Select | None = typer.Option(
        None,
        "--select",
        show_default=False,
        help="greedy: forward selection with replacement on the members' shared validation "
        "split, from the best member on (never below it there); all: average every "
        f"member [default: {DEFAULT_SELECT}, or all when the runs share no validation split]",
    ),  # fmt: skip
    max_steps: int = typer.Option(
        MAX_STEPS, "--greedy-steps", min=0, help="greedy: the most additions after the first member"
    ),  # fmt: skip
    weighted: bool = typer.Option(
        False, "--weighted", help="With --select all: weight members by their best validation accuracy"
    ),  # fmt: skip
    validation_only: bool = typer.Option(
        False,
        "--validation-only",
        help="Choose and score the ensemble on the members' shared validation split only: no test set, nothing written",
    ),  # fmt: skip
    precision: Precision = typer.Option("auto", "--precision", help="Precision the members are scored in"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an ensemble already in --out"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Choose runs on validation and average their probabilities; predict, export and serve accept the ensemble."""
    from fmnist.data.sources import resolve_dataset
    from fmnist.errors import UsageError
    from fmnist.inference.ensemble_build import build_ensemble, check_select

    if validation_only and out is not None:
        raise UsageError("--validation-only writes nothing; drop --out")
    if not validation_only and out is None:
        raise UsageError("--out DIR is required: where to write the ensemble (or score it with --validation-only)")
    rule = value(select)
    check_select(rule, weighted)
    dataset = resolve_dataset(str(data_dir) if data_dir else None, notify=notify)

    def say(label: str) -> None:
        err_console.print(label, markup=False)

    options = {"select": rule, "weighted": weighted, "max_steps": max_steps, "precision": value(precision), "step": say}
    if validation_only:
        from fmnist.inference.ensemble_build import validate_ensemble

        chosen = validate_ensemble(run_dirs, dataset=dataset, **options)
        title = f"Ensemble members (validation, select {chosen.selection.rule})"
        table = Table("member", "validation accuracy", "weight", title=title)
        for run_dir, acc, w in zip(chosen.run_dirs, chosen.scores.members, chosen.weights):
            table.add_row(run_dir, f"{100 * acc:.2f}%", _weight(w))
        console.print(table)
        console.print(f"ensemble: {_validation_line(chosen.scores)}", markup=False, highlight=False)
        return
    results = build_ensemble(run_dirs, out, dataset=dataset, overwrite=overwrite, notify=notify, **options)
    table = Table("member", "model", "validation accuracy", "test accuracy", "weight",
                  title=f"Ensemble members (select {results.select})")  # fmt: skip
    for m in results.members:
        val = m.validation_accuracy
        table.add_row(m.run_dir, m.model, "–" if val is None else f"{100 * val:.2f}%", f"{100 * m.test_accuracy:.2f}%",
                      _weight(m.weight))  # fmt: skip
    console.print(table)
    validation = results.validation
    line = _validation_line(validation) if validation.shared else f"not scored: {validation.reason}"
    console.print(f"validation: {line}", markup=False, highlight=False)
    console.print(f"ensemble: test accuracy {100 * results.test_accuracy:.2f}% "
                  f"({100 * results.gain_over_best_member:+.2f} points over the best member; "
                  f"fixes {results.fixed}, introduces {results.introduced} errors) -> {out}",
                  markup=False, highlight=False)  # fmt: skip


def _weight(w: float) -> str:
    return f"{w:.3f}" if w > 0 else "not chosen"


def _validation_line(scores: ValidationScores) -> str:
    return (f"validation accuracy {100 * scores.accuracy:.2f}% "
            f"({100 * scores.gain_over_best_member:+.2f} points over the best member, "
            f"{scores.val_size:,} images held out by split seed {scores.split_seed})")  # fmt: skip
