"""`fmnist ablate`: train a model and variants with one part removed or shrunk, over seeds,
and report each variant's accuracy and its difference (Δ) to the full model.

An ablation is a change to a plan of resolved configs, not a mode of its own: the full model's
config is resolved like any run's (its recipe, then the options), each variant is that resolved
config with the one setting it names changed (every dropout rate -> 0, the second convolution
off, the fully connected layer halved, ..., no input normalisation), and the runs train through
the compare path. The variants read the model arguments the full run trains with (its recipe's
and the options', not the builder's defaults: `smaller_widths` of fastcnn halves the 16-32-64 it
trains, or the widths given), and no resolution rule runs again on a variant, so it differs from
"full" in its named setting only. (For that reason no variant turns
flips off: with its mirror TTA kept, a net never trained on mirrors would be scored on them, and
turning the TTA off too would be a second setting.) For `cnn_seed004` the variants are exactly
seed 004's ablation (full, no dropout, single conv, FC 128->64, no normalisation), trained with
that study's set-up, and its published table is shown beside.

An ablation directory is a compare directory plus ablation.json.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from fmnist.config import RawSettings, Settings, TrainConfig
from fmnist.data.dataset import ProvenanceRecord
from fmnist.experiments.compare import run_compare
from fmnist.experiments.plan import ComparePlan, PlannedRun, RunSpec
from fmnist.experiments.session import Session
from fmnist.fsutil import atomic_write_json
from fmnist.inference.rundir import ABLATION_FILE
from fmnist.training.recipes import model_settings

REFERENCE = "full"

# Seed 004's published ablation table (its own split; best epoch picked on the test set).
PUBLISHED: dict[str, dict[str, float]] = {
    "cnn_seed004": {"full": 0.9304, "no_dropout": 0.912, "single_conv": 0.897, "smaller_fc": 0.921,
                    "no_normalization": 0.885},
}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    name: str
    change: str
    values: Settings = field(default_factory=dict)  # TrainConfig fields; model_args merge over the full run's

    def apply(self, full: TrainConfig) -> TrainConfig:
        """`full` (a resolved config) with this variant's setting changed, and nothing else; the keys
        it changes are recorded as set by the ablation (config.toml's [sources])."""
        new_args = self.values.get("model_args", {})
        others = {k: v for k, v in self.values.items() if k != "model_args"}
        changed = [*others, *(f"model_args.{k}" for k in new_args)]
        sources = {**full.sources, **dict.fromkeys(changed, f"ablation {self.name}")} if full.sources else {}
        return dataclasses.replace(full, **others, model_args={**full.model_args, **new_args},
                                   sources=sources).validate()  # fmt: skip


def _halve(sizes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, s // 2) for s in sizes)


def ablation_variants(full: TrainConfig) -> list[Variant]:
    """The full model first, then one variant per part of `full`'s model that can be removed or shrunk."""
    args = full.model_args  # resolved: every argument the full run's net is built with
    variants = [Variant(REFERENCE, "none (the full model)")]
    dropout = {k: v for k, v in args.items() if "dropout" in k and isinstance(v, float) and v > 0}
    if dropout:
        change = "remove dropout (" + ", ".join(f"{k} {v:g} → 0" for k, v in dropout.items()) + ")"
        variants.append(Variant("no_dropout", change, {"model_args": {k: 0.0 for k in dropout}}))
    if args.get("second_conv") is True:
        variants.append(Variant("single_conv", "remove the second convolution", {"model_args": {"second_conv": False}}))
    elif isinstance(args.get("channels"), tuple) and len(args["channels"]) > 1:
        ch = args["channels"]
        variants.append(Variant("fewer_convs", f"drop the last conv stage ({list(ch)} → {list(ch[:-1])})",
                                {"model_args": {"channels": list(ch[:-1])}}))  # fmt: skip
    for arg, label in (("fc", "fully connected"), ("hidden", "hidden"), ("widths", "conv")):
        value = args.get(arg)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            variants.append(
                Variant(f"smaller_{arg}", f"{label} layer {value} → {value // 2}", {"model_args": {arg: value // 2}})
            )
        elif isinstance(value, tuple) and value and all(v > 1 for v in value):
            variants.append(Variant(f"smaller_{arg}", f"{label} sizes {list(value)} → {list(_halve(value))}",
                                    {"model_args": {arg: list(_halve(value))}}))  # fmt: skip
    if args.get("batch_norm") is True:
        variants.append(Variant("no_batch_norm", "remove batch normalisation", {"model_args": {"batch_norm": False}}))
    variants.append(Variant("no_normalization", "raw pixels / 255, no mean/std standardisation", {"normalize": False}))
    return variants


@dataclass(frozen=True)
class Ablation:
    """An ablation of `base`, planned: every variant x seed with its config, resolved and changed."""

    base: str
    seeds: int
    overrides: RawSettings  # the options every run took (epochs=1, ...), as given
    variants: list[Variant]
    plan: ComparePlan  # one run name per variant (each resolves to the full model: the change is in `planned`)
    planned: list[PlannedRun]


def ablation_plan(base: str, seeds: int = 1, overrides: Mapping[str, object] | None = None) -> Ablation:
    """Resolve `base` with its recipe and `overrides`, once per seed, and derive every variant from that config."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    full = ComparePlan([RunSpec(REFERENCE, {"model": base})]).resolve(overrides)[0].config
    variants = ablation_variants(full)
    notes = (f"Ablation of `{base}`: each variant removes or shrinks one part; Δ is its accuracy minus the full "
             f"model's with the same seed.")  # fmt: skip
    if base in PUBLISHED:
        notes += " Training set-up (the model's recipe) and published figures: seed study 004."
    plan = ComparePlan([RunSpec(v.name, {"model": base}) for v in variants], seeds, f"Ablation of {base}", notes,
                       dict(PUBLISHED.get(base, {})))  # fmt: skip
    by_name = {v.name: v for v in variants}
    planned = [dataclasses.replace(run, config=by_name[run.spec_name].apply(run.config))
               for run in plan.resolve(overrides)]  # fmt: skip
    return Ablation(base, seeds, overrides, variants, plan, planned)


class RunScore(TypedDict):
    """One trained run of an ablation, as its summary needs it."""

    name: str  # its variant
    seed: int
    test_accuracy: float


class VariantRow(TypedDict):
    """ablation.json's `variants`: one variant over its seeds, and its Δ to the reference paired by seed."""

    name: str
    change: str
    values: Settings  # what it changes (Variant.values)
    seeds: list[int]
    accuracy: list[float]  # one per seed, in the order of `seeds`
    accuracy_mean: float
    accuracy_std: float
    delta: list[float]  # accuracy minus the reference's with the same seed
    delta_mean: float | None  # None: no seed shared with the reference
    delta_std: float
    published_accuracy: float | None  # the published study's, where there is one
    published_delta: float | None


class AblationFile(TypedDict):
    """ablation.json, beside the ablation's compare.json."""

    base: str
    seeds: int
    reference: str
    setup: Settings  # the base model's own recipe settings
    overrides: RawSettings
    variants: list[VariantRow]
    published_source: str | None
    data: ProvenanceRecord


def summarize_ablation(
    runs: Sequence[RunScore], variants: list[Variant], published: Mapping[str, float]
) -> list[VariantRow]:
    """Per variant: accuracies over seeds, and Δ to the reference paired by seed (pure; tested)."""
    by_name: dict[str, dict[int, float]] = {}
    for run in runs:
        by_name.setdefault(run["name"], {})[run["seed"]] = run["test_accuracy"]
    reference = by_name.get(REFERENCE, {})
    out: list[VariantRow] = []
    for v in variants:
        accs = by_name.get(v.name, {})
        if not accs:
            continue
        deltas = [accs[s] - reference[s] for s in sorted(accs) if s in reference]
        values = [accs[s] for s in sorted(accs)]
        pub = published.get(v.name)
        pub_ref = published.get(REFERENCE)
        out.append(VariantRow(
            name=v.name,
            change=v.change,
            values=v.values,
            seeds=sorted(accs),
            accuracy=values,
            accuracy_mean=statistics.fmean(values),
            accuracy_std=statistics.stdev(values) if len(values) > 1 else 0.0,
            delta=deltas,
            delta_mean=statistics.fmean(deltas) if deltas else None,
            delta_std=statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
            published_accuracy=pub,
            published_delta=pub - pub_ref if pub is not None and pub_ref is not None else None,
        ))  # fmt: skip
    return out


def run_ablation(ablation: Ablation, session: Session) -> AblationFile:
    """Train every variant x seed through the compare path into the session's folder, then write ablation.json."""
    summary = run_compare(ablation.plan, ablation.planned, session)
    scores = [RunScore(name=r.name, seed=r.results.seed, test_accuracy=r.results.test_accuracy)
              for r in summary.runs if r.results is not None]  # fmt: skip
    result: AblationFile = {
        "base": ablation.base,
        "seeds": ablation.seeds,
        "reference": REFERENCE,
        "setup": model_settings(ablation.base),
        "overrides": ablation.overrides,
        "variants": summarize_ablation(scores, ablation.variants, PUBLISHED.get(ablation.base, {})),
        "published_source": "seed study 004" if ablation.base in PUBLISHED else None,
        "data": summary.data,
    }
    atomic_write_json(session.folder / ABLATION_FILE, result)
    return result
