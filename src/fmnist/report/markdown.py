"""report.md for a run or a comparison: tables, training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmnist.compare import COMPARE_FILE, read_compare
from fmnist.errors import FmnistError
from fmnist.fsutil import atomic_write_text
from fmnist.report import figures
from fmnist.runs import RESULTS_FILE, read_history, read_results

FIGURES_DIR = "figures"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _data_section(data: dict[str, Any]) -> list[str]:
    lines = ["## Data", "", f"- source: {data.get('source')} ({data.get('location')})", f"- split: {data.get('split')}"]
    if data.get("split") == "kaggle":
        lines.append(
            "- note: the Kaggle split holds out a different 10,000 images than the official test set, "
            "so accuracies are close to, not identical with, official-test figures"
        )
    for role, digest in data.get("sha256", {}).items():
        lines.append(f"- {role}: sha256 `{digest}`")
    return lines + [""]


def load_runs(folder: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(compare.json or None, {run name: results.json}) for a compare or a single run directory."""
    folder = Path(folder)
    if (folder / COMPARE_FILE).is_file():
        compare = read_compare(folder)
        return compare, {r["run_dir"]: read_results(folder / r["run_dir"]) for r in compare["runs"]}
    if (folder / RESULTS_FILE).is_file():
        return None, {folder.name: read_results(folder)}
    raise FmnistError(f"{folder}: neither a run directory ({RESULTS_FILE}) nor a comparison ({COMPARE_FILE})")


def write_report(folder: Path) -> Path:
    """Write `report.md` and its PNGs in `folder/figures/`; returns the report's path."""
    folder = Path(folder)
    compare, runs = load_runs(folder)
    fig_dir = folder / FIGURES_DIR
    single = compare is None
    run_dirs = {name: folder if single else folder / name for name in runs}
    first = next(iter(runs.values()))
    title = compare["title"] if compare else f"Run {folder.name}: {first['model']}"
    lines = [f"# {title}", ""]
    if compare and compare.get("notes"):
        lines += [compare["notes"], ""]
    lines += _data_section(first["data"])

    lines += ["## Results", ""]
    lines += ["| run | model | params | size (MB) | test accuracy | test loss | best epoch | epochs | train s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['model']} | {r['params']:,} | {r['size_mb']:.2f} | {_pct(r['test_accuracy'])} | "
            f"{r['test_loss']:.4f} | {r['best_epoch']} | {r['epochs_run']} | {r['train_seconds']:.1f} |"
        )
    lines.append("")
    if compare and compare.get("seeds", 1) > 1:
        lines += ["Mean ± standard deviation over seeds:", "", "| model | test accuracy | train s |", "|---|---:|---:|"]
        for m in compare["models"]:
            lines.append(f"| {m['name']} | {_pct(m['test_accuracy_mean'])} ± {100 * m['test_accuracy_std']:.2f} | "
                         f"{m['train_seconds_mean']:.1f} |")  # fmt: skip
        lines.append("")
    if compare and compare.get("published"):
        lines += ["Published figures of the study this configuration reproduces (their split, not ours):", ""]
        lines += [f"- {k}: {v}" for k, v in compare["published"].items()] + [""]

    histories = {name: read_history(path) for name, path in run_dirs.items()}
    curves = figures.training_curves(histories, fig_dir / "curves.png", {n: r["best_epoch"] for n, r in runs.items()})
    lines += ["## Training curves", "", f"![training curves]({FIGURES_DIR}/{curves.name})", ""]

    lines += ["## Confusion matrices", ""]
    for name, r in runs.items():
        safe = name.replace("/", "_")
        png = figures.confusion_heatmap(r["confusion"], fig_dir / f"confusion-{safe}.png", f"{name}: confusion matrix")
        lines += [f"### {name}", "", f"![confusion matrix of {name}]({FIGURES_DIR}/{png.name})", ""]
        pairs = r.get("most_confused", [])
        if pairs:
            lines += ["| true | predicted as | count | % of true class |", "|---|---|---:|---:|"]
            lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | {_pct(p['fraction_of_true'])} |" for p in pairs]
            lines.append("")
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
