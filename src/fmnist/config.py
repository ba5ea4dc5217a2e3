"""Typed training configuration: TOML in, validated, saved beside every checkpoint.

Layers, later ones winning: built-in defaults -> the model's settings -> a named recipe -> a config
file -> flags; fmnist.training.settings.resolve_config applies them and records each key's source.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, get_origin, get_type_hints

import tomli_w

from fmnist.constants import EVAL_BATCH_SIZE, FMNIST_MEAN, FMNIST_STD, IMAGE_SIZE, NUM_CLASSES, SAME_TTA, TTA_LEVELS
from fmnist.data.splits import FOLLOW_RUN_SEED, SHARED_SPLIT_SEED, holdout_seed, saved_split_seed
from fmnist.device import COMPILE_MODES, DEVICES, PRECISIONS
from fmnist.errors import UsageError
from fmnist.fsutil import read_toml
from fmnist.models.base import ModelArgs

OPTIMIZERS = ("adam", "adamw", "muon", "sgd")
SCHEDULERS = ("none", "plateau", "onecycle", "cosine")
# Keys of fmnist 0.1 files, still read: name -> (new name, value converter).
LEGACY_KEYS = {
    "tta_flip": ("tta", lambda on: "flip" if on in (True, "true", "1", "on", "yes") else "none"),
    "translate": ("crop_pad", lambda pixels: pixels),  # a shift of up to N pixels is a pad-and-crop
}
# The table of a run's config.toml that says which layer set each key (TrainConfig.sources); not a
# setting, so a file that holds it (a run's config.toml, a sweep's best.toml) still reads as settings.
SOURCES_KEY = "sources"

# A TrainConfig value (the type of its field) and a layer of them by key: a recipe's settings, the
# commands' options as given, TrainConfig.to_dict.
SettingValue = bool | int | float | str | ModelArgs
Settings = dict[str, SettingValue]
# A layer as a file, a plan or the API gives it, not yet checked: unknown keys and values of the
# wrong kind are possible until apply_layer checks each (coerce_field).
RawSettings = dict[str, object]


def setting(default: Any, help: str, *, flags: tuple[str, ...] = (), choices: tuple[str, ...] = (),
            negatable: bool = True, metavar: str | None = None) -> Any:  # fmt: skip
    """A training setting declared once: its default and help text here; its TOML key is the
    field's name and its `fmnist train` / `fmnist compare` option is derived from both
    (fmnist.cli.options). `flags` overrides the option's spelling; `choices` lists the values a
    text setting takes; `negatable=False` makes a boolean a plain switch (no --no-NAME); `metavar`
    names the value in `--help` (PIXELS rather than N)."""
    meta = {"help": help, "flags": flags, "choices": choices, "negatable": negatable, "metavar": metavar}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # Not options of their own: --model, --model-arg and --recipe are spelled by the commands;
    # mean and std follow from --normalize (and a recipe such as seed004's); data_dir is --data-dir.
    model: str = "fastcnn"
    model_args: ModelArgs = field(default_factory=dict)
    # the named recipe the run started from (fmnist.training.recipes), recorded for its report;
    # in a config file it applies that recipe, like --recipe
    recipe: str = ""
    epochs: int = setting(10, "Passes over the training split.")
    batch_size: int = setting(128, "Images per step.")
    optimizer: str = setting(
        "adam",
        "sgd is SGD with Nesterov momentum; muon orthogonalises conv filters' updates (AdamW for the rest).",
        choices=OPTIMIZERS,
    )
    lr: float = setting(1e-3, "Learning rate (the peak for onecycle).")
    weight_decay: float = setting(0.0, "Decoupled for adamw.")
    momentum: float = setting(0.9, "SGD momentum (Nesterov); sgd only.")
    scheduler: str = setting("none", "Learning-rate schedule.", choices=SCHEDULERS)
    warmup_fraction: float = setting(0.25, "Share of the steps spent raising the learning rate; onecycle only.")
    label_smoothing: float = setting(0.0, "Target smoothing.")
    flip: bool = setting(False, "Random horizontal flips.")
    # pad by N background pixels and crop back: a random shift of up to N pixels
    crop_pad: int = setting(0, "Random shift of up to PIXELS pixels (pad by PIXELS, crop back); 0 = off.",
                            flags=("--crop-pad-pixels", "--crop-pad", "--translate"), metavar="PIXELS")  # fmt: skip
    erase: float = setting(0.0, "Random-erasing probability.")
    mixup: float = setting(0.0, "Mixup alpha (0 = off).")  # alpha of Beta(alpha, alpha)
    cutmix: float = setting(0.0, "CutMix alpha (0 = off).")  # alpha of Beta(alpha, alpha)
    ema: float = setting(0.0, "Weight EMA decay, e.g. 0.999 (0 = off).")
    # Distillation (fmnist.training.distill): targets mix a teacher's probabilities with the labels.
    teacher: str = setting("", "Distil from this run or ensemble directory: train on its probabilities mixed with "
                           "the labels ('' = off; `fmnist distill`).", metavar="DIR")  # fmt: skip
    distill_weight: float = setting(0.5, "The teacher's share of each target (the labels', the rest); with --teacher.")
    distill_temperature: float = setting(1.0, "Softens (> 1) or sharpens (< 1) the teacher's probabilities; "
                                         "with --teacher.")  # fmt: skip
    # Progressive resizing: early epochs on downscaled images cost a step less (about three quarters
    # for fastcnn_deep at 24x24), and the later epochs at 28x28 fit the net to the size it predicts at.
    low_res_epochs: int = setting(
        0,
        "Progressive resizing: train the first N epochs on images downscaled to "
        "--low-res-size PIXELS (0 = off; the later epochs train at 28x28).",
        metavar="N",
    )
    low_res_size: int = setting(24, "The side of those images, in pixels (8-27).", metavar="PIXELS")
    tta: str = setting("none", "Test-time augmentation.", choices=TTA_LEVELS)  # fmnist.inference.tta
    # The views of the per-epoch validation that picks the best epoch. Six flip-shift views of 5,000
    # images every epoch cost a long run more than its test pass and trust fit together, and with a
    # one-cycle schedule the best epoch is the last or next to last either way (the screens' histories
    # in benchmarks/results/screen-*.json); the test pass and the trust fit always use `tta`.
    val_tta: str = setting(SAME_TTA, f"Test-time augmentation of the per-epoch validation ({SAME_TTA}: as --tta; "
                           "none is the cheapest).", choices=(SAME_TTA, *TTA_LEVELS))  # fmt: skip
    normalize: bool = setting(True, "Standardise inputs.")
    mean: float = FMNIST_MEAN
    std: float = FMNIST_STD
    val_size: int = setting(5000, "Validation images held out.")
    # draws the validation hold-out; -1 = the run's seed (fmnist.data.splits)
    split_seed: int = setting(SHARED_SPLIT_SEED, "Seed of the validation hold-out: runs with one split seed hold "
                              "out the same images, so an ensemble can choose among them (-1 = --seed).")  # fmt: skip
    early_stopping: int = setting(0, "Patience in epochs (0 = off).")
    seed: int = setting(0, "Seed of every random draw.")
    device: str = setting("auto", "Where to train.", choices=DEVICES)
    # bf16 autocast where the hardware computes bf16 natively (fmnist.device)
    precision: str = setting("auto", "auto: bf16 where the CPU has it natively.", choices=PRECISIONS)
    # CPU runs are deterministic already
    deterministic: bool = setting(False, "Deterministic GPU kernels (slower).", negatable=False)
    # fmnist.training.compiled: what auto decides, where the compiled kernels are cached
    compile: str = setting("auto", "Compile the training step (torch.compile; CUDA graphs on a GPU). auto: on a GPU "
                           "for runs long enough to repay it, off on the CPU.", choices=COMPILE_MODES)  # fmt: skip
    max_steps: int = setting(0, "Smoke mode: stop after N steps (0 = off).")
    eval_batch_size: int = EVAL_BATCH_SIZE
    data_dir: str = ""
    tensorboard: bool = setting(False, "TensorBoard scalars in RUN_DIR/tensorboard.", negatable=False)
    # Which layer set each key ("default", "model fastcnn", "recipe cpu-94", "file x.toml", "option",
    # "rule: ..."), model arguments as "model_args.NAME"; empty where nobody recorded it (a config
    # built by hand, a run saved before fmnist 0.5). Not a setting: configs compare without it.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def validate(self) -> TrainConfig:
        from fmnist.models.registry import check_model_args

        _positive_int(self.epochs, "epochs")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.eval_batch_size, "eval_batch_size")
        _non_negative_int(self.max_steps, "max_steps")
        _non_negative_int(self.val_size, "val_size")
        _non_negative_int(self.early_stopping, "early_stopping")
        _non_negative_int(self.crop_pad, "crop_pad")
        if self.crop_pad > 8:
            raise UsageError("crop_pad must be at most 8 pixels")
        _non_negative_int(self.low_res_epochs, "low_res_epochs")
        _positive_int(self.low_res_size, "low_res_size")
        if not 8 <= self.low_res_size < IMAGE_SIZE:
            raise UsageError(f"low_res_size must be 8 to {IMAGE_SIZE - 1} pixels, not {self.low_res_size}")
        if self.low_res_epochs >= self.epochs:
            raise UsageError(f"low_res_epochs ({self.low_res_epochs}) must be fewer than epochs ({self.epochs}): "
                             f"the last epoch trains at {IMAGE_SIZE}x{IMAGE_SIZE}, the size the net predicts at "
                             "(--low-res-epochs 0 turns progressive resizing off)")  # fmt: skip
        for name in ("mixup", "cutmix"):
            if not 0 <= getattr(self, name) <= 10:
                raise UsageError(f"{name} must be an alpha in [0, 10] (0 = off), not {getattr(self, name)}")
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.scheduler, SCHEDULERS, "scheduler")
        _choice(self.device, DEVICES, "device")
        _choice(self.precision, PRECISIONS, "precision")
        _choice(self.compile, COMPILE_MODES, "compile")
        _choice(self.tta, TTA_LEVELS, "tta")
        _choice(self.val_tta, (SAME_TTA, *TTA_LEVELS), "val_tta")
        if not self.lr > 0 or self.lr > 10:
            raise UsageError(f"lr must be a number in (0, 10], not {self.lr}")
        if not 0 <= self.weight_decay < 1:
            raise UsageError(f"weight_decay must be in [0, 1), not {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), not {self.momentum}")
        if not 0 < self.warmup_fraction < 1:
            raise UsageError(f"warmup_fraction must be in (0, 1), not {self.warmup_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")
        if not 0 <= self.erase <= 1:
            raise UsageError(f"erase must be a probability in [0, 1], not {self.erase}")
        if not 0 < self.distill_weight <= 1:
            raise UsageError(f"distill_weight must be in (0, 1], not {self.distill_weight}")
        if not 0.1 <= self.distill_temperature <= 20:
            raise UsageError(f"distill_temperature must be in [0.1, 20], not {self.distill_temperature}")
        if self.teacher:  # recorded absolute, so a resume from another folder finds it
            self.teacher = str(Path(self.teacher).expanduser().absolute())
        if self.teacher and (self.mixup or self.cutmix):
            raise UsageError("a teacher's targets and mixup or cutmix do not combine: drop --mixup/--cutmix")
        if not (self.ema == 0 or 0.5 <= self.ema < 1):
            raise UsageError(f"ema must be 0 (off) or a decay in [0.5, 1), not {self.ema}")
        if not self.std > 0:
            raise UsageError(f"std must be positive, not {self.std}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"seed must be a non-negative integer, not {self.seed}")
        if not FOLLOW_RUN_SEED <= self.split_seed < 2**63:
            raise UsageError(f"split_seed must be a non-negative integer or -1 (the run's seed), not {self.split_seed}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("tensorboard = true needs the tensorboard package: pip install tensorboard")
        self.model_args = check_model_args(self.model, self.model_args)
        if self.model_args.get("num_classes", NUM_CLASSES) != NUM_CLASSES:
            raise UsageError(
                f"num_classes must be {NUM_CLASSES} to train on Fashion-MNIST, not {self.model_args['num_classes']}"
            )
        return self

    @property
    def validation_seed(self) -> int:
        return holdout_seed(self.seed, self.split_seed)

    @property
    def epoch_validation_tta(self) -> str:
        """The TTA level of the per-epoch validation: `val_tta`, or `tta` where that says "same"."""
        return self.tta if self.val_tta == SAME_TTA else self.val_tta

    @property
    def input_mean(self) -> float:
        return self.mean if self.normalize else 0.0

    @property
    def input_std(self) -> float:
        return self.std if self.normalize else 1.0

    def to_dict(self) -> Settings:
        """The settings (sources left out)."""
        data: Settings = dataclasses.asdict(self)
        del data[SOURCES_KEY]
        data["model_args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_args.items()}
        return data

    def to_toml(self) -> str:
        """The settings, then a [sources] table where the sources are known (a run's config.toml)."""
        data: dict[str, object] = {**self.to_dict()}
        if self.sources:
            data[SOURCES_KEY] = dict(self.sources)
        return tomli_w.dumps(data)

    def source_rows(self) -> list[tuple[str, str, str]]:
        """(key, value, source) for every TOML key, model arguments one by one: what --show-config prints."""
        rows = []
        for name, value in self.to_dict().items():
            items = [(f"model_args.{k}", v) for k, v in value.items()] if name == "model_args" else [(name, value)]
            rows += [(key, _plain(v), self.sources.get(key, "not recorded")) for key, v in items]
        return rows

    def describe(self) -> str:
        """The resolved settings, one a line, each with the layer that set it (`fmnist train --show-config`)."""
        rows = [("key", "value", "source"), *self.source_rows()]
        key_width, value_width = (max(len(row[i]) for row in rows) for i in (0, 1))
        return "\n".join(f"{k:<{key_width}}  {v:<{value_width}}  {s}".rstrip() for k, v, s in rows)


def _plain(value: object) -> str:
    """A value as a config file writes it, on one line: 0.02, true, "muon", [16, 32, 64]."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if value is None or isinstance(value, dict):  # not TOML scalars: only a builder's default can be one
        return repr(value)
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def settings() -> list[dataclasses.Field]:
    """The fields declared with `setting`: what the commands offer as options."""
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


# Every key a config file may set (sources is the record of them, not one of them).
FIELD_TYPES: dict[str, type] = {
    name: get_origin(hint) or hint for name, hint in get_type_hints(TrainConfig).items() if name != SOURCES_KEY
}


def _positive_int(value: int, name: str) -> None:
    if value < 1:
        raise UsageError(f"{name} must be a positive integer, not {value}")


def _non_negative_int(value: int, name: str) -> None:
    if value < 0:
        raise UsageError(f"{name} must be zero or a positive integer, not {value}")


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def coerce_field(name: str, value: object, source: str = "config") -> SettingValue:
    """Check one value against the field's type, converting text from the command line; model
    arguments are checked one by one by TrainConfig.validate (fmnist.models.registry)."""
    if name not in FIELD_TYPES:
        known = ", ".join(sorted(FIELD_TYPES))
        raise UsageError(f"unknown {source} key {name!r} (known keys: {known})")
    kind = FIELD_TYPES[name]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UsageError(f"{name} must be true or false, not {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UsageError(f"{name} must be an integer, not {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{name} must be an integer, not {value!r}") from None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError(f"{name} must be a number, not {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"{name} must be a number, not {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise UsageError(f"{name} must be a finite number, not {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise UsageError(f"{name} must be text, not {value!r}")
        return value
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a table of model arguments, not {value!r}")
    return cast(ModelArgs, dict(value))


def apply_layer(config: TrainConfig, values: Mapping[str, object], label: str, what: str = "config") -> TrainConfig:
    """Set one layer's `values` (TOML keys, fmnist 0.1's too) on `config`, each checked against its
    field's type, and record `label` as their source; model arguments merge key by key, so
    `--model-arg whiten=false` keeps the recipe's widths. `what` names the layer in an unknown key's
    message ("unknown config key 'colour'")."""
    for key, value in values.items():
        if value is None:
            continue
        if key in LEGACY_KEYS:
            key, convert = LEGACY_KEYS[key]
            value = convert(value)
        value = coerce_field(key, value, what)
        if key == "model_args":
            config.model_args = {**config.model_args, **value}
            config.sources.update({f"model_args.{name}": label for name in value})
        else:
            setattr(config, key, value)
            config.sources[key] = label
    return config


def merged(*tables: Mapping[str, object]) -> RawSettings:
    """Tables of settings as one layer (a compare file's [defaults] and a run, a sweep's base and a
    trial's draws): later keys win, model arguments key by key."""
    out: RawSettings = {}
    for table in tables:
        for key, value in table.items():
            prior = out.get(key)
            both = isinstance(value, dict) and isinstance(prior, dict) and key == "model_args"
            out[key] = {**prior, **value} if both else value
    return out


def parse_model_args(items: list[str] | None) -> RawSettings:
    """`--model-arg hidden=[512,256]` pairs; values are TOML (numbers, booleans, lists) or text, checked
    against the model's arguments when the config is (TrainConfig.validate)."""
    args: RawSettings = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            parsed = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = raw  # plain text: a list written hidden=512,256, a name
        args[key.strip()] = parsed
    return args


def split_sources(values: Mapping[str, object], where: Path | str) -> tuple[RawSettings, dict[str, str]]:
    """(the settings, the recorded sources) of a config file's table; the [sources] table of a run's
    config.toml is the record of its settings, not one of them."""
    values = dict(values)
    sources = values.pop(SOURCES_KEY, {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise UsageError(f"{where}: [{SOURCES_KEY}] must be a table of texts (which layer set each key)")
    return values, sources


def saved_values(values: Mapping[str, object]) -> RawSettings:
    """A saved config's values (a run's config.toml, its resumable state) as the fmnist that wrote them
    meant them: a split_seed it lacks follows the run's seed, model arguments it lacks take the values
    that rebuild its checkpoints (fmnist.models.registry.saved_model_args); other keys, today's defaults."""
    from fmnist.models.registry import saved_model_args

    values = {**values, "split_seed": saved_split_seed(values)}
    model, args = values.get("model", TrainConfig.model), values.get("model_args") or {}
    if isinstance(model, str) and isinstance(args, dict):
        values["model_args"] = saved_model_args(model, args)
    return values


def load_config_file(path: Path) -> TrainConfig:
    """A saved `config.toml` (as written into run directories) back into a TrainConfig, with the
    sources it records (none for a run saved before fmnist 0.5)."""
    values, sources = split_sources(read_toml(path), path)
    values = saved_values(values)
    config = apply_layer(TrainConfig(), values, f"file {path}", f"{path}").validate()
    config.sources = sources
    return config
