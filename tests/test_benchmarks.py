"""Benchmarks keep working: each runs in its smoke mode (timings are not checked here)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

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


def test_gpu_runbook_smoke_runs_its_best_stage_anywhere_packs_its_runs_and_records_nothing(
    tiny_data_dir: Path, tmp_path: Path
):
    """The runbook's plumbing. Its gpu-best stage runs the small fast recipe here (BEST_RECIPE): WRN-16-8
    passes every smoke image through six TTA views at about a GFLOP each, minutes of a CPU, and its
    smoke run on the CPU is tests/test_recipes.py's already."""
    import json

    script = ROOT / "benchmarks" / "gpu_runbook.sh"
    # The runbook calls `python3`, as the GPU machine's image names its interpreter: here, this one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SMOKE": "1",
           "FMNIST_DATA": str(tiny_data_dir), "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"),
           "GPU_BEST_SEEDS": "2", "JOBS": "2", "BEST_RECIPE": "fast"}  # fmt: skip
    recorded = (ROOT / "src" / "fmnist" / "training" / "recipes_measured.json").read_text()
    proc = subprocess.run(["bash", str(script), "gpu-best"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for seed in (0, 1):  # the seeds trained side by side (--jobs), each a run directory
        assert (tmp_path / "runs" / "frontier" / "fast-jobs" / f"fast-seed{seed}" / "results.json").is_file()
        assert f"fast seed {seed}:" in (tmp_path / "out" / "gpu-best.log").read_text()
    # The run directories come back as one archive, without their checkpoints.
    with tarfile.open(tmp_path / "out" / "runs.tgz") as packed:
        names = packed.getnames()
    assert "./frontier/fast-jobs/fast-seed1/results.json" in names
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


def _results_tables():
    sys.path.insert(0, str(ROOT / "docs" / "scripts"))
    try:
        import results_tables
    finally:
        sys.path.pop(0)
    return results_tables


def _keys(value) -> list[str]:
    """Every key of a JSON document, at any depth."""
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


SCREEN = """
name = "tiny"
chose = "nothing"
seeds = [0, 1]
[rule]
keep = "plain"
min_gain = 0.5
[base]
model = "fastcnn"
epochs = 1
tta = "none"
[candidates.plain]
[candidates.narrow]
lr = 1e-2
model_args = { widths = [8, 16, 32] }
tta = "flip-shift"
val_tta = "none"
"""


def test_screen_smoke_records_validation_accuracy_per_seed_and_no_test_figure(tiny_data_dir: Path, tmp_path: Path):
    import json
    import statistics

    from fmnist.config import TrainConfig
    from fmnist.device import ISA_LEVELS, hardware_isa

    script = str(ROOT / "benchmarks" / "screen.py")
    (tmp_path / "tiny.toml").write_text(SCREEN)
    out = tmp_path / "screen.json"
    proc = subprocess.run([sys.executable, script, str(tmp_path / "tiny.toml"), "--smoke", "--jobs", "2",
                           "--data-dir", str(tiny_data_dir), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    screen = json.loads(out.read_text())
    assert screen["screen"] == "tiny" and screen["chose"] == "nothing" and screen["seeds"] == [0, 1]
    assert screen["cpu"] and screen["isa"] in ISA_LEVELS and screen["isa_level"] == "native"
    assert screen["precision"] and set(screen["precision"]) <= {"fp32", "bf16"} and screen["smoke"] is True
    assert "--smoke" in screen["command"] and screen["recorded"][:4].isdigit() and screen["jobs"] == 2
    assert screen["data"]["val_size"] == 100 and screen["versions"]["torch"]
    plain, narrow = screen["candidates"]
    assert [plain["name"], narrow["name"]] == ["plain", "narrow"]
    assert plain["changed"] == {}
    assert narrow["overrides"] == {"lr": 0.01, "model_args": {"widths": [8, 16, 32]}, "tta": "flip-shift",
                                   "val_tta": "none"}  # fmt: skip
    assert narrow["changed"] == {"model_args.widths": ["[16, 32, 64]", "[8, 16, 32]"], "lr": ["0.02", "0.01"],
                                 "tta": ['"none"', '"flip-shift"'], "val_tta": ['"same"', '"none"']}  # fmt: skip
    # Full resolved settings: every key of a run's config but the seed, which the screen's list sets.
    assert set(narrow["settings"]) == set(TrainConfig().to_dict()) - {"seed"}
    assert narrow["settings"]["model_args"]["whiten"] is True  # merged key by key with the base's
    for candidate in (plain, narrow):
        runs = candidate["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for run in runs:
            vals = [h["val_accuracy"] for h in run["history"]]
            assert run["best_val_accuracy"] == max(vals) and run["last_val_accuracy"] == vals[-1]
            assert run["history"][run["best_epoch"] - 1]["val_accuracy"] == run["best_val_accuracy"]
            assert 0 <= run["best_val_accuracy"] <= 1 and run["wall_seconds"] > 0 and run["steps"] == 2
        assert candidate["mean_best_val_accuracy"] == statistics.fmean(r["best_val_accuracy"] for r in runs)
        assert candidate["mean_tta_val_accuracy"] == statistics.fmean(r["tta_val_accuracy"] for r in runs)
    # Epochs validated on the plain view, the choice on the best weights through the candidate's own views.
    assert [r["epoch_validation_tta"] for r in plain["runs"] + narrow["runs"]] == ["none"] * 4
    assert all(r["tta_val_accuracy"] == r["best_val_accuracy"] for r in plain["runs"])
    assert all(0 <= r["tta_val_accuracy"] <= 1 for r in narrow["runs"])
    # Validation only: every accuracy recorded is a validation accuracy, and no key names the test split.
    keys = _keys(screen)
    assert not [k for k in keys if "test" in k.lower()]
    assert all("val_accuracy" in k for k in keys if "accuracy" in k)
    # docs/results.md renders the file as written.
    tables = _results_tables()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "screen-tiny-cpu.json").write_text(out.read_text())
    real, tables.RESULTS = tables.RESULTS, tmp_path / "results"
    try:
        rendered = tables.render_screens()
    finally:
        tables.RESULTS = real
    assert "| `plain` | the base |" in rendered and "model_args.widths [16, 32, 64] → [8, 16, 32]" in rendered
    assert "smoke run" in rendered
    # The file's rule is applied by the script, and the record holds it with its verdict.
    judge = _screen_script().judge
    assert screen["rule"] == {"keep": "plain", "min_gain": 0.5, "max_time_ratio": None}
    assert screen["verdict"] == judge(_screen_script().Rule("plain", 0.5), screen["candidates"])
    assert f"Verdict: {screen['verdict']['reason']}." in rendered
    # --judge adds a rule's verdict to a screen recorded without one, trains nothing, and refuses
    # a record of another screen in one line, leaving it as it was.
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({k: v for k, v in screen.items() if k not in ("rule", "verdict")}))
    proc = subprocess.run([sys.executable, script, str(tmp_path / "tiny.toml"), "--judge", str(bare)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "training" not in proc.stdout, proc.stderr + proc.stdout
    rejudged = json.loads(bare.read_text())
    assert rejudged["verdict"] == screen["verdict"] and "--judge" in rejudged["judged"]["command"]
    assert {k: v for k, v in rejudged.items() if k != "judged"} == screen
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**screen, "screen": "another"}))
    before = other.read_text()
    proc = subprocess.run([sys.executable, script, str(tmp_path / "tiny.toml"), "--judge", str(other)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and other.read_text() == before
    # --isa reruns the screen in a child capped to that level, or says in one line why it cannot.
    capped = tmp_path / "capped.json"
    (tmp_path / "one.toml").write_text(SCREEN.replace("seeds = [0, 1]", "seeds = [3]"))
    proc = subprocess.run([sys.executable, script, str(tmp_path / "one.toml"), "--smoke", "--isa", "avx2",
                           "--data-dir", str(tiny_data_dir), "--json", str(capped)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if ISA_LEVELS.index(hardware_isa()) >= ISA_LEVELS.index("avx2"):
        assert proc.returncode == 0, proc.stderr + proc.stdout
        record = json.loads(capped.read_text())
        assert (record["isa_level"], record["isa"], record["precision"]) == ("avx2", "avx2", ["fp32"])
        assert record["isa_caps"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and record["seeds"] == [3]
    else:
        assert proc.returncode == 2 and proc.stderr.startswith("error: --isa avx2: needs avx2")
    # A screen file with a bad key or setting stops before any training, naming the file.
    (tmp_path / "bad.toml").write_text(SCREEN + "[candidates.typo]\nlearning_rate = 1\n")
    bad = subprocess.run([sys.executable, script, str(tmp_path / "bad.toml"), "--smoke", "--json", str(capped)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "candidate 'typo'" in bad.stderr and "learning_rate" in bad.stderr


def test_time_to_accuracy_smoke_records_every_reference_seed_and_no_ratio_short_of_the_target(
    tiny_data_dir: Path, tmp_path: Path
):
    import json
    import statistics

    out = tmp_path / "tta.json"
    script = str(ROOT / "benchmarks" / "time_to_accuracy.py")
    proc = subprocess.run([sys.executable, script, "--smoke", "--seeds", "2", "--reference-seeds", "2",
                           "--data-dir", str(tiny_data_dir), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    record = json.loads(out.read_text())
    assert record["reference_seeds"] == 2 and record["smoke"] is True
    (level,) = record["levels"]
    reference = level["seed_runs"]
    assert [r["seed"] for r in reference] == [0, 1]
    for run in reference:
        history = run["history"]
        assert [h["epoch"] for h in history] == list(range(1, len(history) + 1)) and len(history) <= 2
        first = next((h for h in history if h["test_accuracy"] >= 0.93), None)
        # It stops at the first epoch at 93%; its time is that epoch's cumulative seconds.
        assert run["reached"] == (first is not None) and run["epoch"] == (first and first["epoch"])
        assert run["seconds"] == history[-1]["seconds"] > 0 and (first is None or first is history[-1])
    assert level["seed_seconds"] == statistics.fmean(r["seconds"] for r in reference)
    assert level["seed_reached"] == all(r["reached"] for r in reference)
    assert [r["seed"] for r in level["fmnist_runs"]] == [0, 1]
    assert all(r["wall_seconds"] > 0 and 0 <= r["accuracy"] <= 1 for r in level["fmnist_runs"])
    # Two steps of fastcnn are far from 93%: no ratio, whatever the reference did.
    assert level["mean_accuracy"] < 0.93
    assert level["ratio"] == "not reached" and level["meets"]["ratio"] is False
    tables = _results_tables()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "time_to_accuracy-cpu.json").write_text(out.read_text())
    real, tables.RESULTS = tables.RESULTS, tmp_path / "results"
    try:
        rendered = tables.render_time_to_accuracy_sweeps()
    finally:
        tables.RESULTS = real
    assert "| not reached |" in rendered and "seed 1: " in rendered
    refused = subprocess.run([sys.executable, script, "--smoke"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "never recorded" in refused.stderr
    for wrong, says in ((["--levels", "avx9"], "unknown level 'avx9'"), (["--levels", "avx2"], "--isa-sweep")):
        refused = subprocess.run([sys.executable, script, "--smoke", "--json", str(out), *wrong],
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert refused.returncode == 2 and says in refused.stderr and len(refused.stderr.splitlines()) == 1
    # A sweep of one level adds its row and keeps the other level's, each with the run that made it.
    before = json.loads(out.read_text())["levels"]
    level_name = before[0]["level"]
    other = "avx2" if level_name != "avx2" else "native"
    proc = subprocess.run([sys.executable, script, "--isa-sweep", "--levels", other, "--smoke", "--seeds", "1",
                           "--reference-seeds", "1", "--data-dir", str(tiny_data_dir), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    levels = {row["level"]: row for row in json.loads(out.read_text())["levels"]}
    assert set(levels) == {level_name, other}
    assert levels[level_name] == before[0]
    assert "--levels" not in levels[level_name]["command"] and f"--levels {other}" in levels[other]["command"]


def _screen_script():
    """benchmarks/screen.py as a module (it lives outside the package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import screen
    finally:
        sys.path.pop(0)
    return screen


def test_the_fast_screen_resolves_and_its_chosen_candidate_is_the_fast_recipe_in_one_view():
    screen = _screen_script()
    from fmnist.training.settings import resolve_config

    fast = screen.read_screen(ROOT / "configs" / "screens" / "fast.toml")
    assert fast.name == fast.chose == "fast" and len(fast.seeds) >= 2
    configs = {name: screen.resolve(fast, name, {}) for name in fast.candidates}  # resolves, trains nothing
    recipe = resolve_config("fastcnn", options={"tta": "none"})  # the screen compared single views
    assert configs["narrow-muon-3ep-lr2e-2"].to_dict() == recipe.to_dict()
    assert screen.changed(screen.resolve(fast, None, {}), configs["0.3.1"]) == {}


def test_a_screen_runs_its_candidates_seed_by_seed_in_a_rotating_order():
    screen = _screen_script()
    assert screen.run_order(["a", "b", "c"], [0, 1, 2, 3]) == [
        ("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1), ("c", 2), ("a", 2), ("b", 2), ("a", 3), ("b", 3),
        ("c", 3),
    ]  # fmt: skip
    assert screen.run_order(["only"], [5, 6]) == [("only", 5), ("only", 6)]


def _candidate(name: str, score: float, seconds: float) -> dict:
    return {"name": name, "mean_tta_val_accuracy": score, "mean_wall_seconds": seconds}


def test_a_screen_rule_replaces_the_kept_candidate_only_past_its_gain_and_within_its_time():
    screen = _screen_script()
    rule = screen.Rule("base", 0.15, 1.05)
    base = _candidate("base", 0.9452, 100.0)
    cases = [  # (challenger, the candidate the recipe takes): worked out by hand from the rule
        (_candidate("better", 0.9470, 104.0), "better"),  # +0.18 points, 1.04x the time
        (_candidate("exactly", 0.9467, 100.0), "exactly"),  # +0.15: the rule says at least
        (_candidate("short", 0.9466, 90.0), "base"),  # +0.14
        (_candidate("slow", 0.9490, 106.0), "base"),  # +0.38 but 1.06x the time
        (_candidate("worse", 0.9440, 50.0), "base"),
        (_candidate("tied", 0.9452, 50.0), "base"),  # a tie keeps the recipe as it is
    ]
    for challenger, taken in cases:
        verdict = screen.judge(rule, [challenger, base])
        assert verdict["candidate"] == taken and verdict["changes_recipe"] == (taken != "base"), challenger["name"]
        best = challenger if challenger["mean_tta_val_accuracy"] > base["mean_tta_val_accuracy"] else base
        assert verdict["reason"].startswith(f"`{best['name']}` scored highest"), verdict["reason"]
    assert screen.judge(screen.Rule("base", 0.15), [base, _candidate("slow", 0.9490, 500.0)])["candidate"] == "slow"
    # The best candidate is the one judged: a runner-up that would pass does not take its place.
    verdict = screen.judge(rule, [base, _candidate("slow", 0.9490, 200.0), _candidate("fine", 0.9470, 100.0)])
    assert verdict["candidate"] == "base" and "1.05x" in verdict["reason"]


def test_a_distilled_candidates_time_counts_its_teachers_training():
    screen = _screen_script()
    own = {"wall_seconds": 100.0}
    distilled = {"wall_seconds": 110.0, "seconds_with_teacher": 410.0}  # a teacher of 3 members, 100 s each
    assert screen.cost_seconds(own) == 100.0 and screen.cost_seconds(distilled) == 410.0
    summary = screen.summary([{**r, "best_val_accuracy": 0.9, "tta_val_accuracy": 0.9, "last_val_accuracy": 0.9}
                              for r in (distilled,)])  # fmt: skip
    assert summary["mean_wall_seconds"] == 110.0 and summary["mean_cost_seconds"] == 410.0
    base = {**_candidate("base", 0.9452, 100.0), "mean_cost_seconds": 100.0}
    student = {**_candidate("student", 0.9490, 110.0), "mean_cost_seconds": 410.0}
    verdict = screen.judge(screen.Rule("base", 0.2, 4.5), [base, student])
    assert verdict["candidate"] == "student" and "4.10x" in verdict["reason"]
    verdict = screen.judge(screen.Rule("base", 0.2, 4.0), [base, student])
    assert verdict["candidate"] == "base" and "4.10x" in verdict["reason"]  # 1.10x its own wall time alone


def test_a_bad_screen_rule_is_one_error_naming_the_file(tmp_path: Path):
    screen = _screen_script()
    from fmnist.errors import UsageError

    for rule, words in [('keep = "nobody"\nmin_gain = 0.1', "keep must name a candidate"),
                        ('keep = "a"\nmin_gain = -1', "min_gain"), ('keep = "a"', "min_gain"),
                        ('keep = "a"\nmin_gain = 0.1\nmax_time_ratio = 0', "max_time_ratio"),
                        ('keep = "a"\nmin_gain = 0.1\nmin_seeds = 3', r"unknown key\(s\) min_seeds")]:  # fmt: skip
        path = tmp_path / "bad.toml"
        path.write_text(f'name = "x"\nseeds = [0]\n[rule]\n{rule}\n[candidates.a]\n')
        with pytest.raises(UsageError, match=words) as caught:
            screen.read_screen(path)
        assert str(path) in str(caught.value)


def test_each_recipes_screens_chain_by_their_recorded_verdicts_to_the_recipe():
    """Every recorded screen whose file has a [rule] holds the verdict the rule gives on its runs; each
    later screen of the same recipe starts from the candidate the one before it took, and the last
    verdict is the recipe's settings now. A recipe screened but never built (no verdict took a
    candidate) kept, at every screen, an existing recipe's settings."""
    import json

    screen = _screen_script()
    from fmnist.training.recipes import RECIPES
    from fmnist.training.settings import resolve_config

    records = [json.loads(p.read_text()) for p in (ROOT / "benchmarks" / "results").glob("screen-*.json")]
    chains: dict[str, list] = {}
    for path in sorted((ROOT / "configs" / "screens").glob("*.toml")):
        file = screen.read_screen(path)
        if file.rule is None:
            continue
        (record,) = [r for r in records if r["screen"] == file.name]  # by name: cpu-best-shift is not cpu-best
        assert record["rule"] == dataclasses.asdict(file.rule)
        assert record["verdict"] == screen.judge(file.rule, record["candidates"]), file.name
        chains.setdefault(file.chose, []).append((record["recorded"], file, record["verdict"]))
    assert len(chains.get("cpu-95", [])) == 5 and "cpu-best" in chains
    for recipe, screens in chains.items():
        screens.sort(key=lambda entry: entry[0])
        for (_, before, verdict), (_, after, _) in zip(screens, screens[1:], strict=False):
            assert (
                screen.resolve(before, verdict["candidate"], {}).to_dict()
                == screen.resolve(after, after.rule.keep, {}).to_dict()
            )
        _, last, verdict = screens[-1]
        settings = screen.resolve(last, verdict["candidate"], {}).to_dict()
        if recipe in RECIPES:
            assert {**settings, "recipe": recipe} == resolve_config(recipe=recipe).to_dict()
        else:
            assert not any(v["changes_recipe"] for _, _, v in screens), recipe
            assert any({**settings, "recipe": r} == resolve_config(recipe=r).to_dict() for r in RECIPES), recipe


def test_robustness_smoke_records_every_corruption_at_every_severity_with_its_hardware_and_command(
    tmp_path_factory, tmp_path: Path
):
    import json

    from fmnist.data.corruptions import CORRUPTIONS, SEVERITY_LEVELS
    from test_predict import tiny_run_dir

    run_dir, data_dir = tiny_run_dir(tmp_path_factory)
    script, out = str(ROOT / "benchmarks" / "robustness.py"), tmp_path / "results" / "robustness-tiny-cpu.json"
    proc = subprocess.run([sys.executable, script, str(run_dir), "--recipe", "tiny", "--smoke", "--data-dir",
                           str(data_dir), "--json", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    doc = json.loads(out.read_text())
    rows = doc["record"]["rows"]
    assert [(r["corruption"], r["severity"]) for r in rows] == [(c, s) for c in CORRUPTIONS for s in SEVERITY_LEVELS]
    assert len(SEVERITY_LEVELS) == 3 and doc["record"]["images"] == 100 and doc["smoke"] is True
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    mean = sum(r["accuracy"] for r in rows) / len(rows)
    assert abs(doc["record"]["mean_corruption_accuracy"] - mean) < 1e-9
    assert doc["cpu"] and doc["threads"] == 1 and doc["versions"]["torch"] and doc["seconds"] > 0
    assert "python benchmarks/robustness.py " in doc["command"]
    assert "--smoke" in doc["command"] and doc["recipe"] == "tiny" and doc["recorded"][:4].isdigit()
    # The docs render the file as written: every corruption, the hardware and the command.
    tables = _results_tables()
    real, tables.RESULTS = tables.RESULTS, out.parent
    try:
        rendered = tables.render_robustness()
    finally:
        tables.RESULTS = real
    assert all(f"| `{name}` |" in rendered for name in CORRUPTIONS) and "smoke run on 100 images" in rendered
    assert doc["cpu"] in rendered and doc["command"] in rendered
    bad = subprocess.run([sys.executable, script, str(tmp_path / "missing"), "--recipe", "x"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_make_run_smoke_records_a_row_read_back_from_the_compares_results_files(tiny_data_dir: Path, tmp_path: Path):
    import json

    import torch

    from fmnist.device import cpu_model
    from fmnist.experiments.compare import read_compare
    from fmnist.inference.rundir import read_results

    script, compare = str(ROOT / "benchmarks" / "make_run.py"), tmp_path / "compare"
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "make_run.json"  # not there yet: starts from a copy of the recorded file
    recorded = json.loads((ROOT / "benchmarks" / "results" / "make_run.json").read_text(encoding="utf-8"))
    proc = subprocess.run([sys.executable, script, "--smoke", "--data-dir", str(tiny_data_dir), "--json", str(out),
                           "--keep", str(compare)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    record = json.loads(out.read_text(encoding="utf-8"))
    table = record["tables"]["make_run"]
    keys = [c[0] for c in table["columns"]]
    assert keys[keys.index("training_seconds") + 1] == "mlp_share"
    *old, row = table["rows"]
    # A row from another machine is kept; one with this machine's hardware text is replaced, not doubled.
    assert old == [r for r in recorded["tables"]["make_run"]["rows"] if r["hardware"] != row["hardware"]]
    # Every figure is the compare's own, as its run folders' results.json hold it (rounded for the table).
    runs = {r.results.model: (r.results, read_results(compare / r.run_dir)) for r in read_compare(compare).runs}
    (mlp, mlp_file), (cnn, cnn_file) = runs["mlp_wide"], runs["fastcnn"]
    assert (mlp_file.test_accuracy, cnn_file.test_accuracy) == (mlp.test_accuracy, cnn.test_accuracy)
    assert row["mlp_wide"] == round(100 * mlp_file.test_accuracy, 2)
    assert row["fastcnn"] == round(100 * cnn_file.test_accuracy, 2)
    assert row["training_seconds"] == [round(mlp_file.train_seconds, 1), round(cnn_file.train_seconds, 1)]
    share = 100 * mlp_file.train_seconds / (mlp_file.train_seconds + cnn_file.train_seconds)
    assert abs(row["mlp_share"] - share) <= 0.005 and 0 < row["mlp_share"] < 100
    assert row["wall_seconds"] >= mlp_file.train_seconds + cnn_file.train_seconds - 0.05  # the job holds both
    assert row["precision"] == ", ".join(sorted({mlp_file.precision, cnn_file.precision}))
    assert mlp_file.steps == cnn_file.steps == 2 and row["smoke"] is True and "--smoke" in row["command"]
    assert row["hardware"].startswith(cpu_model()) and row["hardware"].endswith(f"torch {torch.__version__}")
    assert row["isa_level"] == "native" and "uncapped" in row["hardware"]
    # Uncapped: the output block is this job's transcript, with the temporary folder named $OUT.
    output = record["tables"]["output"]
    assert (output["hardware"], output["command"]) == (row["hardware"], row["command"])
    assert output["output"].startswith("ok: 600 train + 200 test images") and str(compare) not in output["output"]
    assert f"mlp: test accuracy {row['mlp_wide']:.2f}%" in output["output"] and "-> $OUT" in output["output"]
    # The docs render the new column, and a dash for the rows recorded before it.
    tables = _results_tables()
    real, tables.RESULTS = tables.RESULTS, tmp_path / "results"
    try:
        rendered = tables.render("make_run.json#make_run").splitlines()
    finally:
        tables.RESULTS = real
    assert "| MLP share of training |" in rendered[0] and f"| {row['mlp_share']:.2f}% |" in rendered[-1]
    earlier = record["tables"]["make_run"]["rows"][:-1]  # rows recorded before the column have no share
    assert len(rendered[2:-1]) == len(earlier)
    for line, before in zip(rendered[2:-1], earlier):
        share = line.split(" | ")[keys.index("mlp_share")]
        assert share == (f"{before['mlp_share']:.2f}%" if "mlp_share" in before else "–")
    # The same hardware again replaces its row (and a capped run keeps the output block).
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import make_run
    finally:
        sys.path.pop(0)
    again = make_run.merge(json.loads(json.dumps(record)), {**row, "mlp_share": 12.5}, None)
    assert again["tables"]["make_run"]["rows"] == [*old, {**row, "mlp_share": 12.5}]
    assert again["tables"]["output"] == output
    refused = subprocess.run([sys.executable, script, "--smoke"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "never recorded" in refused.stderr
