"""Starting or joining Ray, shipping the dataset once, and leaving nothing behind.

`RaySession("local")` starts a private Ray for one command: bound to loopback, token
authentication on, no dashboard, its temp and log folders inside one fresh temp folder that
is deleted when the session ends (normally, on an error or on Ctrl-C). `RaySession("HOST:PORT")`
joins a running cluster and leaves it as it found it. Inside a process that already runs Ray
(a notebook, the tests) the session uses that Ray and does not stop it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fmnist.constants import IDX_FILES
from fmnist.data.dataset import FashionMNIST, Provenance, ProvenanceRecord
from fmnist.data.idx import encode_idx
from fmnist.errors import DataError, FmnistError, first_line

INSTALL_HINT = "pip install 'fmnist[ray]'"
LOCAL = "local"  # --ray local: start a Ray on this machine for the duration of the command
ADDRESS_ENV = "RAY_ADDRESS"


class RayMissingError(FmnistError):
    """Ray (the `ray` extra) is not installed."""


def require_ray() -> ModuleType:
    """The `ray` module, or a one-line error naming the install command.

    Ray is an optional extra. Nothing in fmnist imports it at module level, so `fmnist` without
    `--ray` or `sweep` never loads it; this is the one place that does.
    """
    try:
        import ray
        import ray.tune  # noqa: F401  (the extra is ray[tune]; plain ray lacks Tune's dependencies)
    except ImportError:
        raise RayMissingError(f"this needs Ray, an optional extra of fmnist: {INSTALL_HINT}") from None
    return ray


TEMP_PREFIX = "fmnist-ray-"  # kept short: Ray's socket paths live under it and Unix caps them at 107 bytes
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
# With this off, Ray takes loopback as the node's address and binds every server it starts
# there instead of on all interfaces. Read when Ray is imported, and again below if it already was.
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def token_available() -> bool:
    """Whether this machine holds a Ray token where Ray looks for one (env, token file, ~/.ray)."""
    if os.environ.get(TOKEN_ENV):
        return True
    path = os.environ.get(TOKEN_PATH_ENV)
    return Path(path).is_file() if path else DEFAULT_TOKEN_PATH.is_file()


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT names this machine's loopback interface."""
    host = address.rsplit(":", 1)[0].strip("[]").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


class RaySession:
    """A Ray connection for the length of a `with` block (see the module docstring)."""

    def __init__(self, address: str, *, num_cpus: int | None = None, notify: Callable[[str], None] = lambda _m: None,
                 head_lost: Callable[[float], str] | None = None):  # fmt: skip
        self.address = address
        self.num_cpus = num_cpus
        self.notify = notify
        # The line a joined cluster's lost head ends the command with (see fmnist.experiments.ray_head).
        self.head_lost = head_lost or (lambda waited: f"lost the Ray cluster's head at {address} "
                                                      f"(no answer for {waited:.0f} s)")  # fmt: skip
        self._watch: Any = None
        self.owned = False  # whether this session started (and must stop) Ray
        self.temp_dir: Path | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_cluster_flag: bool | None = None

    def __enter__(self) -> RaySession:
        ray = require_ray()
        if ray.is_initialized():
            return self
        try:
            if self.address == LOCAL:
                self._start_local(ray)
            else:
                self._join(ray)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _set_env(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def _loopback_only(self) -> None:
        self._set_env(CLUSTER_ENV, "0")
        from ray._private import ray_constants  # noqa: PLC0415  (see CLUSTER_ENV)

        if self._saved_cluster_flag is None:
            self._saved_cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False

    def _start_local(self, ray: Any) -> None:
        # Unset, Ray turns token authentication on for a new local cluster (and makes a token
        # in ~/.ray/auth_token if there is none); fmnist only refuses to run with it off.
        mode = os.environ.get(AUTH_MODE_ENV, "token").lower()
        if mode != "token":
            raise FmnistError(f"{AUTH_MODE_ENV}={mode}: fmnist starts Ray only with token authentication; "
                              f"unset {AUTH_MODE_ENV}")  # fmt: skip
        self._loopback_only()
        self.temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        cpus = self.num_cpus or os.cpu_count() or 1
        self.notify(f"starting a local Ray ({cpus} CPUs, loopback only, temp folder {self.temp_dir})")
        with _quiet(AUTH_LOGGER):  # Ray's "token authentication is enabled" notice: that is the point
            ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=str(self.temp_dir),
                     _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)  # fmt: skip
        self.owned = True

    def _join(self, ray: Any) -> None:
        # Ray turns token auth on by itself only for address="auto"; for a named head fmnist does
        # the same, with Ray's own function: a token on this machine means the cluster wants it.
        if AUTH_MODE_ENV not in os.environ and token_available():
            self._saved_env.setdefault(AUTH_MODE_ENV, None)
            from ray._private.authentication.authentication_token_setup import (  # noqa: PLC0415
                maybe_enable_token_auth_if_token_available,
            )

            with _quiet(AUTH_LOGGER):
                maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        if is_loopback(self.address):
            # Ray swaps a loopback head address for this machine's network address, where a head
            # bound to loopback (`ray start --head --node-ip-address=127.0.0.1`) does not answer.
            self._loopback_only()
        self.notify(f"joining the Ray cluster at {self.address}")
        try:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # ConnectionError, AuthenticationError, ValueError for a bad address
            hint = "" if token_available() else " (no Ray token on this machine: see README, 'Sweeps and clusters')"
            raise FmnistError(f"cannot join the Ray cluster at {self.address}: {first_line(exc)}{hint}") from None
        self.owned = True  # our driver connection; ray.shutdown() disconnects without stopping the cluster
        from fmnist.experiments.ray_head import HeadWatch  # noqa: PLC0415

        self._watch = HeadWatch(ray.get_runtime_context().gcs_address, self.head_lost).start()

    def close(self) -> None:
        ray = require_ray()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self.owned:
            ray.shutdown()
            self.owned = False
        if self._saved_cluster_flag is not None:
            from ray._private import ray_constants  # noqa: PLC0415

            ray_constants.ENABLE_RAY_CLUSTER = self._saved_cluster_flag
            self._saved_cluster_flag = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()


# -- the dataset, shipped once through the object store ---------------------------------


def dataset_digests(dataset: FashionMNIST) -> dict[str, str]:
    """sha256 of each array in IDX form: the same hash as `raw_sha256` of the IDX file it came from."""
    return {role: hashlib.sha256(encode_idx(getattr(dataset, role))).hexdigest() for role in IDX_FILES}


def _check_against_files(dataset: FashionMNIST, digests: dict[str, str]) -> None:
    for role, record in dataset.provenance.files.items():
        from_idx = record.name.endswith(("-ubyte", "-ubyte.gz"))  # CSV files hash differently
        if from_idx and role in digests and record.raw_sha256 != digests[role]:
            raise DataError(f"{record.name}: the {role.replace('_', ' ')} in memory no longer match the file's "
                            f"sha256 ({record.raw_sha256[:12]}…); reload the data")  # fmt: skip


@dataclass(frozen=True)
class ShippedDataset:
    """What a Ray task needs to get the driver's dataset: an object-store reference and its hashes."""

    ref: Any  # ray.ObjectRef of {role: uint8 array}
    sha256: dict[str, str]
    provenance: ProvenanceRecord


def ship_dataset(dataset: FashionMNIST) -> ShippedDataset:
    """Check the dataset against the files it was read from, then put it in Ray's object store once."""
    ray = require_ray()
    digests = dataset_digests(dataset)
    _check_against_files(dataset, digests)
    arrays = {role: np.ascontiguousarray(getattr(dataset, role)) for role in IDX_FILES}
    return ShippedDataset(ray.put(arrays), digests, dataset.provenance.to_dict())


_received: dict[tuple[str, ...], FashionMNIST] = {}  # per worker process: a worker runs many tasks


def receive_dataset(shipped: ShippedDataset) -> FashionMNIST:
    """The driver's dataset in a Ray task, after checking every byte against the driver's sha256."""
    key = tuple(sorted(shipped.sha256.values()))
    if key in _received:
        return _received[key]
    ray = require_ray()
    # Copies: the object store hands out read-only views, and training indexes into the arrays.
    arrays = {role: np.array(array) for role, array in ray.get(shipped.ref).items()}
    dataset = FashionMNIST(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                           arrays["test_labels"], Provenance.from_dict(shipped.provenance))  # fmt: skip
    got = dataset_digests(dataset)
    for role, want in shipped.sha256.items():
        if got.get(role) != want:
            raise DataError(f"{socket.gethostname()}: the {role.replace('_', ' ')} this Ray worker received differ "
                            f"from the driver's (sha256 {got.get(role, '')[:12]}… instead of {want[:12]}…); "
                            "refusing to train on them")  # fmt: skip
    _received.clear()
    _received[key] = dataset
    return dataset


def pin_threads(cpus: float) -> int:
    """Give torch as many threads as CPUs the run holds (at least one); the local path pins the same way."""
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


def task_error(exc: BaseException, what: str) -> FmnistError:
    """One line for a failed Ray task: fmnist's own message when the task raised one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FmnistError):
        return cause
    if cause is not None:
        return FmnistError(f"{what} failed on Ray: {type(cause).__name__}: {first_line(cause)}")
    return FmnistError(f"{what} failed on Ray: {first_line(exc)}")
