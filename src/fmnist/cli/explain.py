"""`fmnist predict --explain DIR`: the per-image pages (fmnist.inference.explain, explain_page)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fmnist.cli.output import notify
from fmnist.inference.predict import Predictor


def write_explanations(predictor: Predictor, loaded: list[tuple[str, np.ndarray]], folder: Path) -> list[Path]:
    """One page per loaded image in `folder`; their paths, in order."""
    from fmnist.data.sources import DATA_ENV, resolve_dataset
    from fmnist.inference.explain import explain, load_neighbours
    from fmnist.inference.explain_page import write_pages

    def dataset():
        # FMNIST_DATA first (resolve_dataset reads it), else the folder the run was trained from, else the cache.
        recorded = ((predictor.meta.get("extra") or {}).get("data") or {}).get("location")
        use_recorded = not os.environ.get(DATA_ENV) and recorded and Path(recorded).is_dir()
        notify("computing the training images' features for --explain (once per run)")
        return resolve_dataset(recorded if use_recorded else None, notify=notify)

    neighbours, _ = load_neighbours(predictor, dataset)
    explanations = explain(predictor, np.stack([image for _, image in loaded]), neighbours)
    pages = write_pages(folder, [(name, e) for (name, _), e in zip(loaded, explanations)])
    notify(f"wrote {len(pages)} explanation page{'s' * (len(pages) != 1)} to {folder}")  # stderr: --json stays clean
    return pages
