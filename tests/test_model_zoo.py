"""The stronger models (ResNet-18, Wide ResNets, EfficientNet-B0) and the FLOPs counter."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from fmnist.analysis.gradcam import grad_cam
from fmnist.constants import CLASS_NAMES, FMNIST_MEAN, FMNIST_STD
from fmnist.errors import UsageError
from fmnist.models import count_parameters, create_model
from fmnist.models.efficientnet import DropPath
from fmnist.models.flops import flops_by_layer, forward_flops
from fmnist.models.registry import check_model_args, get_entry


def wrn_params(depth: int, k: int, classes: int = 10) -> int:
    """Parameters of WRN-depth-k on one channel, layer by layer, as the paper describes it."""
    n, total, c_in = (depth - 4) // 6, 9 * 16, 16  # stem conv 1 -> 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width  # BN, conv, BN, conv
            total += c_in * width if c_in != width else 0  # 1x1 projection where the shape changes
            c_in = width
    return total + 2 * c_in + c_in * classes + classes  # final BN, classifier


# ResNet-18 (CIFAR form): kuangliu's 3-channel, 10-class figure 11,173,962 (11,168,832 of it
# before the 5,130-parameter classifier) less 2 x 64 x 9 = 1,152 stem weights for one channel.
# WRN-16-4 / WRN-28-10: the CIFAR-10 figures 2,748,890 / 36,479,194 less 2 x 16 x 9 = 288.
# EfficientNet-B0: the paper's 5,288,548 less its 1000-class classifier (1,281,000), plus a
# 10-class one (12,810), less 2 x 32 x 9 = 576 stem weights.
PARAMS = {
    "resnet18": 11_173_962 - 1_152,
    "wrn16_4": 2_748_890 - 288,
    "wrn": 2_748_890 - 288,  # its defaults are WRN-16-4
    "efficientnet_b0": 5_288_548 - 1_281_000 + 12_810 - 576,
    "wrn28_10": 36_479_194 - 288,
}
SMALL = ["resnet18", "wrn16_4", "wrn", "efficientnet_b0"]  # quick enough for a forward and backward pass
CAM = {"resnet18": ("features.layer4", 4), "wrn16_4": ("features.act", 7), "wrn": ("features.act", 7),
       "efficientnet_b0": ("features.head", 7)}  # fmt: skip


def _trained_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random affine terms and statistics from a batch, as training would leave them, then eval mode.

    Untrained statistics (mean 0, variance 1) make a deep net's eval-mode logits nearly
    constant (EfficientNet's shrink 10x per stage), and a comparison of constants checks nothing.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average of the batches seen
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        model.train()(torch.randn(16, 1, 28, 28, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_published_architectures(name: str):
    with torch.device("meta"):
        model = create_model(name)
    assert count_parameters(model) == PARAMS[name]
    assert all(p.device.type == "meta" for p in model.parameters())


def test_wide_resnet_count_follows_the_paper_for_any_depth_and_width():
    assert PARAMS["wrn16_4"] == wrn_params(16, 4) and PARAMS["wrn28_10"] == wrn_params(28, 10)
    for depth, k in ((10, 1), (22, 2), (40, 4)):
        with torch.device("meta"):
            assert count_parameters(create_model("wrn", depth=depth, widen_factor=k)) == wrn_params(depth, k)


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_shapes_and_finite_gradients(name: str):
    torch.manual_seed(0)
    model = create_model(name).to(memory_format=torch.channels_last).train()
    assert model.channels_last
    logits = model(torch.randn(3, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 4, 9])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)


@pytest.mark.parametrize("name", SMALL)
def test_features_then_head_equal_forward_and_grad_cam_finds_the_last_map(name: str):
    model = _trained_batch_norm(create_model(name))
    x = torch.randn(2, 1, 28, 28)
    features = model.forward_features(x)
    assert features.shape == (2, model.embedding_dim) == (2, model.head.in_features)
    torch.testing.assert_close(model.forward_head(features), model(x))
    layer_name, size = CAM[name]
    assert model.cam_layer_name == layer_name
    seen = {}
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model(x)
    handle.remove()
    assert seen["out"].dim() == 4 and seen["out"].shape[-2:] == (size, size)
    heat = grad_cam(model, x)
    assert heat.shape == (2, 28, 28) and torch.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1


@pytest.mark.parametrize("name", PARAMS)
def test_num_classes_and_meta_device_validation(name: str):
    assert check_model_args(name, {"num_classes": 7})["num_classes"] == 7  # built on the meta device
    with torch.device("meta"):
        model = create_model(name, num_classes=7)
    assert model.num_classes == 7 and model.family == get_entry(name).family
    assert model.family == ("efficientnet" if name.startswith("efficientnet") else "resnet")
    if name in SMALL:
        assert create_model(name, num_classes=7).eval()(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_wrn28_10_runs_one_image_in_eval_mode():
    model = create_model("wrn28_10").eval()
    assert model.model_args["dropout"] == 0.3
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 28, 28))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    assert time.perf_counter() - start < 30  # 8 GFLOPs; about 1 s on two cores


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("wrn", {"depth": 15}, "6n\\+4"),
        ("wrn", {"depth": 4}, "6n\\+4"),
        ("wrn", {"widen_factor": 0}, "widen_factor"),
        ("wrn16_4", {"dropout": 1.0}, "dropout"),
        ("efficientnet_b0", {"width_mult": 0.0}, "width_mult"),
        ("efficientnet_b0", {"drop_path": 1.5}, "drop_path"),
        ("efficientnet_b0", {"total_stride": 3}, "total_stride"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(name: str, args: dict, message: str):
    with pytest.raises(UsageError, match=message) as info:
        check_model_args(name, args)
    assert "\n" not in str(info.value)


def test_efficientnet_total_stride_keeps_the_papers_last_halvings():
    def last_map(**args) -> tuple[int, ...]:
        with torch.device("meta"):
            model = create_model("efficientnet_b0", **args)
        seen = []
        handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
        model(torch.zeros(1, 1, 28, 28, device="meta"))
        handle.remove()
        return seen[0], forward_flops(model)

    (shape4, flops4), (shape8, flops8) = last_map(), last_map(total_stride=8)
    assert shape4 == (1, 1280, 7, 7) and shape8 == (1, 1280, 4, 4)
    assert flops8 < flops4 / 3  # stages 3-7 at a quarter of the pixels, or fewer


# -- ONNX ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, args", [("resnet18", {}), ("wrn", {"depth": 10, "widen_factor": 2}),
                                        ("efficientnet_b0", {"depth_mult": 0.5}), ("fastcnn_deep", {})])  # fmt: skip
def test_onnx_export_answers_like_pytorch(name: str, args: dict):
    """Export time grows with the number of blocks, so the WRNs and EfficientNet are checked in
    shallower forms of the same code: every kind of block and layer is in the graph."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fmnist.inference.export import onnx_bytes, onnx_session

    torch.manual_seed(0)
    model = _trained_batch_norm(create_model(name, **args))
    meta = {"model": name, "model_args": model.model_args, "class_names": list(CLASS_NAMES),
            "normalization": {"mean": FMNIST_MEAN, "std": FMNIST_STD}, "tta_flip": False}  # fmt: skip
    session = onnx_session(onnx_bytes(model, meta))
    for n in (1, 5):
        x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == (n, 10)
        assert np.abs(got - expected).max() < 1e-4
    assert np.ptp(expected, axis=0).max() > 1e-3  # the logits depend on the image: the check means something


# -- stochastic depth --------------------------------------------------------------------------------


def test_efficientnet_stochastic_depth_rises_linearly_and_only_acts_in_training():
    with torch.device("meta"):
        b0 = create_model("efficientnet_b0", drop_path=0.2)
    rates = [m.p for m in b0.modules() if isinstance(m, DropPath)]
    # B0 has 16 blocks; block i skips with 0.2 * i / 16. The 9 residual blocks (those after each
    # stage's first, stage 7 having one) carry the rates, rising to 0.2 * 14 / 16 at block 14.
    assert rates == pytest.approx([0.2 * i / 16 for i in (2, 4, 6, 7, 9, 10, 12, 13, 14)])
    small = {"width_mult": 0.25, "depth_mult": 0.5, "dropout": 0.0}  # the same blocks, cheaper to run
    model = create_model("efficientnet_b0", drop_path=0.5, **small)
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, model(x))  # other branches dropped
    plain = create_model("efficientnet_b0", drop_path=0.0, **small).train()
    assert not any(isinstance(m, DropPath) for m in plain.modules())
    torch.testing.assert_close(plain(x), plain(x))  # train mode without drops is deterministic


def test_drop_path_keeps_the_expected_value():
    drop = DropPath(0.25).train()
    out = drop(torch.ones(20000, 3, 2, 2))
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # whole samples dropped
    assert float((per_sample[:, 0] == 0).float().mean()) == pytest.approx(0.25, abs=0.02)
    assert float(out.mean()) == pytest.approx(1.0, abs=0.03)


# -- FLOPs -------------------------------------------------------------------------------------------


def test_flops_of_a_conv_and_a_linear_by_hand():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10)
    )
    conv = 2 * (1 * 3 * 3) * (4 * 28 * 28)  # 2 x MACs per output element x output elements
    linear = 2 * (4 * 28 * 28) * 10
    assert flops_by_layer(model) == {"0": conv, "4": linear}
    assert forward_flops(model) == conv + linear == 119_168
    assert forward_flops(model, elementwise=True) == conv + linear + 2 * 3136 + 3136  # BN scale+shift, ReLU


def test_flops_of_grouped_and_strided_convolutions():
    grouped = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8),
                            nn.Conv2d(8, 6, 1, groups=2))  # fmt: skip
    assert forward_flops(grouped) == 2 * 9 * 8 * 784 + 2 * 25 * 8 * 196 + 2 * 4 * 6 * 196


def test_flops_of_fastcnn_first_layer_and_of_resnet18():
    counts = flops_by_layer(create_model("fastcnn"))
    assert counts["features.0"] == 2 * 9 * 16 * 28 * 28 == 225_792  # conv 1 -> 16, 3x3, 28x28 out
    # ResNet-18 by hand: (C_in, C_out, kernel, output side) of every convolution, then the classifier.
    convs = [(1, 64, 3, 28)] + [(64, 64, 3, 28)] * 4
    for c_in, c_out, side in ((64, 128, 14), (128, 256, 7), (256, 512, 4)):
        convs += [(c_in, c_out, 3, side), (c_out, c_out, 3, side), (c_in, c_out, 1, side)] + [
            (c_out, c_out, 3, side)
        ] * 2
    by_hand = sum(2 * c_in * k * k * c_out * side * side for c_in, c_out, k, side in convs) + 2 * 512 * 10
    with torch.device("meta"):  # shapes are enough: no weights are allocated
        assert forward_flops(create_model("resnet18")) == by_hand
    assert forward_flops(create_model("resnet18")) == by_hand
