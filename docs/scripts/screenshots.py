"""Take the documentation's screenshots with a real browser: a report, and the web page of `fmnist serve`.

    python docs/scripts/screenshots.py [--compare RUNS/compare-...] [--run RUN_DIR] [--only report|web]
                                       [--out docs/images]

Without --compare it first runs `fmnist compare` (what `make run` runs) into runs/screenshots, so
the pictures show a real report and a real model, never a smoke run. The web page serves --run (a
finished run, e.g. `fmnist train --seed 0 --out RUN_DIR`, the default recipe), else the compare's
most accurate run; `--run RUN_DIR --only web` needs no compare. The web picture is the example's
answer with its "What the model saw" panel (POST /explain), taken once the panel has loaded.
Playwright drives Debian's Chromium (`make browser` installs it); the server binds 127.0.0.1 on a
free port and is stopped by its pid when the pictures are taken. The PNGs are reduced to a
256-colour palette to stay small.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 900}
WEB_VIEWPORT = {"width": 1200, "height": 1400}  # tall enough for the answer and its panel in one view
MAX_BYTES = 300_000  # per picture: they are committed
PICTURES = ("report", "web")


def fmnist(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist", *args], check=True, **kwargs)


def start_server(run_dir: Path, log_path: Path, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """`fmnist serve RUN_DIR --port 0` on 127.0.0.1; returns the process and its URL once /health answers."""
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fmnist", "serve", str(run_dir), "--port", "0"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if found:
            try:
                with urllib.request.urlopen(f"{found[1]}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return proc, found[1]
            except OSError:
                pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"error: fmnist serve did not start:\n{log_path.read_text()[-2000:]}")


def test_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "results.json").read_text())["test_accuracy"]


def shrink(path: Path) -> None:
    """A 256-colour palette keeps a screenshot of text and plots sharp at a fraction of the size."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        raise SystemExit(f"error: {path} is {path.stat().st_size:,} bytes, over {MAX_BYTES:,}")


def photograph_web(page, run_dir: Path, path: Path, log_path: Path) -> None:
    """The example's answer and the panel below it, from `fmnist serve RUN_DIR` on 127.0.0.1."""
    proc, url = start_server(run_dir, log_path)
    try:
        page.set_viewport_size(WEB_VIEWPORT)
        page.goto(url)
        page.wait_for_function("document.querySelector('#classes').children.length > 0")  # /model has answered
        page.click("#example")
        page.wait_for_selector("#result[data-state=done]")
        # The panel comes after the answer (the first /explain may compute the neighbours): wait for
        # it and for its pictures, so the shot never shows "looking at what the model saw…".
        page.wait_for_selector("#saw[data-state=done]", timeout=180_000)
        page.wait_for_function("Array.from(document.querySelectorAll('#saw img'))"
                               ".every(i => i.offsetParent === null || (i.complete && i.naturalWidth > 0))")  # fmt: skip
        bottom = page.evaluate("document.querySelector('footer').getBoundingClientRect().bottom")
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": WEB_VIEWPORT["width"], "height": bottom + 8})
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, help="a finished `fmnist compare` folder (default: run one)")
    parser.add_argument("--run", type=Path, help="the run the web page serves (default: the compare's best)")
    parser.add_argument("--only", choices=PICTURES, help="take one picture (report needs a compare)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"error: {CHROMIUM} not found: run `make browser` (Debian's chromium)")
    if args.run is not None and not (args.run / "model.safetensors").exists():
        raise SystemExit(f"error: {args.run} has no model.safetensors: give a finished run")
    from playwright.sync_api import sync_playwright

    pictures = [args.only] if args.only else list(PICTURES)
    compare, run_dir = args.compare, args.run
    if "report" in pictures or run_dir is None:
        if compare is None:
            compare = REPO / "runs" / "screenshots"
            fmnist("compare", "--out", str(compare), "--overwrite")
        runs = sorted((p.parent for p in compare.glob("*/model.safetensors")), key=test_accuracy)
        if not (compare / "report.html").exists() or not runs:
            raise SystemExit(f"error: {compare} has no report.html or no trained run: give a finished compare folder")
        run_dir = run_dir or runs[-1]  # the compare's most accurate run
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(Path(tmp) / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT, device_scale_factor=1)  # fmt: skip
        page = browser.new_page()
        if "report" in pictures:
            page.goto((compare / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(args.out / "report.png"), full_page=False)
        if "web" in pictures:
            photograph_web(page, run_dir, args.out / "web.png", Path(tmp) / "serve.log")
        browser.close()
    for name in pictures:
        shrink(args.out / f"{name}.png")
        print(f"wrote {args.out / name}.png ({(args.out / f'{name}.png').stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
