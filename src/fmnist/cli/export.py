"""`fmnist export`: ONNX or TorchScript, checked against PyTorch before the file is written."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption, RunDirArgument, choice, value
from fmnist.cli.output import console, notify, steps_progress

Format = choice("Format", ("onnx", "torchscript"))


def export_cmd(
    run_dir: Path = RunDirArgument,
    fmt: Format = typer.Option("onnx", "--format", "-f", help="File format"),
    int8: bool = typer.Option(False, "--int8", help="Quantise to int8 (reports accuracy before and after)"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output file [default: RUN_DIR/model[.int8].onnx or .torchscript.pt]"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Export to ONNX or TorchScript; checked against PyTorch on test images before writing."""
    from fmnist.inference.export import ExportPlan

    plan = ExportPlan(run_dir, value(fmt), int8=int8, out=out, data_dir=str(data_dir) if data_dir else None,
                      notify=notify)  # fmt: skip
    steps = plan.steps()
    progress, task = steps_progress(len(steps), "export")
    with progress:
        for label, do in steps:
            progress.update(task, description=label)
            do()
            progress.advance(task)
    report = plan.report
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(f"wrote {report['file']} ({report['size_bytes'] / 1e6:.2f} MB, {report['format']}, "
                  f"test-time augmentation {report['tta']}, in the graph)")  # fmt: skip
    console.print(f"check vs PyTorch on {report['check_images']} test images: max |logit diff| "
                  f"{report['max_abs_logit_diff']:.2e}, top-1 agreement {100 * report['top1_agreement']:.2f}%")  # fmt: skip
    if int8:
        table = Table("", "fp32", "int8", title="int8 quantisation", title_justify="left")
        table.add_row(
            "test accuracy", f"{100 * report['test_accuracy_fp32']:.2f}%", f"{100 * report['test_accuracy_int8']:.2f}%"
        )
        table.add_row("file size", f"{report['fp32_size_bytes'] / 1e6:.2f} MB", f"{report['size_bytes'] / 1e6:.2f} MB")
        console.print(table)
        console.print(f"{accuracy_change(report['accuracy_drop_pp'])}; int8 agrees with fp32 on "
                      f"{100 * report['int8_top1_agreement']:.2f}% of top-1")  # fmt: skip


def accuracy_change(drop_pp: float) -> str:
    """What int8 did to test accuracy, in words that cannot be misread: a gain is never a "drop +0.09"."""
    if round(drop_pp, 2) == 0:
        return "int8 keeps fp32's test accuracy (limit: a loss of 0.5 percentage points)"
    if drop_pp < 0:
        return f"int8 gains {-drop_pp:.2f} percentage points of test accuracy (limit: a loss of 0.5)"
    return f"int8 loses {drop_pp:.2f} percentage points of test accuracy (limit 0.5)"
