"""`fmnist train`: a thin layer over `fmnist.api.train` / `resume` / `run_plan`."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from fmnist.cli.options import (
    ConfigFileOption,
    DataDirOption,
    JobsOption,
    ModelArgOption,
    NoReportOption,
    OverwriteOption,
    RayOption,
    RunOutOption,
    SeedsOption,
    ShowConfigOption,
    ray_address,
    recipe_default,
    training_settings,
)
from fmnist.cli.output import console, err_console, notify, print_comparison, report_with_progress, say
from fmnist.config import RawSettings, Settings, parse_model_args
from fmnist.errors import UsageError
from fmnist.training.results import RunInfo, TrainCallback


@training_settings(recipe_default, after="config")
def train_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", show_default=False, help="Registered model name, see `fmnist models` [default: fastcnn]"
    ),  # fmt: skip
    out: Path | None = RunOutOption,
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        "-r",
        show_default=False,
        help="A named recipe: model and settings (see `fmnist recipes`); flags win",
    ),  # fmt: skip
    config: Path | None = ConfigFileOption,
    model_arg: list[str] | None = ModelArgOption,
    overwrite: bool = OverwriteOption,
    resume: Path | None = typer.Option(
        None, "--resume", metavar="RUN_DIR", show_default=False, help="Continue an interrupted run in RUN_DIR"
    ),  # fmt: skip
    seeds: int = SeedsOption,
    no_report: bool = NoReportOption,
    show_config: bool = ShowConfigOption,
    ray: str | None = RayOption,
    jobs: int | None = JobsOption,
    data_dir: Path | None = DataDirOption,
    settings: Settings | None = None,
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
        if show_config:
            from fmnist.config import load_config_file
            from fmnist.inference.rundir import CONFIG_FILE

            say(load_config_file(resume / CONFIG_FILE).describe())
            return
        run = _with_ctrl_c(lambda stop: api.resume(resume, data=api.load_data(data_dir, notify=notify), stop=stop,
                                                   progress=console, callbacks=[SayResume()]))  # fmt: skip
        _say_result(run, report=not no_report)
        return
    options: RawSettings = dict(settings or {})
    if model_arg:
        options["model_args"] = parse_model_args(model_arg)  # key by key over the file's and the recipe's
    cfg = api.make_config(model, recipe=recipe, config_file=config, **options)
    if show_config:
        say(cfg.describe())
        return
    if seeds > 1:
        from fmnist.experiments.plan import ComparePlan, RunSpec

        plan = ComparePlan([RunSpec(cfg.model, {}, resolved=cfg)], seeds=seeds, title=f"{cfg.model} over {seeds} seeds")
        session = api.make_session(out, f"{cfg.model}-seeds", data_dir=data_dir, progress=console, notify=notify,
                                   ray=ray_address(ray), jobs=jobs)  # fmt: skip
        comparison = api.run_plan(plan, plan.resolve(), session, report=False)
        print_comparison(comparison, plan.title)
        if not no_report:
            say(f"report: {report_with_progress(comparison, data_dir=data_dir)}")
        return
    data = api.load_data(data_dir, notify=notify)
    run = _with_ctrl_c(lambda stop: api.train(config=cfg, out=out, data=data, overwrite=overwrite, stop=stop,
                                              progress=console))  # fmt: skip
    _say_result(run, report=not no_report)


class SayResume(TrainCallback):
    def on_start(self, info: RunInfo) -> None:
        if info.step:
            err_console.print(f"resuming {info.config.model} at epoch {info.epoch}, step {info.step}")
        else:
            err_console.print(f"no saved state yet (stopped in its first epoch); starting {info.config.model} "
                              "from the beginning")  # fmt: skip


def _with_ctrl_c(train):
    """Run `train(stop)`: the first Ctrl-C finishes the step, saves and exits 130; a second stops at once."""
    from fmnist.training.results import StopSignal

    stop = StopSignal()

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        err_console.print("stopping after this step and saving state (Ctrl-C again to abort)…")
        stop.request()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        return train(stop)
    finally:
        signal.signal(signal.SIGINT, previous)


def _say_result(run, report: bool) -> None:
    """The result as soon as the test set is scored; then the report (some seconds), with progress."""
    r = run.record.results
    compiling = f" (+{r.compile_seconds:.1f}s compiling)" if r.compiled else ""
    say(f"{r.model}: test accuracy {100 * r.test_accuracy:.2f}%  loss {r.test_loss:.4f}  "
        f"{r.trained_words()}  {r.train_seconds:.1f}s{compiling}  -> {run.path}")  # fmt: skip
    steps = r.smoke_steps
    if steps is not None:
        notify(f"smoke run: {steps:,} steps, not a trained model")
    if report:
        say(f"report: {report_with_progress(run)}")
