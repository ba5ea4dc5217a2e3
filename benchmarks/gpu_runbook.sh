#!/usr/bin/env bash
# The GPU measurements that issue 10 asks for, one stage per call, for a session lent a GPU
# machine. That machine has no network and no fmnist install; its own python3 holds PyTorch and
# nearly every dependency. Prepare here, once (the folder is ignored by git, never committed):
#
#   mkdir -p .device/data .device/wheels && cp ../shared/data/fashion-mnist/*.gz .device/data/
#   python3 -m pip download --no-deps --only-binary=:all: -d .device/wheels tomli-w
#   echo /.device/ >> .git/info/exclude
#
# then, through the device tool, with carry [".device"] and a timeout under 10 minutes:
#
#   bash benchmarks/gpu_runbook.sh gpu-best   # the gpu-best recipe, one seed (the >= 96% target)
#   bash benchmarks/gpu_runbook.sh seed004    # seed 004's benchmark table: every row and its ensemble
#
# Results land in $OUT (the device tool brings that folder back): logs, run directories and, for
# gpu-best, recipes_measured.json with the new row to commit. SMOKE=1 checks the plumbing on any
# machine (two steps a run, 100 validation images; on the real data the test set still takes
# minutes on a CPU for the big nets).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-}"
if [ "$stage" != gpu-best ] && [ "$stage" != seed004 ]; then
  echo "usage: benchmarks/gpu_runbook.sh gpu-best|seed004 (not '$stage')" >&2
  exit 2
fi
out="${OUT:-runs/gpu-runbook}"
mkdir -p "$out"
if compgen -G ".device/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/fmnist-wheels .device/wheels/*.whl
  export PYTHONPATH="/tmp/fmnist-wheels${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export FMNIST_DATA="${FMNIST_DATA:-$PWD/.device/data}"
smoke=()
if [ "${SMOKE:-0}" = 1 ]; then smoke=(--max-steps 2 --val-size 100); fi

python3 -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU: runs on the CPU")'
case "$stage" in
  gpu-best)
    python3 benchmarks/frontier.py --recipes gpu-best --seeds 1 --write "${smoke[@]}" --out "$out/frontier" \
      2>&1 | tee "$out/gpu-best.log"
    cp src/fmnist/recipes_measured.json "$out/"
    ;;
  seed004)
    python3 -m fmnist compare --config configs/seed004-benchmark.toml "${smoke[@]}" --out "$out/seed004-benchmark" \
      2>&1 | tee "$out/seed004-benchmark.log"
    ;;
esac
