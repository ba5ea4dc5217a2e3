"""An example for every command, shown at the end of its `--help` (and in the CLI reference)."""

from __future__ import annotations

# Command path (as `fmnist --help` names it) -> example lines. "" is the app itself.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "fmnist compare                      # train the MLP baseline and fastcnn, write a report",
        "fmnist train --model fastcnn --max-steps 20   # a smoke run in seconds",
    ),
    "data": ("fmnist data info",),
    "data info": ("fmnist data info --data-dir ~/data/fashion-mnist",),
    "data samples": ("fmnist data samples --per-class 4 --out samples.png",),
    "data fetch": ("fmnist data fetch",),
    "models": ("fmnist models", "fmnist models mlp                   # its arguments and their defaults"),
    "recipes": ("fmnist recipes", "fmnist train --recipe cpu-94"),
    "train": (
        "fmnist train --model fastcnn --out runs/cnn",
        "fmnist train --model mlp --model-arg hidden=512,256 --epochs 5",
        "fmnist train --config runs/cnn/config.toml --seed 1   # a run's settings, another seed",
        "fmnist train --resume runs/cnn       # continue after Ctrl-C",
    ),
    "evaluate": ("fmnist evaluate runs/cnn",),
    "compare": (
        "fmnist compare --models mlp_wide,fastcnn --seeds 3",
        "fmnist compare --config configs/seed002.toml --max-steps 20",
        "fmnist compare --config runs/cnn/config.toml --seeds 3   # one run's settings over 3 seeds",
    ),
    "report": ("fmnist report runs/cnn", "fmnist report runs/compare-20260101-120000 --detail all"),
    "ablate": ("fmnist ablate --base cnn_seed004 --epochs 5",),
    "ensemble": ("fmnist ensemble runs/cnn-seed0 runs/cnn-seed1 runs/cnn-seed2 --out runs/ens",),
    "sweep": ("fmnist sweep configs/sweep-example.toml", "fmnist sweep --resume runs/sweep-20260101-120000"),
    "calibrate": ("fmnist calibrate runs/cnn        # a run trained before fmnist calibrated runs itself",),
    "predict": (
        "fmnist predict runs/cnn shoe.jpg photos/",
        "fmnist predict runs/cnn photos/ --coverage 0.9 --ood reject --json",
    ),
    "robustness": ("fmnist robustness runs/cnn",),
    "export": ("fmnist export runs/cnn", "fmnist export runs/cnn --int8"),
    "serve": ("fmnist serve runs/cnn --port 8000",),
}


def epilog(path: str) -> str | None:
    """The examples of the command at `path`, kept as written by Click's help formatter."""
    lines = EXAMPLES.get(path)
    if not lines:
        return None
    # \b keeps Click from re-flowing the paragraph that follows it.
    return "Examples:\n\n\b\n" + "\n".join(f"  $ {line}" for line in lines)
