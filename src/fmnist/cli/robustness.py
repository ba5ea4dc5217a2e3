"""`fmnist robustness`: a run's accuracy, calibration and unknown rate on corrupted test images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption
from fmnist.cli.output import console, err_console, notify


def _percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def robustness_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory with model.json and model.safetensors"),
    data_dir: Path | None = DataDirOption,
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads for the model's passes"),
) -> None:
    """Accuracy, calibration error and unknown rate on the test split under 14 corruptions at 3
    severities (built deterministically); writes RUN_DIR/robustness.json."""
    from fmnist.data.corruptions import SEVERITY_LEVELS
    from fmnist.inference.robustness import run_robustness
    from fmnist.inference.rundir import ROBUSTNESS_FILE

    record = run_robustness(run_dir, str(data_dir) if data_dir else None, threads=threads,
                            notify=lambda m: None)  # fmt: skip
    if record.note:
        notify(f"note: {record.note}")
    table = Table("corruption", *(f"severity {s}" for s in SEVERITY_LEVELS), "ECE (mean)", "unknown (mean)",
                  title=f"{record.model}: accuracy on {record.images:,} corrupted test images",
                  title_justify="left")  # fmt: skip
    table.add_row("clean", _percent(record.clean_accuracy), "", "", _percent(record.clean_ece),
                  _percent(record.clean_ood_rate))  # fmt: skip
    by_name: dict[str, list] = {}
    for row in record.rows:
        by_name.setdefault(row.corruption, []).append(row)
    for name, rows in by_name.items():
        rates = [r.ood_rate for r in rows if r.ood_rate is not None]
        table.add_row(name, *(_percent(r.accuracy) for r in rows), _percent(sum(r.ece for r in rows) / len(rows)),
                      _percent(sum(rates) / len(rates) if rates else None))  # fmt: skip
    console.print(table)
    worst = ", ".join(f"{r.corruption} {r.severity} {_percent(r.accuracy)}" for r in record.worst(3))
    console.print(f"clean {_percent(record.clean_accuracy)}, mean corruption accuracy "
                  f"{_percent(record.mean_corruption_accuracy)} (ECE {_percent(record.mean_corruption_ece)}, "
                  f"unknown {_percent(record.mean_corruption_ood_rate)}); worst: {worst}", markup=False)  # fmt: skip
    err_console.print(f"wrote {Path(run_dir) / ROBUSTNESS_FILE} in {record.seconds:.0f}s", markup=False)
