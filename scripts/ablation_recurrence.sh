#!/usr/bin/env bash
# Recurrence ablation of CCNet (arXiv 1811.11721, Sec. 4.3): no context, criss-cross attention with
# R = 1, 2, 3 loops, and a non-local block, each trained with several seeds (Hydra multirun), then a
# markdown table of val mIoU (mean ± std), long-range-pixel accuracy (synthetic set), head GFLOPs,
# head peak memory and training time (python tools/benchmark.py ablation).
#
# Usage: scripts/ablation_recurrence.sh [Hydra overrides passed to every run ...]
#   scripts/ablation_recurrence.sh                          # CPU default: ccnet_tiny on the synthetic set
#   SEEDS=0 scripts/ablation_recurrence.sh train.max_iters=20 dataset.num_val=8   # smoke test
#   JOBS=1 LAUNCHER="torchrun --nproc_per_node=4" SEEDS=0 CONTEXTS=none RECURRENCES=1,2,3 ABLATION_DEFAULTS= \
#     OUT=work_dirs/ablation_cityscapes scripts/ablation_recurrence.sh experiment=cityscapes_r101_official \
#     dataset.root=/data/cityscapes
#
# Every seed is one Hydra multirun over R (model.context=rcca) and one over the other contexts; JOBS of
# these sweeps run at the same time (each run uses train.cpu_threads=1 by default, so the CPU default
# runs one per core). Their output goes to OUT/logs/<sweep>_seed<s>.log.
#
# Environment (defaults in brackets):
#   OUT          where the runs, logs and summary.md/summary.json go  [work_dirs/ablation_recurrence]
#   SEEDS        comma-separated train.seed values                     [0,1,2]
#   RECURRENCES  comma-separated model.recurrence values for rcca; empty = skip [1,2,3]
#   CONTEXTS     comma-separated other model.context values; empty = skip [none,nonlocal]
#   JOBS         sweeps run in parallel (1 for GPU runs)               [2]
#   LAUNCHER     command that runs tools/train.py                      [python]
#   ABLATION_DEFAULTS  overrides applied before yours (your arguments win); the schedule is the
#                quickstart's (configs/train.yaml), validated and saved once at the end
#                [train.eval_interval=0 train.checkpoint_interval=0 train.vis_images=0]; empty for
#                long GPU runs, which should keep the preset's validation and checkpoint intervals
#   SUMMARY_ARGS extra arguments of python tools/benchmark.py ablation (e.g. --feature-size 97 97)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-work_dirs/ablation_recurrence}
SEEDS=${SEEDS:-0,1,2}
RECURRENCES=${RECURRENCES-1,2,3}
CONTEXTS=${CONTEXTS-none,nonlocal}
JOBS=${JOBS:-2}
LAUNCHER=${LAUNCHER:-python}
ABLATION_DEFAULTS=${ABLATION_DEFAULTS-train.eval_interval=0 train.checkpoint_interval=0 train.vis_images=0}
SUMMARY_ARGS=${SUMMARY_ARGS:-}
USER_ARGS=("$@")

if ! [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
  echo "JOBS=$JOBS: expected a positive integer (sweeps run in parallel)" >&2
  exit 2
fi
mkdir -p "$OUT/logs"

sweep() {  # sweep GROUP SEED: one Hydra multirun, output to OUT/logs/GROUP_seedSEED.log
  local group=$1 seed=$2 axis
  if [ "$group" = rcca ]; then axis=(model.context=rcca model.recurrence="$RECURRENCES")
  else axis=(model.context="$CONTEXTS"); fi
  # shellcheck disable=SC2086  # LAUNCHER and the defaults are word lists on purpose
  $LAUNCHER tools/train.py -m $ABLATION_DEFAULTS "${USER_ARGS[@]}" work_dir="$OUT/$group/seed$seed" \
    "${axis[@]}" train.seed="$seed" > "$OUT/logs/${group}_seed$seed.log" 2>&1
}

queue=()
for seed in ${SEEDS//,/ }; do  # longest sweeps (R = 1, 2, 3) first: better packing of the lanes
  [ -n "$RECURRENCES" ] && queue+=("rcca $seed")
done
for seed in ${SEEDS//,/ }; do
  [ -n "$CONTEXTS" ] && queue+=("other $seed")
done

start=$SECONDS
declare -A running=()  # pid -> "group seed"
failed=0
finish_one() {
  local pid status=0
  wait -n -p pid "${!running[@]}" || status=$?
  read -r group seed <<< "${running[$pid]}"
  unset "running[$pid]"
  if [ "$status" -ne 0 ]; then
    echo "FAILED: $group sweep, seed $seed (exit $status); last lines of $OUT/logs/${group}_seed$seed.log:" >&2
    tail -n 30 "$OUT/logs/${group}_seed$seed.log" >&2
    failed=1
  else
    echo "[$((SECONDS - start)) s] done: $group sweep, seed $seed"
  fi
}
for job in "${queue[@]}"; do
  while [ "${#running[@]}" -ge "$JOBS" ]; do finish_one; done
  [ "$failed" -eq 0 ] || break
  read -r group seed <<< "$job"
  echo "[$((SECONDS - start)) s] start: $group sweep, seed $seed"
  sweep "$group" "$seed" &
  running[$!]=$job
done
while [ "${#running[@]}" -gt 0 ]; do finish_one; done
[ "$failed" -eq 0 ] || exit 1

# shellcheck disable=SC2086
python tools/benchmark.py ablation "$OUT" $SUMMARY_ARGS
