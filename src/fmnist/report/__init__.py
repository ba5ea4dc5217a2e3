"""Reports for runs and comparisons: report.md with figures/*.png, and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path


def write_report(folder: Path, **options) -> Path:
    """Write the report for a run or compare directory; see fmnist.report.builder.write_report."""
    from fmnist.report.builder import write_report as _write

    return _write(folder, **options)


__all__ = ["write_report"]
