"""The training step (forward + loss; backward follows it), eager or compiled: `--compile auto|on|off`.

A small network's step is dozens of tiny kernels launched one by one from Python. `torch.compile`
fuses them, and on a GPU it also records the step as a CUDA graph (mode "reduce-overhead"), so a
step is a handful of launches. Shapes are static (`dynamic=False`): the full batches share one
graph and an epoch's smaller last batch gets its own.

Compiling takes seconds to minutes. `TrainStep.warm_up` does it before the first step, for each
batch size the run will see, and times it: the run records `compile_seconds` apart from
`train_seconds`. What PyTorch compiles is cached on disk (inductor's FX graph cache and
AOTAutograd's cache, with the Triton kernels on a GPU) in `compile_cache_dir()`, so a second run
of the same network and batch shapes loads its step instead of compiling it again.

The eager step is the same function, not compiled, so the CPU path stays bit-reproducible.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fmnist.errors import UsageError
from fmnist.models.base import Classifier

# The environment variable PyTorch reads for its compile cache; fmnist only chooses its default.
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# Below this many steps a GPU run is a smoke test or a short probe: compiling a small net takes
# tens of seconds cold and a few seconds from a warm cache, against a saving of a few
# milliseconds a step. Provisional: chosen before any GPU measurement (issue 29);
# benchmarks/gpu_speed.py times both ways.
CUDA_MIN_STEPS = 500


def compile_cache_dir() -> Path:
    """Where compiled steps are cached: $TORCHINDUCTOR_CACHE_DIR, else fmnist's cache folder.

    PyTorch's own default is /tmp/torchinductor_USER, which a reboot empties; fmnist's
    (~/.cache/fmnist/torch-compile, under $XDG_CACHE_HOME when set) survives it.
    """
    from fmnist.data.sources import cache_dir

    return Path(os.environ.get(CACHE_ENV) or cache_dir() / "torch-compile")


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot work on `device` here, or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "no Triton for this GPU (torch.compile's GPU code generator)"
    if device.type == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "no C++ compiler (g++ or clang++), which torch.compile's CPU code needs"
        return None
    return f"fmnist does not compile for {device.type}"


def compile_pays_on_cpu(isa: str, total_steps: int) -> bool:
    """Whether `--compile auto` compiles on a CPU: not yet.

    Cold, compiling fastcnn's step took 78 s on the 2-core Zen 4 development machine (10 s from
    a warm cache), more than the whole `fast` recipe trains. Change this when a measurement that
    counts compile time shows a win (which ISA levels, how many steps).
    """
    return False


def compile_pays_on_cuda(total_steps: int) -> bool:
    """Whether `--compile auto` compiles on a GPU: for runs of CUDA_MIN_STEPS steps or more."""
    return total_steps >= CUDA_MIN_STEPS


def should_compile(mode: str, device: torch.device, total_steps: int, isa: str) -> bool:
    """The --compile decision. `on` where torch.compile cannot work is a usage error; `auto` then stays eager."""
    if mode == "off":
        return False
    why_not = compile_unavailable(device)
    if mode == "on":
        if why_not:
            raise UsageError(f"--compile on: {why_not}")
        return True
    if why_not:
        return False
    if device.type == "cuda":
        return compile_pays_on_cuda(total_steps)
    return device.type == "cpu" and compile_pays_on_cpu(isa, total_steps)


class TrainStep:
    """`step(x, targets) -> (loss, logits)` in the run's precision; call `loss.backward()` after it."""

    def __init__(self, model: Classifier, *, device: torch.device, precision: str, label_smoothing: float,
                 compiled: bool):  # fmt: skip
        bf16 = precision == "bf16"

        def forward_loss(x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
                # Class indices or, after mixup/cutmix, soft (N,10) targets: cross_entropy takes both.
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
            return loss, logits

        self.model = model
        self.device = device
        self.compiled = compiled
        # CUDA graphs replay fixed memory: each step must say where it begins (see __call__).
        self.cuda_graphs = compiled and device.type == "cuda"
        self.fn = forward_loss
        if compiled:
            os.environ.setdefault(CACHE_ENV, str(compile_cache_dir()))
            # Each run compiles its own model. Dynamo keeps a few compiled versions per function and
            # silently runs eager once a process has trained more runs than that (compare, seeds,
            # benchmarks): start clean. Runs in one process train one after another, and the next
            # one's compile is read back from the disk cache.
            torch._dynamo.reset()
            mode = "reduce-overhead" if self.cuda_graphs else None
            self.fn = torch.compile(forward_loss, dynamic=False, mode=mode)

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cuda_graphs:
            # The previous step's outputs (already summed into the epoch's totals) may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        return self.fn(x, targets)

    def warm_up(self, x: torch.Tensor, targets: torch.Tensor, batch_sizes: Sequence[int]) -> float:
        """Compile for each batch size on slices of one real batch; seconds spent. Leaves no trace:
        weights, BatchNorm statistics, gradients and random state are as they were."""
        if not self.compiled:
            return 0.0
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        # CUDA graph trees run a step eagerly, then record it, then replay: three calls per shape.
        calls = 3 if self.cuda_graphs else 1
        start = time.perf_counter()
        try:
            for n in batch_sizes:
                for _ in range(calls):
                    loss, _ = self(x[:n], targets[:n])
                    loss.backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        finally:
            seconds = time.perf_counter() - start
            self.model.zero_grad(set_to_none=True)
            self.model.load_state_dict(saved)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        return seconds
