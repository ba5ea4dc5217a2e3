"""`fmnist distill TEACHER`: `fmnist train` with a teacher to learn from (fmnist.training.distill)."""

from __future__ import annotations

from pathlib import Path

import typer

from fmnist.cli import train
from fmnist.cli.options import (
    ConfigFileOption,
    DataDirOption,
    JobsOption,
    ModelArgOption,
    NoReportOption,
    OverwriteOption,
    RunOutOption,
    SeedsOption,
    ShowConfigOption,
    recipe_default,
    training_settings,
)
from fmnist.config import Settings

TeacherArgument = typer.Argument(..., metavar="TEACHER", show_default=False,
                                 help="Run or ensemble directory whose probabilities the student learns from")  # fmt: skip


@training_settings(recipe_default, after="config", leave_out=("teacher",))
def distill_cmd(
    teacher: Path = TeacherArgument,
    model: str | None = typer.Option(
        None, "--model", "-m", show_default=False, help="The student: a registered model name [default: fastcnn]"
    ),  # fmt: skip
    out: Path | None = RunOutOption,
    recipe: str | None = typer.Option(
        None, "--recipe", "-r", show_default=False, help="The student's recipe (see `fmnist recipes`); flags win"
    ),  # fmt: skip
    config: Path | None = ConfigFileOption,
    model_arg: list[str] | None = ModelArgOption,
    overwrite: bool = OverwriteOption,
    seeds: int = SeedsOption,
    no_report: bool = NoReportOption,
    show_config: bool = ShowConfigOption,
    jobs: int | None = JobsOption,
    data_dir: Path | None = DataDirOption,
    settings: Settings | None = None,
) -> None:
    """Train a student on a teacher's probabilities mixed with the labels (a run directory like `fmnist train`'s).

    The teacher (a run or an `fmnist ensemble` directory) must have held out this run's validation
    images; its members' training time is recorded beside the student's (results.json: teacher).
    `fmnist train --resume RUN_DIR` continues an interrupted distillation.
    """
    train.train_cmd.__wrapped__(
        model=model, out=out, recipe=recipe, config=config, model_arg=model_arg, overwrite=overwrite, resume=None,
        seeds=seeds, no_report=no_report, show_config=show_config, ray=None, jobs=jobs, data_dir=data_dir,
        settings={**(settings or {}), "teacher": str(teacher)},
    )  # fmt: skip
