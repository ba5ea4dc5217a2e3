"""Fashion-MNIST: sources, validation, provenance, splits and the tensor-resident loader."""

from fmnist.data.dataset import FashionMNIST, Provenance, load_folder
from fmnist.data.loader import Augmentation, TensorLoader, stratified_split
from fmnist.data.sources import DATA_ENV, cache_dir, resolve_dataset

__all__ = [
    "DATA_ENV",
    "Augmentation",
    "FashionMNIST",
    "Provenance",
    "TensorLoader",
    "cache_dir",
    "load_folder",
    "resolve_dataset",
    "stratified_split",
]
