"""How fast the GPU recipes train, each alone on one GPU: time to 93/94/95%, compile time apart,
images/s, the share of the card's peak bf16 FLOP/s, and memory.

Each recipe trains --seeds times, one run at a time, exactly as `fmnist train --recipe NAME` would
(best epoch chosen on validation, --compile auto). After every epoch, outside the timed training,
the weights of that epoch are scored on the test split: that curve gives "time to X%" (the
training seconds, validation included and compiling excluded, at the first epoch at or above X).
It is a measurement only: nothing is chosen with it, and the recipe's accuracy is the usual
best-by-validation test figure.

Share of peak: training costs about 3 forward passes an image (forward, and a backward of twice
its FLOPs), counted by fmnist.models.flops, at the measured training images/s, against the dense
bf16 peak of the card in PEAK_BF16 (matched by name; unknown cards and CPUs get none).

    python benchmarks/gpu_speed.py                          # the three GPU recipes, 3 seeds, on cuda
    python benchmarks/gpu_speed.py --recipes gpu-fast --seeds 1
    python benchmarks/gpu_speed.py --write                  # also record benchmarks/results/gpu_speed.json
                                                            # and the recipes' rows (fmnist recipes, README)
    python benchmarks/gpu_speed.py --smoke                  # the plumbing on a CPU: 3 steps a run, nothing recorded
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from fmnist.data.normalize import normalize
from fmnist.data.sources import resolve_dataset
from fmnist.device import cpu_isa, cpu_model
from fmnist.errors import FmnistError
from fmnist.inference.evaluate import predict
from fmnist.models.flops import forward_flops
from fmnist.models.registry import create_model
from fmnist.training.recipes import MEASURED_FILE, measured, record_measurement
from fmnist.training.results import TrainCallback
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO / "benchmarks" / "results" / "gpu_speed.json"
GPU_RECIPES = ("gpu-fast", "gpu-95", "gpu-best")
TARGETS = (0.93, 0.94, 0.95)
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets; the first name
# found in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12),
)  # fmt: skip
TRAINING_PASSES = 3  # forward + backward, in forward passes


def peak_bf16(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16 if name in device_name), None)


class TestCurve(TrainCallback):
    """After each epoch, the test accuracy of that epoch's weights, beside its training seconds."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        config = trainer.config
        self.x = normalize(torch.from_numpy(trainer.dataset.test_images).to(trainer.device), config.input_mean,
                           config.input_std)  # fmt: skip
        self.y = torch.from_numpy(trainer.dataset.test_labels).long()
        self.points: list[tuple[float, float]] = []  # (training seconds, test accuracy)

    def on_epoch_end(self, record, is_best: bool) -> None:
        t = self.trainer
        logits = predict(t.evaluated_model, self.x, batch_size=t.eval_batch_size, precision=t.precision,
                         tta=t.config.tta, blank=t.blank)  # fmt: skip
        self.points.append((record.seconds, (logits.argmax(1) == self.y).float().mean().item()))

    def time_to(self, target: float) -> float | None:
        return next((seconds for seconds, accuracy in self.points if accuracy >= target), None)


def one_run(recipe: str, seed: int, data, device: str, max_steps: int | None, val_size: int | None) -> dict:
    overrides = {"seed": seed, "device": device, "max_steps": max_steps, "val_size": val_size}
    config = resolve_config(recipe=recipe, options=overrides)
    on_gpu = device == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = Trainer(config, data)
    curve = TestCurve(trainer)
    trainer.callbacks.append(curve)
    result = trainer.run()
    wall = time.perf_counter() - start
    rates = [r.images_per_second for r in result.history]
    images_per_s = statistics.fmean(rates[1:] or rates)  # the first epoch includes cuDNN's autotuning
    flops = TRAINING_PASSES * forward_flops(create_model(config.model, **config.model_args))  # counted on the CPU
    return {
        "recipe": recipe, "seed": seed, "test_accuracy": result.test_accuracy, "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds, "compile_seconds": result.compile_seconds, "compiled": result.compiled,
        "wall_seconds": wall, "images_per_s": images_per_s, "train_flops_per_image": flops,
        "time_to": {f"{t:.2f}": curve.time_to(t) for t in TARGETS}, "curve": curve.points,
        "max_memory_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
        "precision": result.precision,
    }  # fmt: skip


def _mean(values: list) -> float | None:
    """The mean where every run has a value (a target one run never reached has no mean)."""
    return round(statistics.fmean(values), 2) if values and None not in values else None


def summarise(recipe: str, runs: list[dict], peak: float | None) -> dict:
    ips = statistics.fmean(r["images_per_s"] for r in runs)
    memory = max((r["max_memory_bytes"] or 0) for r in runs)
    row = {
        "recipe": recipe,
        "accuracy": [round(100 * r["test_accuracy"], 2) for r in runs],
        "train_seconds": _mean([r["train_seconds"] for r in runs]),
        "compile_seconds": ", ".join(f"{r['compile_seconds']:.1f} s" for r in runs) if runs[0]["compiled"] else None,
        "images_per_s": round(ips),
        "peak_share": f"{100 * ips * runs[0]['train_flops_per_image'] / peak:.1f}%" if peak else None,
        "memory": f"{memory / 2**30:.2f} GiB" if memory else None,
    }
    for target in TARGETS:
        row[f"to_{round(100 * target)}"] = _mean([r["time_to"][f"{target:.2f}"] for r in runs])
    return row


COLUMNS = [
    ["recipe", "recipe", "code"], ["accuracy", "test accuracy", "pct"], ["to_93", "to 93%", "s"],
    ["to_94", "to 94%", "s"], ["to_95", "to 95%", "s"], ["train_seconds", "training", "s"],
    ["compile_seconds", "compiling (each run)", "text"], ["images_per_s", "images/s", "int"],
    ["peak_share", "share of bf16 peak", "text"], ["memory", "GPU memory", "text"],
]  # fmt: skip


def table(rows: list[dict], hardware: str, command: str) -> dict:
    """The results file, in the shape docs/scripts/results_tables.py renders."""
    return {
        "about": "benchmarks/gpu_speed.py: each GPU recipe alone on one GPU, one run at a time. Times are training "
                 "seconds (validation included, compiling not: its own column, one figure per run, the first "
                 "cold); time to X% is the first epoch whose weights score X% on the test split, a curve measured "
                 "beside the run and never used to choose. Means over the seeds; '–' where a run never got there.",
        "tables": {"gpu_recipes": {"title": "the GPU recipes, alone on one GPU", "columns": COLUMNS, "rows": rows,
                                   "hardware": hardware, "command": command}},
    }  # fmt: skip


def hardware_name(device: str) -> str:
    torch_version = torch.__version__.split("+")[0]
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, PyTorch {torch_version} + CUDA {torch.version.cuda}, bf16"
    return f"{cpu_model()} ({cpu_isa()}, {torch.get_num_threads()} threads), PyTorch {torch_version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(GPU_RECIPES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default=None, help="cuda (default), or cpu with --smoke")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-speed"))
    parser.add_argument("--write", action="store_true", help=f"record {RESULTS_FILE.name} and the recipes' rows")
    parser.add_argument("--smoke", action="store_true", help="3 steps a run, 100 validation images; records nothing")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if args.smoke and args.write:
        parser.error("--smoke figures are never recorded: drop --write")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here (--smoke runs the plumbing on the CPU)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    try:
        data = resolve_dataset(args.data_dir)
    except FmnistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    max_steps, val_size = (3, 100) if args.smoke else (None, None)
    hardware = hardware_name(device)
    peak = peak_bf16(torch.cuda.get_device_name(0)) if device == "cuda" else None
    command = "python benchmarks/gpu_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"{hardware}; peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else hardware, flush=True)
    runs: dict[str, list[dict]] = {}
    for name in names:
        for seed in range(args.seeds):
            run = one_run(name, seed, data, device, max_steps, val_size)
            runs.setdefault(name, []).append(run)
            to = ", ".join(f"{k[2:]}%: {'-' if v is None else f'{v:.1f}s'}" for k, v in run["time_to"].items())
            compiling = f"+{run['compile_seconds']:.1f}s compiling, " if run["compiled"] else "not compiled, "
            print(f"{name} seed {seed}: {100 * run['test_accuracy']:.2f}% in {run['train_seconds']:.1f}s "
                  f"({compiling}{run['wall_seconds']:.1f}s wall), "
                  f"{run['images_per_s']:,.0f} images/s; to {to}", flush=True)  # fmt: skip
    rows = [summarise(name, runs[name], peak) for name in names]
    results = table(rows, hardware, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_speed.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (args.out / "runs.json").write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    print(f"-> {args.out / 'gpu_speed.json'}")
    if args.write:
        RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        recorded = measured()
        for name in names:
            accuracies = [r["test_accuracy"] for r in runs[name]]
            record_measurement(recorded, name, {
                "model": resolve_config(recipe=name).model, "runs": len(accuracies), "accuracy": accuracies,
                "accuracy_mean": statistics.fmean(accuracies),
                "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "seconds_mean": statistics.fmean(r["wall_seconds"] for r in runs[name]),
                "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs[name]),
                "compile_seconds": [r["compile_seconds"] for r in runs[name]],
                "hardware": hardware, "command": command, "smoke": False,
            })  # fmt: skip
        MEASURED_FILE.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
        print(f"recorded: {RESULTS_FILE.relative_to(REPO)}, {MEASURED_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
