"""`fmnist sweep`: a thin layer over `fmnist.api.sweep`; and the `--ray` option compare, ablate and train share."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption, TensorBoardOption, ray_address
from fmnist.cli.output import console, notify
from fmnist.experiments.ray_runtime import ADDRESS_ENV, LOCAL

TOP_TRIALS = 10  # rows of the closing table; sweep.json and the report have every trial


def sweep_cmd(
    config: Path | None = typer.Argument(
        None,
        metavar="CONFIG.toml",
        show_default=False,
        help="Training keys + [sweep] + [search] (see configs/sweep-example.toml)",
    ),  # fmt: skip
    resume: Path | None = typer.Option(
        None, "--resume", metavar="SWEEP_DIR", show_default=False, help="Continue an interrupted sweep"
    ),  # fmt: skip
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        show_default=False,
        help=f"A Ray cluster's head HOST:PORT, or '{LOCAL}' [default: ${ADDRESS_ENV}, "
        f"else '{LOCAL}': a Ray started here for the sweep]",
    ),  # fmt: skip
    out: Path | None = typer.Option(
        None, "--out", "-o", show_default=False, help="Sweep folder [default: runs/sweep-TIMESTAMP]"
    ),  # fmt: skip
    max_steps: int | None = typer.Option(
        None, "--max-steps", show_default=False, help="Smoke mode: stop each trial after N steps"
    ),  # fmt: skip
    tensorboard: bool | None = TensorBoardOption,
    no_report: bool = typer.Option(False, "--no-report", help="Do not write report.md / report.html"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Hyperparameter sweep on Ray Tune: each trial a run directory, ASHA early stopping, best.toml."""
    from fmnist import api

    summary = api.sweep(config, resume=resume, out=out, ray=ray_address(ray), data_dir=data_dir, progress=console,
                        report=not no_report, notify=notify, max_steps=max_steps, tensorboard=tensorboard)  # fmt: skip
    from fmnist.experiments.sweep_config import format_metric

    metric = summary["metric"]
    keys = list(summary["search"])
    table = Table("trial", "status", "epochs", *keys, f"best {metric}", title=f"Sweep: best {TOP_TRIALS} trials")
    scored = [t for t in summary["trials"] if t["best"]]
    scored.sort(key=lambda t: t["best"]["value"], reverse=summary["mode"] == "max")
    for t in scored[:TOP_TRIALS]:
        values = [f"{v:.4g}" if isinstance(v := t["config"].get(k), float) else str(v) for k in keys]
        table.add_row(t["name"], t["status"], str(len(t["epochs"])), *values, format_metric(metric, t["best"]["value"]))
    console.print(table)
    c, best, folder = summary["counts"], summary["best"], summary["folder"]
    console.print(f"{c['finished']} finished, {c['stopped']} stopped early, {c['failed']} failed; best: {best['trial']}, "
                  f"{metric} {format_metric(metric, best['value'])}", markup=False, highlight=False)  # fmt: skip
    console.print(f"best config: {folder}/best.toml  (train it: fmnist train --config {folder}/best.toml)",
                  markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    if summary.get("report"):
        console.print(f"report: {summary['report']}", markup=False, highlight=False, soft_wrap=True)
