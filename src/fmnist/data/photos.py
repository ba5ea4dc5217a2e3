"""Turn any image into what a Fashion-MNIST model was trained on.

Fashion-MNIST images are 28x28 grayscale, a light item on a black background, trimmed to the
item and scaled so its longer side spans the frame. A product photo is usually the opposite
(a dark or coloured item on a light backdrop) at some arbitrary size, so `to_dataset_form`
undoes each difference in turn: grayscale, invert when the border is lighter than the centre,
subtract the backdrop, crop to the item, pad to a square, resize to 28x28.

Everything here works on bytes (files, uploads) and numpy arrays; nothing imports torch. Both
`fmnist predict` and the web server (`fmnist serve`, which decodes uploads in worker threads)
use it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fmnist.constants import IMAGE_SIZE
from fmnist.errors import FmnistError

# Suffixes a directory argument picks up; a file named explicitly is tried whatever its name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".npy")
# A decompression bomb (a tiny file declaring a gigantic canvas) is refused before decoding.
MAX_IMAGE_PIXELS = 50_000_000
# Photos are shrunk to this longer side before analysis: 28x28 output needs no more detail,
# and a 24-megapixel photo would otherwise cost ~0.5 s per request.
WORK_SIZE = 224
# Share of the shorter side that counts as "border" when judging the background.
BORDER_FRACTION = 0.05
NPY_MAGIC = b"\x93NUMPY"
# A pixel belongs to the item when brighter than this share of the item's peak (after the
# backdrop is removed): low enough to keep a garment's faint edges, which the dataset keeps.
CROP_LEVEL = 0.05


class ImageError(FmnistError):
    """The bytes are not a readable image (or not one fmnist can use)."""


class BlankImageError(ImageError):
    """The image decoded but holds no item: a uniform picture."""


class ImageTooLargeError(ImageError):
    """The image declares more pixels than MAX_IMAGE_PIXELS (a likely decompression bomb)."""


def _pil():
    # Pillow is an optional ("serve") dependency; say how to get it rather than fail on import.
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise FmnistError("reading images needs Pillow: pip install 'fmnist[serve]'") from None
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    return Image, ImageOps


class PendingImage:
    """An image whose header has been read but whose pixels have not been decoded yet.

    Splitting the two lets a caller add up `pixels` over many uploads and refuse the lot
    before spending any time decoding (see fmnist.serve's per-request pixel budget).
    """

    def __init__(self, pixels: int, decode: Callable[[], np.ndarray]):
        self.pixels = pixels  # how many pixels decoding will produce (after JPEG draft scaling)
        self._decode = decode

    def decode(self) -> np.ndarray:
        """float32 grayscale (H,W) in [0,255]."""
        return self._decode()


@contextmanager
def _pillow_errors():
    """Turn whatever Pillow raises for bad data into one-line ImageErrors."""
    Image, _ = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"image is larger than {MAX_IMAGE_PIXELS:,} pixels") from None
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, ValueError...)
        if isinstance(exc, (MemoryError, KeyboardInterrupt, ImageError)):
            raise
        detail = str(exc).split("\n")[0] or type(exc).__name__
        if "cannot identify image file" in detail:
            raise ImageError("not an image (unrecognised format)") from None
        raise ImageError(f"unreadable image ({detail})") from None


def open_image(data: bytes) -> PendingImage:
    """Read the header of a PNG/JPEG/WebP/... image or a .npy array; ImageError if it is not one."""
    if not data:
        raise ImageError("empty file")
    if data.startswith(NPY_MAGIC):
        gray = _decode_npy(data)  # no compression: its cost is bounded by its size in bytes
        return PendingImage(gray.size, lambda: gray)
    Image, ImageOps = _pil()
    with _pillow_errors():
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG":
            # Let libjpeg decode at 1/2..1/8 scale: most of a big photo's decode time saved.
            image.draft("L", (WORK_SIZE, WORK_SIZE))

    def decode() -> np.ndarray:
        with _pillow_errors():
            loaded = image
            if "exif" in image.info or image.format in ("JPEG", "MPO", "TIFF", "WEBP"):
                loaded = ImageOps.exif_transpose(image)  # phone photos are often stored rotated
            loaded.load()
            return _to_gray(loaded)

    return PendingImage(image.width * image.height, decode)


def decode_image(data: bytes) -> np.ndarray:
    """Bytes of a PNG/JPEG/WebP/... image or a .npy array -> float32 grayscale (H,W) in [0,255]."""
    return open_image(data).decode()


def _decode_npy(data: bytes) -> np.ndarray:
    try:
        # allow_pickle=False: an .npy file must never be able to run code.
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise ImageError(
            f"unreadable .npy file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    return array_to_gray(array, what=".npy array")


def array_to_gray(array: np.ndarray, what: str = "array") -> np.ndarray:
    """A 2-D numeric array (uint8 0-255, or floats in [0,1] or [0,255]) -> float32 (H,W) in [0,255]."""
    array = np.asarray(array)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise ImageError(f"{what} must be 2-D (H,W), got shape {list(array.shape)}")
    if array.dtype.kind not in "uif":
        raise ImageError(f"{what} must hold numbers, not {array.dtype}")
    if min(array.shape) < 1:
        raise ImageError(f"{what} is empty (shape {list(array.shape)})")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise ImageError(f"{what} holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise ImageError(f"{what} values must lie in [0, 255], found [{low:g}, {high:g}]")
    if array.dtype.kind == "f" and high <= 1.0:
        values = values * 255.0  # floats in [0,1]: the other common convention
    return values


def _to_gray(image) -> np.ndarray:
    Image, _ = _pil()
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float32)
        return np.clip(values / 257.0, 0, 255)  # 16-bit scans and PNGs
    if image.mode == "F":
        return array_to_gray(np.asarray(image, dtype=np.float32), what="floating-point image")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    # Shrink while still 8-bit: float copies of a 24-megapixel photo would cost ~100 MB and ~0.2 s.
    image = image.convert("RGBA" if has_alpha else "L")
    image.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if has_alpha:
        rgba = np.asarray(image, dtype=np.float32)
        gray = np.asarray(Image.fromarray(rgba[..., :3].astype(np.uint8)).convert("L"), dtype=np.float32)
        return _flatten_alpha(gray, rgba[..., 3] / 255.0)
    return np.asarray(image, dtype=np.float32)


def _flatten_alpha(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite onto a backdrop that contrasts with the opaque part.

    A cut-out product shot is opaque item on transparent background; a fixed white backdrop
    would make a white shirt vanish, so the backdrop is whichever of black/white is further
    from the item's mean brightness.
    """
    opaque = alpha > 0.5
    if opaque.all():
        return gray
    if not opaque.any():
        return np.full_like(gray, 255.0)  # nothing visible: a blank picture
    item_mean = float(gray[opaque].mean())
    backdrop = 0.0 if item_mean > 127.5 else 255.0
    return gray * alpha + backdrop * (1 - alpha)


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float image to (width, height) with Lanczos (antialiased when shrinking)."""
    Image, _ = _pil()
    resized = Image.fromarray(values.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float32)


def _border(values: np.ndarray) -> np.ndarray:
    h, w = values.shape
    k = max(1, round(BORDER_FRACTION * min(h, w)))
    return np.concatenate([values[:k].ravel(), values[-k:].ravel(), values[:, :k].ravel(), values[:, -k:].ravel()])


def _quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile of values in [0,255], to the nearest grey level.

    Via a 256-bin histogram: a partition or np.percentile costs 5-10x more per call, and
    this runs on every request.
    """
    counts = np.bincount(np.clip(values.ravel(), 0, 255).astype(np.int32), minlength=256)
    rank = q * (counts.sum() - 1)
    return float(np.searchsorted(np.cumsum(counts), rank, side="right"))


def _median(values: np.ndarray) -> float:
    return _quantile(values, 0.5)


def _peak(values: np.ndarray) -> float:
    """The item's brightest level, ignoring the top 0.1% (hot pixels, specular glints)."""
    if values.size <= 1000:
        return float(values.max())
    return _quantile(values, 0.999)


def _backdrop(border: np.ndarray) -> tuple[float, float]:
    """(level, noise sigma) of the border's dominant band of brightness."""
    bins = np.clip(border, 0, 255).astype(np.int64) // 8
    band = int(np.argmax(np.bincount(bins, minlength=32)))
    members = border[np.abs(bins - band) <= 1]
    level = _median(members)
    sigma = 1.4826 * _median(np.abs(members - level))
    return level, sigma


def _item_is_darker(values: np.ndarray, background: float, sigma: float) -> bool:
    """Whether the item is darker than its backdrop (the border is lighter than what it surrounds).

    Weighs every pixel that clearly differs from the backdrop rather than comparing with a
    fixed central window, which misses an item that is off-centre or small.
    """
    diff = values - background
    clear = np.abs(diff) > max(12.0, 4 * sigma)
    darker = float(-diff[clear & (diff < 0)].sum())
    lighter = float(diff[clear & (diff > 0)].sum())
    return darker > lighter


def _already_framed(h: int, w: int, top: int, bottom: int, left: int, right: int) -> bool:
    """True for a square image whose item already spans it and sits within a pixel (at 28x28) of centre.

    Cropping and re-centring such an image (a dataset image, or one scaled up) would only
    move the item by rounding, which costs accuracy for nothing.
    """
    if h != w or max(bottom - top, right - left) < 0.93 * h:
        return False
    scale = IMAGE_SIZE / h
    off_y = abs((top + bottom) / 2 - h / 2) * scale
    off_x = abs((left + right) / 2 - w / 2) * scale
    return off_y <= 1.0 and off_x <= 1.0


def _occupied(counts: np.ndarray, minimum: float) -> tuple[int, int]:
    idx = np.flatnonzero(counts >= minimum)
    return int(idx[0]), int(idx[-1]) + 1


def to_dataset_form(gray: np.ndarray) -> np.ndarray:
    """Grayscale (H,W) float in [0,255] -> uint8 (28,28): light item centred on black, longer side 28 px."""
    values = np.asarray(gray, dtype=np.float32)
    h, w = values.shape
    if max(h, w) > WORK_SIZE:
        scale = WORK_SIZE / max(h, w)
        values = _resize(values, (max(1, round(w * scale)), max(1, round(h * scale))))
        h, w = values.shape

    # The backdrop's level is the border's most common brightness, not its mean or median:
    # a garment often touches the frame (trousers, pullovers), and its pixels are spread over
    # many levels while the backdrop's sit in one narrow band.
    border = _border(values)
    background, sigma = _backdrop(border)
    if _item_is_darker(values, background, sigma):  # e.g. a product shot on white: invert
        values = 255.0 - values
        background = 255.0 - background
    values = np.clip(values - background, 0, None)
    peak = _peak(values)
    if peak < 8.0 or peak <= 6 * sigma:
        raise BlankImageError("no item found (the image is uniform)")
    values = np.clip(values * (255.0 / peak), 0, 255)

    # Crop to the item: rows/columns with a few clearly-lit pixels (not one stray speck).
    mask = values > max(CROP_LEVEL * 255.0, 4 * sigma * 255.0 / peak)
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    if not rows.any():
        raise BlankImageError("no item found (the image is uniform)")
    top, bottom = _occupied(rows, min(rows.max(), max(1, 0.01 * w)))
    left, right = _occupied(cols, min(cols.max(), max(1, 0.01 * h)))
    if not _already_framed(h, w, top, bottom, left, right):
        values = values[top:bottom, left:right]

    # Pad to a centred square, so resizing keeps the aspect ratio and the longer side fills 28 px.
    h, w = values.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    square[y0 : y0 + h, x0 : x0 + w] = values
    if side != IMAGE_SIZE:
        square = _resize(square, (IMAGE_SIZE, IMAGE_SIZE))
    return np.clip(np.rint(square), 0, 255).astype(np.uint8)


def as_dataset_image(gray: np.ndarray, preprocess: bool = True) -> np.ndarray:
    """The model's 28x28 uint8 input for a decoded image, with or without preprocessing."""
    if preprocess:
        return to_dataset_form(gray)
    if gray.shape != (IMAGE_SIZE, IMAGE_SIZE):
        h, w = gray.shape
        raise ImageError(f"image is {w}x{h}; without preprocessing it must be {IMAGE_SIZE}x{IMAGE_SIZE}")
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def load_image(path: Path, preprocess: bool = True) -> np.ndarray:
    """Read one file (image or .npy) -> uint8 (28,28) model input; ImageError on any problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as exc:
        raise ImageError(f"cannot read ({exc.strerror or exc})") from None
    return as_dataset_image(decode_image(data), preprocess)


def collect_image_paths(arguments: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand directory arguments to the images directly inside them (sorted); keep files as given.

    Returns (paths, problems): an argument that yields nothing is a problem, not a crash, so
    the other arguments are still predicted.
    """
    paths: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for arg in arguments:
        if arg.is_dir():
            found = sorted(p for p in arg.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if found:
                paths.extend(found)
            else:
                problems.append((arg, f"directory holds no images ({', '.join(IMAGE_SUFFIXES)})"))
        else:
            paths.append(arg)
    return paths, problems
