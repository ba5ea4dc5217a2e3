"""`fmnist train`: a thin layer over `fmnist.api.train` / `resume` / `run_plan`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import tomllib
import typer

from fmnist.cli.app import app, console, err_console
from fmnist.cli.choices import Device, Optimizer, Precision, Scheduler, Tta, value
from fmnist.cli.data import DataDirOption
from fmnist.cli.sweep import JobsOption, RayOption, ray_address
from fmnist.config import TrainConfig
from fmnist.errors import UsageError
from fmnist.models.cnn import FASTCNN_RECIPE
from fmnist.training.results import RunInfo, TrainCallback


def recipe_default(key: str) -> str:
    """Help text for a value the model's recipe may set: the built-in default and fastcnn's."""
    base = getattr(TrainConfig(), key)
    if key in FASTCNN_RECIPE and FASTCNN_RECIPE[key] != base:
        return f"[default: from the model's recipe; fastcnn: {FASTCNN_RECIPE[key]}, else {base}]"
    return f"[default: {base}, unless the model's recipe sets it]"


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """`--model-arg hidden=[512,256]` pairs; values are TOML (numbers, booleans, lists) or text."""
    args: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            parsed = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = raw
        args[key.strip()] = parsed
    return args


def _opt(flag: str, key: str, text: str = "", **kw: Any) -> Any:
    return typer.Option(None, flag, help=f"{text} {recipe_default(key)}".strip(), show_default=False, **kw)


@app.command("train")
def train_cmd(
    model: str | None = typer.Option(None, "--model", "-m", show_default=False,
                                     help="Registered model name, see `fmnist models` [default: fastcnn]"),  # fmt: skip
    out: Path | None = typer.Option(None, "--out", "-o", show_default=False,
                                    help="Run directory [default: runs/MODEL-TIMESTAMP]"),  # fmt: skip
    recipe: str | None = typer.Option(None, "--recipe", "-r", show_default=False,
                                      help="A named recipe: model and settings (see `fmnist recipes`); flags win"),  # fmt: skip
    config: Path | None = typer.Option(None, "--config", "-c", show_default=False,
                                       help="TOML file with any of the options below (flags win)"),  # fmt: skip
    epochs: int | None = _opt("--epochs", "epochs", "Passes over the training split."),
    batch_size: int | None = _opt("--batch-size", "batch_size", "Images per step."),
    optimizer: Optimizer | None = _opt("--optimizer", "optimizer", "sgd is SGD with Nesterov momentum."),
    lr: float | None = _opt("--lr", "lr", "Learning rate (the peak for onecycle)."),
    weight_decay: float | None = _opt("--weight-decay", "weight_decay", "Decoupled for adamw."),
    scheduler: Scheduler | None = _opt("--scheduler", "scheduler", "Learning-rate schedule."),
    label_smoothing: float | None = _opt("--label-smoothing", "label_smoothing", "Target smoothing."),
    flip: bool | None = _opt("--flip/--no-flip", "flip", "Random horizontal flips."),
    crop_pad: int | None = typer.Option(None, "--crop-pad", "--translate", show_default=False,
                                        help="Pad by N pixels and crop back: a random shift of up to N pixels. "
                                        + recipe_default("crop_pad")),  # fmt: skip
    erase: float | None = _opt("--erase", "erase", "Random-erasing probability."),
    mixup: float | None = _opt("--mixup", "mixup", "Mixup alpha (0 = off)."),
    cutmix: float | None = _opt("--cutmix", "cutmix", "CutMix alpha (0 = off)."),
    ema: float | None = _opt("--ema", "ema", "Weight EMA decay, e.g. 0.999 (0 = off)."),
    tta: Tta | None = _opt("--tta", "tta", "Test-time augmentation."),
    normalize: bool | None = _opt("--normalize/--no-normalize", "normalize", "Standardise inputs."),
    val_size: int | None = _opt("--val-size", "val_size", "Validation images held out."),
    split_seed: int | None = _opt("--split-seed", "split_seed",
                                  "Seed of the validation hold-out; one value for runs an ensemble will compare (-1 = --seed)."),  # fmt: skip
    early_stopping: int | None = _opt("--early-stopping", "early_stopping", "Patience in epochs (0 = off)."),
    seed: int | None = _opt("--seed", "seed", "Seed of every random draw."),
    device: Device | None = _opt("--device", "device", "Where to train."),
    precision: Precision | None = _opt("--precision", "precision", "auto: bf16 where the CPU has it natively."),
    deterministic: bool | None = _opt("--deterministic", "deterministic", "Deterministic GPU kernels (slower)."),
    max_steps: int | None = _opt("--max-steps", "max_steps", "Smoke mode: stop after N steps (0 = off)."),
    tensorboard: bool | None = _opt("--tensorboard", "tensorboard", "TensorBoard scalars in RUN_DIR/tensorboard."),
    model_arg: list[str] | None = typer.Option(None, "--model-arg", metavar="KEY=VALUE", show_default=False,
                                               help="Model argument, repeatable (see `fmnist models`)"),  # fmt: skip
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in --out"),
    resume: Path | None = typer.Option(None, "--resume", metavar="RUN_DIR", show_default=False,
                                       help="Continue an interrupted run in RUN_DIR"),  # fmt: skip
    seeds: int = typer.Option(1, "--seeds", min=1, help="Repeat with N seeds (seed, seed+1, ...): mean ± std"),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write the report (report.html + report.md)"),
    ray: str | None = RayOption,
    jobs: int | None = JobsOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Train one model into a run directory (config, metrics, checkpoint, results)."""
    from fmnist import api

    if ray and seeds == 1:
        raise UsageError("--ray runs the seeds of `--seeds N` (N > 1) as Ray tasks; a single run trains here")
    if jobs and jobs > 1 and seeds == 1:
        raise UsageError("--jobs trains the seeds of `--seeds N` (N > 1) side by side; a single run uses every thread")

    if resume is not None:
        if any(v is not None for v in (model, out, config)):
            raise UsageError("--resume takes the settings saved in the run directory; drop --model/--out/--config")
        _with_ctrl_c(lambda stop: api.resume(resume, data=api.load_data(data_dir, notify=_notify), stop=stop,
                                             progress=console, report=not no_report, callbacks=[SayResume()]))  # fmt: skip
        return
    options = {
        "epochs": epochs, "batch_size": batch_size, "optimizer": value(optimizer), "lr": lr,
        "weight_decay": weight_decay, "scheduler": value(scheduler), "label_smoothing": label_smoothing,
        "flip": flip, "crop_pad": crop_pad, "erase": erase, "mixup": mixup, "cutmix": cutmix, "ema": ema, "tta": value(tta), "normalize": normalize,
        "val_size": val_size, "split_seed": split_seed, "early_stopping": early_stopping, "seed": seed, "device": value(device),
        "precision": value(precision), "deterministic": deterministic, "max_steps": max_steps,
        "tensorboard": tensorboard,
    }  # fmt: skip
    extra_args = parse_model_args(model_arg)
    if extra_args:
        file_args = tomllib.loads(config.read_text()).get("model_args", {}) if config and config.is_file() else {}
        options["model_args"] = {**file_args, **extra_args}
    cfg = api.make_config(model, recipe=recipe, config_file=config, **options)
    if seeds > 1:
        from fmnist.experiments.compare import ComparePlan, RunSpec

        plan = ComparePlan([RunSpec(cfg.model, cfg.to_dict())], seeds=seeds, title=f"{cfg.model} over {seeds} seeds")
        comparison = api.run_plan(plan, out or api.RUNS_ROOT / f"{cfg.model}-seeds-{api._timestamp()}",
                                  progress=console, report=not no_report, data_dir=data_dir,
                                  notify=_notify, ray=ray_address(ray), jobs=jobs)  # fmt: skip
        from fmnist.cli.compare import print_comparison

        print_comparison(comparison, plan.title)
        return
    data = api.load_data(data_dir, notify=_notify)
    _with_ctrl_c(lambda stop: api.train(config=cfg, out=out, data=data, overwrite=overwrite, stop=stop,
                                        progress=console, report=not no_report))  # fmt: skip


class SayResume(TrainCallback):
    def on_start(self, info: RunInfo) -> None:
        if info.step:
            err_console.print(f"resuming {info.config.model} at epoch {info.epoch}, step {info.step}")
        else:
            err_console.print(f"no saved state yet (stopped in its first epoch); starting {info.config.model} "
                              "from the beginning")  # fmt: skip


def _notify(message: str) -> None:
    err_console.print(message, markup=False)


def _with_ctrl_c(train) -> None:
    """Run `train(stop)`: the first Ctrl-C finishes the step, saves and exits 130; a second stops at once."""
    from fmnist.training.results import StopSignal

    stop = StopSignal()

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        err_console.print("stopping after this step and saving state (Ctrl-C again to abort)…")
        stop.request()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        run = train(stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    r = run.results
    console.print(f"{r['model']}: test accuracy {100 * r['test_accuracy']:.2f}%  loss {r['test_loss']:.4f}  "
                  f"best epoch {r['best_epoch']}/{r['epochs_run']}  {r['train_seconds']:.1f}s  -> {run.path}",
                  markup=False, highlight=False)  # fmt: skip
    report = run.path / "report.html"
    if report.is_file():
        console.print(f"report: {report}", markup=False, highlight=False)
