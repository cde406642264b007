#!/usr/bin/env bash
# Train on several machines under Slurm: srun starts one torchrun per node, and the torchruns meet
# through a c10d rendezvous on the job's first node; each starts one process per GPU.
#   [PARTITION=gpu] [NODES=2] [GPUS_PER_NODE=8] scripts/slurm_train.sh [Hydra overrides ...]
#   NODES=2 GPUS_PER_NODE=8 scripts/slurm_train.sh experiment=cityscapes_r101_official \
#       dataset.root=/data/cityscapes train.batch_size=1
# Inside an sbatch allocation, srun uses that allocation (set NODES to its node count).
# train.batch_size is per process: total batch = NODES x GPUS_PER_NODE x train.batch_size.
# work_dir and dataset.root must be on a file system all nodes share (every rank reads the checkpoint
# when resuming; rank 0 writes).
# Restarts and preemption: torchrun restarts failed processes (MAX_RESTARTS, default 3) and the run
# continues from its last checkpoint (resume=auto is passed first; a later resume=... of yours wins).
# Slurm's SIGTERM (preemption, or sbatch --signal=TERM@120 before the time limit) reaches torchrun,
# which passes it to the training processes: they finish the step, write last.pth and exit with 3,
# and so does the launcher (scripts/launch.py: torchrun with these exit statuses); requeue the job
# (sbatch --requeue) and the same command continues. See docs/training.md.
# Environment: PARTITION (srun -p), NODES (1), GPUS_PER_NODE (8), CPUS_PER_TASK (8 per GPU),
# PORT (29500, rendezvous port on the first node), SRUN_ARGS (extra srun options), PYTHON (python),
# MAX_RESTARTS (3).
set -euo pipefail

NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-$((8 * GPUS_PER_NODE))}
PORT=${PORT:-29500}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRUN_OPTS=(--nodes="${NODES}" --ntasks-per-node=1 --gres=gpu:"${GPUS_PER_NODE}" --cpus-per-task="${CPUS_PER_TASK}"
           --kill-on-bad-exit=1 --job-name=ccnet-train)
if [[ -n "${PARTITION:-}" ]]; then
    SRUN_OPTS+=(--partition="${PARTITION}")
fi

# Runs once per node; the head node's name and the job id are known only inside the allocation.
# shellcheck disable=SC2016
NODE_CMD='head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
exec "$PYTHON" "$REPO/scripts/launch.py" --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --max-restarts="$MAX_RESTARTS" --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head:$PORT" \
    "$REPO/tools/train.py" resume=auto "$@"'

# shellcheck disable=SC2086
PYTHON="${PYTHON:-python}" GPUS_PER_NODE="${GPUS_PER_NODE}" PORT="${PORT}" REPO="${REPO}" MAX_RESTARTS="${MAX_RESTARTS:-3}" \
    srun "${SRUN_OPTS[@]}" ${SRUN_ARGS:-} bash -c "${NODE_CMD}" bash "$@"
