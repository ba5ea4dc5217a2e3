"""Device, CPU instruction set and numeric-precision choices, shared by training, evaluation and serving.

`--precision auto` is decided by what the hardware computes natively, never by timing, so a
seed gives the same numbers every time on the same machine:
- CUDA with bf16 support, or a CPU with AVX512-BF16 (Zen 4, Cooper Lake) or AMX tiles
  (Sapphire Rapids and later): bf16 autocast;
- anything else (AVX2 laptops, AVX-512 without BF16): fp32, since bf16 is emulated there
  and slower than fp32.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import torch

from fmnist.errors import UsageError

# Denormal floats flushed to zero (FTZ/DAZ) in this thread and the threads it starts later, hence at
# import, before any tensor work starts PyTorch's CPU thread pool. Late in a long CPU run some values
# decay into the denormal range, where x86 arithmetic on them is many times slower: without this,
# cpu-95's epochs at AVX2 doubled in time from the first to the twelfth, with it they stay flat and
# validate to the same accuracy (a forward and backward pass of its trained net alone did not slow,
# so the values are the optimiser's, by elimination). A denormal is below 1.2e-38.
FLUSHES_DENORMALS = torch.set_flush_denormal(True)

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
# --compile: whether the training step runs through torch.compile (fmnist.training.compiled decides "auto").
COMPILE_MODES = ("auto", "on", "off")
# CPU instruction-set levels that matter for fmnist's speed, slowest first.
ISA_LEVELS = ("baseline", "avx2", "avx512", "avx512_bf16", "amx")
# oneDNN's ISA cap names (ONEDNN_MAX_CPU_ISA), mapped onto those levels: a capped process
# must choose as the CPU it emulates would.
_ONEDNN_CAPS = {
    "sse41": "baseline", "avx": "baseline", "avx2": "avx2", "avx2_vnni": "avx2", "avx2_vnni_2": "avx2",
    "avx512_core": "avx512", "avx512_core_vnni": "avx512", "avx512_core_bf16": "avx512_bf16",
    "avx10_1_512": "avx512_bf16", "avx512_core_fp16": "avx512_bf16", "avx10_1_512_amx": "amx",
    "avx512_core_amx": "amx", "avx10_1_512_amx_fp16": "amx", "avx512_core_amx_fp16": "amx", "default": "amx",
}  # fmt: skip


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is available")
    return torch.device(name)


def hardware_isa() -> str:
    """The best ISA level this CPU has, as PyTorch's CPU feature probe reports it."""
    probes = (("amx", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"),
              ("avx512", "_is_avx512_supported"), ("avx2", "_is_avx2_supported"))  # fmt: skip
    for level, probe in probes:
        if getattr(torch.cpu, probe, lambda: False)():
            return level
    return "baseline"


@lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The ISA level fmnist uses: the hardware's, lowered by an ONEDNN_MAX_CPU_ISA cap if one is set."""
    return capped_isa(hardware_isa(), os.environ.get("ONEDNN_MAX_CPU_ISA", ""))


def capped_isa(hardware: str, onednn_cap: str) -> str:
    cap = _ONEDNN_CAPS.get(onednn_cap.strip().lower(), "amx")
    return min(hardware, cap, key=ISA_LEVELS.index)


def native_bf16(isa: str) -> bool:
    """Whether a CPU at this ISA level computes bf16 in hardware (so autocast pays)."""
    return ISA_LEVELS.index(isa) >= ISA_LEVELS.index("avx512_bf16")


def cpu_model() -> str:
    """The CPU's marketing name where Linux says it, with its x86 family and model numbers, else the
    platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = cpu_name_from_cpuinfo(f.read())
    except OSError:
        name = None
    if name:
        return name
    import platform

    return platform.processor() or platform.machine()


def cpu_name_from_cpuinfo(text: str) -> str | None:
    """ "AMD EPYC, family 26 model 2" from /proc/cpuinfo's first processor, or None without a model name.

    Virtual machines often report only "AMD EPYC": the numbers tell its generations apart (family
    25: Zen 3 and Zen 4, 26: Zen 5), so benchmark figures measured on each stay apart.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return None
    numbers = (
        f", family {fields['cpu family']} model {fields['model']}" if {"cpu family", "model"} <= fields.keys() else ""
    )
    return fields["model name"] + numbers


def fast_bf16(device: torch.device, isa: str | None = None) -> bool:
    """True where bf16 autocast runs on native units: CUDA with bf16, CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return native_bf16(isa or cpu_isa())
    return False


def resolve_precision(name: str, device: torch.device, isa: str | None = None) -> str:
    """'auto' -> 'bf16' or 'fp32' by capability (see the module docstring); an explicit choice wins."""
    if name not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "auto":
        return "bf16" if fast_bf16(device, isa) else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16 needs a GPU with bf16 support")
    return name


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast for 'bf16' (or 'auto' where it is native), nothing for 'fp32'."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def enable_determinism(device: torch.device) -> None:
    """Make GPU runs repeatable: deterministic kernels only, no cuDNN autotuning.

    cuBLAS needs a fixed workspace for deterministic matrix products; it reads the setting
    when its handle is created, so it is set here, before any CUDA work in this process.
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=False)


def tune_cuda(device: torch.device, deterministic: bool) -> None:
    """Let a GPU pick its fastest kernels: cuDNN autotuning and TF32 for what runs in fp32 outside
    autocast. Left alone under --deterministic (enable_determinism turns autotuning off)."""
    if device.type != "cuda" or deterministic:
        return
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (random draws, an index) on `device` without stalling a GPU.

    A plain `.to("cuda")` from ordinary host memory waits until every kernel queued before it
    has run, which would cost a host synchronisation per training step. Copied from pinned
    memory with non_blocking=True, it joins the queue instead. On the CPU this is `.to(device)`.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
