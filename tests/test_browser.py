"""The web page in a real browser: Playwright driving Debian's Chromium, headless, against a real server.

Screenshots go to each test's tmp folder only.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from conftest import REAL_DATA_ENV
from test_predict import cached_real_run, item_image, png_bytes, tiny_run_dir
from test_serve import start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
PREDICT = re.compile(r"/predict\?")

httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for the browser tests",
                allow_module_level=True)  # fmt: skip


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    # The default recipe's net: a map that plain Grad-CAM leaves blank falls back to Grad-CAM++
    # (fmnist.analysis.gradcam), so the Grad-CAM test below gets a lit map from it too.
    run_dir, _ = tiny_run_dir(tmp_path_factory)
    proc, url = start_server(run_dir, "--precision", "fp32", env=tiny_env())
    yield url
    stop_server(proc)


def tiny_env() -> dict[str, str]:
    """A tiny run's server environment: no FMNIST_DATA, so its panel's neighbours come from the run's own data."""
    return {k: v for k, v in os.environ.items() if k != REAL_DATA_ENV}


@pytest.fixture(scope="module")
def calibrated_server(tmp_path_factory):
    """A tiny run with its trust record (as training writes it when it has the data): an unknown threshold."""
    from fmnist.data.dataset import load_idx_folder
    from fmnist.inference.trust import calibrate_run

    run_dir, data_dir = tiny_run_dir(tmp_path_factory)
    calibrate_run(run_dir, load_idx_folder(data_dir))
    proc, url = start_server(run_dir, "--precision", "fp32", env=tiny_env())
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def real_server(request):
    """fastcnn trained briefly on the real data (about 89% test accuracy), when FMNIST_DATA is set."""
    data_dir = Path(os.environ.get(REAL_DATA_ENV, "/nonexistent"))
    if not data_dir.is_dir():
        pytest.skip(f"{REAL_DATA_ENV} is not set to the Fashion-MNIST folder")
    proc, url = start_server(cached_real_run(request, data_dir), "--precision", "fp32")
    yield url
    stop_server(proc)


@pytest.fixture
def page(tmp_path: Path):
    with sync_api.sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1100, "height": 900},
            )  # fmt: skip
        except sync_api.Error as exc:
            pytest.skip(f"Chromium would not start under Playwright: {str(exc).splitlines()[0]}")
        try:
            tab = context.new_page()
            tab.set_default_timeout(30_000)
            yield tab
        finally:
            context.close()


def open_page(tab, url: str) -> None:
    tab.goto(url)
    tab.wait_for_function("document.querySelector('#classes').children.length > 0")  # /model has answered


def upload(tab, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    tab.set_input_files("#file", str(path))


def trousers() -> bytes:
    return png_bytes(255 - item_image(120, 80, box=(10, 110, 25, 55)), "RGB")


def answer_cleared(tab) -> bool:
    return tab.evaluate("""() => document.getElementById('top-class').textContent === '–'
        && document.getElementById('bars').children.length === 0
        && document.getElementById('answer-for').textContent === ''
        && Array.from(document.getElementById('input28').getContext('2d').getImageData(0, 0, 28, 28).data)
                .every((v, i) => i % 4 === 3 || v === 0)""")  # fmt: skip


def lit_pixels(tab, canvas: str, channel: int) -> int:
    return tab.evaluate(f"Array.from(document.getElementById('{canvas}').getContext('2d').getImageData(0, 0, 28, 28)"
                        f".data).filter((v, i) => i % 4 === {channel} && v > 100).length")  # fmt: skip


def test_first_view_lists_the_classes_and_offers_an_example(page_server, page, tmp_path: Path):
    failures = []
    page.on("response", lambda r: r.status >= 400 and failures.append(f"{r.status} {r.url}"))
    open_page(page, page_server)
    info = httpx.get(f"{page_server}/model").json()
    assert page.locator("#classes li").all_inner_texts() == info["class_names"]
    assert page.is_visible("#intro") and not page.is_visible("#answer") and page.is_visible("#example")
    icon = page.evaluate(
        "fetch(document.querySelector('link[rel=icon]').href).then(r => [r.status, r.headers.get('content-type')])"
    )
    assert icon == [200, "image/png"]
    page.screenshot(path=str(tmp_path / "first-view.png"), full_page=True)
    page.click("#example")
    page.wait_for_selector("#result[data-state=done]")
    assert page.inner_text("#answer-for").startswith("Example:") and not page.is_visible("#intro")
    assert failures == []  # nothing the page asked for was missing (favicon included)


def test_the_example_is_recognised_by_a_real_model(real_server, page, tmp_path: Path):
    open_page(page, real_server)
    page.click("#example")  # drawn trousers: a model trained on the real data recognises them, and is sure
    page.wait_for_selector("#result[data-state=done]")
    assert page.inner_text("#top-class") == "Trouser"
    assert page.get_attribute("#result", "data-confidence") == "high" and not page.is_visible("#unsure")
    page.screenshot(path=str(tmp_path / "example.png"), full_page=True)


def test_upload_shows_the_same_class_as_the_api(page_server, page, tmp_path: Path):
    api = httpx.post(f"{page_server}/predict", files={"file": ("trousers.png", trousers(), "image/png")}).json()
    open_page(page, page_server)
    upload(page, tmp_path / "trousers.png", trousers())
    page.wait_for_selector("#result[data-state=done]")
    assert page.is_visible("#cam-toggle") and not page.is_visible("#cam-note")  # a CNN: Grad-CAM is offered
    assert page.inner_text("#answer-for") == "Photo: trousers.png"
    assert page.inner_text("#top-class") == api["label"]
    assert page.inner_text("#top-prob") == f"{100 * api['probability']:.1f}%"
    assert len(page.query_selector_all("#bars .bar")) == 10
    assert lit_pixels(page, "input28", 0) > 20  # the 28x28 model input is drawn
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)


def test_new_request_error_and_clear_each_clear_the_old_answer(page_server, page, tmp_path: Path):
    open_page(page, page_server)
    upload(page, tmp_path / "first.png", trousers())
    page.wait_for_selector("#result[data-state=done]")
    assert not answer_cleared(page)

    held = []  # the next answer is held back, to look at the page while it is on its way
    page.route(PREDICT, lambda route: held.append(route))
    upload(page, tmp_path / "second.png", trousers())
    page.wait_for_selector("#result[data-state=busy]")
    for _ in range(200):  # until the request reaches the route handler
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    assert answer_cleared(page) and "second.png" in page.inner_text("#status")
    held[0].continue_()
    page.unroute(PREDICT)
    page.wait_for_selector("#result[data-state=done]")
    assert page.inner_text("#answer-for") == "Photo: second.png"

    upload(page, tmp_path / "notes.png", b"these are notes, not a picture")
    page.wait_for_selector("#result[data-state=error]")
    assert answer_cleared(page)
    assert "notes.png" in page.inner_text("#status") and "415" in page.inner_text("#status")
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

    upload(page, tmp_path / "third.png", trousers())
    page.wait_for_selector("#result[data-state=done]")
    page.click("#clear")
    page.wait_for_selector("#result[data-state=idle]")
    assert answer_cleared(page) and page.is_visible("#intro") and page.inner_text("#status") == ""


def test_drawing_on_the_canvas_is_classified(page_server, page, tmp_path: Path):
    open_page(page, page_server)
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 30)
    page.mouse.down()
    for step in range(1, 21):  # a vertical stroke
        page.mouse.move(box["x"] + 100, box["y"] + 30 + 11 * step)
    page.mouse.up()
    page.wait_for_selector("#result[data-state=done]")
    assert page.inner_text("#answer-for") == "Drawing"
    assert page.inner_text("#top-class") not in ("", "–")
    page.screenshot(path=str(tmp_path / "drawing.png"), full_page=True)


def test_gradcam_is_off_until_switched_on_and_has_a_legend(page_server, page, tmp_path: Path):
    urls = []
    page.on("request", lambda r: PREDICT.search(r.url) and urls.append(r.url))
    open_page(page, page_server)
    upload(page, tmp_path / "trousers.png", trousers())
    page.wait_for_selector("#result[data-state=done]")
    assert not page.is_checked("#show-cam") and not page.is_visible("#cam28") and not page.is_visible("#cam-legend")
    assert "gradcam=false" in urls[-1] and lit_pixels(page, "cam28", 3) == 0

    page.check("#show-cam")  # re-asks for the same photo, now with the map
    page.wait_for_function(
        "document.querySelector('#result').dataset.state === 'done' && !document.getElementById('cam28').hidden"
    )
    assert "gradcam=true" in urls[-1] and len(urls) == 2
    assert page.inner_text("#answer-for") == "Photo: trousers.png"
    assert lit_pixels(page, "cam28", 3) > 0 and page.is_visible("#cam-legend")
    ramp = page.evaluate("""() => { const c = document.getElementById('cam-ramp'), d = c.getContext('2d');
        return [Array.from(d.getImageData(0, 5, 1, 1).data), Array.from(d.getImageData(c.width - 1, 5, 1, 1).data)]; }""")
    assert ramp[0][2] > ramp[0][0] and ramp[1][0] > ramp[1][2]  # the scale runs from blue (low) to red (high)
    page.screenshot(path=str(tmp_path / "gradcam.png"), full_page=True)
    page.uncheck("#show-cam")
    assert not page.is_visible("#cam28") and not page.is_visible("#cam-legend")


def test_low_confidence_answer_is_marked_with_the_runner_up(page_server, page, tmp_path: Path):
    # The tiny model knows only bars on noise: a photo of trousers leaves it unsure.
    api = httpx.post(f"{page_server}/predict", files={"file": ("trousers.png", trousers(), "image/png")}).json()
    assert api["probability"] < 0.5, api["top"]
    open_page(page, page_server)
    upload(page, tmp_path / "trousers.png", trousers())
    page.wait_for_selector("#result[data-state=done]")
    assert page.get_attribute("#result", "data-confidence") == "low" and page.is_visible("#unsure")
    assert f"Runner-up: {api['top'][1]['label']}" in page.inner_text("#unsure")
    page.screenshot(path=str(tmp_path / "unsure.png"), full_page=True)


def test_api_docs_render_without_internet(page_server, page, tmp_path: Path):
    if importlib.util.find_spec("fastapi_offline") is None:
        pytest.skip("fastapi-offline is not installed: /docs loads Swagger UI from a CDN")
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())  # no internet
    page.goto(f"{page_server}/docs")
    page.wait_for_function("document.body.innerText.includes('Classify one image')")  # Swagger UI drew /predict
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)


def test_an_unlike_image_is_marked_unknown_with_its_score(calibrated_server, page, tmp_path: Path):
    """Noise is above the run's unknown threshold, and the page says so with the API's score and threshold,
    still showing the calibrated classes (serve's default --ood warn)."""
    import numpy as np

    url = calibrated_server
    open_page(page, url)
    noise = png_bytes(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    upload(page, tmp_path / "noise.png", noise)
    page.wait_for_selector("#result[data-state=done]")
    api = httpx.post(f"{url}/predict", files={"file": ("noise.png", noise, "image/png")}).json()
    threshold = httpx.get(f"{url}/model").json()["calibration"]["ood_threshold"]
    assert api["unknown"] is True
    assert page.inner_text("#unknown") == (f"unknown: this does not look like a Fashion-MNIST item "
                                           f"(score {api['ood_score']:.1f}, threshold {threshold:.1f})")  # fmt: skip
    assert page.inner_text("#top-class") == api["label"] and page.is_visible("#bars")
    upload(page, tmp_path / "trousers.png", trousers())  # a new answer clears the line
    page.wait_for_selector("#result[data-state=done]")
    known = httpx.post(f"{url}/predict", files={"file": ("t.png", trousers(), "image/png")}).json()
    assert page.is_visible("#unknown") is bool(known["unknown"])


def panel_images_loaded(tab) -> list[list[int]]:
    """[naturalWidth, naturalHeight] of every image the panel shows: 28x28 once decoded."""
    return tab.evaluate("Array.from(document.querySelectorAll('#saw img')).filter(i => i.offsetParent !== null)"
                        ".map(i => [i.naturalWidth, i.naturalHeight])")  # fmt: skip


def test_the_panel_shows_what_the_model_saw(calibrated_server, page, tmp_path: Path):
    """After each answer: the input, its Grad-CAM, its OOD score against the threshold in a sentence, and the
    5 nearest training images, each as /explain gives them for the same upload."""
    import numpy as np

    url = calibrated_server
    open_page(page, url)
    assert not page.is_visible("#saw")  # nothing to explain yet
    noise = png_bytes(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    for name, data, verdict in [("trousers.png", trousers(), None), ("noise.png", noise, "unlike")]:
        api = httpx.post(f"{url}/explain", files={"file": (name, data, "image/png")}, timeout=60).json()
        upload(page, tmp_path / name, data)
        page.wait_for_selector("#result[data-state=done]")
        page.wait_for_selector("#saw[data-state=done]")
        assert page.get_attribute("#saw-input", "src") == api["input"]
        assert page.get_attribute("#saw-cam", "src") == api["gradcam"]["image"] and page.is_visible("#saw-cam")
        assert page.inner_text("#saw-cam-caption").startswith(f"Grad-CAM for {api['gradcam']['label']}")
        figures = page.query_selector_all("#saw-neighbours figure")
        assert len(figures) == 5
        for figure, neighbour in zip(figures, api["neighbours"]):
            assert figure.query_selector("img").get_attribute("src") == neighbour["image"]
            assert figure.inner_text().split("\n") == [neighbour["label"], f"train #{neighbour['index']}",
                                                         f"cosine {neighbour['cosine']:.3f}"]  # fmt: skip
        assert panel_images_loaded(page) == [[28, 28]] * 7  # input, Grad-CAM, 5 neighbours
        ood = api["ood"]
        like = "unlike Fashion-MNIST (unknown)" if ood["unknown"] else "like Fashion-MNIST"
        assert page.inner_text("#saw-ood") == (f"OOD score {ood['score']:.2f} against the run's threshold "
                                               f"{ood['threshold']:.2f} (higher is less like the training "
                                               f"images): {like}.")  # fmt: skip
        assert verdict is None or like.startswith(verdict)
        assert page.is_visible("#saw-meter") and page.is_visible("#unknown") is ood["unknown"]
        page.screenshot(path=str(tmp_path / f"panel-{name}.png"), full_page=True)
    page.click("#clear")
    page.wait_for_selector("#result[data-state=idle]")
    assert not page.is_visible("#saw") and page.query_selector_all("#saw-neighbours figure") == []


def test_the_panel_says_in_one_line_what_is_missing(page_server, page, tmp_path: Path):
    """The page_server's run has no trust record: the panel says why there is no OOD score, and shows the rest."""
    api = httpx.post(f"{page_server}/explain", files={"file": ("t.png", trousers(), "image/png")}).json()
    assert api["ood"] is None and api["absent"]["ood"]
    open_page(page, page_server)
    upload(page, tmp_path / "trousers.png", trousers())
    page.wait_for_selector("#saw[data-state=done]")
    assert page.inner_text("#saw-ood") == f"No OOD score: {api['absent']['ood']}."
    assert not page.is_visible("#saw-meter") and len(page.query_selector_all("#saw-neighbours img")) == 5
