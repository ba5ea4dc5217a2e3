"""Reading and writing the IDX format (LeCun's MNIST container), gzip-compressed or raw.

Every failure raises DataError naming the file; no input makes the reader allocate more than
the bytes it has actually read, so a header that claims a billion images is rejected cheaply.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from fmnist.constants import IMAGE_SIZE, NUM_CLASSES
from fmnist.errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"
# Far above Fashion-MNIST's 70,000 images; anything larger is a corrupt or hostile header.
MAX_ITEMS = 1_000_000
_CHUNK = 1 << 20


def _read_exact(stream: io.BufferedIOBase, size: int, name: str) -> bytearray:
    """Read exactly `size` bytes in chunks (never preallocating `size`), else DataError."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(min(_CHUNK, remaining))
        if not chunk:
            raise DataError(f"{name}: truncated file (expected {size:,} more bytes, got {size - remaining:,})")
        parts.append(chunk)
        remaining -= len(chunk)
    return bytearray().join(parts)  # writable, so numpy and torch can share it without a copy


def _decode(raw_stream: io.BufferedIOBase, name: str, kind: str) -> np.ndarray:
    header = _read_exact(raw_stream, 4, name)
    magic = struct.unpack(">I", header)[0]
    expected_magic = IMAGES_MAGIC if kind == "images" else LABELS_MAGIC
    if magic != expected_magic:
        what = "image" if kind == "images" else "label"
        raise DataError(f"{name}: not an IDX {what} file (magic number {magic}, expected {expected_magic})")
    ndim = 3 if kind == "images" else 1
    dims = struct.unpack(f">{ndim}I", _read_exact(raw_stream, 4 * ndim, name))
    count = dims[0]
    if count == 0 or count > MAX_ITEMS:
        raise DataError(f"{name}: implausible item count {count:,} in header")
    if kind == "images" and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    item = IMAGE_SIZE * IMAGE_SIZE if kind == "images" else 1
    payload = _read_exact(raw_stream, count * item, name)
    if raw_stream.read(1):
        raise DataError(f"{name}: trailing bytes after {count:,} items declared in header")
    array = np.frombuffer(payload, dtype=np.uint8)
    if kind == "images":
        return array.reshape(count, IMAGE_SIZE, IMAGE_SIZE)
    if array.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{name}: label {int(array.max())} outside 0-{NUM_CLASSES - 1}")
    return array


def parse_idx(data: bytes, kind: str, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX `data` (raw or gzip) holding `kind` = "images" (N,28,28) or "labels" (N,)."""
    if kind not in ("images", "labels"):
        raise ValueError(f"kind must be 'images' or 'labels', not {kind!r}")
    try:
        if data[:2] == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                return _decode(stream, name, kind)
        return _decode(io.BytesIO(data), name, kind)
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises these for corrupt streams
        raise DataError(f"{name}: corrupt gzip stream ({exc})") from None


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Read an IDX file from disk; see `parse_idx`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_idx(data, kind, name=str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array (N,28,28) images or (N,) labels as raw IDX bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 3:
        header = struct.pack(">IIII", IMAGES_MAGIC, *array.shape)
    elif array.ndim == 1:
        header = struct.pack(">II", LABELS_MAGIC, array.shape[0])
    else:
        raise ValueError(f"IDX arrays must be 1-D labels or 3-D images, not shape {array.shape}")
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as IDX; gzip when `compress` or (if None) when the name ends in .gz."""
    path = Path(path)
    payload = encode_idx(array)
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
