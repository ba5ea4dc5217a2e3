"""Coverage-guided fuzzing of the IDX and CSV readers with atheris.

    python tests/fuzz_readers.py -runs=100000          # or -max_total_time=600

Any exception other than fmnist's DataError is a finding (atheris prints the input).
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (imported uninstrumented: only fmnist's own code needs coverage)

with atheris.instrument_imports(include=["fmnist"]):
    from fmnist.data.csv import read_kaggle_csv
    from fmnist.data.idx import parse_idx
    from fmnist.errors import DataError


def one_input(data: bytes) -> None:
    for kind in ("images", "labels"):
        try:
            parse_idx(data, kind)
        except DataError:
            pass
    try:
        read_kaggle_csv(data)
    except DataError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
