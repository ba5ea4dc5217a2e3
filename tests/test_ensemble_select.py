"""Greedy ensemble selection: the same choice as a plain reimplementation, never below the best
member on validation, and end to end on tiny real runs (chosen members, weights, one test figure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from fmnist.data.splits import stratified_split
from fmnist.inference.ensemble_model import MANIFEST_FILE, read_predictions
from fmnist.inference.ensemble_select import STOPPED_MAX_STEPS, STOPPED_NO_GAIN, greedy_select, score
from fmnist.inference.predict import Predictor

TINY = np.finfo(np.float32).tiny


def _evaluate(probs: np.ndarray, labels: np.ndarray, counts: list[int]) -> tuple[int, float]:
    """(images right, log-loss) of the count-weighted mean, written out plainly with numpy."""
    w = np.array(counts, dtype=np.float64) / sum(counts)
    mean = (probs.astype(np.float64) * w[:, None, None]).sum(0).astype(np.float32)
    right = int((mean.argmax(1) == labels).sum())
    true_class = mean.astype(np.float64)[np.arange(len(labels)), labels]
    return right, float(-np.log(np.maximum(true_class, TINY)).mean())


def _better(a: tuple[int, float], b: tuple[int, float]) -> bool:
    return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1] - 1e-12)


def oracle_greedy(probs: np.ndarray, labels: np.ndarray, max_steps: int) -> list[int]:
    """Caruana's forward selection with replacement, as a loop over every candidate at every step."""
    m = len(probs)
    start, start_score = 0, _evaluate(probs, labels, [1] + [0] * (m - 1))
    for i in range(1, m):
        s = _evaluate(probs, labels, [int(j == i) for j in range(m)])
        if s[0] > start_score[0] or (s[0] == start_score[0] and s[1] < start_score[1]):
            start, start_score = i, s
    counts, current = [int(j == start) for j in range(m)], start_score
    for _ in range(max_steps):
        pick, pick_score = None, None
        for i in range(m):
            trial = counts.copy()
            trial[i] += 1
            s = _evaluate(probs, labels, trial)
            if pick_score is None or s[0] > pick_score[0] or (s[0] == pick_score[0] and s[1] < pick_score[1]):
                pick, pick_score = i, s
        if not _better(pick_score, current):
            break
        counts[pick] += 1
        current = pick_score
    return counts


def _library(seed: int, members: int, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Members of mixed skill: each leans towards the true class by its own amount, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    skill = rng.uniform(0.0, 3.0, members)
    logits = rng.normal(size=(members, n, classes))
    logits[:, np.arange(n), labels] += skill[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    return probs.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(12))
def test_greedy_chooses_what_a_plain_reimplementation_chooses(seed: int):
    members, n, classes = 2 + seed % 5, 40 + 13 * seed, 3 + seed % 4
    probs, labels = _library(seed, members, n, classes)
    max_steps = 25
    chosen = greedy_select(torch.from_numpy(probs), torch.from_numpy(labels), max_steps)
    assert list(chosen.counts) == oracle_greedy(probs, labels, max_steps)
    assert chosen.weights == pytest.approx([c / sum(chosen.counts) for c in chosen.counts]) and sum(
        chosen.weights
    ) == pytest.approx(1)
    # the trace: the first member, then one entry per addition, each better than the one before
    assert len(chosen.steps) == sum(chosen.counts)
    assert chosen.stopped == (STOPPED_MAX_STEPS if len(chosen.steps) == max_steps + 1 else STOPPED_NO_GAIN)
    final = _evaluate(probs, labels, list(chosen.counts))
    assert chosen.steps[-1].accuracy == final[0] / n and chosen.steps[-1].loss == pytest.approx(final[1])


def test_greedy_stops_at_the_step_limit_and_breaks_ties_by_loss_then_order():
    # members 0 and 1 are identical and the best; member 2 is right on the same images but less sure.
    labels = torch.tensor([0, 1, 0, 1])
    sure = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    unsure = torch.tensor([[0.6, 0.4], [0.45, 0.55], [0.55, 0.45], [0.49, 0.51]])
    probs = torch.stack([unsure, sure, sure.clone()])
    chosen = greedy_select(probs, labels, max_steps=3)
    # equal accuracy everywhere: member 1 starts (lower loss than 0, earlier than 2); no addition lowers the loss
    assert chosen.counts == (0, 1, 0) and chosen.stopped == STOPPED_NO_GAIN
    assert greedy_select(probs, labels, max_steps=0).counts == (0, 1, 0)


probability_arrays = st.tuples(st.integers(1, 5), st.integers(1, 30), st.integers(2, 4), st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(probability_arrays, st.booleans(), st.integers(0, 8))
def test_greedy_is_never_below_its_best_member_on_validation(shape, coarse, max_steps):
    members, n, classes, seed = shape
    rng = np.random.default_rng(seed)
    # coarse: small integer scores, so ties between members and classes are common
    raw = rng.integers(0, 3, (members, n, classes)) + 0.01 if coarse else rng.random((members, n, classes)) + 1e-3
    probs = torch.from_numpy(raw / raw.sum(2, keepdims=True)).float()
    labels = torch.from_numpy(rng.integers(0, classes, n))
    chosen = greedy_select(probs, labels, max_steps)
    singles = [score(probs, labels, [int(j == i) for j in range(members)]).correct for i in range(members)]
    ensemble = score(probs, labels, chosen.weights)
    assert ensemble.correct >= max(singles)
    assert singles[chosen.steps[0].member] == max(singles)  # it starts from a best member
    assert 1 <= sum(chosen.counts) <= max_steps + 1 and sum(chosen.weights) == pytest.approx(1)
    assert [s.accuracy for s in chosen.steps] == sorted(s.accuracy for s in chosen.steps)


# -- end to end on tiny real runs -----------------------------------------------------------------------

VAL_SIZE, SPLIT_SEED = 1000, 3


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Three tiny real MLPs sharing one hold-out; one stopped after a single step (weak: about 30%)."""
    import os

    data = os.environ.get("FMNIST_DATA")
    if not data or not Path(data).is_dir():
        pytest.skip("FMNIST_DATA is not set to the Fashion-MNIST folder")
    base = tmp_path_factory.mktemp("greedy")
    runs = {"a": ("60", "0"), "b": ("60", "1"), "weak": ("1", "2")}
    for name, (steps, seed) in runs.items():
        proc = run_cli("train", "-m", "mlp", "--model-arg", "hidden=[32]", "--epochs", "1", "--max-steps", steps,
                       "--seed", seed, "--val-size", str(VAL_SIZE), "--split-seed", str(SPLIT_SEED), "--precision",
                       "fp32", "--no-report", "--out", str(base / name), "--data-dir", data)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return [base / name for name in runs], Path(data), base


def test_cli_greedy_records_the_choice_and_tests_only_the_chosen_members(real_runs):
    runs, data, base = real_runs
    out = base / "ensemble"
    proc = run_cli("ensemble", *map(str, runs), "--out", str(out), "--precision", "fp32", "--data-dir", str(data),
                   env={**__import__("os").environ, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "select greedy" in proc.stdout and "validation accuracy" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["select"] == results["selection"]["rule"] == "greedy"

    # Oracle: the members' validation probabilities from Predictor, chosen by the plain reimplementation.
    from fmnist.data.sources import resolve_dataset

    dataset = resolve_dataset(str(data))
    _, val_idx = stratified_split(dataset.train_labels, VAL_SIZE, SPLIT_SEED)
    val_labels = dataset.train_labels[val_idx].astype(np.int64)
    val_probs = np.stack([Predictor(r, precision="fp32").probabilities(dataset.train_images[val_idx]) for r in runs])
    counts = oracle_greedy(val_probs, val_labels, results["selection"]["max_steps"])
    assert results["selection"]["counts"] == counts
    weights = [m["weight"] for m in results["members"]]
    assert weights == pytest.approx([c / sum(counts) for c in counts])
    assert [m["chosen"] for m in results["members"]] == [c > 0 for c in counts]

    member_val = [float((p.argmax(1) == val_labels).mean()) for p in val_probs]
    assert [m["validation_accuracy"] for m in results["members"]] == pytest.approx(member_val)
    validation = results["validation"]
    assert validation["shared"] and (validation["val_size"], validation["split_seed"]) == (VAL_SIZE, SPLIT_SEED)
    assert results["validation_accuracy"] == validation["accuracy"] >= max(member_val)
    assert validation["accuracy"] == _evaluate(val_probs, val_labels, counts)[0] / VAL_SIZE

    # The test figure: the chosen members' weighted mean, nothing of the others; each member still has its own row.
    test_probs = np.stack([Predictor(r, precision="fp32").probabilities(dataset.test_images) for r in runs])
    mean = (test_probs * np.array(weights)[:, None, None]).sum(0)
    assert results["test_accuracy"] == pytest.approx(float((mean.argmax(1) == dataset.test_labels).mean()), abs=2e-4)
    assert [m["test_accuracy"] for m in results["members"]] == pytest.approx(
        [float((p.argmax(1) == dataset.test_labels).mean()) for p in test_probs], abs=2e-4)  # fmt: skip
    np.testing.assert_allclose(read_predictions(out)["probabilities"], mean, atol=1e-5)

    # The manifest holds the chosen members only, so predict/export/serve run exactly the selection.
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    chosen = [r for r, c in zip(runs, counts) if c > 0]
    assert [(out / e["path"]).resolve() for e in manifest["members"]] == [r.resolve() for r in chosen]
    assert manifest["select"] == "greedy" and sum(e["weight"] for e in manifest["members"]) == pytest.approx(1)
    np.testing.assert_allclose(Predictor(out, precision="fp32").probabilities(dataset.test_images[:256]), mean[:256],
                               atol=1e-5)  # fmt: skip

    report = run_cli("report", str(out), "--data-dir", str(data))
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "Selection: greedy forward selection with replacement" in text
    assert f"greedy, {sum(c > 0 for c in counts)} of 3: " in text


def test_greedy_without_additions_keeps_the_best_member_alone(real_runs):
    runs, data, base = real_runs
    out = base / "best-alone"
    proc = run_cli("ensemble", *map(str, runs), "--greedy-steps", "0", "--out", str(out), "--precision", "fp32",
                   "--data-dir", str(data))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    val = [m["validation_accuracy"] for m in results["members"]]
    assert [m["weight"] for m in results["members"]] == [float(v == max(val)) for v in val]  # the three differ
    assert results["selection"]["stopped"] == STOPPED_MAX_STEPS and results["validation_accuracy"] == max(val)
    (entry,) = json.loads((out / MANIFEST_FILE).read_text())["members"]
    assert (out / entry["path"]).resolve() == runs[val.index(max(val))].resolve()
    best = results["members"][val.index(max(val))]
    assert results["test_accuracy"] == pytest.approx(best["test_accuracy"])  # one member: its own test figure
    assert results["params"] == json.loads((runs[0] / "results.json").read_text())["params"]
    report = run_cli("report", str(out), "--data-dir", str(data))
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert text.count("| not chosen |") == 2 and "it reached 0 additions" in text


def test_cli_select_all_averages_every_member_and_validation_only_shows_the_choice(real_runs):
    runs, data, base = real_runs
    proc = run_cli("ensemble", *map(str, runs), "--select", "all", "--out", str(base / "all"), "--precision", "fp32",
                   "--data-dir", str(data))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((base / "all" / "results.json").read_text())
    assert results["select"] == "all" and [m["weight"] for m in results["members"]] == pytest.approx([1 / 3] * 3)
    assert len(json.loads((base / "all" / MANIFEST_FILE).read_text())["members"]) == 3
    assert results["validation"]["shared"] and len(results["members"]) == 3

    proc = run_cli("ensemble", *map(str, runs), "--validation-only", "--greedy-steps", "0", "--precision", "fp32",
                   "--data-dir", str(data), env={**__import__("os").environ, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("not chosen") == 2 and "test accuracy" not in proc.stdout  # no additions: the best alone
