"""The GPU path on the CPU: `--compile` gives the eager step's loss, and the loop never reads a step's result."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fmnist.api import make_config
from fmnist.errors import UsageError
from fmnist.models.registry import create_model
from fmnist.models.whitening import fit_to_data
from fmnist.training.compiled import CUDA_MIN_STEPS, TrainStep, compile_unavailable, should_compile
from fmnist.training.results import TrainCallback
from fmnist.training.trainer import fit

CPU = torch.device("cpu")
WHY_NOT = compile_unavailable(CPU)
needs_compiler = pytest.mark.skipif(WHY_NOT is not None, reason=f"torch.compile cannot work here: {WHY_NOT}")
# AdamW at 3e-3, not the fast recipe's Muon at 2e-2: with Muon's full-size orthogonalised steps
# at that rate, the fused and eager kernels' last-digit differences grew to 1.3e-4 (relative) in
# the loss within four steps, past the 1e-4 checked here. What is compared is the compiled step.
SMALL = dict(model="fastcnn", epochs=1, batch_size=32, val_size=100, eval_batch_size=256, device="cpu",
             precision="fp32", seed=3, scheduler="none", optimizer="adamw", lr=3e-3)  # fmt: skip


class Calls(TrainCallback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_start(self, info) -> None:
        self.calls.append(f"start compiled={info.compiled}")

    def on_compiled(self, seconds: float) -> None:
        self.calls.append("compiled")

    def on_step(self, *args) -> None:
        self.calls.append("step")


@needs_compiler
def test_the_compiled_step_gives_the_eager_loss_and_gradients_and_its_warm_up_leaves_no_trace():
    torch.manual_seed(0)
    model = create_model("fastcnn").place(CPU).train()
    fit_to_data(model, lambda: torch.randn(64, 1, 28, 28))  # its whitening filters, as training sets them
    twin = copy.deepcopy(model)
    x = model.layout(torch.randn(16, 1, 28, 28))
    y = torch.randint(0, 10, (16,))
    eager = TrainStep(model, device=CPU, precision="fp32", label_smoothing=0.1, compiled=False)
    compiled = TrainStep(twin, device=CPU, precision="fp32", label_smoothing=0.1, compiled=True)
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    rng = torch.get_rng_state()
    assert compiled.warm_up(x, y, [16, 8]) > 0 and eager.warm_up(x, y, [16]) == 0.0
    # Compiling ran forward and backward in training mode; BatchNorm's statistics, the gradients
    # and the random state are put back, so training starts from the weights it would have had.
    assert all(torch.equal(before[k], v) for k, v in twin.state_dict().items())
    assert all(p.grad is None for p in twin.parameters()) and torch.equal(torch.get_rng_state(), rng)
    (loss_e, logits_e), (loss_c, logits_c) = eager(x, y), compiled(x, y)
    loss_e.backward()
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits_c, logits_e, rtol=1e-3, atol=1e-4)
    for (name, p_e), p_c in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-3, atol=1e-5, msg=name)


@needs_compiler
def test_a_compiled_run_trains_like_the_eager_one_and_keeps_compile_time_apart(tiny_dataset):
    eager = fit(make_config(**SMALL, max_steps=4, compile="off"), tiny_dataset)
    calls = Calls()
    compiled = fit(make_config(**SMALL, max_steps=4, compile="on"), tiny_dataset, [calls])
    # Compiled once, after the start and before the first step (the timer of epoch 1 starts after it).
    assert calls.calls == ["start compiled=True", "compiled", "step", "step", "step", "step"]
    assert compiled.compiled and compiled.compile_seconds > 0
    assert not eager.compiled and eager.compile_seconds == 0
    summary = compiled.to_results().to_json()
    assert summary["compiled"] is True and summary["compile_seconds"] > 0
    assert summary["train_seconds"] < summary["compile_seconds"]  # 4 tiny steps against a compile
    (e,), (c,) = eager.history, compiled.history
    assert c.train_loss == pytest.approx(e.train_loss, rel=1e-4)
    assert c.val_loss == pytest.approx(e.val_loss, rel=1e-3)


GPU = torch.device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_step_compiled_into_cuda_graphs_trains_like_the_eager_one(tiny_dataset):
    why_not = compile_unavailable(GPU)
    assert why_not is None, why_not  # a GPU machine without Triton would lose the compiled path
    gpu = {**SMALL, "device": "cuda", "precision": "bf16"}
    eager = fit(make_config(**gpu, max_steps=6, compile="off"), tiny_dataset)
    compiled = fit(make_config(**gpu, max_steps=6, compile="on"), tiny_dataset)
    assert compiled.compiled and compiled.compile_seconds > 0
    (e,), (c,) = eager.history, compiled.history
    assert c.train_loss == pytest.approx(e.train_loss, rel=2e-2)  # bf16: fused kernels round differently


def test_auto_stays_eager_on_the_cpu_and_on_says_why_it_cannot(monkeypatch, tmp_path):
    assert not should_compile("auto", CPU, 10**6, "avx512_bf16")
    assert not should_compile("off", CPU, 10**6, "amx")
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler to be found
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(UsageError, match=r"^--compile on: no C\+\+ compiler"):
        should_compile("on", CPU, 10, "avx2")
    assert not should_compile("auto", CPU, 10**6, "amx")


def test_auto_on_a_gpu_compiles_long_runs_only_and_never_without_its_code_generator():
    from fmnist.training.compiled import compile_pays_on_cuda

    assert compile_pays_on_cuda(CUDA_MIN_STEPS) and not compile_pays_on_cuda(CUDA_MIN_STEPS - 1)
    if compile_unavailable(GPU) is not None:  # a CPU build of PyTorch has no Triton
        assert not should_compile("auto", GPU, 10**6, "avx2")


class HostReads(TorchFunctionMode, TrainCallback):
    """Counts, from the start of training to the end of its first epoch, the calls that copy a tensor's
    value to Python: on a GPU each one waits for every kernel queued before it."""

    READS = {"item", "__float__", "__int__", "__bool__", "tolist", "numpy", "__index__"}

    def __init__(self) -> None:
        super().__init__()
        self.count, self.counting = 0, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.counting and getattr(func, "__name__", "") in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))

    def on_start(self, info) -> None:
        self.counting = True

    def on_epoch_end(self, record, is_best: bool) -> None:
        self.counting = False


def test_the_training_loop_reads_nothing_back_per_step(tiny_dataset):
    """An epoch of 2 steps and one of 8 read the same number of values from tensors (the epoch's
    totals and validation): the loop's sums stay on the device until the epoch ends.

    Two reads that are not the device's are kept out: mixup and cutmix read one seed per batch from
    the CPU generator, and Adam's CPU implementation reads its step count, a CPU tensor (the fused
    Adam a GPU gets keeps it on the device); so no mixing here, and SGD."""

    def reads(steps: int) -> int:
        mode = HostReads()
        config = make_config(**{**SMALL, "optimizer": "sgd", "lr": 0.05}, max_steps=steps, compile="off", flip=True,
                             crop_pad=2, erase=0.5, ema=0.99, label_smoothing=0.1)  # fmt: skip
        with mode:
            fit(config, tiny_dataset, [mode])
        return mode.count

    assert reads(2) == reads(8) > 0
