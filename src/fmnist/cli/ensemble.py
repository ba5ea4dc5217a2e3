"""`fmnist ensemble`: average several runs' probabilities into one model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.app import app, console, err_console
from fmnist.cli.choices import Precision, value
from fmnist.cli.data import DataDirOption, notify


@app.command("ensemble")
def ensemble_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more finished run directories"),
    out: Path = typer.Option(..., "--out", "-o", help="Ensemble directory to write"),
    weighted: bool = typer.Option(False, "--weighted", help="Weight members by their best validation accuracy"),
    precision: Precision = typer.Option("auto", "--precision", help="Precision the members are scored in"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an ensemble already in --out"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Average runs' probabilities into an ensemble; predict, export and serve accept it."""
    from fmnist.data.sources import resolve_dataset
    from fmnist.ensemble import build_ensemble

    dataset = resolve_dataset(str(data_dir) if data_dir else None, notify=notify)
    results = build_ensemble(run_dirs, out, dataset=dataset, weighted=weighted, precision=value(precision),
                             overwrite=overwrite, step=lambda label: err_console.print(label, markup=False))  # fmt: skip
    table = Table("member", "model", "test accuracy", "weight", title="Ensemble members")
    for m in results["members"]:
        table.add_row(str(m.get("run_dir", "")), m["model"], f"{100 * m['test_accuracy']:.2f}%", f"{m['weight']:.3f}")
    console.print(table)
    console.print(f"ensemble: test accuracy {100 * results['test_accuracy']:.2f}% "
                  f"({100 * results['gain_over_best_member']:+.2f} points over the best member; "
                  f"fixes {results['fixed']}, introduces {results['introduced']} errors) -> {out}",
                  markup=False, highlight=False)  # fmt: skip
