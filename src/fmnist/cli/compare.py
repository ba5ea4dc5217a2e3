"""`fmnist compare`: a thin layer over `fmnist.api.compare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.app import app, console
from fmnist.cli.choices import Device, value
from fmnist.cli.data import DataDirOption, notify
from fmnist.cli.sweep import JobsOption, RayOption, TensorBoardOption, ray_address


@app.command("compare")
def compare_cmd(
    models: str | None = typer.Option(None, "--models", show_default=False,
                                      help="Comma-separated model names [default: mlp_wide,fastcnn]"),  # fmt: skip
    config: Path | None = typer.Option(None, "--config", "-c", show_default=False,
                                       help="TOML file listing the runs ([[runs]])"),  # fmt: skip
    out: Path | None = typer.Option(None, "--out", "-o", show_default=False,
                                    help="Output folder [default: runs/compare-TIMESTAMP]"),  # fmt: skip
    seeds: int | None = typer.Option(None, "--seeds", min=1, show_default=False,
                                     help="Repeat each run with N seeds [default: 1, or the config's]"),  # fmt: skip
    epochs: int | None = typer.Option(None, "--epochs", show_default=False,
                                      help="Override every run's epochs [default: each recipe's]"),  # fmt: skip
    max_steps: int | None = typer.Option(None, "--max-steps", show_default=False,
                                         help="Smoke mode: stop each run after N steps"),  # fmt: skip
    val_size: int | None = typer.Option(None, "--val-size", show_default=False,
                                        help="Validation images held out of training [default: 5000]"),  # fmt: skip
    device: Device | None = typer.Option(None, "--device", show_default=False, help="Where to train [default: auto]"),
    seed: int | None = typer.Option(None, "--seed", show_default=False, help="First seed [default: 0]"),
    split_seed: int | None = typer.Option(None, "--split-seed", show_default=False,
                                          help="One validation hold-out for every run, so ensembles are scored on "
                                               "validation too [default: -1, each run's seed]"),  # fmt: skip
    ensemble: bool | None = typer.Option(None, "--ensemble/--no-ensemble", show_default=False,
                                         help="Also average each model's seeds into an ensemble (needs --seeds 2 or "
                                              "more) [default: the config's, else off]"),  # fmt: skip
    no_report: bool = typer.Option(False, "--no-report", help="Do not write the report (report.html + report.md)"),
    tensorboard: bool | None = TensorBoardOption,
    ray: str | None = RayOption,
    jobs: int | None = JobsOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Train and compare models (default: MLP baseline vs fmnist's CNN), with a report."""
    from fmnist import api

    comparison = api.compare(models.split(",") if models else None, config_file=config, seeds=seeds, out=out,
                             progress=console, report=False, data_dir=data_dir, notify=notify, ray=ray_address(ray),
                             jobs=jobs, epochs=epochs, max_steps=max_steps, val_size=val_size, device=value(device),
                             seed=seed, split_seed=split_seed, tensorboard=tensorboard, ensemble=ensemble)  # fmt: skip
    print_comparison(comparison, comparison.summary["title"])
    if not no_report:
        console.print(f"report: {comparison.report(data_dir=data_dir)}", markup=False, highlight=False)


def print_comparison(comparison, title: str) -> None:
    """The comparison table and where the results are."""
    from fmnist.experiments.compare import ensemble_row_text

    table = Table("model", "params", "size MB", "test accuracy", "best ep", "train s", title=title)
    for m in comparison.models:
        acc = f"{100 * m['test_accuracy_mean']:.2f}%"
        if len(m["seeds"]) > 1:
            acc += f" ± {100 * m['test_accuracy_std']:.2f}"
        table.add_row(m["name"] + f" ({m['model']})", f"{m['params']:,}", f"{m['size_mb']:.2f}", acc,
                      ",".join(map(str, m["best_epoch"])), f"{m['train_seconds_mean']:.1f}")  # fmt: skip
    for e in comparison.summary.get("ensembles", []):
        label, params, acc = ensemble_row_text(e)
        table.add_row(label, params, "–" if "error" in e else f"{e['size_mb']:.2f}", acc, "–", "–")
    console.print(table)
    data = comparison.summary["data"]
    console.print(f"data: {data['source']} ({data['split']} split)  -> {comparison.path}", markup=False,
                  highlight=False)  # fmt: skip
