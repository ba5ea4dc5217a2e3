"""`fmnist predict --explain DIR`: the per-image pages (fmnist.inference.explain, explain_page)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.cli.output import notify
from fmnist.inference.predict import Predictor


def write_explanations(predictor: Predictor, loaded: list[tuple[str, np.ndarray]], folder: Path) -> list[Path]:
    """One page per loaded image in `folder`; their paths, in order."""
    from fmnist.inference.explain import explain, load_neighbours, training_images
    from fmnist.inference.explain_page import write_pages

    neighbours, _ = load_neighbours(predictor, lambda: training_images(predictor, notify))
    explanations = explain(predictor, np.stack([image for _, image in loaded]), neighbours)
    pages = write_pages(folder, [(name, e) for (name, _), e in zip(loaded, explanations)])
    notify(f"wrote {len(pages)} explanation page{'s' * (len(pages) != 1)} to {folder}")  # stderr: --json stays clean
    return pages
