"""Building an ensemble directory from run directories: chosen on validation, then tested once.

Members are loaded and run by fmnist.inference.ensemble_model. Here they are scored on the
validation split they share (the images none of them trained on), where the selection rule of
fmnist.inference.ensemble_select picks the members and their weights; only then is the test
split scored, once, and the directory written.

Each run holds out `val_size` training images drawn by its split seed (`split_seed`, or its own
seed when that is -1). Only members that held out the same images, from the same training file,
can be averaged on them: any other member trained on some of those images (fmnist.inference.ensemble_holdout).
Train the runs that an ensemble will compare with one `split_seed`; runs with different hold-outs get a reason
instead of figures, and unless greedy selection was asked for by name, every one of them is averaged.
Last, the ensemble's own temperature, unknown threshold and conformal scores are fitted on the images no
chosen member trained on (fmnist.inference.ensemble_trust) and written beside its results.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_safetensors_bytes

from fmnist import __version__
from fmnist.analysis.calibration import DEFAULT_BINS, calibration
from fmnist.data.splits import stratified_split
from fmnist.device import resolve_precision
from fmnist.errors import UsageError
from fmnist.fsutil import atomic_write_bytes
from fmnist.inference.checkpoint import normalization
from fmnist.inference.ensemble_holdout import DIFFERENT, shared_holdout
from fmnist.inference.ensemble_model import (
    FORMAT,
    FORMAT_VERSION,
    MODEL_NAME,
    PREDICTIONS_FILE,
    EnsembleModel,
    Member,
    average_probabilities,
    log_probabilities,
    member_probabilities,
    members_of,
)
from fmnist.inference.ensemble_select import (
    DEFAULT_SELECT,
    DIFFERENT_HOLDOUTS,
    MAX_STEPS,
    SELECT_RULES,
    fallback_note,
    greedy_select,
    score,
)
from fmnist.inference.ensemble_trust import fit_ensemble_trust
from fmnist.inference.evaluate import evaluate_logits
from fmnist.inference.records import (
    Disagreement,
    EnsembleArgs,
    EnsembleManifest,
    EnsembleMember,
    EnsembleResults,
    ManifestMember,
    SelectionRecord,
    ValidationScores,
)
from fmnist.inference.rundir import ENSEMBLE_FILE, RESULTS_FILE, prepare_run_dir, read_results


@dataclass(frozen=True)
class EnsembleValidation:
    """An ensemble chosen and scored on its members' shared validation split only (`validate_ensemble`)."""

    scores: ValidationScores
    run_dirs: list[str]
    weights: list[float]  # per member, in run_dirs' order (0: not chosen)
    selection: SelectionRecord


def check_select(select: str | None, weighted: bool) -> None:
    """`select` None is the default rule: greedy where the members share a validation split, else all."""
    if select is not None and select not in SELECT_RULES:
        raise UsageError(f"unknown selection rule {select!r} (known: {', '.join(SELECT_RULES)})")
    if weighted and (select or DEFAULT_SELECT) != "all":
        raise UsageError("--weighted weights a plain average of every member: use it with --select all "
                         "(greedy selection sets its own weights)")  # fmt: skip


def member_weights(members: list[Member], weighted: bool) -> list[float]:
    """Equal weights, or each member's best validation accuracy, normalised to sum to 1 (`--select all`)."""
    if not weighted:
        return [1.0 / len(members)] * len(members)
    raw = []
    for m in members:
        value = read_results(m.folder).best_val_accuracy
        if not isinstance(value, (int, float)) or not value > 0:
            raise UsageError(f"{m.folder}: no best validation accuracy to weight by (trained without validation?)")
        raw.append(float(value))
    return [v / sum(raw) for v in raw]


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # another drive (Windows): only an absolute path reaches it
        return str(path.resolve())


def _manifest(
    members: list[Member], weights: list[float], out_dir: Path, select: str, weighted: bool
) -> EnsembleManifest:
    """ensemble.json: the chosen members only, so predict, export and serve run exactly the selection."""
    mean, std = normalization(members[0].meta)
    chosen = [ManifestMember(path=_relative(m.folder, out_dir), model=m.meta["model"],
                             weights_sha256=m.meta["weights_sha256"], weight=w, tta=m.meta["tta"])
              for m, w in zip(members, weights) if w > 0]  # fmt: skip
    return EnsembleManifest(format=FORMAT, format_version=FORMAT_VERSION, fmnist_version=__version__, select=select,
                            weighted=weighted, class_names=list(members[0].meta["class_names"]),
                            normalization={"mean": mean, "std": std}, members=chosen)  # fmt: skip


def score_members(
    member_probs: torch.Tensor, weights: list[float], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[float], int]:
    """(weighted mean probabilities (N, C), each member's top-1 (M, N), each member's accuracy, the best's index)."""
    predicted = member_probs.argmax(2)
    accuracy = [(p == labels).double().mean().item() for p in predicted]
    return average_probabilities(member_probs, weights), predicted, accuracy, int(np.argmax(accuracy))


def _pairwise_disagreement(predicted: torch.Tensor) -> list[Disagreement]:
    m = predicted.shape[0]
    return [
        Disagreement(a=i, b=j, fraction=(predicted[i] != predicted[j]).double().mean().item())
        for i in range(m)
        for j in range(i + 1, m)
    ]


def _validation_scores(member_probs: torch.Tensor, labels: torch.Tensor, weights: list[float],
                       holdout: tuple[int, int]) -> ValidationScores:  # fmt: skip
    _, _, member_accuracy, best = score_members(member_probs, weights, labels)
    ensemble = score(member_probs, labels, weights)
    accuracy = ensemble.correct / len(labels)
    return ValidationScores(shared=True, val_size=holdout[0], split_seed=holdout[1], accuracy=accuracy,
                            loss=ensemble.loss, members=member_accuracy, best_member=best,
                            gain_over_best_member=accuracy - member_accuracy[best])  # fmt: skip


def _no_shared_split(reason: str) -> str:
    return (f"--select greedy chooses members on their shared validation split, and these have none: {reason} "
            "(or average every member with --select all)")  # fmt: skip


def applied_rule(select: str | None, holdout: tuple[int, int] | str) -> tuple[str, str | None]:
    """(the rule that runs, a note for the user or None): the default falls back to `all` without a shared split.

    `holdout` is `shared_holdout`'s answer; greedy asked for by name without one is refused.
    """
    shared = not isinstance(holdout, str)
    if select is None:
        if shared:
            return DEFAULT_SELECT, None
        return "all", fallback_note(DIFFERENT_HOLDOUTS if holdout.startswith(DIFFERENT) else holdout)
    if select == "greedy" and not shared:
        raise UsageError(_no_shared_split(holdout))
    return select, None


def choose(
    members: list[Member],
    dataset,
    *,
    select: str | None = None,
    weighted: bool = False,
    max_steps: int = MAX_STEPS,
    precision: str = "auto",
    step: Callable[[str], None] = lambda _: None,
) -> tuple[list[float], ValidationScores, SelectionRecord]:
    """(weights, validation scores, selection record): the members chosen on their shared validation split.

    The validation scores are the chosen weights' on that split, or (shared False) the reason
    there is none when the members held out different images: `all` then still averages them,
    `greedy` has nothing to choose on and raises a UsageError, and the default (None) averages
    them all (`applied_rule`).
    """
    check_select(select, weighted)
    holdout = shared_holdout(members, dataset)
    select, _ = applied_rule(select, holdout)
    weights = member_weights(members, weighted) if select == "all" else []
    if isinstance(holdout, str):
        return weights, ValidationScores(shared=False, reason=holdout), SelectionRecord(rule=select, weighted=weighted)
    val_size, seed = holdout
    _, val_idx = stratified_split(dataset.train_labels, val_size, seed)
    labels = torch.from_numpy(dataset.train_labels[val_idx].astype(np.int64))
    member_probs = member_probabilities(members, dataset.train_images[val_idx], precision,
                                        lambda label: step(f"validation: {label}"))  # fmt: skip
    selection = SelectionRecord(rule=select, weighted=weighted)
    if select == "greedy":
        chosen = greedy_select(member_probs, labels, max_steps)
        weights = chosen.weights
        selection = SelectionRecord(rule=select, weighted=weighted, max_steps=max_steps, counts=list(chosen.counts),
                                    steps=list(chosen.steps), stopped=chosen.stopped)  # fmt: skip
    return weights, _validation_scores(member_probs, labels, weights, holdout), selection


def build_ensemble(
    run_dirs: list[Path],
    out_dir: Path,
    *,
    dataset,
    select: str | None = None,
    weighted: bool = False,
    max_steps: int = MAX_STEPS,
    precision: str = "auto",
    device: str = "cpu",
    overwrite: bool = False,
    step: Callable[[str], None] = lambda _: None,
    notify: Callable[[str], None] = lambda _: None,
) -> EnsembleResults:
    """Choose the members on validation (`select`), then score the ensemble on `dataset`'s test split once; write it.

    Returns what results.json holds. Members must share class names; each is run with its own
    normalisation and TTA. `select` is "greedy" (fmnist.inference.ensemble_select; needs a shared
    validation split), "all" (every member; `weighted` weights each by its best validation
    accuracy) or None: greedy where the members share a validation split, else all, and `notify`
    hears why (ensemble_select.fallback_note). Every member is still scored on the test set for its own row; members not chosen
    get weight 0 and take no part in the ensemble's figure. `step` hears a label before each
    member is scored (for a progress display).
    """
    check_select(select, weighted)
    members = members_of(run_dirs, device)
    out_dir = Path(out_dir)
    if any(out_dir.resolve() == m.folder.resolve() for m in members):
        raise UsageError(f"{out_dir}: is a member's run directory; choose another --out")
    # What can be refused is refused before any folder is made.
    select, note = applied_rule(select, shared_holdout(members, dataset))
    if select == "all":
        member_weights(members, weighted)
    prepare_run_dir(out_dir, overwrite=overwrite)
    if note:
        notify(note)

    precision = resolve_precision(precision, torch.device(device))
    weights, validation, selection = choose(members, dataset, select=select, weighted=weighted, max_steps=max_steps,
                                            precision=precision, step=step)  # fmt: skip
    # The test split, once, after the choice.
    labels = torch.from_numpy(dataset.test_labels.astype(np.int64))
    member_probs = member_probabilities(members, dataset.test_images, precision, step)
    probs, member_predicted, member_accuracy, best = score_members(member_probs, weights, labels)
    class_names = tuple(members[0].meta["class_names"])
    evaluation = evaluate_logits(log_probabilities(probs), labels, class_names)
    ensemble_right, best_right = probs.argmax(1) == labels, member_predicted[best] == labels
    cal = calibration(probs, labels, DEFAULT_BINS)
    chosen = [m for m, w in zip(members, weights) if w > 0]
    member_val = validation.members if validation.shared else [None] * len(members)
    results = EnsembleResults(
        model=MODEL_NAME,
        model_args=EnsembleArgs(members=[m.meta["model"] for m in chosen], select=select, weighted=weighted),
        params=sum(int(m.meta.get("params") or 0) for m in chosen),
        select=select,
        selection=selection,
        test_accuracy=evaluation.accuracy,
        test_loss=evaluation.loss,
        validation_accuracy=validation.accuracy if validation.shared else None,
        ece=cal.ece,
        mean_confidence=cal.mean_confidence,
        members=[
            EnsembleMember(
                run_dir=str(m.folder),
                model=m.meta["model"],
                tta=m.meta["tta"],
                test_accuracy=acc,
                validation_accuracy=val,
                weight=w,
                chosen=w > 0,
            )
            for m, acc, val, w in zip(members, member_accuracy, member_val, weights)
        ],  # fmt: skip
        best_member=best,
        gain_over_best_member=evaluation.accuracy - member_accuracy[best],
        fixed=int((ensemble_right & ~best_right).sum()),
        introduced=int((~ensemble_right & best_right).sum()),
        pairwise_disagreement=_pairwise_disagreement(member_predicted),
        validation=validation,
        device=device,
        precision=precision,
        data=dataset.provenance.to_dict(),
        num_images=evaluation.num_images,
        confusion=evaluation.confusion,
        per_class=evaluation.per_class,
        most_confused=evaluation.most_confused,
    )
    tensors = {"labels": labels, "probabilities": probs.contiguous(), "member_predicted": member_predicted.contiguous()}
    atomic_write_bytes(out_dir / PREDICTIONS_FILE, save_safetensors_bytes(tensors))
    manifest = _manifest(members, weights, out_dir, select, weighted)
    step("calibrating on the images no member trained on")
    mean, std = float(manifest.normalization["mean"]), float(manifest.normalization["std"])
    record, said = fit_ensemble_trust(EnsembleModel(chosen, [w for w in weights if w > 0], mean, std).eval(), chosen,
                                      dataset, mean=mean, std=std)  # fmt: skip
    if said:
        notify(said)
    record.write(out_dir)
    manifest.write(out_dir / ENSEMBLE_FILE)
    results.write(out_dir / RESULTS_FILE)
    return results


def validate_ensemble(
    run_dirs: list[Path],
    *,
    dataset,
    select: str | None = None,
    weighted: bool = False,
    max_steps: int = MAX_STEPS,
    precision: str = "auto",
    device: str = "cpu",
    step: Callable[[str], None] = lambda _: None,
) -> EnsembleValidation:
    """Choose and score an ensemble of `run_dirs` on their shared validation split only: nothing touches the test set.

    A UsageError says why when the members held out different images, since then there is nothing to report.
    """
    check_select(select, weighted)
    members = members_of(run_dirs, device)
    weights, scores, selection = choose(members, dataset, select=select, weighted=weighted, max_steps=max_steps,
                                        precision=resolve_precision(precision, torch.device(device)), step=step)  # fmt: skip
    if not scores.shared:
        raise UsageError(scores.reason)
    return EnsembleValidation(scores, [str(m.folder) for m in members], weights, selection)
