"""Grad-CAM: the heatmap points at the only region that carries the class signal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmnist.analysis.gradcam import flat_maps, grad_cam, heat_on_object
from fmnist.errors import UsageError
from fmnist.models import create_model
from fmnist.models.base import Classifier

ROWS, COLS = slice(4, 10), slice(16, 24)  # the region that decides the class


class RegionSplit(nn.Module):
    """Two channels from one: the input inside REGION, and the input outside it."""

    def __init__(self):
        super().__init__()
        mask = torch.zeros(1, 1, 28, 28)
        mask[..., ROWS, COLS] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1] * self.mask, x[:, 1:] * (1 - self.mask)], dim=1)


class FirstChannelSum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].sum(dim=(1, 2)).unsqueeze(1)


def region_model() -> Classifier:
    """Scores depend only on the pixels inside the region; everything outside is ignored."""
    copy = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        copy.weight.fill_(1.0)
    features = nn.Sequential(copy, RegionSplit(), FirstChannelSum())
    head = nn.Linear(1, 10)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 1, 10).unsqueeze(1))  # class 9 rises with the region's brightness
        head.bias.zero_()
    return Classifier(features, head, 1, cam_layer_name="features.1")


def test_heatmap_maximum_lies_in_the_region_that_carries_the_signal():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    x[:, :, 20:27, 2:9] += 3.0  # a brighter distractor outside the region: irrelevant to the score
    heat = grad_cam(region_model(), x, target=9)
    assert heat.shape == (6, 28, 28)
    for h in heat:
        row, col = divmod(int(h.argmax()), 28)
        assert ROWS.start <= row < ROWS.stop and COLS.start <= col < COLS.stop, (row, col)
        outside = h.clone()
        outside[ROWS, COLS] = 0
        assert outside.max() < h.max()


def test_class_without_positive_evidence_gives_an_all_zero_map():
    heat = grad_cam(region_model(), torch.rand(2, 1, 28, 28), target=0)  # weight -1: evidence against
    assert torch.count_nonzero(heat) == 0
    assert flat_maps(heat).tolist() == [True, True]  # the report marks these instead of overlaying them


def test_flat_maps_hand_examples():
    peaked = torch.zeros(28, 28)
    peaked[5, 5] = 1.0
    uniform = torch.full((28, 28), 0.97)
    uniform[0, 0] = 1.0  # within 10% of the peak everywhere: one colour on screen
    graded = torch.linspace(0, 1, 28).expand(28, 28)
    heat = torch.stack([peaked, uniform, torch.zeros(28, 28), graded])
    assert flat_maps(heat).tolist() == [False, True, True, False]
    heat = grad_cam(region_model(), torch.rand(3, 1, 28, 28), target=9)
    assert not flat_maps(heat).any()  # the region stands out


@pytest.mark.parametrize("name", ["fastcnn", "cnn_seed004", "lenet5", "resnet_small"])
def test_real_models_give_maps_in_unit_range(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.randn(3, 1, 28, 28)
    for target in (None, 4, torch.tensor([1, 2, 3])):
        heat = grad_cam(model, x, target)
        assert heat.shape == (3, 28, 28) and heat.dtype == torch.float32
        assert float(heat.min()) >= 0 and float(heat.max()) <= 1
        assert all(float(h.max()) in (0.0, 1.0) for h in heat)  # each map scaled to its own peak
    assert model.training  # the caller's mode is restored
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_models_without_a_conv_layer_are_refused():
    with pytest.raises(UsageError, match="no convolutional layer"):
        grad_cam(create_model("mlp_seed002"), torch.randn(1, 1, 28, 28))


def test_wrong_target_count_is_refused():
    with pytest.raises(UsageError, match="targets"):
        grad_cam(create_model("lenet5"), torch.randn(2, 1, 28, 28), torch.tensor([1, 2, 3]))


def test_heat_on_object_hand_example():
    heat = torch.zeros(1, 28, 28)
    heat[0, 0, 0], heat[0, 5, 5] = 1.0, 3.0
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 5, 5] = 200  # only the second hot pixel is on the garment
    assert heat_on_object(heat, images) == pytest.approx(0.75)


def cells_model(weights: torch.Tensor) -> Classifier:
    """Activations = the (positive) input itself, (N,C,2,2); class 0's score = sum(weights * A)."""
    features = nn.Sequential(nn.ReLU(), nn.Flatten())
    head = nn.Linear(weights.numel(), 10, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0] = weights.flatten()
    return Classifier(features, head, weights.numel(), cam_layer_name="features.0")


def upsampled(cells: torch.Tensor) -> torch.Tensor:
    heat = torch.nn.functional.interpolate(cells.view(1, 1, 2, 2), size=(28, 28), mode="bilinear", align_corners=False)
    return (heat / heat.max()).view(28, 28)


def test_a_blank_grad_cam_map_falls_back_to_grad_cam_plus_plus_weights():
    a = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    # Gradient = weights: mean -0.5, so plain Grad-CAM is relu(-0.5 * A) = 0 everywhere (blank).
    # Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3) = 1 / (2 + 5) at the one positive cell, so the
    # channel weight is 1/7 and the map is A / 7, scaled to its peak.
    heat = grad_cam(cells_model(torch.tensor([[[1.0, -3.0], [0.0, 0.0]]])), a.view(1, 1, 2, 2), target=0)
    assert torch.allclose(heat[0], upsampled(a), atol=1e-6)
    assert not flat_maps(heat).any()


def test_a_lit_grad_cam_map_keeps_plain_grad_cam_weights():
    a1, a2 = torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    weights = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    # Plain weights: 1/4 for each channel, map (A1 + A2) / 4. Grad-CAM++'s would be 1/7 and 1/8.
    heat = grad_cam(cells_model(weights), torch.stack([a1, a2]).unsqueeze(0), target=0)
    assert torch.allclose(heat[0], upsampled(a1 + a2), atol=1e-6)
    assert not torch.allclose(heat[0], upsampled(a1 / 7 + a2 / 8), atol=1e-3)


@pytest.mark.slow
def test_the_default_nets_maps_are_rarely_blank_on_real_test_images(request, real_data_dir):
    """Plain Grad-CAM left 11.5% of these maps blank (5.1% on a full default-recipe run)."""
    from fmnist.data.normalize import normalize
    from fmnist.data.sources import resolve_dataset
    from fmnist.data.splits import stratified_subsample
    from fmnist.inference.checkpoint import load_checkpoint
    from test_predict import cached_real_run

    model, meta = load_checkpoint(cached_real_run(request, real_data_dir))
    dataset = resolve_dataset(real_data_dir)
    chosen = stratified_subsample(dataset.test_labels, 1000, 0)
    norm = meta["normalization"]
    heat = grad_cam(model, normalize(torch.from_numpy(dataset.test_images[chosen]), norm["mean"], norm["std"]))
    blank = heat.flatten(1).max(1).values <= 0  # what grad_cam returns for no positive evidence
    assert float(blank.float().mean()) <= 0.01
    assert float(flat_maps(heat).float().mean()) <= 0.01
