"""Importing this module registers every command on the app."""

from fmnist.cli import analysis_cmds, compare_cmds, data_cmds, serve_cmds, train_cmds  # noqa: F401
