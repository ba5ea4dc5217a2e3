"""Models registered by name: `create_model(name, **kw)` is the one constructor of a network.

Two kinds of entry share one namespace, so configs, `fmnist compare` and reports treat them
alike:
- networks: a builder `fn(**args, num_classes=10) -> Classifier`, trained by gradient descent;
- baselines: a `BaselineSpec` (scikit-learn estimator factory and what the estimator is),
  fitted by fmnist.training.baselines. A linear baseline also has a network form (a Linear layer on
  the pixels) that holds its coefficients, so its run has an ordinary checkpoint.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from fmnist.errors import UsageError, did_you_mean
from fmnist.models.base import Classifier, ModelArgs, ModelArgValue, ModelIdentity

# Arguments a builder or factory takes that are not part of the model's saved arguments:
# the seed comes from the run's config.
_NOT_MODEL_ARGS = ("seed",)


@dataclass(frozen=True)
class BaselineSpec:
    """A scikit-learn baseline: how to make the estimator and what kind of estimator it is."""

    estimator: Callable[..., Any]  # (**args, seed) -> an unfitted scikit-learn estimator
    linear: bool  # a linear map of the pixels: its coefficients fit a Linear layer (a checkpoint)
    probabilistic: bool  # gives class probabilities (else decision scores)
    iterative: bool  # can stop before converging (so convergence is worth reporting)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    family: str  # "mlp", "cnn", "resnet", "classical", ...: what analysis applies (Grad-CAM needs convs)
    builder: Callable[..., Classifier] | None  # the network form; None for a baseline without one
    baseline: BaselineSpec | None = None
    defaults: ModelArgs = field(default_factory=dict)
    # Arguments added after checkpoints of this model were first saved, with the value that
    # rebuilds those older checkpoints (which do not record them): a new default must not
    # change what an old run directory loads as.
    legacy_args: ModelArgs = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.baseline is not None

    @property
    def has_network(self) -> bool:
        return self.builder is not None

    def accepted_args(self) -> list[str]:
        return list(self.defaults)


# Filled by the families' decorators when `fmnist.models` imports them; the registry imports no
# family, so a family may use everything here.
_REGISTRY: dict[str, ModelEntry] = {}


def _defaults_of(fn: Callable[..., Any]) -> ModelArgs:
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.default is not inspect.Parameter.empty and p.name not in _NOT_MODEL_ARGS
    }


def _summary(fn: Callable[..., Any], description: str) -> str:
    return description or next(iter((inspect.getdoc(fn) or "").splitlines()), "")


def _add(entry: ModelEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


def register_model(
    name: str | None = None,
    *,
    description: str = "",
    family: str = "cnn",
    legacy_args: ModelArgs | None = None,
) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator: register a network builder `fn(**kwargs) -> Classifier` under `name`.

    `legacy_args` are arguments newer than some saved checkpoints, with the value those
    checkpoints were built with. The training settings a model is tuned for live with the other
    recipes (fmnist.training.recipes), not here: a model is an architecture.
    """

    def decorate(builder: Callable[..., Classifier]) -> Callable[..., Classifier]:
        key = name or builder.__name__
        _add(ModelEntry(key, _summary(builder, description), family, builder, None, _defaults_of(builder),
                        dict(legacy_args or {})))  # fmt: skip
        return builder

    return decorate


def register_baseline(
    *, linear: bool, probabilistic: bool, iterative: bool, network: Callable[..., Classifier] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a scikit-learn estimator factory `fn(**args, seed) -> estimator`.

    `network`, for a linear baseline, builds the torch form its coefficients are copied into.
    """

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        spec = BaselineSpec(factory, linear, probabilistic, iterative)
        defaults = _defaults_of(factory)
        if network is not None:
            defaults["num_classes"] = inspect.signature(network).parameters["num_classes"].default
        _add(ModelEntry(factory.__name__, _summary(factory, ""), "classical", network, spec, defaults))
        return factory

    return decorate


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UsageError(
            f"unknown model {name!r}{did_you_mean(name, list_models())}; available: {', '.join(list_models())}"
        )
    return _REGISTRY[name]


def list_models() -> list[str]:
    """Every registered name, networks and baselines."""
    return sorted(_REGISTRY)


def list_networks() -> list[str]:
    """The names `create_model` can build (networks, and linear baselines' network form)."""
    return [name for name in list_models() if _REGISTRY[name].has_network]


def resolve_model_args(name: str, model_args: Mapping[str, object] | None) -> ModelArgs:
    """The builder's defaults overlaid with `model_args` (as a file or --model-arg gives them, unchecked);
    unknown names and values of the wrong kind are a UsageError."""
    entry = get_entry(name)
    args = dict(entry.defaults)
    for key, value in (model_args or {}).items():
        if key not in entry.defaults:
            accepted = ", ".join(entry.accepted_args()) or "none"
            raise UsageError(f"model {name!r} has no argument {key!r} (accepted: {accepted})")
        args[key] = _coerce_like(value, entry.defaults[key], f"{name}.{key}")
    return args


def saved_model_args(name: str, saved: Mapping[str, object]) -> dict[str, object]:
    """A checkpoint's recorded arguments, completed with the values older checkpoints imply."""
    entry = get_entry(name)
    return {**entry.legacy_args, **saved}


def _coerce_like(value: object, default: ModelArgValue | None, label: str) -> ModelArgValue:
    """A value checked against the default's type: TOML and JSON give lists where builders take
    tuples, `--model-arg hidden=512,256` gives the text "512,256"; anything else of the wrong
    kind is one clear error here, never a comparison failing inside a builder."""
    if default is None:  # a list item of an empty default: nothing says its kind
        return cast(ModelArgValue, value)
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]  # hidden=512: a list of one
        like = default[0] if default else None
        items = [_coerce_like(_number(item) if isinstance(item, str) else item, like, f"{label}[{i}]")
                 for i, item in enumerate(value)]  # fmt: skip
        return cast(ModelArgValue, tuple(items) if isinstance(default, tuple) else items)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{label} must be true or false, not {value!r}")
        return value
    if isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool)):
        raise UsageError(f"{label} must be an integer, not {value!r}")
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{label} must be a number, not {value!r}")
        return float(value)
    # text defaults may take other kinds (an SVC's gamma: 'scale' or a number); the builder checks them (_build)
    return cast(ModelArgValue, value)


def _number(text: str) -> int | float | str:
    """A list item given as text ("512"): the number it spells, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _network_args(entry: ModelEntry, args: ModelArgs) -> ModelArgs:
    """The subset of a baseline's arguments its network form takes (just num_classes)."""
    if entry.baseline is None:
        return args
    return {k: v for k, v in args.items() if k in inspect.signature(entry.builder).parameters}


def _build(entry: ModelEntry, args: ModelArgs) -> Classifier | None:
    """Check a baseline's estimator arguments and build the network form, if there is one."""
    try:
        if entry.baseline is not None:
            entry.baseline.estimator(**{k: v for k, v in args.items() if k != "num_classes"}, seed=0)
        return entry.builder(**_network_args(entry, args)) if entry.builder is not None else None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"model {entry.name!r}: invalid arguments ({exc})") from None


def check_model_args(name: str, model_args: Mapping[str, object] | None) -> ModelArgs:
    """Resolve and check arguments without building weights; returns the full arguments.

    A network is built on the meta device (shapes only, no memory), so a bad value (a zero
    width, an unknown block type) surfaces at configuration time for the price of nothing.
    """
    entry = get_entry(name)
    args = resolve_model_args(name, model_args)
    with torch.device("meta"):
        _build(entry, args)
    return args


def create_model(name: str, **model_args: object) -> Classifier:
    """Build a registered network; it carries its name, full arguments and family."""
    entry = get_entry(name)
    if entry.builder is None:
        raise UsageError(f"{name} is a scikit-learn baseline with no network form (its runs keep results only)")
    args = resolve_model_args(name, model_args)
    model = _build(entry, args)
    if not isinstance(model, Classifier):
        raise TypeError(f"builder of {name!r} returned {type(model).__name__}, not a Classifier")
    model.identity = ModelIdentity(name, args, entry.family)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """Size of parameters and buffers in MB (as stored in float32)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return total / 1e6
