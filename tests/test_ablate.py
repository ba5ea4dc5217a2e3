"""`fmnist ablate`: seed 004's variants, paired deltas over seeds, ablation.json and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from fmnist.api import make_config
from fmnist.config import TrainConfig
from fmnist.experiments.ablate import (
    PUBLISHED,
    Variant,
    ablation_plan,
    run_ablation,
    summarize_ablation,
)
from fmnist.experiments.session import Session
from fmnist.models import create_model
from fmnist.models.registry import list_models


def test_seed004_variants_are_the_write_ups():
    variants = {v.name: v for v in ablation_plan("cnn_seed004").variants}
    assert list(variants) == ["full", "no_dropout", "single_conv", "smaller_fc", "no_normalization"]
    assert variants["full"].values == {}
    assert variants["no_dropout"].values == {"model_args": {"conv_dropout": 0.0, "fc_dropout": 0.0}}
    assert variants["single_conv"].values == {"model_args": {"second_conv": False}}
    assert variants["smaller_fc"].values == {"model_args": {"fc": 64}}
    assert variants["no_normalization"].values == {"normalize": False}
    ablation = ablation_plan("cnn_seed004", seeds=2)
    plan = ablation.plan
    configs = {run.spec_name: run.config for run in ablation.planned}
    assert all(
        c.epochs == 20 and c.batch_size == 128 and c.optimizer == "adam" and c.lr == 1e-3 for c in configs.values()
    )
    assert configs["full"].mean == 0.5 and configs["no_normalization"].normalize is False
    assert configs["smaller_fc"].model_args["fc"] == 64 and configs["smaller_fc"].model_args["fc_dropout"] == 0.5
    assert plan.seeds == 2 and plan.published == PUBLISHED["cnn_seed004"]


@pytest.mark.parametrize("base", ["cnn", "mlp", "fastcnn", "mlp_seed002", "lenet5"])
def test_other_bases_get_variants_that_build(base):
    variants = ablation_plan(base).variants
    assert variants[0].name == "full" and variants[-1].name == "no_normalization"
    for v in variants:
        create_model(base, **v.values.get("model_args", {}))


def _differences(full: dict, variant: dict) -> set[str]:
    """The keys whose values differ between two configs' to_dict(), model arguments one by one."""
    keys = {k for k in full.keys() | variant.keys() if k != "model_args" and full.get(k) != variant.get(k)}
    args, changed = full["model_args"], variant["model_args"]
    return keys | {f"model_args.{k}" for k in args.keys() | changed.keys() if args.get(k) != changed.get(k)}


def _named(variant: str, full: TrainConfig) -> set[str]:
    """The one setting a variant's name says it changes (no_dropout: every dropout rate the full net uses)."""
    if variant == "no_normalization":
        return {"normalize"}
    if variant == "no_dropout":
        return {f"model_args.{k}" for k, v in full.model_args.items() if "dropout" in k and v}
    renamed = {"single_conv": "second_conv", "fewer_convs": "channels", "no_batch_norm": "batch_norm"}
    if variant in renamed:
        return {f"model_args.{renamed[variant]}"}
    assert variant.startswith("smaller_"), variant
    return {f"model_args.{variant.removeprefix('smaller_')}"}


@pytest.mark.parametrize("model", list_models())
def test_every_variant_differs_from_the_full_run_in_the_one_setting_it_names(model):
    ablation = ablation_plan(model)
    full, *variants = ablation.planned
    assert full.spec_name == "full"
    assert full.config.to_dict() == make_config(model).to_dict()  # the config `fmnist train --model` trains
    assert [run.spec_name for run in variants] == [v.name for v in ablation.variants[1:]]
    before, args = full.config.to_dict(), full.config.to_dict()["model_args"]
    for run in variants:
        after = run.config.to_dict()
        assert _differences(before, after) == _named(run.spec_name, full.config), run.spec_name
        relabelled = {k for k, source in run.config.sources.items() if full.config.sources.get(k) != source}
        assert relabelled == _named(run.spec_name, full.config), run.spec_name  # config.toml says who set it
        if run.spec_name.startswith("smaller_"):
            arg = run.spec_name.removeprefix("smaller_")
            old, new = args[arg], after["model_args"][arg]
            assert new == ([v // 2 for v in old] if isinstance(old, list) else old // 2), run.spec_name


def test_smaller_widths_halves_the_net_the_full_run_trains():
    runs = {run.spec_name: run.config for run in ablation_plan("fastcnn").planned}
    assert list(runs["full"].model_args["widths"]) == [16, 32, 64]
    assert list(runs["smaller_widths"].model_args["widths"]) == [8, 16, 32]
    assert runs["smaller_widths"].model_args["whiten"] is True and runs["smaller_widths"].tta == "flip"
    given = ablation_plan("fastcnn", overrides={"model_args": {"widths": [16, 48, 96]}, "epochs": 1})
    runs = {run.spec_name: run.config for run in given.planned}
    assert list(runs["smaller_widths"].model_args["widths"]) == [8, 24, 48]
    assert runs["smaller_widths"].epochs == runs["no_normalization"].epochs == 1


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
    ablation = run_ablation(ablation_plan("cnn_seed004", seeds=2, overrides={"epochs": 1, "max_steps": 2, "val_size": 100}),
                            Session(out, data=tiny_dataset))  # fmt: skip
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
