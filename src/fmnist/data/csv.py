"""Reader for Kaggle's Fashion-MNIST CSV files: a `label,pixel1,...,pixel784` header, one row per image."""

from __future__ import annotations

import io

import numpy as np

from fmnist.constants import IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS
from fmnist.errors import DataError

_FIELDS = NUM_PIXELS + 1


def read_kaggle_csv(data: bytes, name: str = "<csv>") -> tuple[np.ndarray, np.ndarray]:
    """Parse CSV bytes into (images (N,28,28) uint8, labels (N,) uint8), or raise DataError."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DataError(f"{name}: not a text CSV file (non-ASCII bytes)") from None
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{name}: empty file")
    header = lines[0].strip().split(",")
    if len(header) != _FIELDS or header[0].strip().lower() != "label":
        raise DataError(f"{name}: header must be 'label,pixel1,...,pixel{NUM_PIXELS}'")
    rows = [line for line in lines[1:] if line.strip()]
    if not rows:
        raise DataError(f"{name}: no data rows")
    for number, row in enumerate(rows, start=2):
        if row.count(",") != _FIELDS - 1:
            raise DataError(f"{name}: row {number} has {row.count(',') + 1} fields, expected {_FIELDS}")
    try:
        # loadtxt's C parser is ~50x faster than splitting 47M fields in Python.
        table = np.loadtxt(io.StringIO("\n".join(rows)), delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OverflowError):
        raise DataError(f"{name}: non-integer value in the data rows") from None
    labels, pixels = table[:, 0], table[:, 1:]
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{name}: label outside 0-{NUM_CLASSES - 1}")
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{name}: pixel value outside 0-255")
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels.astype(np.uint8)
