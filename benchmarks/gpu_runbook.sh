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
#   bash benchmarks/gpu_runbook.sh check      # the CUDA tests: every network's deterministic bf16 step, --jobs
#   bash benchmarks/gpu_runbook.sh gpu-best   # the gpu-best recipe over 3 seeds, side by side (the >= 96% target)
#   bash benchmarks/gpu_runbook.sh seed004    # seed 004's benchmark table: every row and its ensemble
#   bash benchmarks/gpu_runbook.sh all        # check, then gpu-best and seed004 side by side
#
# Logs land in $OUT (the device tool brings that folder back, a few files only), with, for
# gpu-best, recipes_measured.json holding the new row to commit. Run directories go to $RUNS and
# come back packed as $OUT/runs.tgz (checkpoints left out), also when a stage ran out of time:
# each stage stops after STAGE_S seconds (default 480) with the epochs it finished on disk.
# JOBS (default 3) is the --jobs of both training stages: gpu-best's seeds (GPU_BEST_SEEDS, default 3)
# and seed004's six runs share the GPU three at a time. Not yet measured: with `all`, six runs share
# it, so give the stages room, e.g. STAGE_S=540 in a call with a 600-second limit.
# SMOKE=1 checks the plumbing on any machine (two steps a run, 100 validation images; on the real
# data the test set still takes minutes on a CPU for the big nets).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-}"
case "$stage" in
  check | gpu-best | seed004 | all) ;;
  *) echo "usage: benchmarks/gpu_runbook.sh check|gpu-best|seed004|all (not '$stage')" >&2; exit 2 ;;
esac
out="${OUT:-runs/gpu-runbook}"
runs="${RUNS:-/tmp/gpu-runbook-runs}"
stage_s="${STAGE_S:-480}"
jobs="${JOBS:-3}"  # runs trained at once: one small network alone leaves most of a GPU idle
gpu_best_seeds="${GPU_BEST_SEEDS:-3}"
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1
if compgen -G ".device/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/fmnist-wheels .device/wheels/*.whl
  export PYTHONPATH="/tmp/fmnist-wheels${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export FMNIST_DATA="${FMNIST_DATA:-$PWD/.device/data}"
smoke=()
if [ "${SMOKE:-0}" = 1 ]; then smoke=(--max-steps 2 --val-size 100); fi

python3 -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU: runs on the CPU")'
check() {
  python3 -m pytest -q -p no:cacheprovider -o addopts= tests/test_models.py tests/test_augment.py tests/test_parallel.py \
    -k "cuda or gpu" \
    2>&1 | tee "$out/check.log"
}
capped() {  # capped NAME COMMAND...: the output to $out/NAME.log; stopped (and logged so) after STAGE_S seconds
  local name="$1"
  shift
  timeout "$stage_s" "$@" >"$out/$name.log" 2>&1 || echo "$name stopped: exit $?" >>"$out/$name.log"
}
gpu_best() {
  capped gpu-best python3 benchmarks/frontier.py --recipes gpu-best --seeds "$gpu_best_seeds" --jobs "$jobs" --write \
    "${smoke[@]}" --out "$runs/frontier"
  cp src/fmnist/training/recipes_measured.json "$out/"
}
seed004() {
  capped seed004-benchmark python3 -m fmnist compare --config configs/seed004-benchmark.toml "${smoke[@]}" \
    --jobs "$jobs" --out "$runs/seed004-benchmark"
}
pack() {
  tar czf "$out/runs.tgz" --exclude='*.safetensors' -C "$runs" .
  tail -n 5 "$out"/*.log
}
case "$stage" in
  check) check ;;
  gpu-best) gpu_best; pack ;;
  seed004) seed004; pack ;;
  all)
    check || { echo "the CUDA check failed: nothing trained" >&2; exit 1; }
    gpu_best & seed004 & wait
    pack
    ;;
esac
