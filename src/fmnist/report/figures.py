"""Charts as PNG files (matplotlib, headless). Each function writes one file atomically.

Image-based figures (mistakes, probability bars, Grad-CAM, embeddings) are in figures_images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist.constants import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from fmnist.fsutil import atomic_save  # noqa: E402

DPI = 100


def save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def colors() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def sample_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 8, seed: int = 0) -> Path:
    """One row per class, `per_class` random images each, class name at the left."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(NUM_CLASSES, per_class, figsize=(per_class * 0.9 + 1.6, NUM_CLASSES * 0.9))
    axes = np.atleast_2d(axes)
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(chosen):
                ax.imshow(images[chosen[j]], cmap="gray_r", vmin=0, vmax=255)
        axes[c, 0].set_ylabel(CLASS_NAMES[c], rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return save(fig, path)


def training_curves(
    histories: dict[str, list[dict]],
    path: Path,
    best_epochs: dict[str, int] | None = None,
    overfit_from: dict[str, int] | None = None,
) -> Path:
    """Loss and accuracy per epoch (train dashed, validation solid), one colour per run.

    The best epoch gets a vertical line and a star on the validation curve; where the
    validation loss turned upwards (overfitting), the epochs from there on are shaded.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    palette = colors()
    for i, (name, rows) in enumerate(histories.items()):
        if not rows:
            continue
        color = palette[i % len(palette)]
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "--", color=color, label=f"{name} train")
        ax_acc.plot(epochs, [r["train_accuracy"] for r in rows], "--", color=color, label=f"{name} train")
        has_val = rows[0].get("val_loss") is not None
        if has_val:
            ax_loss.plot(epochs, [r["val_loss"] for r in rows], "-", marker=".", color=color, label=f"{name} val")
            ax_acc.plot(epochs, [r["val_accuracy"] for r in rows], "-", marker=".", color=color, label=f"{name} val")
        best = (best_epochs or {}).get(name)
        if best:
            for ax in (ax_loss, ax_acc):
                ax.axvline(best, color=color, alpha=0.35, linewidth=1)
            row = next((r for r in rows if r["epoch"] == best), None)
            if row is not None and has_val:
                ax_loss.plot([best], [row["val_loss"]], "*", color=color, markersize=12)
                ax_acc.plot([best], [row["val_accuracy"]], "*", color=color, markersize=12)
        start = (overfit_from or {}).get(name)
        if start:
            ax_loss.axvspan(start - 0.5, epochs[-1] + 0.5, color=color, alpha=0.08)
    ax_loss.set(title="Loss (star: best epoch; shading: overfitting)", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save(fig, path)


def mean_curves(groups: dict[str, list[list[dict]]], path: Path, key: str = "val_accuracy") -> Path:
    """Validation accuracy and loss per epoch, one line per model: mean over seeds, band = ± std."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    palette = colors()
    for ax, metric in zip(axes, (key, key.replace("accuracy", "loss"))):
        for i, (name, histories) in enumerate(groups.items()):
            series = [[r.get(metric) for r in rows] for rows in histories if rows and rows[0].get(metric) is not None]
            if not series:
                continue
            length = min(len(s) for s in series)
            values = np.array([s[:length] for s in series], dtype=float)
            epochs = np.arange(1, length + 1)
            mean = values.mean(0)
            color = palette[i % len(palette)]
            ax.plot(epochs, mean, "-", marker=".", color=color, label=name)
            if len(values) > 1:
                std = values.std(0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
        ax.set(title=metric.replace("_", " "), xlabel="epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save(fig, path)


def _heatmap(ax: plt.Axes, matrix: np.ndarray, normalize: bool, class_names: Sequence[str], title: str) -> None:
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    n = len(class_names)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            value = matrix[i, j]
            text = f"{value:.2f}" if normalize else f"{int(value)}"
            if normalize and value < 0.005:
                text = ""
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                    color="white" if value > threshold else "black")  # fmt: skip
    ax.set_title(title, fontsize=10)


def confusion_heatmap(
    cm: Sequence[Sequence[int]], path: Path, title: str = "", normalize: bool = False,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:  # fmt: skip
    """Counts (or row-normalised fractions) with class names on both axes."""
    matrix = np.asarray(cm, dtype=np.float64)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    _heatmap(ax, matrix, normalize, class_names,
             title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))  # fmt: skip
    fig.tight_layout()
    return save(fig, path)


def confusion_pair(
    cm: Sequence[Sequence[int]], path: Path, name: str, class_names: Sequence[str] = CLASS_NAMES
) -> Path:
    """Counts and row-normalised fractions side by side."""
    counts = np.asarray(cm, dtype=np.float64)
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    _heatmap(left, counts, False, class_names, f"{name}: counts")
    _heatmap(right, fractions, True, class_names, f"{name}: share of each true class")
    fig.tight_layout()
    return save(fig, path)


def per_class_bars(names: Sequence[str], values: Sequence[float], path: Path, title: str) -> Path:
    """Horizontal bars of per-class accuracy, in the order given (sorted by the caller)."""
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1))
    y = np.arange(len(names))
    ax.barh(y, [100 * v for v in values], color=colors()[0])
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    low = max(0.0, 100 * min(values) - 10) if len(values) else 0
    ax.set_xlim(low, 100)
    for yi, v in zip(y, values):
        ax.text(100 * v, yi, f" {100 * v:.1f}%", va="center", fontsize=8)
    ax.set(xlabel="accuracy (%)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def grouped_class_bars(
    series: dict[str, Sequence[float]], path: Path, class_names: Sequence[str] = CLASS_NAMES
) -> Path:
    """Per-class accuracy of several models side by side."""
    fig, ax = plt.subplots(figsize=(11, 4))
    n = len(series)
    width = 0.8 / max(n, 1)
    x = np.arange(len(class_names))
    palette = colors()
    for i, (name, values) in enumerate(series.items()):
        ax.bar(
            x + (i - (n - 1) / 2) * width, [100 * v for v in values], width, label=name, color=palette[i % len(palette)]
        )
    all_values = [v for values in series.values() for v in values]
    ax.set_ylim(max(0.0, 100 * min(all_values) - 5) if all_values else 0, 100)
    ax.set_xticks(x, class_names, rotation=30, ha="right", fontsize=9)
    ax.set(ylabel="accuracy (%)", title="Per-class test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(n, 4))
    fig.tight_layout()
    return save(fig, path)


def reliability_diagram(bins_by_model: dict[str, list[dict]], path: Path) -> Path:
    """Accuracy against confidence per bin (diagonal = perfect calibration), plus how many fall in each."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    palette = colors()
    for i, (name, bins) in enumerate(bins_by_model.items()):
        used = [b for b in bins if b["count"]]
        color = palette[i % len(palette)]
        ax.plot(
            [b["confidence"] for b in used], [b["accuracy"] for b in used], "o-", color=color, label=name, markersize=4
        )
        centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
        ax_count.plot(centers, [b["count"] for b in bins], "-", color=color)
    ax.set(ylabel="accuracy", title="Reliability diagram", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_count.set(xlabel="confidence (top-class probability)", ylabel="images")
    ax_count.set_yscale("symlog")  # a bin of 9,000 beside bins of 10: log, but 0 must stay drawable
    ax_count.set_ylim(bottom=0)
    ax_count.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)
