"""fmnist on a real local Ray (2 CPUs, tiny synthetic data): compare over Ray equals the local
compare bit for bit, the dataset travels through the object store with its sha256 checked, a
local Ray binds to loopback with token authentication, and a killed trial resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")

from fmnist import api  # noqa: E402
from fmnist.errors import DataError  # noqa: E402
from fmnist.experiments.ray_runtime import RaySession, receive_dataset, ship_dataset, task_error  # noqa: E402
from fmnist.inference.rundir import LOCK_FILE, METRICS_FILE, RESULTS_FILE, SWEEP_FILE, TRIALS_DIR  # noqa: E402

TIMINGS = {"seconds", "images_per_second", "train_seconds", "train_seconds_mean"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module (starting one takes seconds); stopped and removed at the end."""
    with RaySession("local", num_cpus=2) as session:
        yield session
    assert not ray.is_initialized()
    assert session.temp_dir is None


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_numbers(run_dir: Path) -> dict:
    """Everything a run directory says about its training, timings aside, and its weights' bytes."""
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    metrics = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return {"results": without_timings(results), "metrics": without_timings(metrics),
            "weights": (run_dir / "model.safetensors").read_bytes()}  # fmt: skip


def test_local_ray_is_loopback_only_with_token_auth_and_no_dashboard(local_ray):
    node = ray._private.worker._global_node
    assert node.node_ip_address == "127.0.0.1"
    host, port = node.gcs_address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert os.environ.get("RAY_AUTH_MODE") == "token"
    assert not node.address_info.get("webui_url")
    assert str(local_ray.temp_dir) in node.get_session_dir_path()
    # The GCS answers on loopback but not on the machine's network address.
    socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            outside = probe.getsockname()[0]
    except OSError:  # no network at all: nothing but loopback to listen on
        outside = "127.0.0.1"
    if outside != "127.0.0.1":
        with pytest.raises(OSError):
            socket.create_connection((outside, int(port)), timeout=5).close()


def test_compare_over_ray_equals_local_compare(local_ray, tiny_dataset, tmp_path):
    options = dict(models=["mlp_seed002", "lenet5"], seeds=1, data=tiny_dataset, progress=False, report=False,
                   epochs=2, val_size=100, batch_size=50)  # fmt: skip
    local = api.compare(out=tmp_path / "local", **options)
    remote = api.compare(out=tmp_path / "ray", ray="local", **options)
    assert without_timings(remote.summary) == without_timings(local.summary)
    names = [run["run_dir"] for run in local.summary["runs"]]
    assert len(names) == 2
    for name in names:
        assert run_numbers(remote.path / name) == run_numbers(local.path / name), name
        files = [sorted(p.name for p in (root / name).iterdir()) for root in (local.path, remote.path)]
        assert files[0] == files[1], name  # the same run directory layout
        env_local, env_ray = (
            json.loads((p / name / "environment.json").read_text()) for p in (local.path, remote.path)
        )
        assert env_ray["torch_threads"] == env_local["torch_threads"]


@ray.remote
def _received_digests(shipped):
    from fmnist.experiments.ray_runtime import dataset_digests

    return dataset_digests(receive_dataset(shipped))


def test_dataset_travels_through_the_object_store_and_is_checked(local_ray, tiny_dataset):
    shipped = ship_dataset(tiny_dataset)
    assert ray.get(_received_digests.remote(shipped)) == shipped.sha256
    tampered = replace(shipped, sha256={**shipped.sha256, "train_labels": "0" * 64})
    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(_received_digests.remote(tampered))
    message = str(task_error(caught.value, "run"))
    assert "differ from the driver's" in message and "train labels" in message and "\n" not in message
    labels = tiny_dataset.train_labels.copy()
    labels[0] = (labels[0] + 1) % 10
    tiny_dataset.train_labels = labels  # memory no longer matches the file it was read from
    with pytest.raises(DataError, match="no longer match the file's sha256"):
        ship_dataset(tiny_dataset)


def _worker_pid(run_dir: Path) -> int | None:
    """The process training into `run_dir` (RunLock writes its pid), once it has finished two epochs."""
    metrics, lock = run_dir / METRICS_FILE, run_dir / LOCK_FILE
    if not metrics.is_file() or len(metrics.read_text().splitlines()) < 2 or not lock.is_file():
        return None
    text = lock.read_text().strip()
    return int(text) if text else None


def test_killed_trial_is_retried_from_its_checkpoint_and_ends_identical(local_ray, tiny_dataset, tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('model = "mlp_seed002"\nepochs = 12\nval_size = 100\nbatch_size = 50\n'
                      '[sweep]\nnum_samples = 2\nscheduler = "none"\nmax_failures = 2\n'
                      '[search]\nlr = { choice = [0.01] }\n')  # two trials with the same config  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    outcome: dict = {}

    def sweep():
        try:
            outcome["summary"] = api.sweep(config, out=sweep_dir, ray="local", data=tiny_dataset, progress=False)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=sweep)
    thread.start()
    victim = sweep_dir / TRIALS_DIR / "trial-000"
    killed = None
    deadline = time.monotonic() + 120
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        pid = _worker_pid(victim)
        if pid is not None and not (victim / RESULTS_FILE).exists():
            assert "ray" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").lower()
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.02)
    thread.join(timeout=180)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "the trial finished before it could be killed"
    summary = json.loads((sweep_dir / SWEEP_FILE).read_text())
    trials = {t["name"]: t for t in summary["trials"]}
    assert summary["complete"] and summary["counts"]["finished"] == 2
    assert (
        trials["trial-000"]["failures"] == 1 and trials["trial-000"]["resumed_from_epoch"] >= 1
    )  # from a checkpoint, not from scratch
    assert trials["trial-001"]["failures"] == 0 and trials["trial-001"]["resumed_from_epoch"] == 0
    assert run_numbers(victim) == run_numbers(sweep_dir / TRIALS_DIR / "trial-001")
    assert len(run_numbers(victim)["metrics"]) == 12
