"""Take the documentation's screenshots with a real browser: a report, and the web page of `fmnist serve`.

    python docs/scripts/screenshots.py [--compare RUNS/compare-...] [--out docs/images]

Without --compare it first runs `fmnist compare` (what `make run` runs) into runs/screenshots, so
the pictures show a real report and a real model, never a smoke run. Playwright drives Debian's
Chromium (`make browser` installs it); the server binds 127.0.0.1 on a free port and is stopped by
its pid when the pictures are taken. The PNGs are reduced to a 256-colour palette to stay small.
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
MAX_BYTES = 300_000  # per picture: they are committed


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, help="a finished `fmnist compare` folder (default: run one)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"error: {CHROMIUM} not found: run `make browser` (Debian's chromium)")
    from playwright.sync_api import sync_playwright

    compare = args.compare
    if compare is None:
        compare = REPO / "runs" / "screenshots"
        fmnist("compare", "--out", str(compare), "--overwrite")
    report = compare / "report.html"
    runs = sorted((p.parent for p in compare.glob("*/model.safetensors")), key=test_accuracy)
    if not report.exists() or not runs:
        raise SystemExit(f"error: {compare} has no report.html or no trained run: give a finished compare folder")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(Path(tmp) / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT, device_scale_factor=1)  # fmt: skip
        page = browser.new_page()
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(args.out / "report.png"), full_page=False)
        proc, url = start_server(runs[-1], Path(tmp) / "serve.log")  # the compare's most accurate run
        try:
            page.goto(url)
            page.click("#example")
            page.wait_for_selector("#result[data-state=done]")
            page.screenshot(path=str(args.out / "web.png"), clip={"x": 0, "y": 0, "width": 1200, "height": 700})
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        browser.close()
    for name in ("report.png", "web.png"):
        shrink(args.out / name)
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
