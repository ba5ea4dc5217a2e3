"""Sections 1-2: the data (source, split, checksums, classes, samples) and the models."""

from __future__ import annotations

import numpy as np

from fmnist.constants import CLASS_NAMES, NUM_CLASSES
from fmnist.data.splits import saved_holdout, stratified_split
from fmnist.report import figures
from fmnist.report.context import ReportContext
from fmnist.report.document import Details, Image, Note, Section, Table, Takeaway, Text
from fmnist.report.text import count, join_words, plural

KAGGLE_CAVEAT = (
    "This is the Kaggle split: its 10,000 test images are not the official test set, so accuracies "
    "are close to, not identical with, figures measured on the official split."
)


def _spread(counts: np.ndarray, what: str) -> str:
    if counts.min() == counts.max():
        return f"every class has {count(int(counts[0]))} {what} images"
    lo, hi = int(np.argmin(counts)), int(np.argmax(counts))
    return (f"{what} images per class range from {count(int(counts[lo]))} ({CLASS_NAMES[lo]}) "
            f"to {count(int(counts[hi]))} ({CLASS_NAMES[hi]})")  # fmt: skip


def data_section(ctx: ReportContext) -> Section:
    info = ctx.data_info
    section = Section(1, "data", "Data")
    blocks = section.blocks
    blocks.append(Text(f"Source: **{info.get('source', 'unknown')}** (`{info.get('location', '?')}`); "
                       f"split: **{info.get('split', 'unknown')}**."))  # fmt: skip
    if info.get("split") == "kaggle":
        blocks.append(Note(KAGGLE_CAVEAT))
    files = info.get("files", {})
    if files:
        rows = [[role.replace("_", " "), f"`{rec.get('name', '')}`", f"`{rec.get('sha256', '')}`"]
                for role, rec in files.items()]  # fmt: skip
        blocks.append(Table(["file", "name", "sha256"], rows, "lll"))
    dataset = ctx.dataset
    if dataset is None:
        blocks.append(Note(f"The images could not be loaded, so the class table, samples and every "
                           f"image-based section are skipped: {ctx.data_problem}."))  # fmt: skip
        return section
    train = np.bincount(dataset.train_labels, minlength=NUM_CLASSES)
    test = np.bincount(dataset.test_labels, minlength=NUM_CLASSES)
    config = ctx.runs[0].config
    val = np.zeros(NUM_CLASSES, dtype=int)
    val_size, seed = saved_holdout(config)
    if 0 < val_size < len(dataset.train_labels):
        _, val_idx = stratified_split(dataset.train_labels, val_size, seed)
        val = np.bincount(dataset.train_labels[val_idx], minlength=NUM_CLASSES)
    rows = [[str(c), CLASS_NAMES[c], count(int(train[c])), count(int(val[c])), count(int(test[c]))]
            for c in range(NUM_CLASSES)]  # fmt: skip
    rows.append(["", "**total**", count(int(train.sum())), count(int(val.sum())), count(int(test.sum()))])
    blocks.append(Table(["label", "class", "train", "of which validation", "test"], rows, "llrrr"))
    balanced = train.min() == train.max() and test.min() == test.max()
    if balanced:
        sentence = f"every class has {count(int(train[0]))} training and {count(int(test[0]))} test images"
    else:
        sentence = f"{_spread(train, 'training')}; {_spread(test, 'test')}"
    held = (f"; {count(int(val.sum()))} training images are held out for validation "
            f"(stratified, seed {seed}) and never trained on") if val.sum() else "; no validation split"  # fmt: skip
    blocks.append(Takeaway(("Balanced classes: " if balanced else "") + sentence + held + "."))
    grid = figures.sample_grid(dataset.train_images, dataset.train_labels, ctx.figure("samples"), per_class=10,
                               seed=ctx.options.seed)  # fmt: skip
    blocks.append(
        Image(grid, "sample training images, one row per class", "Random training images, one row per class.")
    )
    return section


def _layer_table(model_name: str, model_args: dict) -> Table | None:
    from fmnist.analysis.layers import layer_summary
    from fmnist.errors import FmnistError
    from fmnist.models.registry import create_model, saved_model_args

    try:
        model = create_model(model_name, **saved_model_args(model_name, model_args))
    except FmnistError:
        return None
    rows = [
        [row.name, row.kind, "x".join(map(str, row.output_shape)), count(row.params)] for row in layer_summary(model)
    ]
    return Table(["layer", "type", "output shape", "params"], rows, "llrr")


def models_section(ctx: ReportContext) -> Section:
    section = Section(2, "models", "Models")
    blocks = section.blocks
    rows, sizes = [], []
    for label, runs in ctx.groups.items():
        r = runs[0].results
        family = runs[0].family
        args = ", ".join(f"{k}={v}" for k, v in r.model_args.items()) or "defaults"
        rows.append([label, f"`{r.model}`", family, count(r.params), f"{r.size_mb:.2f}", args])
        sizes.append((r.params, label, family))
    blocks.append(Table(["name", "model", "family", "parameters", "size (MB)", "arguments"], rows, "lllrrl"))
    for label, runs in ctx.groups.items():
        run = runs[0]
        if run.classical:
            c = run.classical
            state = {True: "; converged", False: "; stopped at max_iter before converging"}.get(c.converged, "")
            learned = {"SVC": "support-vector coordinates and their weights", "RandomForestClassifier": "tree nodes"}
            text = (f"Fitted on {count(c.train_images)} training images in {c.fit_seconds:.1f} s"
                    f"{state}; scores: {c.scores}. Its 'parameters' count the numbers it learned: "
                    f"{learned.get(c.estimator, 'coefficients and intercepts')}.")  # fmt: skip
            blocks.append(Details(f"{label}: {c.estimator} ({c.library})", [Text(text)]))
            continue
        table = _layer_table(run.model, run.results.model_args)
        if table is not None:
            blocks.append(Details(f"{label}: layer summary ({plural(len(table.rows), 'layer')})", [table]))
    sizes.sort()
    if len(sizes) == 1:
        params, label, family = sizes[0]
        blocks.append(Takeaway(f"{label} is a {family} model with {count(params)} parameters "
                               f"({ctx.runs[0].results.size_mb:.2f} MB as float32)."))  # fmt: skip
    else:
        (small, s_label, _), (big, b_label, _) = sizes[0], sizes[-1]
        ratio = f" ({big / small:,.0f}x)" if small else ""
        families = sorted({f for _, _, f in sizes})
        blocks.append(Takeaway(f"Sizes range from {s_label}'s {count(small)} to {b_label}'s {count(big)} "
                               f"parameters{ratio}; families: {join_words(families)}."))  # fmt: skip
    return section
