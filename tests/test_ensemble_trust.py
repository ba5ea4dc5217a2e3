"""An ensemble's own trust record (fmnist.inference.ensemble_trust) on real members: fitted when it is built,
used by predict, export, serve, the Python API and the report, fitted later by `fmnist calibrate`, and its
absence in ensembles built before it. The members are the 0.4-dev fixture's two real runs (a fastcnn and an
MLP sharing one hold-out of 5,000 images), so nothing is trained here. Oracles: the members' own
probabilities (fmnist.inference.evaluate's path, not the trust record's) and counts computed here."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

import fmnist
from conftest import real_data_or_skip, run_cli
from fmnist.data import ood_sets
from fmnist.data.sources import resolve_dataset
from fmnist.data.splits import saved_holdout, stratified_split
from fmnist.inference.ensemble_build import build_ensemble
from fmnist.inference.ensemble_model import average_probabilities, load_members, member_probabilities
from fmnist.inference.ensemble_trust import ENSEMBLE_NO_TRUST_NOTE, calibrate_ensemble
from fmnist.inference.export import export_run
from fmnist.inference.predict import Predictor
from fmnist.inference.rundir import CONFIG_FILE, TRUST_FILE
from fmnist.inference.trust import Trust, TrustFile, calibrate_run
from test_old_runs import unpack
from test_serve import start_server, stop_server

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).parent / "fixtures" / "runs-0.4-dev.tar.gz"
TARGET = 0.9


@pytest.fixture(scope="module")
def data():
    return resolve_dataset(real_data_or_skip())


@pytest.fixture(scope="module")
def old(tmp_path_factory, data) -> Path:
    return unpack(tmp_path_factory, FIXTURE, "ensemble-trust")


@pytest.fixture(scope="module")
def built(old, data) -> Path:
    """run-a and run-b averaged (--select all: greedy would keep run-a alone), fp32 throughout."""
    out = old / "both"
    build_ensemble([old / "run-a", old / "run-b"], out, dataset=data, select="all", precision="fp32")
    return out


def validation_split(run_dir: Path, data) -> tuple[np.ndarray, np.ndarray]:
    config = tomllib.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    return stratified_split(data.train_labels, *saved_holdout(config))


def average_log_probabilities(old: Path, images: np.ndarray) -> np.ndarray:
    """log of the equal-weight mean of the members' softmax, as `fmnist evaluate` runs each member."""
    members = load_members([old / "run-a", old / "run-b"])
    return np.log(average_probabilities(member_probabilities(members, images, "fp32")).double().numpy())


def nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = log_p / temperature
    z = z - z.max(1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), labels].mean())


def test_the_temperature_lowers_the_validation_nll_computed_directly(built, old, data):
    record = TrustFile.read(built)
    assert record.energy_source == "features" and record.ood_method == "energy+mahalanobis" and not record.note
    _, val = validation_split(old / "run-a", data)
    assert record.validation_images == len(val) == 5000
    log_p, labels = average_log_probabilities(old, data.train_images[val]), data.train_labels[val].astype(np.int64)
    before, after = nll(log_p, labels, 1.0), nll(log_p, labels, record.temperature)
    assert record.temperature != pytest.approx(1.0, abs=0.05)
    assert after < before - 0.01
    assert record.nll_before == pytest.approx(before, abs=1e-4) and record.nll_after == pytest.approx(after, abs=1e-4)
    # T is the minimum: a step either way does no better
    assert after <= min(nll(log_p, labels, record.temperature * f) for f in (0.95, 1.05))


def test_the_threshold_keeps_95_percent_of_validation_and_flags_noise(built, old, data):
    _, val = validation_split(old / "run-a", data)
    predictor = Predictor(built, precision="fp32")
    assessed = predictor.assess(data.train_images[val])
    kept = 1 - float(assessed.unknown.mean())
    assert 0.95 <= kept <= 0.95 + 2 / len(val)  # the smallest score that keeps 95%: ties aside, exactly that
    noise = predictor.assess(ood_sets.build("gaussian_noise", 200))
    assert noise.unknown.mean() > 0.9


def test_prediction_sets_cover_the_test_set_as_asked(built, data):
    """Split-conformal on 5,000 validation images: coverage on 10,000 test images is 0.9 up to a spread of
    about half a point (calibration and test sampling together); 1.5 points is about three of those."""
    assessed = Predictor(built, precision="fp32").assess(data.test_images, coverage=TARGET)
    covered = float(assessed.sets[np.arange(len(data.test_labels)), data.test_labels].mean())
    assert abs(covered - TARGET) <= 0.015
    assert assessed.sets.sum(1).mean() < 3  # informative sets, not every class


def test_the_onnx_graph_answers_like_pytorch_and_the_api_uses_the_record(built, data):
    report = export_run(built, "onnx")
    assert report["temperature"] == Trust.load(built).temperature and report["max_abs_feature_diff"] < 1e-3
    images = np.concatenate([data.test_images[:300], ood_sets.build("letters", 50)])
    torch_side = Predictor(built, precision="fp32").assess(images, TARGET)
    onnx = Predictor(built, backend="onnx")
    assert onnx.onnx_source == "model.onnx"  # the file just written, as it matches the record
    onnx_side = onnx.assess(images, TARGET)
    np.testing.assert_allclose(onnx_side.probabilities, torch_side.probabilities, atol=1e-4)
    np.testing.assert_allclose(onnx_side.ood_scores, torch_side.ood_scores, atol=1e-3)
    assert (onnx_side.unknown == torch_side.unknown).mean() >= 0.99
    run = fmnist.load_run(built)
    np.testing.assert_allclose(run.predict(images[:20]), torch_side.probabilities[:20], atol=2e-2)  # auto precision
    assert run.assess(images[:20], TARGET).sets is not None


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_server_answers_with_the_ensembles_record(built, backend):
    trust = Trust.load(built)
    noise = np.random.default_rng(0).integers(0, 256, (28, 28)).tolist()
    proc, url = start_server(built, "--backend", backend, "--precision", "fp32")
    try:
        import httpx

        calibration = httpx.get(f"{url}/model").json()["calibration"]
        one = httpx.post(f"{url}/predict?coverage=0.9", json={"pixels": noise}).json()
    finally:
        stop_server(proc)
    assert calibration["temperature"] == trust.temperature and calibration["note"] is None
    assert calibration["ood_threshold"] == trust.record.ood_threshold < one["ood_score"]
    assert one["unknown"] is True and isinstance(one["set"], list)


def test_the_report_shows_the_test_ece_before_and_after(built, data):
    proc = run_cli("report", str(built), "--data-dir", str(real_data_or_skip()))
    assert proc.returncode == 0, proc.stderr
    text = (built / "report.md").read_text(encoding="utf-8")
    assert "Calibration, unknown answer and prediction sets" in text
    assert f"| temperature T | 1 | {Trust.load(built).temperature:.3f} |" in text


def test_an_old_ensemble_loads_at_temperature_1_with_the_note_and_calibrate_fits_it(old, data, tmp_path):
    ensemble = tmp_path / "ensemble"
    shutil.copytree(old / "ensemble", ensemble)
    (ensemble / "ensemble.json").write_text(
        (old / "ensemble" / "ensemble.json").read_text().replace('"../run-a"', json.dumps(str(old / "run-a")))
    )
    assert not (ensemble / TRUST_FILE).exists()
    predictor = Predictor(ensemble)
    assessed = predictor.assess(data.test_images[:8], TARGET)
    assert predictor.trust.temperature == 1.0 and assessed.note == ENSEMBLE_NO_TRUST_NOTE
    assert assessed.unknown is None and assessed.sets is None
    np.testing.assert_allclose(assessed.probabilities, predictor.probabilities(data.test_images[:8]), atol=1e-6)
    np.save(tmp_path / "item.npy", data.test_images[0])
    proc = run_cli("predict", str(ensemble), str(tmp_path / "item.npy"), "--coverage", "0.9")
    assert proc.returncode == 0, proc.stderr
    assert f"note: {ENSEMBLE_NO_TRUST_NOTE}" in " ".join(proc.stdout.split())  # the table's width may wrap it
    proc = run_cli("calibrate", str(ensemble), "--data-dir", str(real_data_or_skip()))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (ensemble / TRUST_FILE).is_file()
    # This ensemble is run-a alone at weight 1: softmax(log softmax(z) / T) is softmax(z / T), so its temperature
    # and conformal scores are run-a's own, fitted on the same 5,000 images.
    record, alone = TrustFile.read(ensemble), calibrate_run(old / "run-a", data)
    assert record.temperature == pytest.approx(alone.temperature, rel=1e-4)
    np.testing.assert_allclose(record.conformal_scores, alone.conformal_scores, atol=1e-4)
    assert Predictor(ensemble).trust.note == ""


def test_members_with_different_holdouts_calibrate_on_the_images_all_of_them_held_out(old, data, tmp_path):
    """run-b's copy says it held out the images split seed 1 draws: only the intersection is left to fit on."""
    other = tmp_path / "run-b-seed1"
    shutil.copytree(old / "run-b", other)
    config = (other / CONFIG_FILE).read_text(encoding="utf-8")
    (other / CONFIG_FILE).write_text(config.replace("split_seed = 0", "split_seed = 1"), encoding="utf-8")
    heard: list[str] = []
    build_ensemble([old / "run-a", other], tmp_path / "ens", dataset=data, precision="fp32", notify=heard.append)
    common = np.intersect1d(validation_split(old / "run-a", data)[1], validation_split(other, data)[1])
    record = TrustFile.read(tmp_path / "ens")
    assert 100 <= len(common) < 1000 and record.validation_images == len(common)
    assert f"calibrated on the {len(common):,} training images every member held out" in heard[-1]
    calibrate_ensemble(tmp_path / "ens", data)  # the same images again: the same record
    again = TrustFile.read(tmp_path / "ens")
    assert again.temperature == pytest.approx(record.temperature, rel=1e-6)
    assert again.ood_threshold == pytest.approx(record.ood_threshold, rel=1e-6)


def test_the_ensemble_ood_benchmark_ranks_its_candidates(old):
    """benchmarks/ensemble_ood.py in its quick mode: every candidate measured, nothing written."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ensemble_ood.py"
    proc = subprocess.run([sys.executable, str(script), str(old / "run-a"), str(old / "run-b"), "--quick",
                           "--data-dir", str(real_data_or_skip())], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    aurocs = dict(re.findall(r"^(.+?)\s+screening AUROC (\d\.\d+)", proc.stdout, re.M))
    assert len(aurocs) == 5 and all(0 <= float(a) <= 1 for a in aurocs.values())  # no trust.json: no members' own
    assert "energy+mahalanobis (features side by side)" in aurocs and "wrote" not in proc.stdout
