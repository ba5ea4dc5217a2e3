"""PatchWhitening: filters checked against a NumPy eigendecomposition, frozen in training, rebuilt from checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.data.normalize import normalize
from fmnist.data.splits import stratified_split
from fmnist.errors import UsageError
from fmnist.inference.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from fmnist.inference.rundir import prepare_run_dir
from fmnist.models import count_parameters, create_model
from fmnist.models.whitening import PatchWhitening, fit_to_data
from fmnist.training.run_writer import RunDirWriter
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import fit


def correlated_images(n: int = 300, seed: int = 0) -> torch.Tensor:
    """Smoothed noise: neighbouring pixels correlate, as in real images, so the directions differ in variance."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, 1, 30, 30))
    smooth = (noise[:, :, 1:-1, 1:-1] + noise[:, :, :-2, 1:-1] + noise[:, :, 1:-1, :-2] + 0.5 * noise[:, :, 2:, 2:]) / 2
    return torch.from_numpy(smooth).float()  # (n,1,28,28)


def patch_oracle(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of every interior 3x3 patch, and its eigenvalues, largest first (plain NumPy loops)."""
    x = images[:, 0].double().numpy()
    rows = [x[:, i : i + 3, j : j + 3].reshape(len(x), 9) for i in range(26) for j in range(26)]
    patches = np.concatenate(rows)
    patches = patches - patches.mean(0)
    covariance = patches.T @ patches / len(patches)
    return covariance, np.sort(np.linalg.eigvalsh(covariance))[::-1]


def test_filters_whiten_the_patches_they_were_fitted_to():
    images = correlated_images()
    layer = PatchWhitening(8, eps=1e-2)
    layer.fit(images)
    covariance, variances = patch_oracle(images)
    w = layer.weight.detach().double().view(8, 9).numpy()
    k = 4
    # Each of the k filters maps the patch covariance to variance lambda / (lambda + eps), uncorrelated.
    expected = np.diag(variances[:k] / (variances[:k] + 1e-2))
    np.testing.assert_allclose(w[:k] @ covariance @ w[:k].T, expected, atol=1e-4)
    np.testing.assert_array_equal(w[k:], -w[:k])  # and the negatives, for the max-pool after it


def test_rejects_channel_counts_a_3x3_patch_cannot_fill():
    for bad in (0, 3, 20):
        with pytest.raises(ValueError, match="even"):
            PatchWhitening(bad)


def test_fastcnn_whiten_keeps_its_first_conv_frozen_through_training(tiny_dataset, tmp_path):
    config = resolve_config("fastcnn", options={"epochs": 1, "batch_size": 64, "val_size": 100, "eval_batch_size": 128,
                                                 "model_args": {"whiten": True}})  # fmt: skip
    run_dir = prepare_run_dir(tmp_path / "run")
    result = fit(config, tiny_dataset, [RunDirWriter(run_dir)])
    stem = result.model.features[0]
    assert isinstance(stem, PatchWhitening) and not stem.weight.requires_grad
    # The weights it ends with are the fit to the training split's images, untouched by 1 epoch of steps.
    fresh = create_model("fastcnn", whiten=True)
    train_idx, _ = stratified_split(tiny_dataset.train_labels, config.val_size, config.validation_seed)
    assert (
        fit_to_data(fresh, lambda: normalize(tiny_dataset.train_images[train_idx], config.input_mean, config.input_std))
        == 1
    )
    torch.testing.assert_close(stem.weight.detach().contiguous(), fresh.features[0].weight.detach(), rtol=0, atol=0)
    # The same seed gives the same run.
    again = fit(config, tiny_dataset)
    assert again.test_accuracy == result.test_accuracy

    # A checkpoint rebuilds the net, frozen first conv included, and answers the same.
    loaded, _ = load_checkpoint(run_dir)
    x = torch.randn(4, 1, 28, 28)
    result.model.eval()
    torch.testing.assert_close(loaded(loaded.layout(x)), result.model(result.model.layout(x)))


def test_without_whiten_fastcnn_is_unchanged():
    torch.manual_seed(0)
    plain = create_model("fastcnn", whiten=False)
    torch.manual_seed(0)
    whitened = create_model("fastcnn")  # whitened by default, as the fast recipe trains it
    assert isinstance(whitened.features[0], PatchWhitening)
    assert not isinstance(plain.features[0], PatchWhitening)
    # Every layer after the stem draws the same initial weights, so the two differ only where whitening acts.
    for (name, a), (_, b) in zip(list(plain.state_dict().items())[1:], list(whitened.state_dict().items())[1:]):
        torch.testing.assert_close(a, b, msg=name)


def test_an_unfit_whitening_layer_refuses_to_train_and_a_fit_or_loaded_one_trains():
    model = create_model("fastcnn").train()
    x = torch.randn(8, 1, 28, 28)
    with pytest.raises(UsageError, match="fit_to_data"):
        model(model.layout(x))  # zeros in the first conv: every later layer would see nothing
    model.eval()(model.layout(x))  # shape probes (FLOPs, layer summaries) still run
    assert fit_to_data(model, lambda: correlated_images()) == 1
    out = model.train()(model.layout(x))
    assert out.std(0).max() > 0  # the images now tell apart
    twin = create_model("fastcnn")
    twin.load_state_dict(model.state_dict())  # as a checkpoint or a resumed state loads it
    twin.train()(twin.layout(x))


def test_a_checkpoint_saved_before_whiten_existed_rebuilds_its_learned_first_conv(tmp_path):
    """fastcnn whitens by default since fmnist 0.5; checkpoints before it record no `whiten` and learned the conv."""
    torch.manual_seed(0)
    old = create_model("fastcnn", widths=[16, 48, 96], whiten=False).eval()
    saved_args = {"widths": [16, 48, 96], "pool_before_last_conv": True, "num_classes": 10}  # as 0.3.1 wrote them
    save_checkpoint(tmp_path, old, CheckpointMeta("fastcnn", saved_args, 0.3, 0.4, params=count_parameters(old)))
    model, _ = load_checkpoint(tmp_path)
    assert not any(isinstance(m, PatchWhitening) for m in model.modules())
    assert count_parameters(model) == 140_634
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(model.layout(x)), old(old.layout(x)))
    # And a run directory's config.toml from then reads back as the net it trained.
    from fmnist.config import saved_values

    assert saved_values({"model": "fastcnn", "model_args": saved_args})["model_args"]["whiten"] is False
