"""The accuracy frontier: each named recipe trained over seeds, accuracy against time.

For every recipe (fmnist.training.recipes) it runs `fmnist train --recipe NAME` exactly as a user
would (the recipe's fixed epochs, best epoch on the validation split, the test set touched
once), over --seeds seeds (one seed when a run would take over --long-run minutes), and
prints one table: recipe, model, test accuracy mean ± std, seconds per run, hardware. It draws
accuracy against time (mean ± std, the Pareto front joined) to frontier.png and, with
--write, records the figures in fmnist/training/recipes_measured.json for `fmnist recipes` (one entry per
machine: a new measurement replaces only its own machine's). Each run is
a normal run directory (OUT/RECIPE/seed-N), so `fmnist report` and `fmnist ensemble` take it;
--ensemble also averages each recipe's seeds and prints the gain over the best member.

--jobs N trains a recipe's seeds N at a time (`fmnist train --seeds --jobs`: each run in its own
process, an equal share of the CPU threads or sharing the GPU). Every seed then runs (no
one-seed rule for long runs), the run folders are OUT/RECIPE-jobs/RECIPE-seedN, and a run's
seconds are its own wall time from start to results while it shared the machine, so they are
longer than a run alone; the recorded command says --jobs.

    python benchmarks/frontier.py [--recipes fast,cpu-94] [--seeds 3] [--jobs 1] [--ensemble] [--write] [--out DIR]
    python benchmarks/frontier.py --max-steps 5          # smoke mode: checks the harness only
    python benchmarks/frontier.py --plot-recorded        # redraw frontier.png from what --write recorded
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
from isa_caps import capped_level, caps_text  # benchmarks/isa_caps.py

from fmnist.api import load_data, make_config, make_session, run_plan, train
from fmnist.device import cpu_isa, cpu_model
from fmnist.experiments.jobs import threads_per_job
from fmnist.experiments.plan import ComparePlan, RunSpec
from fmnist.inference.ensemble_build import build_ensemble
from fmnist.training.recipes import (
    MEASURED_FILE,
    RECIPES,
    accuracy_label,
    measured,
    record_measurement,
    settings_fingerprint,
)


def hardware(jobs: int = 1) -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0) + (f" ({jobs} runs at once)" if jobs > 1 else "")
    if jobs > 1:
        return f"{cpu_model()} ({cpu_isa()}, {jobs} runs at once, {threads_per_job(jobs)} thread(s) each)"
    return f"{cpu_model()} ({cpu_isa()}, {torch.get_num_threads()} threads)"


def measure(name: str, seeds: int, long_run_s: float, data, max_steps: int | None, val_size: int | None,
            out: Path) -> dict:  # fmt: skip
    accuracies, seconds, run_dirs = [], [], []
    for seed in range(seeds):
        options = {"seed": seed, "max_steps": max_steps, "val_size": val_size}
        run_dirs.append(out / name / f"seed-{seed}")
        started = time.perf_counter()
        run = train(recipe=name, out=run_dirs[-1], data=data, progress=False, overwrite=True, **options)
        seconds.append(time.perf_counter() - started)
        accuracies.append(run.test_accuracy)
        print(f"  {name} seed {seed}: {100 * run.test_accuracy:.2f}% in {seconds[-1]:.0f} s", flush=True)
        if seconds[-1] > long_run_s:  # one seed is all such a recipe gets here
            break
    return row(name, accuracies, seconds, run_dirs, f"--seeds {seeds}", max_steps)


def measure_side_by_side(name: str, seeds: int, jobs: int, data, max_steps: int | None, val_size: int | None,
                         out: Path) -> dict:  # fmt: skip
    """measure(), with the seeds trained `jobs` at a time in worker processes."""
    folder = out / f"{name}-jobs"
    shutil.rmtree(folder, ignore_errors=True)  # this script's own output: replaced, as measure() overwrites
    config = make_config(recipe=name, max_steps=max_steps, val_size=val_size)
    plan = ComparePlan([RunSpec(name, {}, resolved=config)], seeds=seeds, title=f"{name} over {seeds} seeds")
    session = make_session(folder, data=data, progress=False, jobs=jobs)
    runs = run_plan(plan, plan.resolve(), session, report=False).summary["runs"]
    run_dirs = [folder / r["run_dir"] for r in runs]
    # From config.toml (written as a run starts) to results.json (its last file): the run's own wall time.
    seconds = [(d / "results.json").stat().st_mtime - (d / "config.toml").stat().st_mtime for d in run_dirs]
    for r, s in zip(runs, seconds):
        print(f"  {name} seed {r['seed']}: {100 * r['test_accuracy']:.2f}% in {s:.0f} s (sharing)", flush=True)
    return row(name, [r["test_accuracy"] for r in runs], seconds, run_dirs, f"--seeds {seeds} --jobs {jobs}",
               max_steps, jobs)  # fmt: skip


def row(name: str, accuracies: list[float], seconds: list[float], run_dirs: list[Path], options: str,
        max_steps: int | None, jobs: int = 1) -> dict:  # fmt: skip
    caps = "" if capped_level() == "native" else caps_text(capped_level()) + " "
    return {
        "model": RECIPES[name].model, "runs": len(accuracies), "accuracy": accuracies,
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "seconds_mean": statistics.fmean(seconds), "seconds": seconds, "hardware": hardware(jobs),
        "command": f"{caps}python benchmarks/frontier.py --recipes {name} {options}",
        "smoke": bool(max_steps), "settings": settings_fingerprint(name), "run_dirs": [str(d) for d in run_dirs],
    }  # fmt: skip


def ensemble_of_seeds(name: str, row: dict, data, out: Path) -> dict | None:
    """The average of a recipe's seeds: its accuracy and gain over the best member."""
    if row["runs"] < 2:
        return None
    # Each seed holds out its own images, so there is no shared validation split to choose on: plain average.
    results = build_ensemble([Path(d) for d in row["run_dirs"]], out / f"{name}-ensemble", dataset=data, select="all",
                             overwrite=True)  # fmt: skip
    return {"members": row["runs"], "accuracy": results.test_accuracy,
            "gain_over_best_member": results.gain_over_best_member}  # fmt: skip


def pareto(rows: dict[str, dict]) -> list[str]:
    """Recipes no other recipe beats on both time and accuracy, fastest first."""
    ordered = sorted(rows, key=lambda n: rows[n]["seconds_mean"])
    front, best = [], -1.0
    for name in ordered:
        if rows[name]["accuracy_mean"] > best:
            front.append(name)
            best = rows[name]["accuracy_mean"]
    return front


def plot(series: dict[str, dict[str, dict]], path: Path) -> None:
    """Accuracy against time, one marker and one Pareto front per machine (`series`: hardware -> rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.4 + 0.25 * len(series)), dpi=110)
    labelled: list[tuple[str, float, float]] = []
    for (machine, rows), marker in zip(sorted(series.items()), itertools.cycle("osD^v")):  # every machine drawn
        points = ax.errorbar([r["seconds_mean"] for r in rows.values()], [100 * r["accuracy_mean"] for r in rows.values()],
                             yerr=[100 * r["accuracy_std"] for r in rows.values()], fmt=marker, capsize=3, label=machine)  # fmt: skip
        for name, r in rows.items():
            x, y = r["seconds_mean"], 100 * r["accuracy_mean"]
            # A recipe measured on several machines often lands in one cluster: one label is enough.
            if not any(n == name and abs(math.log10(x / px)) < 0.25 and abs(y - py) < 0.3 for n, px, py in labelled):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
                labelled.append((name, x, y))
        front = pareto(rows)
        ax.plot([rows[n]["seconds_mean"] for n in front], [100 * rows[n]["accuracy_mean"] for n in front], "--",
                color=points.lines[0].get_color(), alpha=0.6)  # fmt: skip
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the labels beside the outermost points
    # Plain labels at 1-2-5 steps: matplotlib's default labels its minor ticks too, and they overlap.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("seconds per run (log scale)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title("fmnist recipes: accuracy against time (dashed: each machine's Pareto front)", fontsize=9)
    ax.grid(alpha=0.3)
    # Below the axes: inside them it covered the labels of the fastest, least accurate recipes.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def recorded_series() -> dict[str, dict[str, dict]]:
    """Everything --write recorded (smoke runs aside), grouped by the machine it was measured on."""
    series: dict[str, dict[str, dict]] = {}
    for name, rows in measured().items():
        for row in rows:
            if not row.get("smoke"):
                series.setdefault(row.get("hardware", "?"), {})[name] = row
    return series


def record(rows: dict[str, dict]) -> None:
    """Keep measured rows (frontier.json's) in recipes_measured.json, beside other machines' figures."""
    recorded = measured()
    for name, r in rows.items():  # local run folders mean nothing on a user's machine: figures only
        record_measurement(recorded, name, {k: v for k, v in r.items() if k not in ("run_dirs", "ensemble")})
    MEASURED_FILE.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"recorded in {MEASURED_FILE}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(r for r, v in RECIPES.items() if v.device == "cpu"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (see the docstring)")
    parser.add_argument("--long-run", type=float, default=30.0, help="minutes; longer runs get one seed")
    parser.add_argument("--max-steps", type=int, help="smoke mode: stop each run after N steps")
    parser.add_argument("--val-size", type=int, help="validation images [default: each recipe's]")
    parser.add_argument("--data-dir", default=os.environ.get("FMNIST_DATA"))
    parser.add_argument("--out", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--write", action="store_true", help="record the figures for `fmnist recipes`")
    parser.add_argument("--ensemble", action="store_true", help="also average each recipe's seeds")
    parser.add_argument("--plot-recorded", action="store_true",
                        help="train nothing: draw OUT/frontier.png from every recipe recorded by --write")  # fmt: skip
    args = parser.parse_args()
    if args.plot_recorded:
        series = recorded_series()
        if not series:
            parser.error(f"nothing is recorded in {MEASURED_FILE.name} yet: run with --write first")
        args.out.mkdir(parents=True, exist_ok=True)
        plot(series, args.out / "frontier.png")
        for machine, rows in series.items():
            print(f"{machine}: {', '.join(rows)}")
        print(f"wrote {args.out / 'frontier.png'} from {MEASURED_FILE.name}")
        return 0
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}; available: {', '.join(RECIPES)}")
    data = load_data(args.data_dir)
    if args.jobs > 1:
        rows = {n: measure_side_by_side(n, args.seeds, args.jobs, data, args.max_steps, args.val_size, args.out)
                for n in names}  # fmt: skip
    else:
        rows = {n: measure(n, args.seeds, 60 * args.long_run, data, args.max_steps, args.val_size, args.out)
                for n in names}  # fmt: skip
    if args.ensemble:
        for name, row in rows.items():
            row["ensemble"] = ensemble_of_seeds(name, row, data, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"\n{'recipe':<14}{'model':<14}{'test accuracy':>26}{'s/run':>9}  hardware")
    for name, r in rows.items():
        print(f"{name:<14}{r['model']:<14}{accuracy_label(r):>26}{r['seconds_mean']:>9.0f}  {r['hardware']}")
    for name, r in rows.items():
        if r.get("ensemble"):
            e = r["ensemble"]
            print(f"{name}: ensemble of {e['members']} seeds {100 * e['accuracy']:.2f}% "
                  f"({100 * e['gain_over_best_member']:+.2f} points over the best member)")  # fmt: skip
    print(f"Pareto front: {' -> '.join(pareto(rows))}")
    plot({hardware(args.jobs): rows}, args.out / "frontier.png")
    (args.out / "frontier.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out / 'frontier.png'} and {args.out / 'frontier.json'}")
    if args.write and not args.max_steps:
        record(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
