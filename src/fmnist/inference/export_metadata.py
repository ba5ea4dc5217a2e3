"""What an exported file says about itself: its input and output names and its metadata_props
(ONNX; TorchScript's extra file `fmnist.json`), apart from the exporter (fmnist.inference.export)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fmnist import __version__

if TYPE_CHECKING:
    from fmnist.inference.ensemble_model import InferenceMeta

INPUT_NAME, OUTPUT_NAME, FEATURES_NAME = "input", "logits", "features"


def file_metadata(meta: InferenceMeta, quantization: str = "none", temperature: float | None = None
                  ) -> dict[str, str]:  # fmt: skip
    """The facts a consumer needs to use the file without fmnist, as strings; `temperature`: the graph
    divides its logits by it and outputs the features too (`CalibratedNetwork`)."""
    from fmnist.inference.ensemble_model import tta_summary

    extra = meta.get("extra", {}) or {}
    return {
        "fmnist.format": "fmnist-export/1",
        "fmnist.version": __version__,
        "fmnist.model": meta["model"],
        "fmnist.model_args": json.dumps(meta.get("model_args", {})),
        "fmnist.class_names": json.dumps(list(meta["class_names"])),
        "fmnist.normalization": json.dumps(meta["normalization"]),
        "fmnist.input": "float32 (N,1,28,28) = (pixel/255 - mean) / std; light item on black, 28x28 like Fashion-MNIST",
        "fmnist.output": "float32 (N,classes) logits; softmax gives probabilities"
        if temperature is None
        else f"'{OUTPUT_NAME}': float32 (N,classes) logits divided by fmnist.temperature (softmax gives calibrated "
        f"probabilities); '{FEATURES_NAME}': float32 (N,D) "
        + (
            "each member's penultimate features side by side, then the members' weighted mean energy "
            if "members" in meta
            else "penultimate features "
        )
        + "(fmnist's unknown score)",
        **({"fmnist.temperature": repr(float(temperature))} if temperature is not None else {}),
        "fmnist.inference.tta": tta_summary(meta),  # in the graph
        "fmnist.weights_sha256": meta.get("weights_sha256", ""),
        "fmnist.test_accuracy": json.dumps(extra.get("test_accuracy")),
        "fmnist.quantization": quantization,
        **({"fmnist.members": json.dumps(meta["members"])} if "members" in meta else {}),
    }


def set_metadata(proto, metadata: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"fmnist {metadata['fmnist.model']}: Fashion-MNIST classifier; see metadata_props"


def onnx_metadata(blob: bytes) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(blob).metadata_props}
