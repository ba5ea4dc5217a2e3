"""Training: `fit(config) -> RunResult`. No printing here; progress goes to callbacks.

A `Trainer` holds everything a run needs to continue exactly where it stopped: with a
`state_dir` it saves model, optimizer, scheduler, RNG and early-stopping state after every
epoch (and mid-epoch when asked to stop), so `--resume` reproduces the uninterrupted run
bit for bit on the CPU.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmnist import state as train_state
from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.data.loader import Augmentation, TensorLoader, stratified_split, to_model_input
from fmnist.device import autocast_context, enable_determinism, resolve_device, resolve_precision
from fmnist.errors import CheckpointError, FmnistError, UsageError
from fmnist.evaluate import Evaluation, evaluate_logits, predict
from fmnist.models.registry import count_parameters, create_model, model_size_mb


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    steps: int
    seconds: float  # training time so far, validation included
    images_per_second: float


@dataclass
class RunResult:
    config: TrainConfig
    model: nn.Module  # holds the best-by-validation weights, in eval mode
    history: list[EpochRecord]
    best_epoch: int
    epochs_run: int
    steps: int
    train_seconds: float
    test: Evaluation
    test_logits: torch.Tensor
    params: int
    size_mb: float
    data: dict[str, Any]
    device: str
    precision: str
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_accuracy(self) -> float:
        return self.test.accuracy

    def summary(self) -> dict[str, Any]:
        """What results.json holds."""
        return {
            "model": self.config.model,
            "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.model_args.items()},
            "params": self.params,
            "size_mb": round(self.size_mb, 4),
            "test_accuracy": self.test.accuracy,
            "test_loss": self.test.loss,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.history[self.best_epoch - 1].val_accuracy if self.best_epoch else None,
            "epochs_run": self.epochs_run,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "train_seconds": round(self.train_seconds, 3),
            "seed": self.config.seed,
            "device": self.device,
            "precision": self.precision,
            "data": self.data,
            "confusion": self.test.confusion,
            "per_class": self.test.per_class,
            "most_confused": self.test.most_confused,
            **self.extra,
        }


class TrainCallback:
    """Hooks for progress display and run-directory writing; every method is optional."""

    def on_start(self, trainer: Trainer) -> None: ...
    def on_step(self, step: int, epoch: int, loss: torch.Tensor, accuracy: torch.Tensor,
                images_per_second: float) -> None:  # fmt: skip
        """`loss` and `accuracy` are 0-d tensors of this batch; call float() only when displaying."""

    def on_epoch_end(self, record: EpochRecord, model: nn.Module, is_best: bool) -> None: ...
    def on_end(self, result: RunResult) -> None: ...


class TrainingInterrupted(FmnistError):
    """Stopped on request (Ctrl-C) after saving resumable state."""

    exit_code = 130


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """Returns (scheduler or None, whether it steps per batch rather than per epoch)."""
    if config.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=max(total_steps, 1), pct_start=config.warmup_fraction
        )
        return sched, True
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1)), True
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2), False
    return None, False


def uses_channels_last(model: nn.Module) -> bool:
    return getattr(model, "family", "") in ("cnn", "resnet")


class Trainer:
    """One training run: build with a config and a dataset, optionally `resume()`, then `run()`."""

    def __init__(self, config: TrainConfig, dataset: FashionMNIST, callbacks: Sequence[TrainCallback] = (),
                 state_dir: Path | None = None):  # fmt: skip
        self.config = config.validate()
        self.dataset = dataset
        self.callbacks = list(callbacks)
        self.state_dir = Path(state_dir) if state_dir else None
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        if config.deterministic:
            enable_determinism(self.device)
        seed_everything(config.seed)

        if config.val_size >= len(dataset.train_labels):
            raise UsageError(f"val_size {config.val_size} must be smaller than the "
                             f"{len(dataset.train_labels):,} training images")  # fmt: skip
        train_idx, val_idx = stratified_split(dataset.train_labels, config.val_size, config.seed)
        images, labels = torch.from_numpy(dataset.train_images), torch.from_numpy(dataset.train_labels)
        self.model = create_model(config.model, **config.model_args).to(self.device)
        self.channels_last = uses_channels_last(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loader = TensorLoader(
            images[train_idx], labels[train_idx], batch_size=config.batch_size, mean=config.input_mean,
            std=config.input_std, device=self.device, shuffle=True,
            augmentation=Augmentation(config.flip, config.translate, config.erase),
            generator=torch.Generator().manual_seed(config.seed + 1), channels_last=self.channels_last,
        )  # fmt: skip
        self.val_x = to_model_input(images[val_idx], config.input_mean, config.input_std)
        self.val_y = labels[val_idx].long()
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler, self.per_batch = make_scheduler(config, self.optimizer, self.total_steps)

        # Progress counters: everything a resumed run needs besides weights and RNGs.
        self.epoch, self.batch_in_epoch, self.step, self.elapsed = 1, 0, 0, 0.0
        self.epoch_order: torch.Tensor | None = None
        self.epoch_sums = [0.0, 0, 0]  # loss * n, correct, seen in the current epoch
        self.history: list[EpochRecord] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch, self.best_key, self.epochs_without_gain = 0, (-math.inf, -math.inf), 0
        self.stopped_early = False
        self.stop_requested = False

    # -- saving and restoring ---------------------------------------------------------
    def save_state(self) -> None:
        if self.state_dir is None:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        optim_tensors, optim_meta = train_state.flatten_optimizer(self.optimizer.state_dict())
        rng_tensors, rng_meta = train_state.rng_snapshot(self.loader.generator)
        tensors.update(optim_tensors)
        tensors.update(rng_tensors)
        if self.epoch_order is not None:
            tensors["epoch_order"] = self.epoch_order.cpu()
        meta = {
            "config": self.config.to_dict(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "elapsed": self.elapsed, "epoch_sums": self.epoch_sums,
            "history": [asdict(r) for r in self.history],
            "best_epoch": self.best_epoch, "best_key": list(self.best_key),
            "epochs_without_gain": self.epochs_without_gain, "stopped_early": self.stopped_early,
            "optimizer": optim_meta, "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": rng_meta, "data_sha256": self.dataset.provenance.to_dict()["sha256"],
        }  # fmt: skip
        train_state.save_state(self.state_dir, tensors, meta, generation=self.step)

    def resume(self) -> None:
        """Load the saved state from `state_dir`; the config must be the one it was saved with."""
        assert self.state_dir is not None
        tensors, meta = train_state.load_state(self.state_dir)
        if meta["config"] != self.config.to_dict():
            raise CheckpointError(f"{self.state_dir}: saved state belongs to a different configuration")
        if meta["data_sha256"] != self.dataset.provenance.to_dict()["sha256"]:
            raise CheckpointError(f"{self.state_dir}: the run was trained on different data files")
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
            self.best_state = best or None
            self.optimizer.load_state_dict(train_state.unflatten_optimizer(tensors, meta["optimizer"]))
            if self.scheduler is not None:
                self.scheduler.load_state_dict(meta["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.state_dir}: saved state does not fit this model ({exc})") from None
        train_state.rng_restore(tensors, meta["rng"], self.loader.generator)
        self.epoch_order = tensors.get("epoch_order")
        self.epoch, self.batch_in_epoch, self.step = meta["epoch"], meta["batch_in_epoch"], meta["step"]
        self.elapsed, self.epoch_sums = meta["elapsed"], meta["epoch_sums"]
        self.history = [EpochRecord(**r) for r in meta["history"]]
        self.best_epoch, self.best_key = meta["best_epoch"], tuple(meta["best_key"])
        self.epochs_without_gain, self.stopped_early = meta["epochs_without_gain"], meta["stopped_early"]

    def request_stop(self) -> None:
        """Ask the run to save its state and stop after the current step (e.g. on Ctrl-C)."""
        self.stop_requested = True

    # -- the loop ---------------------------------------------------------------------
    def _train_epoch(self) -> bool:
        """Run (the rest of) the current epoch; False if it ended early on max_steps or a stop request."""
        config, device = self.config, self.device
        if self.epoch_order is None:
            self.epoch_order = self.loader.epoch_order()
        t0 = time.perf_counter()
        # Running sums stay on the device: reading them every step (.item()) would make a GPU
        # wait for each step to finish. Float64, so the sums match a plain Python float's.
        loss_sum = torch.tensor(float(self.epoch_sums[0]), dtype=torch.float64, device=device)
        correct_sum = torch.tensor(int(self.epoch_sums[1]), dtype=torch.int64, device=device)
        seen, seen_at_start = self.epoch_sums[2], self.epoch_sums[2]
        for x, y in self.loader.batches(self.epoch_order, self.batch_in_epoch):
            with autocast_context(device, self.precision):
                logits = self.model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None and self.per_batch:
                self.scheduler.step()
            self.step += 1
            self.batch_in_epoch += 1
            batch_loss = loss.detach()
            batch_correct = (logits.argmax(1) == y).sum()
            loss_sum += batch_loss.double() * len(y)
            correct_sum += batch_correct
            seen += len(y)
            rate = (seen - seen_at_start) / max(time.perf_counter() - t0, 1e-9)
            for cb in self.callbacks:
                cb.on_step(self.step, self.epoch, batch_loss, batch_correct / len(y), rate)
            if config.max_steps and self.step >= config.max_steps:
                break
            if self.stop_requested:
                self.epoch_sums = [loss_sum.item(), int(correct_sum), seen]
                self.elapsed += time.perf_counter() - t0
                self.save_state()
                raise TrainingInterrupted(self._interrupt_message())
        self.epoch_sums = [loss_sum.item(), int(correct_sum), seen]
        self._epoch_train_time = time.perf_counter() - t0
        self.elapsed += self._epoch_train_time
        return True

    def _interrupt_message(self) -> str:
        where = f"epoch {self.epoch}, step {self.step}"
        if self.state_dir is None:
            return f"interrupted at {where}; nothing was saved"
        return f"interrupted at {where}; state saved. Resume with: fmnist train --resume {self.state_dir}"

    def _end_epoch(self) -> bool:
        """Validate, record, keep the best weights, save state; True when training should stop."""
        config = self.config
        t0 = time.perf_counter()
        val_loss = val_acc = None
        if len(self.val_y):
            val_logits = predict(self.model, self.val_x, batch_size=config.eval_batch_size, precision=self.precision,
                                 tta_flip=config.tta_flip)  # fmt: skip
            val_loss = F.cross_entropy(val_logits, self.val_y).item()
            val_acc = (val_logits.argmax(1) == self.val_y).float().mean().item()
            if self.scheduler is not None and not self.per_batch:
                self.scheduler.step(val_loss)
        self.elapsed += time.perf_counter() - t0
        loss_sum, correct, seen = self.epoch_sums
        record = EpochRecord(
            epoch=self.epoch, train_loss=loss_sum / max(seen, 1), train_accuracy=correct / max(seen, 1),
            val_loss=val_loss, val_accuracy=val_acc, lr=self.optimizer.param_groups[0]["lr"], steps=self.step,
            seconds=self.elapsed, images_per_second=seen / max(self._epoch_train_time, 1e-9),
        )  # fmt: skip
        self.history.append(record)
        # Best by validation accuracy, ties broken by lower loss; without validation, the last epoch.
        key = (val_acc, -val_loss) if val_acc is not None else (self.epoch, 0)
        is_best = key > self.best_key
        if is_best:
            self.best_key, self.best_epoch, self.epochs_without_gain = key, self.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.epochs_without_gain += 1
        for cb in self.callbacks:
            cb.on_epoch_end(record, self.model, is_best)
        done = bool(config.max_steps and self.step >= config.max_steps) or self.epoch >= config.epochs
        if config.early_stopping and self.epochs_without_gain >= config.early_stopping and not done:
            self.stopped_early = done = True
        self.epoch += 1
        self.batch_in_epoch, self.epoch_order, self.epoch_sums = 0, None, [0.0, 0, 0]
        self._epoch_train_time = 0.0
        if not done:
            self.save_state()
        return done

    def run(self) -> RunResult:
        for cb in self.callbacks:
            cb.on_start(self)
        self._epoch_train_time = 0.0
        finished = self.epoch > self.config.epochs or self.stopped_early
        while not finished:
            self._train_epoch()
            finished = self._end_epoch()
        return self._finish()

    def _finish(self) -> RunResult:
        config = self.config
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        test_x = to_model_input(torch.from_numpy(self.dataset.test_images), config.input_mean, config.input_std)
        test_logits = predict(self.model, test_x, batch_size=config.eval_batch_size, precision=self.precision,
                              tta_flip=config.tta_flip)  # fmt: skip
        result = RunResult(
            config=config, model=self.model, history=self.history, best_epoch=self.best_epoch,
            epochs_run=len(self.history), steps=self.step, train_seconds=self.elapsed,
            test=evaluate_logits(test_logits, torch.from_numpy(self.dataset.test_labels)), test_logits=test_logits,
            params=count_parameters(self.model), size_mb=model_size_mb(self.model),
            data=self.dataset.provenance.to_dict(), device=str(self.device), precision=self.precision,
            stopped_early=self.stopped_early,
        )  # fmt: skip
        for cb in self.callbacks:
            cb.on_end(result)
        if self.state_dir is not None:
            train_state.clear_state(self.state_dir)  # the finished run no longer needs it
        return result


def fit(config: TrainConfig, dataset: FashionMNIST | None = None, callbacks: Sequence[TrainCallback] = ()) -> RunResult:
    """Train `config.model` and evaluate its best-by-validation weights on the test split."""
    if dataset is None:
        from fmnist.data.sources import resolve_dataset

        dataset = resolve_dataset(config.data_dir or None)
    return Trainer(config, dataset, callbacks).run()
