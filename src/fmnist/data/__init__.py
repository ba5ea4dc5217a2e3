"""Fashion-MNIST: sources, validation, provenance, splits and the tensor-resident loader.

Names are imported on first use, so the IDX/CSV readers load without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FashionMNIST": "fmnist.data.dataset",
    "Provenance": "fmnist.data.dataset",
    "load_folder": "fmnist.data.dataset",
    "Augmentation": "fmnist.data.loader",
    "TensorLoader": "fmnist.data.loader",
    "stratified_split": "fmnist.data.loader",
    "DATA_ENV": "fmnist.data.sources",
    "cache_dir": "fmnist.data.sources",
    "resolve_dataset": "fmnist.data.sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fmnist.data' has no attribute {name!r}")
