"""The in-memory dataset and its provenance, read from a folder of IDX files or Kaggle CSVs."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from fmnist.constants import IDX_FILES, KAGGLE_CSV_FILES, KAGGLE_SPLIT_RAW_SHA256, OFFICIAL_GZ_MD5
from fmnist.data.csv import read_kaggle_csv
from fmnist.data.idx import GZIP_MAGIC, parse_idx
from fmnist.errors import DataError, DataPathError

# sha256 of the decompressed official label files (the official images are identified by
# their md5 only); the label order alone tells the official split from the Kaggle one.
OFFICIAL_LABELS_RAW_SHA256 = {
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# md5 of the gzip files of the original MNIST digits: a frequent mix-up (same names, same
# format), which would otherwise train happily on the wrong dataset.
MNIST_GZ_MD5 = {
    "f68b3c2dcbeaaa9fbdd348bbdeb94873": "train-images",
    "d53e105ee54ea40749a09fcbcd1e9432": "train-labels",
    "9fb629c4189551a2d022fa330f9573f3": "t10k-images",
    "ec29112dd5afa0611ce80d1b7f02629c": "t10k-labels",
}
# Mean of pixel/255 is 0.286 for Fashion-MNIST and 0.131 for MNIST digits.
MNIST_LIKE_MEAN_BELOW = 0.2


@dataclass(frozen=True)
class FileRecord:
    name: str
    sha256: str  # of the file as stored
    raw_sha256: str  # of the decompressed IDX bytes (equal to sha256 for raw files and CSVs)
    md5: str


class ProvenanceRecord(TypedDict, total=False):
    """Provenance as the results files record it (`Provenance.to_dict`)."""

    source: str
    location: str
    split: str
    sha256: dict[str, str]  # role -> sha256 of the file as stored
    files: dict[str, dict[str, str]]  # role -> a FileRecord's fields
    array_sha256: dict[str, str]  # a sweep's (sweep.json): role -> sha256 of the decoded array, which a resume checks


@dataclass(frozen=True)
class Provenance:
    source: str  # "data-dir", "cache", "download", "npm", "csv", "synthetic"
    location: str  # folder or URL the files came from
    split: str  # "official", "kaggle" or "unknown"
    files: dict[str, FileRecord] = field(default_factory=dict)

    def to_dict(self) -> ProvenanceRecord:
        return {
            "source": self.source,
            "location": self.location,
            "split": self.split,
            "sha256": {role: rec.sha256 for role, rec in self.files.items()},
            "files": {role: asdict(rec) for role, rec in self.files.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Provenance:
        files = {role: FileRecord(**rec) for role, rec in data.get("files", {}).items()}
        return cls(data["source"], data["location"], data["split"], files)


@dataclass
class FashionMNIST:
    """All 70,000 images as uint8 arrays, plus where they came from."""

    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) uint8
    test_images: np.ndarray
    test_labels: np.ndarray
    provenance: Provenance

    def __repr__(self) -> str:
        # The dataclass default prints every array: a hundred lines of pixels for `print(data)`.
        p = self.provenance
        return (f"FashionMNIST(train={len(self.train_labels):,} images, test={len(self.test_labels):,} images, "
                f"split={p.split!r}, source={p.source!r}, location={p.location!r})")  # fmt: skip

    def _repr_html_(self) -> str:
        import html

        p = self.provenance
        rows = "".join(f"<tr><td>{name}</td><td>{len(labels):,}</td><td>{' x '.join(map(str, images.shape[1:]))} uint8</td></tr>"
                       for name, images, labels in (("train", self.train_images, self.train_labels),
                                                    ("test", self.test_images, self.test_labels)))  # fmt: skip
        return (f"<div><b>Fashion-MNIST</b> ({html.escape(p.split)} split, from {html.escape(p.source)}: "
                f"<code>{html.escape(p.location)}</code>)<table><thead><tr><th>split</th><th>images</th>"
                f"<th>each</th></tr></thead><tbody>{rows}</tbody></table></div>")  # fmt: skip

    def describe_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "train_images": tuple(self.train_images.shape),
            "train_labels": tuple(self.train_labels.shape),
            "test_images": tuple(self.test_images.shape),
            "test_labels": tuple(self.test_labels.shape),
        }


def find_idx_file(folder: Path, role: str) -> Path | None:
    base = IDX_FILES[role]
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def _record(path: Path, data: bytes) -> FileRecord:
    raw = gzip.decompress(data) if data[:2] == GZIP_MAGIC else data
    return FileRecord(
        name=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
    )


def identify_split(files: dict[str, FileRecord]) -> str:
    if all(files.get(r) and files[r].raw_sha256 == s for r, s in KAGGLE_SPLIT_RAW_SHA256.items()):
        return "kaggle"
    if all(files.get(r) and files[r].md5 == m for r, m in OFFICIAL_GZ_MD5.items()):
        return "official"
    if all(files.get(r) and files[r].raw_sha256 == s for r, s in OFFICIAL_LABELS_RAW_SHA256.items()):
        return "official"
    return "unknown"


def _reject_mnist_digits(folder: Path, files: dict[str, FileRecord], train_images: np.ndarray) -> None:
    for rec in files.values():
        if rec.md5 in MNIST_GZ_MD5:
            raise DataError(
                f"{folder / rec.name}: this is the MNIST digits file ({MNIST_GZ_MD5[rec.md5]}), not Fashion-MNIST"
            )
    mean = float(train_images.mean()) / 255.0 if train_images.size else 0.0
    if mean < MNIST_LIKE_MEAN_BELOW:
        raise DataError(
            f"{folder}: training images have mean intensity {mean:.3f} (Fashion-MNIST: 0.286, "
            "MNIST digits: 0.131); these look like MNIST digits, not Fashion-MNIST"
        )


def _check_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> None:
    if len(images) != len(labels):
        raise DataError(f"{labels_name}: {len(labels):,} labels but {images_name} has {len(images):,} images")


def load_idx_folder(folder: Path, source: str = "data-dir", location: str | None = None) -> FashionMNIST:
    """Read the four IDX files (gz or raw) from `folder`, validating each and the whole."""
    folder = Path(folder)
    arrays: dict[str, np.ndarray] = {}
    records: dict[str, FileRecord] = {}
    for role in IDX_FILES:
        path = find_idx_file(folder, role)
        if path is None:
            raise DataError(f"{folder}: missing {IDX_FILES[role]}(.gz)")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
        arrays[role] = parse_idx(data, "images" if role.endswith("images") else "labels", str(path))
        records[role] = _record(path, data)
    for split in ("train", "test"):
        _check_pair(
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"],
            records[f"{split}_images"].name,
            str(folder / records[f"{split}_labels"].name),
        )
    _reject_mnist_digits(folder, records, arrays["train_images"])
    provenance = Provenance(source, location or str(folder), identify_split(records), records)
    return FashionMNIST(
        arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"], provenance
    )


def has_kaggle_csv(folder: Path) -> bool:
    return all((Path(folder) / name).is_file() for name in KAGGLE_CSV_FILES.values())


def load_csv_folder(folder: Path) -> FashionMNIST:
    """Read Kaggle's `fashion-mnist_train.csv` / `fashion-mnist_test.csv` pair."""
    folder = Path(folder)
    arrays = {}
    records = {}
    for split, name in KAGGLE_CSV_FILES.items():
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
        arrays[split] = read_kaggle_csv(data, str(path))
        rec = _record(path, data)
        records[f"{split}_images"] = records[f"{split}_labels"] = rec
    _reject_mnist_digits(folder, {}, arrays["train"][0])
    provenance = Provenance("csv", str(folder), "kaggle", records)
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    return FashionMNIST(train_x, train_y, test_x, test_y, provenance)


def load_folder(folder: Path, source: str = "data-dir") -> FashionMNIST:
    """A folder with the IDX files, or failing that the Kaggle CSV pair."""
    folder = Path(folder)
    if not folder.exists():
        raise DataPathError(f"{folder}: data folder does not exist")
    if not folder.is_dir():
        raise DataPathError(f"{folder}: not a folder")
    if any(find_idx_file(folder, role) for role in IDX_FILES):
        return load_idx_folder(folder, source=source)
    if has_kaggle_csv(folder):
        return load_csv_folder(folder)
    raise DataError(
        f"{folder}: no Fashion-MNIST files (expected {', '.join(IDX_FILES.values())} with or "
        f"without .gz, or {' and '.join(KAGGLE_CSV_FILES.values())})"
    )
