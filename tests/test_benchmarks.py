"""Benchmarks keep working: each runs in its smoke mode (timings are not checked here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_design_steps_prints_one_row_per_change_relative_to_the_plain_net():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "design_steps.py"), "--rounds", "1", "--steps", "1"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\s+(\S.*?)\s+(\d+)\s+x(\d+\.\d\d)$", proc.stdout, re.M)
    assert len(rows) >= 6, proc.stdout
    assert rows[0][0].startswith("plain") and rows[0][2] == "1.00"
    assert all(int(images) > 0 for _, images, _ in rows)
    # Either a bf16 row or the sentence that says why there is none.
    assert any("bf16" in label for label, _, _ in rows) or "no native bf16" in proc.stdout
