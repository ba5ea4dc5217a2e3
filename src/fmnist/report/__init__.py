"""Figures and reports for runs and comparisons."""
