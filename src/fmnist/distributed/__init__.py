"""fmnist on Ray: sweeps (Ray Tune) and compare / ablate / `train --seeds` runs as Ray tasks.

Ray is an optional extra. Nothing here imports it at module level, so `fmnist` without
`--ray` or `sweep` never loads it; `require_ray()` is the one place that does, and turns a
missing install into one line that says what to install.

    SWEEP_DIR/
      sweep.toml        the sweep config as given (what --resume reads)
      sweep.json        every trial: config, metrics per epoch, why it stopped; the best trial
      best.toml         the best trial's full config, for `fmnist train --config best.toml`
      trials/trial-NNN/ one ordinary fmnist run directory per trial (resumable)
      ray/              Ray Tune's experiment state and each trial's epoch checkpoints
      report.md, report.html, figures/
"""

from __future__ import annotations

from types import ModuleType

from fmnist.errors import FmnistError

INSTALL_HINT = "pip install 'fmnist[ray]'"
LOCAL = "local"  # --ray local: start a Ray on this machine for the duration of the command
ADDRESS_ENV = "RAY_ADDRESS"

SWEEP_FILE = "sweep.json"
SPEC_FILE = "sweep.toml"
BEST_FILE = "best.toml"
TRIALS_DIR = "trials"
TUNE_DIR = "ray"


class RayMissingError(FmnistError):
    """Ray (the `ray` extra) is not installed."""


def require_ray() -> ModuleType:
    """The `ray` module, or a one-line error naming the install command."""
    try:
        import ray
        import ray.tune  # noqa: F401  (the extra is ray[tune]; plain ray lacks Tune's dependencies)
    except ImportError:
        raise RayMissingError(f"this needs Ray, an optional extra of fmnist: {INSTALL_HINT}") from None
    return ray
