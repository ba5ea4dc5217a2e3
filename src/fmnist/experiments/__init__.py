"""Plans of several runs (compare, ablate, seeds, sweeps) and the executors that run them:
in-process, `--jobs` worker processes, and Ray."""
