"""`fmnist compare --ensemble` and [[ensembles]]: the ensemble row, its folder and the report's Ensemble section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fmnist.errors import UsageError
from fmnist.experiments.plan import plan_from_file
from fmnist.inference.ensemble_model import read_predictions

SMOKE = ("--epochs", "1", "--max-steps", "3", "--val-size", "500")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two tiny real runs of one MLP (seeds 0 and 1, one split seed) on the real data, their ensemble (greedy,
    the default), the report."""
    import os

    data = os.environ.get("FMNIST_DATA")
    if not data or not Path(data).is_dir():
        pytest.skip("FMNIST_DATA is not set to the Fashion-MNIST folder")
    out = tmp_path_factory.mktemp("cmp") / "c"
    env = {**os.environ, "COLUMNS": "200"}
    result = run_cli("compare", "--models", "mlp", "--seeds", "2", "--ensemble", *SMOKE, "--split-seed", "7",
                     "--out", str(out), "--no-report", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = run_cli("report", str(out), "--embedding", "none", "--no-gradcam", env=env)
    assert report.returncode == 0, report.stderr
    return out, result.stdout


def test_compare_ensemble_writes_the_ensemble_row_and_folder(compared):
    out, stdout = compared
    summary = json.loads((out / "compare.json").read_text())
    (row,) = summary["ensembles"]
    assert row["name"] == "mlp" and row["kind"] == "seeds" and row["dir"] == "ensembles/mlp"
    assert row["select"] == "greedy"  # the default of compare --ensemble
    assert [m["run_dir"] for m in row["members"]] == ["mlp-seed0", "mlp-seed1"]
    runs = {r["run_dir"]: r["test_accuracy"] for r in summary["runs"]}
    # each member scores in the ensemble exactly what its own run scored
    assert [m["test_accuracy"] for m in row["members"]] == pytest.approx([runs["mlp-seed0"], runs["mlp-seed1"]])
    best = max(runs, key=runs.get)
    assert row["best_member"] == best
    # runs[] went through float32 (1e-4 is one test image): compare to a millionth, not relative to a small gain
    assert row["gain_over_best_member"] == pytest.approx(row["test_accuracy"] - runs[best], abs=1e-6)
    saved = read_predictions(out / row["dir"])
    labels = saved["labels"]
    assert row["test_accuracy"] == pytest.approx((saved["probabilities"].argmax(1) == labels).mean())
    assert "mlp (ensemble of 2)" in stdout and "vs best member" in stdout
    chosen = [m for m in row["members"] if m["weight"] > 0]
    assert f"greedy, {len(chosen)} of 2: " in stdout and all(m["chosen"] for m in chosen)
    assert sum(m["weight"] for m in row["members"]) == pytest.approx(1)
    sizes = {r["run_dir"]: r["size_mb"] for r in summary["runs"]}
    assert row["size_mb"] == pytest.approx(sum(sizes[m["run_dir"]] for m in chosen))


def test_the_greedy_ensemble_is_not_below_its_best_member_on_validation(compared):
    out, _ = compared
    row = json.loads((out / "compare.json").read_text())["ensembles"][0]
    results = json.loads((out / row["dir"] / "results.json").read_text())
    assert results["select"] == "greedy" and results["selection"]["counts"][0] + results["selection"]["counts"][1] >= 1
    member_val = [m["validation_accuracy"] for m in row["members"]]
    assert row["validation_accuracy"] == results["validation"]["accuracy"] >= max(member_val)
    manifest = json.loads((out / row["dir"] / "ensemble.json").read_text())
    assert len(manifest["members"]) == sum(m["chosen"] for m in row["members"])


def test_seeds_sharing_a_split_seed_are_also_scored_on_validation(compared):
    out, _ = compared
    validation = json.loads((out / "ensembles" / "mlp" / "results.json").read_text())["validation"]
    recorded = [
        json.loads((out / run / "results.json").read_text())["best_val_accuracy"] for run in ("mlp-seed0", "mlp-seed1")
    ]
    assert validation["shared"] and (validation["val_size"], validation["split_seed"]) == (500, 7)
    assert validation["members"] == pytest.approx(recorded)  # what each run measured on that hold-out
    assert "On the members' shared validation split (500 training images held out by split seed 7)" in (
        out / "report.md").read_text()  # fmt: skip


def test_the_reports_ensemble_section_matches_the_predictions(compared):
    out, _ = compared
    row = json.loads((out / "compare.json").read_text())["ensembles"][0]
    saved = read_predictions(out / row["dir"])
    labels, ens = saved["labels"], saved["probabilities"].argmax(1)
    best = saved["member_predicted"][["mlp-seed0", "mlp-seed1"].index(row["best_member"])]
    fixed, introduced = int(((ens == labels) & (best != labels)).sum()), int(((ens != labels) & (best == labels)).sum())
    assert (fixed, introduced) == (row["fixed"], row["introduced"])
    text = (out / "report.md").read_text()
    section = text[text.index("## 13. Ensemble") :]
    assert f"fixes **{fixed:,}**; it introduces **{introduced:,}** new ones" in section
    assert "| mlp (ensemble of 2) | `ensemble` |" in text  # the row in the comparison table
    assert "vs best member; greedy, " in text and "Selection: greedy forward selection" in section
    for c, name in enumerate(["T-shirt/top", "Trouser"]):  # the per-class breakdown, recomputed here
        f, i = (
            int((labels[(ens == labels) & (best != labels)] == c).sum()),
            int((labels[(ens != labels) & (best == labels)] == c).sum()),
        )
        assert f"| {name} |" in section and f"| {f} | {i} | {f - i:+d} |" in section
    assert (out / "figures" / "ensemble-mlp.png").stat().st_size > 5000
    assert "Ensemble" in (out / "report.html").read_text()


def test_the_notebook_comparison_shows_the_ensemble_row(compared):
    from fmnist.notebook import Comparison

    out, _ = compared
    comparison = Comparison(out)
    (row,) = comparison.ensembles
    html = comparison._repr_html_()
    assert "mlp (ensemble of 2)" in html and f"{100 * row['test_accuracy']:.2f}%" in html


def test_an_ensemble_directory_gets_its_own_report(compared, tmp_path):
    out, _ = compared
    env = {"COLUMNS": "200", **__import__("os").environ}
    result = run_cli("report", str(out / "ensembles" / "mlp"), env=env)
    assert result.returncode == 0, result.stderr
    text = (out / "ensembles" / "mlp" / "report.md").read_text()
    assert "# Ensemble of 2 runs" in text and "mlp-seed0" in text and "Pairwise disagreement" in text
    assert (out / "ensembles" / "mlp" / "figures" / "ensemble.png").is_file()


def test_seeds_1_with_ensemble_is_a_usage_error(tmp_path):
    result = run_cli("compare", "--models", "mlp", "--seeds", "1", "--ensemble", "--out", str(tmp_path / "x"))
    assert result.returncode != 0
    assert "--ensemble" in result.stderr and "--seeds 2" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was created


def test_greedy_ensembles_of_seeds_need_one_split_seed(tmp_path):
    """Each seed draws its own hold-out unless --split-seed is given: greedy would have nothing to choose on."""
    result = run_cli("compare", "--models", "mlp", "--seeds", "2", "--ensemble", "--ensemble-select", "greedy",
                     "--split-seed", "-1", "--out", str(tmp_path / "x"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert "chosen greedily" in line and "--split-seed" in line and "--ensemble-select all" in line
    assert not (tmp_path / "x").exists()  # refused before anything was created
    from fmnist.experiments.plan import plan_from_models

    plan = plan_from_models(["mlp"])
    plan.seeds, plan.ensemble, plan.select = 2, True, "all"
    planned = plan.resolve({"max_steps": 1})  # a plain average needs no shared hold-out
    assert [e.select for e in plan.planned_ensembles(planned)] == ["all"]


def _config(tmp_path: Path, ensembles: str, top: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(top + '[[runs]]\nname = "a"\nmodel = "mlp"\n[[runs]]\nname = "b"\nmodel = "lenet5"\n' + ensembles)
    return path


def test_unknown_ensemble_members_fail_at_plan_time(tmp_path):
    path = _config(tmp_path, '[[ensembles]]\nname = "ab"\nmembers = ["a", "nope"]\n')
    with pytest.raises(UsageError, match="unknown run 'nope'"):
        plan_from_file(path)
    result = run_cli("compare", "--config", str(path), "--out", str(tmp_path / "x"))
    assert result.returncode != 0 and "unknown run 'nope'" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    for bad, message in (('[[ensembles]]\nname = "a"\nmembers = ["a", "b"]\n', "already a run"),
                         ('[[ensembles]]\nname = "x"\nmembers = ["a"]\n', "two or more"),
                         ('[[ensembles]]\nname = "x"\nmembers = "a"\n', "needs a name and members"),
                         ('[[ensembles]]\nname = "x"\nmembers = ["a", "b"]\nweights = [1, 2]\n', "unknown key"),
                         ('[[ensembles]]\nname = "x"\nmembers = ["a", "b"]\nselect = "best"\n', "select must be one of")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            plan_from_file(_config(tmp_path, bad))
    with pytest.raises(UsageError, match="true or false"):
        plan_from_file(_config(tmp_path, "", top='ensemble = "yes"\n'))
    with pytest.raises(UsageError, match="needs --seeds 2 or more"):
        plan_from_file(_config(tmp_path, "", top="ensemble = true\n"))


def test_explicit_ensembles_across_runs(tiny_dataset, tmp_path):
    """[[ensembles]] of two different models, per seed, on the synthetic data (no real data needed)."""
    from fmnist.experiments.compare import run_compare
    from fmnist.experiments.session import Session

    plan = plan_from_file(_config(tmp_path, '[[ensembles]]\nname = "ab"\nmembers = ["a", "b"]\n'))
    plan.seeds = 2
    out = tmp_path / "cmp"
    summary = run_compare(plan, plan.resolve({"epochs": 1, "max_steps": 2, "val_size": 100}),
                          Session(out, data=tiny_dataset)).to_json()  # fmt: skip
    names = [e["name"] for e in summary["ensembles"]]
    assert names == ["ab-seed0", "ab-seed1"]
    assert [e["select"] for e in summary["ensembles"]] == ["greedy", "greedy"]  # a-seedK and b-seedK share a hold-out
    for e, seed in zip(summary["ensembles"], (0, 1)):
        assert [m["run_dir"] for m in e["members"]] == [f"a-seed{seed}", f"b-seed{seed}"]
        assert (out / e["dir"] / "ensemble.json").is_file() and np.isfinite(e["test_accuracy"])


def test_an_ensembles_table_can_ask_for_a_plain_average(tmp_path):
    plan = plan_from_file(_config(tmp_path, '[[ensembles]]\nname = "ab"\nmembers = ["a", "b"]\nselect = "all"\n'
                                            '[[ensembles]]\nname = "ba"\nmembers = ["b", "a"]\n'))  # fmt: skip
    planned = plan.resolve({"max_steps": 1})
    assert [(e.name, e.select) for e in plan.planned_ensembles(planned)] == [("ab", "all"), ("ba", "greedy")]
    plan.select = "all"  # compare --ensemble-select all: every ensemble, over its table's own
    assert [e.select for e in plan.planned_ensembles(planned)] == ["all", "all"]
    plan.select = "best"
    with pytest.raises(UsageError, match="unknown ensemble selection"):
        plan.resolve()
    # a table asking for greedy over runs that hold out different images is refused before training
    no_holdout = plan_from_file(_config(tmp_path, '[[ensembles]]\nname = "ab"\nmembers = ["a", "b"]\nselect = "greedy"\n',
                                         top="[defaults]\nval_size = 0\n"))  # fmt: skip
    with pytest.raises(UsageError, match="hold out no validation images"):
        no_holdout.resolve()
