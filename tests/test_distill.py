"""Distillation: targets mix a teacher's probabilities with the labels, a teacher that saw the student's
validation images is refused, and the run records what its teacher cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, write_synthetic_idx
from fmnist.data.dataset import load_idx_folder
from fmnist.data.loader import Augmentation, TensorLoader
from fmnist.data.splits import stratified_split
from fmnist.errors import UsageError
from fmnist.inference.ensemble_build import build_ensemble
from fmnist.inference.ensemble_model import average_probabilities, load_members, member_probabilities
from fmnist.inference.rundir import RunResultsFile, prepare_run_dir, read_results
from fmnist.training.distill import TEACHER_TTA, mix_with_labels, soften
from fmnist.training.run_writer import RunDirWriter
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import Trainer, fit
from test_predict import train_run

# Small runs on the synthetic bars: every run holds out the same 100 images (split seed 0).
COMMON = {"model_args": {"widths": [8, 16, 16]}, "epochs": 1, "max_steps": 8, "batch_size": 64, "val_size": 100,
          "precision": "fp32"}  # fmt: skip


def test_soft_targets_are_the_weighted_mix_of_teacher_and_label():
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = torch.tensor([1, 2])
    mixed = mix_with_labels(teacher, labels, 0.25)
    torch.testing.assert_close(mixed, torch.tensor([[0.175, 0.8, 0.025], [0.025, 0.025, 0.95]]))
    torch.testing.assert_close(mixed.sum(1), torch.ones(2))
    torch.testing.assert_close(mix_with_labels(teacher, labels, 1.0), teacher)


def test_softening_one_networks_probabilities_is_softmax_of_its_logits_over_t():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    p = torch.softmax(logits, 1)
    for t in (0.5, 1.0, 2.0, 4.0):
        torch.testing.assert_close(soften(p, t), torch.softmax(logits / t, 1))
    flatter = soften(p, 4.0)
    assert (flatter.max(1).values < p.max(1).values).all()


def test_the_loader_hands_each_image_its_own_target_through_shuffling_and_flips():
    images = torch.randint(0, 255, (200, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (200,))
    # Each image's target names the class after its label: a batch drawn out of order shows it.
    soft = torch.nn.functional.one_hot((labels + 1) % 10, 10).float()
    loader = TensorLoader(images, labels, batch_size=32, mean=0.3, std=0.3, shuffle=True,
                          augmentation=Augmentation(flip=True, crop_pad=2), soft_targets=soft)  # fmt: skip
    seen = 0
    for _, y, targets in loader:
        assert targets.shape == (len(y), 10)
        assert torch.equal(targets.argmax(1), (y + 1) % 10)
        seen += len(y)
    assert seen == 200
    with pytest.raises(ValueError, match="mixup"):
        TensorLoader(images, labels, batch_size=32, mean=0.3, std=0.3, soft_targets=soft,
                     augmentation=Augmentation(mixup=0.2))  # fmt: skip


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """(dataset, data_dir, two teacher runs, an ensemble of them): all hold out the same 100 images."""
    data_dir = write_synthetic_idx(tmp_path_factory.mktemp("distill-data"))
    dataset = load_idx_folder(data_dir)
    base = tmp_path_factory.mktemp("teachers")
    runs = [train_run(base / f"t{seed}", dataset, "fastcnn", seed=seed, tta="flip-shift", **COMMON)
            for seed in (1, 2)]  # fmt: skip
    ensemble = base / "ensemble"
    build_ensemble(runs, ensemble, dataset=dataset, select="all", precision="fp32")
    return dataset, data_dir, runs, ensemble


def test_the_student_trains_on_the_ensembles_averaged_probabilities(teachers):
    dataset, _, runs, ensemble = teachers
    config = resolve_config("fastcnn", options={**COMMON, "teacher": str(ensemble), "distill_weight": 0.6,
                                                "distill_temperature": 2.0})  # fmt: skip
    trainer = Trainer(config.validate(), dataset)
    # The oracle: each member scored at the teacher's views, averaged, softened, mixed with the labels.
    labels = np.asarray(dataset.train_labels)
    train_idx, _ = stratified_split(labels, 100, config.validation_seed)
    members = load_members(runs)
    p = average_probabilities(member_probabilities(members, dataset.train_images[train_idx], tta=TEACHER_TTA))
    expected = 0.6 * soften(p, 2.0) + 0.4 * torch.nn.functional.one_hot(torch.from_numpy(labels[train_idx]).long(), 10)
    torch.testing.assert_close(trainer.loader.soft_targets, expected.float())
    assert trainer.teacher is not None and trainer.teacher.kind == "ensemble" and trainer.teacher.members == 2


def test_a_distilled_run_records_its_teacher_and_what_it_cost(teachers, tmp_path):
    dataset, _, runs, ensemble = teachers
    run_dir = prepare_run_dir(tmp_path / "student")
    fit(resolve_config("fastcnn", options={**COMMON, "teacher": str(ensemble)}), dataset, [RunDirWriter(run_dir)])
    results = read_results(run_dir)
    teacher = results.teacher
    assert teacher is not None
    assert teacher.path == str(ensemble.resolve()) and teacher.kind == "ensemble" and teacher.tta == TEACHER_TTA
    assert teacher.member_sha256 == [m.meta["weights_sha256"] for m in load_members(runs)]
    assert teacher.members_train_seconds == pytest.approx(sum(read_results(r).train_seconds for r in runs))
    assert teacher.targets_seconds > 0 and 0 <= teacher.val_accuracy <= 1
    assert results.seconds_with_teacher == pytest.approx(
        results.train_seconds + teacher.members_train_seconds + teacher.targets_seconds
    )
    # results.json round-trips, and a run without a teacher reads and writes as before.
    raw = json.loads((run_dir / "results.json").read_text())
    assert RunResultsFile.from_json(raw).to_json() == raw
    plain = json.loads((runs[0] / "results.json").read_text())
    assert "teacher" not in plain and RunResultsFile.from_json(plain).to_json() == plain
    assert read_results(runs[0]).seconds_with_teacher == read_results(runs[0]).train_seconds


def test_a_single_run_teaches_too(teachers):
    dataset, _, runs, _ = teachers
    trainer = Trainer(resolve_config("fastcnn", options={**COMMON, "teacher": str(runs[0])}).validate(), dataset)
    assert trainer.teacher.kind == "run" and trainer.teacher.members == 1
    assert torch.allclose(trainer.loader.soft_targets.sum(1), torch.ones(len(trainer.loader.soft_targets)))


def test_a_teacher_that_trained_on_the_students_validation_images_is_refused(teachers):
    dataset, _, runs, _ = teachers
    for other in ({"split_seed": 7}, {"val_size": 150}):  # another draw; a bigger hold-out than the teacher's
        config = resolve_config("fastcnn", options={**COMMON, **other, "teacher": str(runs[0])}).validate()
        with pytest.raises(UsageError, match="trained on some of this run's validation images"):
            Trainer(config, dataset)
    # A smaller hold-out inside the teacher's own is safe.
    Trainer(resolve_config("fastcnn", options={**COMMON, "val_size": 60, "teacher": str(runs[0])}).validate(),
            dataset)  # fmt: skip


def test_fmnist_distill_trains_a_student_and_refuses_bad_teachers_in_one_line(teachers, tmp_path, isolated_env):
    _, data_dir, runs, ensemble = teachers
    common = ["--data-dir", str(data_dir), "--max-steps", "4", "--epochs", "1", "--val-size", "100",
              "--model-arg", "widths=[8,16,16]", "--no-report"]  # fmt: skip
    ok = run_cli("distill", str(ensemble), "--out", str(tmp_path / "s"), "--distill-weight", "0.8", *common,
                 env=isolated_env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "teacher: an ensemble of 2, " in ok.stdout + ok.stderr  # said before the first epoch's line
    config = (tmp_path / "s" / "config.toml").read_text()
    assert f'teacher = "{ensemble.resolve()}"' in config and "distill_weight = 0.8" in config
    assert read_results(tmp_path / "s").teacher.members == 2
    for args, words in [
        ([str(runs[0]), "--split-seed", "3"], "trained on some of this run's validation images"),
        ([str(tmp_path / "missing")], "no such run or ensemble directory"),
        ([str(tmp_path)], "not a run directory with a checkpoint"),
        ([str(runs[0]), "--mixup", "0.2"], "do not combine"),
        ([str(runs[0]), "--distill-weight", "0"], "distill_weight must be in (0, 1]"),
    ]:
        out = tmp_path / "refused"
        bad = run_cli("distill", *args, "--out", str(out), *common, env=isolated_env)
        assert bad.returncode == 2, bad.stderr
        assert words in bad.stderr and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert not out.exists()  # refused before the run's folder was made


def test_a_distilled_run_resumes_to_the_uninterrupted_result(teachers, tmp_path):
    dataset, _, _, ensemble = teachers
    options = {**COMMON, "teacher": str(ensemble), "epochs": 2, "max_steps": 0}
    whole = fit(resolve_config("fastcnn", options=options), dataset)
    state = tmp_path / "state"
    first = resolve_config("fastcnn", options=options)
    trainer = Trainer(first.validate(), dataset, state_dir=state)
    trainer._train_epoch()
    trainer._end_epoch()  # epoch 1 saved; a new process would start from here
    again = Trainer(resolve_config("fastcnn", options=options).validate(), dataset, state_dir=state)
    again.resume()
    resumed = again.run()
    assert resumed.test_accuracy == whole.test_accuracy
    assert [e.val_loss for e in resumed.history] == [e.val_loss for e in whole.history]


def test_the_teacher_options_are_settings_of_train_and_compare():
    for command in ("train", "compare"):
        out = run_cli(command, "--help")
        assert "--teacher" in out.stdout and "--distill-weight" in out.stdout and "--distill-temperature" in out.stdout
    help_text = run_cli("distill", "--help").stdout
    assert "TEACHER" in help_text and "--teacher " not in help_text


def test_distill_settings_are_checked():
    from fmnist.config import TrainConfig

    with pytest.raises(UsageError, match="distill_temperature"):
        TrainConfig(teacher="x", distill_temperature=0.0).validate()
    assert Path(TrainConfig(teacher="rel/teacher").validate().teacher).is_absolute()
