"""`fmnist sweep` configs: the base training settings, a [sweep] table and a [search] table.

    model = "fastcnn"              # any `fmnist train` key: the base of every trial
    epochs = 8                     # ASHA's max: no trial trains longer
    [sweep]
    num_samples = 16               # trials (each one also takes every combination of grid values)
    metric = "val_accuracy"        # or val_loss, train_accuracy, train_loss; never a test metric
    scheduler = "asha"             # or "none"
    grace_period = 2               # ASHA: epochs every trial gets before it can be stopped
    reduction_factor = 3           # ASHA: at each rung only the best 1/3 go on
    cpus_per_trial = 1             # fractions allowed (0.5: two trials share a CPU)
    gpus_per_trial = 0             # fractions allowed
    max_failures = 3               # retries of a trial whose worker died, each from its last epoch
    max_concurrent_trials = 0      # 0: as many as the cluster's free resources allow
    seed = 0                       # of the search's random draws (each trial trains with `seed`)
    [search]
    lr = { loguniform = [1e-4, 1e-2] }
    weight_decay = { choice = [0.0, 0.05] }
    batch_size = { grid = [64, 128] }
    crop_pad = { randint = [0, 3] }           # both ends included
    label_smoothing = { uniform = [0.0, 0.2] }
    "model_args.dropout" = { uniform = [0.0, 0.5] }

Everything is checked here, before Ray starts: unknown keys, empty ranges, a range whose ends
are not valid values of the option, a test metric.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fmnist.config import FIELD_TYPES, RawSettings, SettingValue, TrainConfig, merged
from fmnist.errors import UsageError
from fmnist.fsutil import read_toml
from fmnist.models.base import ModelArgValue
from fmnist.training.settings import resolve_config

# A sweep directory:
#   sweep.toml        the sweep config as given (what --resume reads)
#   sweep.json        every trial: config, metrics per epoch, why it stopped; the best trial
#   best.toml         the best trial's full config, for `fmnist train --config best.toml`
#   trials/trial-NNN/ one ordinary fmnist run directory per trial (resumable)
#   ray/              Ray Tune's experiment state and each trial's epoch checkpoints
#   report.md, report.html, figures/

METRICS = {"val_accuracy": "max", "val_loss": "min", "train_accuracy": "max", "train_loss": "min"}
SCHEDULERS = ("asha", "none")
SEARCH_KINDS = ("choice", "uniform", "loguniform", "randint", "grid")
MODEL_ARG = "model_args."  # "model_args.dropout" searches one model argument
NOT_SEARCHABLE = ("data_dir",)  # every trial trains on the driver's data, shipped to it
# A searched option's value: a setting's, or one model argument's (model_args.NAME). As the [search]
# table lists it; parse_sweep resolves a config with each before anything runs.
OptionValue = SettingValue | ModelArgValue


@dataclass
class SweepSettings:
    num_samples: int = 8
    metric: str = "val_accuracy"
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 3.0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 3
    max_concurrent_trials: int = 0
    seed: int = 0


@dataclass(frozen=True)
class SearchDim:
    """One searched option: choice/grid list their values; uniform/loguniform/randint give (low, high)."""

    key: str
    kind: str
    values: tuple[OptionValue, ...]

    @property
    def candidates(self) -> tuple[OptionValue, ...]:
        """The values that bound what a trial can get: every listed value, or both ends of a range."""
        return self.values

    def tune_domain(self) -> object:  # a Ray Tune domain (Ray is optional: not imported to type it)
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        low, high = self.values
        if self.kind == "randint":
            return tune.randint(low, high + 1)  # Tune excludes the upper end; ours is included
        return tune.loguniform(low, high) if self.kind == "loguniform" else tune.uniform(low, high)

    def to_toml(self) -> dict[str, list[OptionValue]]:
        return {self.kind: list(self.values)}


@dataclass
class SweepSpec:
    base: RawSettings  # training keys as a config file gives them (overrides included)
    settings: SweepSettings
    search: tuple[SearchDim, ...]
    source: str = "sweep config"  # where it came from, for messages
    base_config: TrainConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_config = resolve_config(file_values=self.base, origin=self.source)

    @property
    def mode(self) -> str:
        return METRICS[self.settings.metric]

    @property
    def max_epochs(self) -> int:
        epochs = [dim for dim in self.search if dim.key == "epochs"]
        return max(epochs[0].candidates) if epochs else self.base_config.epochs

    @property
    def total_trials(self) -> int:
        return self.settings.num_samples * math.prod(len(d.values) for d in self.search if d.kind == "grid")

    def trial_values(self, sampled: Mapping[str, object]) -> RawSettings:
        """The base's config-file values with a trial's sampled ones on top (Tune's draws, or a candidate)."""
        sampled = {key: plain_value(value) for key, value in sampled.items()}
        values = {k: v for k, v in sampled.items() if not k.startswith(MODEL_ARG)}
        args = {k[len(MODEL_ARG) :]: v for k, v in sampled.items() if k.startswith(MODEL_ARG)}
        return merged(self.base, {**values, "model_args": args} if args else values)

    def trial_config(self, sampled: Mapping[str, object]) -> TrainConfig:
        """A trial's config: its draws are the sweep file's values, as its [search] table wrote them."""
        return resolve_config(file_values=self.trial_values(sampled), origin=self.source)

    def param_space(self) -> dict[str, object]:  # option -> its Ray Tune domain
        return {dim.key: dim.tune_domain() for dim in self.search}

    def to_toml(self) -> str:
        settings = dataclasses.asdict(self.settings)
        return tomli_w.dumps({**self.base, "sweep": settings, "search": {d.key: d.to_toml() for d in self.search}})


def format_metric(metric: str, value: float | None) -> str:
    """91.23% for accuracies, 0.2345 for losses."""
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if metric.endswith("accuracy") else f"{value:.4f}"


def plain_value(value: object) -> object:
    """Tune may hand out NumPy scalars; config fields want Python numbers."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _settings(table: object, where: str) -> SweepSettings:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: [sweep] must be a table")
    defaults = SweepSettings()
    known = [f.name for f in dataclasses.fields(SweepSettings)]
    values = {}
    for key, value in table.items():
        if key not in known:
            raise UsageError(f"{where}: [sweep] has no key {key!r} (known: {', '.join(known)})")
        kind = type(getattr(defaults, key))
        ok = (
            isinstance(value, kind)
            if kind is str
            else (_is_number(value) and (kind is float or isinstance(value, int)))
        )
        if not ok:
            expected = {str: "text", int: "an integer", float: "a number"}[kind]
            raise UsageError(f"{where}: [sweep] {key} must be {expected}, not {value!r}")
        values[key] = float(value) if kind is float else value
    s = SweepSettings(**values)
    if s.metric.startswith("test"):
        raise UsageError(f"{where}: [sweep] metric {s.metric!r} is refused: a sweep chooses on validation data, "
                         "never on the test set (use val_accuracy or val_loss)")  # fmt: skip
    checks = [
        (s.metric in METRICS, f"metric must be one of {', '.join(METRICS)}, not {s.metric!r}"),
        (s.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, not {s.scheduler!r}"),
        (s.num_samples >= 1, f"num_samples must be at least 1, not {s.num_samples}"),
        (s.grace_period >= 1, f"grace_period must be at least 1 epoch, not {s.grace_period}"),
        (s.reduction_factor > 1, f"reduction_factor must be above 1, not {s.reduction_factor:g}"),
        (s.cpus_per_trial > 0, f"cpus_per_trial must be above 0, not {s.cpus_per_trial:g}"),
        (s.gpus_per_trial >= 0, f"gpus_per_trial must be 0 or more, not {s.gpus_per_trial:g}"),
        (s.max_failures >= 0, f"max_failures must be 0 or more, not {s.max_failures}"),
        (s.max_concurrent_trials >= 0, f"max_concurrent_trials must be 0 or more, not {s.max_concurrent_trials}"),
        (s.seed >= 0, f"seed must be 0 or more, not {s.seed}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise UsageError(f"{where}: [sweep] {message}")
    return s


def _search_dim(key: str, spec: object, where: str) -> SearchDim:
    searchable = sorted(k for k in FIELD_TYPES if k not in NOT_SEARCHABLE)
    name = key[len(MODEL_ARG) :] if key.startswith(MODEL_ARG) else None
    if name is None and (key not in FIELD_TYPES or key in NOT_SEARCHABLE) or name == "":
        raise UsageError(f"{where}: [search] key {key!r} is not a training option "
                         f"(searchable: {', '.join(searchable)}, model_args.NAME)")  # fmt: skip
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
        raise UsageError(f"{where}: [search] {key}: write {key} = {{ KIND = [...] }} with KIND one of "
                         f"{', '.join(SEARCH_KINDS)}")  # fmt: skip
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise UsageError(f"{where}: [search] {key}: {kind} needs a non-empty list, not {values!r}")
    if kind in ("choice", "grid"):
        return SearchDim(key, kind, tuple(values))
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise UsageError(f"{where}: [search] {key}: {kind} needs [low, high], two numbers, not {values!r}")
    low, high = values
    field_type = FIELD_TYPES.get(key) if name is None else None
    if kind == "randint":
        if not all(isinstance(v, int) for v in values):
            raise UsageError(f"{where}: [search] {key}: randint needs two integers, not {values!r}")
        if field_type not in (None, int, float):
            raise UsageError(f"{where}: [search] {key}: randint draws numbers; {key} is not a number")
        if high < low:
            raise UsageError(f"{where}: [search] {key}: randint range [{low}, {high}] is empty (needs low <= high)")
        return SearchDim(key, kind, (low, high))
    if field_type not in (None, float):
        raise UsageError(f"{where}: [search] {key}: {kind} draws fractions; use randint or choice for {key}")
    if not low < high:
        raise UsageError(f"{where}: [search] {key}: {kind} range [{low:g}, {high:g}] is empty (needs low < high)")
    if kind == "loguniform" and low <= 0:
        raise UsageError(f"{where}: [search] {key}: loguniform needs 0 < low, not {low:g}")
    return SearchDim(key, kind, (float(low), float(high)))


def parse_sweep(data: Mapping[str, object], where: str, overrides: Mapping[str, object] | None = None) -> SweepSpec:
    """A SweepSpec from a parsed TOML table; every problem is a one-line UsageError naming its key."""
    data = dict(data)
    settings = _settings(data.pop("sweep", {}), where)
    search_table = data.pop("search", None)
    if not isinstance(search_table, dict) or not search_table:
        raise UsageError(
            f"{where}: needs a [search] table with at least one option, e.g. lr = {{ loguniform = [1e-4, 1e-2] }}"
        )
    base = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        spec = SweepSpec(base, settings, tuple(_search_dim(k, v, where) for k, v in search_table.items()), where)
    except UsageError as exc:
        raise UsageError(exc.args[0] if str(exc).startswith(where) else f"{where}: {exc}") from None
    for dim in spec.search:
        for value in dim.candidates:
            try:
                config = spec.trial_config({dim.key: value})
            except UsageError as exc:
                reason = str(exc).removeprefix(f"{where}: ")
                raise UsageError(f"{where}: [search] {dim.key} = {value!r}: {reason}") from None
            if settings.metric.startswith("val_") and config.val_size == 0:
                raise UsageError(f"{where}: [sweep] metric {settings.metric} needs a validation split, "
                                 f"but [search] {dim.key} = {value!r} leaves val_size at 0")  # fmt: skip
    if settings.scheduler == "asha" and settings.grace_period > spec.max_epochs:
        raise UsageError(f"{where}: [sweep] grace_period ({settings.grace_period}) must be at most the epochs "
                         f"({spec.max_epochs})")  # fmt: skip
    return spec


def read_sweep(path: Path, overrides: Mapping[str, object] | None = None) -> SweepSpec:
    path = Path(path)
    data = read_toml(path, "sweep config")
    return parse_sweep(data, str(path), overrides)
