"""`fmnist compare|report`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.app import app, console
from fmnist.cli.data_cmds import DataDirOption, load


@app.command("compare")
def compare_cmd(
    models: str | None = typer.Option(None, "--models", help="Comma-separated model names [default: mlp_wide,fastcnn]"),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file listing the runs ([[runs]])"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder [default: runs/compare-<timestamp>]"),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="Repeat each run with N seeds"),
    epochs: int | None = typer.Option(None, "--epochs", help="Override every run's epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Smoke mode: stop each run after N steps"),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda"),
    seed: int | None = typer.Option(None, "--seed", help="First seed"),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write the report (report.html + report.md)"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Train and compare models (default: the MLP baseline vs fmnist's CNN) and write a report."""
    from fmnist.compare import default_out_dir, default_plan, plan_from_file, plan_from_models
    from fmnist.errors import UsageError

    if models and config:
        raise UsageError("give either --models or --config, not both")
    plan = plan_from_file(config) if config else plan_from_models(models.split(",")) if models else default_plan()
    if seeds:
        plan.seeds = seeds
    overrides = {"epochs": epochs, "max_steps": max_steps, "device": device, "seed": seed}
    run_plan(plan, out or default_out_dir(), overrides, data_dir, no_report)


class RunProgress:
    """One live progress bar per run, and a line with each run's result as it finishes."""

    def __init__(self):
        self.bars = []

    def callbacks(self, name, cfg):
        from fmnist.progress import RichProgress

        self.bars.append(RichProgress(console, label=name))
        return [self.bars[-1]]

    def announce(self, name, result):
        console.print(f"[bold]{name}[/bold]: test accuracy {100 * result.test_accuracy:.2f}% "
                      f"in {result.train_seconds:.1f}s ({result.epochs_run} epochs)")  # fmt: skip

    def close(self):
        for bar in self.bars:
            bar.close()


def run_plan(plan, out: Path, overrides: dict, data_dir: Path | None, no_report: bool) -> None:
    """Train every run of `plan` into `out` with progress bars, print the table, write the report."""
    from fmnist.compare import run_compare

    overrides = {k: v for k, v in overrides.items() if v is not None}
    for spec in plan.runs:  # fail on bad values before any data is loaded or run trained
        spec.config(overrides)
    dataset = load(data_dir)
    progress = RunProgress()
    try:
        summary = run_compare(plan, out, dataset, overrides=overrides, make_callbacks=progress.callbacks,
                              on_result=progress.announce)  # fmt: skip
    finally:
        progress.close()
    table = Table("model", "params", "size (MB)", "test accuracy", "best epoch", "train s", title=plan.title)
    for m in summary["models"]:
        acc = f"{100 * m['test_accuracy_mean']:.2f}%"
        if len(m["seeds"]) > 1:
            acc += f" ± {100 * m['test_accuracy_std']:.2f}"
        table.add_row(m["name"] + f" ({m['model']})", f"{m['params']:,}", f"{m['size_mb']:.2f}", acc,
                      ",".join(map(str, m["best_epoch"])), f"{m['train_seconds_mean']:.1f}")  # fmt: skip
    console.print(table)
    data = summary["data"]
    console.print(f"data: {data['source']} ({data['split']} split)  -> {out}")
    if not no_report:
        from fmnist.report import write_report

        console.print(f"report: {write_report(out, data_dir=data_dir)}")


@app.command("report")
def report_cmd(
    folder: Path = typer.Argument(..., help="A run or compare directory"),
    embedding: str = typer.Option("auto", "--embedding", help="auto (UMAP if installed, else t-SNE), tsne, umap, none"),
    embedding_points: int = typer.Option(2000, "--embedding-points", help="Test images in the 2-D embedding"),
    gradcam: bool = typer.Option(True, "--gradcam/--no-gradcam", help="Grad-CAM heatmaps for CNNs"),
    detail: str = typer.Option("first-seed", "--detail", help="Model-level analysis for: first-seed or all runs"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """(Re)write report.html (self-contained) and report.md + figures/ for a run or a comparison."""
    from fmnist.report import write_report

    path = write_report(folder, embedding=embedding, embedding_points=embedding_points, gradcam=gradcam,
                        detail=detail, data_dir=data_dir)  # fmt: skip
    console.print(f"report: {path}")
