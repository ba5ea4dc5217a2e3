"""benchmarks/serve_load.py keeps working in its smoke mode (timings are not checked here): it serves
with fmnist and the minimal endpoint, prints the ratio, and writes its JSON record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")


def test_serve_load_smoke_compares_with_the_minimal_endpoint_and_writes_json(tmp_path: Path):
    out = tmp_path / "serve_load.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick", "--requests", "200",
           "--concurrency", "4", "--workers", "2", "--rounds", "2", "--no-heavy", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "fmnist (2 workers)" in proc.stdout and "minimal (1 process)" in proc.stdout
    assert "fmnist / minimal:" in proc.stdout and "targets" in proc.stdout
    record = json.loads(out.read_text())
    for side in ("fmnist", "minimal"):
        assert record[side]["answered"] == 200 and record[side]["errors"] == 0, record[side]
        assert record[side]["requests_per_s"] > 0 and record[side]["server_cpu_ms_per_request"] > 0
    assert record["ratio"] == pytest.approx(
        record["fmnist"]["requests_per_s"] / record["minimal"]["requests_per_s"], rel=1e-2
    )
    assert record["cpu"] and record["settings"]["workers"] == 2 and "serve_load.py" in record["command"]
    assert record["versions"]["onnxruntime"] and record["versions"]["fastapi"]
