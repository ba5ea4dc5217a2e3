"""Which five CPU-recipe runs make the best ensemble? Chosen on validation, then tested once.

Two designs, fixed here before any of their figures existed:

    seeds  the cpu-94 recipe, seeds 0-4: what `frontier.py --ensemble` averages
    zoo    five different networks on cpu-94's schedule (12 epochs, crops, EMA, flip+shift TTA):
           cpu-94's fastcnn (its seed-0 run), fastcnn_deep 24-64-128, resnet_small 16-32-64, cnn and
           cnn_seed004, each about as costly as cpu-94 or up to twice that

Every run holds out the same validation images (split seed 0), so each design's members and
their average are scored on images none of them trained on (fmnist.inference.ensemble_build). The
design with the larger validation gain over its best member is chosen, and only then is its
ensemble scored on the test set. --test-all also scores the other design afterwards, for the
record; it cannot change the choice. A finished run directory in OUT is reused, not retrained.

    python benchmarks/ensemble_designs.py --out DIR [--test-all]
    python benchmarks/ensemble_designs.py --out DIR --max-steps 3 --val-size 100   # smoke mode
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from frontier import hardware  # benchmarks/frontier.py: the machine, named as the recipes record it

from fmnist.api import load_data, train
from fmnist.inference.ensemble_build import build_ensemble, validate_ensemble
from fmnist.inference.rundir import RESULTS_FILE, read_results
from fmnist.training.recipes import RECIPES

SPLIT_SEED = 0
SELECT = "all"  # the study compares plain averages of fixed designs, as recorded in docs/results.md
SCHEDULE = {k: v for k, v in RECIPES["cpu-94"].settings.items() if k != "model_args"}
MEMBERS = {
    **{f"cpu-94-seed{s}": {"recipe": "cpu-94", "seed": s} for s in range(5)},
    "fastcnn_deep-24-64-128": {"model": "fastcnn_deep", "model_args": {"widths": [24, 64, 128]}, "seed": 1, **SCHEDULE},
    "resnet_small-16-32-64": {"model": "resnet_small", "model_args": {"widths": [16, 32, 64]}, "seed": 2, **SCHEDULE},
    "cnn": {"model": "cnn", "seed": 3, **SCHEDULE},
    "cnn_seed004": {"model": "cnn_seed004", "seed": 4, **SCHEDULE},
}  # fmt: skip
DESIGNS = {
    "seeds": [f"cpu-94-seed{s}" for s in range(5)],
    "zoo": ["cpu-94-seed0", "fastcnn_deep-24-64-128", "resnet_small-16-32-64", "cnn", "cnn_seed004"],
}


def train_members(out: Path, data, max_steps: int | None, val_size: int | None) -> list[str]:
    """Train each member not yet finished in `out`; returns the names of those reused."""
    reused = []
    for name, settings in MEMBERS.items():
        run_dir = out / name
        if (run_dir / RESULTS_FILE).is_file():
            print(f"  {name}: finished earlier, reused", flush=True)
            reused.append(name)
            continue
        started = time.perf_counter()
        train(out=run_dir, data=data, progress=False, overwrite=True, split_seed=SPLIT_SEED, max_steps=max_steps,
              val_size=val_size, **settings)  # fmt: skip
        best_val = read_results(run_dir).best_val_accuracy  # its test accuracy stays unread until the choice
        print(f"  {name}: validation {100 * best_val:.2f}% in {time.perf_counter() - started:.0f} s", flush=True)
    return reused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs, the ensembles and study.json")
    parser.add_argument("--test-all", action="store_true", help="after the choice, also test the other design")
    parser.add_argument("--max-steps", type=int, default=None, help="smoke mode: steps per run")
    parser.add_argument("--val-size", type=int, default=None, help="smoke mode on small data")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    data = load_data(args.data_dir)
    print(f"training {len(MEMBERS)} runs into {args.out} (split seed {SPLIT_SEED}) ...", flush=True)
    reused = train_members(args.out, data, args.max_steps, args.val_size)
    train_seconds = {name: read_results(args.out / name).train_seconds for name in MEMBERS}

    validation = {}
    for design, names in DESIGNS.items():
        scores = validate_ensemble([args.out / n for n in names], dataset=data, select=SELECT).scores
        validation[design] = {"members": dict(zip(names, scores.members)), "accuracy": scores.accuracy,
                              "best_member": names[scores.best_member],
                              "gain_over_best_member": scores.gain_over_best_member}  # fmt: skip
        print(f"{design}: validation {100 * scores.accuracy:.2f}%, "
              f"{100 * scores.gain_over_best_member:+.2f} over its best member "
              f"({names[scores.best_member]}, {100 * max(scores.members):.2f}%)", flush=True)  # fmt: skip
    chosen = max(validation, key=lambda d: validation[d]["gain_over_best_member"])
    print(f"chosen on validation: {chosen}", flush=True)

    test = {}
    for design in [chosen] + ([d for d in DESIGNS if d != chosen] if args.test_all else []):
        r = build_ensemble([args.out / n for n in DESIGNS[design]], args.out / f"{design}-ensemble", dataset=data,
                           select=SELECT, overwrite=True)  # fmt: skip
        test[design] = {"accuracy": r.test_accuracy, "gain_over_best_member": r.gain_over_best_member,
                        "members": [m.test_accuracy for m in r.members], "fixed": r.fixed,
                        "introduced": r.introduced, "after_the_choice": design != chosen}  # fmt: skip
        print(f"{design}{' (after the choice)' if design != chosen else ''}: test {100 * r.test_accuracy:.2f}%, "
              f"{100 * r.gain_over_best_member:+.2f} over its best member; members "
              f"{', '.join(f'{100 * m:.2f}' for m in test[design]['members'])}", flush=True)  # fmt: skip

    study = {"split_seed": SPLIT_SEED, "designs": DESIGNS, "members": MEMBERS, "validation": validation,
             "chosen": chosen, "test": test, "train_seconds": train_seconds, "reused": reused,
             "hardware": hardware(), "smoke": bool(args.max_steps)}  # fmt: skip
    (args.out / "study.json").write_text(json.dumps(study, indent=2))
    print(f"-> {args.out / 'study.json'}")


if __name__ == "__main__":
    main()
