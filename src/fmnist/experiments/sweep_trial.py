"""One sweep trial, on a Ray worker: an ordinary fmnist run that reports each epoch to Tune.

The trial trains into SWEEP_DIR/trials/trial-NNN, a run directory like `fmnist train`
writes (resumable with `fmnist train --resume`). After every epoch fmnist's trainer saves its
exact-resume state there; the reporter then hands Tune the epoch's metrics together with a
checkpoint of that state. When Tune restarts a trial (its worker died, or `--resume`), the
trial copies the checkpoint's state back into its run directory and resumes exactly, so it
ends with the same weights and metrics as a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, TypedDict

from fmnist.errors import FmnistError
from fmnist.experiments.ray_runtime import ShippedDataset, pin_threads, receive_dataset
from fmnist.experiments.sweep_config import SweepSpec
from fmnist.fsutil import atomic_write_json, read_json
from fmnist.inference.records import SearchValue
from fmnist.inference.rundir import META_FILE, RESULTS_FILE, TRIALS_DIR, WEIGHTS_FILE, prepare_run_dir, read_history
from fmnist.training.results import EpochRecord, RunInfo, TrainCallback
from fmnist.training.run_writer import train_into
from fmnist.training.state import STATE_META, clear_state

CHECKPOINT_INFO = "fmnist-trial.json"  # in each Tune checkpoint: which epoch's state it holds
# Keys of each reported result that say where the trial ran; sweep.json records its latest.
NODE_ID, NODE_IP, NODE_HOST = "node_id", "node_ip", "hostname"


def trial_name(trial_id: str) -> str:
    """trial-007 for Tune's "1a2b3_00007": the run directory and Tune's own folder share it."""
    return f"trial-{int(trial_id.rsplit('_', 1)[-1]):03d}"


def trial_dirname(trial: Any) -> str:
    return trial_name(trial.trial_id)


class TrialReport(TypedDict, total=False):
    """What a trial reports to Tune after each epoch: the epoch's EpochRecord (less its None values), how far
    the attempt resumed, where it ran, and whether it was the last epoch. Tune adds its own keys beside these."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    steps: int
    seconds: float
    images_per_second: float
    resumed_from_epoch: int
    node_id: str  # NODE_ID, NODE_IP, NODE_HOST
    node_ip: str
    hostname: str
    finished: bool


def epoch_metrics(record: EpochRecord, resumed_from: int) -> TrialReport:
    metrics = {k: v for k, v in dataclasses.asdict(record).items() if v is not None}
    return TrialReport(**metrics, resumed_from_epoch=resumed_from)


def this_node() -> dict[str, str]:
    """The Ray node this trial runs on. Its id tells nodes apart when several share a machine."""
    import ray

    return {NODE_ID: ray.get_runtime_context().get_node_id(), NODE_IP: ray.util.get_node_ip_address(),
            NODE_HOST: socket.gethostname()}  # fmt: skip


class TuneReporter(TrainCallback):
    """Reports each finished epoch to Tune with a checkpoint of the run's exact-resume state.

    An epoch's record arrives before its state is saved, so it is reported when the trainer
    says the state is on disk (`on_state_saved`); the last epoch, which saves no state, is
    reported by `finish` once the run directory is complete.
    """

    def __init__(self, run_dir: Path, resumed_from: int):
        self.run_dir = run_dir
        self.resumed_from = resumed_from
        self.pending: EpochRecord | None = None
        self.node = this_node()

    def on_start(self, info: RunInfo) -> None:
        self.pending = None

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        self.pending = record

    def on_state_saved(self, state_dir: Path) -> None:
        if self.pending is not None:
            record, self.pending = self.pending, None
            self._report(record, with_state=True)

    def finish(self) -> None:
        if self.pending is not None:
            record, self.pending = self.pending, None
            self._report(record, with_state=False, finished=True)

    def _report(self, record: EpochRecord, *, with_state: bool, finished: bool = False) -> None:
        from ray import tune

        metrics = {**epoch_metrics(record, self.resumed_from), **self.node, "finished": finished}
        if not with_state:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="fmnist-ckpt-") as folder:
            meta = read_json(self.run_dir / STATE_META)
            for name in (STATE_META, meta["tensors_file"]):
                shutil.copy2(self.run_dir / name, Path(folder) / name)
            atomic_write_json(Path(folder) / CHECKPOINT_INFO, {"epoch": record.epoch})
            tune.report(
                metrics, checkpoint=tune.Checkpoint.from_directory(folder)
            )  # copied to storage before it returns


def _reset_run_dir(run_dir: Path) -> None:
    """Forget what an earlier attempt left (its state, or outputs of a run Tune never saw finish)."""
    clear_state(run_dir)
    for name in (RESULTS_FILE, META_FILE, WEIGHTS_FILE):
        (run_dir / name).unlink(missing_ok=True)


def checkpoint_epoch(checkpoint: Any) -> int:
    with checkpoint.as_directory() as folder:
        return int(read_json(Path(folder) / CHECKPOINT_INFO)["epoch"])


def report_finished(run_dir: Path, after_epoch: int, resumed_from: int) -> None:
    """Report the epochs after `after_epoch` of a trial that already finished, from its run directory.

    Tune snapshots the experiment after epoch checkpoints, not when a trial ends, so a driver or
    head lost in between leaves a finished trial marked running at its last checkpoint. Training
    those epochs again would give the same numbers (exact resume) but would first remove the
    finished results from disk; reading them back keeps them and costs nothing.
    """
    from ray import tune

    node = this_node()
    rows = [row.to_json() for row in read_history(run_dir) if row.epoch > after_epoch]
    for index, row in enumerate(rows):
        tune.report({**row, "resumed_from_epoch": resumed_from, **node, "finished": index == len(rows) - 1})


def restore_checkpoint(run_dir: Path, checkpoint: Any) -> int:
    """Put a Tune checkpoint's state into `run_dir`; returns the epoch it continues after."""
    _reset_run_dir(run_dir)
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        epoch = int(read_json(folder / CHECKPOINT_INFO)["epoch"])
        meta = read_json(folder / STATE_META)
        shutil.copy2(folder / meta["tensors_file"], run_dir / meta["tensors_file"])
        shutil.copy2(folder / STATE_META, run_dir / STATE_META)  # last: it names the tensors file
    return epoch


def run_trial(sampled: dict[str, SearchValue], *, spec: SweepSpec, sweep_dir: str, shipped: ShippedDataset) -> None:
    """Tune's trainable: train one trial's config into its run directory, reporting every epoch."""
    from ray import tune

    root = Path(sweep_dir)
    if not root.is_dir():
        raise FmnistError(f"{root}: the sweep folder is not visible on {socket.gethostname()}; a sweep over "
                          "several machines needs it on storage every node mounts at the same path")  # fmt: skip
    run_dir = root / TRIALS_DIR / trial_name(tune.get_context().get_trial_id())
    config = spec.trial_config(sampled)
    dataset = receive_dataset(shipped)
    pin_threads(spec.settings.cpus_per_trial)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None and (run_dir / RESULTS_FILE).is_file():  # finished after Tune's last snapshot
        epoch = checkpoint_epoch(checkpoint)
        if any(row.epoch > epoch for row in read_history(run_dir)):
            report_finished(run_dir, epoch, epoch)
            return
    if checkpoint is not None:
        resumed_from = restore_checkpoint(run_dir, checkpoint)
    else:
        resumed_from = 0
        _reset_run_dir(run_dir)
        prepare_run_dir(run_dir)
    reporter = TuneReporter(run_dir, resumed_from)
    train_into(config, run_dir, dataset, [reporter], resume=resumed_from > 0)
    reporter.finish()
