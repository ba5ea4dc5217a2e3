"""configs/seed000..004.toml: every seed study as one runnable `fmnist compare --config` file; and
configs/seed004-benchmark.toml, seed 004's benchmark table with its ensemble row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fmnist.experiments.ablate import ablation_plan
from fmnist.experiments.compare import run_compare
from fmnist.experiments.plan import plan_from_file
from fmnist.experiments.session import Session
from fmnist.models import count_parameters, create_model
from fmnist.report.text import published_accuracy, published_pct

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("seed00?.toml"))
BENCHMARK = CONFIG_DIR / "seed004-benchmark.toml"
TINY = {"epochs": 1, "max_steps": 1, "val_size": 100, "batch_size": 32}


def test_there_is_one_config_per_seed_study():
    assert [p.stem for p in CONFIGS] == [f"seed00{i}" for i in range(5)]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_every_model_builds(path: Path):
    plan = plan_from_file(path)
    assert plan.title and plan.notes and plan.runs
    assert path.read_text().lstrip().startswith("#"), "explain the config's readings in its comments"
    for spec in plan.runs:
        config = spec.config({})
        model = create_model(config.model, **config.model_args).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_configs_hold_the_seeds_set_ups():
    runs = {p.stem: {s.name: s.config({}) for s in plan_from_file(p).runs} for p in CONFIGS}
    s0 = runs["seed000"]
    assert count_parameters(create_model("mlp", **s0["mlp"].model_args)) == 235_146  # "~235K"
    cnn_params = count_parameters(create_model("cnn", **s0["cnn"].model_args))
    assert 1.8e6 < cnn_params < 2.0e6  # "~1.9M"
    assert s0["cnn"].scheduler == "plateau" and s0["cnn"].epochs == 20 and s0["cnn"].optimizer == "adam"
    s1 = runs["seed001"]
    assert len(s1) == 6 and all(c.epochs == 15 and not c.normalize for c in s1.values())
    fcs = [tuple(c.model_args.get("fc", ())) for c in s1.values() if c.model == "cnn"]
    assert fcs.count((64, 32, 16)) == 2 and fcs.count((512, 256, 128)) == 2 and (512, 156, 128, 64, 32, 16) in fcs
    s2 = runs["seed002"]
    assert s2["mlp"].model == "mlp_seed002" and s2["mlp"].epochs == 5 and s2["cnn"].model == "cnn_seed002"
    assert all(c.mean == 0.5 and c.std == 0.5 and c.batch_size == 128 for c in s2.values())
    assert all(c.val_size == 12000 for c in runs["seed003"].values())


def test_seed004_config_matches_the_ablate_command():
    from_file = {s.name: s.config({}) for s in plan_from_file(CONFIGS[4]).runs}
    from_ablate = {run.spec_name: run.config for run in ablation_plan("cnn_seed004").planned}
    assert list(from_file) == list(from_ablate)
    for name, config in from_file.items():
        assert config.to_dict() == from_ablate[name].to_dict(), name


def test_published_figures_appear_in_the_report(tiny_dataset, tmp_path: Path):
    """Seed 002 end to end: train briefly, write the full report, find 87.14% and 91.82% in both files."""
    from fmnist.report import write_report

    path = CONFIGS[2]
    out = tmp_path / "seed002"
    plan = plan_from_file(path)
    run_compare(plan, plan.resolve(TINY), Session(out, data=tiny_dataset))
    write_report(out, embedding="none")
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        for figure in ("87.14%", "91.82%"):
            assert figure in text, (name, figure)
        assert "Published figures" in text


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_configs_published_figures_reach_the_comparison(path: Path, tiny_dataset, tmp_path: Path):
    from fmnist.report.context import ReportContext, ReportOptions
    from fmnist.report.document import Document, render_markdown
    from fmnist.report.sections.comparison import comparison_section

    plan = plan_from_file(path)
    plan.runs = plan.runs[:2]  # two runs show the published column; training all of seed 001 adds nothing
    out = tmp_path / path.stem
    run_compare(plan, plan.resolve(TINY), Session(out, data=tiny_dataset))
    ctx = ReportContext(out, ReportOptions())
    text = render_markdown(Document("t", [], [comparison_section(ctx)]), out)
    for key, value in plan.published.items():
        expected = published_pct(value) if published_accuracy(value) is not None else str(value)
        if key in ctx.groups or key not in {s.name for s in plan_from_file(path).runs}:
            assert expected in text, (key, expected)
    assert "compare rankings and gaps" in text


def test_the_benchmark_config_runs_every_row_of_seed004s_table():
    from fmnist.models.registry import get_entry

    plan = plan_from_file(BENCHMARK)
    assert BENCHMARK.read_text().lstrip().startswith("#") and "validation split" in plan.notes
    models = {s.name: s.config({}).model for s in plan.runs}
    assert list(models.values()) == ["logreg", "mlp", "lenet5", "cnn_seed004", "resnet18", "efficientnet_b0"]
    for name in models:
        get_entry(models[name])  # every run's model exists
    mlp = plan.runs[1].config({})
    assert 190_000 <= count_parameters(create_model("mlp", **mlp.model_args)) <= 210_000  # "~200K"
    (ensemble,) = plan.ensembles
    assert ensemble.members == ("mlp_2layer", "lenet5", "custom_cnn", "resnet18", "efficientnet_b0")
    published = {k: published_pct(v) for k, v in plan.published.items() if published_accuracy(v) is not None}
    assert list(published.values()) == ["84.2%", "87.5%", "89.8%", "93.04%", "94.5%", "95.2%", "96.1%"]
    assert set(published) == set(models) | {ensemble.name}


def test_the_benchmark_configs_ensemble_row_shows_its_published_figure(tiny_dataset, tmp_path: Path):
    """A smoke run of the cheap rows and their ensemble: the ensemble row and 96.1% reach the comparison."""
    from fmnist.experiments.plan import EnsembleSpec
    from fmnist.report.context import ReportContext, ReportOptions
    from fmnist.report.document import Document, render_markdown
    from fmnist.report.sections.comparison import comparison_section

    plan = plan_from_file(BENCHMARK)
    cheap = ["mlp_2layer", "lenet5"]  # resnet18 and efficientnet_b0 take minutes even for one step on a CPU
    plan.runs = [s for s in plan.runs if s.name in cheap]
    plan.ensembles = [EnsembleSpec(e.name, tuple(m for m in e.members if m in cheap)) for e in plan.ensembles]
    out = tmp_path / "bench"
    summary = run_compare(plan, plan.resolve(TINY), Session(out, data=tiny_dataset))
    (row,) = summary.ensembles
    assert row.name == "ensemble5" and [m.name for m in row.members] == cheap
    text = render_markdown(Document("t", [], [comparison_section(ReportContext(out, ReportOptions()))]), out)
    line = next(line for line in text.splitlines() if line.startswith("| ensemble5 (ensemble of 2)"))
    assert "96.1%" in line and "vs best member" in line
    assert "| ensemble5 | 96.1% |" in text  # the published-figures table, ours beside it
