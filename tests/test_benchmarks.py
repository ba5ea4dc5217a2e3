"""Benchmarks keep working: each runs in its smoke mode (timings are not checked here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
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


def test_gpu_runbook_smoke_runs_the_gpu_best_stage_anywhere_packs_its_runs_and_records_nothing(
    tiny_data_dir: Path, tmp_path: Path
):
    import json

    script = ROOT / "benchmarks" / "gpu_runbook.sh"
    # The runbook calls `python3`, as the GPU machine's image names its interpreter: here, this one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SMOKE": "1",
           "FMNIST_DATA": str(tiny_data_dir), "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"),
           "GPU_BEST_SEEDS": "2", "JOBS": "2"}  # fmt: skip
    recorded = (ROOT / "src" / "fmnist" / "training" / "recipes_measured.json").read_text()
    proc = subprocess.run(["bash", str(script), "gpu-best"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for seed in (0, 1):  # the seeds trained side by side (--jobs), each a run directory
        assert (tmp_path / "runs" / "frontier" / "gpu-best-jobs" / f"gpu-best-seed{seed}" / "results.json").is_file()
        assert f"gpu-best seed {seed}:" in (tmp_path / "out" / "gpu-best.log").read_text()
    # The run directories come back as one archive, without their checkpoints.
    with tarfile.open(tmp_path / "out" / "runs.tgz") as packed:
        names = packed.getnames()
    assert "./frontier/gpu-best-jobs/gpu-best-seed1/results.json" in names
    assert not [n for n in names if n.endswith(".safetensors")]
    # Smoke figures are never recorded: the copy brought back is the file as committed.
    assert (tmp_path / "out" / "recipes_measured.json").read_text() == recorded
    # A stage past its time cap stops, says so, and still packs what it finished.
    capped = {**env, "STAGE_S": "1", "OUT": str(tmp_path / "capped"), "RUNS": str(tmp_path / "capped-runs")}
    proc = subprocess.run(["bash", str(script), "gpu-best"], capture_output=True, text=True, env=capped, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "gpu-best stopped: exit 124" in (tmp_path / "capped" / "gpu-best.log").read_text()
    assert (tmp_path / "capped" / "runs.tgz").is_file()
    bad = subprocess.run(["bash", str(script), "gpu-worst"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "usage: benchmarks/gpu_runbook.sh check|speed|gpu-best|seed004|all" in bad.stderr
    # The speed stage: benchmarks/gpu_speed.py per recipe and seed, its table brought back, nothing recorded.
    speed = {**env, "OUT": str(tmp_path / "speed"), "RUNS": str(tmp_path / "speed-runs"), "SPEED_SEEDS": "1"}
    proc = subprocess.run(["bash", str(script), "speed"], capture_output=True, text=True, env=speed, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    log = (tmp_path / "speed" / "gpu-speed.log").read_text()
    assert "gpu-fast seed 0:" in log and "gpu-95 seed 0:" in log, log
    table = json.loads((tmp_path / "speed" / "gpu_speed.json").read_text())["tables"]["gpu_recipes"]
    assert [row["recipe"] for row in table["rows"]] == ["gpu-fast", "gpu-95"] and "--smoke" in table["command"]
    assert (tmp_path / "speed" / "recipes_measured.json").read_text() == recorded


def test_ensemble_designs_chooses_on_validation_and_tests_only_the_choice(tiny_data_dir: Path, tmp_path: Path):
    import json

    command = [sys.executable, str(ROOT / "benchmarks" / "ensemble_designs.py"), "--out", str(tmp_path / "study"),
               "--max-steps", "2", "--val-size", "100", "--data-dir", str(tiny_data_dir)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    gains = {design: v["gain_over_best_member"] for design, v in study["validation"].items()}
    assert set(gains) == {"seeds", "zoo"} and study["chosen"] == max(gains, key=gains.get)
    assert list(study["test"]) == [study["chosen"]]  # the other design's test figure is never computed
    assert not (tmp_path / "study" / f"{({'seeds', 'zoo'} - {study['chosen']}).pop()}-ensemble").exists()
    assert ": test " not in proc.stdout.split("chosen on validation")[0]  # nothing tested before the choice
    # Run again: every finished run is reused, and --test-all adds the other design after the choice.
    again = subprocess.run([*command, "--test-all"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("finished earlier, reused") == 9, again.stdout
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    assert sorted(study["test"]) == ["seeds", "zoo"] and len(study["reused"]) == 9
    assert all(seconds > 0 for seconds in study["train_seconds"].values())  # read from each run, reused or not
    assert [v["after_the_choice"] for v in study["test"].values()] == [False, True]


def test_parallel_jobs_times_both_settings_side_by_side_and_prints_the_speed_up(tiny_data_dir: Path):
    env = {**os.environ, "FMNIST_DATA": str(tiny_data_dir)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parallel_jobs.py"), "--models", "mlp",
                           "--seeds", "2", "--rounds", "2", "--max-steps", "2"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rounds = re.findall(r"round (\d), --jobs (\d):", proc.stdout)
    assert rounds == [("1", "1"), ("1", "2"), ("2", "2"), ("2", "1")]  # the order alternates
    one = re.search(r"^one run at a time\s+\S+\s+\S+\s+\S+%\s+1\.00x$", proc.stdout, re.M)
    jobs = re.search(r"^--jobs 2\s+(\d+\.\d)\s+\S+\s+\S+%\s+(\d+\.\d\d)x$", proc.stdout, re.M)
    assert one and jobs, proc.stdout
    assert float(jobs.group(2)) > 0


def test_gpu_speed_smoke_trains_each_recipe_per_seed_and_writes_a_table_the_docs_render(
    tiny_data_dir: Path, tmp_path: Path
):
    import json

    script = str(ROOT / "benchmarks" / "gpu_speed.py")
    recorded = (ROOT / "src" / "fmnist" / "training" / "recipes_measured.json").read_text()
    proc = subprocess.run([sys.executable, script, "--smoke", "--recipes", "gpu-fast,gpu-95", "--seeds", "2",
                           "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "speed")],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for name in ("gpu-fast", "gpu-95"):
        for seed in (0, 1):
            assert re.search(rf"^{name} seed {seed}: \d+\.\d\d% in .* images/s; to 93%: ", proc.stdout, re.M)
    results = json.loads((tmp_path / "speed" / "gpu_speed.json").read_text())
    table = results["tables"]["gpu_recipes"]
    assert [row["recipe"] for row in table["rows"]] == ["gpu-fast", "gpu-95"]
    assert all(len(row["accuracy"]) == 2 and row["images_per_s"] > 0 for row in table["rows"])
    assert table["rows"][0]["peak_share"] is None  # a CPU has no bf16 peak in the table
    assert "--smoke" in table["command"] and "threads" in table["hardware"]
    runs = json.loads((tmp_path / "speed" / "runs.json").read_text())
    assert [r["seed"] for r in runs["gpu-fast"]] == [0, 1] and runs["gpu-fast"][0]["curve"]  # a test point an epoch
    # The docs render the file as written (docs/scripts/results_tables.py reads benchmarks/results/).
    sys.path.insert(0, str(ROOT / "docs" / "scripts"))
    try:
        import results_tables
    finally:
        sys.path.pop(0)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gpu_speed.json").write_text(json.dumps(results))
    real = results_tables.RESULTS
    results_tables.RESULTS = tmp_path / "results"
    try:
        rendered = results_tables.render_json_table("gpu_speed.json", "gpu_recipes")
    finally:
        results_tables.RESULTS = real
    assert rendered.startswith("| recipe | test accuracy | to 93% |") and "| `gpu-95` |" in rendered
    # Smoke figures are never recorded; without a GPU the real thing says so in one line.
    assert (ROOT / "src" / "fmnist" / "training" / "recipes_measured.json").read_text() == recorded
    refused = subprocess.run(
        [sys.executable, script, "--smoke", "--write"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "never recorded" in refused.stderr
    import torch

    if not torch.cuda.is_available():  # (on a GPU this would be the whole benchmark)
        no_gpu = subprocess.run([sys.executable, script, "--device", "cuda", "--data-dir", str(tiny_data_dir)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert (
            no_gpu.returncode == 2
            and no_gpu.stderr.strip() == "error: no CUDA GPU here (--smoke runs the plumbing on the CPU)"
        )
