"""The trust record (fmnist.inference.trust) on real runs: fitted when training ends, read back by
predict and the API, and its absence in old runs. Oracles: fmnist.analysis's fits on the same logits."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import fmnist
from conftest import real_data_or_skip, run_cli
from fmnist.analysis import ood
from fmnist.analysis.temperature import fit_temperature, scale
from fmnist.data import ood_sets
from fmnist.data.sources import resolve_dataset
from fmnist.data.splits import stratified_split
from fmnist.inference.checkpoint import load_checkpoint, normalization
from fmnist.inference.predict import Predictor
from fmnist.inference.robustness import measure
from fmnist.inference.rundir import TRUST_FILE, TRUST_TENSORS_FILE, WEIGHTS_FILE, prepare_run_dir
from fmnist.inference.trust import NO_TRUST_NOTE, NO_VALIDATION_NOTE, Trust, TrustFile, calibrate_run, embed
from fmnist.training.run_writer import RunDirWriter
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import fit

pytestmark = pytest.mark.slow
OLD_RUNS = Path(__file__).parent / "fixtures" / "runs-0.3.1.tar.gz"


def train(folder: Path, dataset, with_trust: bool = True, **values):
    options = {"max_steps": 200, "eval_batch_size": 1000, "precision": "fp32", **values}
    config = resolve_config("fastcnn", options=options)
    run_dir = prepare_run_dir(folder)
    result = fit(config, dataset, [RunDirWriter(run_dir, dataset if with_trust else None)])
    return run_dir, config, result


@pytest.fixture(scope="module")
def data():
    return resolve_dataset(real_data_or_skip())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """The default recipe for 200 steps (about 88% on test) with its validation split of 5,000."""
    run_dir, config, _ = train(tmp_path_factory.mktemp("trust") / "run", data)
    return run_dir, config


@pytest.fixture(scope="module")
def validation(trained, data):
    """(logits, features, labels) of the run's validation images, computed independently of the record."""
    run_dir, config = trained
    model, meta = load_checkpoint(run_dir)
    _, val = stratified_split(data.train_labels, config.val_size, config.validation_seed)
    mean, std = normalization(meta)
    logits, features = embed(model, data.train_images[val], mean=mean, std=std, tta=meta["tta"])
    return logits, features, data.train_labels[val].astype(np.int64)


def test_record_is_written_and_round_trips(trained, tmp_path):
    run_dir, _ = trained
    assert (run_dir / TRUST_FILE).is_file() and (run_dir / TRUST_TENSORS_FILE).is_file()
    record = TrustFile.read(run_dir)
    assert record.validation_images == 5000 and record.train_sample_images == 10_000
    assert record.ood_method == "energy+mahalanobis" and record.conformal_method == "lac"
    assert not record.note
    record.write(tmp_path)
    again = TrustFile.read(tmp_path)
    assert again.to_json() == record.to_json()
    for key in ("mahalanobis_means", "mahalanobis_whiten", "conformal_scores"):
        assert np.array_equal(getattr(again, key), getattr(record, key))
    assert np.all(np.diff(record.conformal_scores) >= 0)  # sorted, as the quantile reads them


def test_temperature_equals_the_analysis_fit_on_the_same_logits(trained, validation):
    logits, _, labels = validation
    oracle = fit_temperature(logits, labels)
    record = TrustFile.read(trained[0])
    assert record.temperature == pytest.approx(oracle.temperature, rel=1e-9)
    assert record.ece_before == pytest.approx(oracle.ece_before) and record.ece_after == pytest.approx(oracle.ece_after)
    assert record.ece_after < record.ece_before and record.nll_after <= record.nll_before


def test_threshold_keeps_95_percent_of_validation(trained, validation):
    logits, features, _ = validation
    trust = Trust.load(trained[0])
    kept = (trust.ood_scores(logits, features) <= trust.record.ood_threshold).mean()
    assert ood.KEEP <= kept <= ood.KEEP + 1 / len(logits) + 1e-12


def test_calibrated_probabilities_are_softmax_of_logits_over_t(trained, data):
    run_dir, _ = trained
    images = data.test_images[:300]
    t = TrustFile.read(run_dir).temperature
    run = fmnist.load_run(run_dir)
    raw = Predictor(run_dir).logits(images)  # the precision Run.predict uses ("auto")
    np.testing.assert_allclose(run.predict(images), scale(raw, t), atol=1e-6)
    np.testing.assert_allclose(run.predict(images, calibrated=False), scale(raw, 1.0), atol=1e-6)
    fp32 = Predictor(run_dir, precision="fp32")  # assess: one pass gives logits and features
    np.testing.assert_allclose(fp32.assess(images).probabilities, scale(fp32.logits(images), t), atol=1e-5)


def test_unknown_flags_off_distribution_images_and_few_test_images(trained, data):
    run = fmnist.load_run(trained[0])
    test = run.assess(data.test_images)
    assert test.unknown.mean() < 0.10  # the threshold keeps 95% of validation; test is alike
    for name in ("blank", "uniform_noise"):
        assert run.assess(ood_sets.build(name, 200)).unknown.mean() > 0.9, name


def test_prediction_sets_cover_the_target_on_test(trained, data):
    run = fmnist.load_run(trained[0])
    labels = data.test_labels.astype(np.int64)
    for coverage in (0.8, 0.9):
        sets = run.assess(data.test_images, coverage=coverage).sets
        covered = sets[np.arange(len(labels)), labels].mean()
        # Split conformal: mean coverage in [target, target + 1/(n+1)]; the spread of one calibration
        # set of 5,000 and one test set of 10,000 is about 0.7 points (sqrt(a(1-a)/5000 + a(1-a)/10000)),
        # so 2.5 points is a 3.5-sigma bound.
        assert abs(covered - coverage) <= 0.025, (coverage, covered)


def test_predict_cli_marks_unknown_rejects_and_gives_sets(trained, data, tmp_path):
    run_dir, _ = trained
    test = fmnist.load_run(run_dir).assess(data.test_images[:50])
    known = int(np.flatnonzero(~test.unknown)[0])
    np.save(tmp_path / "garment.npy", data.test_images[known])
    np.save(tmp_path / "blank.npy", np.zeros((28, 28), np.uint8))
    np.save(tmp_path / "noise.npy", ood_sets.build("uniform_noise", 1)[0])
    files = [str(tmp_path / f) for f in ("garment.npy", "blank.npy", "noise.npy")]
    proc = run_cli("predict", str(run_dir), *files, "--no-preprocess", "--json", "--coverage", "0.9")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = {Path(p["file"]).name: p for p in out["predictions"]}
    assert out["calibration"]["temperature"] == pytest.approx(TrustFile.read(run_dir).temperature)
    assert rows["garment.npy"]["unknown"] is False and rows["garment.npy"]["set"]
    for name in ("blank.npy", "noise.npy"):
        assert rows[name]["unknown"] is True and len(rows[name]["top"]) == 3  # warn: still shows its classes
    assert rows["garment.npy"]["top"][0]["probability"] == pytest.approx(
        float(test.probabilities[known].max()), abs=1e-5
    )

    proc = run_cli("predict", str(run_dir), *files, "--no-preprocess", "--json", "--ood", "reject")
    assert proc.returncode == 0, proc.stderr
    rows = {Path(p["file"]).name: p for p in json.loads(proc.stdout)["predictions"]}
    assert rows["blank.npy"]["top"] == [] and rows["noise.npy"]["top"] == [] and rows["garment.npy"]["top"]

    proc = run_cli("predict", str(run_dir), *files, "--no-preprocess", "--ood", "off", "--json")
    assert all(p["unknown"] is None for p in json.loads(proc.stdout)["predictions"])

    proc = run_cli("predict", str(run_dir), *files, "--no-preprocess", "--coverage", "0.9")
    assert proc.returncode == 0 and "unknown" in proc.stdout and "set at 90%" in proc.stdout


def test_trust_fit_leaves_weights_and_test_accuracy_bit_identical(tmp_path, data):
    options = {"max_steps": 20, "val_size": 1000}
    with_trust, _, a = train(tmp_path / "a", data, **options)
    without, _, b = train(tmp_path / "b", data, with_trust=False, **options)
    assert (with_trust / TRUST_FILE).is_file() and not (without / TRUST_FILE).is_file()
    digest = [hashlib.sha256((d / WEIGHTS_FILE).read_bytes()).hexdigest() for d in (with_trust, without)]
    assert digest[0] == digest[1]
    assert a.test_accuracy == b.test_accuracy and np.array_equal(a.test_logits.numpy(), b.test_logits.numpy())


def test_no_validation_split_gives_temperature_one_and_a_note(tmp_path, data):
    run_dir, _, _ = train(tmp_path / "noval", data, max_steps=10, val_size=0)
    record = TrustFile.read(run_dir)
    assert record.temperature == 1.0 and not record.ood_method and record.note == NO_VALIDATION_NOTE
    assessed = fmnist.load_run(run_dir).assess(data.test_images[:10], coverage=0.9)
    assert assessed.unknown is None and assessed.sets is None


def test_old_runs_predict_with_temperature_one_and_a_note(tmp_path, real_data_dir):
    with tarfile.open(OLD_RUNS) as archive:
        archive.extractall(tmp_path, filter="data")
    run_dir = tmp_path / "run-b"
    image = tmp_path / "x.npy"
    np.save(image, resolve_dataset(real_data_dir).test_images[0])
    proc = run_cli("predict", str(run_dir), str(image), "--no-preprocess", "--json", "--coverage", "0.9")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["calibration"]["temperature"] == 1.0 and out["calibration"]["note"] == NO_TRUST_NOTE
    assert not proc.stderr.strip()  # stderr holds errors only; the note is in the JSON, or below the table:
    table = run_cli("predict", str(run_dir), str(image), "--no-preprocess", "--coverage", "0.9")
    assert f"note: {NO_TRUST_NOTE}" in table.stdout and table.returncode == 0
    row = out["predictions"][0]
    assert row["unknown"] is None and row["set"] is None
    raw = Predictor(run_dir).probabilities(np.load(image)[None])[0]
    assert row["top"][0]["probability"] == pytest.approx(float(raw.max()), abs=1e-6)

    # `fmnist calibrate` gives the old run its record
    record = calibrate_run(run_dir, resolve_dataset(real_data_dir))
    assert TrustFile.read(run_dir).temperature == record.temperature and record.ood_method


def test_robustness_uses_the_record(trained, data):
    record = measure(trained[0], data.test_images[:300], data.test_labels[:300])
    assert record.temperature == TrustFile.read(trained[0]).temperature and not record.note
    inverted = next(r for r in record.rows if (r.corruption, r.severity) == ("inversion", 3))
    assert record.clean_ood_rate < 0.15 and inverted.ood_rate > 0.5  # an inverted garment is not Fashion-MNIST
