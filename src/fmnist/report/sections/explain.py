"""Section 10: Grad-CAM heatmaps for convolutional networks and a 2-D map of each model's embedding."""

from __future__ import annotations

import time

import numpy as np
import torch

from fmnist.analysis.embeddings import class_separation, embed_2d, resolve_method, stratified_subsample
from fmnist.analysis.gradcam import grad_cam, heat_on_object
from fmnist.analysis.mistakes import one_per_class
from fmnist.analysis.predictions import extract_features
from fmnist.constants import CLASS_NAMES
from fmnist.report.context import ReportContext, Run
from fmnist.report.document import Heading, Image, Note, Section
from fmnist.report.figures_images import embedding_scatter, gradcam_grid
from fmnist.report.text import count, pct

METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def _gradcam(ctx: ReportContext, run: Run, preds) -> tuple[list, str]:
    probs, labels = preds.probabilities, preds.labels
    predicted = probs.argmax(1)
    right = one_per_class(probs, labels, correct=True)
    wrong = one_per_class(probs, labels, correct=False)
    order = [i for pair in zip(right, wrong) for i in pair]
    chosen = [i for i in order if i is not None]
    heat = grad_cam(preds.model, preds.x[chosen], predicted[chosen]).numpy() if chosen else np.zeros((0, 28, 28))
    images, heatmaps, rows = [], [], []
    k = 0
    for slot, index in enumerate(order):
        c, kind = slot // 2, ("correct" if slot % 2 == 0 else "wrong")
        if index is None:
            images.append(None)
            heatmaps.append(None)
            rows.append((CLASS_NAMES[c], "", kind))
            continue
        images.append(preds.images[index])
        heatmaps.append(heat[k])
        k += 1
        caption = f"{kind}: {CLASS_NAMES[int(predicted[index])]}"
        rows.append((CLASS_NAMES[c], caption, kind))
    png = gradcam_grid(images, heatmaps, rows, ctx.figure("gradcam", run.name))
    on_object = (
        heat_on_object(torch.from_numpy(heat), torch.from_numpy(preds.images[chosen])) if chosen else float("nan")
    )
    blocks = [Heading(f"{run.name}: Grad-CAM"), Image(png, f"Grad-CAM heatmaps of {run.name}",
              "Per class: its most confident correct prediction and its most confident mistake (if any), each "
              "with the heatmap of the predicted class (red: the evidence the network used most).")]  # fmt: skip
    sentence = (f"For {run.name}, {pct(on_object, 0)} of the Grad-CAM heat lies on the garment itself (pixels "
                f"brighter than the background) across these {len(chosen)} images.")  # fmt: skip
    return blocks, sentence


def _embedding(ctx: ReportContext, run: Run, preds, method: str) -> tuple[list, str]:
    labels = preds.labels.numpy()
    chosen = stratified_subsample(labels, ctx.options.embedding_points, ctx.options.seed)
    features = extract_features(preds.model, preds.x[chosen])
    started = time.perf_counter()
    coords, used = embed_2d(features, method, ctx.options.seed)
    ctx.timings[f"{used} {run.name}"] = time.perf_counter() - started
    name = METHOD_NAMES[used]
    png = embedding_scatter(coords, labels[chosen], ctx.figure("embedding", run.name),
                            f"{run.name}: {name} of forward_features ({count(len(chosen))} test images)")  # fmt: skip
    separation = class_separation(coords, labels[chosen])
    blocks = [Heading(f"{run.name}: embedding"), Image(png, f"{name} map of {run.name}'s embedding")]
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
                blocks, sentence = _gradcam(ctx, run, preds)
                ctx.timings[f"grad-cam {run.name}"] = time.perf_counter() - started
                section.blocks += blocks
                sentences[run.name] = (sentences.get(run.name, "") + " " + sentence).strip()
            else:
                notes.append(f"{run.name}: no Grad-CAM, it has no convolutional layer ({run.family})")
        if method != "none":
            blocks, sentence = _embedding(ctx, run, preds, method)
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
        notes.append("embedding maps turned off (embedding='none')")
    if not ctx.options.gradcam:
        notes.append("Grad-CAM turned off")
    if notes:
        section.blocks.append(Note("; ".join(notes) + "."))
    return section
