"""`fmnist ensemble`: average several runs' probabilities into one model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption, Precision, value
from fmnist.cli.output import console, err_console, notify


def ensemble_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more finished run directories"),
    out: Path | None = typer.Option(None, "--out", "-o", show_default=False,
                                    help="Ensemble directory to write (required unless --validation-only)"),  # fmt: skip
    weighted: bool = typer.Option(False, "--weighted", help="Weight members by their best validation accuracy"),
    validation_only: bool = typer.Option(False, "--validation-only",
                                         help="Score members and ensemble on their shared validation split only: "
                                              "no test set, nothing written (to choose an ensemble)"),  # fmt: skip
    precision: Precision = typer.Option("auto", "--precision", help="Precision the members are scored in"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an ensemble already in --out"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Average runs' probabilities into an ensemble; predict, export and serve accept it."""
    from fmnist.data.sources import resolve_dataset
    from fmnist.errors import UsageError
    from fmnist.inference.ensemble_build import build_ensemble

    if validation_only and out is not None:
        raise UsageError("--validation-only writes nothing; drop --out")
    if not validation_only and out is None:
        raise UsageError("--out DIR is required: where to write the ensemble (or score it with --validation-only)")
    dataset = resolve_dataset(str(data_dir) if data_dir else None, notify=notify)

    def say(label: str) -> None:
        err_console.print(label, markup=False)

    if validation_only:
        from fmnist.inference.ensemble_build import validate_ensemble

        scores = validate_ensemble(run_dirs, dataset=dataset, weighted=weighted, precision=value(precision), step=say)
        table = Table("member", "validation accuracy", "weight", title="Ensemble members (validation)")
        for run_dir, acc, w in zip(scores["run_dirs"], scores["members"], scores["weights"]):
            table.add_row(run_dir, f"{100 * acc:.2f}%", f"{w:.3f}")
        console.print(table)
        console.print(f"ensemble: {_validation_line(scores)}", markup=False, highlight=False)
        return
    results = build_ensemble(run_dirs, out, dataset=dataset, weighted=weighted, precision=value(precision),
                             overwrite=overwrite, step=say)  # fmt: skip
    table = Table("member", "model", "test accuracy", "weight", title="Ensemble members")
    for m in results["members"]:
        table.add_row(str(m.get("run_dir", "")), m["model"], f"{100 * m['test_accuracy']:.2f}%", f"{m['weight']:.3f}")
    console.print(table)
    console.print(f"ensemble: test accuracy {100 * results['test_accuracy']:.2f}% "
                  f"({100 * results['gain_over_best_member']:+.2f} points over the best member; "
                  f"fixes {results['fixed']}, introduces {results['introduced']} errors) -> {out}",
                  markup=False, highlight=False)  # fmt: skip
    validation = results["validation"]
    line = _validation_line(validation) if validation["shared"] else f"not scored: {validation['reason']}"
    console.print(f"validation: {line}", markup=False, highlight=False)


def _validation_line(scores: dict) -> str:
    return (f"validation accuracy {100 * scores['accuracy']:.2f}% "
            f"({100 * scores['gain_over_best_member']:+.2f} points over the best member, "
            f"{scores['val_size']:,} images held out by split seed {scores['split_seed']})")  # fmt: skip
