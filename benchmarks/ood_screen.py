"""Choose an out-of-distribution score for a run on validation data, then measure it on held-out sets.

    FMNIST_DATA=... python benchmarks/ood_screen.py [RUN_DIR] [--json PATH] [--no-corruptions] [--quick]

Without RUN_DIR it trains the default recipe once (`fmnist train --out`, into a temporary folder).

1. Logits and penultimate features (fp32, averaged over the run's test-time views, so the head of
   the averaged features gives the averaged logits) for the run's validation hold-out, a
   class-balanced sample of its training split (the Mahalanobis and kNN fits), the test split and
   every OOD set (fmnist.data.ood_sets).
2. Every candidate score (CANDIDATES) is measured on the SCREENING sets against the validation
   images; the one with the highest mean AUROC is chosen (ties: the lower mean FPR@95). Its
   threshold keeps 95% of the validation images.
3. The chosen score alone is then measured on the HELD_OUT and AMBIGUOUS sets against the test
   split (AUROC, FPR@95, and the share flagged at the validation threshold); every other
   candidate's held-out figures are recorded too, for reference only, after the choice.
4. A temperature fitted on validation (NLL, ECE before/after), split-conformal sets calibrated on
   validation and measured on test at 0.8/0.9/0.95, and (unless --no-corruptions) the time to
   build every corrupted copy of the test set (fmnist.data.corruptions) with accuracy, ECE and
   OOD rate on each.

Writes benchmarks/results/ood_screen-<cpu>.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from isa_caps import cpu_slug  # benchmarks/isa_caps.py

from fmnist.analysis import conformal, ood
from fmnist.analysis.calibration import DEFAULT_BINS
from fmnist.analysis.metrics import expected_calibration_error
from fmnist.analysis.temperature import fit_temperature, nll, scale
from fmnist.constants import EVAL_BATCH_SIZE
from fmnist.data import ood_sets
from fmnist.data.normalize import normalize
from fmnist.data.splits import saved_holdout, stratified_split, stratified_subsample
from fmnist.inference.checkpoint import load_checkpoint, normalization, tta_settings
from fmnist.inference.tta import views

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
TRAIN_SAMPLE = 10_000
KNN_KS = (1, 10, 50)
COVERAGES = (0.8, 0.9, 0.95)
TARGET_AUROC, TARGET_FPR = 0.95, 0.25


@torch.no_grad()
def embed(model, meta, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) in fp32, each averaged over the checkpoint's test-time views."""
    mean, std = normalization(meta)
    settings = tta_settings(meta)
    x = normalize(images, mean, std)
    logits, features = [], []
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        batch = x[start : start + EVAL_BATCH_SIZE]
        stacked = torch.cat(views(batch, settings["tta"], settings["blank"]))  # one pass for every view
        f = model.forward_features(model.layout(stacked)).float().reshape(-1, len(batch), model.embedding_dim)
        f = f.mean(0)
        features.append(f.numpy())
        logits.append(model.forward_head(f).numpy())
    return np.concatenate(logits), np.concatenate(features)


def candidates(train_features, train_labels, temperature: float) -> dict:
    """name -> function(logits, features) -> score (higher = more out-of-distribution)."""
    maha = ood.Mahalanobis(train_features, train_labels)
    knns = {k: ood.KNN(train_features, k) for k in KNN_KS}
    return {
        "msp": lambda z, f: ood.msp(z),
        "msp_calibrated": lambda z, f: ood.msp(z, temperature),
        "energy": lambda z, f: ood.energy(z),
        "mahalanobis": lambda z, f: maha.score(f),
        **{f"knn{k}": (lambda z, f, k=k: knns[k].score(f)) for k in KNN_KS},
    }


def add_combinations(scores: dict, in_key: str, pairs: list[tuple[str, str]]) -> None:
    """Standardised sums of two scores (z-units of their spread on the validation images), in place."""
    for a, b in pairs:
        za, zb = ood.Standardised(scores[a][in_key]), ood.Standardised(scores[b][in_key])
        scores[f"{a}+{b}"] = {name: za(scores[a][name]) + zb(scores[b][name]) for name in scores[a]}


def separation(in_scores, out_scores, threshold: float | None = None) -> dict:
    row = {"auroc": ood.auroc(in_scores, out_scores), "fpr95": ood.fpr_at(in_scores, out_scores)}
    if threshold is not None:
        row["flagged_at_threshold"] = float((np.asarray(out_scores) > threshold).mean())
    return row


def train_default_run(data_dir: str | None) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ood-screen-")) / "fast"
    env = {**os.environ, **({"FMNIST_DATA": data_dir} if data_dir else {})}
    print(f"training the default recipe into {folder} …", flush=True)
    # The exit status is not trusted alone: a failure after the checkpoint is written still leaves a run.
    subprocess.run([sys.executable, "-m", "fmnist", "train", "--out", str(folder)], check=False, env=env)
    if not (folder / "model.json").is_file():
        raise SystemExit(f"training wrote no checkpoint in {folder}")
    return folder


def corruption_table(model, meta, images, labels, temperature, score_fn, threshold) -> dict:
    from fmnist.data.corruptions import CORRUPTIONS, corrupted_sets

    build_seconds, rows = 0.0, []
    started = time.perf_counter()
    generator = corrupted_sets(images)
    while True:
        t = time.perf_counter()
        try:
            name, severity, corrupted = next(generator)
        except StopIteration:
            break
        built = time.perf_counter() - t
        build_seconds += built
        logits, features = embed(model, meta, corrupted)
        probabilities = scale(logits, temperature)
        rows.append({"corruption": name, "severity": severity, "build_seconds": built,
                     "accuracy": float((logits.argmax(1) == labels).mean()),
                     "ece_calibrated": expected_calibration_error(torch.from_numpy(probabilities),
                                                                  torch.from_numpy(labels), DEFAULT_BINS),
                     "ood_rate": float((score_fn(logits, features) > threshold).mean())})  # fmt: skip
    return {"corruptions": list(CORRUPTIONS), "images": len(images), "build_seconds": build_seconds,
            "total_seconds": time.perf_counter() - started, "rows": rows,
            "mean_accuracy": float(np.mean([r["accuracy"] for r in rows]))}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished run (default: train the default recipe)")
    parser.add_argument("--data-dir", default=os.environ.get("FMNIST_DATA"))
    parser.add_argument("--json", type=Path, help="write the figures here (default: benchmarks/results/)")
    parser.add_argument("--ood-size", type=int, default=ood_sets.DEFAULT_SIZE, help="images per OOD set")
    parser.add_argument("--no-corruptions", action="store_true", help="skip the corrupted test sets")
    parser.add_argument("--quick", action="store_true", help="small sets, no corruptions, nothing written")
    args = parser.parse_args()
    from fmnist.data.sources import resolve_dataset
    from fmnist.device import cpu_model

    started = time.perf_counter()
    run_dir = args.run_dir or train_default_run(args.data_dir)
    model, meta = load_checkpoint(run_dir)
    config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    data = resolve_dataset(args.data_dir, notify=lambda m: print(m, file=sys.stderr))
    val_size, holdout = saved_holdout(config)
    train_idx, val_idx = stratified_split(data.train_labels, val_size, holdout)
    sample = train_idx[stratified_subsample(data.train_labels[train_idx], 2_000 if args.quick else TRAIN_SAMPLE)]
    n_ood = 200 if args.quick else args.ood_size
    test_images, test_labels = data.test_images, data.test_labels.astype(np.int64)
    if args.quick:
        test_images, test_labels = test_images[:2_000], test_labels[:2_000]

    val_images, val_labels = data.train_images[val_idx], data.train_labels[val_idx].astype(np.int64)
    sets = {name: ood_sets.build(name, n_ood, garments=val_images if name in ood_sets.SCREENING else test_images)
            for name in ood_sets.SETS}  # fmt: skip
    embedded = {"val": embed(model, meta, val_images), "test": embed(model, meta, test_images),
                **{name: embed(model, meta, images) for name, images in sets.items()}}  # fmt: skip
    _, train_features = embed(model, meta, data.train_images[sample])
    print(f"embedded {sum(len(z) for z, _ in embedded.values()) + len(sample):,} images "
          f"({time.perf_counter() - started:.0f}s so far)", flush=True)  # fmt: skip

    val_logits = embedded["val"][0]
    fit = fit_temperature(val_logits, val_labels)
    val_accuracy = float((val_logits.argmax(1) == val_labels).mean())
    test_accuracy = float((embedded["test"][0].argmax(1) == test_labels).mean())

    functions = candidates(train_features, data.train_labels[sample], fit.temperature)
    scores = {method: {name: fn(*embedded[name]) for name in embedded} for method, fn in functions.items()}
    add_combinations(scores, "val", [("energy", "knn10"), ("energy", "mahalanobis"), ("msp", "knn10"),
                                     ("mahalanobis", "knn10")])  # fmt: skip

    screening = {method: {name: separation(s["val"], s[name]) for name in ood_sets.SCREENING}
                 for method, s in scores.items()}  # fmt: skip

    def rank(method: str) -> tuple[float, float]:
        rows = screening[method].values()
        return (-float(np.mean([r["auroc"] for r in rows])), float(np.mean([r["fpr95"] for r in rows])))

    chosen = min(scores, key=rank)
    threshold = ood.threshold(scores[chosen]["val"])
    reported = ood_sets.HELD_OUT + ood_sets.AMBIGUOUS
    held_out = {method: {name: separation(s["test"], s[name], ood.threshold(s["val"])) for name in reported}
                for method, s in scores.items()}  # fmt: skip
    test_kept = float((scores[chosen]["test"] <= threshold).mean())

    # The fitted T measured out of sample: the test split's NLL and ECE at T = 1 and at the fitted T.
    test_logits = torch.from_numpy(embedded["test"][0])
    test_calibration = {
        f"{key}_{when}": value
        for when, t in (("before", 1.0), ("after", fit.temperature))
        for key, value in (("nll", nll(test_logits, test_labels, t)),
                           ("ece", expected_calibration_error(torch.from_numpy(scale(test_logits, t)),
                                                              torch.from_numpy(test_labels), DEFAULT_BINS)))
    }  # fmt: skip
    val_probabilities, test_probabilities = scale(val_logits, fit.temperature), scale(embedded["test"][0],
                                                                                         fit.temperature)  # fmt: skip
    sets_report = {}
    for method in conformal.METHODS:
        for coverage in COVERAGES:
            predictor = conformal.calibrate(val_probabilities, val_labels, coverage, method)
            for allow_empty in (False, True):
                key = f"{method}@{coverage}" + ("+empty" if allow_empty else "")
                sets = predictor.sets(test_probabilities, allow_empty=allow_empty)
                sets_report[key] = {**predictor.to_dict(), "allow_empty": allow_empty,
                                    **conformal.summary(sets, test_labels)}  # fmt: skip

    corruption = None
    if not (args.quick or args.no_corruptions):
        if "+" in chosen:
            a, b = chosen.split("+")
            za, zb = ood.Standardised(scores[a]["val"]), ood.Standardised(scores[b]["val"])
            score_fn = lambda z, f: za(functions[a](z, f)) + zb(functions[b](z, f))  # noqa: E731
        else:
            score_fn = functions[chosen]
        corruption = corruption_table(model, meta, test_images, test_labels, fit.temperature, score_fn, threshold)

    cpu = cpu_model()
    document = {
        "benchmark": "ood_screen", "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu, "threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg()[0],
        "command": " ".join([*(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ),
                             "python", "benchmarks/ood_screen.py", *sys.argv[1:]]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "run": {"dir": str(run_dir), "model": meta["model"], "recipe": config.get("recipe"), "tta": meta.get("tta"),
                "val_size": len(val_idx), "train_sample": len(sample), "val_accuracy_fp32": val_accuracy,
                "test_accuracy_fp32": test_accuracy},
        "ood_sets": {"screening": list(ood_sets.SCREENING), "held_out": list(ood_sets.HELD_OUT),
                     "ambiguous": list(ood_sets.AMBIGUOUS), "images_each": n_ood},
        "selection": "highest mean AUROC over the screening sets against the validation images (ties: lower mean "
                     "FPR@95); held-out sets are measured against the test split after the choice",
        "chosen": chosen, "threshold": threshold, "test_images_kept_at_threshold": test_kept,
        "targets": {"auroc": TARGET_AUROC, "fpr95": TARGET_FPR},
        "chosen_held_out": held_out[chosen],
        "meets_targets": all(held_out[chosen][n]["auroc"] >= TARGET_AUROC and held_out[chosen][n]["fpr95"] <= TARGET_FPR
                             for n in ood_sets.HELD_OUT),
        "screening": screening, "held_out": held_out,
        "temperature": fit.to_dict(),
        "temperature_on_test": test_calibration,
        "conformal_test": sets_report,
        "corruptions": corruption,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    print_summary(document)
    if not args.quick:
        path = args.json or RESULTS_DIR / f"ood_screen-{cpu_slug(cpu)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def print_summary(doc: dict) -> None:
    names = ood_sets.SCREENING
    print(f"\nscreening (validation in-distribution), AUROC / FPR@95:\n{'method':<22}"
          + "".join(f"{n:>22}" for n in names))  # fmt: skip
    for method, rows in doc["screening"].items():
        mark = " *" if method == doc["chosen"] else ""
        print(f"{method + mark:<22}" + "".join(f"{rows[n]['auroc']:>14.4f} / {rows[n]['fpr95']:.3f}" for n in names))
    names = list(doc["chosen_held_out"])
    print(f"\nheld out (test in-distribution), AUROC / FPR@95:\n{'method':<22}" + "".join(f"{n:>22}" for n in names))
    for method, rows in doc["held_out"].items():
        mark = " *" if method == doc["chosen"] else ""
        print(f"{method + mark:<22}" + "".join(f"{rows[n]['auroc']:>14.4f} / {rows[n]['fpr95']:.3f}" for n in names))
    t = doc["temperature"]
    print(f"\nchosen {doc['chosen']}, threshold {doc['threshold']:.4f} (keeps {doc['test_images_kept_at_threshold']:.1%} "
          f"of test images); meets targets: {doc['meets_targets']}")  # fmt: skip
    print(f"temperature {t['temperature']:.3f}: NLL {t['nll_before']:.4f} -> {t['nll_after']:.4f}, "
          f"ECE {t['ece_before']:.4f} -> {t['ece_after']:.4f}")  # fmt: skip
    c = doc["temperature_on_test"]
    print(
        f"on test: NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}, ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}"
    )
    for key, row in doc["conformal_test"].items():
        print(f"conformal {key}: coverage {row['coverage']:.4f}, mean set size {row['mean_set_size']:.3f}")
    if doc["corruptions"]:
        c = doc["corruptions"]
        print(f"corruptions: built {len(c['rows'])} sets of {c['images']:,} in {c['build_seconds']:.1f}s, "
              f"all with evaluation {c['total_seconds']:.1f}s; mean accuracy {c['mean_accuracy']:.4f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
