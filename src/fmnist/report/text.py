"""Number formatting shared by the sections, so every table and sentence reads the same way."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def pct(value: float | None, decimals: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{decimals}f}%"


def points(delta: float, decimals: int = 2) -> str:
    """A difference of two accuracies in percentage points, with its sign."""
    return f"{100 * delta:+.{decimals}f} pts"


def mean_std(values: Sequence[float], decimals: int = 2) -> str:
    """'91.23% ± 0.15' over seeds; a single value stays a single value."""
    if len(values) == 1:
        return pct(values[0], decimals)
    return f"{pct(statistics.fmean(values), decimals)} ± {100 * statistics.stdev(values):.{decimals}f}"


def num(value: float | None, decimals: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def count(value: int) -> str:
    return f"{value:,}"


def published_accuracy(value: Any) -> float | None:
    """A [published] entry's accuracy: a number (fraction), or a table with an `accuracy` key."""
    if isinstance(value, dict):
        value = value.get("accuracy")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) / 100 if value > 1 else float(value)


def published_pct(value: Any) -> str:
    """A published accuracy at the precision the study gave it (0.912 -> 91.2%, 0.9304 -> 93.04%)."""
    raw = value.get("accuracy") if isinstance(value, dict) else value
    acc = published_accuracy(value)
    if acc is None:
        return str(raw) if raw is not None else ""
    text = repr(float(raw))
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 2
    if raw <= 1:
        decimals = max(decimals - 2, 0)
    return f"{100 * acc:.{min(decimals, 3)}f}%"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def join_words(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
