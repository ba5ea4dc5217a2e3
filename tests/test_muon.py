"""Muon: the Gram-form Newton-Schulz against the textbook iteration in NumPy, AdamW against torch's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fmnist.training.muon import NEWTON_SCHULZ, RMS_MATCH, MuonAdamW, orthogonalize
from fmnist.training.optim import make_optimizer
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import fit


def newton_schulz_oracle(g: np.ndarray, steps: int = 5) -> np.ndarray:
    """The iteration as the Muon paper writes it, on X itself, in float64."""
    a, b, c = NEWTON_SCHULZ
    x = g / (np.linalg.norm(g) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(48, 144), (96, 864), (200, 30), (7, 7)])
def test_orthogonalize_matches_the_textbook_iteration(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    ours = orthogonalize(g)
    np.testing.assert_allclose(ours.numpy(), newton_schulz_oracle(g.double().numpy()), atol=2e-5)
    # What the iteration is for: every singular value lands near 1, whatever the gradient's spread.
    singular = torch.linalg.svdvals(ours)
    assert singular.min() > 0.6 and singular.max() < 1.25, singular


def test_orthogonalize_is_bit_for_bit_the_iteration_that_multiplies_by_the_identity_and_updates_every_gram():
    """The shortcuts (no P @ I, no unused last A') change no bit: recorded runs stay reproducible."""
    a, b, c = NEWTON_SCHULZ
    for shape in [(64, 576), (32, 144), (10, 576)]:
        g = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        x = g / (g.norm() + 1e-7)
        gram = x @ x.T
        identity = torch.eye(len(gram))
        product = identity
        for _ in range(5):
            poly = torch.addmm(a * identity + b * gram, gram, gram, alpha=c)
            product = poly @ product
            gram = gram @ poly @ poly
        assert torch.equal(orthogonalize(g), product @ x)


def test_the_grouped_adamw_step_is_bit_for_bit_one_tensor_at_a_time():
    """The foreach kernels do the per-tensor arithmetic, op for op (the oracle below), on every tensor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    params = [p.detach().clone() for p in model.parameters()]
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    optimizer = MuonAdamW([{"params": model.parameters(), "weight_decay": 0.05}], lr=1e-2)
    lr, (beta1, beta2), eps, decay = 1e-2, (0.9, 0.999), 1e-8, 0.05
    x = torch.randn(16, 6)
    for step in range(1, 26):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        for param, grad, (exp_avg, exp_avg_sq) in zip(params, [p.grad for p in model.parameters()], state):
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            param.mul_(1 - lr * decay)
            denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(eps)
            param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
        assert all(torch.equal(ours, oracle) for ours, oracle in zip(model.parameters(), params)), step


def test_non_muon_groups_step_exactly_like_torch_adamw():
    torch.manual_seed(0)
    ours, theirs = nn.Linear(6, 4), nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    mine = MuonAdamW([{"params": ours.parameters(), "weight_decay": 0.05}], lr=1e-2)
    reference = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.05)
    x = torch.randn(16, 6)
    for _ in range(25):
        for model, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_muon_step_is_decay_then_the_scaled_orthogonal_nesterov_direction():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, bias=False)
    start = conv.weight.detach().clone()
    optimizer = MuonAdamW([{"params": [conv.weight], "weight_decay": 0.1, "muon": True}], lr=0.01, betas=(0.8, 0.999))
    grads = [torch.randn_like(start) for _ in range(2)]
    expected, momentum = start.double().numpy(), np.zeros(start.shape)
    for grad in grads:
        conv.weight.grad = grad.clone()
        optimizer.step()
        momentum = 0.8 * momentum + grad.double().numpy()
        nesterov = (grad.double().numpy() + 0.8 * momentum).reshape(5, -1)  # (5, 27)
        direction = newton_schulz_oracle(nesterov).reshape(start.shape)
        expected = expected * (1 - 0.01 * 0.1) - 0.01 * RMS_MATCH * 27**0.5 * direction
    np.testing.assert_allclose(conv.weight.detach().double().numpy(), expected, atol=1e-5)


def test_make_optimizer_gives_muon_to_conv_filters_only():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    optimizer = make_optimizer(resolve_config("fastcnn", options={"optimizer": "muon"}), model)
    muon = [p for g in optimizer.param_groups if g["muon"] for p in g["params"]]
    assert len(muon) == 1 and muon[0] is model[0].weight
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert {id(p) for g in no_decay for p in g["params"]} == {
        id(p) for p in (model[0].bias, model[1].weight, model[1].bias, model[3].bias)
    }


def test_state_dict_round_trip_continues_the_same_run():
    """What a resumed run relies on: the optimizer's saved state carries on exactly."""

    def steps(model, optimizer, n, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            x = torch.randn(8, 1, 6, 6, generator=gen)
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()

    def build():
        torch.manual_seed(2)
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(48, 2))
        config = resolve_config("fastcnn", options={"optimizer": "muon", "lr": 1e-2})
        return model, make_optimizer(config, model)

    model, optimizer = build()
    steps(model, optimizer, 4, seed=0)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    steps(model, optimizer, 4, seed=1)

    resumed, resumed_optimizer = build()
    resumed.load_state_dict(saved_model)
    resumed_optimizer.load_state_dict(saved_optimizer)
    steps(resumed, resumed_optimizer, 4, seed=1)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert a.equal(b)


def test_fastcnn_trains_with_muon_reproducibly(tiny_dataset):
    config = resolve_config("fastcnn", options={"optimizer": "muon", "epochs": 1, "batch_size": 64, "val_size": 100,
                                                 "eval_batch_size": 128})  # fmt: skip
    first, second = fit(config, tiny_dataset), fit(config, tiny_dataset)
    assert first.test_accuracy == second.test_accuracy
    assert first.history[-1].train_loss < 2.3  # it learnt something in one epoch of a tiny set
