"""`--jobs N`: runs trained side by side in worker processes, against the same runs trained here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REAL_DATA_ENV, default_sigint, run_cli
from fmnist import api
from fmnist.data.dataset import FashionMNIST, Provenance, load_idx_folder
from fmnist.errors import FmnistError, UsageError
from fmnist.experiments.compare import run_compare
from fmnist.experiments.jobs import ProcessExecutor, check_jobs, threads_per_job
from fmnist.experiments.plan import ComparePlan, RunSpec
from fmnist.experiments.session import Session
from fmnist.inference.rundir import LOCK_FILE, read_history, read_results
from fmnist.training.progress import MultiRunProgress

TINY = {"max_steps": 12, "val_size": 500}


@pytest.fixture(scope="module")
def real_dataset() -> FashionMNIST:
    folder = os.environ.get(REAL_DATA_ENV)
    if not folder or not Path(folder).is_dir():
        pytest.skip(f"{REAL_DATA_ENV} is not set to the Fashion-MNIST folder")
    return load_idx_folder(Path(folder))


def _plan(seeds: int = 2) -> ComparePlan:
    return ComparePlan([RunSpec("fastcnn", {"model": "fastcnn"}), RunSpec("mlp", {"model": "mlp"})], seeds=seeds)


def _compare(plan: ComparePlan, out: Path, dataset: FashionMNIST, overrides: dict | None = None, **session) -> dict:
    return run_compare(plan, plan.resolve(overrides), Session(out, data=dataset, **session)).to_json()


class _Heard(MultiRunProgress):
    """A display that writes each finished run into a list instead of onto a console."""

    def __init__(self, heard: list[str]):
        super().__init__(console=None)
        self.heard = heard

    def announce(self, name, result) -> None:
        self.heard.append(f"result {name}")


def _all_ended(executor: ProcessExecutor) -> bool:
    """Whether the executor started workers and every one of them has ended."""
    return bool(executor.pids) and all(_gone(pid) for pid in executor.pids)


def _gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie waiting to be reaped counts as ended)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _wait_until(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def _worker_pids(run_dirs: list[Path]) -> list[int]:
    """The pids a worker writes into each run's lock, once every run has started (it holds the lock while it trains)."""
    locks = [run_dir / LOCK_FILE for run_dir in run_dirs]
    _wait_until(lambda: all(lock.is_file() and lock.read_text().strip() for lock in locks))
    return [int(lock.read_text()) for lock in locks]


def _long_cli_compare(out: Path, data_dir: Path, **popen) -> subprocess.Popen:
    """`fmnist compare --jobs 2` of two MLP runs long enough (200 epochs) to be stopped midway."""
    return subprocess.Popen([sys.executable, "-m", "fmnist", "compare", "--models", "mlp", "--seeds", "2", "--epochs",
                             "200", "--val-size", "500", "--jobs", "2", "--no-report", "--out", str(out),
                             "--data-dir", str(data_dir)], **popen)  # fmt: skip


def test_jobs_give_the_bits_of_the_same_runs_trained_here_with_as_many_threads(real_dataset, tmp_path):
    """The oracle: the one-at-a-time loop, pinned to the workers' one thread. Weights, history, results: equal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = _compare(_plan(), tmp_path / "here", real_dataset, TINY)
    finally:
        torch.set_num_threads(threads)
    heard: list[str] = []
    executor = ProcessExecutor(2, threads_per_run=1)
    side_by_side = _compare(_plan(), tmp_path / "jobs", real_dataset, TINY, executor=executor, notify=heard.append,
                            display=_Heard(heard))  # fmt: skip
    names = ["fastcnn-seed0", "fastcnn-seed1", "mlp-seed0", "mlp-seed1"]
    assert [r["run_dir"] for r in here["runs"]] == [r["run_dir"] for r in side_by_side["runs"]] == names
    for name in names:
        a, b = tmp_path / "here" / name, tmp_path / "jobs" / name
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        history_a, history_b = ([row.to_json() for row in read_history(p)] for p in (a, b))
        assert len(history_a) == len(history_b) >= 1
        for row_a, row_b in zip(history_a, history_b):
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "steps"):
                assert row_a[key] == row_b[key], (name, key)
        ra, rb = read_results(a).to_json(), read_results(b).to_json()
        for key in ("test_accuracy", "test_loss", "best_epoch", "best_val_accuracy", "confusion", "steps"):
            assert ra[key] == rb[key], (name, key)
    assert heard[0] == "4 run(s), 2 at a time, 1 CPU thread(s) each"
    assert sorted(h for h in heard if h.startswith("result ")) == [f"result {n}" for n in names]
    epoch_lines = [h for h in heard if " loss " in h and " val " in h]  # one per finished epoch, by run name
    assert sorted(line.split()[0] for line in epoch_lines) == sorted(names)
    assert len(executor.pids) == 2 and _all_ended(executor)


def test_a_failing_run_stops_every_worker_with_one_line_naming_it(tmp_path):
    # 30 training images cannot give up 500 for validation: the worker's own FmnistError comes back.
    images, labels = np.zeros((30, 28, 28), np.uint8), np.arange(30, dtype=np.uint8) % 10
    too_small = FashionMNIST(images, labels, images[:10], labels[:10], Provenance("synthetic", "memory", "unknown"))
    executor = ProcessExecutor(2, threads_per_run=1)
    with pytest.raises(FmnistError) as info:
        _compare(_plan(), tmp_path / "c", too_small, TINY, executor=executor)
    message = str(info.value)
    assert "\n" not in message
    assert message.split(":")[0] in {"fastcnn-seed0", "fastcnn-seed1", "mlp-seed0", "mlp-seed1"}
    assert "500" in message
    assert _all_ended(executor)


def test_a_run_that_fails_while_another_trains_stops_that_one_too(real_dataset, tmp_path):
    """The long run is mid-epoch (it reads no pipe then): only the parent ending its worker stops it in time."""
    plan = ComparePlan([RunSpec("long", {"model": "fastcnn", "val_size": 500}),
                        RunSpec("bad", {"model": "mlp", "val_size": 60_000})])  # fmt: skip
    executor = ProcessExecutor(2, threads_per_run=1)
    started = time.monotonic()
    with pytest.raises(FmnistError, match="^bad: "):
        _compare(plan, tmp_path / "c", real_dataset, executor=executor)
    assert _all_ended(executor)
    assert time.monotonic() - started < 60  # long before the long run's 4 epochs could end
    assert not (tmp_path / "c" / "long" / "results.json").exists()


def test_a_worker_killed_mid_run_is_reported_and_nothing_is_left_running(real_dataset, tmp_path):
    out = tmp_path / "c"
    plan = ComparePlan([RunSpec("fastcnn", {"model": "fastcnn"})], seeds=1)
    outcome: dict[str, BaseException] = {}
    executor = ProcessExecutor(2, threads_per_run=1)

    def run() -> None:
        try:
            _compare(plan, out, real_dataset, {"max_steps": 100_000, "val_size": 500}, executor=executor)
        except BaseException as exc:  # noqa: BLE001  (the test reads what the executor raised)
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    [pid] = _worker_pids([out / "fastcnn"])
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    error = outcome["error"]
    assert isinstance(error, FmnistError)
    assert str(error).startswith("fastcnn: its worker process died (exit code -9)")
    assert executor.pids == [pid] and _all_ended(executor)  # one run: one worker


def test_check_jobs_refuses_nonsense_and_ray_together():
    assert check_jobs(None) == 1 and check_jobs(3) == 3 and check_jobs(4, ray=None) == 4
    for bad in (0, -2, True, 1.5, "2"):
        with pytest.raises(UsageError, match="jobs must be a whole number >= 1"):
            check_jobs(bad)
    with pytest.raises(UsageError, match="give one"):
        check_jobs(2, ray="local")
    assert check_jobs(1, ray="local") == 1  # one job is the default: no conflict


def test_threads_are_shared_out_and_never_zero():
    assert threads_per_job(2, threads=16) == 8
    assert threads_per_job(3, threads=16) == 5
    assert threads_per_job(4, threads=2) == 1


def test_api_refuses_jobs_with_ray_before_loading_anything(tmp_path):
    with pytest.raises(UsageError, match="give one"):
        api.compare(["mlp"], seeds=2, jobs=2, ray="local", out=tmp_path / "c", data_dir=tmp_path / "nowhere")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("command", "runs"),
    [
        (["compare", "--models", "mlp", "--seeds", "2"], {"mlp-seed0", "mlp-seed1"}),
        (["train", "--model", "mlp", "--seeds", "2"], {"mlp-seed0", "mlp-seed1"}),
        (["ablate", "--base", "cnn_seed004"], {"full", "no_dropout", "single_conv"}),
    ],
)
def test_every_multi_run_command_takes_jobs(command, runs, real_data_dir, tmp_path):
    out = tmp_path / "out"
    result = run_cli(*command, "--max-steps", "3", "--val-size", "500", "--jobs", "2", "--no-report",
                     "--out", str(out), "--data-dir", str(real_data_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert " at a time, " in result.stderr
    assert {p.name for p in out.iterdir()} >= runs | {"compare.json"}
    for name in runs:
        assert f"{name}: test accuracy" in result.stdout + result.stderr
        assert read_results(out / name).test_accuracy > 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "--models", "mlp", "--jobs", "0"], "--jobs"),
        (["compare", "--models", "mlp", "--jobs", "2", "--ray", "local"], "give one"),
        (["train", "--model", "mlp", "--jobs", "2"], "--seeds N"),
    ],
)
def test_cli_refuses_bad_jobs_in_one_line(args, message, tmp_path):
    result = run_cli(*args, "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_ctrl_c_ends_the_workers_and_keeps_their_finished_epochs(real_data_dir, tmp_path):
    out = tmp_path / "cmp"
    process = _long_cli_compare(out, real_data_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)  # fmt: skip
    workers = _worker_pids([out / f"mlp-seed{s}" for s in (0, 1)])
    metrics = [out / f"mlp-seed{s}" / "metrics.jsonl" for s in (0, 1)]
    _wait_until(lambda: all(m.is_file() and m.read_text().strip() for m in metrics))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted")
    for pid in workers:
        assert _gone(pid)
    for m in metrics:
        assert m.read_text().strip()  # the epochs finished before Ctrl-C stay
    assert not (out / "compare.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_runbook.sh check runs it)")
def test_jobs_share_one_cuda_gpu(real_dataset, tmp_path):
    overrides = {**TINY, "device": "cuda"}
    executor = ProcessExecutor(2)
    summary = _compare(_plan(), tmp_path / "gpu", real_dataset, overrides, executor=executor)
    assert len(summary["runs"]) == 4
    for run in summary["runs"]:
        assert read_results(tmp_path / "gpu" / run["run_dir"]).device.startswith("cuda")
    assert _all_ended(executor)


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(real_data_dir, tmp_path):
    # multiprocessing's spawn would import this script in every worker and train all over again there.
    script = tmp_path / "study.py"
    script.write_text(
        "import fmnist\n"
        "print('script body ran')\n"
        f"fmnist.compare(['mlp'], seeds=2, jobs=2, max_steps=3, val_size=500, report=False, progress=False,\n"
        f"               out={str(tmp_path / 'out')!r}, data_dir={str(real_data_dir)!r})\n"
    )  # fmt: skip
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("script body ran") == 1
    assert (tmp_path / "out" / "compare.json").is_file()


def test_workers_end_by_themselves_when_the_parent_is_killed_outright(real_data_dir, tmp_path):
    # `timeout` sends SIGTERM, which Python does not turn into an exception: no finally runs in the parent.
    out = tmp_path / "cmp"
    process = _long_cli_compare(out, real_data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = _worker_pids([out / f"mlp-seed{s}" for s in (0, 1)])
    process.terminate()
    process.wait(30)
    for pid in workers:
        assert _gone(pid)
