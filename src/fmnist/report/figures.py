"""Figures as PNG files (matplotlib, headless). Each function writes one file atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist.constants import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from fmnist.fsutil import atomic_save  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


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
    return _save(fig, path)


def training_curves(histories: dict[str, list[dict]], path: Path, best_epochs: dict[str, int] | None = None) -> Path:
    """Loss and accuracy per epoch (train dashed, validation solid) for one or more runs."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        if not rows:
            continue
        color = colors[i % len(colors)]
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "--", color=color, label=f"{name} train")
        ax_acc.plot(epochs, [r["train_accuracy"] for r in rows], "--", color=color, label=f"{name} train")
        if rows[0].get("val_loss") is not None:
            ax_loss.plot(epochs, [r["val_loss"] for r in rows], "-", color=color, label=f"{name} val")
            ax_acc.plot(epochs, [r["val_accuracy"] for r in rows], "-", color=color, label=f"{name} val")
        best = (best_epochs or {}).get(name)
        if best:
            for ax in (ax_loss, ax_acc):
                ax.axvline(best, color=color, alpha=0.35, linewidth=1)
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def confusion_heatmap(
    cm: Sequence[Sequence[int]], path: Path, title: str = "", normalize: bool = False,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:  # fmt: skip
    """Counts (or row-normalised fractions) with class names on both axes."""
    matrix = np.asarray(cm, dtype=np.float64)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
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
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    fig.tight_layout()
    return _save(fig, path)
