"""`fmnist sweep`: a hyperparameter search on Ray Tune whose trials are ordinary fmnist runs.

The driver checks the config (fmnist.experiments.sweep_config), loads and checks the data,
starts or joins Ray, ships the data once, and lets Tune run `fmnist.experiments.sweep_trial.run_trial`
for each sampled config, with ASHA stopping weak trials early. Trials write their run
directories straight into the sweep folder; Tune keeps its experiment state and each trial's
epoch checkpoints under SWEEP_DIR/ray. At the end (or on Ctrl-C) the driver writes sweep.json
from the run directories and best.toml (`fmnist.api.sweep` then writes the report);
`--resume SWEEP_DIR` carries on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fmnist import __version__
from fmnist.data.dataset import ProvenanceRecord
from fmnist.errors import INTERRUPTED, DataError, FmnistError, UsageError
from fmnist.experiments.ray_runtime import LOCAL, require_ray
from fmnist.experiments.session import Notify, Session
from fmnist.experiments.sweep_config import (
    SweepSpec,
    format_metric,
    plain_value,
    read_sweep,
)
from fmnist.experiments.sweep_trial import NODE_HOST, NODE_ID, NODE_IP, trial_name
from fmnist.fsutil import atomic_write_text
from fmnist.inference.records import SweepBest, SweepFile, SweepTrial, TrialBest, TrialNode
from fmnist.inference.rundir import (
    BEST_FILE,
    CONFIG_FILE,
    RESULTS_FILE,
    SWEEP_FILE,
    TRIALS_DIR,
    TUNE_DIR,
    new_run_dir,
    read_history,
    read_results,
)
from fmnist.inference.rundir import SWEEP_SPEC_FILE as SPEC_FILE

# Tune's CSV and TensorBoard result logs would repeat what every run directory holds (and show
# up twice in `tensorboard --logdir SWEEP_DIR`); fmnist's progress display replaces its console output.
# Tune keeps only its JSON result log (its result objects read it); a snapshot of the experiment
# after each epoch's checkpoint is what --resume needs, so Tune's warning about their rate is off.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}  # fmt: skip
CHECKPOINTS_KEPT = 2  # per trial: the latest is what a retry needs; one more survives a crash while writing


class SweepInterrupted(FmnistError):
    exit_code = INTERRUPTED


class _TuneLog(logging.Handler):
    """Tune's log during a sweep. fmnist's display says what happens (a failed trial's traceback is
    in SWEEP_DIR/ray/trial-NNN/error.txt), so only Tune's notice that Ctrl-C was seen is kept."""

    def __init__(self, notify: Notify) -> None:
        super().__init__()
        self.notify = notify

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Stop signal received"):
            self.notify("stopping the trials and saving the sweep's state (Ctrl-C again to stop at once)…")


@contextmanager
def _tune_log(notify: Notify) -> Iterator[None]:
    logger = logging.getLogger("ray.tune")
    handler, propagate = _TuneLog(notify), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _resumable(sweep_dir: Path) -> SweepSpec:
    if not (sweep_dir / SPEC_FILE).is_file() or not (sweep_dir / TUNE_DIR).is_dir():
        raise UsageError(f"{sweep_dir}: not a sweep folder (no {SPEC_FILE} and {TUNE_DIR}/); nothing to resume")
    if (sweep_dir / SWEEP_FILE).is_file() and SweepFile.read(sweep_dir / SWEEP_FILE).complete:
        raise UsageError(f"{sweep_dir}: this sweep finished; nothing to resume")
    return read_sweep(sweep_dir / SPEC_FILE)


def _tuner(spec: SweepSpec, sweep_dir: Path, trainable: Any, resume: bool) -> Any:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from fmnist.experiments.sweep_progress import SweepEvents
    from fmnist.experiments.sweep_trial import trial_dirname

    if resume:
        return tune.Tuner.restore(str(sweep_dir / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True)
    s = spec.settings
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=spec.max_epochs, grace_period=s.grace_period,
                               reduction_factor=s.reduction_factor) if s.scheduler == "asha" else None)  # fmt: skip
    tune_config = tune.TuneConfig(
        metric=s.metric, mode=spec.mode, scheduler=scheduler, num_samples=s.num_samples,
        # The concurrency limit belongs to the generator: Tune ignores TuneConfig's for this search_alg.
        search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials),
        trial_name_creator=trial_dirname, trial_dirname_creator=trial_dirname, reuse_actors=True,
    )  # fmt: skip
    run_config = tune.RunConfig(
        name=TUNE_DIR, storage_path=str(sweep_dir), verbose=0, callbacks=[SweepEvents(), JsonLoggerCallback()],
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
    )  # fmt: skip
    return tune.Tuner(trainable, param_space=spec.param_space(), tune_config=tune_config, run_config=run_config)


def run_sweep(config_file: str | Path | None, session: Session, *, resume: str | Path | None = None,
              ray: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or, with `resume`, continue) a sweep in `session`; returns what sweep.json holds (see the module docstring).

    The sweep's folder is `session.out` (or runs/sweep-TIMESTAMP), made once the config and the data
    are checked; a resumed sweep keeps its own. The session's console shows the trials.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if resume is not None:
        if config_file is not None or session.out is not None or overrides:
            raise UsageError("--resume continues with the sweep's saved settings; drop the config, --out and options")
        sweep_dir = Path(resume).resolve()
        spec = _resumable(sweep_dir)
    elif config_file is None:
        raise UsageError("give a sweep config (CONFIG.toml) or --resume SWEEP_DIR")
    else:
        spec = read_sweep(Path(config_file), overrides)  # every check, before Ray or the data
    require_ray()
    from fmnist.experiments.ray_runtime import RaySession, dataset_digests, ship_dataset

    if not session.data_dir:  # the command named no data folder: the sweep config's, if it names one
        session.data_dir = spec.base_config.data_dir or None
    dataset = session.dataset
    digests = dataset_digests(dataset)
    if resume is not None:
        before = SweepFile.read(sweep_dir / SWEEP_FILE) if (sweep_dir / SWEEP_FILE).is_file() else None
        if before and before.data.get("array_sha256", digests) != digests:
            raise DataError(
                f"{sweep_dir}: these data differ from the ones the sweep started with; resume it with those"
            )
        started = before.started if before else None
    else:
        sweep_dir = new_run_dir(session.out, session.name, resume_hint="continue it with --resume").resolve()
        header = f"# fmnist sweep config, as run (from {config_file}); `fmnist sweep --resume` reads it\n"
        atomic_write_text(sweep_dir / SPEC_FILE, header + spec.to_toml())
        started = None
    meta = _sweep_header(spec, started or datetime.now().isoformat(timespec="seconds"), ray or LOCAL,
                         {**dataset.provenance.to_dict(), "array_sha256": digests})  # fmt: skip
    if resume is None:
        write_sweep_json(sweep_dir, spec, [], {}, meta)  # from the start: it records the data a resume must match

    from fmnist.experiments.sweep_progress import SweepDisplay, listening
    from fmnist.experiments.sweep_trial import run_trial

    carry_on = f"fmnist sweep --resume {sweep_dir}" + (f" --ray {ray}" if ray and ray != LOCAL else "")

    def head_lost(waited: float) -> str:  # finished trials are already on disk: each wrote its own run directory
        return (f"lost the Ray cluster's head at {ray} (no answer for {waited:.0f} s); the finished trials are in "
                f"{sweep_dir / TRIALS_DIR}; once the cluster is back, continue with: {carry_on}")  # fmt: skip

    with RaySession(ray or LOCAL, notify=session.notify, head_lost=head_lost), _env(TUNE_ENV):
        from ray import tune

        trainable = tune.with_parameters(run_trial, spec=spec, sweep_dir=str(sweep_dir), shipped=ship_dataset(dataset))
        trainable = tune.with_resources(
            trainable, {"cpu": spec.settings.cpus_per_trial, "gpu": spec.settings.gpus_per_trial}
        )
        display = SweepDisplay(session.console, spec, lambda trials: None)
        display.on_update = lambda trials: write_sweep_json(sweep_dir, spec, trials, display.final_outcome(), meta)
        with listening(display), _tune_log(session.notify):
            _tuner(spec, sweep_dir, trainable, resume is not None).fit()
        trials, outcome = display.trials, display.final_outcome()
    summary = write_sweep_json(sweep_dir, spec, trials, outcome, meta)
    if not summary.complete:
        left = spec.total_trials - sum(t.status != "unfinished" for t in summary.trials)
        raise SweepInterrupted(f"sweep interrupted with {left} of {spec.total_trials} trial(s) unfinished; "
                               f"continue it with: {carry_on}")  # fmt: skip
    if summary.best is None:
        raise FmnistError(f"{sweep_dir}: no trial reported {spec.settings.metric}; see {SWEEP_FILE} for why")
    write_best_toml(sweep_dir, summary)
    return {**summary.to_json(), "folder": str(sweep_dir)}


# -- sweep.json and best.toml -------------------------------------------------------------


def _trial_entry(spec: SweepSpec, sweep_dir: Path, trial: Any, outcome: dict[str, str]) -> SweepTrial:
    from fmnist.experiments.sweep_progress import failure_reason

    name, metric = trial_name(trial.trial_id), spec.settings.metric
    run_dir = sweep_dir / TRIALS_DIR / name
    history = read_history(run_dir)
    scored = [row for row in history if getattr(row, metric) is not None]
    pick = max if spec.mode == "max" else min
    best = pick(scored, key=lambda row: getattr(row, metric)) if scored else None
    last = trial.last_result or {}
    how = outcome.get(name)
    if how is None:
        status, why = "unfinished", (f"interrupted after epoch {len(history)}" if history else "not started yet")
    elif how == "failed":
        status, why = "failed", f"failed after {trial.num_failures} attempt(s): {failure_reason(trial)}"
    elif how == "done":
        early = (run_dir / RESULTS_FILE).is_file() and read_results(run_dir).stopped_early
        status, why = "finished", f"trained all {len(history)} epoch(s)" + (
            " (early stopping: no gain in validation accuracy)" if early else "")  # fmt: skip
    else:
        by = "the ASHA scheduler" if spec.settings.scheduler == "asha" else "Tune"
        status = "stopped"
        why = f"stopped by {by} after epoch {len(history)} ({metric} {format_metric(metric, last.get(metric))})"
    # Where its latest epoch ran (a retried trial: the node it finished on); None before any epoch.
    node = TrialNode(id=last[NODE_ID], ip=last.get(NODE_IP), hostname=last.get(NODE_HOST)) if NODE_ID in last else None
    return SweepTrial(name=name, trial_id=trial.trial_id, run_dir=f"{TRIALS_DIR}/{name}", status=status, why=why,
                      config={k: plain_value(v) for k, v in trial.config.items()},
                      best=TrialBest(value=getattr(best, metric), epoch=best.epoch) if best else None,
                      failures=trial.num_failures, resumed_from_epoch=int(last.get("resumed_from_epoch", 0)), node=node,
                      epochs=history)  # fmt: skip


def _sweep_header(spec: SweepSpec, started: str, ray: str, data: ProvenanceRecord) -> SweepFile:
    """sweep.json before any trial: the search, where it runs and the data a resume must match."""
    s = spec.settings
    scheduler = ({"name": s.scheduler, "grace_period": s.grace_period, "reduction_factor": s.reduction_factor,
                  "max_epochs": spec.max_epochs} if s.scheduler == "asha" else {"name": "none"})  # fmt: skip
    return SweepFile(fmnist=__version__, metric=s.metric, mode=spec.mode, scheduler=scheduler,
                     num_samples=s.num_samples, total_trials=spec.total_trials,
                     search={d.key: d.to_toml() for d in spec.search}, base=spec.base,
                     resources={"cpus_per_trial": s.cpus_per_trial, "gpus_per_trial": s.gpus_per_trial},
                     started=started, ray=ray, data=data)  # fmt: skip


def write_sweep_json(sweep_dir: Path, spec: SweepSpec, trials: list[Any], outcome: dict[str, str],
                     header: SweepFile) -> SweepFile:  # fmt: skip
    """sweep.json from Tune's trials, how each ended (done/stopped/failed; absent: unfinished) and the run dirs."""
    entries = sorted((_trial_entry(spec, sweep_dir, t, outcome) for t in trials), key=lambda e: e.name)
    scored = [e for e in entries if e.best is not None]
    sign = 1 if spec.mode == "max" else -1
    best = max(scored, key=lambda e: sign * e.best.value) if scored else None  # ties: the first trial
    summary = dataclasses.replace(
        header,
        updated=datetime.now().isoformat(timespec="seconds"),
        complete=len(entries) == spec.total_trials and all(e.status != "unfinished" for e in entries),
        counts={k: sum(e.status == k for e in entries) for k in ("finished", "stopped", "failed", "unfinished")},
        best=SweepBest(
            trial=best.name, run_dir=best.run_dir, value=best.best.value, epoch=best.best.epoch, config=best.config
        )
        if best
        else None,  # fmt: skip
        trials=entries,
    )
    summary.write(sweep_dir / SWEEP_FILE)
    return summary


def write_best_toml(sweep_dir: Path, summary: SweepFile) -> Path:
    """The best trial's full config (its run directory's config.toml), ready for `fmnist train --config`."""
    best = summary.best
    value = format_metric(summary.metric, best.value)
    header = (f"# Best trial of the sweep in {sweep_dir}: {best.trial}, {summary.metric} {value} at epoch "
              f"{best.epoch}.\n# Train it: fmnist train --config {sweep_dir / BEST_FILE}\n")  # fmt: skip
    text = (sweep_dir / best.run_dir / CONFIG_FILE).read_text(encoding="utf-8")
    atomic_write_text(sweep_dir / BEST_FILE, header + text)
    return sweep_dir / BEST_FILE
