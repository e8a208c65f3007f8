#!/usr/bin/env bash
# sbatch examples/llama3_8b_128k/sbatch.sh            (8 nodes x 8 H100 by default; --nodes=1..8 works)
#
# One task per node runs run.sh, which starts torchrun with 8 processes. Submit from the directory the
# recipe's relative paths start from (data/, checkpoints/). With containers (pyxis/enroot), add e.g.
#   #SBATCH --container-image=megamid:latest --container-mounts=$PWD:$PWD --container-workdir=$PWD
#SBATCH --job-name=llama3-8b-128k
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
set -euo pipefail

export NNODES="$SLURM_JOB_NUM_NODES"
export GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_PORT="${MASTER_PORT:-29500}"
export RDZV_ID="$SLURM_JOB_ID"
# A requeued job resumes from checkpoint.dir/latest (checkpoint.load: auto).
srun --kill-on-bad-exit=1 bash -c 'NODE_RANK=$SLURM_NODEID exec examples/llama3_8b_128k/run.sh "$@"' _ "$@"
