"""Export a run or an ensemble to ONNX or TorchScript, checked against PyTorch before writing.

The exported graph takes normalised float32 (N,1,28,28) with a dynamic batch size and returns
logits (N,10); an ONNX export divides them by the run's or ensemble's temperature (so their softmax is
the calibrated probabilities `fmnist predict` shows) and adds the features its unknown score needs as a
second output, `features`: a network's penultimate features (fmnist.inference.trust), an ensemble's
members' side by side and their mean energy (fmnist.inference.ensemble_trust). The run's test-time augmentation (fmnist.inference.tta, every level) is part of the graph,
as is an ensemble's averaging, so an exported model answers exactly as `fmnist evaluate` does.
Class names, normalisation and the checkpoint's sha256 travel inside the file (ONNX
metadata_props; TorchScript extra file `fmnist.json`).

`ExportPlan` is the export as a list of named steps, so a caller can show progress from it.

fmnist itself never loads a TorchScript file from disk (that format is pickle-based); the
TorchScript check below reloads the bytes this process just produced, before they are written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
from torch import nn

from fmnist.constants import IMAGE_SIZE
from fmnist.data.normalize import normalize
from fmnist.errors import FmnistError, UsageError
from fmnist.fsutil import atomic_write_bytes
from fmnist.inference.checkpoint import normalization, tta_settings, with_tta
from fmnist.inference.export_metadata import (
    FEATURES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    file_metadata,
    onnx_metadata,
    set_metadata,
)

if TYPE_CHECKING:
    from fmnist.inference.ensemble_model import InferenceMeta

FORMATS = ("onnx", "torchscript")
ONNX_FILE = "model.onnx"
CHECK_IMAGES = 1000
MAX_ABS_DIFF = 1e-4
MIN_TOP1_AGREEMENT = 0.999
MAX_INT8_DROP_PP = 0.5
CALIBRATION_IMAGES = 1024


@contextlib.contextmanager
def quiet_exporter():
    # The exporter warns about deprecations and optional torchvision ops: noise to a user.
    # ONNX Runtime's quantiser logs through the root logger, so silence warnings wholesale.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def calibrates(model: nn.Module, meta: InferenceMeta) -> bool:
    """Whether the ONNX graph of this model is calibrated with features: a network, or an ensemble of them."""
    from fmnist.inference.ensemble_trust import calibrated_module

    return calibrated_module(model, meta, 1.0) is not None


def onnx_bytes(model: nn.Module, meta: InferenceMeta, temperature: float = 1.0) -> bytes:
    """Serialised ONNX model (torch.export-based exporter, dynamic batch) with fmnist metadata; the logits
    are divided by `temperature` and the features the unknown score needs are a second output."""
    from fmnist.inference.ensemble_trust import calibrated_module

    module = calibrated_module(model, meta, temperature)
    outputs, scaled = [OUTPUT_NAME, FEATURES_NAME], temperature
    if module is None:
        module, outputs, scaled = with_tta(model, meta), [OUTPUT_NAME], None
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    try:
        with quiet_exporter():
            program = torch.onnx.export(
                module, (example,), None, input_names=[INPUT_NAME], output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},), dynamo=True, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter raises many types; the first line says what failed
        raise FmnistError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    proto = program.model_proto
    set_metadata(proto, file_metadata(meta, temperature=scaled))
    return proto.SerializeToString()


def onnx_session(blob: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session; `threads` caps intra-op threads (1 suits one-image requests)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise FmnistError("the ONNX backend needs onnxruntime: pip install 'fmnist[serve]'") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise FmnistError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from None


def onnx_for_run(run_dir: Path, model: nn.Module, meta: InferenceMeta, temperature: float = 1.0
                 ) -> tuple[bytes, str]:  # fmt: skip
    """The run's model.onnx when it was exported from these exact weights at this temperature (with features),
    else a fresh in-memory export."""
    path = Path(run_dir) / ONNX_FILE
    if path.is_file():
        try:
            blob = path.read_bytes()
            info = onnx_metadata(blob)
        except Exception:
            info = {}
        if (
            info.get("fmnist.weights_sha256") == meta.get("weights_sha256")
            and info.get("fmnist.quantization") == "none"
            and info.get("fmnist.temperature") == (repr(float(temperature)) if calibrates(model, meta) else None)
        ):
            return blob, path.name  # a name, not a path: /model must not reveal the server's folders
    return onnx_bytes(model, meta, temperature), "exported in memory"


def quantize_int8(blob: bytes, calibration: np.ndarray, meta: InferenceMeta) -> bytes:
    """Static int8 quantisation of the convolutions and linear layers (QDQ, per-channel weights,
    MinMax calibration on `calibration`).

    Static rather than dynamic: ONNX Runtime's dynamic mode only quantises MatMul/Gemm, and
    in a CNN the convolutions are nearly all of the work.
    """
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise FmnistError("--int8 needs onnxruntime: pip install 'fmnist[serve]'") from None
    import onnx

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.parts = iter(np.array_split(calibration, max(1, len(calibration) // 128)))

        def get_next(self):
            part = next(self.parts, None)
            return None if part is None else {INPUT_NAME: part}

    with tempfile.TemporaryDirectory(prefix="fmnist-int8-") as tmp, quiet_exporter():
        fp32, prepared, int8 = (Path(tmp) / n for n in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        fp32.write_bytes(blob)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        first_conv = [n.name for n in graph.node if n.op_type == "Conv"][:1]
        # Only the matrix work is quantised, and not the first convolution: with one input
        # channel its 9 weights per filter quantise coarsely, and on a real fastcnn run that
        # one layer cost ~1 point of test accuracy (0.05 without it) for ~0.5% of the FLOPs.
        # BatchNorm after pooling cannot fold into a conv, and int8 BN only adds error.
        quantize_static(
            str(prepared), str(int8), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"], nodes_to_exclude=first_conv,
        )  # fmt: skip
        proto = onnx.load(str(int8))
    note = (
        f"int8 static (QDQ, per-channel weights, MinMax calibration on {len(calibration)} training images; "
        "first convolution and normalisation layers kept in float32)"
    )
    scaled = onnx_metadata(blob).get("fmnist.temperature")  # the fp32 graph's, which quantising keeps
    set_metadata(proto, file_metadata(meta, quantization=note, temperature=scaled and float(scaled)))
    return proto.SerializeToString()


def torchscript_bytes(model: nn.Module, meta: InferenceMeta, int8: bool = False) -> bytes:
    """A traced TorchScript archive with fmnist.json (the metadata) as an extra file."""
    quantization = "none"
    if int8:
        # PyTorch's dynamic quantisation covers Linear layers only (weights int8, activations
        # quantised on the fly); convolutions stay float32.
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        quantization = "int8 dynamic (PyTorch, Linear layers only)"
    module = with_tta(model, meta)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE))
        buffer = io.BytesIO()
        extra = {"fmnist.json": json.dumps(file_metadata(meta, quantization), indent=2)}
        torch.jit.save(traced, buffer, _extra_files=extra)
    return buffer.getvalue()


def _torchscript_runner(blob: bytes) -> Callable[[np.ndarray], np.ndarray]:
    # Loads only the bytes this process produced a moment ago; never a file from disk.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    loaded.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([loaded(torch.from_numpy(x[i : i + 1000])) for i in range(0, len(x), 1000)]).numpy()

    return run


def _onnx_runner(blob: bytes, output: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The graph's `output`-th output (0: logits, 1: features) for normalised inputs."""
    session = onnx_session(blob)

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [session.run(None, {INPUT_NAME: x[i : i + 1000]})[output] for i in range(0, len(x), 1000)]
        )

    return run


def default_out(run_dir: Path, fmt: str, int8: bool) -> Path:
    stem = "model.int8" if int8 else "model"
    return Path(run_dir) / (f"{stem}.onnx" if fmt == "onnx" else f"{stem}.torchscript.pt")


class ExportReport(TypedDict, total=False):
    """What an export checked and wrote (`fmnist export --json` prints it); the int8 keys only with --int8."""

    format: str
    file: str
    model: str
    check_images: int  # test images the export was checked on against PyTorch
    max_abs_logit_diff: float  # of the graph's logits against PyTorch's divided by the temperature
    temperature: float  # ONNX, one network: the graph divides its logits by it
    max_abs_feature_diff: float  # ONNX, one network: its features output against PyTorch's
    top1_agreement: float
    tta: str
    fp32_size_bytes: int
    members: int  # an ensemble's
    test_images: int
    test_accuracy_fp32: float
    test_accuracy_int8: float
    accuracy_drop_pp: float
    int8_top1_agreement: float
    size_bytes: int
    quantization: str  # none or int8


class ExportPlan:
    """Export, verify against PyTorch on test images, and write the file, as named steps.

        plan = ExportPlan(run_dir, "onnx", int8=True)
        for label, do in plan.steps():  # len(plan) of them; show `label`, then call `do()`
            do()
        plan.report                     # what `fmnist export --json` prints

    The run (or ensemble) is loaded when the plan is made, so a bad directory fails before
    any step; each step raises FmnistError when a check fails, and the file is written last.
    """

    def __init__(self, run_dir: Path, fmt: str, *, int8: bool = False, out: Path | None = None,
                 data_dir: str | None = None, notify: Callable[[str], None] = lambda _: None):  # fmt: skip
        from fmnist.inference.ensemble_model import load_inference_model

        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt, self.int8, self.data_dir, self.notify = fmt, int8, data_dir, notify
        self.run_dir, self.model, self.meta = load_inference_model(Path(run_dir))
        self.out = Path(out) if out else default_out(self.run_dir, fmt, int8)
        self.report: ExportReport = {}

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        steps = [("loading the test images", self._load_data), ("PyTorch reference logits", self._reference),
                 (f"exporting to {self.fmt}", self._export),
                 (f"checking {self.fmt} against PyTorch", self._check)]  # fmt: skip
        if self.int8:
            steps += [("quantising to int8 (calibrating on training images)", self._quantise),
                      ("test accuracy before and after", self._score_int8)]  # fmt: skip
        return [*steps, (f"writing {self.out}", self._write)]

    def __len__(self) -> int:
        return len(self.steps())

    def run(self, on_step: Callable[[str], None] = lambda _: None) -> ExportReport:
        for label, do in self.steps():
            on_step(label)
            do()
        return self.report

    def _inputs(self, images: np.ndarray) -> np.ndarray:
        return normalize(images, *normalization(self.meta)).numpy()

    def _load_data(self) -> None:
        from fmnist.data.sources import resolve_dataset

        self.dataset = resolve_dataset(self.data_dir, notify=self.notify)
        self.test_x = self._inputs(self.dataset.test_images)
        self.test_y = self.dataset.test_labels.astype(np.int64)
        self.n = min(CHECK_IMAGES, len(self.test_x))

    def _reference(self) -> None:
        from fmnist.inference.evaluate import predict

        # fp32 on purpose: `predict` would pick bf16 on AMX CPUs, and the check is against float32.
        x = torch.from_numpy(self.test_x[: self.n])
        self.reference = predict(self.model, x, precision="fp32", **tta_settings(self.meta)).numpy()
        self.temperature, self.features = None, None
        if self.fmt == "onnx" and calibrates(self.model, self.meta):
            from fmnist.inference.ensemble_trust import temperature_and_features

            images = self.dataset.test_images[: self.n]
            self.temperature, self.features = temperature_and_features(self.run_dir, self.model, self.meta, images)
            self.reference = self.reference / np.float32(self.temperature)

    def _export(self) -> None:
        if self.fmt == "onnx":
            self.fp32_blob = onnx_bytes(self.model, self.meta, self.temperature or 1.0)
            self.fp32_run = _onnx_runner(self.fp32_blob)
        else:
            self.fp32_blob = torchscript_bytes(self.model, self.meta)
            self.fp32_run = _torchscript_runner(self.fp32_blob)
        self.blob = self.fp32_blob

    def _check(self) -> None:
        fmt, n, reference = self.fmt, self.n, self.reference
        exported = self.fp32_run(self.test_x[:n])
        max_diff = float(np.abs(exported - reference).max()) if n else 0.0
        agreement = float((exported.argmax(1) == reference.argmax(1)).mean()) if n else 1.0
        single = self.fp32_run(self.test_x[:1])  # the batch dimension must really be dynamic
        if single.shape != (1, reference.shape[1]) or (n and not np.allclose(single, exported[:1], atol=MAX_ABS_DIFF)):
            raise FmnistError(f"{fmt} export answers differently for a batch of one; not written")
        if max_diff >= MAX_ABS_DIFF or agreement < MIN_TOP1_AGREEMENT:
            raise FmnistError(
                f"{fmt} export disagrees with PyTorch on {n} test images (max |logit diff| {max_diff:.2e}, "
                f"top-1 agreement {100 * agreement:.2f}%); not written"
            )
        feature_diff = {}
        if self.features is not None:
            got = _onnx_runner(self.fp32_blob, output=1)(self.test_x[:n])
            feature_diff = {
                "temperature": self.temperature,
                "max_abs_feature_diff": float(np.abs(got - self.features).max()),
            }
            if got.shape != self.features.shape or feature_diff["max_abs_feature_diff"] >= MAX_ABS_DIFF * 10:
                raise FmnistError(f"{fmt} export's features disagree with PyTorch on {n} test images; not written")
        from fmnist.inference.ensemble_model import tta_summary

        self.report = {
            "format": fmt, "file": str(self.out), "model": self.meta["model"], "check_images": n,
            "max_abs_logit_diff": max_diff, "top1_agreement": agreement, "tta": tta_summary(self.meta),
            "fp32_size_bytes": len(self.fp32_blob),
            **({"members": len(self.meta["members"])} if "members" in self.meta else {}), **feature_diff,
        }  # fmt: skip

    def _quantise(self) -> None:
        train = self.dataset.train_images
        pick = np.random.default_rng(0).choice(len(train), size=min(CALIBRATION_IMAGES, len(train)), replace=False)
        if self.fmt == "onnx":
            self.blob = quantize_int8(self.fp32_blob, self._inputs(train[np.sort(pick)]), self.meta)
            self.int8_run = _onnx_runner(self.blob)
        else:
            self.blob = torchscript_bytes(self.model, self.meta, int8=True)
            self.int8_run = _torchscript_runner(self.blob)

    def _score_int8(self) -> None:
        # "Before" runs the fp32 export (ONNX Runtime is ~3x faster than eager PyTorch here),
        # which the check has shown to match PyTorch to 1e-4.
        fp32_logits = self.fp32_run(self.test_x)
        quantised = self.int8_run(self.test_x)
        fp32_accuracy = float((fp32_logits.argmax(1) == self.test_y).mean())
        int8_accuracy = float((quantised.argmax(1) == self.test_y).mean())
        drop_pp = 100 * (fp32_accuracy - int8_accuracy)
        self.report.update(
            test_images=len(self.test_x), test_accuracy_fp32=fp32_accuracy, test_accuracy_int8=int8_accuracy,
            accuracy_drop_pp=drop_pp, int8_top1_agreement=float((quantised.argmax(1) == fp32_logits.argmax(1)).mean()),
        )  # fmt: skip
        if drop_pp > MAX_INT8_DROP_PP:
            raise FmnistError(
                f"int8 model loses {drop_pp:.2f} percentage points of test accuracy ({100 * fp32_accuracy:.2f}% -> "
                f"{100 * int8_accuracy:.2f}%), more than the {MAX_INT8_DROP_PP} allowed; not written"
            )

    def _write(self) -> None:
        atomic_write_bytes(self.out, self.blob)
        self.report["size_bytes"] = os.path.getsize(self.out)
        self.report["quantization"] = "int8" if self.int8 else "none"


def export_run(run_dir: Path, fmt: str, *, int8: bool = False, out: Path | None = None, data_dir: str | None = None,
               step: Callable[[str], None] = lambda _: None,
               notify: Callable[[str], None] = lambda _: None) -> ExportReport:  # fmt: skip
    """The whole `ExportPlan` in one call; `step` hears each step's label before it runs."""
    return ExportPlan(run_dir, fmt, int8=int8, out=out, data_dir=data_dir, notify=notify).run(step)
