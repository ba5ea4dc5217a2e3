"""`fmnist predict`: classify photos or arrays with a trained run or ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.options import Backend, BackendOption, Precision, PrecisionOption, RunDirArgument, choice, value
from fmnist.cli.output import console, err_console, say, steps_progress

OodMode = choice("OodMode", ("off", "warn", "reject"))  # fmnist.inference.predict.OOD_MODES


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
    ood: OodMode = typer.Option(
        "warn",
        "--ood",
        help="Images unlike Fashion-MNIST (above the run's threshold): off, warn (mark them "
        "unknown, still show their classes) or reject (mark them unknown, show no class; exit status unchanged)",
    ),
    coverage: float | None = typer.Option(
        None,
        "--coverage",
        min=0.01,
        max=0.99,
        show_default=False,
        help="Add each image's prediction set: the classes that hold the true one with this probability (e.g. "
        "0.9); an empty set means no class is reliable enough at this coverage",
    ),
    explain: Path | None = typer.Option(
        None,
        "--explain",
        metavar="DIR",
        show_default=False,
        help="Also write DIR/NAME.html per image: the 28x28 image the model received, its Grad-CAM, OOD score "
        "and the 5 nearest training images (the first use reads the dataset [env: FMNIST_DATA] and caches "
        "their features in the run)",
    ),
) -> None:
    """Classify images; photos are converted to Fashion-MNIST's form first (see --no-preprocess).

    Probabilities are calibrated by the run's temperature (fitted on its validation images)."""
    import numpy as np

    from fmnist.data.photos import ImageError, collect_image_paths, load_image
    from fmnist.inference.predict import Predictor, assessed_rows

    if explain is not None:  # a bad folder fails in one line before the model loads
        from fmnist.inference.explain_page import check_folder

        explain = check_folder(explain)
    predictor = Predictor(run_dir, backend=value(backend), precision=value(precision))
    if explain is not None:
        from fmnist.inference.explain import require_network

        require_network(predictor)
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
    trust, mode = predictor.trust, value(ood)
    results = []
    if loaded:
        assessment = predictor.assess(np.stack([image for _, image in loaded]), coverage)
        rows = assessed_rows(assessment, predictor.class_names, top_k, mode)
        results = [{"file": name, **row} for (name, _), row in zip(loaded, rows)]

    if explain is not None and loaded:
        from fmnist.cli.explain import write_explanations

        for row, page in zip(results, write_explanations(predictor, loaded, explain)):
            row["explanation"] = str(page)
    for name, message in failures:  # one line per bad file; the rest are still reported
        err_console.print(f"error: {name}: {message}", markup=False, soft_wrap=True)
    if as_json:
        calibration = {"temperature": trust.temperature, "ood": mode, "ood_method": trust.record.ood_method or None,
                       "ood_threshold": trust.record.ood_threshold if mode != "off" else None,
                       "coverage": coverage if trust.has_sets else None, "note": trust.note or None}  # fmt: skip
        payload = {"model": predictor.meta["model"], "calibration": calibration, "predictions": results,
                   "errors": [{"file": n, "error": m} for n, m in failures]}  # fmt: skip
        print(json.dumps(payload, indent=2))
    elif results:
        console.print(_table(predictor.meta["model"], results, top_k, coverage))
        if trust.note:  # below the table (--json: calibration.note); stderr holds errors only
            say(f"note: {trust.note}")
    if failures:
        raise typer.Exit(1)


def _table(model: str, results: list[dict], top_k: int, coverage: float | None) -> Table:
    table = Table(title=f"{model} predictions")
    table.add_column("file", overflow="fold")  # wrap long paths rather than cut them
    flags = any(r["unknown"] is not None for r in results)
    sets = any(r["set"] is not None for r in results)
    if flags:
        table.add_column("known?", no_wrap=True)
    for i in range(top_k):
        table.add_column(f"#{i + 1}", no_wrap=True)
    if sets:
        table.add_column(f"set at {100 * coverage:g}%")
    for r in results:
        cells = [f"{c['label']} {100 * c['probability']:.1f}%" for c in r["top"]]
        cells += [""] * (top_k - len(cells))  # --ood reject: an unknown image shows no class
        flag = [f"unknown ({r['ood_score']:.1f})" if r["unknown"] else "yes"] if flags else []
        members = [(", ".join(r["set"]) or "(empty: no class is reliable enough)") if r["set"] is not None else ""]
        table.add_row(r["file"], *flag, *cells, *(members if sets else []))
    return table
