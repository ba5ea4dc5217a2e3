"""The report's second process: 2-D maps of embeddings, computed beside the figure drawing.

`start_maps(jobs, method, seed)` writes the features to a temporary folder and starts
`python -m fmnist.analysis.map_worker` on them; `MapsJob.results()` waits and reads the maps
back. A separate interpreter has its own GIL, so t-SNE's work takes the second core while the
report draws figures on the first; a fresh one, not a fork, because forking a process that
runs OpenMP threads (torch's) is unsafe, and not multiprocessing's spawn, which re-runs the
caller's main script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist.analysis.embeddings import class_separation, embed_2d
from fmnist.errors import FmnistError

JOBS_FILE = "jobs.npz"


@dataclass(frozen=True)
class Map2D:
    coords: np.ndarray  # (N,2)
    labels: np.ndarray  # the N points' classes
    method: str  # "tsne" or "umap"
    separation: dict[int, float]  # mean silhouette per class (class_separation)
    seconds: float


class MapsJob:
    """A running map process for jobs 0..n-1; results() waits for it, close() ends it."""

    def __init__(self, folder: Path, count: int, process: subprocess.Popen):
        self.folder, self.count, self.process = folder, count, process
        self._results: list[Map2D] | None = None

    def results(self) -> list[Map2D]:
        if self._results is None:
            code = self.process.wait()
            if code != 0:
                lines = (self.folder / "stderr.txt").read_text(errors="replace").strip().splitlines()
                raise FmnistError(f"the 2-D map process failed: {lines[-1] if lines else f'exit code {code}'}")
            self._results = [_read(self.folder / f"map-{i}.npz") for i in range(self.count)]
        return self._results

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_maps(jobs: list[tuple[np.ndarray, np.ndarray]], method: str, seed: int) -> MapsJob:
    """Start one process that maps each (features, labels) in turn."""
    folder = Path(tempfile.mkdtemp(prefix="fmnist-maps-"))
    arrays = {}
    for i, (features, labels) in enumerate(jobs):
        arrays[f"features-{i}"], arrays[f"labels-{i}"] = features, labels
    np.savez(folder / JOBS_FILE, **arrays)
    env = dict(os.environ)
    # The child must import this same fmnist, also when it runs from a source tree.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    with open(folder / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "fmnist.analysis.map_worker", str(folder), method,
                                    str(seed)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=stderr, env=env)  # fmt: skip
    return MapsJob(folder, len(jobs), process)


def _read(path: Path) -> Map2D:
    with np.load(path) as data:
        separation = dict(zip(data["classes"].tolist(), data["silhouettes"].tolist()))
        return Map2D(data["coords"], data["labels"], str(data["method"]), separation, float(data["seconds"]))


def _main(folder: Path, method: str, seed: int) -> None:
    with np.load(folder / JOBS_FILE) as jobs:
        count = sum(1 for key in jobs.files if key.startswith("features-"))
        for i in range(count):
            started = time.perf_counter()
            labels = jobs[f"labels-{i}"]
            coords, used = embed_2d(jobs[f"features-{i}"], method, seed)
            separation = class_separation(coords, labels)
            # Written under a temporary name, then renamed: the parent never reads half a file.
            np.savez(folder / f".map-{i}.npz", coords=coords, labels=labels, method=np.array(used),
                     classes=np.array(list(separation), dtype=np.int64),
                     silhouettes=np.array(list(separation.values()), dtype=np.float64),
                     seconds=np.array(time.perf_counter() - started))  # fmt: skip
            os.replace(folder / f".map-{i}.npz", folder / f"map-{i}.npz")


if __name__ == "__main__":
    _main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
