"""fmnist: train, compare, explain and serve Fashion-MNIST classifiers.

The Python API (see the README): `load_data`, `train`, `resume`, `compare`, `ablate`,
`load_run`, `make_config`, and the result types `Run` and `Comparison`. They are imported on
first use, so `import fmnist` (and the CLI's start) stays fast.
"""

__version__ = "0.3.1"

_API = ("Comparison", "Run", "ablate", "compare", "load_data", "load_run", "make_config", "resume", "sweep", "train")


def __getattr__(name: str):
    if name in _API:
        from fmnist import api

        return getattr(api, name)
    raise AttributeError(f"module 'fmnist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
