"""fmnist on a real multi-node Ray cluster on this machine: a head with no CPUs and two 1-CPU worker
nodes, each its own raylet on 127.0.0.1 with token authentication (ray.cluster_utils.Cluster; every
Ray process is a child of this one and is ended by pid). Trials spread over both workers and
sweep.json records each trial's node; a worker node killed mid-trial has its trial retried on the
other node from its checkpoint, ending identical to an uninterrupted trial; a lost head ends the
command with one line, keeps the finished trials, and the printed --resume command finishes the
sweep; compare --ray ADDRESS over both nodes equals the in-process compare."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")

from fmnist import api  # noqa: E402
from fmnist.errors import first_line  # noqa: E402
from fmnist.experiments.ray_head import RECONNECT_ENV  # noqa: E402
from fmnist.inference.rundir import LOCK_FILE, METRICS_FILE, RESULTS_FILE, SWEEP_FILE, TRIALS_DIR  # noqa: E402
from test_ray import run_numbers, without_timings  # noqa: E402
from test_sweep import cli_env, processes_with  # noqa: E402

WORKERS = 2
HEAD_WAIT_S = "8"  # Ray's wait for a lost head in the CLI under test (60 s unless set)


def descendants(pids: list[int]) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], set(pids)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - set(found)
        found.extend(frontier)
    return found


class LocalCluster:
    """A head (0 CPUs) and WORKERS worker nodes (1 CPU each) on 127.0.0.1; restartable on the same port."""

    def __init__(self, root: Path):
        self.root = root
        self.cluster = None
        self.port: int | None = None

    def start(self) -> None:
        from ray.cluster_utils import Cluster

        (self.root / "ray").mkdir(parents=True, exist_ok=True)  # Cluster writes ray_current_cluster there
        head = {"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False}
        if self.port:
            head["gcs_server_port"] = self.port
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.port = int(self.cluster.address.rsplit(":", 1)[1])
        self.ensure()

    def ensure(self) -> None:
        """Back to a head and WORKERS workers (after a test killed some)."""
        if self.cluster is None or self.cluster.head_node is None:
            self.stop()
            self.start()
            return
        while len(self.cluster.worker_nodes) < WORKERS:
            self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")

    @property
    def address(self) -> str:  # the same after a restart on the same port
        return f"127.0.0.1:{self.port}"

    @property
    def workers(self) -> list:
        return list(self.cluster.worker_nodes)

    def node_of(self, run_dir: Path):
        """The worker node a run trained on: its environment.json names its raylet's socket."""
        argv = json.loads((run_dir / "environment.json").read_text())["argv"]
        socket_name = next(a.split("=", 1)[1] for a in argv if a.startswith("--raylet-name="))
        return next(n for n in self.workers if n.raylet_socket_name == socket_name)

    def kill(self, node) -> None:
        """SIGKILL, by pid, to every process of `node`: its own (raylet, ...) and theirs (agents, workers)."""
        pids = [info.process.pid for infos in node.all_processes.values() for info in infos]
        children = descendants(pids)
        if node is self.cluster.head_node:
            # This process's own GCS client would end it a minute after the head is gone (as Ray ends any
            # driver), or meet the next head on the same port: let go of it first.
            self.cluster.global_state.disconnect()
            ray.experimental.internal_kv._internal_kv_reset()
        self.cluster.remove_node(node, allow_graceful=False)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.cluster is None:
            return
        for node in self.cluster.list_all_nodes():
            self.kill(node)
        self.cluster = None


def reload_auth() -> None:
    """Make this process (already running Ray's C++ side) read the auth settings from the environment again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def cluster():
    """The cluster for this module, and the environment every Ray process and driver here shares."""
    root = Path(tempfile.mkdtemp(prefix="fmc", dir="/tmp"))  # short: Ray's socket paths are capped at 107 bytes
    env = {"RAY_TMPDIR": str(root), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        reload_auth()
        local = LocalCluster(root)
        try:
            local.start()
        except Exception as exc:  # no Ray here (sandbox, no /dev/shm…): say why instead of failing
            local.stop()
            shutil.rmtree(root, ignore_errors=True)
            patch.undo()
            reload_auth()
            pytest.skip(f"cannot start a multi-node Ray cluster here: {type(exc).__name__}: {first_line(exc)}")
        try:
            yield local
        finally:
            local.stop()
            marker = f"RAY_TMPDIR={root}".encode()
            deadline = time.monotonic() + 15  # workers exit shortly after their raylet
            while processes_with(marker) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = processes_with(marker)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)
            patch.undo()
            reload_auth()
            assert left == [], f"Ray processes left running: {left}"


def sweep_toml(path: Path, data_dir: Path, epochs: int, trials: int) -> Path:
    path.write_text(f'model = "mlp_seed002"\nepochs = {epochs}\nval_size = 100\nbatch_size = 50\ndata_dir = "{data_dir}"\n'
                    f'[sweep]\nnum_samples = {trials}\nscheduler = "none"\ncpus_per_trial = 1\nmax_failures = 2\n'
                    '[search]\nlr = { choice = [0.01] }\n')  # every trial the same config  # fmt: skip
    return path


def test_trials_and_compare_runs_spread_over_both_workers(cluster, tiny_data_dir, tiny_dataset, tmp_path):
    cluster.ensure()
    workers = {node.node_id for node in cluster.workers}
    config = sweep_toml(tmp_path / "sweep.toml", tiny_data_dir, epochs=3, trials=2)
    summary = api.sweep(config, out=tmp_path / "sweep", ray=cluster.address, data=tiny_dataset, progress=False)
    assert summary["complete"] and summary["counts"]["finished"] == 2
    recorded = json.loads((tmp_path / "sweep" / SWEEP_FILE).read_text())["trials"]
    assert {t["node"]["id"] for t in recorded} == workers  # one trial on each worker, as sweep.json says
    assert all(t["node"]["ip"] == "127.0.0.1" and t["node"]["hostname"] for t in recorded)
    for trial in recorded:  # and where it really trained
        assert cluster.node_of(tmp_path / "sweep" / trial["run_dir"]).node_id == trial["node"]["id"]

    options = dict(models=["mlp_seed002", "lenet5"], seeds=2, data=tiny_dataset, progress=False, report=False,
                   epochs=2, val_size=100, batch_size=50)  # fmt: skip
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what each task gets: the workers have 1 CPU
        local = api.compare(out=tmp_path / "local", **options)
        torch.set_num_threads(2)  # more than any node has: the tasks must not wait for a node that never comes
        said: list[str] = []
        remote = api.compare(out=tmp_path / "ray", ray=cluster.address, notify=said.append, **options)
    finally:
        torch.set_num_threads(threads)
    assert any("1 thread(s), the CPUs of the largest Ray node" in line for line in said), said
    assert without_timings(json.loads((remote.path / "compare.json").read_text())) == without_timings(
        json.loads((local.path / "compare.json").read_text()))  # fmt: skip
    names = [run["run_dir"] for run in local.summary["runs"]]
    assert len(names) == 4
    assert {cluster.node_of(remote.path / name).node_id for name in names} == workers
    for name in names:
        assert run_numbers(remote.path / name) == run_numbers(local.path / name), name


def _training_pid(run_dir: Path, epochs: int) -> int | None:
    """The process training into `run_dir` (RunLock holds its pid) once `epochs` epochs are done."""
    metrics, lock = run_dir / METRICS_FILE, run_dir / LOCK_FILE
    try:
        done = len(metrics.read_text().splitlines())
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if done >= epochs and text and not (run_dir / RESULTS_FILE).exists() else None


def test_a_killed_worker_node_has_its_trial_retried_on_the_other_from_its_checkpoint(cluster, tiny_data_dir,
                                                                                     tiny_dataset, tmp_path):  # fmt: skip
    cluster.ensure()
    config = sweep_toml(tmp_path / "sweep.toml", tiny_data_dir, epochs=12, trials=2)
    sweep_dir = tmp_path / "sweep"
    outcome: dict = {}

    def sweep():
        try:
            outcome["summary"] = api.sweep(
                config, out=sweep_dir, ray=cluster.address, data=tiny_dataset, progress=False
            )
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=sweep)
    thread.start()
    victim, other = (sweep_dir / TRIALS_DIR / f"trial-00{i}" for i in range(2))
    killed = None
    deadline = time.monotonic() + 120
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        if _training_pid(victim, 2) is not None:
            killed = cluster.node_of(victim)
            survivor = next(node for node in cluster.workers if node is not killed)
            cluster.kill(killed)
        time.sleep(0.02)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the sweep did not finish"
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "the trial finished before its node could be killed"
    summary = json.loads((sweep_dir / SWEEP_FILE).read_text())
    trials = {t["name"]: t for t in summary["trials"]}
    assert summary["complete"] and summary["counts"]["finished"] == 2
    retried, untouched = trials["trial-000"], trials["trial-001"]
    assert retried["failures"] == 1 and retried["resumed_from_epoch"] >= 1  # from its checkpoint, not from scratch
    assert retried["node"]["id"] == survivor.node_id  # finished on the node that was left
    assert untouched["failures"] == 0 and untouched["resumed_from_epoch"] == 0
    assert run_numbers(victim) == run_numbers(other)  # exact: as if never interrupted
    assert len(run_numbers(victim)["metrics"]) == 12


def test_a_lost_head_ends_in_one_line_and_resume_finishes_the_sweep(cluster, tiny_data_dir, isolated_env, tmp_path):
    cluster.ensure()
    config = sweep_toml(tmp_path / "sweep.toml", tiny_data_dir, epochs=16, trials=4)
    out = tmp_path / "sweep"
    tmpdir = Path(tempfile.mkdtemp(prefix="fmt", dir="/tmp"))
    env = {**cli_env(isolated_env, tmpdir), RECONNECT_ENV: HEAD_WAIT_S}
    fmnist = [sys.executable, "-m", "fmnist"]
    try:
        sweep = subprocess.Popen([*fmnist, "sweep", str(config), "--out", str(out), "--ray", cluster.address,
                                  "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        try:
            trials = [out / TRIALS_DIR / f"trial-00{i}" for i in range(4)]
            deadline = time.monotonic() + 150
            midway = None
            while time.monotonic() < deadline and sweep.poll() is None:
                finished = [t for t in trials if (t / RESULTS_FILE).is_file()]
                # One done, another mid-way: 3 epochs recorded, so its state after epoch 2 is saved
                # (an epoch's metrics line is written before its state).
                midway = next(((t, pid) for t in trials if (pid := _training_pid(t, 3))), None) if finished else None
                if midway:
                    break
                time.sleep(0.02)
            assert sweep.poll() is None and midway, "the sweep ended before its head could be killed"
            # Frozen where it is: worker nodes outlive their head for a while, and on tiny data the trial
            # could otherwise finish before the cluster is gone, leaving nothing mid-way to resume.
            os.kill(midway[1], signal.SIGSTOP)
            cluster.kill(cluster.cluster.head_node)
            lost_at = time.monotonic()
            stdout, stderr = sweep.communicate(timeout=90)
            took = time.monotonic() - lost_at
        finally:
            if sweep.poll() is None:
                sweep.kill()
        for node in cluster.workers:  # a worker waits for its head for a minute; no need here
            cluster.kill(node)
        with contextlib.suppress(ProcessLookupError):  # stopped, it cannot notice its node is gone
            os.kill(midway[1], signal.SIGKILL)
        lines = stderr.strip().splitlines()
        assert sweep.returncode == 1, stderr[-3000:]
        assert "Traceback" not in stderr and not any(line.startswith("[20") for line in lines), stderr[-3000:]
        assert lines[-1].startswith("error: lost the Ray cluster's head at ") and sum(
            line.startswith("error") for line in lines) == 1, stderr[-3000:]  # fmt: skip
        assert took < float(HEAD_WAIT_S) + 10  # before Ray's own fatal exit
        finished = {t.name: (t / RESULTS_FILE).read_bytes() for t in trials if (t / RESULTS_FILE).is_file()}
        assert finished and len(finished) < 4
        assert not json.loads((out / SWEEP_FILE).read_text())["complete"]

        resume = lines[-1].split("continue with: ", 1)[1].split()
        assert resume[:3] == ["fmnist", "sweep", "--resume"] and resume[-2:] == ["--ray", cluster.address]
        cluster.ensure()  # a new head on the same port, and new workers
        done = subprocess.run([*fmnist, *resume[1:], "--no-report"], capture_output=True, text=True, env=env,
                              timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    summary = json.loads((out / SWEEP_FILE).read_text())
    assert summary["complete"] and summary["counts"]["finished"] == 4
    for name, results in finished.items():  # kept as they were, not trained again
        assert (out / TRIALS_DIR / name / RESULTS_FILE).read_bytes() == results, name
    by_name = {t["name"]: t for t in summary["trials"]}
    assert midway[0].name not in finished and by_name[midway[0].name]["resumed_from_epoch"] >= 2
    reference = run_numbers(out / TRIALS_DIR / "trial-000")
    for trial in summary["trials"]:  # every trial, interrupted or not, trained the same numbers
        assert len(trial["epochs"]) == 16
        assert run_numbers(out / trial["run_dir"]) == reference, trial["name"]
