"""Shared fixtures: tiny synthetic IDX datasets written by the tests, and the real data when available."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmnist.data.dataset import FashionMNIST, load_idx_folder
from fmnist.data.idx import write_idx

REAL_DATA_ENV = "FMNIST_DATA"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_arrays(n_train: int = 600, n_test: int = 200, seed: int = 0):
    """Learnable fake "clothes": each class is a bright bar at its own position, plus noise.

    Mean intensity is kept in Fashion-MNIST's range so the MNIST-digits check accepts it.
    """
    rng = np.random.default_rng(seed)

    def make(n: int):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(40, 110, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            row = 2 + 2 * c
            images[i, row : row + 3, 4:24] = 250
        return images, labels.astype(np.uint8)

    return make(n_train), make(n_test)


def write_synthetic_idx(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (train_x, train_y), (test_x, test_y) = synthetic_arrays(n_train, n_test)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", train_x)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", train_y)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", test_x)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", test_y)
    return folder


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    return write_synthetic_idx(tmp_path / "tiny-data")


@pytest.fixture
def tiny_dataset(tiny_data_dir: Path) -> FashionMNIST:
    return load_idx_folder(tiny_data_dir)


def real_data_or_skip() -> Path:
    """The real dataset's folder ($FMNIST_DATA), or skip the test that needs it (module fixtures call this)."""
    value = os.environ.get(REAL_DATA_ENV)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{REAL_DATA_ENV} is not set to the Fashion-MNIST folder")
    return Path(value)


@pytest.fixture
def real_data_dir() -> Path:
    return real_data_or_skip()


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for subprocesses: empty cache, no data variable, no network sources tried."""
    env = dict(os.environ)
    env.pop(REAL_DATA_ENV, None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["COLUMNS"] = "200"
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    monkeypatch.delenv(REAL_DATA_ENV, raising=False)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `python -m fmnist ARGS` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "fmnist", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def default_sigint() -> None:
    """preexec_fn of a child a test will Ctrl-C: SIGINT back to its default disposition.

    A suite started in the background (`make test &`, nohup) inherits SIGINT as ignored, and
    Python installs its KeyboardInterrupt handler only where SIGINT is not ignored at start, so
    without this the child would never see the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
