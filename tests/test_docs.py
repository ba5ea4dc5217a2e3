"""The README and the documentation: tables rendered from their JSON, links that resolve, a short README."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables():
    return load(DOCS / "scripts" / "results_tables.py")


@pytest.fixture(scope="module")
def figures():
    return load(DOCS / "scripts" / "prose_figures.py")


def test_every_rendered_table_matches_its_json(tables):
    stale = tables.update(check=True)
    assert stale == [], f"out of date: {stale}; run python docs/scripts/results_tables.py"


def test_a_figure_edited_by_hand_is_caught(tables, tmp_path: Path):
    page = tmp_path / "page.md"
    text = README.read_text(encoding="utf-8")
    assert "<!-- results: recipes -->" in text
    recipes = tables.render("recipes")
    first = re.search(r"\d+\.\d\d%", recipes)[0]
    page.write_text(text.replace(first, "99.99%", 1), encoding="utf-8")
    assert tables.update([page], check=True) == [str(page)]
    assert "99.99%" in page.read_text(encoding="utf-8")  # check mode changes nothing
    tables.update([page])
    assert page.read_text(encoding="utf-8") == text


def test_a_changed_json_figure_changes_its_table(tables, tmp_path: Path, monkeypatch):
    copy = tmp_path / "results"
    copy.mkdir()
    data = json.loads((RESULTS / "make_run.json").read_text(encoding="utf-8"))
    data["tables"]["make_run"]["rows"][0]["wall_seconds"] = 12345.6
    (copy / "make_run.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(tables, "RESULTS", copy)
    assert "12,345.6 s" in tables.render("make_run.json#make_run")
    assert str(README.relative_to(REPO)) in tables.update([README], check=True)


def test_a_screen_renders_whether_its_recipe_was_built(tables, tmp_path: Path, monkeypatch):
    copy = tmp_path / "results"
    copy.mkdir()
    (record_path,) = RESULTS.glob("screen-cpu-best-shift-*.json")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    for chose in ("cpu-95", "cpu-best"):
        (copy / f"screen-x-{chose}.json").write_text(json.dumps({**record, "screen": chose, "chose": chose}))
    monkeypatch.setattr(tables, "RESULTS", copy)
    rendered = tables.render("screens")
    assert "which chose the `cpu-95` recipe" in rendered and "for a `cpu-best` recipe not built" in rendered
    assert "which chose the `cpu-best` recipe" not in rendered


def test_a_hand_typed_figure_is_caught_and_a_marked_one_passes(figures):
    def typed(text: str) -> list[str]:
        return [figure for _, figure in figures.hand_typed_figures(text)]

    assert typed("fastcnn reached 93.4% in 30 s; 93.41 % on test, 1.5 h, 6 min") == [
        "93.4%", "30 s", "93.41 %", "1.5 h", "6 min"]  # fmt: skip
    assert typed("1.8× the images/s, 2.2x faster, 27,820 images/s, +0.26 points") == [
        "1.8×", "2.2x", "27,820 images/s", "+0.26 points"]  # fmt: skip
    assert typed("sized for ten minutes, then an hour; gaps under 0.3\npoints") == [
        "ten minutes",
        "an hour",
        "0.3 points",
    ]
    assert typed("the 28×28 input, 3x3 patches, FPR@95% TPR, seeds 0–1, 60,000 images, fp32, a second conv") == []
    assert typed("target ≥ 94.0% in ≤ 5 s, ratio >= 15×, refuses > 0.5 percentage points, unsure < 50%") == []
    assert typed("93.04% in 20 epochs <!-- published: seed 004 -->") == []
    assert typed("96.3% <!-- published: leaderboard --> against our 95.9%") == ["95.9%"]
    assert typed("93.04% <!-- published: -->") == ["93.04%"]  # a marker names where it was published
    assert figures.hand_typed_figures(figures.prose("one\n\n> 93.4% in a quote")) == [(3, "93.4%")]


def test_rendered_blocks_and_code_are_not_prose_but_code_comments_are(figures):
    page = ["intro: 93.4%", "<!-- results: recipes -->", "| 93.32% | 30 s |", "<!-- /results -->",
            "```console", "$ make run    # about 8 minutes", "$ fmnist train --epochs 3", "```",
            "```text", "error: no answer for 54 s", "```", "after 12 s"]  # fmt: skip
    assert figures.hand_typed_figures(figures.prose("\n".join(page))) == [(1, "93.4%"), (6, "8 minutes"), (12, "12 s")]


def test_docs_prose_quotes_no_figure_by_hand(figures):
    assert README in figures.PAGES and DOCS / "changelog.md" in figures.PAGES
    typed = figures.check()
    assert typed == [], "figures typed into prose (render them, link to their table, or mark them):\n" + "\n".join(
        typed
    )


def test_every_recorded_figure_names_its_hardware_and_command():
    files = sorted(RESULTS.glob("*.json"))
    assert files, "benchmarks/results holds the recorded figures"
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        if "tables" not in record:  # one benchmark's own record (serve_load.py writes one run)
            assert record.get("cpu") and record.get("command"), f"{path.name}: no cpu or command"
            continue
        for name, table in record["tables"].items():
            for row in table.get("rows", [table]):
                for key in ("hardware", "command"):
                    assert row.get(key) or table.get(key), f"{path.name}#{name}: a row without {key}: {row}"
    measured = json.loads((REPO / "src" / "fmnist" / "training" / "recipes_measured.json").read_text(encoding="utf-8"))
    for recipe, rows in measured.items():
        for row in rows:
            assert row.get("hardware") and row.get("command"), f"recipes_measured.json: {recipe} {row}"


def test_seed_004s_h200_rows_are_recorded():
    rows = json.loads((RESULTS / "seed_studies.json").read_text(encoding="utf-8"))["tables"]["seed004_benchmark"][
        "rows"
    ]
    h200 = [r for r in rows if "H200" in r["hardware"]]
    assert len(h200) == 7  # five networks of seed 004's table, EfficientNet-B0, and their ensemble
    assert all("--device cuda --jobs 3" in r["command"] for r in h200)


def test_every_table_marker_names_a_source_that_renders(tables):
    pages = [README, *DOCS.glob("*.md")]
    sources = {m["source"] for page in pages for m in tables.BLOCK.finditer(page.read_text(encoding="utf-8"))}
    opened = sum(len(re.findall(r"^<!-- results: \S+ -->$", p.read_text(encoding="utf-8"), re.M)) for p in pages)
    closed = sum(len(re.findall(r"^<!-- /results -->$", p.read_text(encoding="utf-8"), re.M)) for p in pages)
    assert opened == closed, "a results marker is not closed"
    assert {"recipes", "models"} <= sources
    for source in sources - {"models"}:  # models is rendered (and checked) by the first test
        assert tables.render(source).strip()


def test_readme_is_short_in_the_issues_order_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    order = ["![", "## Install and run", "make run", "make test", "What it prints", "Where the report is",
             "## The six commands", "## Python API", "## Results", "## Documentation"]  # fmt: skip
    at = 0
    for marker in order:  # each after the one before
        assert marker in text[at:], f"README: {marker!r} missing or out of order"
        at = text.index(marker, at)
    commands = re.search(r"## The six commands.*?```console\n(.*?)```", text, re.S)[1]
    assert len([line for line in commands.splitlines() if line.startswith("$ fmnist ")]) == 6
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README links to missing {target}"


def test_screenshots_exist_and_stay_small():
    for name in ("report.png", "web.png"):
        path = DOCS / "images" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < 300_000


def test_the_sweep_example_is_included_from_its_file_not_copied():
    page = (DOCS / "ray.md").read_text(encoding="utf-8")
    assert '--8<-- "configs/sweep-example.toml"' in page
    first_search_line = next(line for line in (REPO / "configs" / "sweep-example.toml").read_text().splitlines()
                             if "=" in line and not line.startswith("#"))  # fmt: skip
    assert first_search_line not in page and first_search_line not in README.read_text(encoding="utf-8")


def test_cli_reference_is_every_commands_help():
    from fmnist.cli.app import WORKFLOW_ORDER

    reference = load(DOCS / "hooks" / "cli_reference.py").cli_reference()
    for command in WORKFLOW_ORDER:
        assert f"## `fmnist {command}`" in reference or f"### `fmnist {command}`" in reference
    assert "### `fmnist data fetch`" in reference and "Usage: fmnist train [OPTIONS]" in reference


def test_the_trust_page_shows_each_recorded_ood_screen_figure_as_its_json_has_it(tables):
    import json

    page = (DOCS / "trust.md").read_text(encoding="utf-8")
    block = page.split("<!-- results: trust -->")[1].split("<!-- /results -->")[0]
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(tables.RESULTS.glob("ood_screen-*.json"))]
    assert records, "no ood_screen JSON recorded"
    for r in records:
        for name, m in r["chosen_held_out"].items():
            assert f"| `{name}` | {m['auroc']:.4f} | {100 * m['fpr95']:.1f}% |" in block
        for target in (0.8, 0.9, 0.95):
            shipped = r["conformal_test"][f"lac@{target:g}+empty"]
            assert f"| {100 * target:g}% | {100 * shipped['coverage']:.2f}% |" in block
        assert f"{100 * r['temperature']['ece_after']:.2f}%" in block and r["command"] in block
    assert "robustness.py" in page.split("<!-- results: robustness -->")[1]  # a recorded robustness table
