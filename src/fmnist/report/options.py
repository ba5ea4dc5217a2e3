"""Report options and their defaults, in one light module the command line can import too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmnist.analysis.embeddings import METHODS as EMBEDDING_METHODS

DETAIL_LEVELS = ("first-seed", "all")
__all__ = ["DETAIL_LEVELS", "EMBEDDING_METHODS", "ReportOptions"]


@dataclass
class ReportOptions:
    data_dir: str | Path | None = None  # where the test images are; default: where the run found them
    embedding: str = "auto"  # "auto" (UMAP if installed, else t-SNE), "tsne", "umap" or "none"
    embedding_points: int = 1000  # t-SNE on a class-stratified subsample keeps the report fast
    gradcam: bool = True
    detail: str = "first-seed"  # which runs get model-level analysis: "first-seed" per model, or "all"
    markdown: bool = True
    html: bool = True
    seed: int = 0  # for the random picks (samples shown, subsample): the same report every time
