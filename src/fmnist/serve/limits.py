"""The server's limits, each defined once: the CLI, the app, the OpenAPI schema, the web page's
documentation and the tests all import them from here.

They bound the work one request can cause, so that no request (however large, slow or
malformed) can stop the server answering others:

- the body size bounds what is read and buffered;
- MAX_BATCH bounds the images per request;
- PIXEL_BUDGET bounds the decoding work: compressed formats can pack a huge picture into a
  few kilobytes (a 5 MB body could otherwise hold ~5,000 megapixels of blank PNG);
- the timeout bounds how long an idle or half-sent request holds a connection.
"""

from __future__ import annotations

# Images per /predict/batch request.
MAX_BATCH = 256
# Request body limit (`fmnist serve --max-body-mb`).
DEFAULT_MAX_BODY_MB = 5.0
# Decoded pixels per request, all images together: 256 images of 500x500, a few large PNG
# photos, or several hundred phone JPEGs (which libjpeg decodes at 1/8 scale, ~0.2 MP each).
# Decoding this much costs about 2 s of CPU (256 PNGs of 500x500, one AMD EPYC Zen 3 core).
PIXEL_BUDGET = 64_000_000
# Seconds a connection may stay idle, or a request's headers take to arrive, or its body
# stay silent, before it is closed (`fmnist serve --timeout`).
DEFAULT_TIMEOUT_S = 15.0
# `fmnist serve --workers` default: one server process per CPU core the server may run on (one
# Python process works on one core at a time), at most this many; each holds its own model.
MAX_DEFAULT_WORKERS = 8
# Worker threads that parse, decode and preprocess request bodies off the event loop, and how
# many requests may wait for them before the server answers 503 (each waiting request holds
# its body, so this also bounds memory: about DECODE_QUEUE x the body limit).
DECODE_WORKERS = 2
DECODE_QUEUE = 64

# What a request may cost the event loop itself. Below these, handing work to a thread costs
# more than the work (GIL hand-offs and context switches: measured at ~half the CPU of a small
# request), so it is done where the request arrives; above, it goes to the threads above.
# - Parsing a body (multipart, JSON) and reading image headers: bodies up to this many bytes.
INLINE_BODY_BYTES = 64 * 1024
# - Decoding: requests whose headers declare up to this many pixels in all (a 256x256 image;
#   ~1.5 ms with preprocessing on one AMD EPYC Zen 4 core). Gated on pixels, not bytes: a
#   few-KB PNG can declare the whole pixel budget.
INLINE_PIXELS = 256 * 256
# - Inference: batches the model is expected to finish within this many seconds (from its
#   measured time per image); longer ones run in the inference thread.
INLINE_INFER_S = 0.010
