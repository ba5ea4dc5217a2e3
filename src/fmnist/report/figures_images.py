"""Figures made of test images: labelled grids, probability bars, Grad-CAM overlays, 2-D embedding maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fmnist.constants import CLASS_NAMES
from fmnist.report.figures import RED, colors, plt, save

GREEN = "#1a7f37"
SHORT_NAMES = [name.split("/")[0] for name in CLASS_NAMES]  # "T-shirt/top" -> "T-shirt": fits under a bar


def blank_axes(ax) -> None:
    """An image cell: no ticks, no frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def labelled_images(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 8) -> Path:
    """A grid of images, each with a short multi-line caption above it."""
    n = max(len(images), 1)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.18, rows * 1.7), squeeze=False)
    for k, ax in enumerate(axes.flat):
        blank_axes(ax)
        if k < len(images):
            ax.imshow(images[k], cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(titles[k], fontsize=7.5)
    fig.tight_layout(h_pad=0.6, w_pad=0.3)
    return save(fig, path)


def probability_bars(
    images: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, correct: list[int], wrong: list[int], path: Path
) -> Path:
    """Correct samples on the left, wrong ones on the right: each image beside the bar chart of
    its ten class probabilities, every chart with its class names. The true class's bar is
    green, a wrong top prediction's bar red."""
    rows = max(len(correct), len(wrong), 1)
    fig, axes = plt.subplots(rows, 4, figsize=(9.5, 1.75 * rows), squeeze=False, width_ratios=(1, 3.2, 1, 3.2))
    for side, (picks, heading) in enumerate(((correct, "correct"), (wrong, "wrong"))):
        for row in range(rows):
            ax_img, ax_bar = axes[row, 2 * side], axes[row, 2 * side + 1]
            blank_axes(ax_img)
            if row >= len(picks):
                blank_axes(ax_bar)
                continue
            index = picks[row]
            truth = int(labels[index])
            p = probabilities[index]
            top = int(np.argmax(p))
            ax_img.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
            ax_img.set_title(f"true {SHORT_NAMES[truth]}", fontsize=8, color=GREEN if top == truth else RED)
            bar_colors = ["#c8ccd1"] * len(p)
            if top != truth:
                bar_colors[top] = RED
            bar_colors[truth] = GREEN
            ax_bar.bar(range(len(p)), p, color=bar_colors)
            ax_bar.set_ylim(0, 1)
            ax_bar.set_yticks([0, 0.5, 1], ["0", "", "1"])
            ax_bar.tick_params(labelsize=7.5, length=2)
            ax_bar.set_xticks(range(len(p)), SHORT_NAMES, rotation=45, ha="right", rotation_mode="anchor",
                              fontsize=7.5)  # fmt: skip
            if row == 0:
                ax_bar.set_title(heading, fontsize=10, loc="left")
    fig.tight_layout(h_pad=0.4, w_pad=0.4)
    return save(fig, path)


def gradcam_grid(
    images: Sequence[np.ndarray | None], heatmaps: Sequence[np.ndarray | None], rows: Sequence[tuple[str, str, str]],
    flat: Sequence[bool], path: Path,
) -> Path:  # fmt: skip
    """Per entry: the image and its heatmap overlay. `rows` holds (row label, caption, kind)
    where kind is "correct" or "wrong"; entries arrive as pairs (correct, wrong) per class.
    A `flat` map (no spatial information) is not overlaid: the panel says so instead."""
    per_row = 2
    n_rows = max((len(rows) + per_row - 1) // per_row, 1)
    fig, axes = plt.subplots(n_rows, 2 * per_row, figsize=(7.6, 1.8 * n_rows), squeeze=False)
    for ax in axes.flat:
        blank_axes(ax)
    for k, (label, caption, kind) in enumerate(rows):
        r, c = divmod(k, per_row)
        ax_img, ax_cam = axes[r, 2 * c], axes[r, 2 * c + 1]
        if c == 0:
            ax_img.set_ylabel(label, fontsize=8.5, rotation=0, ha="right", va="center")
        if images[k] is None:
            ax_img.text(0.5, 0.5, f"no {kind}\nexample", ha="center", va="center", fontsize=8, color="gray")
            continue
        ax_img.imshow(images[k], cmap="gray_r", vmin=0, vmax=255)
        ax_img.set_title(caption, fontsize=7.5, color=GREEN if kind == "correct" else RED)
        ax_cam.imshow(images[k], cmap="gray", vmin=0, vmax=255)
        if flat[k]:
            ax_cam.text(0.5, 0.5, "flat map", transform=ax_cam.transAxes, ha="center", va="center", fontsize=8,
                        color="white", bbox={"facecolor": RED, "edgecolor": "none", "pad": 2})  # fmt: skip
        else:
            ax_cam.imshow(heatmaps[k], cmap="jet", alpha=0.45, vmin=0, vmax=1)
    fig.tight_layout(h_pad=0.4, w_pad=0.2)
    return save(fig, path)


def embedding_scatter(coords: np.ndarray, labels: np.ndarray, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 6))
    palette = colors() + ["#17becf", "#bcbd22"]
    for c, name in enumerate(CLASS_NAMES):
        members = labels == c
        if members.any():
            ax.scatter(
                coords[members, 0], coords[members, 1], s=7, alpha=0.7, color=palette[c % len(palette)], label=name
            )
    blank_axes(ax)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return save(fig, path, crop=True)
