"""`fmnist predict|export|serve`: use a trained run on new images, ship it, serve it over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fmnist.cli.app import app, console, err_console
from fmnist.cli.data import DataDirOption, notify
from fmnist.serve.limits import DEFAULT_MAX_BODY_MB, DEFAULT_TIMEOUT_S

RunDirArgument = typer.Argument(..., help="Run directory with model.json and model.safetensors")
BackendOption = typer.Option("torch", "--backend", help="torch (PyTorch eager) or onnx (ONNX Runtime)")
PrecisionOption = typer.Option(
    "auto", "--precision", help="torch backend: auto (bf16 where the CPU has AMX, else fp32), fp32 or bf16"
)


def _check_precision(precision: str) -> None:
    from fmnist.errors import UsageError

    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--precision must be auto, fp32 or bf16, not {precision!r}")


def _progress(total: int | None, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    # stderr, so `--json` output on stdout stays clean; transient, so nothing is left behind.
    progress = Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal)
    return progress, progress.add_task(description, total=total)


@app.command("predict")
def predict_cmd(
    run_dir: Path = RunDirArgument,
    images: list[Path] = typer.Argument(..., help="Image files (PNG/JPEG/WebP/..., .npy 28x28) or folders of them"),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, max=10, help="How many classes to show per image"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
    no_preprocess: bool = typer.Option(
        False, "--no-preprocess", help="Images are already 28x28, light item on black (Fashion-MNIST's form)"
    ),
    backend: str = BackendOption,
    precision: str = PrecisionOption,
) -> None:
    """Classify images; photos are converted to Fashion-MNIST's form first (see --no-preprocess)."""
    import numpy as np

    from fmnist.predict import Predictor, top_classes
    from fmnist.data.photos import ImageError, collect_image_paths, load_image

    _check_precision(precision)
    predictor = Predictor(run_dir, backend=backend, precision=precision)
    paths, problems = collect_image_paths(images)
    failures: list[tuple[str, str]] = [(str(p), msg) for p, msg in problems]
    loaded: list[tuple[str, np.ndarray]] = []
    progress, task = _progress(len(paths), "reading images")
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


@app.command("export")
def export_cmd(
    run_dir: Path = RunDirArgument,
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript"),
    int8: bool = typer.Option(False, "--int8", help="Quantise to int8 (reports accuracy before and after)"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output file [default: RUN_DIR/model[.int8].onnx or .torchscript.pt]"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Export to ONNX or TorchScript; checked against PyTorch on test images before writing."""
    from fmnist.errors import UsageError
    from fmnist.export import FORMATS, export_run

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    steps = 7 if int8 else 5
    progress, task = _progress(steps, "export")
    with progress:

        def step(description: str) -> None:
            progress.update(task, description=description)
            progress.advance(task)

        report = export_run(run_dir, fmt, int8=int8, out=out, data_dir=str(data_dir) if data_dir else None,
                            step=step, notify=notify)  # fmt: skip
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(f"wrote {report['file']} ({report['size_bytes'] / 1e6:.2f} MB, {report['format']}, "
                  f"mirror averaging {report['tta_flip']})")  # fmt: skip
    console.print(f"check vs PyTorch on {report['check_images']} test images: max |logit diff| "
                  f"{report['max_abs_logit_diff']:.2e}, top-1 agreement {100 * report['top1_agreement']:.2f}%")  # fmt: skip
    if int8:
        table = Table("", "fp32", "int8", title="int8 quantisation", title_justify="left")
        table.add_row(
            "test accuracy", f"{100 * report['test_accuracy_fp32']:.2f}%", f"{100 * report['test_accuracy_int8']:.2f}%"
        )
        table.add_row("file size", f"{report['fp32_size_bytes'] / 1e6:.2f} MB", f"{report['size_bytes'] / 1e6:.2f} MB")
        console.print(table)
        console.print(f"accuracy drop {report['accuracy_drop_pp']:+.2f} percentage points "
                      f"(limit 0.5); int8 agrees with fp32 on {100 * report['int8_top1_agreement']:.2f}% of top-1")  # fmt: skip


@app.command("serve")
def serve_cmd(
    run_dir: Path = RunDirArgument,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless --allow-remote)"),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port (0 picks a free one)"),
    backend: str = BackendOption,
    precision: str = PrecisionOption,
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Permit binding a non-loopback address"),
    threads: int = typer.Option(1, "--threads", min=1, help="Inference threads (1 suits one image per request)"),
    max_body_mb: float = typer.Option(
        DEFAULT_MAX_BODY_MB, "--max-body-mb", min=0.001, help="Largest request body accepted (MB)"
    ),
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT_S, "--timeout", min=0.1,
        help="Seconds before an idle connection, a request's headers or a silent body time out",
    ),  # fmt: skip
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (costs throughput)"),
) -> None:
    """Serve the model over HTTP: /predict, /predict/batch, /health, /model, /docs and a web page at /."""
    from fmnist.serve.server import bind_socket, run_server

    _check_precision(precision)
    sock = bind_socket(host, port, allow_remote=allow_remote)  # fails before the model loads
    from fmnist.serve.app import create_app

    application = create_app(run_dir, backend=backend, threads=threads, precision=precision,
                             max_body_bytes=int(max_body_mb * 1_000_000), timeout_s=timeout)  # fmt: skip
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    console.print(f"serving {application.state.predictor.meta['model']} ({backend}) on http://{shown}:{bound_port}  "
                  f"(docs at /docs; Ctrl-C to stop)", soft_wrap=True)  # fmt: skip
    run_server(application, sock, access_log=access_log, timeout=timeout)
