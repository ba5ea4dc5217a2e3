"""Record `make run` (`fmnist data fetch`, then `fmnist compare`) into benchmarks/results/make_run.json.

Runs the venv's fmnist exactly as the Makefile does (FMNIST_DATA, or --data-dir, names the data),
the compare writing to a temporary folder deleted afterwards, and times the whole job's wall. Each
model's test accuracy, training seconds and precision are read back from the compare's records
(compare.json, as fmnist writes it), never from the printed table. What the two commands printed,
stdout and stderr as a terminal shows them, is kept for the `output` block.

    python benchmarks/make_run.py                 # this CPU, uncapped; also replaces the `output` block
    python benchmarks/make_run.py --isa avx2      # capped to AVX2, a laptop's instruction set (isa_caps.py)
    python benchmarks/make_run.py --smoke --json PATH   # the plumbing: 2 steps a model, no report

The row replaces the table's row with the same hardware text (CPU, ISA level and caps, threads,
torch), else is appended. The `output` block is replaced only by an uncapped run, or with
--set-output. --json PATH updates PATH instead (starting from a copy of the recorded file where
PATH does not exist); --smoke writes only there. README.md and docs/getting-started.md render the
file (docs/scripts/results_tables.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from isa_caps import ISA_LEVELS, capped_level, caps_text, run_capped, unavailable  # benchmarks/isa_caps.py

from fmnist.errors import FmnistError, UsageError
from fmnist.experiments.plan import DEFAULT_RUNS

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "benchmarks" / "results" / "make_run.json"
TABLE = "make_run"
SMOKE = ["--max-steps", "2", "--val-size", "100", "--no-report"]  # over `fmnist compare` in --smoke
(_, MLP), (_, CNN) = DEFAULT_RUNS  # the models `fmnist compare` trains by default: the table's columns
SHARE = ["mlp_share", "MLP share of training", "pct"]  # added after the training seconds where missing
OUT_SHOWN = "$OUT"  # the temporary compare folder, as the recorded output shows it


def fmnist_command() -> Path:
    """The venv's fmnist, beside this Python (the Makefile's $(VENV)/bin/fmnist)."""
    path = Path(sys.executable).parent / "fmnist"
    if not path.is_file():
        raise UsageError(f"no fmnist beside {sys.executable}: run this with the venv's Python (make install)")
    return path


def run_job(out: Path, smoke: bool, data_dir: str | None) -> tuple[float, str]:
    """`make run`'s two commands, one after the other: the whole job's wall seconds and what it printed."""
    fmnist = str(fmnist_command())
    env = {**os.environ, **({"FMNIST_DATA": data_dir} if data_dir else {})}
    printed: list[str] = []
    t0 = time.perf_counter()
    for argv in ([fmnist, "data", "fetch"], [fmnist, "compare", "--out", str(out), *(SMOKE if smoke else [])]):
        # One pipe for both streams keeps their order as a terminal shows it; each line is echoed as it comes.
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            for line in proc.stdout:
                print(line, end="", flush=True)
                printed.append(line)
        if proc.returncode:
            raise FmnistError(f"`fmnist {' '.join(argv[1:3])}` exited with {proc.returncode} (its output is above)")
    wall = time.perf_counter() - t0
    shown = "".join(printed).replace(str(out), OUT_SHOWN)
    if data_dir:  # this machine's data folder says nothing to a reader: shown as the variable that named it
        shown = shown.replace(str(Path(data_dir).resolve()), "$FMNIST_DATA").replace(data_dir, "$FMNIST_DATA")
    return wall, shown.rstrip() + "\n"


def hardware_text() -> str:
    """CPU, ISA level and caps, threads, torch: the row's identity (a new row replaces the one with this text)."""
    import torch

    from fmnist.device import cpu_isa, cpu_model, hardware_isa

    level = capped_level()
    isa = f"hardware level {hardware_isa()}, uncapped" if level == "native" else (
        f"hardware level {hardware_isa()} capped to {cpu_isa()} ({caps_text(level)})")  # fmt: skip
    threads = torch.get_num_threads()
    return (f"{cpu_model()}, {os.cpu_count()} cores ({isa}), {threads} thread{'s' * (threads != 1)}, "
            f"torch {torch.__version__}")  # fmt: skip


def make_row(out: Path, wall: float, command: str, smoke: bool) -> dict:
    """The table's row, from the compare's compare.json: accuracies, training seconds, precision."""
    import fmnist
    from fmnist.experiments.compare import read_compare

    runs = {r.results.model: r.results for r in read_compare(out).runs if r.results is not None}
    if set(runs) != {MLP, CNN}:
        raise FmnistError(f"the compare trained {', '.join(sorted(runs)) or 'nothing'}, not {MLP} and {CNN}")
    mlp, cnn = runs[MLP], runs[CNN]
    row = {
        "precision": ", ".join(sorted({mlp.precision, cnn.precision})),
        MLP: round(100 * mlp.test_accuracy, 2), CNN: round(100 * cnn.test_accuracy, 2),
        "training_seconds": [round(mlp.train_seconds, 1), round(cnn.train_seconds, 1)],
        "wall_seconds": round(wall, 1),
        SHARE[0]: round(100 * mlp.train_seconds / (mlp.train_seconds + cnn.train_seconds), 2),
        "hardware": hardware_text(), "command": command,
        "isa_level": capped_level(), "isa_caps": ISA_LEVELS[capped_level()][1], "fmnist": fmnist.__version__,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    return {**row, "smoke": True} if smoke else row


def merge(record: dict, row: dict, output: str | None) -> dict:
    """`record` with `row` in place of the row from the same hardware (else appended), the share column
    in the table, and the `output` block replaced by `output` where one is given."""
    table = record["tables"][TABLE]
    keys = [c[0] for c in table["columns"]]
    if SHARE[0] not in keys:
        after = keys.index("training_seconds") + 1 if "training_seconds" in keys else len(keys)
        table["columns"].insert(after, list(SHARE))
    rows = table["rows"]
    same = [i for i, r in enumerate(rows) if r.get("hardware") == row["hardware"]]
    if same:
        rows[same[0]] = row
    else:
        rows.append(row)
    if output is not None:
        record["tables"]["output"] = {
            "title": f"what `make run` printed (the {TABLE} row with the same hardware; the compare's "
            f"temporary folder shows as {OUT_SHOWN})",
            "output": output, "hardware": row["hardware"], "command": row["command"],
        }  # fmt: skip
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", choices=list(ISA_LEVELS), help="run capped to this instruction-set level")
    parser.add_argument("--set-output", action="store_true", help="replace the output block from a capped run too")
    parser.add_argument("--smoke", action="store_true", help="2 steps a model, 100 validation images (needs --json)")
    parser.add_argument("--data-dir", default=os.environ.get("FMNIST_DATA"), help="the data [default: $FMNIST_DATA]")
    parser.add_argument("--json", type=Path, help=f"update this file instead of {RECORD.relative_to(REPO)}")
    parser.add_argument("--keep", type=Path, help="write the compare here and keep it [default: a temporary folder]")
    args = parser.parse_args()
    try:
        if args.smoke and args.json is None:
            raise UsageError("smoke figures are never recorded: give --json PATH")
        if args.keep and args.keep.exists() and any(args.keep.iterdir()):
            raise UsageError(f"--keep {args.keep}: the folder is not empty")
        if args.isa and args.isa != capped_level():
            if reason := unavailable(args.isa):
                raise UsageError(f"--isa {args.isa}: {reason}")
            print(f"== {args.isa}: {caps_text(args.isa)}", flush=True)
            return run_capped(args.isa, sys.argv)
        path = args.json or RECORD
        record = json.loads((path if path.is_file() else RECORD).read_text(encoding="utf-8"))
        command = " ".join(["python", "benchmarks/make_run.py", *sys.argv[1:]])
        with tempfile.TemporaryDirectory(prefix="make-run-") as tmp:
            out = args.keep or Path(tmp) / "compare"
            wall, printed = run_job(out, args.smoke, args.data_dir)
            row = make_row(out, wall, command, args.smoke)
    except FmnistError as exc:  # a usage error before anything ran (2), or the job or its records failed (1)
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    native = capped_level() == "native"
    merge(record, row, printed if native or args.set_output else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}: {MLP} {row[MLP]:.2f}%, {CNN} {row[CNN]:.2f}%, whole job {row['wall_seconds']:g} s"
          f"{'' if native or args.set_output else ' (output block kept: a capped run)'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
