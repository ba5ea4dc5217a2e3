"""Kept so the earlier import path `from fmnist.report.markdown import write_report` keeps working.

The report itself is built in fmnist.report.builder from the sections in fmnist.report.sections.
"""

from __future__ import annotations

from fmnist.report.builder import HTML_FILE, MARKDOWN_FILE, write_report
from fmnist.report.context import FIGURES_DIR, load_runs

__all__ = ["FIGURES_DIR", "HTML_FILE", "MARKDOWN_FILE", "load_runs", "write_report"]
