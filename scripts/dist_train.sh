#!/usr/bin/env bash
# Train on the GPUs of one machine: one process per GPU, launched by torchrun (through scripts/launch.py,
# which exits 3 when a stop signal made the processes save last.pth, and 2 for a wrong setting).
#   scripts/dist_train.sh NUM_GPUS [Hydra overrides of configs/train.yaml ...]
#   scripts/dist_train.sh 4 experiment=cityscapes_r101_official dataset.root=data/cityscapes
# train.batch_size is per process: total batch = NUM_GPUS x train.batch_size.
# --standalone picks a free rendezvous port, so several jobs can share a machine.
# Restarts: when a process fails, torchrun restarts all of them (up to MAX_RESTARTS times) and
# resume=auto (passed first, so a later resume=... of yours wins) continues from the last checkpoint.
# Environment: PYTHON (default python), MAX_RESTARTS (3), CUDA_VISIBLE_DEVICES to choose the GPUs.
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 NUM_GPUS [overrides ...]   e.g. $0 4 experiment=cityscapes_r101_official" >&2
    exit 2
fi
NUM_GPUS=$1
shift
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

exec "${PYTHON:-python}" "${REPO}/scripts/launch.py" --standalone --nproc_per_node="${NUM_GPUS}" \
    --max-restarts="${MAX_RESTARTS:-3}" "${REPO}/tools/train.py" resume=auto "$@"
