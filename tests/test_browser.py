"""The web page in a real browser: Playwright driving Debian's Chromium, headless, against a real server."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from test_predict import item_image, png_bytes, tiny_run_dir
from test_serve import start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip

httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for the browser tests",
                allow_module_level=True)  # fmt: skip


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    run_dir, _ = tiny_run_dir(tmp_path_factory)
    proc, url = start_server(run_dir, "--precision", "fp32")
    yield url
    stop_server(proc)


@pytest.fixture
def page(tmp_path: Path):
    with sync_api.sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1100, "height": 800},
            )  # fmt: skip
        except sync_api.Error as exc:
            pytest.skip(f"Chromium would not start under Playwright: {str(exc).splitlines()[0]}")
        try:
            tab = context.new_page()
            tab.set_default_timeout(30_000)
            yield tab
        finally:
            context.close()


def screenshot(tab, tmp_path: Path, name: str) -> Path:
    """Save under the test's tmp dir, and into artifacts/ (git-ignored) when that folder exists."""
    path = tmp_path / name
    tab.screenshot(path=str(path), full_page=True)
    artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    if artifacts.is_dir():
        shutil.copy(path, artifacts / name)
    return path


def test_upload_shows_the_same_class_as_the_api(page_server, page, tmp_path: Path):
    url = page_server
    image = tmp_path / "trousers.png"
    image.write_bytes(png_bytes(255 - item_image(120, 80, box=(10, 110, 25, 55)), "RGB"))
    api = httpx.post(f"{url}/predict", files={"file": (image.name, image.read_bytes(), "image/png")}).json()

    page.goto(url)
    page.wait_for_function("document.querySelector('#model-line').textContent.includes('fastcnn')")
    assert page.is_visible("#cam-toggle")  # a CNN: the Grad-CAM overlay is offered
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#result[data-state=done]")
    assert page.inner_text("#top-class") == api["label"]
    assert len(page.query_selector_all("#bars .bar")) == 10
    lit = page.evaluate("Array.from(document.getElementById('input28').getContext('2d')"
                        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 100).length")  # fmt: skip
    assert lit > 20  # the 28x28 model input is drawn
    assert screenshot(page, tmp_path, "browser-upload.png").stat().st_size > 5_000


def test_drawing_on_the_canvas_is_classified(page_server, page, tmp_path: Path):
    page.goto(page_server)
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 30)
    page.mouse.down()
    for step in range(1, 21):  # a vertical stroke
        page.mouse.move(box["x"] + 100, box["y"] + 30 + 11 * step)
    page.mouse.up()
    page.wait_for_selector("#result[data-state=done]")
    assert page.inner_text("#top-class") not in ("", "–")
    screenshot(page, tmp_path, "browser-drawing.png")


def test_api_docs_render_without_internet(page_server, page, tmp_path: Path):
    if importlib.util.find_spec("fastapi_offline") is None:
        pytest.skip("fastapi-offline is not installed: /docs loads Swagger UI from a CDN")
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())  # no internet
    page.goto(f"{page_server}/docs")
    page.wait_for_function("document.body.innerText.includes('Classify one image')")  # Swagger UI drew /predict
    screenshot(page, tmp_path, "browser-docs.png")
