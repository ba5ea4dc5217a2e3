"""Every registered model: shapes, gradients, the features/head split, and the registry's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmnist.device import autocast_context, enable_determinism
from fmnist.errors import UsageError
from fmnist.models import count_parameters, create_model, list_models, register_model
from fmnist.models.base import Classifier, GlobalAvgPool
from fmnist.models.registry import check_model_args, get_entry, list_networks
from fmnist.models.whitening import fit_to_data

ALL = list_networks()
# The largest nets' forward/backward passes take tens of seconds on 2 cores; test_model_zoo.py
# covers them with smaller configurations of the same blocks.
LARGE = {"wrn28_10", "efficientnet_b0", "resnet18", "wrn16_4", "wrn"}
SMALL = [n for n in ALL if n not in LARGE]


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_on_random_input(name: str):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(4, 1, 28, 28)
    fit_to_data(model, lambda: x)  # layers set from the data (fastcnn's whitening) are, before training
    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]  # frozen ones take no gradient
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", SMALL)
def test_features_then_head_equals_forward(name: str):
    model = create_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    features = model.forward_features(x)
    assert features.shape == (3, model.embedding_dim)
    torch.testing.assert_close(model.forward_head(features), model(x))


@pytest.mark.parametrize("name", [n for n in SMALL if get_entry(n).family not in ("mlp", "classical")])
def test_conv_models_name_a_spatial_layer_for_grad_cam(name: str):
    model = create_model(name).eval()
    seen = {}
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model(torch.randn(2, 1, 28, 28))
    handle.remove()
    assert seen["out"].dim() == 4 and seen["out"].shape[-1] >= 3


def test_seed_architectures_have_the_published_layers():
    assert count_parameters(create_model("mlp_seed002")) == 784 * 128 + 128 + 128 * 10 + 10
    assert count_parameters(create_model("cnn_seed002")) == 320 + 18496 + 3136 * 128 + 128 + 1290
    # conv 1->32 (320) + conv 32->64 (18,496) + FC 12,544->128 (1,605,760) + FC 128->10 (1,290).
    assert count_parameters(create_model("cnn_seed004")) == 1_625_866
    assert count_parameters(create_model("lenet5")) == 61_706


def test_fastcnn_deep_has_two_convs_per_stage_with_the_second_on_the_pooled_map():
    # Per stage: conv c_in->w (no bias), BN, conv w->w (no bias), BN; then FC w2*3*3 -> 10.
    expected, c_in = 0, 1
    for width in (32, 96, 192):
        expected += 9 * c_in * width + 2 * width + 9 * width * width + 2 * width
        c_in = width
    expected += 192 * 9 * 10 + 10
    model = create_model("fastcnn_deep").eval()
    assert count_parameters(model) == expected == 636_330
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for m in model.features if isinstance(m, nn.Conv2d)]  # fmt: skip
    model(torch.randn(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    assert sizes == [28, 14, 14, 7, 7, 3]  # each stage's first conv before its pool, the second after
    with pytest.raises(UsageError, match="three positive"):
        check_model_args("fastcnn_deep", {"widths": [32, 96]})


def test_fastcnn_deep_whitened_first_conv_is_frozen_patch_whitening_fit_from_data():
    from fmnist.models.whitening import PatchWhitening, fit_to_data

    learned = create_model("fastcnn_deep", widths=[16, 64, 128])
    whitened = create_model("fastcnn_deep", widths=[16, 64, 128], whiten=True)
    first = whitened.features[0]
    assert isinstance(first, PatchWhitening) and not first.weight.requires_grad
    # Only the first conv changes: every later layer has the learned net's shapes.
    assert [p.shape for p in whitened.parameters()] == [p.shape for p in learned.parameters()]
    trained = sum(p.numel() for p in whitened.parameters() if p.requires_grad)
    assert trained == count_parameters(learned) - 9 * 16
    images = torch.rand(64, 1, 28, 28)
    assert fit_to_data(whitened, lambda: images) == 1
    # Oracle: along each top principal direction of the patches, the response's variance is
    # variance / (variance + eps): whitened to 1 but for the layer's eps.
    patches = torch.nn.functional.unfold(images.double(), 3).transpose(1, 2).reshape(-1, 9)
    centred = patches - patches.mean(0)
    variances = torch.linalg.eigvalsh(centred.T @ centred / len(centred)).flip(0)[:8]
    responses = centred @ first.weight.double().view(16, 9).T
    assert torch.allclose(responses.var(0, correction=0)[:8], variances / (variances + first.eps), rtol=1e-3)
    with pytest.raises(UsageError, match="2-18"):  # a 3x3 patch has 9 directions, each with both signs
        create_model("fastcnn_deep", widths=[32, 64, 128], whiten=True)


def test_fastcnn_parameter_count_is_pinned():
    # fmnist 0.3's net: convs 144 + 6,912 + 41,472 + 82,944, BN 2*(16+48+96+96), FC 864->10: 140,634.
    v03 = {"widths": [16, 48, 96], "whiten": False}
    assert count_parameters(create_model("fastcnn", **v03)) == 140_634
    # Where the last conv runs does not change the parameters, only the MACs.
    assert count_parameters(create_model("fastcnn", **v03, pool_before_last_conv=False)) == 140_634
    assert count_parameters(create_model("fastcnn", widths=[16, 64, 128], whiten=False)) == 242_746
    # The default: convs 144 (the frozen whitening filters) + 4,608 + 18,432 + 36,864, BN 2*(16+32+64+64),
    # FC 576->10: 66,170. Whitening swaps a conv for one of the same shape: the count is the same without it.
    assert count_parameters(create_model("fastcnn")) == 66_170
    assert count_parameters(create_model("fastcnn", whiten=False)) == 66_170


def test_create_model_builds_the_net_fmnist_train_trains():
    from fmnist.training.settings import resolve_config

    for name in list_networks():
        assert create_model(name).model_args == resolve_config(name).model_args, name


def test_fastcnn_with_its_last_conv_at_7x7_is_fmnist_0_2_0s_net_weight_for_weight():
    # A seed must rebuild 0.2.0's initial weights, so figures measured then (cpu-94) reproduce.
    from fmnist.models.cnn import conv_block, conv_pool_block

    torch.manual_seed(0)
    layers = [*conv_pool_block(1, 16), *conv_pool_block(16, 64), *conv_block(64, 128, True), *conv_pool_block(128, 128)]
    old = nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 9, 10))
    torch.manual_seed(0)
    new = create_model("fastcnn", widths=[16, 64, 128], pool_before_last_conv=False, whiten=False)
    new_tensors = list(new.features.state_dict().values()) + list(new.head.state_dict().values())
    assert len(new_tensors) == len(old.state_dict())
    for a, b in zip(old.state_dict().values(), new_tensors, strict=True):
        assert torch.equal(a, b)


def test_configurable_models_cover_seed001_topologies():
    for hidden in ([64, 32, 16], [512, 256, 128]):
        for dropout in (0.0, 0.3):
            model = create_model("mlp", hidden=hidden, dropout=dropout)
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            assert [m.out_features for m in linears] == [*hidden, 10]
            assert any(isinstance(m, nn.Dropout) for m in model.modules()) == (dropout > 0)
    cnn = create_model("cnn", channels=[64, 32, 16], dropout=0.25, batch_norm=True)
    convs = [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [64, 32, 16]
    assert cnn(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_create_model_records_name_args_and_family_on_the_classifier():
    model = create_model("mlp", hidden=[32])
    assert isinstance(model, Classifier)
    assert model.model_name == "mlp" and model.model_args["hidden"] == (32,) and model.family == "mlp"
    assert model.identity.args == model.model_args and "model_name" not in vars(model)


@pytest.mark.parametrize("name", SMALL)
def test_num_classes_can_really_be_passed(name: str):
    model = create_model(name, num_classes=7).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert model.num_classes == 7 and model.model_args["num_classes"] == 7


def test_baselines_share_the_namespace_but_only_linear_ones_have_a_network():
    assert {"logreg", "linear_svc", "rbf_svc", "random_forest"} <= set(list_models())
    assert {"logreg", "linear_svc"} <= set(ALL) and not {"rbf_svc", "random_forest"} & set(ALL)
    assert get_entry("random_forest").baseline.iterative is False and get_entry("logreg").baseline.linear
    with pytest.raises(UsageError, match="no network form"):
        create_model("rbf_svc")


def test_checking_arguments_builds_nothing_real():
    assert check_model_args("cnn", {"channels": [8]})["channels"] == (8,)
    with pytest.raises(UsageError, match="invalid arguments"):
        check_model_args("cnn", {"channels": [0]})


@pytest.fixture
def scratch_registry(monkeypatch):
    """Models a test registers go into a copy of the registry, so they do not leak into later tests
    in the same worker (the docs' model table and "available: ..." lists are read from it)."""
    from fmnist.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_channels_last_is_opt_in_and_grad_cam_layer_is_found(scratch_registry):
    @register_model("test_plain_conv", family="cnn")
    def plain(num_classes: int = 10):
        features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        return Classifier(features, nn.Linear(4 * 14 * 14, num_classes), 4 * 14 * 14)

    model = create_model("test_plain_conv")
    assert model.channels_last is False  # a new model does not silently get NHWC
    assert model.cam_layer_name == "features.1"  # the last spatial map before pooling
    assert create_model("fastcnn").channels_last and create_model("fastcnn").cam_layer_name == "features.14"
    assert create_model("mlp").cam_layer is None


def test_registry_errors_are_one_line_usage_errors():
    with pytest.raises(UsageError, match=r"unknown model 'resnet9000' \(did you mean 'resnet18'\?\); available: cnn, "):
        create_model("resnet9000")
    with pytest.raises(UsageError, match="has no argument 'depth'"):
        create_model("mlp", depth=3)
    with pytest.raises(UsageError, match="invalid arguments"):
        create_model("mlp", hidden=[0])
    with pytest.raises(UsageError, match="must be true or false"):
        create_model("mlp", batch_norm="yes")


def test_register_model_adds_a_name_and_refuses_duplicates(scratch_registry):
    @register_model("test_tiny_linear", family="mlp")
    def tiny(num_classes: int = 10):
        from fmnist.models.base import Classifier

        return Classifier(nn.Flatten(), nn.Linear(784, num_classes), 784)

    assert "test_tiny_linear" in list_models()
    assert create_model("test_tiny_linear").identity.name == "test_tiny_linear"
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_tiny_linear")(tiny)


# Modules whose backward has no deterministic CUDA kernel: under `--deterministic` each one stops
# the first GPU step with a RuntimeError (torch.use_deterministic_algorithms' list).
_NO_DETERMINISTIC_CUDA_BACKWARD = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.AvgPool3d, nn.MaxPool3d,
    nn.FractionalMaxPool2d, nn.FractionalMaxPool3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad3d, nn.Upsample, nn.EmbeddingBag,
)  # fmt: skip


@pytest.mark.parametrize("name", ALL)
def test_no_model_holds_a_layer_that_cuda_cannot_train_deterministically(name: str):
    offending = [n for n, m in create_model(name).named_modules() if isinstance(m, _NO_DETERMINISTIC_CUDA_BACKWARD)]
    assert offending == [], f"{name}: {offending}"


def test_global_avg_pool_matches_adaptive_avg_pool_forward_and_backward():
    x = torch.randn(3, 5, 7, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = GlobalAvgPool()(x), nn.AdaptiveAvgPool2d(1)(x_ref)
    assert out.shape == ref.shape == (3, 5, 1, 1)
    torch.testing.assert_close(out, ref)
    weights = torch.randn(3, 5, 1, 1)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_every_network_takes_a_deterministic_bf16_training_step_on_cuda(name: str):
    device = torch.device("cuda")
    enable_determinism(device)
    torch.manual_seed(0)
    model = create_model(name).place(device)
    x = torch.randn(8, 1, 28, 28, device=device)
    with autocast_context(device, "bf16"):
        loss = nn.functional.cross_entropy(model(x), torch.arange(8, device=device) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
