"""`fmnist ablate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.app import app, console
from fmnist.cli.data_cmds import DataDirOption, load


@app.command("ablate")
def ablate_cmd(
    base: str = typer.Option("cnn_seed004", "--base", help="Model whose parts to remove one at a time"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Repeat each variant with N seeds (mean ± std)"),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the set-up's epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Smoke mode: stop each run after N steps"),
    val_size: int | None = typer.Option(None, "--val-size", help="Validation images held out of training"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder [default: runs/ablate-<base>-<timestamp>]"
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda"),
    seed: int | None = typer.Option(None, "--seed", help="First seed"),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write report.md / report.html"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Ablation study (default: seed 004's CNN): accuracy and Δ against the full model per variant."""
    from fmnist.ablate import ablation_plan, default_out_dir, run_ablation
    from fmnist.cli.compare_cmds import RunProgress
    from fmnist.report.text import points, published_pct

    overrides = {"epochs": epochs, "max_steps": max_steps, "val_size": val_size, "device": device, "seed": seed}
    plan, _ = ablation_plan(base, seeds)  # unknown model or bad value: fail before loading data
    for spec in plan.runs:
        spec.config({k: v for k, v in overrides.items() if v is not None})
    out = out or default_out_dir(base)
    dataset = load(data_dir)
    progress = RunProgress()
    try:
        ablation = run_ablation(base, out, dataset, seeds=seeds, overrides=overrides,
                                make_callbacks=progress.callbacks, on_result=progress.announce)  # fmt: skip
    finally:
        progress.close()
    table = Table("variant", "change", "accuracy", "Δ vs full", "published", "published Δ", title=plan.title)
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
    console.print(f"data: {ablation['data']['source']} ({ablation['data']['split']} split)  -> {out}")
    if not no_report:
        from fmnist.report import write_report

        console.print(f"report: {write_report(out)}")
