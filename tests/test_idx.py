"""IDX reader: tiny files written here, the real official label files, and every kind of damage."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from fmnist.data.idx import encode_idx, parse_idx, read_idx, write_idx
from fmnist.errors import DataError


def test_round_trip_raw_and_gzip(tmp_path: Path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    labels = np.array([0, 9, 4], dtype=np.uint8)
    for name in ("img", "img.gz"):
        write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(read_idx(tmp_path / name, "images"), images)
    write_idx(tmp_path / "lab.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "lab.gz", "labels"), labels)
    assert (tmp_path / "img.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_header_layout_is_big_endian():
    raw = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    assert struct.unpack(">IIII", raw[:16]) == (2051, 2, 28, 28)
    assert len(raw) == 16 + 2 * 784


@pytest.mark.parametrize(
    "payload, kind, message",
    [
        (encode_idx(np.zeros(5, np.uint8)), "images", "magic number 2049"),
        (encode_idx(np.zeros((2, 28, 28), np.uint8)), "labels", "magic number 2051"),
        (encode_idx(np.zeros((2, 28, 28), np.uint8))[:-10], "images", "truncated"),
        (encode_idx(np.zeros((2, 28, 28), np.uint8)) + b"\0", "images", "trailing bytes"),
        (encode_idx(np.array([1, 10], np.uint8)), "labels", "label 10 outside 0-9"),
        (struct.pack(">IIII", 2051, 2, 32, 32) + bytes(2048), "images", "32x32"),
        (struct.pack(">II", 2049, 0), "labels", "implausible item count 0"),
        (b"\x1f\x8b\x08\x00garbage-not-deflate", "images", "corrupt gzip"),
        # mtime=0: the header would carry the current second, and pytest-xdist workers must collect
        # the same test ids (the payload is part of the id).
        (gzip.compress(encode_idx(np.zeros(4, np.uint8)), mtime=0)[:-6], "labels", "corrupt gzip"),
        (b"", "labels", "truncated"),
        (b"\x00\x00", "labels", "truncated"),
    ],
)
def test_damage_raises_data_error_naming_the_file(payload: bytes, kind: str, message: str):
    with pytest.raises(DataError) as info:
        parse_idx(payload, kind, name="some/file-idx")
    text = str(info.value)
    assert text.startswith("some/file-idx: ")
    assert message in text
    assert "\n" not in text


def test_billion_image_header_is_rejected_without_allocating():
    header = struct.pack(">IIII", 2051, 1_000_000_000, 28, 28)
    with pytest.raises(DataError, match="implausible item count"):
        parse_idx(header + bytes(784), "images")
    # Within the cap but far beyond the bytes present: fails as truncated, reading only what exists.
    header = struct.pack(">IIII", 2051, 900_000, 28, 28)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(header + bytes(784), "images")


def test_unreadable_path_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing.gz", "labels")


@pytest.mark.parametrize(
    "name, count, md5",
    [
        ("train-labels-idx1-ubyte.gz", 60000, "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-labels-idx1-ubyte.gz", 10000, "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
)
def test_real_official_label_files(name: str, count: int, md5: str):
    path = SHARED / "fashion-mnist-official-labels" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    labels = read_idx(path, "labels")
    assert labels.shape == (count,)
    assert np.bincount(labels, minlength=10).tolist() == [count // 10] * 10
    if name.startswith("train"):
        assert labels[0] == 9  # the official training image 0 is an ankle boot
