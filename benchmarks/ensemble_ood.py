"""Which out-of-distribution score an ensemble should answer "unknown" with, measured on real members.

    FMNIST_DATA=... python benchmarks/ensemble_ood.py RUN_DIR RUN_DIR [...] [--json PATH] [--quick] [--note TEXT]

The runs must share one validation hold-out (train them with one --split-seed). The ensemble is
their equal-weight average. An ensemble's logits are the log of its mean probability, whose
energy is 0 for every image, so each candidate is built from the members:

- energy+mahalanobis (features side by side): what fmnist.inference.ensemble_trust fits, the
  members' weighted mean energy plus the Mahalanobis distance on their penultimate features
  concatenated, each standardised on validation;
- energy alone (the members' weighted mean), Mahalanobis alone (features side by side);
- energy plus the members' own Mahalanobis distances, each standardised, averaged;
- the members' own trust-record scores averaged (members with a trust.json only);
- minus the ensemble's maximum probability; and each member's own energy+mahalanobis.

Each is screened as benchmarks/ood_screen.py screens a run's: AUROC and FPR@95 of the SCREENING
sets against validation, then the HELD_OUT sets against test (fmnist.data.ood_sets), and the share
of test images the validation threshold keeps. Writes benchmarks/results/ensemble_ood-<cpu>.json
(or --json; --quick: small sets, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from isa_caps import cpu_slug  # benchmarks/isa_caps.py

from fmnist.analysis import ood
from fmnist.data import ood_sets
from fmnist.data.splits import stratified_split, stratified_subsample
from fmnist.inference.checkpoint import normalization, tta_settings
from fmnist.inference.ensemble_holdout import shared_holdout
from fmnist.inference.ensemble_model import EnsembleModel, members_of
from fmnist.inference.ensemble_trust import embed_ensemble
from fmnist.inference.rundir import TRUST_FILE
from fmnist.inference.trust import TRAIN_SAMPLE, Trust, embed

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="two or more runs sharing one validation hold-out")
    parser.add_argument("--data-dir", default=os.environ.get("FMNIST_DATA"))
    parser.add_argument("--json", type=Path, help="write the figures here (default: benchmarks/results/)")
    parser.add_argument("--quick", action="store_true", help="small sets, nothing written")
    parser.add_argument("--note", default="", help="how the runs were trained, recorded as given")
    args = parser.parse_args()
    from fmnist.data.sources import resolve_dataset
    from fmnist.device import cpu_model

    data = resolve_dataset(args.data_dir, notify=lambda m: print(m, file=sys.stderr))
    members = members_of(args.run_dirs)
    holdout = shared_holdout(members, data)
    if isinstance(holdout, str):
        raise SystemExit(f"no shared validation hold-out: {holdout}")
    labels = data.train_labels
    train_idx, val_idx = stratified_split(labels, *holdout)
    sample = train_idx[stratified_subsample(labels[train_idx], 2_000 if args.quick else TRAIN_SAMPLE)]
    n_ood, n_test = (200, 2_000) if args.quick else (ood_sets.DEFAULT_SIZE, len(data.test_labels))
    val_images, test_images = data.train_images[val_idx], data.test_images[:n_test]
    images = {"val": val_images, "test": test_images, "train": data.train_images[sample]}
    for name in ood_sets.SCREENING + ood_sets.HELD_OUT:
        garments = val_images if name in ood_sets.SCREENING else test_images
        images[name] = ood_sets.build(name, n_ood, garments=garments)

    mean, std = normalization(members[0].meta)
    ensemble = EnsembleModel(members, [1.0 / len(members)] * len(members), mean, std).eval()
    whole = {k: embed_ensemble(ensemble, v, mean=mean, std=std) for k, v in images.items()}
    own = []  # each member's (logits, features) per set
    for m in members:
        settings = {
            "mean": normalization(m.meta)[0],
            "std": normalization(m.meta)[1],
            "tta": tta_settings(m.meta)["tta"],
        }
        own.append({k: embed(m.model, v, **settings) for k, v in images.items()})
    energy = {k: f[:, -1] for k, (_, f) in whole.items()}  # the members' mean energy, as the ensemble records it
    side_by_side = {k: f[:, :-1] for k, (_, f) in whole.items()}
    train_labels = labels[sample]
    maha = ood.Mahalanobis(side_by_side["train"], train_labels)
    member_maha = [ood.Mahalanobis(o["train"][1], train_labels) for o in own]

    def standardised_sum(parts: dict) -> dict:
        fitted = {n: ood.Standardised(p["val"]) for n, p in parts.items()}
        return {k: sum(fitted[n](p[k]) for n, p in parts.items()) for k in images}

    maha_scores = {k: maha.score(v) for k, v in side_by_side.items()}
    member_maha_scores = [{k: mm.score(o[k][1]) for k in images} for mm, o in zip(member_maha, own)]
    mean_member_maha = standardised_sum({str(i): s for i, s in enumerate(member_maha_scores)})
    scores = {
        "energy+mahalanobis (features side by side)": standardised_sum({"energy": energy, "maha": maha_scores}),
        "energy (members' mean)": energy,
        "mahalanobis (features side by side)": maha_scores,
        "energy+mahalanobis (members' own distances)": standardised_sum({"energy": energy, "maha": mean_member_maha}),
        "msp (ensemble)": {k: -np.exp(z).max(1) for k, (z, _) in whole.items()},
    }
    if all((m.folder / TRUST_FILE).is_file() for m in members):
        trusts = [Trust.load(m.folder) for m in members]
        scores["members' own scores, averaged"] = {
            k: np.mean([t.ood_scores(*o[k]) for t, o in zip(trusts, own)], axis=0) for k in images
        }
        for i, (t, o) in enumerate(zip(trusts, own)):
            scores[f"member {i} ({members[i].folder.name}) alone"] = {k: t.ood_scores(*o[k]) for k in images}

    rows = {}
    for method, s in scores.items():
        screen = [(ood.auroc(s["val"], s[n]), ood.fpr_at(s["val"], s[n])) for n in ood_sets.SCREENING]
        held = {
            n: {"auroc": ood.auroc(s["test"], s[n]), "fpr95": ood.fpr_at(s["test"], s[n])} for n in ood_sets.HELD_OUT
        }
        rows[method] = {
            "screening_auroc": float(np.mean([a for a, _ in screen])),
            "screening_fpr95": float(np.mean([f for _, f in screen])),
            "held_out_auroc": float(np.mean([h["auroc"] for h in held.values()])),
            "held_out_fpr95": float(np.mean([h["fpr95"] for h in held.values()])),
            "held_out": held,
            "test_kept_at_validation_threshold": float((s["test"] <= ood.threshold(s["val"])).mean()),
        }
        print(f"{method:48s} screening AUROC {rows[method]['screening_auroc']:.4f} "
              f"FPR@95 {rows[method]['screening_fpr95']:.3f} | held-out AUROC {rows[method]['held_out_auroc']:.4f} "
              f"FPR@95 {rows[method]['held_out_fpr95']:.3f}", flush=True)  # fmt: skip
    if args.quick:
        return 0
    record = {
        "benchmark": "ensemble_ood", "date": datetime.now(UTC).isoformat(timespec="seconds"), "note": args.note,
        "cpu": cpu_model(), "python": platform.python_version(),
        "command": " ".join([*(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ),
                             "python", "benchmarks/ensemble_ood.py", *sys.argv[1:]]),
        "members": [{"run_dir": m.folder.name, "model": m.meta["model"], "tta": m.meta["tta"],
                     "test_accuracy": (m.meta.get("extra") or {}).get("test_accuracy")} for m in members],
        "validation": {"images": len(val_idx), "split_seed": holdout[1]}, "train_sample": len(sample),
        "ood_sets": {"screening": list(ood_sets.SCREENING), "held_out": list(ood_sets.HELD_OUT), "images_each": n_ood},
        "chosen": "energy+mahalanobis (features side by side)", "results": rows,
    }  # fmt: skip
    out = args.json or RESULTS_DIR / f"ensemble_ood-{cpu_slug(cpu_model())}.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
