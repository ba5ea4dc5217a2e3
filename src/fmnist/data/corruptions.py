"""Corrupted copies of uint8 (N,28,28) images, for measuring how a model holds up off its training data.

Fourteen corruptions at three severities each, after Fashion-MNIST-C and MNIST-C (Mu & Gilmer,
2019; Weiss & Tonella, 2022), built here so nothing is downloaded. Every random draw (noise, a
rotation's sign, a motion's direction) comes from a numpy generator seeded by (seed, corruption,
severity): the same images and seed give the same bytes, and each corruption's draws do not
depend on which others are built. Warps run as one batched torch `grid_sample` (bilinear, black
outside the image, as Fashion-MNIST's background is black).

Severity parameters, one column per severity (pixel values are on a 0-1 scale):

| corruption     | parameter                                               | 1    | 2    | 3    |
|----------------|---------------------------------------------------------|------|------|------|
| gaussian_noise | noise standard deviation                                | 0.08 | 0.16 | 0.28 |
| shot_noise     | photons at full white (Poisson; fewer = noisier)        | 60   | 20   | 6    |
| blur           | Gaussian blur sigma, pixels                             | 0.7  | 1.1  | 1.6  |
| motion_blur    | streak length, pixels, in a random direction            | 4    | 7    | 10   |
| rotation       | degrees, random sign                                    | 15   | 30   | 45   |
| shear          | horizontal shear factor, random sign                    | 0.2  | 0.4  | 0.6  |
| translation    | shift, pixels, in a random direction (rounded to whole) | 3    | 5    | 7    |
| scaling        | zoom factor, in (x f) or out (/ f) at random            | 1.25 | 1.5  | 1.8  |
| contrast       | contrast kept, about each image's mean                  | 0.5  | 0.3  | 0.15 |
| brightness     | added to every pixel                                    | 0.2  | 0.35 | 0.5  |
| pixelation     | resolution averaged down to, then enlarged back         | 14   | 9    | 7    |
| jpeg           | JPEG quality (Pillow)                                   | 30   | 12   | 5    |
| elastic        | displacement std on a 5x5 grid, pixels (then bicubic)   | 0.5  | 0.9  | 1.4  |
| inversion      | share of the inverted image blended in (1 = 255 - x)    | 0.7  | 0.85 | 1.0  |
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

SEVERITY_LEVELS = (1, 2, 3)
PARAMETERS: dict[str, tuple[float, float, float]] = {
    "gaussian_noise": (0.08, 0.16, 0.28),
    "shot_noise": (60, 20, 6),
    "blur": (0.7, 1.1, 1.6),
    "motion_blur": (4, 7, 10),
    "rotation": (15, 30, 45),
    "shear": (0.2, 0.4, 0.6),
    "translation": (3, 5, 7),
    "scaling": (1.25, 1.5, 1.8),
    "contrast": (0.5, 0.3, 0.15),
    "brightness": (0.2, 0.35, 0.5),
    "pixelation": (14, 9, 7),
    "jpeg": (30, 12, 5),
    "elastic": (0.5, 0.9, 1.4),
    "inversion": (0.7, 0.85, 1.0),
}
CORRUPTIONS = tuple(PARAMETERS)
ELASTIC_GRID = 5  # the elastic field is drawn on a 5x5 grid, so it bends every 6 pixels or so
_BATCH = 4096  # images warped at once: bounds the sampling grid's memory


def _float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,28,28) -> float32 (N,1,28,28) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


def _uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    t = torch.as_tensor(x)
    return t.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).reshape(len(t), *t.shape[-2:]).numpy()


def warp(images: np.ndarray, theta: np.ndarray, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Sample each image at `theta` (N,2,3, output -> input, in grid_sample's [-1, 1] coordinates,
    x across) plus optional per-pixel `offsets` (N,H,W,2, same units): float (N,1,H,W) in [0, 1]."""
    x = _float(images)
    out = torch.empty_like(x)
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    base = F.affine_grid(torch.eye(2, 3)[None], [1, *x.shape[1:]], align_corners=False)[0]  # (H,W,2): x, y
    bx, by = base[..., 0], base[..., 1]
    for start in range(0, len(x), _BATCH):
        part = slice(start, start + _BATCH)
        # affine_grid's batched matrix product is several times slower on a CPU than these sums.
        t = theta_t[part, :, :, None, None]  # (n,2,3,1,1)
        grid = torch.stack([t[:, i, 0] * bx + t[:, i, 1] * by + t[:, i, 2] for i in (0, 1)], dim=-1)
        if offsets is not None:
            grid = grid + offsets[part]
        out[part] = F.grid_sample(x[part], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


def _linear(n: int, matrix: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    theta = np.zeros((n, 2, 3))
    theta[:, :, :2] = matrix
    if shift is not None:
        theta[:, :, 2] = shift
    return theta


def rotate(images: np.ndarray, degrees: np.ndarray | float) -> np.ndarray:
    """Rotate about the image centre by `degrees` (per image or one), counter-clockwise as displayed
    (scipy.ndimage.rotate's sense), bilinear, black outside."""
    a = np.broadcast_to(np.radians(np.asarray(degrees, dtype=np.float64)), (len(images),))
    c, s = np.cos(a), np.sin(a)
    # Output pixel (x, y) (x across, y down) samples the input at the inverse rotation.
    return _uint8(warp(images, _linear(len(images), np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1))))


def translate(images: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Shift right by dx and down by dy pixels (per image), black where uncovered."""
    size = images.shape[-1]
    shift = -2.0 * np.stack([np.asarray(dx, np.float64), np.asarray(dy, np.float64)], 1) / size
    return _uint8(warp(images, _linear(len(images), np.eye(2), shift)))


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), n)


def _blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """(size, size) B such that B @ column is a Gaussian blur with black beyond the edges."""
    i = torch.arange(size, dtype=torch.float32)
    radius = max(1, math.ceil(3 * sigma))
    offset = i[:, None] - i[None, :]
    kernel_sum = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2)).sum()
    return torch.where(offset.abs() <= radius, torch.exp(-(offset**2) / (2 * sigma**2)), 0.0) / kernel_sum


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W), zero (black) padding, as two matrix products."""
    rows, cols = _blur_matrix(x.shape[-2], sigma), _blur_matrix(x.shape[-1], sigma)
    return rows @ x @ cols.T


def _gaussian_noise(images, p, rng):
    x = images / np.float32(255) + np.float32(p) * rng.standard_normal(images.shape, dtype=np.float32)
    return _uint8(torch.from_numpy(x))


def _shot_noise(images, p, rng):
    # A black pixel draws no photons: only the lit ones (about half of Fashion-MNIST) need a draw.
    lit = images > 0
    out = np.zeros(images.shape, np.float32)
    out[lit] = rng.poisson(images[lit] * (p / 255.0)) / p
    return _uint8(torch.from_numpy(out))


def _gaussian_blur(images, p, rng):
    return _uint8(_blur(_float(images), p))


def _motion_blur(images, p, rng):
    n = len(images)
    angle = rng.uniform(0, np.pi, n)
    # Each image's kernel: 4 samples a pixel along a segment of length p through the centre, each
    # splatted bilinearly; one grouped convolution then blurs every image with its own kernel.
    radius = math.ceil(p / 2) + 1
    size = 2 * radius + 1
    t = np.linspace(-p / 2, p / 2, 4 * int(p) + 1)
    px = radius + t[None] * np.cos(angle)[:, None]  # (N, samples)
    py = radius + t[None] * np.sin(angle)[:, None]
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    kernel = np.zeros((n, size, size), np.float32)
    rows = np.repeat(np.arange(n), len(t))
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (rows, (y0 + dy).ravel(), (x0 + dx).ravel()), w.ravel())
    kernel /= kernel.sum(axis=(1, 2), keepdims=True)
    x = _float(images).view(1, n, *images.shape[-2:])
    # conv2d correlates; the kernel is symmetric about its centre, so that is a convolution.
    return _uint8(F.conv2d(x, torch.from_numpy(kernel)[:, None], padding=radius, groups=n)[0])


def _rotation(images, p, rng):
    return rotate(images, p * _signs(rng, len(images)))


def _shear(images, p, rng):
    k = p * _signs(rng, len(images))
    matrix = np.zeros((len(images), 2, 2))
    matrix[:, 0, 0] = matrix[:, 1, 1] = 1.0
    matrix[:, 0, 1] = k
    return _uint8(warp(images, _linear(len(images), matrix)))


def _translation(images, p, rng):
    angle = rng.uniform(0, 2 * np.pi, len(images))
    return translate(images, np.round(p * np.cos(angle)), np.round(p * np.sin(angle)))


def _scaling(images, p, rng):
    factor = p ** _signs(rng, len(images))  # > 1 enlarges (crops the edges), < 1 shrinks
    return _uint8(warp(images, _linear(len(images), np.eye(2)[None] / factor[:, None, None])))


def _contrast(images, p, rng):
    x = images / np.float32(255)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _uint8(torch.from_numpy((x - mean) * p + mean))


def _brightness(images, p, rng):
    return _uint8(torch.from_numpy(images / np.float32(255) + np.float32(p)))


def _pixelation(images, p, rng):
    size = images.shape[-1]
    small = F.interpolate(_float(images), size=(int(p), int(p)), mode="area")
    return _uint8(F.interpolate(small, size=(size, size), mode="nearest"))


def _jpeg(images, p, rng):
    """Each image JPEG-encoded and decoded by Pillow, all in one mosaic: grayscale JPEG codes 8x8
    blocks independently, and a 28x28 image padded by repeating its edge to 32x32 (as the encoder
    pads it alone) fills whole blocks, so the mosaic gives each image exactly its own result."""
    from PIL import Image

    n, h, w = images.shape
    ph, pw = -h % 8, -w % 8
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cells = np.pad(images, ((0, rows * cols - n), (0, ph), (0, pw)), mode="edge")
    H, W = h + ph, w + pw
    mosaic = cells.reshape(rows, cols, H, W).transpose(0, 2, 1, 3).reshape(rows * H, cols * W)
    buffer = io.BytesIO()
    Image.fromarray(mosaic, mode="L").save(buffer, format="JPEG", quality=int(p))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("L"))
    return decoded.reshape(rows, H, cols, W).transpose(0, 2, 1, 3).reshape(-1, H, W)[:n, :h, :w].copy()


def _bicubic_matrix(small: int, size: int) -> torch.Tensor:
    """(size, small) U with U @ v = v enlarged to `size` bicubically, as torch's interpolate does it."""
    unit = torch.eye(small).reshape(small, 1, 1, small)
    return F.interpolate(unit, size=(1, size), mode="bicubic", align_corners=False).reshape(small, size).T


def _elastic(images, p, rng):
    n, size = len(images), images.shape[-1]
    # A smooth random field: Gaussian displacements on a coarse grid, enlarged bicubically by two
    # small matrix products (as smooth as blurring full-size noise, at a fraction of the cost).
    coarse = torch.from_numpy(rng.standard_normal((n, 2, ELASTIC_GRID, ELASTIC_GRID), dtype=np.float32))
    up = _bicubic_matrix(ELASTIC_GRID, size)
    field = (up @ coarse @ up.T) * np.float32(p * 2.0 / size)  # pixels -> grid_sample units
    return _uint8(warp(images, _linear(n, np.eye(2)), field.permute(0, 2, 3, 1)))


def _inversion(images, p, rng):
    if p == 1.0:
        return 255 - images  # exact: no float round trip
    x = images / np.float32(255)
    return _uint8(torch.from_numpy(np.float32(1 - p) * x + np.float32(p) * (1 - x)))


_OPS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "rotation": _rotation,
    "shear": _shear,
    "translation": _translation,
    "scaling": _scaling,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelation": _pixelation,
    "jpeg": _jpeg,
    "elastic": _elastic,
    "inversion": _inversion,
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """A corrupted copy of uint8 (N,28,28) `images`: corruption `name` at `severity` 1-3."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITY_LEVELS:
        raise ValueError(f"severity must be one of {SEVERITY_LEVELS}; got {severity!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 (N,H,W) images; got {images.dtype} {list(images.shape)}")
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity])
    if len(images) == 0:
        return images.copy()
    with torch.no_grad():
        return _OPS[name](images, PARAMETERS[name][severity - 1], rng)


def corrupted_sets(images: np.ndarray, seed: int = 0, names: tuple[str, ...] = CORRUPTIONS
                   ) -> Iterator[tuple[str, int, np.ndarray]]:  # fmt: skip
    """(name, severity, corrupted images) for every corruption and severity, one at a time (a
    whole set of 10,000 images is 7.8 MB, all 42 of them 330 MB)."""
    for name in names:
        for severity in SEVERITY_LEVELS:
            yield name, severity, corrupt(images, name, severity, seed)
