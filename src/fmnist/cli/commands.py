"""Importing this module registers every command on the app."""

from fmnist.cli import compare_cmds, data_cmds, train_cmds  # noqa: F401
