"""`fmnist ablate`: a thin layer over `fmnist.api.ablate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption, Device, JobsOption, RayOption, TensorBoardOption, ray_address, value
from fmnist.cli.output import console, notify


def ablate_cmd(
    base: str = typer.Option("cnn_seed004", "--base", help="Model whose parts to remove one at a time"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Repeat each variant with N seeds (mean ± std)"),
    epochs: int | None = typer.Option(
        None, "--epochs", show_default=False, help="Override the recipe's epochs [default: the model's recipe]"
    ),  # fmt: skip
    max_steps: int | None = typer.Option(
        None, "--max-steps", show_default=False, help="Smoke mode: stop each run after N steps"
    ),  # fmt: skip
    val_size: int | None = typer.Option(
        None, "--val-size", show_default=False, help="Validation images held out of training [default: 5000]"
    ),  # fmt: skip
    out: Path | None = typer.Option(
        None, "--out", "-o", show_default=False, help="Output folder [default: runs/ablate-BASE-TIMESTAMP]"
    ),  # fmt: skip
    device: Device | None = typer.Option(None, "--device", show_default=False, help="Where to train [default: auto]"),
    seed: int | None = typer.Option(None, "--seed", show_default=False, help="First seed [default: 0]"),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write report.md / report.html"),
    tensorboard: bool | None = TensorBoardOption,
    ray: str | None = RayOption,
    jobs: int | None = JobsOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Ablation study (default: seed 004's CNN): each variant's accuracy and Δ vs the full model."""
    from fmnist import api
    from fmnist.experiments.ablate import ABLATION_FILE, AblationFile
    from fmnist.fsutil import read_json
    from fmnist.report.text import points, published_pct

    comparison = api.ablate(base, seeds=seeds, out=out, progress=console, report=False, data_dir=data_dir,
                            notify=notify, ray=ray_address(ray), jobs=jobs, epochs=epochs, max_steps=max_steps,
                            val_size=val_size, device=value(device), seed=seed, tensorboard=tensorboard)  # fmt: skip
    ablation: AblationFile = read_json(comparison.path / ABLATION_FILE)
    table = Table("variant", "change", "accuracy", "Δ vs full", "published", "published Δ",
                  title=comparison.summary["title"])  # fmt: skip
    for v in ablation["variants"]:
        acc = f"{100 * v['accuracy_mean']:.2f}%" + (
            f" ± {100 * v['accuracy_std']:.2f}" if len(v["accuracy"]) > 1 else ""
        )
        if v["name"] == ablation["reference"]:
            delta = "—"
        else:
            delta = points(v["delta_mean"]) + (f" ± {100 * v['delta_std']:.2f}" if len(v["delta"]) > 1 else "")
        pub = published_pct(v["published_accuracy"]) if v["published_accuracy"] is not None else ""
        pub_delta = (
            points(v["published_delta"], 1) if v["published_delta"] and v["name"] != ablation["reference"] else ""
        )
        table.add_row(v["name"], v["change"], acc, delta, pub, pub_delta)
    console.print(table)
    console.print(f"data: {ablation['data']['source']} ({ablation['data']['split']} split)  -> {comparison.path}",
                  markup=False, highlight=False)  # fmt: skip
    if not no_report:
        console.print(f"report: {comparison.report(data_dir=data_dir)}", markup=False, highlight=False)
