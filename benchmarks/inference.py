"""Inference throughput: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, side by side.

    python benchmarks/inference.py [--models fastcnn,cnn_seed004] [--threads N] [--train-steps N] [--tta LEVEL] [--quick]

For each model and batch size (1 and 1,024) prints images/s for PyTorch eager fp32, PyTorch
bf16 autocast (only where the CPU has AMX, which is what `fmnist` picks there), ONNX Runtime
fp32 and ONNX Runtime int8 (static QDQ, as `fmnist export --int8` makes it), and the ratios.

What is timed is the graph as deployed: the model placed in its own memory layout and wrapped
in its recipe's test-time augmentation (fmnist.inference.tta; --tta overrides the level), so with "flip"
(fastcnn's recipe) every image is run twice, with "flip-shift" six times, in PyTorch and in the
ONNX graph alike.

Weights: untrained (random) by default, since throughput does not depend on weight values;
int8 calibration then uses training images when FMNIST_DATA is set, else random images.
--train-steps N trains each model N steps on the real data first and adds test accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from fmnist.constants import FMNIST_MEAN, FMNIST_STD, TTA_LEVELS
from fmnist.data.normalize import blank_value, normalize
from fmnist.inference.tta import tta_level


def timed(fn, batch: int, min_seconds: float, repeats: int) -> float:
    """Best-of-`repeats` images/s, each repeat running `fn` for at least `min_seconds`."""
    fn()
    fn()  # warm-up: allocations, ORT's first-run planning
    best = 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and n >= 2:
                break
        best = max(best, n * batch / elapsed)
    return best


def torch_runner(model, x: torch.Tensor, precision: str, tta: str):
    from fmnist.inference.evaluate import predict

    blank = blank_value(FMNIST_MEAN, FMNIST_STD)
    return lambda: predict(model, x, batch_size=len(x), precision=precision, tta=tta, blank=blank)


def ort_runner(session, x: np.ndarray):
    return lambda: session.run(None, {"input": x})


def build(name: str, train_steps: int, dataset, tta: str | None):
    from fmnist.models.registry import count_parameters, create_model
    from fmnist.training.recipes import model_settings

    tta = tta or tta_level(model_settings(name))
    if train_steps and dataset is not None:
        from fmnist.training.settings import resolve_config
        from fmnist.training.trainer import fit

        cfg = resolve_config(name, options={"epochs": 1, "max_steps": train_steps, "val_size": 0, "precision": "fp32"})
        model = fit(cfg, dataset).model.eval()
    else:
        model = create_model(name).eval()
    model.place("cpu")  # the layout the model asked for, as a loaded checkpoint has it
    meta = {"model": name, "model_args": dict(model.model_args), "class_names": [str(i) for i in range(10)],
            "normalization": {"mean": FMNIST_MEAN, "std": FMNIST_STD}, "tta": tta, "params": count_parameters(model)}  # fmt: skip
    return model, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fastcnn,cnn_seed004")
    parser.add_argument("--batches", default="1,1024")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--train-steps", type=int, default=0, help="Train each model N steps first (needs FMNIST_DATA)")
    parser.add_argument("--tta", choices=TTA_LEVELS, help="Test-time augmentation level [default: each recipe's]")
    parser.add_argument("--quick", action="store_true", help="Shorter timing runs (smoke test)")
    args = parser.parse_args()
    min_seconds, repeats = (0.3, 1) if args.quick else (1.5, 3)

    from fmnist.device import fast_bf16
    from fmnist.inference.evaluate import predict
    from fmnist.inference.export import onnx_bytes, onnx_session, quantize_int8, quiet_exporter

    torch.set_num_threads(args.threads)
    dataset = None
    if os.environ.get("FMNIST_DATA"):
        from fmnist.data.sources import resolve_dataset

        dataset = resolve_dataset(allow_download=False)
    elif args.train_steps:
        sys.exit("--train-steps needs the data: set FMNIST_DATA to the Fashion-MNIST folder")
    rng = np.random.default_rng(0)
    bf16 = fast_bf16(torch.device("cpu"))
    batches = [int(b) for b in args.batches.split(",")]

    def normalise(images: np.ndarray) -> np.ndarray:
        return normalize(images, FMNIST_MEAN, FMNIST_STD).numpy()

    calibration_source = (
        dataset.train_images[:512] if dataset is not None else rng.integers(0, 256, (512, 28, 28), dtype=np.uint8)
    )
    rows = []
    for name in args.models.split(","):
        model, meta = build(name, args.train_steps, dataset, args.tta)
        with quiet_exporter():
            fp32_blob = onnx_bytes(model, meta)
            int8_blob = quantize_int8(fp32_blob, normalise(calibration_source), meta)
        sessions = {"ort_fp32": onnx_session(fp32_blob, threads=args.threads),
                    "ort_int8": onnx_session(int8_blob, threads=args.threads)}  # fmt: skip
        accuracy = {}
        if args.train_steps and dataset is not None:
            x_test = normalise(dataset.test_images)
            y = dataset.test_labels
            accuracy["torch"] = (
                predict(
                    model,
                    torch.from_numpy(x_test),
                    precision="fp32",
                    tta=meta["tta"],
                    blank=blank_value(FMNIST_MEAN, FMNIST_STD),
                )
                .argmax(1)
                .numpy()
                == y
            ).mean()
            for key, session in sessions.items():
                accuracy[key] = (np.concatenate([session.run(None, {"input": x_test[i:i + 1000]})[0]
                                                 for i in range(0, len(x_test), 1000)]).argmax(1) == y).mean()  # fmt: skip
        for batch in batches:
            x = normalise(rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8))
            xt = torch.from_numpy(x)
            result = {"model": name, "batch": batch, "tta": meta["tta"], "acc": accuracy}
            runners = {"torch_fp32": torch_runner(model, xt, "fp32", meta["tta"])}
            if bf16:
                runners["torch_bf16"] = torch_runner(model, xt, "bf16", meta["tta"])
            runners.update({key: ort_runner(session, x) for key, session in sessions.items()})
            for key, run in runners.items():
                result[key] = timed(run, batch, min_seconds, repeats)
            result["sizes"] = (len(fp32_blob), len(int8_blob))
            rows.append(result)
            print(f"  measured {name} batch {batch}", file=sys.stderr)

    weights = f"trained {args.train_steps} steps" if args.train_steps else "untrained weights"
    print(f"\nInference throughput, images/s ({weights}; {args.threads} threads; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs{'; AMX bf16' if bf16 else ''})")  # fmt: skip
    head = f"{'model':<20} {'batch':>5} {'torch fp32':>11}" + (f" {'torch bf16':>11}" if bf16 else "")
    head += f" {'ORT fp32':>10} {'ORT int8':>10} {'ORT/torch':>10} {'int8/fp32':>10}"
    print(head)
    for r in rows:
        line = f"{r['model'] + ('' if r['tta'] == 'none' else ' +' + r['tta']):<20} {r['batch']:>5} {r['torch_fp32']:>11,.0f}"
        if bf16:
            line += f" {r['torch_bf16']:>11,.0f}"
        line += (f" {r['ort_fp32']:>10,.0f} {r['ort_int8']:>10,.0f} {r['ort_fp32'] / r['torch_fp32']:>9.2f}x"
                 f" {r['ort_int8'] / r['ort_fp32']:>9.2f}x")  # fmt: skip
        print(line)
    print("\nONNX file sizes: " + ", ".join(f"{r['model']} fp32 {r['sizes'][0] / 1e6:.2f} MB, int8 {r['sizes'][1] / 1e6:.2f} MB"
                                            for r in rows if r["batch"] == batches[0]))  # fmt: skip
    for r in rows:
        if r["acc"] and r["batch"] == batches[0]:
            print(f"test accuracy {r['model']}: torch {100 * r['acc']['torch']:.2f}%  ORT fp32 {100 * r['acc']['ort_fp32']:.2f}%  "
                  f"ORT int8 {100 * r['acc']['ort_int8']:.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
