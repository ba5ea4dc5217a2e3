"""2-D maps of a model's embedding (`forward_features`): t-SNE by default, UMAP when installed."""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np

from fmnist.errors import UsageError

METHODS = ("auto", "tsne", "umap", "none")
# 250 iterations of early exaggeration and 250 to settle: on 1,000 points the clusters are the
# same as after sklearn's default 1,000, in a third of the time.
TSNE_ITERATIONS = 500
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def resolve_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"embedding method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "auto":
        return "umap" if umap_available() else "tsne"
    if method == "umap" and not umap_available():
        raise UsageError("UMAP needs the optional extra: pip install 'fmnist[umap]'")
    return method


def embed_2d(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N,2) coordinates and the method used ("tsne" or "umap")."""
    method = resolve_method(method)
    if method == "none":
        raise UsageError("embedding method 'none' computes no embedding")
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if method == "umap":
        import umap

        return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(x)), "umap"
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    # scikit-learn 1.5 renamed n_iter to max_iter (and 1.7 dropped n_iter); pyproject allows 1.3.
    iterations = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                **{iterations: TSNE_ITERATIONS})  # fmt: skip
    # One thread: the report runs this in a second process beside its figure drawing, and on a
    # 2-core machine shared with other work OpenMP's second thread mostly waits at barriers
    # (1,000 points with other jobs running: 6 s on one thread, 38 s on two).
    with threadpool_limits(1):
        # PCA to 50 dimensions first, as the t-SNE authors advise: same picture, a fraction of the time.
        if x.shape[1] > 50 and len(x) > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        return tsne.fit_transform(x), "tsne"


def class_separation(coords: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Mean silhouette per class in the 2-D map: near 1 a tight, separate cluster, below 0 mixed in."""
    from sklearn.metrics import silhouette_samples

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return {}
    scores = silhouette_samples(coords, labels)
    return {int(c): float(scores[labels == c].mean()) for c in np.unique(labels)}
