"""`fmnist ablate`: train a model and variants with one part removed or shrunk, over seeds,
and report each variant's accuracy and its difference (Δ) to the full model.

The variants are derived from the base model's arguments (any dropout -> 0, the second
convolution off, the fully connected layer halved, ...) plus "no input normalisation". For
`cnn_seed004` they are exactly seed 004's ablation (full, no dropout, single conv, FC 128->64,
no normalisation), trained with that study's set-up, and its published table is shown beside.

Built on fmnist.experiments.compare: an ablation directory is a compare directory plus ablation.json.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.experiments.compare import run_compare
from fmnist.experiments.executor import Executor
from fmnist.experiments.plan import ComparePlan, PlannedRun, RunSpec
from fmnist.fsutil import atomic_write_json
from fmnist.inference.rundir import ABLATION_FILE
from fmnist.models.registry import get_entry
from fmnist.training.recipes import model_settings
from fmnist.training.results import RunResult, TrainCallback

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
    values: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields; model_args merge over the base's


def _halve(sizes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, s // 2) for s in sizes)


def ablation_variants(base: str) -> list[Variant]:
    """The full model first, then one variant per part the base model lets us remove or shrink."""
    defaults = get_entry(base).defaults
    variants = [Variant(REFERENCE, "none (the full model)")]
    dropout = {k: v for k, v in defaults.items() if "dropout" in k and isinstance(v, float) and v > 0}
    if dropout:
        change = "remove dropout (" + ", ".join(f"{k} {v:g} → 0" for k, v in dropout.items()) + ")"
        variants.append(Variant("no_dropout", change, {"model_args": {k: 0.0 for k in dropout}}))
    if defaults.get("second_conv") is True:
        variants.append(Variant("single_conv", "remove the second convolution", {"model_args": {"second_conv": False}}))
    elif isinstance(defaults.get("channels"), tuple) and len(defaults["channels"]) > 1:
        ch = defaults["channels"]
        variants.append(Variant("fewer_convs", f"drop the last conv stage ({list(ch)} → {list(ch[:-1])})",
                                {"model_args": {"channels": list(ch[:-1])}}))  # fmt: skip
    for arg, label in (("fc", "fully connected"), ("hidden", "hidden"), ("widths", "conv")):
        value = defaults.get(arg)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            variants.append(
                Variant(f"smaller_{arg}", f"{label} layer {value} → {value // 2}", {"model_args": {arg: value // 2}})
            )
        elif isinstance(value, tuple) and value and all(v > 1 for v in value):
            variants.append(Variant(f"smaller_{arg}", f"{label} sizes {list(value)} → {list(_halve(value))}",
                                    {"model_args": {arg: list(_halve(value))}}))  # fmt: skip
    if defaults.get("batch_norm") is True:
        variants.append(Variant("no_batch_norm", "remove batch normalisation", {"model_args": {"batch_norm": False}}))
    variants.append(Variant("no_normalization", "raw pixels / 255, no mean/std standardisation", {"normalize": False}))
    return variants


def ablation_plan(base: str, seeds: int = 1) -> tuple[ComparePlan, list[Variant]]:
    variants = ablation_variants(base)
    specs = []
    for v in variants:
        values = {"model": base, **{k: x for k, x in v.values.items() if k != "model_args"}}
        if "model_args" in v.values:
            values["model_args"] = dict(v.values["model_args"])
        specs.append(RunSpec(v.name, values))
    notes = (f"Ablation of `{base}`: each variant removes or shrinks one part; Δ is its accuracy minus the full "
             f"model's with the same seed.")  # fmt: skip
    if base in PUBLISHED:
        notes += " Training set-up (the model's recipe) and published figures: seed study 004."
    return ComparePlan(specs, seeds, f"Ablation of {base}", notes, dict(PUBLISHED.get(base, {}))), variants


def summarize_ablation(
    runs: list[dict[str, Any]], variants: list[Variant], published: dict[str, float]
) -> list[dict[str, Any]]:
    """Per variant: accuracies over seeds, and Δ to the reference paired by seed (pure; tested)."""
    by_name: dict[str, dict[int, float]] = {}
    for run in runs:
        by_name.setdefault(run["name"], {})[run["seed"]] = run["test_accuracy"]
    reference = by_name.get(REFERENCE, {})
    out = []
    for v in variants:
        accs = by_name.get(v.name, {})
        if not accs:
            continue
        deltas = [accs[s] - reference[s] for s in sorted(accs) if s in reference]
        values = [accs[s] for s in sorted(accs)]
        pub = published.get(v.name)
        pub_ref = published.get(REFERENCE)
        out.append({
            "name": v.name,
            "change": v.change,
            "values": v.values,
            "seeds": sorted(accs),
            "accuracy": values,
            "accuracy_mean": statistics.fmean(values),
            "accuracy_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "delta": deltas,
            "delta_mean": statistics.fmean(deltas) if deltas else None,
            "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
            "published_accuracy": pub,
            "published_delta": pub - pub_ref if pub is not None and pub_ref is not None else None,
        })  # fmt: skip
    return out


def run_ablation(
    base: str,
    out_dir: Path,
    dataset: FashionMNIST,
    *,
    seeds: int = 1,
    overrides: dict[str, Any] | None = None,
    ablation: tuple[ComparePlan, list[Variant]] | None = None,
    planned: list[PlannedRun] | None = None,
    make_callbacks: Callable[[str, TrainConfig], list[TrainCallback]] = lambda name, cfg: [],
    on_result: Callable[[str, RunResult], None] = lambda name, result: None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Train every variant x seeds into `out_dir` (a compare directory) and write ablation.json.

    `ablation` is `ablation_plan(base, seeds)` and `planned` its resolved runs, where the caller
    has built them already.
    """
    plan, variants = ablation or ablation_plan(base, seeds)
    summary = run_compare(plan, out_dir, dataset, planned=planned, overrides=overrides, make_callbacks=make_callbacks,
                          on_result=on_result, executor=executor)  # fmt: skip
    ablation = {
        "base": base,
        "seeds": seeds,
        "reference": REFERENCE,
        "setup": model_settings(base),
        "overrides": {k: v for k, v in (overrides or {}).items() if v is not None},
        "variants": summarize_ablation(summary["runs"], variants, plan.published),
        "published_source": "seed study 004" if base in PUBLISHED else None,
        "data": summary["data"],
    }
    atomic_write_json(Path(out_dir) / ABLATION_FILE, ablation)
    return ablation
