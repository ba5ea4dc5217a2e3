"""Instruction-set levels a faster CPU can be capped down to, shared by the benchmarks that run under them.

Each level is a set of environment caps that oneDNN, ATen and MKL read when they load, so a capped
run happens in a child process started with them (time_to_accuracy.py --isa-sweep, screen.py --isa).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

# name -> (what it stands for, the caps, the hardware level it needs).
ISA_LEVELS = {
    "avx2": ("laptop: AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                              "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, "avx2"),
    "avx512": ("AVX-512, no BF16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512",
                                    "MKL_ENABLE_INSTRUCTIONS": "AVX512"}, "avx512"),
    "avx512_bf16": ("AVX-512 + BF16 (Zen 4)", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
                                               "ATEN_CPU_CAPABILITY": "avx512",
                                               "MKL_ENABLE_INSTRUCTIONS": "AVX512"}, "avx512_bf16"),
    "native": ("this CPU, uncapped", {}, "baseline"),
}  # fmt: skip


def capped_level() -> str:
    """The ISA_LEVELS row whose caps this process runs under (`native` when none are set)."""
    for name, (_, caps, _) in ISA_LEVELS.items():
        if caps and all(os.environ.get(k) == v for k, v in caps.items()):
            return name
    return "native"


def unavailable(level: str) -> str:
    """Why this CPU cannot run `level` ("" where it can): a cap only lowers the instruction set."""
    from fmnist.device import ISA_LEVELS as ORDER
    from fmnist.device import hardware_isa

    needs, have = ISA_LEVELS[level][2], hardware_isa()
    return f"needs {needs}; this CPU is {have}" if ORDER.index(needs) > ORDER.index(have) else ""


def caps_text(level: str) -> str:
    """The caps as a shell prefix ("ONEDNN_MAX_CPU_ISA=AVX2 ..."), or "no caps"."""
    return " ".join(f"{k}={v}" for k, v in ISA_LEVELS[level][1].items()) or "no caps"


def run_capped(level: str, argv: list[str]) -> int:
    """`python ARGV` again in a child process under `level`'s caps; its exit status."""
    return subprocess.run([sys.executable, *argv], env={**os.environ, **ISA_LEVELS[level][1]}).returncode


def cpu_slug(cpu: str) -> str:
    """A CPU's name as results files name it: "amd-epyc-family-25-model-17"."""
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "cpu"
