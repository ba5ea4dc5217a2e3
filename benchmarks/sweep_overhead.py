"""What Ray adds to fmnist runs, measured on this machine.

1. Per-trial overhead: the same 8 short runs (mlp_seed002, 2 epochs, one learning rate each)
   trained one after another in one process with 1 thread, then as a local Ray Tune sweep
   running one 1-CPU trial at a time (no early stopping). Overhead per trial = (sweep time -
   sequential time) / 8, in seconds and as a share of one run. Starting and stopping the
   local Ray is measured on its own (once per command).
2. Throughput: 4 identical trials as 2 concurrent trials x 1 CPU, then as 1 trial x 2 CPUs.

    FMNIST_DATA=... python benchmarks/sweep_overhead.py [--runs 8] [--epochs 2] [--model mlp_seed002]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmnist import api
from fmnist.device import cpu_model
from fmnist.experiments.ray_runtime import RaySession
from fmnist.inference.rundir import prepare_run_dir
from fmnist.training.run_writer import train_into
from fmnist.training.settings import resolve_config

LRS = [1e-3 * 1.5**k for k in range(16)]  # learning rates of the runs, all sensible for the MLP


def sweep_toml(path: Path, model: str, epochs: int, lrs: list[float], sweep: str) -> Path:
    grid = ", ".join(repr(lr) for lr in lrs)
    path.write_text(f'model = "{model}"\nepochs = {epochs}\n[sweep]\nscheduler = "none"\n{sweep}\n'
                    f"[search]\nlr = {{ grid = [{grid}] }}\n")  # fmt: skip
    return path


def images_trained(summary: dict, batch_size: int) -> int:
    return sum(t["epochs"][-1]["steps"] for t in summary["trials"] if t["epochs"]) * batch_size


def sequential(work: Path, data, model: str, epochs: int, lrs: list[float]) -> list[float]:
    """Seconds of each run, trained one after another in this process."""
    seconds = []
    for i, lr in enumerate(lrs):
        config = resolve_config(model, options={"epochs": epochs, "lr": lr})
        started = time.perf_counter()
        train_into(config, prepare_run_dir(work / f"seq-{i}"), data)
        seconds.append(time.perf_counter() - started)
    return seconds


def steady_seconds(run_dirs: list[Path]) -> float:
    """From the first run's start to the last run's end (config.toml and results.json are written then)."""
    first = min((d / "config.toml").stat().st_mtime for d in run_dirs)
    last = max((d / "results.json").stat().st_mtime for d in run_dirs)
    return last - first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="mlp_seed002")
    parser.add_argument("--sequential", metavar="DIR", help=argparse.SUPPRESS)  # the baseline's child process
    args = parser.parse_args()
    data = api.load_data()
    lrs = LRS[: args.runs]
    if args.sequential:
        print(json.dumps(sequential(Path(args.sequential), data, args.model, args.epochs, lrs)))
        return
    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-"))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start", flush=True)

    # 1a. sequential in a plain process with one thread, as Ray starts a 1-CPU trial's worker
    # (OMP_NUM_THREADS=1; torch.set_num_threads(1) in a running process measured 1.5x slower here)
    command = [sys.executable, __file__, "--sequential", str(work), "--runs", str(args.runs), "--epochs",
               str(args.epochs), "--model", args.model]  # fmt: skip
    done = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=True
    )
    seq = json.loads(done.stdout.strip().splitlines()[-1])
    seq_total = sum(seq)
    print(f"sequential: {len(seq)} runs in {seq_total:.1f} s ({statistics.fmean(seq):.2f} s per run)", flush=True)

    started = time.perf_counter()
    with RaySession("local", notify=lambda m: print(m, file=sys.stderr)):
        ray_start = time.perf_counter() - started
        # 1b. the same runs as a sweep, one 1-CPU trial at a time
        config = sweep_toml(work / "one-at-a-time.toml", args.model, args.epochs, lrs,
                            "num_samples = 1\ncpus_per_trial = 1\nmax_concurrent_trials = 1")  # fmt: skip
        started = time.perf_counter()
        api.sweep(config, out=work / "sweep-seq", data=data, progress=False, report=False)
        sweep_total = time.perf_counter() - started
        # 2. throughput: 4 identical trials, 2 x 1 CPU vs 1 x 2 CPUs
        results = {}
        for label, cpus in (("2 trials x 1 CPU", 1), ("1 trial x 2 CPUs", 2)):
            config = sweep_toml(work / f"cpus{cpus}.toml", args.model, args.epochs, lrs[:1],
                                f"num_samples = 4\ncpus_per_trial = {cpus}")  # fmt: skip
            started = time.perf_counter()
            summary = api.sweep(config, out=work / f"sweep-cpus{cpus}", data=data, progress=False, report=False)
            wall = time.perf_counter() - started
            results[label] = (wall, images_trained(summary, resolve_config(args.model).batch_size) / wall)
        stopping = time.perf_counter()
    ray_stop = time.perf_counter() - stopping

    per_trial = (sweep_total - seq_total) / len(lrs)
    steady_seq = steady_seconds(sorted(work.glob("seq-*")))
    steady_sweep = steady_seconds(sorted((work / "sweep-seq" / "trials").iterdir()))
    between = (steady_sweep - steady_seq) / len(lrs)
    print()
    print(f"Ray start {ray_start:.1f} s, stop {ray_stop:.1f} s (once per command)")
    print(f"per-trial overhead: sweep {sweep_total:.1f} s vs sequential {seq_total:.1f} s for {len(lrs)} runs -> "
          f"{per_trial:+.2f} s per trial ({100 * per_trial / statistics.fmean(seq):+.0f}% of a {statistics.fmean(seq):.1f} s run)")  # fmt: skip
    print(f"  of which fixed per sweep (Tune set-up, the first worker's start, wind-down): "
          f"{(sweep_total - steady_sweep) - (seq_total - steady_seq):.1f} s; from the first trial's start to the "
          f"last one's end: {between:+.2f} s per trial ({100 * between / statistics.fmean(seq):+.0f}%)")  # fmt: skip
    for label, (wall, rate) in results.items():
        print(f"throughput, 4 trials as {label}: {wall:.1f} s, {rate:,.0f} training images/s")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
