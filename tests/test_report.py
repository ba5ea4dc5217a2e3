"""Reports: every section on a tiny comparison, valid PNGs, a self-contained HTML file that
headless Chromium renders without console errors, and the analysis functions behind the prose."""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fmnist.models.classical  # noqa: F401  (registers logreg and random_forest)
from conftest import write_synthetic_idx
from fmnist.analysis.calibration import calibration, confident_accuracy
from fmnist.analysis.curves import detect_overfitting
from fmnist.analysis.embeddings import class_separation, embed_2d, stratified_subsample
from fmnist.analysis.layers import layer_summary
from fmnist.analysis.mistakes import most_confident_mistakes, one_per_class, random_examples
from fmnist.compare import ComparePlan, RunSpec, run_compare
from fmnist.config import build_config
from fmnist.data.dataset import load_idx_folder
from fmnist.data.idx import write_idx
from fmnist.errors import UsageError
from fmnist.metrics import expected_calibration_error
from fmnist.models import count_parameters, create_model
from fmnist.report import write_report
from fmnist.report.sections.comparison import class_winners
from fmnist.report.sections.results import group_share
from fmnist.runs import RunDirWriter, prepare_run_dir
from fmnist.train import fit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["1. Data", "2. Models", "3. Training curves", "4. Test results", "5. Per-class results",
            "6. Confusion matrices", "7. Most-confused pairs", "8. Mistakes", "9. Calibration", "10. Explanations"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory) -> Path:
    """Two seeds of an MLP, a CNN, logistic regression and a random forest, then the report."""
    folder = write_synthetic_idx(tmp_path_factory.mktemp("data"))
    # 15% of the test labels flipped: even perfect models make mistakes to show and calibrate.
    labels = load_idx_folder(folder).test_labels.copy()
    noisy = np.random.default_rng(0).random(len(labels)) < 0.15
    labels[noisy] = (labels[noisy] + 3) % 10
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    dataset = load_idx_folder(folder)
    plan = ComparePlan([
        RunSpec("mlp", {"model": "mlp", "model_args": {"hidden": [32]}}),
        RunSpec("cnn", {"model": "fastcnn"}),
        RunSpec("logreg", {"model": "logreg"}),
        RunSpec("forest", {"model": "random_forest", "model_args": {"n_estimators": 20}}),
    ], seeds=2, title="tiny comparison", notes="Synthetic data.", published={"cnn": 0.9182, "source": "a test"})  # fmt: skip
    out = tmp_path_factory.mktemp("reports") / "cmp"
    run_compare(plan, out, dataset, overrides={"epochs": 3, "val_size": 100, "batch_size": 64})
    write_report(out, embedding_points=150)
    return out


def test_every_section_in_markdown_and_html(tiny_compare: Path):
    md = (tiny_compare / "report.md").read_text()
    html = (tiny_compare / "report.html").read_text()
    for heading in [*SECTIONS, "11. Comparison"]:
        assert f"## {heading}" in md, heading
        assert f">{heading}</h2>" in html, heading
        assert f">{heading}</a></li>" in html, heading  # table of contents
    assert md.count("**Takeaway:**") >= len(SECTIONS) - 2 and "Key findings" in md
    assert "± " in md and "(n=2)" in md  # mean ± std over seeds
    assert "91.82%" in md  # published figure beside ours


def test_figures_are_valid_pngs_and_all_referenced(tiny_compare: Path):
    import matplotlib.image

    pngs = sorted((tiny_compare / "figures").glob("*.png"))
    assert len(pngs) >= 15
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        assert matplotlib.image.imread(png).ndim == 3, png
    md = (tiny_compare / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert linked and all((tiny_compare / link).is_file() for link in linked)
    for kind in ("samples", "curves-", "per-class-", "confusion-", "mistakes-", "reliability", "gradcam-cnn",
                 "embedding-", "compare-curves", "compare-per-class"):  # fmt: skip
        assert any(kind in link for link in linked), kind


def test_html_is_self_contained(tiny_compare: Path):
    html = (tiny_compare / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == PNG_MAGIC
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "figures/" not in html


def test_classical_runs_skip_model_sections_and_say_so(tiny_compare: Path):
    md = (tiny_compare / "report.md").read_text()
    assert "forest-seed0: no checkpoint (RandomForestClassifier is a scikit-learn model kept as results only)" in md
    assert "n/a (not a network)" in md
    assert "logreg-seed0 is " in md.split("## 9. Calibration")[1]  # logistic regression has a checkpoint
    assert "mlp-seed0: no Grad-CAM" in md


def test_single_run_report_flags_overfitting(tiny_dataset, tmp_path: Path):
    run_dir = prepare_run_dir(tmp_path / "run")
    config = build_config("mlp", cli_values={"epochs": 2, "val_size": 100, "model_args": {"hidden": [16]}})
    fit(config, tiny_dataset, [RunDirWriter(run_dir)])
    # Rewrite the history into seed 004's U-shape: validation loss lowest at epoch 3, then rising.
    val = [0.50, 0.40, 0.30, 0.32, 0.35, 0.40]
    rows = [{"epoch": e + 1, "train_loss": 0.6 - 0.08 * e, "train_accuracy": 0.8 + 0.02 * e, "val_loss": v,
             "val_accuracy": 0.8 + 0.01 * e, "lr": 1e-3, "steps": e, "seconds": e, "images_per_second": 1.0}
            for e, v in enumerate(val)]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_report(run_dir, embedding="none")
    assert path == run_dir / "report.html"
    md = (run_dir / "report.md").read_text()
    for heading in SECTIONS:
        assert f"## {heading}" in md
    assert "## 11." not in md
    assert "overfits from epoch 4" in md and "yes, from epoch 4" in md


def test_report_without_the_images_still_writes_and_explains(tiny_data_dir: Path, tmp_path: Path, monkeypatch):
    dataset = load_idx_folder(tiny_data_dir)
    run_dir = prepare_run_dir(tmp_path / "run")
    fit(build_config("lenet5", cli_values={"epochs": 1, "val_size": 100}), dataset, [RunDirWriter(run_dir)])
    shutil.rmtree(tiny_data_dir)
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    write_report(run_dir)
    md = (run_dir / "report.md").read_text()
    for heading in SECTIONS:
        assert f"## {heading}" in md
    assert "The images could not be loaded" in md and "test images not available" in md


def test_old_import_path_and_option_errors(tiny_compare: Path):
    from fmnist.report.markdown import write_report as old_entry

    assert old_entry(tiny_compare, html=False, embedding="none", gradcam=False) == tiny_compare / "report.md"
    with pytest.raises(UsageError, match="unknown report option"):
        write_report(tiny_compare, colour="blue")
    with pytest.raises(UsageError, match="embedding method"):
        write_report(tiny_compare, embedding="pca")


# -- the HTML in a real browser ---------------------------------------------------------------


def test_html_renders_in_headless_chromium_without_console_errors(tiny_compare: Path, tmp_path: Path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium to run the browser check")
    problems: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
            page.goto((tiny_compare / "report.html").resolve().as_uri(), wait_until="load")
            headings = page.locator("main h2").all_inner_texts()
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
            )
            images = page.evaluate("document.images.length")
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "report-screenshot.png"
            page.screenshot(path=str(shot), full_page=False)
            page.locator("#s-calibration").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "report-calibration.png"))
        finally:
            browser.close()
    assert not problems, problems
    for heading in [*SECTIONS, "11. Comparison"]:
        assert heading in headings, (heading, headings)
    assert images >= 15 and broken == 0
    assert shot.read_bytes()[:8] == PNG_MAGIC


# -- the functions behind the prose -------------------------------------------------------------


def _history(val, train):
    return [{"epoch": i + 1, "val_loss": v, "train_loss": t} for i, (v, t) in enumerate(zip(val, train))]


def test_overfitting_hand_examples():
    flag = detect_overfitting(_history([0.5, 0.3, 0.35, 0.4, 0.45], [0.6, 0.4, 0.3, 0.2, 0.1]))
    assert flag is not None and flag.min_epoch == 2 and flag.started_epoch == 3 and flag.rising_epochs == 3
    assert flag.val_loss_min == 0.3 and flag.val_loss_last == 0.45
    assert detect_overfitting(_history([0.5, 0.3, 0.35, 0.4], [0.6, 0.4, 0.3, 0.2])) is None  # only 2 epochs up
    assert (
        detect_overfitting(_history([0.5, 0.3, 0.35, 0.4, 0.45], [0.6, 0.4, 0.5, 0.6, 0.7])) is None
    )  # train rises too
    assert detect_overfitting(_history([0.5, 0.4, 0.3, 0.2, 0.1], [0.6, 0.4, 0.3, 0.2, 0.1])) is None  # still improving
    assert (
        detect_overfitting(
            _history([0.5, 0.3, 0.35, 0.29, 0.31, 0.33, 0.34], [1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
        ).min_epoch
        == 4
    )
    assert detect_overfitting([{"epoch": 1, "val_loss": None, "train_loss": 1.0}] * 6) is None


def test_mistake_selection_hand_example():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.99, 0.01]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert most_confident_mistakes(probs, labels, k=16) == [4, 1, 2]
    assert most_confident_mistakes(probs, labels, k=1) == [4]
    assert one_per_class(probs, labels, correct=True, num_classes=2) == [0, 3]
    assert one_per_class(probs, labels, correct=False, num_classes=2) == [1, 4]
    right, wrong = random_examples(probs.argmax(1), labels, k=5, seed=0)
    assert right == [0, 3] and wrong == [1, 2, 4]
    assert random_examples(probs.argmax(1), labels, k=1, seed=3) == random_examples(
        probs.argmax(1), labels, k=1, seed=3
    )


def test_calibration_summary_hand_example():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = torch.tensor([0, 1, 0, 1])
    cal = calibration(probs, y, bins=10)
    assert cal.ece == pytest.approx(expected_calibration_error(probs, y, 10))
    assert (
        cal.mean_confidence == pytest.approx(0.75)
        and cal.accuracy == pytest.approx(0.75)
        and cal.gap == pytest.approx(0)
    )
    assert confident_accuracy(probs, y, 0.9) == (2, pytest.approx(0.5))
    assert confident_accuracy(probs, y, 0.95)[0] == 0


def test_class_winners_and_group_share_hand_examples():
    series = {"a": [0.9] * 10, "b": [0.8] * 9 + [0.95]}
    wins = class_winners(series)
    assert wins[0] == (0, "a", pytest.approx(0.1)) and wins[9] == (9, "b", pytest.approx(0.05))
    assert class_winners({"a": [0.5] * 10, "b": [0.5] * 10})[3] == (3, "a", 0.0)  # a tie: margin 0
    cm = np.zeros((10, 10), dtype=int)
    np.fill_diagonal(cm, 90)
    cm[6, 0] = 6  # Shirt -> T-shirt/top: inside the upper-body group
    cm[7, 9] = 3  # Sneaker -> Ankle boot: footwear
    cm[1, 8] = 1  # Trouser -> Bag: neither
    assert group_share(cm, ("T-shirt/top", "Pullover", "Coat", "Shirt")) == pytest.approx(0.6)
    assert group_share(cm, ("Sandal", "Sneaker", "Ankle boot")) == pytest.approx(0.3)


def test_layer_summary_adds_up_to_the_parameter_count():
    for name in ("fastcnn", "resnet_small", "mlp_seed002", "cnn_seed004"):
        model = create_model(name)
        rows = layer_summary(model)
        assert sum(r.params for r in rows) == count_parameters(model), name
        assert rows[-1].output_shape == (10,)


def test_embedding_helpers():
    labels = np.repeat(np.arange(10), 30)
    chosen = stratified_subsample(labels, 100, seed=0)
    assert len(chosen) == 100 and np.bincount(labels[chosen]).tolist() == [10] * 10
    assert len(stratified_subsample(labels, 1000)) == 300
    rng = np.random.default_rng(0)
    features = np.eye(10)[labels] * 5 + rng.normal(0, 0.1, (300, 10))
    coords, method = embed_2d(features, "tsne", seed=0)
    assert coords.shape == (300, 2) and method == "tsne"
    separation = class_separation(coords, labels)
    assert len(separation) == 10 and min(separation.values()) > 0.5  # well-separated blobs stay apart
    from sklearn.metrics import silhouette_samples

    assert separation[3] == pytest.approx(float(silhouette_samples(coords, labels)[labels == 3].mean()))


# -- the speed budget on the real data ------------------------------------------------------------


@pytest.mark.slow
def test_full_report_for_two_models_on_real_data_within_a_minute(real_data_dir: Path, tmp_path: Path):
    dataset = load_idx_folder(real_data_dir)
    plan = ComparePlan([RunSpec("mlp", {"model": "mlp_seed002"}), RunSpec("cnn", {"model": "fastcnn"})], title="speed")
    run_compare(plan, tmp_path / "cmp", dataset, overrides={"epochs": 1, "max_steps": 30})
    started = time.perf_counter()
    write_report(tmp_path / "cmp")
    elapsed = time.perf_counter() - started
    assert elapsed <= 60.0, f"report took {elapsed:.1f} s"
    assert (tmp_path / "cmp" / "figures" / "embedding-cnn.png").is_file()


def test_umap_replaces_tsne_when_its_extra_is_installed(monkeypatch):
    import sys
    import types

    from fmnist.analysis import embeddings

    class FakeUMAP:
        def __init__(self, n_components, random_state):
            self.n_components = n_components

        def fit_transform(self, x):
            return np.zeros((len(x), self.n_components))

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(embeddings, "umap_available", lambda: True)
    coords, method = embed_2d(np.ones((20, 5)), "auto")
    assert method == "umap" and coords.shape == (20, 2)
    monkeypatch.setattr(embeddings, "umap_available", lambda: False)
    assert embeddings.resolve_method("auto") == "tsne"
    with pytest.raises(UsageError, match="optional extra"):
        embeddings.resolve_method("umap")
