"""How much of an ensemble's gain test-time augmentation already takes.

    python benchmarks/ensemble_tta.py RUN_DIR RUN_DIR ... [--levels none,flip,flip-shift] [--data-dir DIR]

Scores every member on the test split at each TTA level (the same level for all members,
whatever their recipes record), averages their probabilities as `fmnist ensemble` does, and
prints per level the members' accuracies, the ensemble's, and its gain over the best member and
over the members' mean. At a member's own level its accuracy is the one its run recorded.
This analyses finished runs: nothing is chosen from these figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from fmnist.analysis.metrics import accuracy
from fmnist.api import load_data
from fmnist.constants import TTA_LEVELS
from fmnist.device import PRECISIONS
from fmnist.errors import FmnistError
from fmnist.inference.checkpoint import tta_settings
from fmnist.inference.ensemble_model import average_probabilities, load_members, member_probabilities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--levels", default=",".join(TTA_LEVELS), help="TTA levels to score, comma-separated")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    levels = [level.strip() for level in args.levels.split(",") if level.strip()]
    unknown = [level for level in levels if level not in TTA_LEVELS]
    if len(args.run_dirs) < 2 or unknown:
        problem = f"unknown TTA level {unknown[0]!r}" if unknown else "an ensemble needs two or more run directories"
        print(f"error: {problem}", file=sys.stderr)
        return 2

    try:
        members = load_members(args.run_dirs)
        data = load_data(args.data_dir)
    except FmnistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    labels = torch.as_tensor(data.test_labels).long()
    print("members: " + ", ".join(f"{m.folder} (own level {tta_settings(m.meta)['tta']})" for m in members))
    print(f"{'TTA level':<12}{'members':<{7 * len(members)}}{'mean':>7}{'best':>7}{'ensemble':>10}{'vs best':>9}"
          f"{'vs mean':>9}")  # fmt: skip
    for level in levels:
        probabilities = member_probabilities(members, data.test_images, args.precision, tta=level)
        accuracies = [100 * accuracy(labels, p.argmax(1)) for p in probabilities]
        ensemble = 100 * accuracy(labels, average_probabilities(probabilities).argmax(1))
        mean, best = statistics.fmean(accuracies), max(accuracies)
        listed = "".join(f"{a:<7.2f}" for a in accuracies)
        print(f"{level:<12}{listed}{mean:>7.2f}{best:>7.2f}{ensemble:>10.2f}{ensemble - best:>+9.2f}"
              f"{ensemble - mean:>+9.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
