"""`fmnist report`: (re)write a run's or a comparison's report."""

from __future__ import annotations

from pathlib import Path

import typer

from fmnist.cli.options import DataDirOption, choice, value
from fmnist.cli.output import console
from fmnist.report.options import DETAIL_LEVELS, EMBEDDING_METHODS, ReportOptions

Embedding = choice("Embedding", EMBEDDING_METHODS)
Detail = choice("Detail", DETAIL_LEVELS)


def report_cmd(
    folder: Path = typer.Argument(..., help="A run, compare or ensemble directory", show_default=False),
    embedding: Embedding = typer.Option(
        "auto", "--embedding", help="2-D map of the embeddings (auto: UMAP if installed, else t-SNE)"
    ),
    embedding_points: int = typer.Option(
        ReportOptions.embedding_points, "--embedding-points", help="Test images in the 2-D embedding"
    ),
    gradcam: bool = typer.Option(True, "--gradcam/--no-gradcam", help="Grad-CAM heatmaps for CNNs"),
    detail: Detail = typer.Option("first-seed", "--detail", help="Model-level analysis for the first seed or all runs"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """(Re)write report.html (self-contained) and report.md + figures/ for a run or comparison."""
    from fmnist.report import write_report

    path = write_report(folder, embedding=value(embedding), embedding_points=embedding_points, gradcam=gradcam,
                        detail=value(detail), data_dir=data_dir)  # fmt: skip
    console.print(f"report: {path}", markup=False, highlight=False)
