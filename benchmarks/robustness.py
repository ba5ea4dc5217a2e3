"""Record how a finished run holds up under corruption, for the docs (docs/trust.md renders it).

    FMNIST_DATA=... python benchmarks/robustness.py RUN_DIR --recipe NAME [--threads 1] [--json PATH]
    python benchmarks/robustness.py RUN_DIR --recipe NAME --smoke --data-dir DIR --json PATH   # plumbing only

The measurement is fmnist.inference.robustness.measure, the one `fmnist robustness` runs (the test
split clean and under every corruption at each severity); this adds what a recorded figure needs
beside it: the CPU, the command, the seconds and the versions. Writes
benchmarks/results/robustness-<recipe>-<cpu>.json (or --json). The run directory is not touched.

--smoke scores the first SMOKE_IMAGES test images only and writes nothing unless --json is given,
so a smoke record never lands among the recorded results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from isa_caps import cpu_slug  # benchmarks/isa_caps.py

from fmnist.inference.robustness import DEFAULT_THREADS, measure

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
SMOKE_IMAGES = 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory")
    parser.add_argument("--recipe", required=True, help="the recipe the run was trained with (names the file)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads (default %(default)s)")
    parser.add_argument("--data-dir", help="the dataset folder (default: FMNIST_DATA or the cache)")
    parser.add_argument("--json", type=Path, help="write the record here (default: benchmarks/results/)")
    parser.add_argument("--smoke", action="store_true", help=f"the first {SMOKE_IMAGES} test images, nothing recorded")
    args = parser.parse_args()

    from fmnist.data.sources import resolve_dataset
    from fmnist.device import cpu_model
    from fmnist.errors import FmnistError
    from fmnist.inference.checkpoint import checkpoint_folder, read_meta

    if args.threads < 1 or not re.fullmatch(r"[A-Za-z0-9._-]+", args.recipe):
        print("error: --threads must be >= 1 and --recipe a plain name (letters, digits, . _ -)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        run_dir = checkpoint_folder(args.run_dir)
        read_meta(run_dir)  # a bad path fails here, before the data loads
        dataset = resolve_dataset(args.data_dir)
    except FmnistError as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    images, labels = dataset.test_images, dataset.test_labels
    if args.smoke:
        images, labels = images[:SMOKE_IMAGES], labels[:SMOKE_IMAGES]
    record = measure(run_dir, images, labels, threads=args.threads, notify=print)

    cpu = cpu_model()
    document = {
        "benchmark": "robustness", "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": args.recipe, "run_dir": str(args.run_dir), "smoke": args.smoke,
        "cpu": cpu, "threads": args.threads, "load_average_at_end": os.getloadavg()[0],
        "command": " ".join([*(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ),
                             "python", "benchmarks/robustness.py", *sys.argv[1:]]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "seconds": time.perf_counter() - started,  # data loading included; record["seconds"] is the measurement
        "record": record.to_json(),
    }  # fmt: skip
    print(f"clean {100 * record.clean_accuracy:.2f}%, mean corruption {100 * record.mean_corruption_accuracy:.2f}%, "
          f"worst: {', '.join(f'{r.corruption}@{r.severity} {100 * r.accuracy:.1f}%' for r in record.worst())}; "
          f"{document['seconds']:.0f} s")  # fmt: skip
    if args.json or not args.smoke:
        path = args.json or RESULTS_DIR / f"robustness-{args.recipe}-{cpu_slug(cpu)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
