"""Checkpoints: safetensors weights + JSON metadata. Never a pickle.

`model.safetensors` holds the tensors; `model.json` says how to rebuild the model (name,
arguments, class names, normalisation) and records the weights file's sha256, so a
truncated or swapped weights file is caught before any tensor is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from fmnist import __version__
from fmnist.constants import CLASS_NAMES, TTA_LEVELS
from fmnist.data.normalize import blank_value
from fmnist.errors import CheckpointError, FmnistError, RunPathError, UsageError
from fmnist.fsutil import atomic_write_bytes, atomic_write_json
from fmnist.inference.rundir import META_FILE, WEIGHTS_FILE
from fmnist.inference.tta import TestTimeAugmentation, tta_level

FORMAT = "fmnist-checkpoint"
FORMAT_VERSION = 1


class Normalization(TypedDict):
    mean: float
    std: float


class ModelMeta(TypedDict):
    """model.json as written and read. Inference reads the same keys from an ensemble's
    ensemble.json (model, class_names, normalization, tta), so both travel as a ModelMeta."""

    format: str
    format_version: int
    fmnist_version: NotRequired[str]
    torch_version: NotRequired[str]
    model: str
    model_args: dict[str, Any]
    class_names: list[str]
    normalization: Normalization
    tta: NotRequired[str]  # set by read_meta; fmnist 0.1 files say `tta_flip` instead
    tta_flip: NotRequired[bool]
    params: NotRequired[int]
    weights_file: NotRequired[str]
    weights_sha256: str
    tensors: dict[str, list[int]]
    extra: NotRequired[dict[str, Any]]  # e.g. test accuracy, data provenance


class TTASettings(TypedDict):
    tta: str
    blank: float


@dataclass
class CheckpointMeta:
    model: str
    model_args: dict[str, Any]
    mean: float
    std: float
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    tta: str = "none"  # test-time augmentation level (fmnist.inference.tta)
    params: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. test accuracy, data provenance

    def to_json(self, weights_sha256: str, tensors: dict[str, list[int]]) -> ModelMeta:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fmnist_version": __version__,
            "torch_version": torch.__version__,
            "model": self.model,
            "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_args.items()},
            "class_names": list(self.class_names),
            "normalization": {"mean": self.mean, "std": self.std},
            "tta": self.tta,
            "params": self.params,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": weights_sha256,
            "tensors": tensors,
            **({"extra": self.extra} if self.extra else {}),
        }


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}


def save_checkpoint(folder: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write weights then metadata, each atomically; the metadata names the weights' sha256."""
    folder = Path(folder)
    tensors = _state_tensors(model)
    blob = save_safetensors_bytes(tensors)
    atomic_write_bytes(folder / WEIGHTS_FILE, blob)
    shapes = {name: list(t.shape) for name, t in tensors.items()}
    atomic_write_json(folder / META_FILE, meta.to_json(hashlib.sha256(blob).hexdigest(), shapes))


def checkpoint_folder(path: Path) -> Path:
    """Accept a run directory, its model.json or its model.safetensors."""
    path = Path(path)
    if path.is_file() and path.name in (META_FILE, WEIGHTS_FILE):
        return path.parent
    if path.is_dir():
        return path
    if not path.exists():
        raise RunPathError(f"{path}: no such run directory or checkpoint")
    raise RunPathError(f"{path}: not a run directory (expected a folder with {META_FILE} and {WEIGHTS_FILE})")


def read_meta(folder: Path) -> ModelMeta:
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: no checkpoint here ({META_FILE} is missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an fmnist checkpoint (missing format marker)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{meta_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: checkpoint format version {version} is newer than this fmnist "
            f"understands ({FORMAT_VERSION}); upgrade fmnist to load it"
        )
    for key, kind in (("model", str), ("model_args", dict), ("class_names", list), ("normalization", dict),
                      ("weights_sha256", str), ("tensors", dict)):  # fmt: skip
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{meta_path}: field {key!r} is missing or has the wrong type")
    norm = meta["normalization"]
    if not all(isinstance(norm.get(k), (int, float)) for k in ("mean", "std")) or not norm["std"] > 0:
        raise CheckpointError(f"{meta_path}: normalization must have a numeric mean and a positive std")
    level = tta_level(meta)  # fmnist 0.1 files record `tta_flip` instead
    if level not in TTA_LEVELS:
        raise CheckpointError(f"{meta_path}: tta must be one of {', '.join(TTA_LEVELS)}, not {level!r}")
    meta["tta"] = level
    return meta


def normalization(meta: ModelMeta) -> tuple[float, float]:
    """(mean, std) of a checkpoint's (or ensemble's) input normalisation."""
    norm = meta["normalization"]
    return float(norm["mean"]), float(norm["std"])


def tta_settings(meta: ModelMeta) -> TTASettings:
    """`fmnist.inference.evaluate.predict`'s `tta` and `blank` arguments for what a checkpoint records."""
    return {"tta": tta_level(meta), "blank": blank_value(*normalization(meta))}


def with_tta(model: nn.Module, meta: ModelMeta) -> nn.Module:
    """The model as its checkpoint says to run it: averaged over its TTA views (fmnist.inference.tta)."""
    settings = tta_settings(meta)
    return TestTimeAugmentation(model, settings["tta"], settings["blank"]).eval()


def _read_weights(folder: Path, meta: ModelMeta) -> dict[str, torch.Tensor]:
    weights_path = folder / WEIGHTS_FILE
    try:
        blob = weights_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: weights file is missing") from None
    except OSError as exc:
        raise CheckpointError(f"{weights_path}: cannot read ({exc.strerror})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path}: sha256 {digest[:12]}… does not match the {meta['weights_sha256'][:12]}… "
            f"recorded in {META_FILE} (truncated, replaced or edited file)"
        )
    try:
        # safetensors parses a JSON header and raw tensor bytes: no code can run from the file.
        return load_safetensors_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path}: not a valid safetensors file ({exc})") from None


def _check_tensors(folder: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{folder}: weights lack {len(missing)} tensor(s) the model needs, e.g. {missing[0]!r}")
    if extra:
        raise CheckpointError(
            f"{folder}: weights hold {len(extra)} tensor(s) the model does not have, e.g. {extra[0]!r}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{folder}: tensor {name!r} has shape {list(tensors[name].shape)}, the model expects {list(shape)}"
            )


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model from a run directory; returns (model in eval mode, metadata dict)."""
    from fmnist.models.base import Classifier
    from fmnist.models.registry import create_model, saved_model_args

    folder = checkpoint_folder(path)
    meta = read_meta(folder)
    try:
        model = create_model(meta["model"], **saved_model_args(meta["model"], meta["model_args"]))
    except UsageError as exc:
        raise CheckpointError(f"{folder / META_FILE}: {exc}") from None
    tensors = _read_weights(folder, meta)
    _check_tensors(folder, model, tensors)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # dtype trouble, which the shape check cannot see
        raise CheckpointError(f"{folder}: weights do not fit the model ({str(exc).splitlines()[0]})") from None
    model.eval()
    try:
        model.place(device) if isinstance(model, Classifier) else model.to(device)
    except (RuntimeError, FmnistError) as exc:
        raise CheckpointError(f"cannot move the model to {device}: {exc}") from None
    return model, meta
