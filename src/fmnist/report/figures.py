"""Charts as PNG files (matplotlib, headless). Each function writes one file atomically.

Image-based figures (mistakes, probability bars, Grad-CAM, embeddings) are in figures_images.
Sizes fit the report's text column (about 950 px in a 1280 px window): a figure up to 9.5 in
wide at DPI 100 is shown at full size, so 8 pt type stays 11 px on screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from fmnist.constants import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES  # noqa: E402
from fmnist.fsutil import atomic_save  # noqa: E402
from fmnist.inference.rundir import EpochRecord  # noqa: E402

DPI = 100
MIN_BIN_COUNT = 50  # reliability bins with fewer images are drawn hollow: their accuracy is mostly noise
OUTLINED_CELLS = 5  # the largest off-diagonal confusion cells get a red outline
RED = "#cf222e"


def save(fig: plt.Figure, path: Path, crop: bool = False) -> Path:
    """Write `fig` as a PNG and close it. Figures laid out with tight_layout are saved as they are;
    `crop=True` (for artists outside the axes, such as a legend beside them) trims the page to
    its contents, at the price of drawing the figure twice."""
    path = Path(path)
    extra = {"bbox_inches": "tight"} if crop else {}
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png", **extra))
    plt.close(fig)
    return path


def colors() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _text_color(image, value: float) -> str:
    """White on dark cells, black on light ones."""
    r, g, b, _ = image.cmap(image.norm(value))
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def _accuracy_axis(ax: plt.Axes, label: str = "accuracy") -> None:
    """Percent ticks, and a zoomed axis says so: a break mark on the spine and 'axis cut' in its label."""
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    low, high = ax.get_ylim()
    if low <= 0.02:
        ax.set_ylim(0, high)
        ax.set_ylabel(label)
        return
    for y in (0.0, 0.025):  # two short slashes across the bottom of the left spine: the usual break mark
        ax.plot([-0.018, 0.018], [y - 0.012, y + 0.012], transform=ax.transAxes, color="black", linewidth=1,
                clip_on=False)  # fmt: skip
    ax.set_ylabel(f"{label} (axis cut: starts at {100 * low:.0f}%)")


def sample_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 8, seed: int = 0) -> Path:
    """One row per class, `per_class` random images each, class name at the left.

    The images are pasted into one array and drawn once: a hundred small axes take seconds.
    """
    rng = np.random.default_rng(seed)
    step = IMAGE_SIZE + 2  # a 2-pixel white gap between tiles
    sheet = np.zeros((NUM_CLASSES * step - 2, per_class * step - 2), dtype=np.uint8)
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for j, index in enumerate(chosen):
            sheet[c * step : c * step + IMAGE_SIZE, j * step : j * step + IMAGE_SIZE] = images[index]
    fig, ax = plt.subplots(figsize=(per_class * 0.75 + 1.4, NUM_CLASSES * 0.75))
    ax.imshow(sheet, cmap="gray_r", vmin=0, vmax=255)
    ax.set_yticks([c * step + IMAGE_SIZE / 2 for c in range(NUM_CLASSES)], CLASS_NAMES, fontsize=9)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return save(fig, path, crop=True)


def training_curves(
    histories: dict[str, list[EpochRecord]],
    path: Path,
    best_epochs: dict[str, int] | None = None,
    overfit_from: dict[str, int] | None = None,
) -> Path:
    """Loss and accuracy per epoch (train dashed, validation solid), one colour per run.

    The best epoch gets a vertical line and a star on the validation curve; where the
    validation loss turned upwards (overfitting), the epochs from there on are shaded.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    palette = colors()
    for i, (name, rows) in enumerate(histories.items()):
        if not rows:
            continue
        color = palette[i % len(palette)]
        epochs = [r.epoch for r in rows]
        ax_loss.plot(epochs, [r.train_loss for r in rows], "--", color=color, label=f"{name} train")
        ax_acc.plot(epochs, [r.train_accuracy for r in rows], "--", color=color, label=f"{name} train")
        has_val = rows[0].val_loss is not None
        if has_val:
            ax_loss.plot(epochs, [r.val_loss for r in rows], "-", marker=".", color=color, label=f"{name} val")
            ax_acc.plot(epochs, [r.val_accuracy for r in rows], "-", marker=".", color=color, label=f"{name} val")
        best = (best_epochs or {}).get(name)
        if best:
            for ax in (ax_loss, ax_acc):
                ax.axvline(best, color=color, alpha=0.35, linewidth=1)
            row = next((r for r in rows if r.epoch == best), None)
            if row is not None and has_val:
                ax_loss.plot([best], [row.val_loss], "*", color=color, markersize=12)
                ax_acc.plot([best], [row.val_accuracy], "*", color=color, markersize=12)
        start = (overfit_from or {}).get(name)
        if start:
            ax_loss.axvspan(start - 0.5, epochs[-1] + 0.5, color=color, alpha=0.08)
    ax_loss.set(title="Loss (star: best epoch; shading: overfitting)", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch")
    _accuracy_axis(ax_acc)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save(fig, path)


def mean_curves(groups: dict[str, list[list[EpochRecord]]], path: Path) -> Path:
    """Validation accuracy and loss per epoch, one line per model: mean over seeds, band = ± std."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    palette = colors()
    for ax, metric in zip(axes, ("val_accuracy", "val_loss")):
        for i, (name, histories) in enumerate(groups.items()):
            series = [
                [getattr(r, metric) for r in rows]
                for rows in histories
                if rows and getattr(rows[0], metric) is not None
            ]
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
        ax.set(title=metric.replace("val_", "validation "), xlabel="epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _accuracy_axis(axes[0])
    axes[1].set_ylabel("cross-entropy")
    fig.tight_layout()
    return save(fig, path)


def largest_errors(cm: np.ndarray, k: int = OUTLINED_CELLS) -> list[tuple[int, int]]:
    """(true, predicted) of the `k` largest non-zero off-diagonal counts, largest first."""
    off = np.asarray(cm, dtype=np.float64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    return [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]


def confusion_matrix(cm: Sequence[Sequence[int]], path: Path, title: str, share: bool = False) -> Path:
    """A confusion matrix whose colours show the errors, not just the diagonal.

    Counts use a log colour scale (a cell of 5 stays visible beside a diagonal of 950).
    `share=True` divides each row by its class total and colours only the off-diagonal cells,
    on a scale that ends at the largest error; the diagonal (each class's recall) is grey.
    The largest off-diagonal cells are outlined in red.
    """
    counts = np.asarray(cm, dtype=np.float64)
    n = len(counts)
    diagonal = np.eye(n, dtype=bool)
    fig, ax = plt.subplots(figsize=(7.6, 6.4))
    if share:
        values = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        errors = np.ma.masked_array(values, mask=diagonal)
        image = ax.imshow(errors, cmap="OrRd", vmin=0, vmax=max(float(errors.max() or 0), 0.01))
        ax.imshow(np.ma.masked_array(values, mask=~diagonal), cmap=ListedColormap(["#e6e8eb"]))
        bar = plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04, format=PercentFormatter(xmax=1, decimals=0))
        bar.set_label("share of the true class (off-diagonal)", fontsize=9)
    else:
        values = counts
        cmap = plt.get_cmap("Blues").with_extremes(bad="white")  # zero cells: no log, and nothing happened there
        # From 0.5, so a cell of 1 is tinted: only empty cells stay white.
        image = ax.imshow(np.ma.masked_less_equal(values, 0), cmap=cmap,
                          norm=LogNorm(vmin=0.5, vmax=max(float(values.max()), 10)))  # fmt: skip
        bar = plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04, format=FuncFormatter(lambda v, _: f"{v:,.0f}"))
        bar.set_label("images (log scale)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    for i in range(n):
        for j in range(n):
            value = values[i, j]
            if share:
                percent = int(100 * value + 0.5)  # half up: 0.5% reads as 1, not as a misleading 0
                text = str(percent) if percent else ("·" if value > 0 else "")
                color = "black" if i == j else _text_color(image, value)
            else:
                text = f"{int(value)}" if value else ""
                color = _text_color(image, value) if value else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8.5, color=color)
    for i, j in largest_errors(counts):  # white under red: the outline shows on light and dark cells alike
        for color, width in (("white", 4.5), (RED, 2.2)):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=width))
    names = CLASS_NAMES[:n]
    ax.set_xticks(range(n), names, rotation=40, ha="right", fontsize=9)
    ax.set_yticks(range(n), names, fontsize=9)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def per_class_bars(names: Sequence[str], values: Sequence[float], path: Path, title: str) -> Path:
    """Horizontal bars of per-class accuracy from 0 to 100%, in the order given (sorted by the caller)."""
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1))
    y = np.arange(len(names))
    ax.barh(y, [100 * v for v in values], color=colors()[0])
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    for yi, v in zip(y, values):  # the value inside the bar's end, or just past a short bar
        inside = v > 0.15
        ax.text(100 * v + (-1 if inside else 1), yi, f"{100 * v:.1f}%", va="center", ha="right" if inside else "left",
                fontsize=8.5, color="white" if inside else "black")  # fmt: skip
    ax.set(xlabel="accuracy (%)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def grouped_class_bars(series: dict[str, Sequence[float]], path: Path) -> Path:
    """Per-class accuracy of several models side by side (axis from 0), and below, each model's
    difference to the first in points, where gaps of a point or two are visible."""
    names = list(series)
    n = len(names)
    rows = 2 if n > 1 else 1
    fig, axes = plt.subplots(rows, 1, figsize=(9.5, 4.2 + 2.4 * (rows - 1)), squeeze=False,
                             height_ratios=(2.2, 1)[:rows], sharex=True)  # fmt: skip
    ax = axes[0, 0]
    width = 0.8 / max(n, 1)
    x = np.arange(len(CLASS_NAMES))
    palette = colors()
    for i, name in enumerate(names):
        offset = (i - (n - 1) / 2) * width
        ax.bar(x + offset, [100 * v for v in series[name]], width, label=name, color=palette[i % len(palette)])
    ax.set_ylim(0, 100)
    ax.set(ylabel="accuracy (%)", title="Per-class test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(n, 4), loc="lower left")
    if n > 1:
        delta_ax = axes[1, 0]
        first = names[0]
        others = names[1:]
        width = 0.8 / len(others)
        for i, name in enumerate(others, start=1):
            offset = (i - 1 - (len(others) - 1) / 2) * width
            deltas = [100 * (a - b) for a, b in zip(series[name], series[first])]
            delta_ax.bar(x + offset, deltas, width, color=palette[i % len(palette)], label=name)
        delta_ax.axhline(0, color="black", linewidth=0.8)
        delta_ax.set_ylabel(f"minus {first} (pts)", fontsize=9)
        delta_ax.grid(axis="y", alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xticks(x, CLASS_NAMES, rotation=30, ha="right", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def reliability_diagram(bins_by_model: dict[str, list[dict]], path: Path) -> Path:
    """Accuracy against confidence per bin (diagonal = perfect calibration), and below, how many
    images each bin holds. Bins under MIN_BIN_COUNT images are hollow points."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(7.5, 7.5), height_ratios=(3, 1.5), sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    palette = colors()
    n = max(len(bins_by_model), 1)
    for i, (name, bins) in enumerate(bins_by_model.items()):
        color = palette[i % len(palette)]
        used = [b for b in bins if b["count"]]
        ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "-", color=color, alpha=0.6,
                label=name)  # fmt: skip
        for b in used:
            hollow = b["count"] < MIN_BIN_COUNT
            ax.plot(b["confidence"], b["accuracy"], "o", markersize=6, color=color, markeredgewidth=1.5,
                    markerfacecolor="white" if hollow else color)  # fmt: skip
        width = (bins[0]["upper"] - bins[0]["lower"]) * 0.9 / n if bins else 0.05
        for b in used:
            center = (b["lower"] + b["upper"]) / 2 + (i - (n - 1) / 2) * width
            ax_count.bar(center, b["count"], width, color=color, fill=b["count"] >= MIN_BIN_COUNT, edgecolor=color)
            ax_count.text(center, b["count"] * 1.25, f"{b['count']:,}", rotation=90, ha="center", va="bottom",
                          fontsize=7.5)  # fmt: skip
    ax.plot([], [], "o", color="gray", markerfacecolor="white", label=f"hollow: fewer than {MIN_BIN_COUNT} images")
    ax.set(ylabel="accuracy", title="Reliability diagram", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_count.set_yscale("log")
    top = max((b["count"] for bins in bins_by_model.values() for b in bins), default=1)
    ax_count.set_ylim(0.8, top * 40)  # room above the tallest bar for its rotated label
    ax_count.set(xlabel="confidence (top-class probability)", ylabel="images per bin")
    ax_count.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)
