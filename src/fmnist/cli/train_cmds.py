"""`fmnist models|train|evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib
import typer
from rich.table import Table

from fmnist.cli.app import app, console, err_console
from fmnist.cli.data_cmds import DataDirOption, load, notify
from fmnist.errors import UsageError


@app.command("models")
def models_cmd() -> None:
    """List every registered model with its parameter count and size."""
    from fmnist.models.classical import LINEAR_MODELS
    from fmnist.models.registry import count_parameters, create_model, get_entry, list_models, model_size_mb

    table = Table("model", "family", "params", "size (MB)", "description")
    for name in list_models():
        model = create_model(name)
        entry = get_entry(name)
        if entry.family == "classical" and name not in LINEAR_MODELS:
            table.add_row(name, entry.family, "-", "-", entry.description)  # no tensor form to count
            continue
        table.add_row(name, entry.family, f"{count_parameters(model):,}", f"{model_size_mb(model):.2f}", entry.description)
    console.print(table)


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """`--model-arg hidden=[512,256]` pairs; values are TOML (numbers, booleans, lists) or text."""
    args: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        args[key.strip()] = value
    return args


# Options shared by `train` and `compare`: None means "not given", so recipes and files apply.
def training_overrides(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command("train")
def train_cmd(
    model: str | None = typer.Option(None, "--model", "-m", help="Registered model name (see `fmnist models`)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<model>-<timestamp>]"),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file with any of the options below"),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adam, adamw or sgd (Nesterov)"),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (peak rate for onecycle)"),
    weight_decay: float | None = typer.Option(None, "--weight-decay"),
    scheduler: str | None = typer.Option(None, "--scheduler", help="none, plateau, onecycle or cosine"),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing"),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips"),
    translate: int | None = typer.Option(None, "--translate", help="Random shift of up to N pixels"),
    erase: float | None = typer.Option(None, "--erase", help="Random-erasing probability"),
    tta_flip: bool | None = typer.Option(None, "--tta/--no-tta", help="Average predictions over mirror images"),
    normalize: bool | None = typer.Option(None, "--normalize/--no-normalize", help="Standardise inputs"),
    val_size: int | None = typer.Option(None, "--val-size", help="Validation images held out of training"),
    early_stopping: int | None = typer.Option(None, "--early-stopping", help="Patience in epochs (0 = off)"),
    seed: int | None = typer.Option(None, "--seed"),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda"),
    precision: str | None = typer.Option(None, "--precision", help="auto, fp32 or bf16"),
    deterministic: bool | None = typer.Option(None, "--deterministic", help="Deterministic GPU kernels (slower)"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Smoke mode: stop after N steps"),
    model_arg: list[str] | None = typer.Option(None, "--model-arg", help="Model argument KEY=VALUE (repeatable)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in --out"),
    resume: Path | None = typer.Option(None, "--resume", help="Continue an interrupted run in this directory"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Repeat with N seeds (seed, seed+1, ...): mean ± std"),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write the report (report.html + report.md)"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Train one model; writes config, metrics.jsonl, checkpoint and results.json to the run directory."""
    from datetime import datetime

    from fmnist.config import build_config, read_toml

    if resume is not None:
        if any(v is not None for v in (model, out, config)):
            raise UsageError("--resume takes the settings saved in the run directory; drop --model/--out/--config")
        run_training(None, resume, data_dir, no_report, resume=True)
        return
    file_values = read_toml(config) if config else {}
    cli_values = training_overrides(
        model=model, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        scheduler=scheduler, label_smoothing=label_smoothing, flip=flip, translate=translate, erase=erase,
        tta_flip=tta_flip, normalize=normalize, val_size=val_size, early_stopping=early_stopping, seed=seed,
        device=device, precision=precision, deterministic=deterministic, max_steps=max_steps,
    )  # fmt: skip
    extra_args = parse_model_args(model_arg)
    if extra_args:
        cli_values["model_args"] = {**file_values.get("model_args", {}), **extra_args}
    cfg = build_config(file_values=file_values, cli_values=cli_values)
    out = out or Path("runs") / f"{cfg.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if seeds > 1:
        from fmnist.cli.compare_cmds import run_plan
        from fmnist.compare import ComparePlan, RunSpec

        plan = ComparePlan([RunSpec(cfg.model, cfg.to_dict())], seeds=seeds, title=f"{cfg.model} over {seeds} seeds")
        run_plan(plan, out, {}, data_dir, no_report)
        return
    run_training(cfg, out, data_dir, no_report, overwrite=overwrite)


def run_training(cfg, run_dir: Path, data_dir: Path | None, no_report: bool, *, resume: bool = False,
                 overwrite: bool = False) -> None:  # fmt: skip
    """Train (or resume) into `run_dir` with a live progress bar; Ctrl-C saves state and exits 130."""
    import signal

    from fmnist.classical import fit_classical, is_classical
    from fmnist.config import load_config_file
    from fmnist.progress import RichProgress
    from fmnist.runs import CONFIG_FILE, RESULTS_FILE, RunDirWriter, RunLock, prepare_run_dir
    from fmnist.state import has_state
    from fmnist.train import Trainer

    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise UsageError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); nothing to resume")
        if (run_dir / RESULTS_FILE).is_file():
            raise UsageError(f"{run_dir}: this run already finished; nothing to resume")
        cfg = load_config_file(run_dir / CONFIG_FILE)
    else:
        run_dir = prepare_run_dir(run_dir, overwrite=overwrite)
    dataset = load(data_dir or (Path(cfg.data_dir) if cfg.data_dir else None))
    progress = RichProgress(console)
    with RunLock(run_dir):
        if is_classical(cfg.model):  # scikit-learn baselines: one fit, nothing to resume
            try:
                result = fit_classical(cfg, dataset, [progress, RunDirWriter(run_dir)])
            finally:
                progress.close()
            _finish_training(cfg, result, run_dir, no_report)
            return
        trainer = Trainer(cfg, dataset, [progress, RunDirWriter(run_dir)], state_dir=run_dir)
        if resume and has_state(run_dir):
            trainer.resume()
            err_console.print(f"resuming {cfg.model} at epoch {trainer.epoch}, step {trainer.step}")
        elif resume:
            err_console.print(f"no saved state yet (stopped in its first epoch); starting {cfg.model} from the beginning")

        def on_interrupt(signum, frame):
            # First Ctrl-C: finish the step, save, exit 130. A second one stops at once.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            err_console.print("stopping after this step and saving state (Ctrl-C again to abort)…")
            trainer.request_stop()

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            result = trainer.run()
        finally:
            signal.signal(signal.SIGINT, previous)
            progress.close()
    _finish_training(cfg, result, run_dir, no_report)


def _finish_training(cfg, result, run_dir: Path, no_report: bool) -> None:
    console.print(
        f"{cfg.model}: test accuracy {100 * result.test_accuracy:.2f}%  loss {result.test.loss:.4f}  "
        f"best epoch {result.best_epoch}/{result.epochs_run}  {result.train_seconds:.1f}s  -> {run_dir}"
    )
    if not no_report:
        from fmnist.report import write_report

        console.print(f"report: {write_report(run_dir)}")


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory with model.json and model.safetensors"),
    out: Path | None = typer.Option(None, "--out", "-o", help="JSON file [default: RUN_DIR/evaluation.json]"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Test accuracy, loss, per-class precision/recall/F1 and the most-confused pairs."""
    from fmnist.evaluate import evaluate_run
    from fmnist.fsutil import atomic_write_json

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
