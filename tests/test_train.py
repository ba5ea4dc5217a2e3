"""fit(): learning, determinism, best-epoch selection, smoke mode, callbacks and the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fmnist.config import TrainConfig
from fmnist.device import native_bf16, resolve_precision
from fmnist.inference.checkpoint import load_checkpoint
from fmnist.inference.rundir import prepare_run_dir, read_history
from fmnist.training.results import TrainCallback
from fmnist.training.run_writer import RunDirWriter
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import Trainer, fit


def tiny_config(model="mlp", **values):
    base = {"epochs": 3, "batch_size": 64, "val_size": 100, "lr": 3e-3, "eval_batch_size": 128}
    if model == "mlp":
        base["model_args"] = {"hidden": [32]}
    return resolve_config(model, options={**base, **values})


def test_learns_the_synthetic_task(tiny_dataset):
    result = fit(tiny_config(), tiny_dataset)
    assert result.test_accuracy > 0.9
    assert result.epochs_run == 3 and len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert 1 <= result.best_epoch <= 3
    summary = result.to_results().to_json()
    for key in ("model", "params", "test_accuracy", "test_loss", "best_epoch", "epochs_run", "train_seconds", "data"):
        assert key in summary
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["data"]["sha256"]["train_images"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_numbers(tiny_dataset, precision):
    if precision == "bf16" and resolve_precision("auto", torch.device("cpu")) != "bf16":
        pytest.skip("no fast bf16 on this CPU")
    config = dict(
        model="fastcnn", epochs=2, flip=True, crop_pad=2, erase=0.3, mixup=0.2, cutmix=1.0, precision=precision
    )
    a = fit(tiny_config(**config), tiny_dataset)
    b = fit(tiny_config(**config), tiny_dataset)
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]
    assert a.test.loss == b.test.loss
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    c = fit(tiny_config(seed=1, **config), tiny_dataset)
    assert c.history[0].train_loss != a.history[0].train_loss


def test_progressive_resizing_trains_its_first_epochs_on_smaller_images(tiny_dataset):
    sides: list[int] = []  # the side of every training batch the net sees
    evaluated: list[int] = []  # the side of every validation and test batch
    config = tiny_config("fastcnn_deep", epochs=3, low_res_epochs=2, low_res_size=24, model_args={"widths": [8, 8, 8]})
    trainer = Trainer(config, tiny_dataset)
    trainer.model.register_forward_pre_hook(
        lambda m, args: (sides if m.training else evaluated).append(args[0].shape[-1])
    )
    result = trainer.run()
    per_epoch = len(sides) // 3
    assert sides == [24] * (2 * per_epoch) + [28] * per_epoch
    assert result.epochs_run == 3 and result.test.accuracy > 0.5
    # validation and the test pass never see the small size
    assert evaluated and set(evaluated) == {28}
    assert result.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_progressive_resizing_refuses_a_size_the_net_cannot_take(tiny_dataset):
    from fmnist.errors import UsageError

    # fastcnn's head reads a 3x3 final map: 20x20 pools down to 2x2
    with pytest.raises(UsageError, match="fastcnn cannot take 20x20 images"):
        Trainer(tiny_config("fastcnn", epochs=2, low_res_epochs=1, low_res_size=20), tiny_dataset)


def test_max_steps_smoke_mode(tiny_dataset):
    result = fit(tiny_config(epochs=50, max_steps=3), tiny_dataset)
    assert result.steps == 3 and result.epochs_run == 1


def test_best_epoch_weights_are_the_ones_kept(tiny_dataset):
    """The returned weights are those of the best validation epoch, not the last epoch's."""

    class Snapshot(TrainCallback):
        def __init__(self):
            self.val, self.weights = {}, {}

        def on_epoch_end(self, record, is_best):
            self.val[record.epoch] = record.val_accuracy

    snap = Snapshot()
    # A large SGD step makes validation accuracy move around, so the best epoch is rarely the last.
    config = tiny_config(epochs=4, lr=0.5, optimizer="sgd")
    result = fit(config, tiny_dataset, [snap])
    assert snap.val[result.best_epoch] == max(snap.val.values())
    # Replay the same seeded run epoch by epoch (max_steps cuts it at each epoch's end) and
    # compare the kept weights with that epoch's.
    steps_per_epoch = result.steps // result.epochs_run
    replay = fit(tiny_config(epochs=4, lr=0.5, optimizer="sgd", max_steps=steps_per_epoch * result.best_epoch),
                 tiny_dataset)  # fmt: skip
    for (name, kept), (_, at_best) in zip(result.model.state_dict().items(), replay.model.state_dict().items()):
        assert torch.equal(kept, at_best), name


def test_early_stopping_stops(tiny_dataset):
    result = fit(tiny_config(epochs=30, early_stopping=1, lr=1e-9, optimizer="sgd"), tiny_dataset)
    assert result.stopped_early and result.epochs_run < 30


def test_every_scheduler_and_optimizer_runs(tiny_dataset):
    for optimizer in ("adam", "adamw", "sgd"):
        result = fit(tiny_config(epochs=1, optimizer=optimizer, label_smoothing=0.1), tiny_dataset)
        assert result.steps > 0 and result.history[0].train_loss < 2.5


def test_schedulers_shape_the_learning_rate(tiny_dataset):
    lrs = {s: [r.lr for r in fit(tiny_config(epochs=3, lr=0.01, scheduler=s), tiny_dataset).history]
           for s in ("none", "onecycle", "cosine", "plateau")}  # fmt: skip
    assert lrs["none"] == [0.01, 0.01, 0.01]
    assert lrs["cosine"][0] > lrs["cosine"][1] > lrs["cosine"][2] and lrs["cosine"][2] < 1e-3
    assert max(lrs["onecycle"]) <= 0.01 + 1e-9 and lrs["onecycle"][-1] < 1e-4
    assert all(lr <= 0.01 for lr in lrs["plateau"])


def test_onecycle_takes_a_run_whose_warm_up_is_one_step():
    # OneCycleLR divides by (warm-up steps - 1): 4 steps at 0.25 once stopped `--max-steps 4` with an internal error.
    from fmnist.training.optim import make_schedule

    config = TrainConfig(scheduler="onecycle", lr=0.01, warmup_fraction=0.25)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    schedule = make_schedule(config, optimizer, total_steps=4)
    rates = []  # the rate each of the 4 steps trains at
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_batch()
    assert rates[0] < rates[1] and 0.005 < rates[1] <= 0.01 and rates[1] > rates[2] > rates[3] and rates[3] < 1e-4


def test_ema_weights_are_the_ones_saved(tiny_dataset, tmp_path: Path):
    from safetensors.torch import load_file

    run_dir = prepare_run_dir(tmp_path / "run")
    plain = fit(tiny_config(epochs=2), tiny_dataset)
    averaged = fit(tiny_config(epochs=2, ema=0.9), tiny_dataset, [RunDirWriter(run_dir)])
    saved = load_file(run_dir / "model.safetensors")
    kept = averaged.model.state_dict()
    assert all(torch.equal(saved[k], kept[k]) for k in saved)
    # Same seed, same steps: only the averaging differs, so the EMA weights must differ from the live ones.
    assert any(not torch.equal(kept[k], v) for k, v in plain.model.state_dict().items())


def test_weight_average_matches_a_hand_computed_ema():
    """Oracle: every float tensor (weights and BatchNorm statistics) follows
    avg <- d_t * avg + (1 - d_t) * live with d_t = min(DECAY, (1 + t) / (10 + t))."""
    from torch import nn

    from fmnist.training.optim import WeightAverage

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.95)
    expected = {k: v.clone().double() for k, v in model.state_dict().items() if v.is_floating_point()}
    for step in range(30):
        model.train()
        model(torch.randn(8, 3))  # moves the BatchNorm statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(model, step)
        d = min(0.95, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in expected:
                expected[k] = d * expected[k] + (1 - d) * v.double()
    assert average.decay_at(0) == 0.1 and average.decay_at(10**6) == 0.95
    got = average.model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-6)
    assert got["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 30


@pytest.mark.parametrize("level", ["none", "flip", "flip-shift"])
def test_tta_levels_train_and_evaluate(tiny_dataset, level):
    result = fit(tiny_config(epochs=1, tta=level), tiny_dataset)
    assert result.config.tta == level and result.test_accuracy > 0.5


def test_epochs_validate_on_val_tta_views_and_the_test_on_tta_views(tiny_dataset):
    """Oracle: predict() over the same hold-out (and the test split) with each view level, fp32."""
    from fmnist.data.normalize import blank_value, normalize
    from fmnist.data.splits import stratified_split
    from fmnist.errors import UsageError
    from fmnist.inference.evaluate import predict

    config = tiny_config(model="fastcnn", epochs=1, tta="flip-shift", val_tta="none", precision="fp32")
    assert config.epoch_validation_tta == "none" and tiny_config(tta="flip").epoch_validation_tta == "flip"
    result = fit(config, tiny_dataset)
    _, val_idx = stratified_split(tiny_dataset.train_labels, config.val_size, config.validation_seed)
    blank = blank_value(config.input_mean, config.input_std)

    def logits(images, tta):
        x = normalize(torch.from_numpy(images), config.input_mean, config.input_std)
        return predict(result.model, x, precision="fp32", tta=tta, blank=blank)

    val_y = torch.from_numpy(tiny_dataset.train_labels[val_idx]).long()
    plain = logits(tiny_dataset.train_images[val_idx], "none")
    shifted = logits(tiny_dataset.train_images[val_idx], "flip-shift")
    assert not torch.allclose(plain, shifted)  # the two levels differ, so the check below can tell them apart
    assert result.history[0].val_loss == pytest.approx(torch.nn.functional.cross_entropy(plain, val_y).item(), rel=1e-5)
    torch.testing.assert_close(result.test_logits, logits(tiny_dataset.test_images, "flip-shift"))
    with pytest.raises(UsageError, match="val_tta"):
        tiny_config(val_tta="sideways")


@pytest.mark.parametrize(("isa", "expected"), [("baseline", "fp32"), ("avx2", "fp32"), ("avx512", "fp32"),
                                               ("avx512_bf16", "bf16"), ("amx", "bf16")])  # fmt: skip
def test_auto_precision_follows_cpu_capability(isa, expected):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, isa) == expected
    assert native_bf16(isa) == (expected == "bf16")
    for explicit in ("fp32", "bf16"):  # an explicit choice always wins
        assert resolve_precision(explicit, cpu, isa) == explicit


def test_onednn_cap_lowers_the_isa():
    from fmnist.device import capped_isa

    assert capped_isa("amx", "AVX512_CORE_BF16") == "avx512_bf16"
    assert capped_isa("amx", "avx512_core") == "avx512"
    assert capped_isa("avx512_bf16", "AVX2") == "avx2"
    assert capped_isa("avx2", "avx512_core_amx") == "avx2"  # a cap never raises the level
    assert capped_isa("avx2", "") == "avx2"


# Denormal inputs through an elementwise op large enough for every thread of the pool: how many
# results stay non-zero (0 where each thread flushes denormals, as FTZ/DAZ make it).
_DENORMAL_PROBE = """
import sys, torch
if sys.argv[1] == "fmnist":
    import fmnist.device
torch.set_num_threads(2)
tiny = torch.ones(1 << 22, dtype=torch.int32).view(torch.float32)  # the smallest denormal, by its bits
print(int((tiny * 2).count_nonzero()))
"""


def test_importing_fmnist_flushes_denormals_in_every_thread_of_the_pool():
    import subprocess
    import sys

    def survivors(mode: str) -> int:
        proc = subprocess.run(
            [sys.executable, "-c", _DENORMAL_PROBE, mode], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout)

    if survivors("torch") == 0:
        pytest.skip("this CPU or build flushes denormals already; nothing to tell apart")
    assert survivors("fmnist") == 0


def test_cpu_name_carries_family_and_model_so_generations_stay_apart():
    from fmnist.device import cpu_name_from_cpuinfo

    zen5 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    second = "\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 9\nmodel name\t: other\n"
    assert cpu_name_from_cpuinfo(zen5 + second) == "AMD EPYC, family 26 model 2"  # the first processor's
    assert cpu_name_from_cpuinfo("model name\t: Some CPU\n") == "Some CPU"  # no numbers: the name alone
    assert cpu_name_from_cpuinfo("processor\t: 0\nBogoMIPS\t: 48.00\n") is None  # e.g. ARM: the caller falls back


def test_bf16_and_fp32_reach_similar_accuracy(tiny_dataset):
    """Behaviour, not speed: bf16 autocast (emulated where the CPU lacks it) learns like fp32."""
    fp32 = fit(tiny_config(model="fastcnn", epochs=2, precision="fp32"), tiny_dataset)
    bf16 = fit(tiny_config(model="fastcnn", epochs=2, precision="bf16"), tiny_dataset)
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert abs(bf16.test_accuracy - fp32.test_accuracy) < 0.1


def test_run_directory_contents(tiny_dataset, tmp_path: Path):
    run_dir = prepare_run_dir(tmp_path / "run")
    result = fit(tiny_config(), tiny_dataset, [RunDirWriter(run_dir)])
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.toml",
        "environment.json",
        "metrics.jsonl",
        "model.safetensors",
        "model.json",
        "results.json",
    } <= names
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert [row.epoch for row in read_history(run_dir)] == [1, 2, 3]
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch"] == torch.__version__
    assert env["precision"] == results["precision"] and env["cpu_isa"] == results["cpu_isa"] and env["cpu_model"]
    model, meta = load_checkpoint(run_dir)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(x), result.model(x))
    assert meta["extra"]["data"]["sha256"] == results["data"]["sha256"]


def test_legacy_translate_key_is_crop_pad(tiny_dataset):
    assert tiny_config(translate=2).crop_pad == 2


def test_mixup_and_cutmix_train_with_soft_targets(tiny_dataset):
    result = fit(tiny_config(epochs=2, mixup=0.4, cutmix=1.0, crop_pad=2), tiny_dataset)
    assert result.test_accuracy > 0.8  # still learns the synthetic task through mixed targets
    assert result.history[-1].train_loss < result.history[0].train_loss


LOCKER = """
import sys, time
from pathlib import Path
from fmnist.errors import RunLockedError
from fmnist.inference.rundir import RunLock
run_dir, held, clashes = Path(sys.argv[1]), 0, 0
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with RunLock(run_dir):
            marker = run_dir / "inside"
            try:
                marker.mkdir()  # fails if another holder is inside too
            except FileExistsError:
                clashes += 1
                continue
            held += 1
            marker.rmdir()
    except RunLockedError:
        pass
print(held, clashes)
"""


def test_released_lock_leaves_no_file_and_never_lets_two_in(tmp_path: Path):
    """A lock removes its file on release; one who opened the file just before must not hold it too."""
    import subprocess
    import sys

    from fmnist.inference.rundir import LOCK_FILE, RunLock

    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
    assert not (tmp_path / LOCK_FILE).exists()
    lockers = [subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path), "4"], stdout=subprocess.PIPE, text=True)
               for _ in range(3)]  # fmt: skip
    counts = [tuple(map(int, p.communicate(timeout=60)[0].split())) for p in lockers]
    assert all(held > 0 for held, _ in counts), counts
    assert sum(clashes for _, clashes in counts) == 0, counts
    assert not (tmp_path / LOCK_FILE).exists()
