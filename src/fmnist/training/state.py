"""Resumable training state on disk: tensors in safetensors, everything else in JSON. Never a pickle.

What the state holds is the Trainer's business (`Trainer.state_dict()` / `load_state_dict()`, its
progress declared once as a dataclass); this module writes and reads it, turns such a dataclass into
tensors and JSON values and back (`pack` / `unpack`), says which settings a run would resume with
other values than its saved state (`changed_settings`), and snapshots the random generators.

    RUN_DIR/state-<step>.safetensors   model, best-so-far weights, optimizer tensors, RNG states
    RUN_DIR/state.json                  counters, history, scheduler, optimizer hyper-parameters,
                                        Python/NumPy RNG states, the tensor file's name and sha256

Each save writes a new tensor file, then the JSON that names it, then deletes older tensor
files: a kill at any moment leaves a JSON whose tensor file exists and matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from fmnist.config import TrainConfig, saved_values
from fmnist.errors import CheckpointError, FmnistError
from fmnist.fsutil import atomic_write_bytes, atomic_write_json
from fmnist.inference.rundir import STATE_FILE as STATE_META
from fmnist.inference.rundir import STATE_TENSORS_GLOB
from fmnist.models.registry import resolve_model_args

STATE_VERSION = 2  # 2: named epoch sums (with the epoch's own training seconds), EMA weights

T = TypeVar("T")

# A value as JSON holds it: what state.json stores (dataclasses and tuples are written as objects and lists).
JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


class OptimizerStateDict(TypedDict):
    """`torch.optim.Optimizer.state_dict()`: each parameter's slots by its index, and each group's settings
    (torch's and the optimizer's hyper-parameters, with "params": the indices of its parameters)."""

    state: dict[int, dict[str, torch.Tensor | JsonValue]]
    param_groups: list[dict[str, JsonValue]]


class OptimizerMeta(TypedDict):
    """state.json's `optimizer`: an OptimizerStateDict less its tensors, which are in the tensor file."""

    param_groups: list[dict[str, JsonValue]]
    scalars: dict[str, dict[str, JsonValue]]  # parameter index -> its slots that are not tensors


class RngMeta(TypedDict):
    """state.json's `rng`: the generators that are not tensors (those are in the tensor file)."""

    python: list[JsonValue]  # random.getstate(): [version, state, gauss]
    numpy: list[JsonValue]  # np.random.get_state(): [name, keys, pos, has_gauss, cached]


@dataclass
class SavedState:
    """state.json: everything a run needs besides its tensors to continue exactly.

    The file keeps the layout it always had: the trainer's progress (its `Progress`, packed field by
    field) sits at the top level, between the tensor file's sha256 and `config`.
    """

    progress: dict[str, JsonValue]  # `pack`'s JSON values
    config: dict[str, JsonValue]  # TrainConfig.to_dict() as it was saved
    optimizer: OptimizerMeta
    scheduler: dict[str, JsonValue] | None  # the LR scheduler's state_dict (torch's keys); None: no scheduler
    rng: RngMeta
    data_sha256: dict[str, str]  # role -> sha256 of the data file the run trained on
    tensors_file: str = ""  # set by save_state: the tensor file this JSON belongs to
    tensors_sha256: str = ""
    state_version: int = STATE_VERSION

    def to_json(self) -> dict[str, JsonValue]:
        head = {"state_version": self.state_version, "tensors_file": self.tensors_file,
                "tensors_sha256": self.tensors_sha256}  # fmt: skip
        tail = {"config": self.config, "optimizer": self.optimizer, "scheduler": self.scheduler, "rng": self.rng,
                "data_sha256": self.data_sha256}  # fmt: skip
        return {**head, **self.progress, **tail}

    @classmethod
    def from_json(cls, row: dict[str, JsonValue], where: Path) -> SavedState:
        named = {f.name for f in dataclasses.fields(cls)} - {"progress"}
        missing = sorted(named - row.keys() - {"tensors_file", "tensors_sha256", "state_version"})
        if missing:
            raise CheckpointError(f"{where}: unreadable training state (missing {', '.join(missing)})")
        progress = {k: v for k, v in row.items() if k not in named}
        return cls(progress=progress, **{k: v for k, v in row.items() if k in named})


# Settings that do not shape the saved state: where the data files are (their sha256 is checked
# instead), TensorBoard logging, and the recipe's name (its settings are the other keys).
NOT_IN_STATE = ("data_dir", "tensorboard", "recipe")


def changed_settings(saved: dict[str, JsonValue], config: TrainConfig) -> list[str]:
    """The settings `config` gives other values than the saved state's config, as "key: saved -> now".

    Keys the saved config lacks (settings added since) take the values they meant then
    (fmnist.config.saved_values), so a new setting left at its default resumes an older run.
    """
    now = config.to_dict()
    then = {**type(config)().to_dict(), **saved_values(saved)}
    try:
        then["model_args"] = resolve_model_args(then["model"], then["model_args"])
        now["model_args"] = resolve_model_args(config.model, config.model_args)
    except FmnistError:  # a model or argument this version no longer has
        return ["model"]
    return [f"{key}: {then.get(key)!r} -> {value!r}" for key, value in now.items()
            if key not in NOT_IN_STATE and then.get(key) != value]  # fmt: skip


def pack(state: Any) -> tuple[dict[str, torch.Tensor], dict[str, JsonValue]]:
    """A dataclass of resumable state as (tensors, JSON values), field by field: a tensor under its
    field's name, a dict of tensors under `FIELD.KEY`, anything else (numbers, dataclasses, named
    tuples, lists of them) as JSON under the field's name. A None tensor field is left out."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, JsonValue] = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            tensors[f.name] = value.detach().cpu()
        elif _holds_tensors(_hints(type(state))[f.name]):
            tensors.update({f"{f.name}.{k}": v.detach().cpu() for k, v in (value or {}).items()})
        else:
            values[f.name] = _to_json(value)
    return tensors, values


def unpack(kind: type[T], tensors: dict[str, torch.Tensor], values: dict[str, JsonValue]) -> T:
    """`pack`'s output back into `kind`; a field the saved state lacks (one added since) takes its default."""
    found: dict[str, object] = {}  # field -> its value, whatever the field's type
    for name, hint in _hints(kind).items():
        if _holds_tensors(hint):
            prefix = f"{name}."
            part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if part:  # else the default (None: none saved)
                found[name] = part
        elif name in tensors:
            found[name] = tensors[name]
        elif name in values:
            found[name] = _from_json(hint, values[name])
    return kind(**found)


def _hints(kind: type) -> dict[str, Any]:
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _holds_tensors(hint: Any) -> bool:
    """A `dict[str, torch.Tensor]` field (optionally `| None`): saved in the tensor file."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    return any(typing.get_origin(h) is dict and typing.get_args(h)[1:] == (torch.Tensor,) for h in inner)


def _to_json(value: Any) -> JsonValue:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(hint: Any, value: JsonValue) -> Any:
    if value is None:
        return None
    if _is_union(hint):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{k: _from_json(hints[k], v) for k, v in value.items() if k in hints})
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):  # a NamedTuple
        return hint(*value)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return [_from_json(item, v) for v in value]
    return value


def flatten_optimizer(state: OptimizerStateDict) -> tuple[dict[str, torch.Tensor], OptimizerMeta]:
    """Split an optimizer state_dict into tensors (safetensors) and plain values (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, JsonValue]] = {}
    for param_id, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, OptimizerMeta(param_groups=state["param_groups"], scalars=scalars)


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: OptimizerMeta) -> OptimizerStateDict:
    state: dict[int, dict[str, torch.Tensor | JsonValue]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, slots in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(slots)
    return OptimizerStateDict(state=state, param_groups=meta["param_groups"])


def save_state(folder: Path, tensors: dict[str, torch.Tensor], saved: SavedState, generation: int) -> None:
    folder = Path(folder)
    blob = save_safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    name = f"state-{generation}.safetensors"
    atomic_write_bytes(folder / name, blob)
    saved = dataclasses.replace(saved, state_version=STATE_VERSION, tensors_file=name,
                                tensors_sha256=hashlib.sha256(blob).hexdigest())  # fmt: skip
    atomic_write_json(folder / STATE_META, saved.to_json())
    for old in folder.glob(STATE_TENSORS_GLOB):
        if old.name != name:
            old.unlink(missing_ok=True)


def clear_state(folder: Path) -> None:
    (Path(folder) / STATE_META).unlink(missing_ok=True)  # first: without it the tensors are ignored
    for old in Path(folder).glob(STATE_TENSORS_GLOB):
        old.unlink(missing_ok=True)


def has_state(folder: Path) -> bool:
    return (Path(folder) / STATE_META).is_file()


def load_state(folder: Path) -> tuple[dict[str, torch.Tensor], SavedState]:
    folder = Path(folder)
    meta_path = folder / STATE_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("state_version") != STATE_VERSION:
            version = meta.get("state_version") if isinstance(meta, dict) else None
            raise CheckpointError(f"{meta_path}: unsupported training-state version {version!r}")
        tensor_path = folder / Path(str(meta.get("tensors_file"))).name  # never a path outside the run
        blob = tensor_path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{folder}: no resumable state ({Path(exc.filename).name} is missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable training state ({exc})") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise CheckpointError(f"{tensor_path}: does not match {STATE_META} (damaged or from another run)")
    saved = SavedState.from_json(meta, meta_path)
    try:
        return load_safetensors_bytes(blob), saved
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{tensor_path}: not a valid safetensors file ({exc})") from None


def rng_snapshot(loader_generator: torch.Generator) -> tuple[dict[str, torch.Tensor], RngMeta]:
    import random

    import numpy as np

    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py_version, py_state, py_gauss = random.getstate()
    meta = RngMeta(
        python=[py_version, list(py_state), py_gauss],
        numpy=[np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    )
    return tensors, meta


def rng_restore(tensors: dict[str, torch.Tensor], meta: RngMeta, loader_generator: torch.Generator) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["rng.torch"])
    loader_generator.set_state(tensors["rng.loader"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
