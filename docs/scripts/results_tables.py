"""Render every results table in README.md and docs/ from the JSON it was recorded in.

A table sits between markers naming its source, and everything between them is rewritten:

    <!-- results: runs.json#ensemble_tta -->   a table of benchmarks/results/runs.json
    <!-- results: recipes -->                  src/fmnist/training/recipes_measured.json (what `fmnist recipes` shows)
    <!-- results: models -->                   the model registry: parameters and FLOPs, counted now
    <!-- results: time_to_accuracy_sweeps -->  every benchmarks/results/time_to_accuracy-<cpu>.json
    <!-- results: screens -->                  every benchmarks/results/screen-<name>-<cpu>.json
    <!-- results: trust -->                    every benchmarks/results/ood_screen-<cpu>.json
    <!-- results: robustness -->               every benchmarks/results/robustness-<recipe>-<cpu>.json
    <!-- /results -->

    python docs/scripts/results_tables.py           # rewrite the tables in place
    python docs/scripts/results_tables.py --check   # exit 1, naming the file, where one is out of date

Figures are written once, in JSON, each with the hardware and the command that measured them;
prose links to a table instead of repeating its numbers. tests/test_docs.py runs --check.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- results: (?P<source>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
DASH = "–"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.10g}" if abs(value) >= 1000 else f"{value:g}"


def _pct(value: Any) -> str:
    if isinstance(value, list):
        if len(value) == 1:
            return f"{value[0]:.2f}%"
        each = ", ".join(f"{v:.2f}" for v in value)
        return f"{statistics.fmean(value):.2f}% ± {statistics.stdev(value):.2f} ({each})"
    return f"{value:.2f}%"


def _seconds(value: Any) -> str:
    if isinstance(value, list):
        return " + ".join(f"{_number(v)} s" for v in value) if len(value) == 2 else ", ".join(map(_seconds, value))
    return f"{_number(value)} s"


FORMATS: dict[str, Callable[[Any], str]] = {
    "text": str,
    "code": lambda v: f"`{v}`",
    "pct": _pct,
    "s": _seconds,
    "ms": lambda v: f"{v:g} ms",
    "int": lambda v: f"{v:,}",
    "f1": lambda v: f"{v:.1f}",
    "x": lambda v: f"{v:.1f}×",
    "x2": lambda v: f"{v:.2f}×",
    "pp": lambda v: f"{v:+.2f}",
}


def _cell(value: Any, fmt: str) -> str:
    if value is None or value == "":
        return DASH
    text = value if isinstance(value, str) and fmt not in ("code", "text") else FORMATS[fmt](value)
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_json_table(file_name: str, table_name: str) -> str:
    """One table of benchmarks/results/FILE: its columns, then hardware and command for every row."""
    path = RESULTS / file_name
    tables = json.loads(path.read_text(encoding="utf-8"))["tables"]
    if table_name not in tables:
        raise KeyError(f"{path.name} has no table {table_name!r} (it has: {', '.join(tables)})")
    table = tables[table_name]
    if "output" in table:  # a transcript: what a command printed, as it printed it
        return f"```text\n{table['output'].rstrip()}\n```\n\n{table['hardware']}; command: `{table['command']}`.\n"
    columns = [tuple(c) for c in table["columns"]]
    keys = {c[0] for c in columns}
    for key, fmt in (("hardware", "text"), ("command", "code")):
        if key not in keys and key not in table:  # each row names its own
            columns.append((key, key, fmt))
    rows = [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in table["rows"]]
    out = _markdown([label for _, label, _ in columns], rows)
    shared = [
        f"{label}: {fmt(table[key])}"
        for key, label, fmt in (("hardware", "Hardware", str), ("command", "Command", lambda c: f"`{c}`"))
        if key in table
    ]
    notes = [f"{row['note']}" for row in table["rows"] if row.get("note")]
    if shared or notes:
        out += "\n" + "; ".join(shared + notes) + ".\n"
    return out


def _recipes_module():
    from fmnist.training import recipes

    return recipes


def render_recipes() -> str:
    """The named recipes with every machine's figures: the table `fmnist recipes` prints, plus the command."""
    recipes = _recipes_module()
    measured = recipes.measured()
    rows = []
    for name, recipe in recipes.RECIPES.items():
        for i, m in enumerate(measured.get(name) or [None]):
            about = [f"`{name}`", f"`{recipe.model}`"] if i == 0 else ["", ""]
            if m is None:
                rows.append([*about, "not measured yet", DASH, DASH, DASH])
                continue
            cells = [
                recipes.accuracy_label(m),
                f"{m['seconds_mean']:.0f} s",
                m.get("hardware", "?"),
                f"`{m['command']}`",
            ]
            rows.append([*about, *(c.replace("|", "\\|") for c in cells)])
    return _markdown(["recipe", "model", "test accuracy", "time per run (wall)", "measured on", "command"], rows)


def render_models() -> str:
    """Every registered model with its parameters and forward FLOPs, counted from the registry now."""
    from fmnist.models.flops import forward_flops
    from fmnist.models.registry import count_parameters, create_model, get_entry, list_models

    rows = []
    for name in list_models():
        entry = get_entry(name)
        if entry.has_network:
            model = create_model(name)
            params, mflops = f"{count_parameters(model):,}", f"{forward_flops(model) / 1e6:,.1f}"
        else:
            params = mflops = DASH
        rows.append([f"`{name}`", entry.description.replace("|", "\\|"), params, mflops])
    return _markdown(["name", "what", "parameters (defaults)", "MFLOPs/image"], rows)


def render_serve_load() -> str:
    """benchmarks/results/serve_load.json, the record serve_load.py writes: fmnist against the minimal endpoint."""
    record = json.loads((RESULTS / "serve_load.json").read_text(encoding="utf-8"))
    s = record["settings"]
    rows = []
    for key, label in (
        ("fmnist", f"fmnist serve, {s['workers']} worker(s)"),
        ("minimal", "minimal FastAPI + ONNX Runtime, 1 process"),
    ):
        r = record[key]
        rows.append([label, f"{r['requests_per_s']:,.0f}", f"{r['latency_ms']['p50']:g} ms", f"{r['latency_ms']['p99']:g} ms",
                     f"{r['server_cpu_ms_per_request']:g} ms", str(r["errors"])])  # fmt: skip
    out = _markdown(["server", "requests/s", "p50", "p99", "server CPU per request", "errors"], rows)
    note = f"; {record['note']}" if record.get("note") else ""
    return (
        out + f"\nfmnist / minimal: {record['ratio']:.2f}×. Hardware: {record['cpu']}, {record['cores']} cores "
        f"({record['date'][:10]}){note}; command: `{record['command']}`.\n"
    )


def render_time_to_accuracy_sweeps() -> str:
    """Every benchmarks/results/time_to_accuracy-<cpu>.json (what time_to_accuracy.py writes): one row
    per ISA level, with each seed's accuracy, the minimum and the ratio, checked against the targets."""
    rows, notes = [], []
    for path in sorted(RESULTS.glob("time_to_accuracy-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        targets = record["targets"]
        for level in record["levels"]:
            if not level["ran"]:
                rows.append([record["cpu"], f"`{level['level']}`", DASH, DASH, DASH, DASH, DASH, DASH,
                             f"not run: {level['note']}"])  # fmt: skip
                continue
            accuracies = [100 * a for a in level["accuracies"]]
            seed = f"{_number(round(level['seed_seconds'], 1))} s (epoch {level['seed_epoch']})"
            if not level["seed_reached"]:
                seed = f"> {_number(round(level['seed_seconds'], 1))} s (never reached 93%)"
            if level.get("seed_runs"):  # since issue 38: every reference seed
                seed = _reference_seeds(level)
            ratio = level["ratio"] if isinstance(level["ratio"], str) else f"{level['ratio']:.1f}×"
            missed = [name for name, ok in level["meets"].items() if not ok]
            rows.append([
                record["cpu"], f"`{level['level']}`", level["precision"], seed,
                f"{level['fmnist_seconds']:.1f} s", ratio, _pct(accuracies),
                f"{min(accuracies):.2f}%", "all met" if not missed else "missed: " + ", ".join(missed),
            ])  # fmt: skip
        # Each row keeps the run that recorded it (older files: the record's one command).
        runs = dict.fromkeys((level.get("recorded", record["recorded"])[:10], level.get("command", record["command"]))
                             for level in record["levels"])  # fmt: skip
        notes.append(f"{record['cpu']} (hardware level `{record['hardware_isa']}`, {record['threads']} threads, "
                     f"torch {record['versions']['torch']}): "
                     + ", ".join(f"`{command}` ({day})" for day, command in runs))  # fmt: skip
    if not rows:
        return "No sweep recorded yet: run `python benchmarks/time_to_accuracy.py --isa-sweep`.\n"
    out = _markdown(["CPU (2 cores)", "ISA level", "precision", "seed-004 recipe to 93%", "fastcnn per run", "ratio",
                     "fastcnn test accuracy", "worst seed", "targets"], rows)  # fmt: skip
    targets = (f"Targets (issue 30): ratio ≥ {targets['ratio']:g}×, mean ≥ {100 * targets['mean_accuracy']:.1f}%, "
               f"worst seed ≥ {100 * targets['min_accuracy']:.1f}%.")  # fmt: skip
    return out + "\n" + targets + " Recorded by " + "; ".join(notes) + ".\n"


def _reference_seeds(level: dict) -> str:
    """The seed-004 reference's mean time to 93% and each seed's ("> T s" where a seed never got there)."""
    each = [f"seed {r['seed']}: {_number(round(r['seconds'], 1))} s (epoch {r['epoch']})" if r["reached"]
            else f"seed {r['seed']}: > {_number(round(r['seconds'], 1))} s (never reached 93%)"
            for r in level["seed_runs"]]  # fmt: skip
    mean = _number(round(level["seed_seconds"], 1))
    return f"{'' if level['seed_reached'] else '> '}{mean} s mean ({'; '.join(each)})"


def _teacher(run: dict) -> str:
    """A distilled run's teacher, as its validation accuracy at the views it scored in ("" for other runs)."""
    teacher = run.get("teacher")
    if not teacher or teacher.get("val_accuracy") is None:
        return ""
    return f"; its teacher, {teacher['members']} member(s) at {teacher['tta']}: {100 * teacher['val_accuracy']:.2f}"


def render_screens() -> str:
    """Every benchmarks/results/screen-<name>-<cpu>.json (what benchmarks/screen.py writes): one table per
    screen, a row per candidate, with validation accuracy only (a screen never evaluates the test split)."""
    from fmnist.training.recipes import RECIPES

    out = []
    for path in sorted(RESULTS.glob("screen-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        hardware = (f"{', '.join(record['precision'])}, {record['isa']} ({record['isa_level']}), {record['cpu']}, "
                    f"{record['jobs']} run(s) at once, {record['threads_per_run']} thread(s) each")  # fmt: skip
        rows = []
        for c in record["candidates"]:
            changes = "; ".join(f"{key} {old} → {new}" for key, (old, new) in c["changed"].items()) or "the base"
            seeds = ", ".join(f"{100 * r['best_val_accuracy']:.2f} (epoch {r['best_epoch']}; last "
                              f"{100 * r['last_val_accuracy']:.2f}{_teacher(r)})" for r in c["runs"])  # fmt: skip
            mean = f"{100 * c['mean_best_val_accuracy']:.2f}%"
            if c.get("mean_tta_val_accuracy", c["mean_best_val_accuracy"]) != c["mean_best_val_accuracy"]:
                mean += f" ({100 * c['mean_tta_val_accuracy']:.2f}% through its TTA views)"
            seconds = f"{c['mean_wall_seconds']:.1f} s"
            if c.get("mean_cost_seconds", c["mean_wall_seconds"]) != c["mean_wall_seconds"]:
                seconds += f" ({c['mean_cost_seconds']:.1f} s with its teacher's training)"
            rows.append([f"`{c['name']}`", _cell(changes, "text"), mean,
                         seeds, seconds, _cell(hardware, "text"),
                         _cell(record["command"], "code")])  # fmt: skip
        chose = ""
        if record.get("chose") in RECIPES:
            chose = f", which chose the `{record['chose']}` recipe"
        elif record.get("chose"):  # a screen for a recipe that none of its verdicts built (cpu-best)
            chose = f", for a `{record['chose']}` recipe not built"
        notes = " A smoke run (a few steps each): its figures test the plumbing only." if record.get("smoke") else ""
        if verdict := record.get("verdict"):  # computed by benchmarks/screen.py from the file's [rule]
            rule = record["rule"]
            limit = f", within {rule['max_time_ratio']:g}x its time" if rule.get("max_time_ratio") else ""
            gain = f"adds ≥ {rule['min_gain']:g} points" if rule["min_gain"] else "scores no lower"
            notes += (f" Rule: the best candidate replaces `{rule['keep']}` if it {gain}"
                      f"{limit}. Verdict: {verdict['reason']}.")  # fmt: skip
        out.append(
            f"Screen `{record['screen']}` (`{record['screen_file']}`{chose}), seeds {record['seeds']}, "
            f"{record['data']['val_size']:,} validation images, recorded {record['recorded'][:10]} "
            f"with torch {record['versions']['torch']}.{notes}\n\n"
            + _markdown(["candidate", "changed from the base", "mean validation accuracy (best epoch)",
                         "per seed: best epoch, last", "seconds per run", "precision, ISA, CPU", "command"], rows)
        )  # fmt: skip
    if not out:
        return ("No screen recorded yet: `python benchmarks/screen.py configs/screens/fast.toml` writes "
                "`benchmarks/results/screen-fast-<cpu>.json`, and this block renders it.\n")  # fmt: skip
    return "\n".join(out)


def _recorded_by(record: dict) -> str:
    return (f"{record['cpu']}, {record['threads']} thread(s), torch {record['versions']['torch']}, "
            f"{record['recorded'][:10]}; command: `{record['command']}`")  # fmt: skip


def render_trust() -> str:
    """Every benchmarks/results/ood_screen-<cpu>.json (benchmarks/ood_screen.py): the chosen OOD score per
    set, its threshold, the temperature's ECE before/after, and the prediction sets' coverage on test."""
    out = []
    for path in sorted(RESULTS.glob("ood_screen-*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        chosen, sets, targets = r["chosen"], r["ood_sets"], r["targets"]
        roles = [("screening (validation; chose the score)", n, r["screening"][chosen][n]) for n in sets["screening"]]
        roles += [("held out (test; never seen by the choice)", n, r["chosen_held_out"][n]) for n in sets["held_out"]]
        roles += [("ambiguous (test; no target)", n, r["chosen_held_out"][n]) for n in sets["ambiguous"]]
        ood_rows = [[role, f"`{name}`", f"{m['auroc']:.4f}", f"{100 * m['fpr95']:.1f}%",
                     DASH if "flagged_at_threshold" not in m else f"{100 * m['flagged_at_threshold']:.1f}%"]
                    for role, name, m in roles]  # fmt: skip
        t, test = r["temperature"], r["temperature_on_test"]
        ece_rows = [["validation (fit)", f"{100 * t['ece_before']:.2f}%", f"{100 * t['ece_after']:.2f}%",
                     f"{t['nll_before']:.4f}", f"{t['nll_after']:.4f}"],
                    ["test", f"{100 * test['ece_before']:.2f}%", f"{100 * test['ece_after']:.2f}%",
                     f"{test['nll_before']:.4f}", f"{test['nll_after']:.4f}"]]  # fmt: skip
        set_rows = []
        for key, s in r["conformal_test"].items():
            if s["method"] == "lac" and s["allow_empty"]:  # what fmnist ships (trust.CONFORMAL_METHOD)
                target = float(key.split("@")[1].split("+")[0])
                set_rows.append([f"{100 * target:g}%", f"{100 * s['coverage']:.2f}%",
                                 f"{100 * (s['coverage'] - target):+.2f}", f"{s['mean_set_size']:.3f}",
                                 f"{100 * s['empty']:.2f}%"])  # fmt: skip
        run = r["run"]
        out.append(
            f"**{r['cpu']}**: recipe `{run['recipe']}` ({run['model']}, test accuracy "
            f"{100 * run['test_accuracy_fp32']:.2f}%), {sets['images_each']:,} images per OOD set, "
            f"{run['val_size']:,} validation images. Chosen score: `{chosen}`, threshold {r['threshold']:.4f} "
            f"(keeps 95% of validation images; {100 * r['test_images_kept_at_threshold']:.2f}% of test images). "
            f"Targets on the held-out sets: AUROC ≥ {targets['auroc']:g}, FPR@95 ≤ {100 * targets['fpr95']:g}%: "
            f"{'all met' if r['meets_targets'] else 'not all met'}.\n\n"
            + _markdown(["role", "set", "AUROC", "FPR@95% TPR", "flagged at the threshold"], ood_rows)
            + f"\nTemperature T = {t['temperature']:.4f}, fitted on validation:\n\n"
            + _markdown(["split", "ECE before", "ECE after", "NLL before", "NLL after"], ece_rows)
            + "\nPrediction sets (split conformal, `lac`, calibrated on validation, measured on test):\n\n"
            + _markdown(["target coverage", "test coverage", "points off", "mean set size", "empty sets"], set_rows)
            + f"\nRecorded on {_recorded_by(r)}.\n"
        )  # fmt: skip
    if not out:
        return "Nothing recorded yet: `python benchmarks/ood_screen.py RUN_DIR` writes `ood_screen-<cpu>.json`.\n"
    return "\n".join(out)


def render_robustness() -> str:
    """Every benchmarks/results/robustness-<recipe>-<cpu>.json (benchmarks/robustness.py): clean and mean
    corruption accuracy, the worst three, and accuracy per corruption and severity."""
    out = []
    for path in sorted(RESULTS.glob("robustness-*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        rec = r["record"]
        by = {}
        for row in rec["rows"]:
            by.setdefault(row["corruption"], []).append(row)
        rate = lambda v: DASH if v is None else f"{100 * v:.1f}%"  # noqa: E731
        rows = [[f"`{name}`", *(f"{100 * x['accuracy']:.1f}%" for x in each),
                 f"{100 * statistics.fmean(x['accuracy'] for x in each):.1f}%",
                 f"{100 * statistics.fmean(x['ece'] for x in each):.1f}%",
                 rate(None if each[0]["ood_rate"] is None else statistics.fmean(x["ood_rate"] for x in each))]
                for name, each in by.items()]  # fmt: skip
        severities = [x["severity"] for x in next(iter(by.values()))]
        worst = ", ".join(f"`{x['corruption']}` at severity {x['severity']} ({100 * x['accuracy']:.1f}%)"
                          for x in sorted(rec["rows"], key=lambda x: x["accuracy"])[:3])  # fmt: skip
        smoke = f" A smoke run on {rec['images']} images: plumbing only." if r.get("smoke") else ""
        out.append(
            f"**Recipe `{r['recipe']}`** ({rec['model']}, T = {rec['temperature']:.4f}, OOD score "
            f"`{rec['ood_method'] or 'none'}`, {rec['images']:,} test images, {rec['precision']}).{smoke}\n\n"
            + _markdown(["", "accuracy", "ECE", "called unknown"], [
                ["clean", f"{100 * rec['clean_accuracy']:.2f}%", f"{100 * rec['clean_ece']:.2f}%",
                 rate(rec["clean_ood_rate"])],
                ["mean over every corruption and severity", f"{100 * rec['mean_corruption_accuracy']:.2f}%",
                 f"{100 * rec['mean_corruption_ece']:.2f}%", rate(rec["mean_corruption_ood_rate"])]])
            + f"\nWorst three: {worst}.\n\n"
            + _markdown(["corruption", *(f"severity {s}" for s in severities), "mean", "mean ECE",
                         "mean called unknown"], rows)
            + f"\nRecorded on {_recorded_by(r)} ({r['seconds']:.0f} s in all).\n"
        )  # fmt: skip
    if not out:
        return "Nothing recorded yet: `python benchmarks/robustness.py RUN_DIR --recipe NAME` writes one.\n"
    return "\n".join(out)


def render(source: str) -> str:
    if source == "trust":
        return render_trust()
    if source == "robustness":
        return render_robustness()
    if source == "screens":
        return render_screens()
    if source == "time_to_accuracy_sweeps":
        return render_time_to_accuracy_sweeps()
    if source == "serve_load":
        return render_serve_load()
    if source == "recipes":
        return render_recipes()
    if source == "models":
        return render_models()
    file_name, _, table = source.partition("#")
    return render_json_table(file_name, table)


def update(pages: list[Path] = PAGES, check: bool = False) -> list[str]:
    """Rewrite (or, with check, only compare) each page's tables; returns the pages out of date."""
    stale, cache = [], {}
    for page in pages:
        text = page.read_text(encoding="utf-8")

        def fill(match: re.Match) -> str:
            source = match["source"]
            if source not in cache:
                cache[source] = render(source)
            return f"{match[1]}{cache[source]}{match[4]}"

        new = BLOCK.sub(fill, text)
        if new != text:
            stale.append(str(page.relative_to(REPO)) if page.is_relative_to(REPO) else str(page))
            if not check:
                page.write_text(new, encoding="utf-8")
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; fail where a table is out of date")
    args = parser.parse_args()
    stale = update(check=args.check)
    for page in stale:
        print(f"{'out of date' if args.check else 'rewrote'}: {page}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("error: run python docs/scripts/results_tables.py to render them from their JSON", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
