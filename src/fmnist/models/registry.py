"""Models registered by name: `create_model("cnn", ...)` is the one constructor everything uses."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fmnist.errors import UsageError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    family: str  # "mlp", "cnn", "resnet", "classical": what analysis applies (e.g. Grad-CAM needs convs)
    defaults: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)  # training settings this model is tuned for

    def accepted_args(self) -> list[str]:
        return [p for p in inspect.signature(self.builder).parameters if p != "num_classes"]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None,
    *,
    description: str = "",
    family: str = "cnn",
    recipe: dict[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder `fn(**kwargs) -> nn.Module` under `name`.

    `recipe` holds the training settings (epochs, optimizer, ...) `fmnist train` uses for
    this model unless a config file or flag says otherwise.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        defaults = {
            p.name: p.default
            for p in inspect.signature(builder).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name != "num_classes"
        }
        summary = description or next(iter((inspect.getdoc(builder) or "").splitlines()), "")
        _REGISTRY[key] = ModelEntry(key, builder, summary, family, defaults, dict(recipe or {}))
        return builder

    return decorate


def _ensure_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from fmnist.models import classical, cnn, mlp, resnet  # noqa: F401


def get_entry(name: str) -> ModelEntry:
    _ensure_builtin_models()
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def get_recipe(name: str) -> dict[str, Any]:
    return dict(get_entry(name).recipe)


def list_models() -> list[str]:
    _ensure_builtin_models()
    return sorted(_REGISTRY)


def resolve_model_args(name: str, model_args: dict[str, Any] | None) -> dict[str, Any]:
    """The builder's defaults overlaid with `model_args`; unknown names are a UsageError."""
    entry = get_entry(name)
    args = dict(entry.defaults)
    for key, value in (model_args or {}).items():
        if key not in entry.defaults:
            accepted = ", ".join(entry.accepted_args()) or "none"
            raise UsageError(f"model {name!r} has no argument {key!r} (accepted: {accepted})")
        args[key] = _coerce_like(value, entry.defaults[key], f"{name}.{key}")
    return args


def _coerce_like(value: Any, default: Any, label: str) -> Any:
    """TOML and JSON give lists where builders take tuples; keep bools and numbers honest."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise UsageError(f"{label} must be true or false, not {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def create_model(name: str, **model_args: Any) -> nn.Module:
    """Build a registered model; the instance remembers its name and arguments for checkpoints."""
    entry = get_entry(name)
    args = resolve_model_args(name, model_args)
    try:
        model = entry.builder(**args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"model {name!r}: invalid arguments ({exc})") from None
    model.model_name = name
    model.model_args = args
    model.family = entry.family
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """Size of parameters and buffers in MB (as stored in float32)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return total / 1e6
