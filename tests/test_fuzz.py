"""The IDX and CSV readers on arbitrary bytes: valid arrays or fmnist's DataError, nothing else.

Hypothesis explores structured and random inputs here; `tests/fuzz_readers.py` runs the same
property under atheris (coverage-guided) for a bounded time when atheris is installed.
"""

from __future__ import annotations

import gzip
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist.data.csv import read_kaggle_csv
from fmnist.data.idx import encode_idx, parse_idx
from fmnist.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_idx(data: bytes) -> None:
    for kind in ("images", "labels"):
        try:
            array = parse_idx(data, kind)
        except DataError as exc:
            assert "\n" not in str(exc)
            continue
        assert array.dtype == np.uint8
        if kind == "images":
            assert array.ndim == 3 and array.shape[1:] == (28, 28)
        else:
            assert array.ndim == 1 and (array.size == 0 or array.max() <= 9)


def check_csv(data: bytes) -> None:
    try:
        images, labels = read_kaggle_csv(data)
    except DataError:
        return
    assert images.shape == (len(labels), 28, 28) and images.dtype == np.uint8
    assert labels.max() <= 9


@FUZZ
@given(st.binary(max_size=4096))
def test_idx_random_bytes(data: bytes):
    check_idx(data)
    check_idx(gzip.compress(data))


@st.composite
def idx_like(draw):
    """Mostly-valid IDX files with one field bent: magic, counts, dims, payload length, labels."""
    kind = draw(st.sampled_from(["images", "labels"]))
    magic = draw(st.sampled_from([2049, 2051, 2050, 0, 0xFFFFFFFF]))
    count = draw(st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1)))
    dims = draw(st.tuples(st.sampled_from([28, 27, 0, 2**31]), st.sampled_from([28, 29, 1])))
    header = struct.pack(">II", magic, count) + (struct.pack(">II", *dims) if kind == "images" else b"")
    body = draw(st.binary(max_size=2 * 784 + 3))
    data = header + body
    return gzip.compress(data) if draw(st.booleans()) else data


@FUZZ
@given(idx_like())
def test_idx_structured_mutations(data: bytes):
    check_idx(data)


@FUZZ
@given(st.lists(st.integers(0, 255), min_size=784, max_size=784), st.integers(0, 9), st.integers(0, 40))
def test_idx_truncation_at_every_length(pixels, label, cut):
    raw = encode_idx(np.array([pixels], dtype=np.uint8).reshape(1, 28, 28))
    check_idx(raw[: len(raw) - cut])
    check_idx(gzip.compress(raw)[: max(0, len(gzip.compress(raw)) - cut)])


@FUZZ
@given(st.binary(max_size=4096))
def test_csv_random_bytes(data: bytes):
    check_csv(data)


HEADER = "label," + ",".join(f"pixel{i}" for i in range(1, 785))


FIELD = st.one_of(st.integers(-5, 300), st.text("0123456789-.e x", max_size=4))


@FUZZ
@given(
    st.lists(
        # A row of 780-790 fields ("0" each; 785 is right) with up to 8 fields replaced: mostly
        # well-formed rows reach the reader's later checks, and drawing a few edits instead of
        # ~785 fields keeps 150 examples cheap.
        st.tuples(st.integers(780, 790), st.lists(st.tuples(st.integers(0, 789), FIELD), max_size=8)),
        max_size=3,
    )
)
def test_csv_structured_rows(rows):
    lines = [HEADER]
    for n_fields, edits in rows:
        fields = ["0"] * n_fields
        for index, value in edits:
            if index < n_fields:
                fields[index] = str(value)
        lines.append(",".join(fields))
    check_csv("\n".join(lines).encode())


def test_header_claiming_a_billion_images_is_cheap():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for count in (10**9, 999_999, 2**32 - 1):
        header = struct.pack(">IIII", 2051, count, 28, 28)
        with pytest.raises(DataError):
            parse_idx(header + bytes(100), "images")
        with pytest.raises(DataError):
            parse_idx(gzip.compress(header + bytes(100)), "images")
    assert time.perf_counter() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_bounded_atheris_run(tmp_path: Path):
    pytest.importorskip("atheris")
    script = Path(__file__).with_name("fuzz_readers.py")
    # libFuzzer reads the peak RSS from getrusage, and Linux carries a parent's peak across
    # fork and exec: the fuzzer starts at this process's peak (over 2 GB in a pytest-xdist
    # worker that has trained models). The 2 GB budget for the readers counts from there.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    # Findings (crash-*, oom-*) land in tmp_path, never in the checkout.
    args = ["-runs=200000", "-max_total_time=60", "-max_len=4096", f"-rss_limit_mb={inherited_mb + 2048}",
            f"-artifact_prefix={tmp_path}/"]  # fmt: skip
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
