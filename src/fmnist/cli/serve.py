"""`fmnist serve`: the HTTP API and web page on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import typer

from fmnist.cli.options import Backend, BackendOption, Precision, PrecisionOption, RunDirArgument, value
from fmnist.cli.output import console
from fmnist.cli.predict import OodMode
from fmnist.serve.limits import DEFAULT_MAX_BODY_MB, DEFAULT_TIMEOUT_S, MAX_DEFAULT_WORKERS


def serve_cmd(
    run_dir: Path = RunDirArgument,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless --allow-remote)"),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port (0 picks a free one)"),
    backend: Backend = BackendOption,
    precision: Precision = PrecisionOption,
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Permit binding a non-loopback address"),
    threads: int = typer.Option(1, "--threads", min=1, help="Inference threads (1 suits one image per request)"),
    max_body_mb: float = typer.Option(
        DEFAULT_MAX_BODY_MB, "--max-body-mb", min=0.001, help="Largest request body accepted (MB)"
    ),
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT_S,
        "--timeout",
        min=0.1,
        help="Seconds before an idle connection, a request's headers or a silent body time out",
    ),  # fmt: skip
    ood: OodMode = typer.Option(
        "warn",
        "--ood",
        help="Images unlike Fashion-MNIST (above the run's threshold): off, warn (answer unknown: true, still "
        "with their classes) or reject (unknown: true, classes withheld)",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (costs throughput)"),
    workers: int = typer.Option(
        None,
        "--workers",
        "-w",
        min=1,
        show_default=False,
        help=f"Server processes sharing the port, each with its own model and limits "
        f"[default: one per CPU core, at most {MAX_DEFAULT_WORKERS}]",
    ),  # fmt: skip
) -> None:
    """Serve the model over HTTP: /predict, /predict/batch, /explain, /health, /model, /docs and a web page at /."""
    from fmnist.serve.server import BALANCED_PORT_SHARING, bind_socket, run_server
    from fmnist.serve.workers import default_workers, run_workers

    backend, precision, ood = value(backend), value(precision), value(ood)
    workers = workers or default_workers()
    # Fails before the model loads. With workers, each listens on a socket of its own where the
    # kernel balances them; this one then only holds the port (bound, not listening).
    own_sockets = workers > 1 and BALANCED_PORT_SHARING
    sock = bind_socket(host, port, allow_remote=allow_remote, reuse_port=own_sockets, listen=not own_sockets)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host

    def announce(model: str) -> None:
        processes = f"{workers} workers; " if workers > 1 else ""
        console.print(f"serving {model} ({backend}) on http://{shown}:{bound_port}  "
                      f"({processes}docs at /docs; Ctrl-C to stop)", soft_wrap=True)  # fmt: skip

    max_body_bytes = int(max_body_mb * 1_000_000)
    if workers > 1:
        settings = {"run_dir": str(run_dir), "backend": backend, "threads": threads, "precision": precision,
                    "max_body_bytes": max_body_bytes, "timeout": timeout, "access_log": access_log,
                    "ood": ood, "own_socket": own_sockets}  # fmt: skip
        raise typer.Exit(run_workers(sock, workers, settings, announce))
    from fmnist.serve.app import create_app

    application = create_app(run_dir, backend=backend, threads=threads, precision=precision,
                             max_body_bytes=max_body_bytes, timeout_s=timeout, ood=ood)  # fmt: skip
    announce(application.state.predictor.meta["model"])
    run_server(application, sock, access_log=access_log, timeout=timeout)
