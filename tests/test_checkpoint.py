"""Checkpoints: round trip, and every way a file can be wrong or hostile."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from fmnist.errors import CheckpointError
from fmnist.inference.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
    tta_settings,
)
from fmnist.models import create_model


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("mlp", hidden=[32])
    save_checkpoint(tmp_path, model, CheckpointMeta("mlp", dict(model.model_args), 0.3, 0.4, tta="flip", params=25450))
    return tmp_path


def test_round_trip_rebuilds_an_identical_model(saved: Path):
    torch.manual_seed(0)
    original = create_model("mlp", hidden=[32]).eval()
    model, meta = load_checkpoint(saved)
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    assert meta["class_names"][9] == "Ankle boot"
    assert meta["normalization"] == {"mean": 0.3, "std": 0.4} and meta["tta"] == "flip"
    assert not model.training
    assert load_checkpoint(saved / META_FILE)[1]["model"] == "mlp"


def test_weights_file_is_safetensors_not_pickle(saved: Path):
    header_len = int.from_bytes((saved / WEIGHTS_FILE).read_bytes()[:8], "little")
    header = json.loads((saved / WEIGHTS_FILE).read_bytes()[8 : 8 + header_len])
    assert "features.1.weight" in header


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(MARKER),))


MARKER = ""


def test_planted_pickle_is_refused_without_running_it(saved: Path, tmp_path: Path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    payload = pickle.dumps({"state": _Boom()})
    (saved / WEIGHTS_FILE).write_bytes(payload)
    meta = json.loads((saved / META_FILE).read_text())
    import hashlib

    meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()  # the attacker fixes the checksum too
    (saved / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(saved)
    assert not Path(MARKER).exists()


def _edit_meta(folder: Path, **changes):
    meta = json.loads((folder / META_FILE).read_text())
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:-20]), "does not match"),
        (lambda f: (f / WEIGHTS_FILE).unlink(), "weights file is missing"),
        (lambda f: (f / META_FILE).unlink(), "model.json is missing"),
        (lambda f: (f / META_FILE).write_text("{not json"), "not valid JSON"),
        (lambda f: _edit_meta(f, format_version=99), "version 99 is newer"),
        (lambda f: _edit_meta(f, format="other"), "not an fmnist checkpoint"),
        (lambda f: _edit_meta(f, model_args={"hidden": [64]}), "has shape"),
        (lambda f: _edit_meta(f, model_args={"hidden": [32, 16]}), r"tensor\(s\) the model needs"),
        (lambda f: _edit_meta(f, model="mlp_wide", model_args={}), "the model"),
        (lambda f: _edit_meta(f, model="nope"), "unknown model 'nope'"),
        (lambda f: _edit_meta(f, normalization={"mean": 0, "std": 0}), "positive std"),
        (lambda f: _edit_meta(f, model_args="x"), "model_args"),
        (lambda f: _edit_meta(f, tta="rotate"), "tta must be one of none, flip, flip-shift, not 'rotate'"),
    ],
)
def test_damaged_checkpoints_fail_with_one_clear_line(saved: Path, damage, message: str):
    damage(saved)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(saved)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("legacy, level", [({"tta_flip": True}, "flip"), ({"tta_flip": False}, "none"), ({}, "none")])
def test_fmnist_0_1_files_still_load_with_their_tta_level(saved: Path, legacy: dict, level: str):
    meta = json.loads((saved / META_FILE).read_text())
    del meta["tta"]
    (saved / META_FILE).write_text(json.dumps({**meta, **legacy}))
    model, loaded = load_checkpoint(saved)
    assert loaded["tta"] == level
    assert tta_settings(loaded) == {"tta": level, "blank": pytest.approx(-0.3 / 0.4)}


def test_placement_uses_the_models_layout(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("fastcnn")
    save_checkpoint(tmp_path, model, CheckpointMeta("fastcnn", dict(model.model_args), 0.5, 0.5))
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.channels_last  # fastcnn asks for NHWC: its convolution weights come back in that layout
    conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_missing_run_directory(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        load_checkpoint(tmp_path / "absent")


@pytest.mark.parametrize(
    "name, built_with, saved_args, new_default",
    [
        # fmnist 0.2.0's fastcnn ran its last conv at 7x7 and saved no `pool_before_last_conv`.
        ("fastcnn", {"widths": [16, 64, 128], "pool_before_last_conv": False, "whiten": False},
         {"widths": [16, 64, 128], "num_classes": 10}, {"pool_before_last_conv": True}),
        # fmnist 0.2.0's mlp_wide (784-1024-512, dropout 0.2) took and saved no arguments.
        ("mlp_wide", {"hidden": [1024, 512], "dropout": 0.2}, {"num_classes": 10}, {"hidden": (512, 256)}),
    ],
)  # fmt: skip
def test_checkpoint_saved_before_an_argument_existed_loads_as_it_was_built(
    tmp_path: Path, name, built_with, saved_args, new_default
):
    torch.manual_seed(0)
    old = create_model(name, **built_with).eval()
    params = sum(p.numel() for p in old.parameters())
    save_checkpoint(tmp_path, old, CheckpointMeta(name, saved_args, 0.3, 0.4, tta="flip", params=params))
    model, meta = load_checkpoint(tmp_path)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(x), old(x), rtol=1e-5, atol=1e-5)  # memory layouts may differ
    assert meta["model_args"] == saved_args
    fresh = create_model(name).model_args
    assert all(fresh[key] == value for key, value in new_default.items())
