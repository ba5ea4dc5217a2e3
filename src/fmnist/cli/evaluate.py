"""`fmnist evaluate`: score a run's checkpoint on the test split again."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption
from fmnist.cli.output import console, err_console, notify


def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory with model.json and model.safetensors"),
    out: Path | None = typer.Option(None, "--out", "-o", help="JSON file [default: RUN_DIR/evaluation.json]"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Test accuracy, loss, per-class precision/recall/F1 and the most-confused pairs."""
    from fmnist.fsutil import atomic_write_json
    from fmnist.inference.evaluate import evaluate_run

    evaluation, info = evaluate_run(run_dir, str(data_dir) if data_dir else None, notify=notify)
    console.print(f"{info['model']}: test accuracy {100 * evaluation.accuracy:.2f}%  loss {evaluation.loss:.4f}  "
                  f"({evaluation.num_images:,} images, {info['data']['split']} split)")  # fmt: skip
    table = Table("class", "accuracy", "precision", "recall", "F1", "correct/total")
    for row in sorted(evaluation.per_class, key=lambda r: -r["accuracy"]):
        table.add_row(row["name"], f"{100 * row['accuracy']:.1f}%", f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                      f"{row['f1']:.3f}", f"{row['correct']}/{row['support']}")  # fmt: skip
    console.print(table)
    pairs = Table("true", "predicted as", "count", "% of true class", title="Most confused pairs", title_justify="left")
    for p in evaluation.most_confused:
        pairs.add_row(p["true"], p["predicted"], str(p["count"]), f"{100 * p['fraction_of_true']:.1f}%")
    console.print(pairs)
    target = out or Path(run_dir) / "evaluation.json"
    atomic_write_json(target, {**info, **evaluation.to_dict()})
    err_console.print(f"wrote {target}")
