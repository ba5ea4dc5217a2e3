"""Figures built from test images: mistakes, probability bars, Grad-CAM overlays, embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fmnist.constants import CLASS_NAMES
from fmnist.report.figures import colors, plt, save


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def labelled_images(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 8) -> Path:
    """A grid of images, each with a short multi-line caption above it."""
    n = max(len(images), 1)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.45, rows * 1.85), squeeze=False)
    for k, ax in enumerate(axes.flat):
        _blank(ax)
        if k < len(images):
            ax.imshow(images[k], cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(titles[k], fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def probability_bars(
    images: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, correct: list[int], wrong: list[int], path: Path
) -> Path:
    """Rows of (image, bar chart of its 10 class probabilities): correct samples, then wrong ones.

    The true class's bar is green, a wrong top prediction's bar red.
    """
    picks = [(i, True) for i in correct] + [(i, False) for i in wrong]
    n = max(len(picks), 1)
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 1.05 * n), squeeze=False, width_ratios=(1, 4))
    short = [name.split("/")[0] for name in CLASS_NAMES]
    for row, (index, ok) in enumerate(picks):
        ax_img, ax_bar = axes[row]
        _blank(ax_img)
        ax_img.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
        ax_img.set_ylabel("correct" if ok else "wrong", fontsize=7, rotation=0, ha="right", va="center")
        p = probabilities[index]
        bar_colors = ["#c8ccd1"] * len(p)
        top = int(np.argmax(p))
        if top != labels[index]:
            bar_colors[top] = "#cf222e"
        bar_colors[int(labels[index])] = "#1a7f37"
        ax_bar.bar(range(len(p)), p, color=bar_colors)
        ax_bar.set_ylim(0, 1)
        ax_bar.set_yticks([0, 1])
        ax_bar.tick_params(labelsize=6)
        ax_bar.set_xticks(
            range(len(p)), short if row == n - 1 else [""] * len(p), rotation=40, ha="right", fontsize=6.5
        )
    if not picks:
        for ax in axes.flat:
            _blank(ax)
    fig.tight_layout(h_pad=0.3)
    return save(fig, path)


def gradcam_grid(images: np.ndarray, heatmaps: np.ndarray, rows: Sequence[tuple[str, str, str]], path: Path) -> Path:
    """Per entry: the image and its heatmap overlay. `rows` holds (row label, caption, kind)
    where kind is "correct" or "wrong"; entries arrive as pairs (correct, wrong) per class."""
    per_row = 2
    n_rows = (len(rows) + per_row - 1) // per_row
    fig, axes = plt.subplots(max(n_rows, 1), 2 * per_row, figsize=(7.2, 1.75 * max(n_rows, 1)), squeeze=False)
    for ax in axes.flat:
        _blank(ax)
    for k, (label, caption, kind) in enumerate(rows):
        r, c = divmod(k, per_row)
        ax_img, ax_cam = axes[r, 2 * c], axes[r, 2 * c + 1]
        if images[k] is None:
            ax_img.text(0.5, 0.5, f"no {kind}\nexample", ha="center", va="center", fontsize=7, color="gray")
            continue
        ax_img.imshow(images[k], cmap="gray_r", vmin=0, vmax=255)
        ax_cam.imshow(images[k], cmap="gray", vmin=0, vmax=255)
        ax_cam.imshow(heatmaps[k], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax_img.set_title(caption, fontsize=6.5, color="#1a7f37" if kind == "correct" else "#cf222e")
        if c == 0:
            ax_img.set_ylabel(label, fontsize=7.5, rotation=0, ha="right", va="center")
    fig.tight_layout(h_pad=0.4, w_pad=0.2)
    return save(fig, path)


def embedding_scatter(coords: np.ndarray, labels: np.ndarray, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 6))
    palette = colors() + ["#17becf", "#bcbd22"]
    for c, name in enumerate(CLASS_NAMES):
        members = labels == c
        if members.any():
            ax.scatter(
                coords[members, 0], coords[members, 1], s=4, alpha=0.7, color=palette[c % len(palette)], label=name
            )
    _blank(ax)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return save(fig, path)
