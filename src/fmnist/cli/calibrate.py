"""`fmnist calibrate`: fit a finished run's or ensemble's trust record (temperature, OOD threshold, conformal scores)."""

from __future__ import annotations

from pathlib import Path

import typer

from fmnist.cli.options import DataDirOption
from fmnist.cli.output import notify, say


def calibrate_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory (model.json, model.safetensors) or ensemble directory"),
    data_dir: Path | None = DataDirOption,
) -> None:
    """Fit the temperature, the unknown threshold and the prediction sets of a run or ensemble made before
    fmnist did it itself (on the validation images no member trained on); writes trust.json and trust.safetensors."""
    from fmnist.data.sources import resolve_dataset
    from fmnist.inference.checkpoint import checkpoint_folder, read_meta
    from fmnist.inference.ensemble_model import ensemble_members, is_ensemble_dir
    from fmnist.inference.ensemble_trust import calibrate_ensemble
    from fmnist.inference.trust import calibrate_run

    if is_ensemble_dir(run_dir):
        folder, calibrate = Path(run_dir), calibrate_ensemble
        ensemble_members(folder)  # a broken manifest or member: one line, before the data loads
    else:
        folder, calibrate = checkpoint_folder(run_dir), calibrate_run
        read_meta(folder)  # no checkpoint: one line, before the data loads
    record = calibrate(folder, resolve_dataset(str(data_dir) if data_dir else None, notify=notify))
    if record.note:
        notify(f"note: {record.note}")
    if record.nll_before is not None:
        say(f"temperature {record.temperature:.3f}: validation ECE {100 * record.ece_before:.2f}% -> "
            f"{100 * record.ece_after:.2f}%, NLL {record.nll_before:.4f} -> {record.nll_after:.4f}")  # fmt: skip
    if record.ood_method:
        say(f"unknown above {record.ood_method} {record.ood_threshold:.3f} "
            f"(keeps {100 * record.ood_keep:.0f}% of {record.validation_images:,} validation images)")  # fmt: skip
    say(f"wrote {folder / 'trust.json'}")
