"""Images the web page needs, drawn at start-up: no binary files in the package, no dataset images.

- the favicon: a small T-shirt in the page's accent colour;
- the example to try: a synthetic product shot (dark trousers on a white backdrop), so the
  first click shows the whole path a photo takes: preprocessing, the 28x28 input, the answer.
"""

from __future__ import annotations

import io

ACCENT = (47, 111, 223)  # --accent in static/style.css
EXAMPLE_NAME = "trousers (drawn by the server)"
# A T-shirt outline on a 32x32 grid: collar, sleeves, body.
_SHIRT = [(10, 4), (13, 6), (19, 6), (22, 4), (30, 10), (26, 15), (23, 13), (23, 29), (9, 29), (9, 13), (6, 15),
          (2, 10)]  # fmt: skip
# Trousers on a 280x280 canvas: waistband, right leg, crotch, left leg.
_TROUSERS = [(96, 34), (184, 34), (192, 252), (152, 252), (140, 104), (128, 252), (88, 252)]


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def favicon_png() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(image).polygon(_SHIRT, fill=(*ACCENT, 255))
    return _png(image)


def example_png() -> bytes:
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("RGB", (280, 280), (246, 246, 244))
    draw = ImageDraw.Draw(image)
    draw.polygon(_TROUSERS, fill=(52, 62, 88))
    draw.line([(96, 46), (184, 46)], fill=(80, 90, 118), width=3)  # the waistband's seam
    draw.line([(140, 48), (140, 96)], fill=(80, 90, 118), width=2)  # the fly
    # A slight blur, as a camera gives: hard polygon edges are not what a photo looks like.
    return _png(image.filter(ImageFilter.GaussianBlur(1.2)))
