"""`fmnist export`: ONNX and TorchScript files that answer like PyTorch and carry their metadata."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from fmnist.constants import TTA_LEVELS
from fmnist.data.dataset import load_idx_folder
from fmnist.data.normalize import blank_value, normalize
from fmnist.errors import FmnistError
from fmnist.inference.checkpoint import load_checkpoint, tta_settings
from fmnist.inference.evaluate import predict
from fmnist.inference.export import ExportPlan, onnx_bytes, onnx_for_run, onnx_metadata
from fmnist.models import create_model
from fmnist.models.whitening import fit_to_data
from test_predict import cached_real_run, tiny_run_dir

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run_dir(tmp_path_factory)  # fastcnn: its recipe averages mirror images (tta "flip")


@pytest.fixture(scope="module")
def exported(tiny):
    """`fmnist export RUN --format onnx --json`, run once for the module."""
    run_dir, data_dir = tiny
    proc = run_cli("export", str(run_dir), "--format", "onnx", "--data-dir", str(data_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_onnx_export_roundtrip_metadata_and_dynamic_batch(tiny, exported):
    run_dir, _ = tiny
    report = exported
    assert report["max_abs_logit_diff"] < 1e-4 and report["top1_agreement"] >= 0.999
    path = Path(report["file"])
    assert path == run_dir / "model.onnx" and path.stat().st_size == report["size_bytes"]

    model, meta = load_checkpoint(run_dir)
    info = onnx_metadata(path.read_bytes())
    assert json.loads(info["fmnist.class_names"]) == meta["class_names"]
    assert json.loads(info["fmnist.normalization"]) == meta["normalization"]
    assert info["fmnist.inference.tta"] == meta["tta"] == report["tta"] != "none"
    assert info["fmnist.weights_sha256"] == meta["weights_sha256"]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] not in (1, 2, 7)  # symbolic batch dimension
    generator = torch.Generator().manual_seed(0)
    for n in (1, 7):
        x = torch.randn(n, 1, 28, 28, generator=generator)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (n, 10)
        assert np.abs(got - predict(model, x, precision="fp32", **tta_settings(meta)).numpy()).max() < 1e-4


@pytest.mark.parametrize("level", TTA_LEVELS)
def test_every_tta_level_is_inside_the_onnx_graph(level: str):
    torch.manual_seed(0)
    model = create_model("fastcnn").place("cpu").eval()
    fit_to_data(model, lambda: torch.randn(64, 1, 28, 28))  # its whitening filters, as training sets them
    meta = {"model": "fastcnn", "model_args": model.model_args, "class_names": [str(i) for i in range(10)],
            "normalization": {"mean": 0.3, "std": 0.4}, "tta": level}  # fmt: skip
    session = ort.InferenceSession(onnx_bytes(model, meta), providers=["CPUExecutionProvider"])
    assert onnx_metadata(onnx_bytes(model, meta))["fmnist.inference.tta"] == level
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8))
    x = normalize(images, 0.3, 0.4)
    for batch in (x[:1], x):
        got = session.run(None, {"input": batch.numpy()})[0]
        expected = predict(model, batch, precision="fp32", tta=level, blank=blank_value(0.3, 0.4)).numpy()
        plain = predict(model, batch, precision="fp32").numpy()
        assert np.abs(got - expected).max() < 1e-4
        assert (np.abs(got - plain).max() > 1e-3) == (level != "none")  # the views really are averaged


def test_serving_reuses_a_matching_onnx_file_and_reexports_a_stale_one(tiny, exported):
    run_dir, _ = tiny
    model, meta = load_checkpoint(run_dir)
    _, source = onnx_for_run(run_dir, model, meta)
    assert source.endswith("model.onnx")
    _, source = onnx_for_run(run_dir, model, {**meta, "weights_sha256": "0" * 64})  # weights changed since
    assert source == "exported in memory"


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_export_carries_metadata(tiny, isolated_env, tmp_path: Path):
    run_dir, data_dir = tiny
    out = tmp_path / "model.pt"
    proc = run_cli("export", str(run_dir), "--format", "torchscript", "--out", str(out), "--data-dir", str(data_dir),
                   env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "top-1 agreement 100.00%" in proc.stdout
    # The test loads the file it just made (trusted); fmnist itself never loads TorchScript.
    extra = {"fmnist.json": ""}
    module = torch.jit.load(io.BytesIO(out.read_bytes()), _extra_files=extra)
    info = json.loads(extra["fmnist.json"])
    model, meta = load_checkpoint(run_dir)
    assert json.loads(info["fmnist.class_names"]) == meta["class_names"]
    assert info["fmnist.inference.tta"] == meta["tta"] != "none"
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(module(x), predict(model, x, precision="fp32", **tta_settings(meta)))


def test_export_plan_names_its_steps_and_fails_before_writing(tiny, tmp_path: Path):
    run_dir, data_dir = tiny
    plan = ExportPlan(run_dir, "onnx", int8=True, out=tmp_path / "m.onnx", data_dir=str(data_dir))
    labels = [label for label, _ in plan.steps()]
    assert len(plan) == 7 and labels[0] == "loading the test images" and labels[-1].startswith("writing ")
    assert len(ExportPlan(run_dir, "torchscript", data_dir=str(data_dir))) == 5
    plan = ExportPlan(run_dir, "onnx", out=tmp_path / "m.onnx", data_dir=str(data_dir))
    steps = plan.steps()
    for _, do in steps[:3]:
        do()
    plan.reference[:, 0] += 1.0  # a PyTorch answer the export cannot match
    with pytest.raises(FmnistError, match="disagrees with PyTorch"):
        steps[3][1]()
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args, code, fragment", [
    (["--format", "tflite"], 2, "'tflite' is not one of 'onnx', 'torchscript'"),
])  # fmt: skip
def test_export_bad_options(tiny, isolated_env, args, code, fragment):
    run_dir, data_dir = tiny
    proc = run_cli("export", str(run_dir), *args, "--data-dir", str(data_dir), env=isolated_env)
    assert proc.returncode == code and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_export_of_a_missing_run(isolated_env, tmp_path: Path):
    proc = run_cli("export", str(tmp_path / "nope"), env=isolated_env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "no such run directory" in proc.stderr


@pytest.mark.parametrize("drop, words", [
    (0.31, "int8 loses 0.31 percentage points"),
    (-0.09, "int8 gains 0.09 percentage points"),  # a gain, never "accuracy drop +0.09"
    (0.001, "int8 keeps fp32's test accuracy"),
])  # fmt: skip
def test_int8_accuracy_change_says_which_way(drop, words):
    from fmnist.cli.export import accuracy_change

    assert accuracy_change(drop).startswith(words)


@pytest.mark.slow
def test_int8_onnx_on_real_data(request, real_data_dir: Path, tmp_path: Path, isolated_env):
    run_dir = cached_real_run(request, real_data_dir)
    out = tmp_path / "model.int8.onnx"
    proc = run_cli("export", str(run_dir), "--int8", "--out", str(out), "--data-dir", str(real_data_dir), "--json",
                   env=isolated_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["test_images"] == 10_000
    assert report["accuracy_drop_pp"] <= 0.5
    assert report["size_bytes"] < 0.5 * report["fp32_size_bytes"]
    info = onnx_metadata(out.read_bytes())
    assert info["fmnist.quantization"].startswith("int8 static")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    dataset = load_idx_folder(real_data_dir)
    norm = json.loads(info["fmnist.normalization"])
    mean, std = norm["mean"], norm["std"]
    x = ((dataset.test_images[:7].astype(np.float32) / 255 - mean) / std)[:, None]
    assert session.run(None, {"input": x})[0].shape == (7, 10)


def test_onnx_graph_is_calibrated_and_gives_the_features(tiny, tmp_path: Path):
    """Oracles: softmax(PyTorch logits / T) with the run's own T, and trust.embed's features; the ONNX
    backend then assesses images as the PyTorch one does, without a PyTorch forward pass."""
    import shutil

    from fmnist.inference.predict import Predictor
    from fmnist.inference.trust import Trust, TrustFile, calibrate_run, embed

    run_dir, data_dir = tiny
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "run"))
    dataset = load_idx_folder(data_dir)
    calibrate_run(run_dir, dataset)
    trust = Trust.load(run_dir)
    assert trust.temperature != 1 and trust.has_ood
    report = ExportPlan(run_dir, "onnx", data_dir=str(data_dir)).run()
    assert report["temperature"] == trust.temperature and report["max_abs_feature_diff"] < 1e-3
    blob = (run_dir / "model.onnx").read_bytes()
    assert float(onnx_metadata(blob)["fmnist.temperature"]) == trust.temperature
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]  # the first as before

    model, meta = load_checkpoint(run_dir)
    images = np.concatenate(
        [dataset.test_images[:50], np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8)]
    )
    x = normalize(images, *(meta["normalization"][k] for k in ("mean", "std")))
    logits, features = session.run(None, {"input": x.numpy()})
    reference = predict(model, x, precision="fp32", **tta_settings(meta)).numpy().astype(np.float64) / trust.temperature
    calibrated = np.exp(reference - reference.max(1, keepdims=True))
    calibrated /= calibrated.sum(1, keepdims=True)
    served = np.exp(logits - logits.max(1, keepdims=True))
    assert logits.shape == (len(images), 10) and np.abs(served / served.sum(1, keepdims=True) - calibrated).max() < 1e-4
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    assert np.abs(features - embed(model, images, mean=mean, std=std, tta=meta["tta"])[1]).max() < 1e-3

    onnx, torch_backend = Predictor(run_dir, backend="onnx"), Predictor(run_dir, backend="torch", precision="fp32")
    assert onnx.onnx_source == "model.onnx"  # the exported file is reused
    got, expected = onnx.assess(images, 0.9), torch_backend.assess(images, 0.9)
    assert np.abs(got.probabilities - expected.probabilities).max() < 1e-4
    assert np.abs(got.ood_scores - expected.ood_scores).max() < 1e-3 and got.unknown[-3:].all()
    record = TrustFile.read(run_dir)  # recalibrated since the export: the file's temperature is stale
    record.temperature = 2 * trust.temperature
    record.write(run_dir)
    assert onnx_for_run(run_dir, model, meta, record.temperature)[1] == "exported in memory"
