"""Command-line interface."""

from fmnist.cli.app import app, main

__all__ = ["app", "main"]
