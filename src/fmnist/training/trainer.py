"""Training: `fit(config) -> RunResult` for every registered model. No printing; callbacks report progress.

Networks train in a `Trainer`; scikit-learn baselines are fitted by fmnist.training.baselines. Both
give callbacks a `RunInfo` at the start, an `EpochRecord` per epoch and a `RunResult` at
the end, so nothing downstream asks which kind of model it has.

A `Trainer` holds everything a run needs to continue exactly where it stopped: with a
`state_dir` it saves model, optimizer, scheduler, RNG and early-stopping state after every
epoch (and mid-epoch when asked to stop), so `--resume` reproduces the uninterrupted run
bit for bit on the CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fmnist.config import TrainConfig
from fmnist.constants import IMAGE_SIZE
from fmnist.data.dataset import FashionMNIST
from fmnist.data.loader import Augmentation, TensorLoader
from fmnist.data.normalize import blank_value, normalize
from fmnist.data.splits import stratified_split
from fmnist.device import cpu_isa, enable_determinism, resolve_device, resolve_precision, tune_cuda
from fmnist.errors import INTERRUPTED, CheckpointError, FmnistError, UsageError
from fmnist.inference.evaluate import evaluate_logits, predict
from fmnist.models.base import Classifier
from fmnist.models.registry import count_parameters, create_model, get_entry, model_size_mb
from fmnist.models.whitening import FIT_IMAGES, fit_to_data
from fmnist.seeding import seed_everything
from fmnist.training.compiled import TrainStep, should_compile
from fmnist.training.optim import WeightAverage, make_optimizer, make_schedule
from fmnist.training.results import EpochRecord, RunInfo, RunResult, StopSignal, TrainCallback
from fmnist.training.state import (
    SavedState,
    changed_settings,
    clear_state,
    flatten_optimizer,
    has_state,
    load_state,
    pack,
    rng_restore,
    rng_snapshot,
    save_state,
    unflatten_optimizer,
    unpack,
)

# Validation and test batches on a GPU: one launch per few thousand images instead of per 1,024.
CUDA_EVAL_BATCH = 8192


class TrainingInterrupted(FmnistError):
    """Stopped on request (Ctrl-C) after saving resumable state."""

    exit_code = INTERRUPTED


@dataclass
class EpochSums:
    """Running totals of the current epoch, kept across a mid-epoch resume."""

    loss: float = 0.0  # sum of batch loss x batch size
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0  # training time spent in this epoch, before and after any resume


class BestKey(NamedTuple):
    """How epochs rank: validation accuracy, ties broken by lower validation loss."""

    accuracy: float
    neg_loss: float

    @classmethod
    def of(cls, epoch: int, val_accuracy: float | None, val_loss: float | None) -> BestKey:
        # Without a validation split the latest epoch is the best one.
        return cls(val_accuracy, -val_loss) if val_accuracy is not None else cls(epoch, 0.0)


WORST = BestKey(-math.inf, -math.inf)


@dataclass
class Progress:
    """Where a run stands, besides its weights, optimizer, schedule and RNGs: what a resumed run restores.

    Declared once: fmnist.training.state saves and loads it field by field (`pack` / `unpack`), so a
    field added here needs nothing else, and a state saved before it existed loads with its default.
    """

    epoch: int = 1  # the epoch running, or about to
    batch_in_epoch: int = 0
    step: int = 0
    elapsed: float = 0.0  # training and validation seconds so far
    compile_seconds: float = 0.0
    sums: EpochSums = field(default_factory=EpochSums)
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_key: BestKey = WORST
    epochs_without_gain: int = 0
    stopped_early: bool = False
    epoch_order: torch.Tensor | None = None  # the running epoch's shuffled order (a tensor in the state file)
    best: dict[str, torch.Tensor] | None = None  # the best epoch's weights so far (tensors in the state file)


class Trainer:
    """One network's training run: build with a config and a dataset, optionally `resume()`, then `run()`."""

    def __init__(self, config: TrainConfig, dataset: FashionMNIST, callbacks: Sequence[TrainCallback] = (),
                 state_dir: Path | None = None, stop: StopSignal | None = None):  # fmt: skip
        self.config = config
        self.dataset = dataset
        self.callbacks = list(callbacks)
        self.state_dir = Path(state_dir) if state_dir else None
        self.stop = stop or StopSignal()
        self.device = resolve_device(config.device)
        self.isa = cpu_isa()
        self.precision = resolve_precision(config.precision, self.device, self.isa)
        if config.deterministic:
            enable_determinism(self.device)
        tune_cuda(self.device, config.deterministic)
        seed_everything(config.seed)

        if config.val_size >= len(dataset.train_labels):
            raise UsageError(f"val_size {config.val_size} must be smaller than the "
                             f"{len(dataset.train_labels):,} training images")  # fmt: skip
        train_idx, val_idx = stratified_split(dataset.train_labels, config.val_size, config.validation_seed)
        images, labels = torch.from_numpy(dataset.train_images), torch.from_numpy(dataset.train_labels)
        self.model: Classifier = create_model(config.model, **config.model_args).place(self.device)
        if config.low_res_epochs and not self.model.takes_side(config.low_res_size):
            raise UsageError(f"{config.model} cannot take {config.low_res_size}x{config.low_res_size} images "
                             "(low_res_size): try a size nearer 28")  # fmt: skip
        self.blank = blank_value(config.input_mean, config.input_std)
        soft_targets, self.teacher = None, None
        if config.teacher:  # scored before the first step, timed apart (fmnist.training.distill)
            from fmnist.training.distill import teacher_targets

            soft_targets, self.teacher = teacher_targets(config, dataset, train_idx, val_idx)
        self.loader = TensorLoader(
            images[train_idx], labels[train_idx], batch_size=config.batch_size, mean=config.input_mean,
            std=config.input_std, device=self.device, shuffle=True, augmentation=Augmentation.from_config(config),
            generator=torch.Generator().manual_seed(config.seed + 1), layout=self.model.layout,
            soft_targets=soft_targets,
        )  # fmt: skip
        # Layers set from the data (fmnist.models.whitening) see training images only, before any step.
        fit_to_data(self.model, lambda: normalize(images[train_idx[:FIT_IMAGES]], config.input_mean, config.input_std))
        # Validation images wait on the device, as the training split does (on the CPU: unchanged).
        self.val_x = normalize(images[val_idx].to(self.device), config.input_mean, config.input_std)
        self.val_y = labels[val_idx].long()
        on_cpu = self.device.type == "cpu"
        self.eval_batch_size = config.eval_batch_size if on_cpu else max(config.eval_batch_size, CUDA_EVAL_BATCH)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.optimizer = make_optimizer(config, self.model)
        self.schedule = make_schedule(config, self.optimizer, self.total_steps)
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        self.compiled = should_compile(config.compile, self.device, self.total_steps, self.isa)
        self.train_step = TrainStep(self.model, device=self.device, precision=self.precision,
                                    label_smoothing=config.label_smoothing, compiled=self.compiled)  # fmt: skip
        self.progress = Progress()

    # -- resumable state (fmnist.training.state writes and reads the files) ---------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], SavedState]:
        """Everything `load_state_dict` needs to continue this run exactly: (tensors, state.json's record)."""
        tensors, progress = pack(self.progress)
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        if self.average is not None:
            tensors.update({f"ema.{k}": v for k, v in self.average.model.state_dict().items()})
        optim_tensors, optim_meta = flatten_optimizer(self.optimizer.state_dict())
        rng_tensors, rng_meta = rng_snapshot(self.loader.generator)
        tensors.update(optim_tensors)
        tensors.update(rng_tensors)
        saved = SavedState(progress=progress, config=self.config.to_dict(), optimizer=optim_meta,
                           scheduler=self.schedule.state_dict(), rng=rng_meta,
                           data_sha256=self.dataset.provenance.to_dict()["sha256"])  # fmt: skip
        return tensors, saved

    def load_state_dict(self, tensors: dict[str, torch.Tensor], saved: SavedState, where: str = "state") -> None:
        """Continue from `state_dict()`'s output; the settings that shape it and the data must be the saved ones."""
        changed = changed_settings(saved.config, self.config)
        if changed:
            raise CheckpointError(f"{where}: saved state belongs to a different configuration ({', '.join(changed)})")
        if saved.data_sha256 != self.dataset.provenance.to_dict()["sha256"]:
            raise CheckpointError(f"{where}: the run was trained on different data files")

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        try:
            self.model.load_state_dict(part("model."))
            if self.average is not None:
                self.average.model.load_state_dict(part("ema."))
            self.optimizer.load_state_dict(unflatten_optimizer(tensors, saved.optimizer))
            self.schedule.load_state_dict(saved.scheduler)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{where}: saved state does not fit this model ({exc})") from None
        rng_restore(tensors, saved.rng, self.loader.generator)
        self.progress = unpack(Progress, tensors, saved.progress)

    def save_state(self) -> None:
        if self.state_dir is None:
            return
        tensors, saved = self.state_dict()
        save_state(self.state_dir, tensors, saved, generation=self.progress.step)
        for cb in self.callbacks:
            cb.on_state_saved(self.state_dir)

    def resume(self) -> None:
        """Load the saved state from `state_dir`; the config must be the one it was saved with."""
        assert self.state_dir is not None
        tensors, saved = load_state(self.state_dir)
        self.load_state_dict(tensors, saved, where=str(self.state_dir))

    def request_stop(self) -> None:
        """Ask the run to save its state and stop after the current step (e.g. on Ctrl-C)."""
        self.stop.request()

    @property
    def evaluated_model(self) -> Classifier:
        """The weights validation, test and the checkpoint use: the running average when --ema is on."""
        return self.average.model if self.average else self.model

    def info(self) -> RunInfo:
        return RunInfo(self.config, self.total_steps, self.steps_per_epoch, self.progress.step, self.progress.epoch,
                       tuple(self.progress.history), str(self.device), self.precision, self.isa, self.compiled)  # fmt: skip

    # -- the loop ---------------------------------------------------------------------
    def _train_epoch(self) -> None:
        """Run (the rest of) the current epoch; stops early on max_steps, raises on a stop request."""
        config, device, p = self.config, self.device, self.progress
        if p.epoch_order is None:
            p.epoch_order = self.loader.epoch_order()
        t0 = time.perf_counter()
        # Running sums stay on the device: reading them every step (.item()) would make a GPU
        # wait for each step to finish. Float64, so the sums match a plain Python float's.
        loss_sum = torch.tensor(float(p.sums.loss), dtype=torch.float64, device=device)
        correct_sum = torch.tensor(int(p.sums.correct), dtype=torch.int64, device=device)
        seen, seconds_before = p.sums.seen, p.sums.seconds
        self.model.train()
        side = config.low_res_size if p.epoch <= config.low_res_epochs else IMAGE_SIZE
        for x, y, targets in self.loader.batches(p.epoch_order, p.batch_in_epoch, side):
            loss, logits = self.train_step(x, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.after_batch()
            if self.average:
                self.average.update(self.model, p.step)
            p.step += 1
            p.batch_in_epoch += 1
            batch_loss = loss.detach()
            batch_correct = (logits.argmax(1) == y).sum()
            loss_sum += batch_loss.double() * len(y)
            correct_sum += batch_correct
            seen += len(y)
            rate = (seen - p.sums.seen) / max(time.perf_counter() - t0, 1e-9)
            for cb in self.callbacks:
                cb.on_step(p.step, p.epoch, batch_loss, batch_correct / len(y), rate)
            if (config.max_steps and p.step >= config.max_steps) or self.stop.requested:
                break
        spent = time.perf_counter() - t0
        p.sums = EpochSums(loss_sum.item(), int(correct_sum), seen, seconds_before + spent)
        p.elapsed += spent
        if self.stop.requested:
            self.save_state()
            raise TrainingInterrupted(self._interrupt_message())

    def _compile(self) -> None:
        """Compile the step for the batch sizes this run will see, before training and timed apart."""
        if not self.compiled:
            return
        n, batch = self.loader.num_samples, self.config.batch_size
        sizes = [min(batch, n)]
        last = n - (self.steps_per_epoch - 1) * batch  # the smaller last batch of an epoch, if reached
        if last != sizes[0] and self.total_steps >= self.steps_per_epoch:
            sizes.append(last)
        drawn = self.loader.generator.get_state()  # one real batch, with no draw left behind
        x, _, targets = next(self.loader.batches(torch.arange(n, device=self.device)))
        self.loader.generator.set_state(drawn)
        seconds = self.train_step.warm_up(x, targets, sizes)
        self.progress.compile_seconds += seconds
        for cb in self.callbacks:
            cb.on_compiled(seconds)

    def _interrupt_message(self) -> str:
        where = f"epoch {self.progress.epoch}, step {self.progress.step}"
        if self.state_dir is None:
            return f"interrupted at {where}; nothing was saved"
        return f"interrupted at {where}; state saved. Resume with: fmnist train --resume {self.state_dir}"

    def _validate(self) -> tuple[float | None, float | None]:
        if not len(self.val_y):
            return None, None
        val_logits = predict(self.evaluated_model, self.val_x, batch_size=self.eval_batch_size,
                             precision=self.precision, tta=self.config.epoch_validation_tta, blank=self.blank)  # fmt: skip
        return F.cross_entropy(val_logits, self.val_y).item(), (
            val_logits.argmax(1) == self.val_y
        ).float().mean().item()

    def _end_epoch(self) -> bool:
        """Validate, record, keep the best weights, save state; True when training should stop."""
        config, p = self.config, self.progress
        t0 = time.perf_counter()
        val_loss, val_acc = self._validate()
        if val_loss is not None:
            self.schedule.after_epoch(val_loss)
        p.elapsed += time.perf_counter() - t0
        sums = p.sums
        record = EpochRecord(
            epoch=p.epoch, train_loss=sums.loss / max(sums.seen, 1), train_accuracy=sums.correct / max(sums.seen, 1),
            val_loss=val_loss, val_accuracy=val_acc, lr=self.optimizer.param_groups[0]["lr"], steps=p.step,
            seconds=p.elapsed, images_per_second=sums.seen / max(sums.seconds, 1e-9),
        )  # fmt: skip
        p.history.append(record)
        key = BestKey.of(p.epoch, val_acc, val_loss)
        is_best = key > p.best_key
        if is_best:
            p.best_key, p.best_epoch, p.epochs_without_gain = key, p.epoch, 0
            p.best = copy.deepcopy(self.evaluated_model.state_dict())
        else:
            p.epochs_without_gain += 1
        for cb in self.callbacks:
            cb.on_epoch_end(record, is_best)
        done = bool(config.max_steps and p.step >= config.max_steps) or p.epoch >= config.epochs
        if config.early_stopping and p.epochs_without_gain >= config.early_stopping and not done:
            p.stopped_early = done = True
        p.epoch += 1
        p.batch_in_epoch, p.epoch_order, p.sums = 0, None, EpochSums()
        if not done:
            self.save_state()
        return done

    def run(self) -> RunResult:
        info = self.info()
        for cb in self.callbacks:
            cb.on_start(info)
            if self.teacher is not None:
                cb.on_teacher(self.teacher)
        finished = self.progress.epoch > self.config.epochs or self.progress.stopped_early
        if not finished:
            self._compile()
        while not finished:
            self._train_epoch()
            finished = self._end_epoch()
        return self._finish()

    def _finish(self) -> RunResult:
        config, p = self.config, self.progress
        model = self.evaluated_model
        if p.best is not None:
            model.load_state_dict(p.best)
        model.eval()
        test_x = normalize(
            torch.from_numpy(self.dataset.test_images).to(self.device), config.input_mean, config.input_std
        )
        test_logits = predict(model, test_x, batch_size=self.eval_batch_size, precision=self.precision,
                              tta=config.tta, blank=self.blank)  # fmt: skip
        result = RunResult(
            config=config, model=model, history=p.history, best_epoch=p.best_epoch,
            epochs_run=len(p.history), steps=p.step, train_seconds=p.elapsed,
            test=evaluate_logits(test_logits, torch.from_numpy(self.dataset.test_labels)), test_logits=test_logits,
            params=count_parameters(model), size_mb=model_size_mb(model), data=self.dataset.provenance.to_dict(),
            device=str(self.device), precision=self.precision, isa=self.isa, stopped_early=p.stopped_early,
            planned_steps=self.steps_per_epoch * config.epochs,
            compiled=self.compiled, compile_seconds=p.compile_seconds, teacher=self.teacher,
        )  # fmt: skip
        for cb in self.callbacks:
            cb.on_end(result)
        if self.state_dir is not None:
            clear_state(self.state_dir)  # the finished run no longer needs it
        return result


def fit(config: TrainConfig, dataset: FashionMNIST | None = None, callbacks: Sequence[TrainCallback] = (), *,
        state_dir: Path | None = None, resume: bool = False, stop: StopSignal | None = None) -> RunResult:  # fmt: skip
    """Train (or fit) `config.model` and evaluate its best-by-validation weights on the test split.

    The one dispatch between networks and scikit-learn baselines. With `state_dir` a
    network saves resumable state there after every epoch; `resume` continues from it.
    """
    config.validate()
    if dataset is None:
        from fmnist.data.sources import resolve_dataset

        dataset = resolve_dataset(config.data_dir or None)
    if get_entry(config.model).is_baseline:
        from fmnist.training.baselines import fit_baseline

        return fit_baseline(config, dataset, callbacks)
    trainer = Trainer(config, dataset, callbacks, state_dir=state_dir, stop=stop)
    if resume and state_dir is not None and has_state(state_dir):
        trainer.resume()
    return trainer.run()
