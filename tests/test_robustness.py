"""`fmnist robustness` and fmnist.inference.robustness: every corruption at every severity,
deterministic, scored as the run's own evaluation scores it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from fmnist.data.corruptions import CORRUPTIONS, SEVERITY_LEVELS, corrupt
from fmnist.data.dataset import load_idx_folder
from fmnist.inference.checkpoint import load_checkpoint
from fmnist.inference.evaluate import predict_checkpoint
from fmnist.inference.robustness import measure, read_robustness
from fmnist.inference.rundir import ROBUSTNESS_FILE
from fmnist.inference.trust import NO_TRUST_NOTE
from test_predict import tiny_run_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """fastcnn on the synthetic bar dataset (no trust record: RunDirWriter is given no dataset)."""
    return tiny_run_dir(tmp_path_factory, tta="flip")


def test_every_corruption_and_severity_deterministically(tiny):
    run_dir, data_dir = tiny
    data = load_idx_folder(data_dir)
    images, labels = data.test_images[:120], data.test_labels[:120]
    first = measure(run_dir, images, labels, precision="fp32")
    second = measure(run_dir, images, labels, precision="fp32")
    assert [(r.corruption, r.severity) for r in first.rows] == [(c, s) for c in CORRUPTIONS for s in SEVERITY_LEVELS]
    assert [r.accuracy for r in first.rows] == [r.accuracy for r in second.rows]
    assert [r.ece for r in first.rows] == [r.ece for r in second.rows]
    assert first.mean_corruption_accuracy == pytest.approx(np.mean([r.accuracy for r in first.rows]))
    # Oracle: the checkpoint's own evaluation path on the same corrupted images.
    model, meta = load_checkpoint(run_dir)
    for row in (first.rows[0], first.rows[-1]):
        corrupted = corrupt(images, row.corruption, row.severity)
        logits = predict_checkpoint(model, meta, corrupted, precision="fp32").numpy()
        assert row.accuracy == pytest.approx(float((logits.argmax(1) == labels).mean()))
    clean = predict_checkpoint(model, meta, images, precision="fp32").numpy()
    assert first.clean_accuracy == pytest.approx(float((clean.argmax(1) == labels).mean()))
    assert first.temperature == 1.0 and first.clean_ood_rate is None and first.note == NO_TRUST_NOTE


def test_cli_prints_the_table_and_writes_json(tiny):
    run_dir, data_dir = tiny
    proc = run_cli("robustness", str(run_dir), "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    assert "mean corruption accuracy" in proc.stdout and "inversion" in proc.stdout
    written = json.loads((run_dir / ROBUSTNESS_FILE).read_text())
    assert len(written["rows"]) == len(CORRUPTIONS) * len(SEVERITY_LEVELS)
    assert read_robustness(run_dir).to_json() == written


def test_cli_on_a_bad_path_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("robustness", str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:")
