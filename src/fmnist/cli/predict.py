"""`fmnist predict`: classify photos or arrays with a trained run or ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import Backend, BackendOption, Precision, PrecisionOption, RunDirArgument, value
from fmnist.cli.output import console, err_console, steps_progress


def predict_cmd(
    run_dir: Path = RunDirArgument,
    images: list[Path] = typer.Argument(..., help="Image files (PNG/JPEG/WebP/..., .npy 28x28) or folders of them"),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, max=10, help="How many classes to show per image"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
    no_preprocess: bool = typer.Option(
        False, "--no-preprocess", help="Images are already 28x28, light item on black (Fashion-MNIST's form)"
    ),
    backend: Backend = BackendOption,
    precision: Precision = PrecisionOption,
) -> None:
    """Classify images; photos are converted to Fashion-MNIST's form first (see --no-preprocess)."""
    import numpy as np

    from fmnist.data.photos import ImageError, collect_image_paths, load_image
    from fmnist.inference.predict import Predictor, top_classes

    predictor = Predictor(run_dir, backend=value(backend), precision=value(precision))
    paths, problems = collect_image_paths(images)
    failures: list[tuple[str, str]] = [(str(p), msg) for p, msg in problems]
    loaded: list[tuple[str, np.ndarray]] = []
    progress, task = steps_progress(len(paths), "reading images")
    with progress:
        for path in paths:
            try:
                loaded.append((str(path), load_image(path, preprocess=not no_preprocess)))
            except ImageError as exc:
                failures.append((str(path), str(exc)))
            progress.advance(task)
    results = []
    if loaded:
        probabilities = predictor.probabilities(np.stack([image for _, image in loaded]))
        for (name, _), row in zip(loaded, probabilities):
            results.append({"file": name, "top": top_classes(row, predictor.class_names, top_k)})

    for name, message in failures:  # one line per bad file; the rest are still reported
        err_console.print(f"error: {name}: {message}", markup=False, soft_wrap=True)
    if as_json:
        payload = {"model": predictor.meta["model"], "predictions": results,
                   "errors": [{"file": n, "error": m} for n, m in failures]}  # fmt: skip
        print(json.dumps(payload, indent=2))
    elif results:
        table = Table(title=f"{predictor.meta['model']} predictions")
        table.add_column("file", overflow="fold")  # wrap long paths rather than cut them
        for i in range(top_k):
            table.add_column(f"#{i + 1}", no_wrap=True)
        for r in results:
            cells = [f"{c['label']} {100 * c['probability']:.1f}%" for c in r["top"]]
            table.add_row(r["file"], *cells)
        console.print(table)
    if failures:
        raise typer.Exit(1)
