"""Screen candidate settings on the validation split, and record the screen as JSON.

A screen file (configs/screens/NAME.toml) names a base set-up, the candidates (each a table of
settings over the base) and the seeds. Every candidate and seed is resolved through
`resolve_config` and trained through `fit`, as `fmnist train` would; the JSON keeps each
candidate's full resolved settings, the keys it changes from the base, and per seed its validation
accuracy at the best epoch (chosen on validation, as the trainer chooses) and at the last, its
per-epoch validation history and its time. Where a candidate's epochs validate on fewer views than
it predicts with (`val_tta`), the best epoch's weights are also scored through its `tta` views
(`tta_val_accuracy`, the figure to choose on; elsewhere it equals the best epoch's accuracy). No test figure exists to be read: `fit` ends by
evaluating the test split, and the screen hands it a one-image stand-in taken from the training
images instead.

    python benchmarks/screen.py configs/screens/fast.toml [--jobs 2] [--isa avx2] [--json PATH]
    python benchmarks/screen.py SCREEN --smoke --json PATH   # the plumbing: 2 steps a run, 100 validation images
    python benchmarks/screen.py SCREEN --judge RECORD         # apply the file's [rule] to a recorded screen

A screen file may carry its choice as a [rule], written before its runs: `keep` names the candidate
that is the recipe as it stands, `min_gain` the points of mean tta_val_accuracy the best candidate
must add to it, and `max_time_ratio` (optional) how much longer than it that candidate may run. The
record then holds the rule and its verdict, computed here (`judge`), not by the person reading it.

Runs go seed by seed, each round's candidates in an order rotated one place from the round
before's (run_order), so that a machine's drift over the screen does not fall on one candidate.
--jobs N trains N runs at once, each in its own process with an equal share of the threads.
--isa LEVEL (avx2, avx512, avx512_bf16, native) reruns the screen in a child process capped to that
instruction set (see isa_caps.py). Writes benchmarks/results/screen-<name>-<cpu>[-<level>].json (or --json; the level where capped),
which docs/results.md renders (docs/scripts/results_tables.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from isa_caps import ISA_LEVELS, capped_level, caps_text, cpu_slug, run_capped, unavailable  # benchmarks/isa_caps.py

from fmnist.config import TrainConfig
from fmnist.errors import UsageError
from fmnist.fsutil import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SCREEN_KEYS = {"name", "about", "chose", "seeds", "base", "candidates", "rule"}
RULE_KEYS = {"keep", "min_gain", "max_time_ratio"}
SMOKE = {"max_steps": 2, "val_size": 100}  # options over every run in --smoke


@dataclasses.dataclass(frozen=True)
class Rule:
    """The best candidate by mean tta_val_accuracy replaces `keep` (the recipe as it stands) only if it
    beats keep's mean by at least `min_gain` points and, where `max_time_ratio` is set, its mean cost
    (wall time, plus a distilled candidate's teacher's training) is at most that many times keep's;
    otherwise the recipe stays as it is."""

    keep: str
    min_gain: float
    max_time_ratio: float | None = None


@dataclasses.dataclass
class Screen:
    name: str
    about: str
    chose: str  # the recipe this screen chose, "" for none
    seeds: list[int]
    base: dict[str, Any]
    candidates: dict[str, dict[str, Any]]
    path: Path
    rule: Rule | None = None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_rule(raw: Any, candidates: dict[str, Any], path: Path) -> Rule | None:
    """The [rule] table, checked (None where the file has none)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: rule must be a table ([rule])")
    if unknown := sorted(set(raw) - RULE_KEYS):
        raise UsageError(
            f"{path}: [rule] has unknown key(s) {', '.join(unknown)}; it has {', '.join(sorted(RULE_KEYS))}"
        )
    if raw.get("keep") not in candidates:
        raise UsageError(
            f"{path}: [rule] keep must name a candidate ({', '.join(candidates)}), not {raw.get('keep')!r}"
        )
    if not (_number(raw.get("min_gain")) and raw["min_gain"] >= 0):
        raise UsageError(f"{path}: [rule] min_gain must be a number of points >= 0, not {raw.get('min_gain')!r}")
    ratio = raw.get("max_time_ratio")
    if ratio is not None and not (_number(ratio) and ratio > 0):
        raise UsageError(f"{path}: [rule] max_time_ratio must be a number > 0, not {ratio!r}")
    return Rule(raw["keep"], float(raw["min_gain"]), None if ratio is None else float(ratio))


def mean_cost(candidate: dict[str, Any]) -> float:
    """A recorded candidate's mean cost in seconds (a record from before distillation: its wall time)."""
    return candidate.get("mean_cost_seconds", candidate["mean_wall_seconds"])


def judge(rule: Rule, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule applied to the recorded candidates: the one the recipe takes, and why, in a sentence."""
    kept = next(c for c in candidates if c["name"] == rule.keep)
    # Ties go to the kept candidate: max() keeps the first of equals, and it is put first.
    best = max([kept, *(c for c in candidates if c is not kept)], key=lambda c: c["mean_tta_val_accuracy"])
    if best is kept:
        return {"candidate": rule.keep, "changes_recipe": False,
                "reason": f"`{rule.keep}` scored highest ({100 * kept['mean_tta_val_accuracy']:.2f}%)"}  # fmt: skip
    # Rounded so that a gain of exactly min_gain (0.9467 - 0.9452) is not lost to binary fractions.
    gain = round(100 * (best["mean_tta_val_accuracy"] - kept["mean_tta_val_accuracy"]), 6)
    ratio = mean_cost(best) / mean_cost(kept)
    short = (
        [f"it adds {gain:.2f} points to `{rule.keep}`, the rule asks {rule.min_gain:g}"] if gain < rule.min_gain else []
    )
    if rule.max_time_ratio is not None and ratio > rule.max_time_ratio:
        short.append(f"it takes {ratio:.2f}x `{rule.keep}`'s time, the rule allows {rule.max_time_ratio:g}x")
    taken = best["name"] if not short else rule.keep
    reason = (f"`{best['name']}` scored highest ({100 * best['mean_tta_val_accuracy']:.2f}%, "
              f"+{gain:.2f} points, {ratio:.2f}x the time of `{rule.keep}`)")  # fmt: skip
    reason += f"; kept `{rule.keep}`: {'; '.join(short)}" if short else "; the recipe takes it"
    return {"candidate": taken, "changes_recipe": taken != rule.keep, "reason": reason}


def read_screen(path: Path) -> Screen:
    """The screen file, checked: a bad key or value is one UsageError naming the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the screen file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    if unknown := sorted(set(raw) - SCREEN_KEYS):
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)}; a screen has {', '.join(sorted(SCREEN_KEYS))}")
    seeds, candidates = raw.get("seeds"), raw.get("candidates")
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise UsageError(f"{path}: name must be the screen's name")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        raise UsageError(f"{path}: seeds must be a list of non-negative integers, not {seeds!r}")
    if not (isinstance(candidates, dict) and candidates and all(isinstance(c, dict) for c in candidates.values())):
        raise UsageError(f"{path}: [candidates.NAME] tables must name at least one candidate")
    base = raw.get("base", {})
    for where, values in (("base", base), *((f"candidates.{n}", c) for n, c in candidates.items())):
        if "seed" in values:  # each run's seed is the screen's
            raise UsageError(f"{path}: [{where}] sets seed; the screen's seeds list sets it")
    rule = read_rule(raw.get("rule"), candidates, path)
    return Screen(raw["name"], raw.get("about", ""), raw.get("chose", ""), seeds, base, candidates, path, rule)


def resolve(screen: Screen, candidate: str | None, options: dict[str, Any]) -> TrainConfig:
    """The candidate's config (the base's for None): the base as a config file, the candidate over it.

    The candidate is the options layer, so its model arguments merge key by key with the base's.
    """
    from fmnist.training.settings import resolve_config

    overrides = screen.candidates[candidate] if candidate else {}
    origin = f"{screen.path}, candidate {candidate!r}" if candidate else f"{screen.path}, base"
    try:
        return resolve_config(file_values=screen.base, origin=str(screen.path),
                              options={**overrides, **options})  # fmt: skip
    except UsageError as exc:
        raise UsageError(f"{origin}: {exc}") from None


def changed(base: TrainConfig, config: TrainConfig) -> dict[str, list[Any]]:
    """{key: [base's value, the candidate's]} for every resolved setting the candidate changes."""
    flat = {key: value for key, value, _ in base.source_rows()}
    return {key: [flat.get(key), value] for key, value, _ in config.source_rows() if flat.get(key) != value}


def this_command() -> str:
    """This run's command line, as a record quotes it."""
    return " ".join(["python", "benchmarks/screen.py", *sys.argv[1:]])


def shown(path: Path) -> str:
    """A path as the JSON records it: relative to the repository where it lies inside it."""
    path = path.resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()


def without_seed(config: TrainConfig) -> dict[str, Any]:
    """The resolved settings but the seed (each run's is the screen's)."""
    return {key: value for key, value in config.to_dict().items() if key != "seed"}


_DATA: dict[str | None, Any] = {}


def _dataset(data_dir: str | None):
    """The dataset, loaded once per process, with its test split replaced by a one-image stand-in."""
    if data_dir not in _DATA:
        from fmnist.data.sources import resolve_dataset

        data = resolve_dataset(data_dir, notify=lambda m: print(m, file=sys.stderr))
        _DATA[data_dir] = dataclasses.replace(data, test_images=data.train_images[:1],
                                              test_labels=data.train_labels[:1])  # fmt: skip
    return _DATA[data_dir]


def tta_val_accuracy(model, config: TrainConfig, data, precision: str) -> float:
    """The best epoch's weights on the run's validation split through its `tta` views: the figure a
    run whose epochs validate on fewer views (`val_tta`) is chosen on, as the recipe predicts that way."""
    from fmnist.data.splits import stratified_split
    from fmnist.inference.trust import embed

    labels = np.asarray(data.train_labels)
    _, val_idx = stratified_split(labels, config.val_size, config.validation_seed)
    logits, _ = embed(model, data.train_images[val_idx], mean=config.input_mean, std=config.input_std,
                      tta=config.tta, precision=precision)  # fmt: skip
    return float((logits.argmax(1) == labels[val_idx]).mean())


def run_one(config: TrainConfig, data_dir: str | None, threads: int) -> dict[str, Any]:
    """One candidate at one seed: validation accuracy at the best and the last epoch, history, time."""
    from fmnist.training.trainer import fit

    torch.set_num_threads(threads)
    data = _dataset(data_dir)
    t0 = time.perf_counter()
    result = fit(config, data)
    wall = time.perf_counter() - t0
    history = [{"epoch": r.epoch, "val_accuracy": r.val_accuracy, "val_loss": r.val_loss, "seconds": r.seconds}
               for r in result.history]  # fmt: skip
    best = next(r for r in result.history if r.epoch == result.best_epoch)
    with_tta = best.val_accuracy
    if config.epoch_validation_tta != config.tta:
        with_tta = tta_val_accuracy(result.model, config, data, result.precision)
    run = {
        "seed": config.seed, "best_epoch": result.best_epoch, "best_val_accuracy": best.val_accuracy,
        "tta_val_accuracy": with_tta, "epoch_validation_tta": config.epoch_validation_tta,
        "last_val_accuracy": result.history[-1].val_accuracy, "epochs_run": result.epochs_run,
        "steps": result.steps, "wall_seconds": wall, "train_seconds": result.train_seconds,
        "precision": result.precision, "isa": result.isa, "threads": threads, "history": history,
    }  # fmt: skip
    if result.teacher is not None:  # a distilled run's time counts its teacher's members, trained before it
        run["teacher"] = result.teacher.to_json()
        run["seconds_with_teacher"] = wall + result.teacher.members_train_seconds
    return run


def cost_seconds(run: dict[str, Any]) -> float:
    """What a run cost: its wall time, plus its teacher's members' training where it was distilled."""
    return run.get("seconds_with_teacher", run["wall_seconds"])


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = [r["best_val_accuracy"] for r in runs]
    return {"mean_best_val_accuracy": statistics.fmean(best), "min_best_val_accuracy": min(best),
            "mean_tta_val_accuracy": statistics.fmean(r["tta_val_accuracy"] for r in runs),
            "mean_last_val_accuracy": statistics.fmean(r["last_val_accuracy"] for r in runs),
            "mean_wall_seconds": statistics.fmean(r["wall_seconds"] for r in runs),
            "mean_cost_seconds": statistics.fmean(cost_seconds(r) for r in runs)}  # fmt: skip


def run_order(names: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Seed by seed, each round's candidates rotated one place on from the round before's. A machine
    that slows down or speeds up over an hour-long screen then weighs on every candidate alike in a
    --jobs 1 screen's times, not on whichever candidates the file lists last."""
    order = []
    for round_, seed in enumerate(seeds):
        start = round_ % len(names)
        order += [(name, seed) for name in names[start:] + names[:start]]
    return order


def run_screen(screen: Screen, args) -> dict[str, Any]:
    from fmnist.device import cpu_isa, cpu_model, hardware_isa
    from fmnist.experiments.jobs import threads_per_job

    options = dict(SMOKE) if args.smoke else {}
    base = resolve(screen, None, options)
    # Every candidate resolved before any training: a typo fails now, not an hour in.
    configs = {name: resolve(screen, name, options) for name in screen.candidates}
    work = [
        (name, resolve(screen, name, {**options, "seed": seed}))
        for name, seed in run_order(list(configs), screen.seeds)
    ]
    threads = threads_per_job(args.jobs)
    print(f"screen {screen.name}: {len(configs)} candidates x seeds {screen.seeds} on validation; {cpu_model()} "
          f"({cpu_isa()}, {caps_text(capped_level())}), {args.jobs} run(s) at once, {threads} thread(s) each", flush=True)  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}

    def report(name: str, run: dict[str, Any]) -> None:
        results[name].append(run)
        print(f"  {name:<28} seed {run['seed']}  val {100 * run['best_val_accuracy']:.2f}% (epoch {run['best_epoch']}), "
              f"last {100 * run['last_val_accuracy']:.2f}%, through its TTA views {100 * run['tta_val_accuracy']:.2f}%  "
              f"{run['wall_seconds']:.1f}s  {run['precision']}", flush=True)  # fmt: skip

    if args.jobs == 1:
        for name, config in work:
            report(name, run_one(config, args.data_dir, threads))
    else:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [(name, pool.submit(run_one, config, args.data_dir, threads)) for name, config in work]
            for name, future in futures:
                report(name, future.result())
    candidates = []
    for name, config in configs.items():
        runs = sorted(results[name], key=lambda r: r["seed"])
        candidates.append({"name": name, "overrides": screen.candidates[name], "changed": changed(base, config),
                           "settings": without_seed(config), **summary(runs), "runs": runs})  # fmt: skip
    import fmnist

    data = _dataset(args.data_dir)
    return {
        "benchmark": "screen", "screen": screen.name, "about": screen.about, "chose": screen.chose,
        "screen_file": shown(screen.path), "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": this_command(),
        "cpu": cpu_model(), "hardware_isa": hardware_isa(), "isa": cpu_isa(), "isa_level": capped_level(),
        "isa_caps": ISA_LEVELS[capped_level()][1], "precision": sorted({r["precision"] for c in candidates for r in c["runs"]}),
        "jobs": args.jobs, "threads_per_run": threads, "seeds": screen.seeds, "smoke": args.smoke,
        "data": {"source": data.provenance.source, "split": data.provenance.split, "val_size": base.val_size},
        "chosen_on": "validation accuracy at each run's best epoch, through the run's TTA views (tta_val_accuracy; "
                     "the test split is never evaluated)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "fmnist": fmnist.__version__},
        "base": without_seed(base), "candidates": candidates,
        **judged(screen, candidates),
    }  # fmt: skip


def judged(screen: Screen, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's rule and verdict ({} for a screen file without a rule)."""
    if screen.rule is None:
        return {}
    return {"rule": dataclasses.asdict(screen.rule), "verdict": judge(screen.rule, candidates)}


def judge_record(screen: Screen, record_path: Path) -> dict[str, Any]:
    """A recorded screen with the file's rule and its verdict added (recorded before the rule was data)."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the screen record {record_path}: {exc}") from None
    if record.get("screen") != screen.name or [c["name"] for c in record.get("candidates", [])] != list(
        screen.candidates
    ):
        raise UsageError(f"{record_path} is not a record of the screen {screen.name!r} with these candidates")
    if screen.rule is None:
        raise UsageError(f"{screen.path}: has no [rule] to judge by")
    when = datetime.now(UTC).isoformat(timespec="seconds")
    return {**record, **judged(screen, record["candidates"]),
            "judged": {"date": when, "command": this_command()}}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("screen", type=Path, help="a screen file, e.g. configs/screens/fast.toml")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--isa", choices=list(ISA_LEVELS), help="run capped to this instruction-set level")
    parser.add_argument("--smoke", action="store_true", help="2 steps a run, 100 validation images (needs --json)")
    parser.add_argument("--data-dir", default=os.environ.get("FMNIST_DATA"))
    parser.add_argument("--json", type=Path, help="write the screen here (default: benchmarks/results/)")
    parser.add_argument("--judge", type=Path, metavar="RECORD",
                        help="train nothing: add the file's [rule] and its verdict to this recorded screen")  # fmt: skip
    args = parser.parse_args()
    try:
        if args.jobs < 1:
            raise UsageError(f"--jobs must be 1 or more, not {args.jobs}")
        if args.smoke and args.json is None:
            raise UsageError("smoke figures are never recorded: give --json PATH")
        screen = read_screen(args.screen)
        if args.judge:
            document = judge_record(screen, args.judge)
            atomic_write_json(args.judge, document)
            print(f"{screen.name}: {document['verdict']['reason']}\nwrote {args.judge}")
            return 0
        if args.isa and args.isa != capped_level():
            if reason := unavailable(args.isa):
                raise UsageError(f"--isa {args.isa}: {reason}")
            print(f"== {args.isa}: {caps_text(args.isa)}", flush=True)
            return run_capped(args.isa, sys.argv)
        document = run_screen(screen, args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from fmnist.device import cpu_model

    level = capped_level()  # a capped screen is a different record from the same CPU's native one
    suffix = "" if level == "native" else f"-{level}"
    path = args.json or RESULTS_DIR / f"screen-{screen.name}-{cpu_slug(cpu_model())}{suffix}.json"
    atomic_write_json(path, document)
    if "verdict" in document:
        print(f"verdict: {document['verdict']['reason']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
