"""Out-of-distribution image sets, uint8 (N,28,28), built here from what is installed (no downloads).

Every set is a deterministic function of (name, n, seed) and, for the two made from garments, of
the Fashion-MNIST images given. They play three roles, fixed before anything was measured:

- SCREENING: the sets an OOD method and its settings are chosen on, with the validation split;
- HELD_OUT: never used for choosing; the reported figures and the targets (AUROC >= 0.95,
  FPR@95 <= 25% each) are measured on these;
- AMBIGUOUS: reported only. Garments turned 90 degrees are still garments, and a sideways
  trouser or bag is a fair thing to show a clothing classifier; calling them "unknown" is not
  clearly right, so they count towards no target and choose nothing.

| set            | what                                                                   | role       |
|----------------|------------------------------------------------------------------------|------------|
| gaussian_noise | per-pixel Gaussian noise, mean 40-200 and sd 20-80 drawn per image     | screening  |
| shapes         | 1-3 circles, rectangles and thick lines, filled or outlined, on black  | screening  |
| inverted       | garments with their intensities inverted (255 - x)                     | screening  |
| letters        | 1-2 letters in Pillow's default font, white on black, MNIST-centred    | screening  |
| uniform_noise  | independent uniform pixels 0-255                                       | held out   |
| digits         | scikit-learn's 8x8 handwritten digits, enlarged to 20x20, MNIST-centred| held out   |
| natural_crops  | grayscale square crops (40-200 px) of scikit-learn's two sample photos | held out   |
| blank          | one grey level per image (0-255) with sensor noise of sd 3             | held out   |
| rotated        | garments turned 90 degrees either way                                  | ambiguous  |

"MNIST-centred": the glyph's bounding box scaled to fit 20x20, placed so its centre of mass
sits at the centre of the 28x28 frame, as MNIST (and hence Fashion-MNIST's format) was made.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from fmnist.constants import IMAGE_SIZE

SCREENING = ("gaussian_noise", "shapes", "inverted", "letters")
HELD_OUT = ("uniform_noise", "digits", "natural_crops", "blank")
AMBIGUOUS = ("rotated",)
SETS = SCREENING + HELD_OUT + AMBIGUOUS
NEEDS_GARMENTS = ("inverted", "rotated")
DEFAULT_SIZE = 1000


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    resample = Image.Resampling.BOX if image.shape[0] >= height else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def mnist_centre(glyph: np.ndarray, box: int = 20) -> np.ndarray:
    """A bright-on-black uint8 glyph of any size -> 28x28: cropped to its ink, scaled to fit `box`
    pixels keeping its aspect, centre of mass moved to the frame's centre."""
    ys, xs = np.nonzero(glyph > 0)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    if len(ys) == 0:
        return out
    crop = glyph[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = box / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = _resize(crop, h, w).astype(np.float64)
    total = small.sum() or 1.0
    cy = (small.sum(1) * np.arange(h)).sum() / total
    cx = (small.sum(0) * np.arange(w)).sum() / total
    top = int(np.clip(round(IMAGE_SIZE / 2 - 0.5 - cy), 0, IMAGE_SIZE - h))
    left = int(np.clip(round(IMAGE_SIZE / 2 - 0.5 - cx), 0, IMAGE_SIZE - w))
    out[top : top + h, left : left + w] = small.round().clip(0, 255).astype(np.uint8)
    return out


def _gaussian_noise(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    mean = rng.uniform(40, 200, (n, 1, 1))
    sd = rng.uniform(20, 80, (n, 1, 1))
    return np.clip(np.round(mean + sd * rng.standard_normal((n, IMAGE_SIZE, IMAGE_SIZE))), 0, 255).astype(np.uint8)


def _uniform_noise(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    return rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)


def _blank(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    level = rng.uniform(0, 255, (n, 1, 1))
    noisy = level + 3.0 * rng.standard_normal((n, IMAGE_SIZE, IMAGE_SIZE))
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _shapes(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE].astype(np.float64)
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            kind = rng.integers(0, 3)
            level = rng.integers(100, 256)
            outline = rng.random() < 0.5
            thickness = rng.uniform(1.0, 3.0)
            if kind == 0:  # circle
                cy, cx, r = rng.uniform(6, 22), rng.uniform(6, 22), rng.uniform(3, 11)
                d = np.hypot(yy - cy, xx - cx)
                mask = np.abs(d - r) <= thickness / 2 if outline else d <= r
            elif kind == 1:  # axis-aligned rectangle
                y0, x0 = rng.integers(1, 18, 2)
                y1, x1 = y0 + rng.integers(4, 27 - y0), x0 + rng.integers(4, 27 - x0)
                inside = (yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1)
                t = int(round(thickness))
                inner = (yy >= y0 + t) & (yy <= y1 - t) & (xx >= x0 + t) & (xx <= x1 - t)
                mask = inside & ~inner if outline else inside
            else:  # a thick line segment between two random points
                (ay, ax), (by, bx) = rng.uniform(2, 26, (2, 2))
                length2 = (by - ay) ** 2 + (bx - ax) ** 2 or 1.0
                t = np.clip(((yy - ay) * (by - ay) + (xx - ax) * (bx - ax)) / length2, 0, 1)
                mask = np.hypot(yy - (ay + t * (by - ay)), xx - (ax + t * (bx - ax))) <= thickness
            out[i][mask] = level
    return out


def _letters(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=40)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i in range(n):
        text = "".join(rng.choice(list(alphabet), rng.integers(1, 3)))
        canvas = Image.new("L", (120, 70), 0)
        ImageDraw.Draw(canvas).text((10, 5), text, fill=int(rng.integers(160, 256)), font=font)
        out[i] = mnist_centre(np.asarray(canvas))
    return out


@functools.cache
def _sklearn_digits() -> np.ndarray:
    """(1797, 8, 8) digits 0-16; parsed once a process (it takes most of a second)."""
    from sklearn.datasets import load_digits

    return load_digits().images


def _digits(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    digits = _sklearn_digits()
    pick = rng.choice(len(digits), n, replace=n > len(digits))
    return np.stack([mnist_centre(np.round(digits[j] * (255 / 16)).astype(np.uint8)) for j in pick])


def _natural_crops(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    photos = [np.round(im @ np.array([0.299, 0.587, 0.114])).astype(np.uint8) for im in load_sample_images().images]
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(40, 201))
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        out[i] = _resize(np.ascontiguousarray(photo[top : top + side, left : left + side]), IMAGE_SIZE, IMAGE_SIZE)
    return out


def _pick(garments: np.ndarray | None, n: int, rng: np.random.Generator, name: str) -> np.ndarray:
    if garments is None or len(garments) == 0:
        raise ValueError(f"the {name!r} set is made from Fashion-MNIST images: pass garments=")
    return np.asarray(garments)[rng.choice(len(garments), n, replace=n > len(garments))]


def _inverted(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    return 255 - _pick(garments, n, rng, "inverted")


def _rotated(n: int, rng: np.random.Generator, garments) -> np.ndarray:
    items = _pick(garments, n, rng, "rotated")
    turns = rng.choice(np.array([1, 3]), n)
    return np.stack([np.rot90(item, k) for item, k in zip(items, turns, strict=True)])


_BUILDERS: dict[str, Callable[[int, np.random.Generator, np.ndarray | None], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shapes": _shapes,
    "inverted": _inverted,
    "letters": _letters,
    "uniform_noise": _uniform_noise,
    "digits": _digits,
    "natural_crops": _natural_crops,
    "blank": _blank,
    "rotated": _rotated,
}


def build(name: str, n: int = DEFAULT_SIZE, seed: int = 0, garments: np.ndarray | None = None) -> np.ndarray:
    """The OOD set `name`: `n` uint8 (28,28) images. `garments` (uint8 Fashion-MNIST images) feed
    the sets in NEEDS_GARMENTS; give them images the model was not trained on."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown OOD set {name!r}; choose from {', '.join(SETS)}")
    rng = np.random.default_rng([seed, SETS.index(name)])
    images = _BUILDERS[name](n, rng, garments)
    return np.ascontiguousarray(images, dtype=np.uint8)
