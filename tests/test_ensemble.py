"""Ensembles: the average decides, the directory round-trips, and the ONNX graph answers like PyTorch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_synthetic_idx
from fmnist.data.dataset import load_idx_folder
from fmnist.errors import CheckpointError, UsageError
from fmnist.inference.checkpoint import META_FILE, CheckpointMeta, load_checkpoint, save_checkpoint
from fmnist.inference.ensemble_build import build_ensemble
from fmnist.inference.ensemble_model import (
    MANIFEST_FILE,
    EnsembleModel,
    Member,
    average_probabilities,
    load_ensemble,
    read_predictions,
)
from fmnist.inference.export import export_run
from fmnist.inference.predict import Predictor
from test_predict import train_run

pytest.importorskip("onnxruntime")

HAND_MADE = torch.tensor([
    [[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]],  # member 0
    [[0.0, 0.9, 0.1], [0.3, 0.3, 0.4]],  # member 1
])  # fmt: skip


class FixedProbabilities(nn.Module):
    """A stand-in member that answers the same probabilities (as logits) whatever the input."""

    def __init__(self, probabilities: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", torch.log(probabilities.clamp_min(1e-12)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_the_ensemble_answers_the_argmax_of_the_weighted_average():
    plain = average_probabilities(HAND_MADE)
    torch.testing.assert_close(plain, torch.tensor([[0.3, 0.65, 0.05], [0.2, 0.25, 0.55]]))
    assert plain.argmax(1).tolist() == [1, 2]
    weighted = average_probabilities(HAND_MADE, [0.9, 0.1])  # member 0 outvotes member 1 on the first image
    torch.testing.assert_close(weighted, torch.tensor([[0.54, 0.45, 0.01], [0.12, 0.21, 0.67]]))
    assert weighted.argmax(1).tolist() == [0, 2]

    meta = {"normalization": {"mean": 0.0, "std": 1.0}, "tta": "none"}
    members = [Member(Path("."), FixedProbabilities(p), meta) for p in HAND_MADE]
    for weights, expected in (([0.5, 0.5], plain), ([0.9, 0.1], weighted)):
        out = EnsembleModel(members, weights, 0.0, 1.0)(torch.zeros(2, 1, 28, 28))
        torch.testing.assert_close(out.exp(), expected)  # log of the mean: softmax gives the mean back
        torch.testing.assert_close(torch.softmax(out, 1), expected)


# -- two real runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two MLPs briefly trained on the synthetic bars; different normalisation, TTA, seed and (as before fmnist 0.4
    shared one by default) validation split."""
    data_dir = write_synthetic_idx(tmp_path_factory.mktemp("data"))
    dataset = load_idx_folder(data_dir)
    base = tmp_path_factory.mktemp("runs")
    common = {"model_args": {"hidden": [16]}, "max_steps": 6, "epochs": 1, "split_seed": -1}
    a = train_run(base / "a", dataset, "mlp", tta="flip-shift", mean=0.5, std=0.5, seed=1, **common)
    b = train_run(base / "b", dataset, "mlp", tta="none", seed=2, **common)
    return [a, b], data_dir, dataset


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory):
    members, _, dataset = runs
    out = tmp_path_factory.mktemp("ens") / "ensemble"
    return out, build_ensemble(members, out, dataset=dataset, select="all", precision="fp32").to_json()


def _member_probabilities(members: list[Path], images: np.ndarray) -> np.ndarray:
    return np.stack([Predictor(m, precision="fp32").probabilities(images) for m in members])


def test_build_ensemble_scores_the_average_of_its_members(runs, built):
    members, _, dataset = runs
    out, results = built
    assert load_checkpoint(members[0])[1]["tta"] == "flip-shift" and load_checkpoint(members[1])[1]["tta"] == "none"
    labels = dataset.test_labels.astype(np.int64)
    probs = _member_probabilities(members, dataset.test_images)
    mean = probs.mean(0)
    member_acc = [(p.argmax(1) == labels).mean() for p in probs]
    assert results["test_accuracy"] == pytest.approx((mean.argmax(1) == labels).mean())
    assert [m["test_accuracy"] for m in results["members"]] == pytest.approx(member_acc)
    assert [m["weight"] for m in results["members"]] == [0.5, 0.5] and all(m["chosen"] for m in results["members"])
    assert results["select"] == results["selection"]["rule"] == "all"
    assert results["validation"]["shared"] is False and results["validation_accuracy"] is None
    best = int(np.argmax(member_acc))
    assert results["best_member"] == best
    assert results["gain_over_best_member"] == pytest.approx(results["test_accuracy"] - member_acc[best])
    disagreement = (probs[0].argmax(1) != probs[1].argmax(1)).mean()
    assert results["pairwise_disagreement"] == [{"a": 0, "b": 1, "fraction": pytest.approx(disagreement)}]
    assert 0 <= results["ece"] <= 1 and sum(map(sum, results["confusion"])) == len(labels)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))

    saved = read_predictions(out)
    np.testing.assert_allclose(saved["probabilities"], mean, atol=1e-5)
    np.testing.assert_array_equal(saved["member_predicted"], probs.argmax(2))
    right, best_right = saved["probabilities"].argmax(1) == labels, saved["member_predicted"][best] == labels
    assert results["fixed"] == int((right & ~best_right).sum()) and results["introduced"] == int(
        (~right & best_right).sum()
    )

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    for entry, member in zip(manifest["members"], members):
        assert not Path(entry["path"]).is_absolute() and (out / entry["path"]).resolve() == member.resolve()
        assert entry["weights_sha256"] == load_checkpoint(member)[1]["weights_sha256"]


def test_an_ensemble_directory_predicts_and_exports_like_pytorch(runs, built):
    members, data_dir, dataset = runs
    out, results = built
    images = dataset.test_images[:64]
    expected = _member_probabilities(members, images).mean(0)

    torch_predictor = Predictor(out, backend="torch", precision="fp32")
    # Member b is re-normalised inside the module (the ensemble takes member a's mean/std).
    np.testing.assert_allclose(torch_predictor.probabilities(images), expected, atol=1e-5)
    assert torch_predictor.cam_model is None  # no single network for Grad-CAM to explain
    info = torch_predictor.describe()
    assert info["name"] == "ensemble" and info["test_accuracy"] == results["test_accuracy"]
    assert [m["tta"] for m in info["members"]] == ["flip-shift", "none"]
    assert str(members[0].parent) not in json.dumps(info)  # /model must not reveal the server's folders

    report = export_run(out, "onnx", data_dir=str(data_dir))
    assert report["max_abs_logit_diff"] < 1e-4 and report["top1_agreement"] >= 0.999 and report["members"] == 2
    onnx_predictor = Predictor(out, backend="onnx")
    assert onnx_predictor.onnx_source == "model.onnx"  # the file just written, not a fresh export
    np.testing.assert_allclose(onnx_predictor.logits(images), torch_predictor.logits(images), atol=1e-4)
    np.testing.assert_allclose(onnx_predictor.probabilities(images[:1]), expected[:1], atol=1e-5)
    report = export_run(out, "torchscript", out=out / "model.pt", data_dir=str(data_dir))
    assert report["max_abs_logit_diff"] < 1e-4 and report["tta"] == "per member: mlp flip-shift, mlp none"


def test_weighted_ensembles_weigh_by_best_validation_accuracy(runs, tmp_path: Path):
    members, _, dataset = runs
    results = build_ensemble(members, tmp_path / "w", dataset=dataset, select="all", weighted=True,
                             precision="fp32").to_json()  # fmt: skip
    val = [json.loads((m / "results.json").read_text())["best_val_accuracy"] for m in members]
    assert [m["weight"] for m in results["members"]] == pytest.approx([v / sum(val) for v in val])
    model, meta = load_ensemble(tmp_path / "w")
    assert model.weights == pytest.approx([v / sum(val) for v in val])


def _copy(run: Path, folder: Path) -> Path:
    return Path(shutil.copytree(run, folder))


def test_bad_ensembles_are_refused_with_one_line(runs, built, tmp_path: Path):
    members, _, dataset = runs
    with pytest.raises(UsageError, match="at least two"):
        build_ensemble(members[:1], tmp_path / "one", dataset=dataset)
    with pytest.raises(UsageError, match="same weights"):
        build_ensemble([members[0], _copy(members[0], tmp_path / "twin")], tmp_path / "dup", dataset=dataset)
    renamed = _copy(members[1], tmp_path / "renamed")
    meta = json.loads((renamed / META_FILE).read_text())
    (renamed / META_FILE).write_text(json.dumps({**meta, "class_names": [f"c{i}" for i in range(10)]}))
    with pytest.raises(UsageError, match="share class names"):
        build_ensemble([members[0], renamed], tmp_path / "names", dataset=dataset)
    no_val = _copy(members[1], tmp_path / "no-val")
    results = json.loads((no_val / "results.json").read_text())
    (no_val / "results.json").write_text(json.dumps({**results, "best_val_accuracy": None}))
    with pytest.raises(UsageError, match="no best validation accuracy"):
        build_ensemble([members[0], no_val], tmp_path / "nv", dataset=dataset, select="all", weighted=True)
    with pytest.raises(UsageError, match="--weighted .* --select all"):
        build_ensemble(members, tmp_path / "wg", dataset=dataset, weighted=True)
    # greedy chooses on a validation split the members share; these two drew theirs from their own seeds
    with pytest.raises(UsageError, match="shared validation split.*held out different.*--select all"):
        build_ensemble(members, tmp_path / "g", dataset=dataset, select="greedy")
    assert not (tmp_path / "g").exists()  # refused before the folder was made
    with pytest.raises(UsageError, match="member's run directory"):
        build_ensemble(members, members[0], dataset=dataset)


def test_a_member_retrained_after_the_ensemble_was_built_is_caught(runs, built, tmp_path: Path):
    members, _, dataset = runs
    a, b = _copy(members[0], tmp_path / "a"), _copy(members[1], tmp_path / "b")
    build_ensemble([a, b], tmp_path / "ens", dataset=dataset, select="all", precision="fp32")
    model, meta = load_checkpoint(b)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_checkpoint(b, model, CheckpointMeta(meta["model"], meta["model_args"], 0.2860, 0.3530, tta="none"))
    with pytest.raises(CheckpointError, match="other weights than when the ensemble was built"):
        load_ensemble(tmp_path / "ens")
    (tmp_path / "ens" / MANIFEST_FILE).write_text("{}")
    with pytest.raises(CheckpointError, match="not an fmnist ensemble manifest"):
        Predictor(tmp_path / "ens")


def test_ensemble_tta_benchmark_scores_each_member_at_each_level(runs):
    members, data_dir, dataset = runs
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ensemble_tta.py"
    proc = subprocess.run([sys.executable, str(script), *map(str, members), "--levels", "none,flip-shift",
                           "--precision", "fp32", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in proc.stdout.splitlines()[2:]}
    assert set(rows) == {"none", "flip-shift"}
    assert rows["none"][:2] != rows["flip-shift"][:2]  # the level asked for is applied, not each member's own
    # The oracle: each member scored by `Predictor` at its own level (a: flip-shift, b: none).
    own = [100 * float((Predictor(m, precision="fp32").probabilities(dataset.test_images).argmax(1)
                        == dataset.test_labels).mean()) for m in members]  # fmt: skip
    assert rows["flip-shift"][0] == pytest.approx(own[0], abs=0.006) and rows["none"][1] == pytest.approx(
        own[1], abs=0.006
    )
    for values in rows.values():  # a, b, mean, best, ensemble, vs best, vs mean
        a, b, mean, best, ensemble, vs_best, vs_mean = values
        assert mean == pytest.approx((a + b) / 2, abs=0.006) and best == max(a, b)
        assert vs_best == pytest.approx(ensemble - best, abs=0.011) and vs_mean == pytest.approx(
            ensemble - mean, abs=0.011
        )
    bad = subprocess.run([sys.executable, str(script), str(members[0]), "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip() == "error: an ensemble needs two or more run directories"
