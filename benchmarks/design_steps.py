"""Training images/s of each step of fastcnn's design, side by side on this CPU.

The README's "per change" table: each row adds one change to the row above, starting from a
plain 4-conv net (conv -> BN -> ReLU -> pool, 32 channels at 28x28, NCHW, batch 128, fp32).
Rows are measured in interleaved rounds (every variant once per round, --rounds rounds) and
the median is reported, so load that comes and goes hits every row alike. bf16 rows run only
where `--precision auto` would pick bf16 (native AVX512-BF16 or AMX), and say so otherwise.

    python benchmarks/design_steps.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.device import autocast_context, cpu_isa, cpu_model, resolve_precision
from fmnist.models import create_model


def _plain_block(c_in: int, c_out: int, pool: bool, pool_first: bool) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    norm = [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if not pool:
        return [conv, *norm]
    return [conv, nn.MaxPool2d(2), *norm] if pool_first else [conv, *norm, nn.MaxPool2d(2)]


def plain_net(first_width: int, pool_first: bool) -> nn.Module:
    """fastcnn's shape with the older choices: the stem width and where pooling sits are the knobs."""
    return nn.Sequential(
        *_plain_block(1, first_width, True, pool_first),  # (N,w,14,14)
        *_plain_block(first_width, 64, True, pool_first),  # (N,64,7,7)
        *_plain_block(64, 128, False, pool_first),  # (N,128,7,7)
        *_plain_block(128, 128, True, pool_first),  # (N,128,3,3)
        nn.Flatten(), nn.Linear(128 * 9, 10),
    )  # fmt: skip


# fmnist 0.2.0's fastcnn: widths 16-64-128, last conv at 7x7 before its pool; and 0.3's, 16-48-96.
# Both learned their first conv (fastcnn's default whitens it since fmnist 0.5).
V020 = {"widths": (16, 64, 128), "pool_before_last_conv": False, "whiten": False}
V03 = {"widths": (16, 48, 96), "whiten": False}


@dataclass(frozen=True)
class Variant:
    label: str
    build: Callable[[], nn.Module]
    channels_last: bool = False
    batch_size: int = 128
    precision: str = "fp32"


def variants(bf16_native: bool) -> list[Variant]:
    rows = [
        Variant("plain: conv-BN-ReLU-pool, 32 ch at 28x28, NCHW", lambda: plain_net(32, pool_first=False)),
        Variant("+ pool before BN/ReLU", lambda: plain_net(32, pool_first=True)),
        Variant("+ 16 channels at 28x28 (NCHW)", lambda: plain_net(16, pool_first=True)),
        Variant(
            "+ channels-last (= fmnist 0.2.0's fastcnn)", lambda: create_model("fastcnn", **V020), channels_last=True
        ),
        Variant(
            "+ last conv on the pooled 3x3 map",
            lambda: create_model("fastcnn", **{**V020, "pool_before_last_conv": True}),
            channels_last=True,
        ),  # fmt: skip
        Variant("+ widths 16-48-96 (= fmnist 0.3's fastcnn)", lambda: create_model("fastcnn", **V03),
                channels_last=True),
        Variant("  batch 256 instead of 128", lambda: create_model("fastcnn", **V03), channels_last=True,
                batch_size=256),
        Variant("  batch 64 instead of 128", lambda: create_model("fastcnn", **V03), channels_last=True, batch_size=64),
    ]  # fmt: skip
    if bf16_native:
        rows.append(Variant("+ bf16 autocast (auto here)", lambda: create_model("fastcnn", **V03), channels_last=True,
                            precision="bf16"))  # fmt: skip
    return rows


def images_per_second(variant: Variant, steps: int) -> float:
    torch.manual_seed(0)
    model = variant.build()
    x = torch.randn(variant.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (variant.batch_size,))
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    device = torch.device("cpu")

    def step() -> None:
        with autocast_context(device, variant.precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: first-call allocations and kernel selection
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return variant.batch_size * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant per round")
    args = parser.parse_args()
    bf16_native = resolve_precision("auto", torch.device("cpu")) == "bf16"
    rows = variants(bf16_native)
    measured: dict[str, list[float]] = {v.label: [] for v in rows}
    for round_index in range(args.rounds):
        for v in rows:
            measured[v.label].append(images_per_second(v, args.steps))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    print(f"\nTraining images/s on {cpu_model()} ({cpu_isa()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; median of {args.rounds} interleaved rounds:")  # fmt: skip
    base = statistics.median(measured[rows[0].label])
    for v in rows:
        median = statistics.median(measured[v.label])
        print(f"  {v.label:<50}{median:>8.0f}   x{median / base:.2f}")
    if not bf16_native:
        print("  (no bf16 row: this CPU has no native bf16, so --precision auto trains in fp32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
