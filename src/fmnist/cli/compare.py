"""`fmnist compare`: a thin layer over `fmnist.api.compare`."""

from __future__ import annotations

from pathlib import Path

import typer

from fmnist.cli.options import (
    DataDirOption,
    JobsOption,
    RayOption,
    Select,
    every_run_default,
    ray_address,
    training_settings,
    value,
)
from fmnist.cli.output import console, notify, print_comparison, report_with_progress, say
from fmnist.config import Settings


@training_settings(every_run_default, after="ensemble")
def compare_cmd(
    models: str | None = typer.Option(
        None, "--models", show_default=False, help="Comma-separated model names [default: mlp_wide,fastcnn]"
    ),  # fmt: skip
    config: Path | None = typer.Option(
        None, "--config", "-c", show_default=False, help="TOML file listing the runs ([[runs]])"
    ),  # fmt: skip
    out: Path | None = typer.Option(
        None, "--out", "-o", show_default=False, help="Output folder [default: runs/compare-TIMESTAMP]"
    ),  # fmt: skip
    seeds: int | None = typer.Option(
        None,
        "--seeds",
        min=1,
        show_default=False,
        help="Repeat each run with N seeds (from --seed on) [default: 1, or the config's]",
    ),  # fmt: skip
    ensemble: bool | None = typer.Option(
        None,
        "--ensemble/--no-ensemble",
        show_default=False,
        help="Also average each model's seeds into an ensemble (needs --seeds 2 or "
        "more) [default: the config's, else off]",
    ),  # fmt: skip
    ensemble_select: Select | None = typer.Option(
        None,
        "--ensemble-select",
        show_default=False,
        help="How every ensemble chooses its members: greedy (on the shared "
        "validation split, needs one --split-seed) or all (plain average) "
        "[default: each [[ensembles]] table's select, else greedy; all where the runs share no validation split]",
    ),  # fmt: skip
    no_report: bool = typer.Option(False, "--no-report", help="Do not write the report (report.html + report.md)"),
    ray: str | None = RayOption,
    jobs: int | None = JobsOption,
    data_dir: Path | None = DataDirOption,
    settings: Settings | None = None,
) -> None:
    """Train and compare models (default: MLP baseline vs fmnist's CNN), with a report."""
    from fmnist import api

    comparison = api.compare(models.split(",") if models else None, config_file=config, seeds=seeds, out=out,
                             progress=console, report=False, data_dir=data_dir, notify=notify, ray=ray_address(ray),
                             jobs=jobs, ensemble=ensemble, ensemble_select=value(ensemble_select),
                             **(settings or {}))  # fmt: skip
    print_comparison(comparison, comparison.summary["title"])
    if not no_report:
        say(f"report: {report_with_progress(comparison, data_dir=data_dir)}")
