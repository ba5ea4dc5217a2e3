"""Importing this module registers every command on the app (`--help` lists them in workflow order)."""

from fmnist.cli import (  # noqa: F401
    ablate,
    compare,
    data,
    ensemble,
    evaluate,
    export,
    models,
    predict,
    recipes,
    report,
    serve,
    sweep,
    train,
)
