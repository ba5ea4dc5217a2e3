"""The minimal endpoint `serve_load.py` compares fmnist with: one FastAPI route in one process,
fmnist's decode (fmnist.data.photos), the run's ONNX model in ONNX Runtime on the event loop.

    python benchmarks/serve_minimal.py RUN_DIR [THREADS]

Prints "minimal endpoint on http://127.0.0.1:PORT" (a free port), then serves until SIGTERM.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the route's annotations here
from starlette.responses import Response


def minimal_server(run_dir: Path, threads: int) -> None:
    """The comparison: one FastAPI route, fmnist's decode, the same ONNX model in ONNX Runtime, nothing else."""
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI

    from fmnist.data.photos import decode_image, to_dataset_form
    from fmnist.inference.checkpoint import normalization
    from fmnist.inference.ensemble_model import load_inference_model
    from fmnist.inference.export import onnx_for_run

    run_dir, model, meta = load_inference_model(run_dir)
    blob, _ = onnx_for_run(run_dir, model, meta)  # the model fmnist serves
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    input_name, classes = session.get_inputs()[0].name, list(meta["class_names"])
    mean, std = normalization(meta)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/"):
            data = await (await request.form())["file"].read()
        else:
            data = await request.body()
        if kind.startswith("application/json"):
            image = np.asarray(json.loads(data)["pixels"], dtype=np.uint8)
        else:
            image = to_dataset_form(decode_image(data))
        x = ((image.astype(np.float32) / 255.0 - mean) / std)[None, None]
        logits = session.run(None, {input_name: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(p.argmax())
        body = {"label": classes[best], "index": best, "probability": float(p[best]),
                "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}}  # fmt: skip
        return Response(json.dumps(body), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
    print(f"minimal endpoint on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, loop="auto", http="auto", ws="none", log_level="warning", access_log=False,
                            lifespan="off", server_header=False, backlog=2048)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    minimal_server(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
