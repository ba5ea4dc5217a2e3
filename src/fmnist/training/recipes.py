"""Named recipes: a model and the training settings chosen for a goal (`fmnist train --recipe NAME`).

A recipe is chosen in advance, never tuned on the test set: its epochs, augmentation and
schedule are fixed here, the best epoch is picked on the validation split, and the test set is
touched once per run. What each recipe reached, how long it took and on which hardware is
measured by `benchmarks/frontier.py`, which writes `recipes_measured.json` beside this file;
`fmnist recipes` shows those figures and says plainly when a recipe has not been measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from fmnist.config import Settings
from fmnist.errors import UsageError, did_you_mean

MEASURED_FILE = Path(__file__).with_name("recipes_measured.json")


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str
    goal: str  # what it is for, in a few words
    device: str  # "cpu" or "gpu": where it is meant to run (every recipe also runs on a CPU)
    settings: Settings = field(default_factory=dict)  # any `fmnist train` keys but the model

    def values(self) -> Settings:
        """Config values: the model and its settings (flags and files still override them)."""
        return {"model": self.model, **self.settings}


# The settings a model is tuned for, each a recipe's (MODEL_RECIPES below): `fmnist train --model
# NAME` starts from them (before a named recipe, a config file and flags). A model without an entry
# starts from TrainConfig's defaults.

# 3 epochs of a narrower fastcnn (16-32-64) with a frozen patch-whitening first conv, trained
# with Muon (conv filters) and AdamW (the rest) on a one-cycle schedule peaking at 2e-2, against
# fmnist 0.3.1's 5 epochs of AdamW on 16-48-96. Its screen: configs/screens/fast.toml, each lever
# alone (whitening, Muon), then the narrower net their margin pays for; batch 128 gives a 2-core
# CPU more images/s than 256 and more steps per epoch. What the screen measured (validation only):
# benchmarks/results/screen-fast-<cpu>*.json, rendered in docs/results.md; what the recipe reaches
# on test and how fast: recipes_measured.json ("fast") and benchmarks/results/time_to_accuracy-*.json.
FAST_SETTINGS: Settings = {
    "model_args": {"widths": [16, 32, 64], "whiten": True},
    "epochs": 3, "batch_size": 128, "optimizer": "muon", "lr": 2e-2, "weight_decay": 5e-2,
    "scheduler": "onecycle", "label_smoothing": 0.1, "flip": True, "tta": "flip",
}  # fmt: skip

# Seed 004's training set-up, as written: Adam 1e-3, batch 128, 20 epochs, fixed learning
# rate, inputs normalised with mean 0.5 and std 0.5, no augmentation.
SEED004_SETTINGS: Settings = {
    "epochs": 20, "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "none",
    "label_smoothing": 0.0, "flip": False, "tta": "none", "normalize": True, "mean": 0.5, "std": 0.5,
}  # fmt: skip

# The MLP baseline must stay a small share of `make run` (<= 25% of its training time, so at most a
# third of the CNN's) and still reach 89.5%. Chosen on validation by configs/screens/mlp-baseline.toml
# (the most accurate candidate within a third of the fast CNN's time, timed beside it at AVX2 fp32;
# its record: benchmarks/results/screen-mlp-baseline-<cpu>-avx2.json): 4 epochs of 784-512-256 at a
# higher peak rate and without mirrored images, which cost a 4-epoch MLP more than they give.
MLP_WIDE_SETTINGS: Settings = {
    "epochs": 4, "batch_size": 256, "optimizer": "adamw", "lr": 5e-3, "weight_decay": 5e-2,
    "scheduler": "onecycle", "label_smoothing": 0.1, "flip": False,
}  # fmt: skip

# The recipe whose settings each model starts from, by name: its run records that recipe.
MODEL_RECIPES: dict[str, str] = {"fastcnn": "fast", "cnn_seed004": "seed004", "mlp_wide": "mlp-baseline"}


def own_recipe(model: str) -> str:
    """The recipe `fmnist train --model MODEL` starts from ("fast" for fastcnn), or "" for none."""
    return MODEL_RECIPES.get(model, "")


def model_settings(model: str) -> Settings:
    """The training settings `model` starts from (a copy; empty for a model with none)."""
    return dict(RECIPES[MODEL_RECIPES[model]].settings) if model in MODEL_RECIPES else {}


# fmnist 0.4's cpu-94 set-up (AdamW, shifts, EMA), which cpu-95 and the GPU recipes keep (cpu-95 adds erasing).
_CPU_SCHEDULE: Settings = {
    "batch_size": 128, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-2, "scheduler": "onecycle",
    "label_smoothing": 0.1, "flip": True, "crop_pad": 2, "ema": 0.999, "tta": "flip-shift",
}  # fmt: skip

# The Wide ResNet set-up of the leaderboard's family: SGD with a cosine schedule, random erasing.
_WRN_SCHEDULE: Settings = {
    "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "scheduler": "cosine",
    "label_smoothing": 0.0, "flip": True, "crop_pad": 2, "erase": 0.5, "ema": 0.999, "tta": "flip-shift",
}  # fmt: skip

_RECIPES = (
    Recipe(
        "fast", "fastcnn", "the default: over 93% in 3 epochs, made for accuracy per CPU-second", "cpu", FAST_SETTINGS
    ),
    Recipe("mlp-baseline", "mlp_wide", "the MLP baseline of every study", "cpu", MLP_WIDE_SETTINGS),
    Recipe("seed004", "cnn_seed004", "seed 004's CNN and set-up as written (20 epochs)", "cpu", SEED004_SETTINGS),
    # The fast recipe given about 3x its time: 8 epochs of the same whitened 16-32-64 net, Muon and
    # one-cycle, predicting with the mirror+shift average. Chosen on validation by
    # configs/screens/cpu-94.toml (AVX2, fp32; its record: benchmarks/results/screen-cpu-94-<cpu>-avx2.json)
    # over more epochs, wider stages, random shifts and EMA: shifts and EMA each cost those short
    # runs accuracy. fmnist 0.4's cpu-94 (24-72-144 learned, 12 epochs of AdamW with shifts and EMA)
    # took several times longer for the same validation accuracy. Its epochs validate on the plain view
    # (val_tta) and it predicts with all six: the six each epoch cost more than its test pass.
    Recipe(
        "cpu-94",
        "fastcnn",
        "aims at 94% in 90 s on 2 laptop cores: fast, 8 epochs, shift TTA",
        "cpu",
        {**FAST_SETTINGS, "epochs": 8, "tta": "flip-shift", "val_tta": "none"},
    ),  # fmt: skip
    # The fast recipe's levers on fastcnn_deep (two convs a stage) at 16-64-128 with the whitened
    # first conv: Muon, flips, mirror+shift TTA, no random shifts. Chosen on validation by
    # configs/screens/cpu-95.toml (AVX2, fp32; its record: benchmarks/results/screen-cpu-95-<cpu>-avx2.json)
    # over the wider single-conv fastcnn 16-96-192 at the same cost. fmnist 0.4's cpu-95 (fastcnn_deep
    # 32-96-192 learned, 30 epochs of AdamW with shifts, EMA and erasing) took about an hour there.
    # Its epochs validate on the plain view, as cpu-94's do. At 12 epochs its peak rate of 2e-2 held
    # against 1e-2 and 3e-2 (configs/screens/cpu-95-lr.toml); the time that flushing denormals freed
    # then bought a 13th epoch, at 1e-2, over 13 at 2e-2 and the 12 of before
    # (configs/screens/cpu-95-epochs.toml; records: benchmarks/results/screen-cpu-95-{lr,epochs}-<cpu>-avx2.json).
    # Random erasing, screened over three seeds against its late overfitting, did not beat it
    # (configs/screens/cpu-95-augment.toml), nor did 14 epochs at batch 256, which cost about what
    # 13 at 128 do at two threads (configs/screens/cpu-95-batch.toml). Progressive resizing then took
    # time off: its first 5 epochs train on 24x24 images, by configs/screens/cpu-95-resize.toml's
    # rule (no lower on validation, at most 0.97 of the time), over 14 epochs with the first 7 small.
    Recipe(
        "cpu-95",
        "fastcnn_deep",
        "aims at 95% in 6 min on 2 laptop cores: whitened fastcnn_deep, Muon",
        "cpu",
        {
            **FAST_SETTINGS,
            "model_args": {"widths": [16, 64, 128], "whiten": True},
            "epochs": 13,
            "low_res_epochs": 5,
            "lr": 1e-2,
            "tta": "flip-shift",
            "val_tta": "none",
        },
    ),  # fmt: skip
    # GPU recipes (issue 29), chosen before any GPU measurement, each from a design already measured.
    # Their targets count training time on one H100 or H200, with --compile auto compiling the step
    # (its time is recorded apart); benchmarks/gpu_speed.py measures them.
    #
    # gpu-fast, >= 94% in <= 5 s: the 94% that fmnist 0.4's cpu-94 reached in 12 epochs, on 0.4's cpu-95 airbench-style
    # net (two convs a stage, 45 MFLOPs an image), which is more accurate per epoch and costs a GPU
    # nothing more. On a GPU a small net's step is bound by launches, not arithmetic, so batch 256
    # halves the steps (2,580); the learning rate grows by about sqrt(2) with it, and the EMA's
    # horizon (1 / (1 - decay) = 500 steps) stays the ~2.3 epochs it is in cpu-94.
    Recipe(
        "gpu-fast",
        "fastcnn_deep",
        "94% in 5 s on one H100/H200: fastcnn_deep 32-96-192, batch 256",
        "gpu",
        {
            "model_args": {"widths": [32, 96, 192]},
            "epochs": 12,
            **_CPU_SCHEDULE,
            "batch_size": 256,
            "lr": 4e-3,
            "ema": 0.998,
        },
    ),  # fmt: skip
    # gpu-95, >= 95% in <= 30 s: fmnist 0.4's cpu-95 unchanged (its CPU figures are in the git history of
    # recipes_measured.json), so the accuracy is a measured one; 12,900 steps of a compiled step at ~2 ms fit the 30 s.
    Recipe(
        "gpu-95",
        "fastcnn_deep",
        "95% in 30 s on one H100/H200: cpu-95's design, compiled (30 epochs)",
        "gpu",
        {
            "model_args": {"widths": [32, 96, 192]},
            "epochs": 30,
            **_CPU_SCHEDULE,
            "erase": 0.25,
        },
    ),  # fmt: skip
    # gpu-best, >= 96.3%: gpu-wrn16's recipe (95.91% ± 0.06 over 3 runs) on a twice-as-wide WRN-16-8
    # for twice the epochs. The leaderboard's 96.3% is WRN-28-10 with random erasing; WRN-16-8 has
    # 30% of its FLOPs (2.4 GFLOPs an image), so 80 epochs take minutes, not an hour.
    Recipe(
        "gpu-best",
        "wrn",
        "96.3%, the best single model, on a GPU: WRN-16-8, erasing, 80 epochs",
        "gpu",
        {
            "model_args": {"depth": 16, "widen_factor": 8},
            **_WRN_SCHEDULE,
            "epochs": 80,
        },
    ),  # fmt: skip
    # WRN-16-4 with random erasing, 40 epochs: gpu-best until issue 29 (its measured figures, recorded
    # under that name, are this recipe's).
    Recipe(
        "gpu-wrn16",
        "wrn16_4",
        "95.9% on a GPU in minutes: WRN-16-4, erasing (40 epochs)",
        "gpu",
        {
            **_WRN_SCHEDULE,
            "epochs": 40,
        },
    ),  # fmt: skip
)
RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(
            f"unknown recipe {name!r}{did_you_mean(name, tuple(RECIPES))}; available: {', '.join(RECIPES)}"
        )
    return RECIPES[name]


class MeasuredRecipe(TypedDict, total=False):
    """One row of recipes_measured.json: a recipe's figures on one machine. A row holds the keys its
    benchmark wrote (gpu_speed.py adds the train and compile times): readers take the keys they need
    (`runs` reads as 1 where absent), and a row is written back exactly as it was read."""

    model: str
    runs: int
    accuracy: list[float]  # test accuracy per run
    accuracy_mean: float
    accuracy_std: float
    seconds_mean: float  # wall time per run
    seconds: list[float]  # wall time of each run (frontier.py since fmnist 0.5)
    settings: str  # settings_fingerprint() of the recipe measured; absent in rows older than fmnist 0.5
    train_seconds_mean: float  # benchmarks/gpu_speed.py: training alone
    compile_seconds: list[float]  # benchmarks/gpu_speed.py: per run
    hardware: str
    command: str  # what measured it
    smoke: bool  # a smoke run's figures, not a measurement


def settings_fingerprint(name: str) -> str:
    """The recipe's model and settings as one canonical JSON string: a measured row records it, so a
    recipe changed after its measurement shows as no longer measured (`measured`) instead of lending
    the old recipe's figures to the new one."""
    return json.dumps(RECIPES[name].values(), sort_keys=True, separators=(",", ":"))


def measured() -> dict[str, list[MeasuredRecipe]]:
    """What benchmarks/frontier.py measured per recipe: one entry per machine it ran on, in the
    order they were recorded (accuracy mean/std, seconds, hardware, command)."""
    try:
        data = json.loads(MEASURED_FILE.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: [MeasuredRecipe(**m) for m in rows if isinstance(m, dict) and _still_this_recipe(name, m)]
            for name, rows in data.items() if isinstance(rows, list)}  # fmt: skip


def _still_this_recipe(name: str, row: dict) -> bool:
    # Rows from before fingerprints were recorded carry none and are kept: their recipes are
    # unchanged since (a recipe changed later had its old rows removed from the file).
    return "settings" not in row or (name in RECIPES and row["settings"] == settings_fingerprint(name))


def record_measurement(recorded: dict[str, list[MeasuredRecipe]], name: str, figures: MeasuredRecipe) -> None:
    """Put a recipe's new figures in `recorded`: they replace those from the same hardware, else join them."""
    rows = recorded.setdefault(name, [])
    same = next((i for i, m in enumerate(rows) if m.get("hardware") == figures.get("hardware")), None)
    if same is None:
        rows.append(figures)
    else:
        rows[same] = figures


def accuracy_label(figures: MeasuredRecipe) -> str:
    """A measured recipe's test accuracy as `fmnist recipes` and frontier.py print it:
    "94.20% ± 0.06 (3 runs, worst 94.15%)"; the worst seed is what a user may draw."""
    runs = figures.get("runs", 1)
    spread = f" ± {100 * figures['accuracy_std']:.2f}" if runs > 1 else ""
    per_run = figures.get("accuracy") or []
    worst = f", worst {100 * min(per_run):.2f}%" if runs > 1 and per_run else ""
    return f"{100 * figures['accuracy_mean']:.2f}%{spread} ({runs} run{'s' if runs > 1 else ''}{worst})"
