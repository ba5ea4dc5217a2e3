"""`fmnist ablate`: seed 004's variants, paired deltas over seeds, ablation.json and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from fmnist.experiments.ablate import (
    PUBLISHED,
    Variant,
    ablation_plan,
    ablation_variants,
    run_ablation,
    summarize_ablation,
)
from fmnist.models import create_model


def test_seed004_variants_are_the_write_ups():
    variants = {v.name: v for v in ablation_variants("cnn_seed004")}
    assert list(variants) == ["full", "no_dropout", "single_conv", "smaller_fc", "no_normalization"]
    assert variants["full"].values == {}
    assert variants["no_dropout"].values == {"model_args": {"conv_dropout": 0.0, "fc_dropout": 0.0}}
    assert variants["single_conv"].values == {"model_args": {"second_conv": False}}
    assert variants["smaller_fc"].values == {"model_args": {"fc": 64}}
    assert variants["no_normalization"].values == {"normalize": False}
    plan, _ = ablation_plan("cnn_seed004", seeds=2)
    configs = {spec.name: spec.config({}) for spec in plan.runs}
    assert all(
        c.epochs == 20 and c.batch_size == 128 and c.optimizer == "adam" and c.lr == 1e-3 for c in configs.values()
    )
    assert configs["full"].mean == 0.5 and configs["no_normalization"].normalize is False
    assert configs["smaller_fc"].model_args["fc"] == 64 and configs["smaller_fc"].model_args["fc_dropout"] == 0.5
    assert plan.seeds == 2 and plan.published == PUBLISHED["cnn_seed004"]


@pytest.mark.parametrize("base", ["cnn", "mlp", "fastcnn", "mlp_seed002", "lenet5"])
def test_other_bases_get_variants_that_build(base):
    variants = ablation_variants(base)
    assert variants[0].name == "full" and variants[-1].name == "no_normalization"
    for v in variants:
        create_model(base, **v.values.get("model_args", {}))


def test_summary_pairs_deltas_by_seed_hand_example():
    runs = [
        {"name": "full", "seed": 0, "test_accuracy": 0.90}, {"name": "full", "seed": 1, "test_accuracy": 0.92},
        {"name": "no_dropout", "seed": 1, "test_accuracy": 0.89}, {"name": "no_dropout", "seed": 0, "test_accuracy": 0.88},
    ]  # fmt: skip
    variants = [Variant("full", "none"), Variant("no_dropout", "remove dropout")]
    rows = summarize_ablation(runs, variants, {"full": 0.93, "no_dropout": 0.91})
    full, drop = rows
    assert full["accuracy"] == [0.90, 0.92] and full["delta"] == [0.0, 0.0]
    assert drop["accuracy"] == [0.88, 0.89]
    assert drop["delta"] == pytest.approx([-0.02, -0.03])
    assert drop["delta_mean"] == pytest.approx(-0.025)
    assert drop["delta_std"] == pytest.approx(0.00707107, rel=1e-4)
    assert drop["published_delta"] == pytest.approx(-0.02)


def test_run_ablation_writes_ablation_json_and_a_report(tiny_dataset, tmp_path: Path):
    from fmnist.report import write_report

    out = tmp_path / "ablate"
    ablation = run_ablation("cnn_seed004", out, tiny_dataset, seeds=2,
                            overrides={"epochs": 1, "max_steps": 2, "val_size": 100})  # fmt: skip
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["variants"] == json.loads(json.dumps(ablation["variants"]))
    assert [v["name"] for v in saved["variants"]] == [
        "full",
        "no_dropout",
        "single_conv",
        "smaller_fc",
        "no_normalization",
    ]
    assert all(len(v["accuracy"]) == 2 and len(v["delta"]) == 2 for v in saved["variants"])
    assert (out / "compare.json").is_file() and (out / "single_conv-seed1").is_dir()
    write_report(out, embedding="none", gradcam=False)
    text = (out / "report.md").read_text()
    assert "## 12. Ablation" in text and "93.04%" in text and "single_conv" in text


def test_cli_ablate(tiny_data_dir: Path, tmp_path: Path, isolated_env):
    out = tmp_path / "ablate"
    proc = run_cli("ablate", "--base", "cnn_seed004", "--seeds", "2", "--epochs", "1", "--max-steps", "1",
                   "--val-size", "100", "--out", str(out), "--data-dir", str(tiny_data_dir), "--no-report",
                   env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for fragment in ("no_dropout", "single_conv", "smaller_fc", "no_normalization", "93.04%", "±"):
        assert fragment in proc.stdout, fragment
    assert json.loads((out / "ablation.json").read_text())["seeds"] == 2
    proc = run_cli("ablate", "--base", "nope", env=isolated_env)
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr and "Traceback" not in proc.stderr
