"""`--jobs N` against one run at a time: the same compare, timed side by side on this machine.

Each round runs `fmnist compare --models M --seeds S` twice as a user would (a fresh process,
the real data, no report): once as it trains by default (one run at a time on every thread)
and once with `--jobs N` (N runs at once, an equal share of the threads each). Rounds alternate
the order, so both settings meet the same background load. It prints each setting's wall
time, the runs' mean test accuracy, and the speed-up (one-at-a-time seconds / --jobs seconds).

    FMNIST_DATA=... python benchmarks/parallel_jobs.py [--models mlp_wide,fastcnn] [--seeds 4]
        [--jobs 2] [--rounds 2] [--isa native|avx2|avx512|avx512_bf16] [--max-steps N]

`--isa` caps the instruction set of the compare processes (and so of their workers) to
emulate another CPU; `--max-steps` is the smoke mode the tests run.
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

from isa_caps import ISA_LEVELS

from fmnist.device import cpu_isa, cpu_model


def timed_compare(args, jobs: int, out: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, mean test accuracy, the runs' ISA and precision) of one `fmnist compare` with `jobs`."""
    command = [sys.executable, "-m", "fmnist", "compare", "--models", args.models, "--seeds", str(args.seeds),
               "--jobs", str(jobs), "--no-report", "--out", str(out)]  # fmt: skip
    if args.max_steps:
        command += ["--max-steps", str(args.max_steps), "--val-size", "100"]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"fmnist compare --jobs {jobs} failed: {proc.stderr.strip().splitlines()[-1:]}")
    runs = json.loads((out / "compare.json").read_text())["runs"]
    first = json.loads((out / runs[0]["run_dir"] / "results.json").read_text())
    return seconds, statistics.fmean(run["test_accuracy"] for run in runs), f"{first['cpu_isa']}, {first['precision']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp_wide,fastcnn", help="`make run`'s pair by default")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both settings, order alternating")
    parser.add_argument("--isa", choices=sorted(ISA_LEVELS), default="native")
    parser.add_argument("--max-steps", type=int, default=0, help="smoke mode: stop every run after N steps")
    args = parser.parse_args()
    what, caps, _ = ISA_LEVELS[args.isa]
    env = {**os.environ, **caps}
    settings = (1, args.jobs)
    seconds: dict[int, list[float]] = {jobs: [] for jobs in settings}
    accuracy: dict[int, list[float]] = {jobs: [] for jobs in settings}
    runs = len(args.models.split(",")) * args.seeds
    print(f"{cpu_model()} ({cpu_isa()}, {os.cpu_count()} CPUs), the runs as '{what}': "
          f"compare {args.models} x {args.seeds} seeds = {runs} runs")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fmnist-jobs-") as scratch:
        for round_ in range(args.rounds):
            for jobs in settings if round_ % 2 == 0 else settings[::-1]:
                wall, acc, trained = timed_compare(args, jobs, Path(scratch) / f"r{round_}-j{jobs}", env)
                seconds[jobs].append(wall)
                accuracy[jobs].append(acc)
                print(f"  round {round_ + 1}, --jobs {jobs}: {wall:7.1f} s, mean test accuracy {100 * acc:.2f}% "
                      f"(trained on {trained})",
                      flush=True)  # fmt: skip
    print(f"{'setting':<28}{'wall s (mean)':>14}{'runs/min':>10}{'accuracy':>10}{'speed-up':>10}")
    base = statistics.fmean(seconds[1])
    for jobs in settings:
        wall = statistics.fmean(seconds[jobs])
        label = "one run at a time" if jobs == 1 else f"--jobs {jobs}"
        print(f"{label:<28}{wall:>14.1f}{60 * runs / wall:>10.1f}{100 * statistics.fmean(accuracy[jobs]):>9.2f}%"
              f"{base / wall:>9.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
