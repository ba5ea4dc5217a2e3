"""The page `fmnist predict --explain` writes per image: one self-contained HTML file (inline CSS, PNGs as
base64 data URIs, no scripts), like report.html. Standalone because the inference layer cannot use
fmnist.report; the PNGs are encoded here with zlib so .npy inputs need no Pillow either."""

from __future__ import annotations

import base64
import html
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from fmnist.errors import UsageError
from fmnist.inference.explain import NO_CAM, NO_OOD, Explanation

SCALE = 4  # 28 px shown as 112: each pixel a visible block, never smoothed into something it was not
CAM_ALPHA = 0.5  # the heat's share of an overlay pixel

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:1.5em auto;color:#222}
figure{display:inline-block;margin:0 1em 1em 0;text-align:center;font-size:90%}
img{image-rendering:pixelated;border:1px solid #999}table{border-collapse:collapse}
td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}.unknown{color:#b00;font-weight:bold}"""


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of uint8 (H, W) gray or (H, W, 3) RGB pixels."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def data_uri(pixels: np.ndarray, scale: int = SCALE) -> str:
    """A data: URI of the pixels as a PNG, each pixel a `scale` x `scale` block (the server sends scale 1)."""
    big = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    return "data:image/png;base64," + base64.b64encode(png(big)).decode("ascii")


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(28, 28, 3) uint8: the gray image under the map in a black-red-yellow-white ("hot") scale."""
    heat = np.clip(np.stack([3 * cam, 3 * cam - 1, 3 * cam - 2], axis=-1), 0, 1) * 255
    gray = np.repeat(image[..., None].astype(np.float64), 3, axis=-1)
    return np.round((1 - CAM_ALPHA) * gray + CAM_ALPHA * heat).astype(np.uint8)


def _figure(pixels: np.ndarray, caption: str) -> str:
    alt = html.escape(re.sub(r"<[^>]+>", " ", caption), quote=True)  # the caption's text, without its <br>s
    return f'<figure><img src="{data_uri(pixels)}" alt="{alt}"><figcaption>{caption}</figcaption></figure>'


def render(name: str, e: Explanation) -> str:
    """The page's HTML for one image named `name`."""
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(c['label'])}</td><td>{100 * c['probability']:.1f}%</td></tr>" for c in e.top)
    if e.ood_score is None:
        likeness = f"<p>No OOD score: {NO_OOD}.</p>"
    else:
        verdict = ('<span class="unknown">unlike Fashion-MNIST (unknown)</span>' if e.unknown
                   else "like Fashion-MNIST")  # fmt: skip
        likeness = (f"<p>OOD score <b>{e.ood_score:.3f}</b> against the run's threshold {e.threshold:.3f} "
                    f"(higher is less like the training images): {verdict}.</p>")  # fmt: skip
    if e.cam is None:
        cam = f"<p>No Grad-CAM: {NO_CAM}.</p>"
    else:
        flat = " (flat: it shows no place)" if e.cam_flat else ""
        cam = _figure(overlay(e.image, e.cam), f"Grad-CAM for {esc(e.top[0]['label'])}{flat}")
    neighbours = "".join(
        _figure(img, f"{esc(label)}<br>train #{index}<br>cosine {sim:.3f}")
        for img, label, index, sim in zip(
            e.neighbour_images, e.neighbour_labels, e.neighbour_indices, e.neighbour_similarity
        )  # fmt: skip
    )
    note = f"<p><i>note: {esc(e.note)}</i></p>" if e.note else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>What the model saw: {esc(name)}</title>
<style>{_STYLE}</style></head><body>
<h1>What the model saw: {esc(name)}</h1>
{_figure(e.image, "the 28x28 image the model received")}{cam}
<h2>Calibrated top classes</h2><p>Temperature {e.temperature:.3f}.</p>
<table><tr><th>class</th><th>probability</th></tr>{rows}</table>{note}
<h2>How Fashion-MNIST-like it is</h2>{likeness}
<h2>The {len(e.neighbour_labels)} nearest training images</h2>
<p>By cosine similarity of the network's penultimate features.</p>
{neighbours}
</body></html>
"""


def check_folder(folder: Path) -> Path:
    """The --explain folder, created; one-line UsageError where it cannot be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--explain {folder}: cannot create the folder ({exc.strerror or exc})") from None
    if not folder.is_dir():
        raise UsageError(f"--explain {folder}: not a folder")
    return folder


def write_pages(folder: Path, named: list[tuple[str, Explanation]]) -> list[Path]:
    """One NAME.html per image in `folder` (NAME-2.html, ... where two inputs share a name)."""
    written: list[Path] = []
    taken: set[str] = set()
    for name, explanation in named:
        stem, n = Path(name).stem or "image", 1
        while (candidate := stem if n == 1 else f"{stem}-{n}") in taken:
            n += 1
        taken.add(candidate)
        path = folder / f"{candidate}.html"
        try:
            path.write_text(render(name, explanation), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--explain {folder}: cannot write {path.name} ({exc.strerror or exc})") from None
        written.append(path)
    return written
