"""Shared pieces of `fmnist predict|export|serve`."""

from __future__ import annotations

import typer

from fmnist.cli.app import err_console
from fmnist.cli.choices import choice

RunDirArgument = typer.Argument(..., help="Run or ensemble directory (model.json + model.safetensors, or ensemble.json)")
Backend = choice("Backend", ("torch", "onnx"))
BackendOption = typer.Option("torch", "--backend", help="torch (PyTorch eager) or onnx (ONNX Runtime)")
PrecisionOption = typer.Option("auto", "--precision",
                               help="torch backend: auto (bf16 where the CPU has it natively, else fp32), fp32 or bf16")  # fmt: skip


def steps_progress(total: int | None, description: str):
    """A transient bar on stderr (so `--json` on stdout stays clean), shown only on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    progress = Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal)
    return progress, progress.add_task(description, total=total)
