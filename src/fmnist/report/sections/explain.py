"""Section 10: Grad-CAM heatmaps for convolutional networks and a 2-D map of each model's embedding."""

from __future__ import annotations

import time

import torch

from fmnist.analysis.embeddings import METHOD_NAMES, resolve_method
from fmnist.analysis.gradcam import flat_maps, grad_cam, heat_on_object
from fmnist.analysis.mistakes import one_per_class
from fmnist.constants import CLASS_NAMES, IMAGE_SIZE
from fmnist.report.context import ReportContext, ReportedRun
from fmnist.report.document import Heading, Image, Note, Section
from fmnist.report.figures_images import embedding_scatter, gradcam_grid
from fmnist.report.text import count, pct, plural


def _gradcam(ctx: ReportContext, run: ReportedRun, preds) -> tuple[list, str, str]:
    """(blocks, takeaway sentence, note on flat maps or "")."""
    probs, labels = preds.probabilities, preds.labels
    predicted = probs.argmax(1)
    right = one_per_class(probs, labels, correct=True)
    wrong = one_per_class(probs, labels, correct=False)
    order = [i for pair in zip(right, wrong) for i in pair]
    chosen = [i for i in order if i is not None]
    heat = (
        grad_cam(preds.model, preds.x[chosen], predicted[chosen]) if chosen else torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE)
    )
    flat = flat_maps(heat)
    images, heatmaps, rows, flags = [], [], [], []
    k = 0
    for slot, index in enumerate(order):
        c, kind = slot // 2, ("correct" if slot % 2 == 0 else "wrong")
        if index is None:
            images.append(None)
            heatmaps.append(None)
            flags.append(False)
            rows.append((CLASS_NAMES[c], "", kind))
            continue
        images.append(preds.images[index])
        heatmaps.append(heat[k].numpy())
        flags.append(bool(flat[k]))
        k += 1
        rows.append((CLASS_NAMES[c], f"{kind}: {CLASS_NAMES[int(predicted[index])]}", kind))
    png = gradcam_grid(images, heatmaps, rows, flags, ctx.figure("gradcam", run))
    usable = [i for i, f in zip(chosen, flat.tolist()) if not f]
    on_object = heat_on_object(heat[~flat], torch.from_numpy(preds.images[usable])) if usable else float("nan")
    blocks = [Heading(f"{run.name}: Grad-CAM"), Image(png, f"Grad-CAM heatmaps of {run.name}",
              "Per class: its most confident correct prediction and its most confident mistake (if any), each "
              "with the heatmap of the predicted class (red: the evidence the network used most).")]  # fmt: skip
    sentence = ""
    if usable:
        sentence = (f"For {run.name}, {pct(on_object, 0)} of the Grad-CAM heat lies on the garment itself (pixels "
                    f"brighter than the background) across {plural(len(usable), 'image')}.")  # fmt: skip
    note = ""
    if flat.any():
        layer = getattr(preds.model, "cam_layer_name", None)
        where = f" at layer `{layer}`" if layer else ""
        note = (f"{run.name}: {int(flat.sum())} of {len(chosen)} Grad-CAM maps are flat{where} (no positive "
                f"evidence, or the same value everywhere), so they show no region; they are marked 'flat map' "
                f"and left out of the share of heat on the garment")  # fmt: skip
    return blocks, sentence, note


def _embedding(ctx: ReportContext, run: ReportedRun) -> tuple[list, str]:
    made = ctx.embedding_map(run)
    if made is None:
        return [], ""
    name = METHOD_NAMES[made.method]
    png = embedding_scatter(made.coords, made.labels, ctx.figure("embedding", run),
                            f"{run.name}: {name} map of the embedding ({count(len(made.labels))} test images)")  # fmt: skip
    blocks = [Heading(f"{run.name}: embedding"), Image(png, f"{name} map of {run.name}'s embedding")]
    separation = made.separation
    if not separation:
        return blocks, ""
    best = max(separation, key=separation.get)
    worst = min(separation, key=separation.get)
    sentence = (f"In {run.name}'s {name} map, {CLASS_NAMES[best]} forms the most separate cluster (silhouette "
                f"{separation[best]:.2f}) and {CLASS_NAMES[worst]} the most mixed ({separation[worst]:.2f}).")  # fmt: skip
    return blocks, sentence


def explanations_section(ctx: ReportContext) -> Section:
    section = Section(10, "explanations", "Explanations")
    notes: list[str] = []
    sentences: dict[str, str] = {}
    method = resolve_method(ctx.options.embedding)
    subsampled = False
    for run in ctx.detail_runs:
        preds = ctx.predictions(run)
        if preds is None:
            notes.append(f"{run.name}: skipped, {ctx.prediction_problems.get(run.name)}")
            continue
        if ctx.options.gradcam:
            if getattr(preds.model, "cam_layer", None) is not None:
                started = time.perf_counter()
                blocks, sentence, flat_note = _gradcam(ctx, run, preds)
                ctx.timings[f"Grad-CAM of {run.name}"] = time.perf_counter() - started
                section.blocks += blocks
                if sentence:
                    sentences[run.name] = (sentences.get(run.name, "") + " " + sentence).strip()
                if flat_note:
                    notes.append(flat_note)
            else:
                notes.append(f"{run.name}: no Grad-CAM, it has no convolutional layer ({run.family})")
        if method != "none":
            blocks, sentence = _embedding(ctx, run)
            section.blocks += blocks
            if sentence:
                sentences[run.name] = (sentences.get(run.name, "") + " " + sentence).strip()
            subsampled = subsampled or ctx.options.embedding_points < len(preds.labels)
    if sentences:
        section.blocks.insert(0, ctx.takeaway(sentences))
    if method != "none" and subsampled:
        section.blocks.append(Note(f"The 2-D maps use a class-stratified random subsample of "
                                   f"{count(ctx.options.embedding_points)} test images, to keep the report fast; "
                                   f"the silhouette (−1 to 1) measures how well each class's points stay together "
                                   f"and apart from the others in the map."))  # fmt: skip
    if method == "none":
        notes.append("embedding maps turned off")
    if not ctx.options.gradcam:
        notes.append("Grad-CAM turned off")
    if notes:
        section.blocks.append(Note("; ".join(notes) + "."))
    return section
