#!/usr/bin/env bash
# Everything fmnist measures on a GPU, as one prepared script for a session lent a GPU machine
# (issues 10 and 29). That machine has no network and no fmnist install; its own python3 holds
# PyTorch and nearly every dependency. Prepare here, once (the folder is ignored by git, never committed):
#
#   mkdir -p .device/data .device/wheels && cp ../shared/data/fashion-mnist/*.gz .device/data/
#   python3 -m pip download --no-deps --only-binary=:all: -d .device/wheels tomli-w
#   echo /.device/ >> .git/info/exclude
#
# then, through the device tool, with carry [".device"] and a timeout under 10 minutes:
#
#   bash benchmarks/gpu_runbook.sh all        # ~8 minutes: check, then speed, then seed004 (+ a greedy ensemble)
#   bash benchmarks/gpu_runbook.sh check      # the CUDA tests: every network's deterministic bf16 step, --jobs,
#                                             # the step compiled into CUDA graphs against the eager one
#   bash benchmarks/gpu_runbook.sh speed      # benchmarks/gpu_speed.py: gpu-fast and gpu-95 alone, 3 seeds each
#   bash benchmarks/gpu_runbook.sh seed004    # seed 004's benchmark table: every row and its ensemble (--jobs)
#   bash benchmarks/gpu_runbook.sh gpu-best   # the gpu-best recipe over 3 seeds, side by side (the >= 96.3% target)
#
# Budget of `all` (estimates, not yet measured): check 1-2 min; speed 3-4 min (gpu-fast ~5 s of
# training a run and gpu-95 ~30 s, plus compiling: tens of seconds for each recipe's first seed,
# seconds for the next from the compile cache); seed004 what is left of ALL_S (default 480 s; it took
# 373.5 s on an H200 before the step was compiled). gpu-best (WRN-16-8, 80 epochs) needs minutes a
# run: give it a call of its own, or time it alone with SPEED_RECIPES=gpu-best SPEED_SEEDS=1.
#
# Logs land in $OUT (the device tool brings that folder back, a few files only), with the files to
# commit: recipes_measured.json (speed and gpu-best write their rows) and gpu_speed.json (for
# benchmarks/results/). Run directories go to $RUNS and come back packed as $OUT/runs.tgz
# (checkpoints left out), also when a stage ran out of time: each stage stops after STAGE_S seconds
# (default 480, and within ALL_S for `all`) with the epochs it finished on disk. JOBS (default 3) is
# the --jobs of seed004 and gpu-best (GPU_BEST_SEEDS, default 3): runs sharing the GPU three at a
# time. SPEED_RECIPES (default gpu-fast,gpu-95) and SPEED_SEEDS (default 3) set the speed stage;
# BEST_RECIPE (default gpu-best) names the recipe of the gpu-best stage.
# Compiled steps are cached in ~/.cache/fmnist/torch-compile (TORCHINDUCTOR_CACHE_DIR overrides it):
# on a bare machine the first run of each network compiles cold, the next ones read the cache.
# SMOKE=1 checks the plumbing on any machine (a few steps a run, 100 validation images, nothing
# recorded; on the real data the test set still takes minutes on a CPU for the big nets).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-}"
case "$stage" in
  check | speed | gpu-best | seed004 | all) ;;
  *) echo "usage: benchmarks/gpu_runbook.sh check|speed|gpu-best|seed004|all (not '$stage')" >&2; exit 2 ;;
esac
out="${OUT:-runs/gpu-runbook}"
runs="${RUNS:-/tmp/gpu-runbook-runs}"
stage_s="${STAGE_S:-480}"
jobs="${JOBS:-3}"  # runs trained at once: one small network alone leaves most of a GPU idle
gpu_best_seeds="${GPU_BEST_SEEDS:-3}"
best_recipe="${BEST_RECIPE:-gpu-best}"  # the recipe the gpu-best stage runs (its smoke test picks a small one)
speed_recipes="${SPEED_RECIPES:-gpu-fast,gpu-95}"
speed_seeds="${SPEED_SEEDS:-3}"
deadline=$((SECONDS + ${ALL_S:-480}))  # `all` shares this among its stages
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1
if compgen -G ".device/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/fmnist-wheels .device/wheels/*.whl
  export PYTHONPATH="/tmp/fmnist-wheels${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export FMNIST_DATA="${FMNIST_DATA:-$PWD/.device/data}"
smoke=()
speed_mode=(--write)
if [ "${SMOKE:-0}" = 1 ]; then smoke=(--max-steps 2 --val-size 100); speed_mode=(--smoke); fi

python3 -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU: runs on the CPU")'
check() {
  python3 -m pytest -q -p no:cacheprovider -o addopts= tests/test_models.py tests/test_augment.py tests/test_parallel.py \
    tests/test_compile.py -k "cuda or gpu" \
    2>&1 | tee "$out/check.log"
}
capped() {  # capped NAME COMMAND...: the output to $out/NAME.log; stopped (and logged so) after STAGE_S seconds
  local name="$1" limit="$stage_s"
  shift
  if [ "$stage" = all ] && [ $((deadline - SECONDS)) -lt "$limit" ]; then limit=$((deadline - SECONDS)); fi
  if [ "$limit" -lt 1 ]; then echo "$name skipped: no time left" >"$out/$name.log"; return 0; fi
  timeout "$limit" "$@" >"$out/$name.log" 2>&1 || echo "$name stopped: exit $?" >>"$out/$name.log"
}
speed() {  # each recipe alone on the GPU, one run at a time (nothing else may share it meanwhile)
  capped gpu-speed python3 benchmarks/gpu_speed.py --recipes "$speed_recipes" --seeds "$speed_seeds" \
    "${speed_mode[@]}" --out "$runs/gpu-speed"
  cp src/fmnist/training/recipes_measured.json "$out/"
  if [ -f "$runs/gpu-speed/gpu_speed.json" ]; then cp "$runs/gpu-speed/gpu_speed.json" "$out/"; fi
}
gpu_best() {
  capped gpu-best python3 benchmarks/frontier.py --recipes "$best_recipe" --seeds "$gpu_best_seeds" --jobs "$jobs" --write \
    "${smoke[@]}" --out "$runs/frontier"
  cp src/fmnist/training/recipes_measured.json "$out/"
}
seed004() {
  capped seed004-benchmark python3 -m fmnist compare --config configs/seed004-benchmark.toml "${smoke[@]}" \
    --jobs "$jobs" --out "$runs/seed004-benchmark"
}
greedy() {  # the five networks of seed004, chosen greedily on validation, where fmnist ensemble has --select
  if ! python3 -m fmnist ensemble --help 2>/dev/null | grep -q -- "--select"; then
    echo "greedy ensemble skipped: this fmnist has no 'ensemble --select'" >"$out/greedy-ensemble.log"
    return 0
  fi
  local members=()
  for dir in "$runs"/seed004-benchmark/*/; do
    if [ -f "$dir/model.safetensors" ] && [ -f "$dir/results.json" ]; then members+=("$dir"); fi
  done
  if [ "${#members[@]}" -lt 2 ]; then echo "greedy ensemble skipped: fewer than 2 finished networks" >"$out/greedy-ensemble.log"; return 0; fi
  capped greedy-ensemble python3 -m fmnist ensemble "${members[@]}" --select greedy --overwrite --out "$runs/greedy-ensemble"
}
pack() {
  tar czf "$out/runs.tgz" --exclude='*.safetensors' -C "$runs" .
  tail -n 5 "$out"/*.log
}
case "$stage" in
  check) check ;;
  speed) speed; pack ;;
  gpu-best) gpu_best; pack ;;
  seed004) seed004; pack ;;
  all)
    check || { echo "the CUDA check failed: nothing trained" >&2; exit 1; }
    speed
    seed004
    greedy
    pack
    ;;
esac
