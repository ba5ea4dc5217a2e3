"""Importing this module registers every command on the app, in workflow order (as `--help` lists them)."""

from fmnist.cli import data, models, train, evaluate, compare, report, ablate, serve_cmds  # noqa: F401, I001
