"""Which members an ensemble keeps, and with what weights: chosen on the validation split.

`greedy` is forward selection with replacement (Caruana et al. 2004, "Ensemble selection from
libraries of models"): start from the best single member, then keep adding the member (any of
them, again if it helps) whose addition most improves the ensemble on validation, and stop when
no addition improves it. A member added k times out of n gets weight k/n. "Better" is higher
validation accuracy, and at equal accuracy lower validation log-loss: accuracy is a count of
images and often ties, and the log-loss breaks those ties towards the better-calibrated average.
Since every step must be better than the last, the ensemble never scores below its best member
on the images it was chosen on (on the test set it can, and that is reported as measured).

`all` keeps every member: equal weights, or (weighted) each member's best validation accuracy.

Pure functions of probability tensors: fmnist.inference.ensemble_build feeds them real members.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fmnist.inference.ensemble_model import average_probabilities
from fmnist.inference.records import GreedyStep

SELECT_RULES = ("greedy", "all")
DEFAULT_SELECT = "greedy"  # the rule of `fmnist ensemble`, `compare --ensemble` and [[ensembles]]
# The most additions greedy makes after its first member: enough for weights in steps of 1/50,
# and a bound where each addition only shaves the log-loss.
MAX_STEPS = 50
# A log-loss must drop by more than this to count as better: float rounding is not an improvement.
LOSS_TOLERANCE = 1e-12
STOPPED_NO_GAIN = "no addition improves validation"
STOPPED_MAX_STEPS = "max steps reached"


DIFFERENT_HOLDOUTS = "these runs held out different validation images"


def fallback_note(cause: str = DIFFERENT_HOLDOUTS) -> str:
    """The one line a user hears when no rule was asked for and greedy has no shared split to choose on."""
    return f"note: {cause}, so every member is averaged (greedy selection needs one shared split)"


@dataclass(frozen=True)
class Score:
    correct: int  # validation images the (weighted) average gets right
    loss: float  # mean negative log-probability of the true class

    def better_than(self, other: Score) -> bool:
        return self.correct > other.correct or (
            self.correct == other.correct and self.loss < other.loss - LOSS_TOLERANCE
        )


@dataclass(frozen=True)
class Selection:
    counts: tuple[int, ...]  # times each member was added (0: not chosen)
    steps: tuple[GreedyStep, ...]  # the first member, then each addition
    stopped: str

    @property
    def weights(self) -> list[float]:
        total = sum(self.counts)
        return [c / total for c in self.counts]


def score(probabilities: torch.Tensor, labels: torch.Tensor, weights: list[float] | list[int]) -> Score:
    """The weighted average of (members, N, classes) probabilities on `labels`, averaged as the ensemble averages."""
    mean = average_probabilities(probabilities, [float(w) for w in weights])
    correct = int((mean.argmax(1) == labels).sum())
    true_class = mean.double().gather(1, labels[:, None]).squeeze(1)
    loss = float(-torch.log(true_class.clamp_min(torch.finfo(torch.float32).tiny)).mean())
    return Score(correct, loss)


def _one_hot(m: int, i: int) -> list[int]:
    return [int(j == i) for j in range(m)]


def greedy_select(probabilities: torch.Tensor, labels: torch.Tensor, max_steps: int = MAX_STEPS) -> Selection:
    """Forward selection with replacement on (members, N, classes) validation probabilities.

    Ties between candidates go to the lower log-loss, then the earlier member, so the choice is
    the same every time.
    """
    if max_steps < 0:
        raise ValueError("max_steps must be 0 or more")
    m, n = probabilities.shape[0], int(labels.numel())
    singles = [score(probabilities, labels, _one_hot(m, i)) for i in range(m)]
    first = min(range(m), key=lambda i: (-singles[i].correct, singles[i].loss, i))
    counts, current = _one_hot(m, first), singles[first]
    steps = [GreedyStep(member=first, accuracy=current.correct / n, loss=current.loss)]
    stopped = STOPPED_MAX_STEPS
    for _ in range(max_steps):
        tried = [(score(probabilities, labels, [c + (j == i) for j, c in enumerate(counts)]), i) for i in range(m)]
        best, added = min(tried, key=lambda t: (-t[0].correct, t[0].loss, t[1]))
        if not best.better_than(current):
            stopped = STOPPED_NO_GAIN
            break
        counts[added] += 1
        current = best
        steps.append(GreedyStep(member=added, accuracy=best.correct / n, loss=best.loss))
    return Selection(tuple(counts), tuple(steps), stopped)


def selection_summary(rule: str | None, names: list[str], weights: list[float], weighted: bool = False) -> str:
    """One phrase for tables: the rule and the weights, e.g. "greedy, 2 of 5: resnet18 0.60, lenet5 0.40"."""
    chosen = [(name, w) for name, w in zip(names, weights) if w > 0]
    if (rule or "all") == "all":
        return f"all {len(names)}, " + ("weighted by validation accuracy" if weighted else "equal weights")
    listed = ", ".join(f"{name} {w:.2f}" for name, w in sorted(chosen, key=lambda nw: -nw[1]))
    return f"greedy, {len(chosen)} of {len(names)}: {listed}"
