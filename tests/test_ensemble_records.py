"""The typed records of compare.json, ensemble.json, an ensemble's results.json and sweep.json: every
such file fmnist 0.3.1 and 0.4-dev wrote reads back through them key for key, and a new ensemble is
written with the keys 0.4-dev wrote."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from conftest import write_synthetic_idx
from fmnist.data.dataset import load_idx_folder
from fmnist.inference.ensemble_build import build_ensemble
from fmnist.inference.records import (
    CompareFile,
    EnsembleManifest,
    EnsembleMemberRow,
    EnsembleResults,
    EnsembleRow,
    SweepFile,
    ValidationScores,
)
from fmnist.inference.rundir import EpochRecord, RunResultsFile
from test_predict import train_run

FIXTURES = Path(__file__).parent / "fixtures"
FILES = {
    "compare/compare.json": CompareFile,
    "ablate/compare.json": CompareFile,  # 0.4-dev only
    "ensemble/ensemble.json": EnsembleManifest,
    "ensemble/results.json": EnsembleResults,
    "sweep/sweep.json": SweepFile,
}


@pytest.fixture(scope="module", params=["runs-0.3.1.tar.gz", "runs-0.4-dev.tar.gz"])
def fixture_dir(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param.removesuffix(".tar.gz"))
    with tarfile.open(FIXTURES / request.param) as tar:
        tar.extractall(folder, filter="data")
    return folder


def test_every_file_reads_back_unchanged(fixture_dir: Path):
    read = 0
    for name, record in FILES.items():
        path = fixture_dir / name
        if not path.is_file():
            continue
        text = json.loads(path.read_text())
        # json.dumps keeps key order: the same keys, in the same order, with the same values
        assert json.dumps(record.read(path).to_json()) == json.dumps(text), name
        read += 1
    assert read >= 4


def test_what_is_read_is_typed(fixture_dir: Path):
    compare = CompareFile.read(fixture_dir / "compare" / "compare.json")
    assert (
        all(isinstance(r.results, RunResultsFile) for r in compare.runs) and compare.runs[0].results.test_accuracy > 0
    )
    assert [m.name for m in compare.models] == sorted(
        {r.name for r in compare.runs}, key=[r.name for r in compare.runs].index
    )
    for row in compare.ensembles or []:
        assert isinstance(row, EnsembleRow) and all(isinstance(m, EnsembleMemberRow) for m in row.members)
        assert row.best_member in [m.run_dir for m in row.members]
    results = EnsembleResults.read(fixture_dir / "ensemble" / "results.json")
    assert isinstance(results.validation, ValidationScores) and results.validation.shared
    assert results.members[results.best_member].test_accuracy == max(m.test_accuracy for m in results.members)
    manifest = EnsembleManifest.read(fixture_dir / "ensemble" / "ensemble.json")
    assert sum(m.weight for m in manifest.members) == pytest.approx(1.0)
    sweep = SweepFile.read(fixture_dir / "sweep" / "sweep.json")
    assert all(isinstance(e, EpochRecord) for t in sweep.trials for e in t.epochs)
    best = max((t for t in sweep.trials if t.best), key=lambda t: t.best.value)
    assert (sweep.best.trial, sweep.best.value) == (best.name, best.best.value)


def _shape(value: object) -> object:
    """A JSON value's keys at every level (a list by its first item), without the values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return [_shape(value[0])]
    return None


def test_a_new_ensemble_is_written_with_the_keys_0_4_wrote(tmp_path: Path):
    with tarfile.open(FIXTURES / "runs-0.4-dev.tar.gz") as tar:
        tar.extractall(tmp_path / "old", filter="data")
    dataset = load_idx_folder(write_synthetic_idx(tmp_path / "data"))
    common = {"model_args": {"hidden": [16]}, "max_steps": 6, "epochs": 1, "split_seed": 0}
    runs = [train_run(tmp_path / name, dataset, "mlp", seed=seed, **common) for name, seed in (("a", 1), ("b", 2))]
    build_ensemble(runs, tmp_path / "ens", dataset=dataset, select="greedy", precision="fp32")
    for name in ("results.json", "ensemble.json"):
        new, old = (
            json.loads((folder / name).read_text()) for folder in (tmp_path / "ens", tmp_path / "old" / "ensemble")
        )
        new_shape, old_shape = _shape(new), _shape(old)
        for shape in (new_shape, old_shape):  # the data's provenance: synthetic files have fewer fields
            shape.pop("data", None)
        assert new_shape == old_shape, name
