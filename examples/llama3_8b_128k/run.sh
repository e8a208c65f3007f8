#!/usr/bin/env bash
# examples/llama3_8b_128k/run.sh [key.sub=value ...]
#
# Runs (or resumes) the Llama-3-8B 8K -> 128K recipe with torchrun on this node. Multi-node: run it on
# every node with the same MASTER_ADDR / MASTER_PORT / NNODES and each node's NODE_RANK (sbatch.sh
# does this under SLURM). Extra arguments are recipe overrides, e.g. checkpoint.dir=/scratch/ckpt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE="${RECIPE:-$HERE/recipe.yaml}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))

export CUDA_DEVICE_MAX_CONNECTIONS=1       # TP/SP communication overlap in megatron-core
export NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"

# Every check before any GPU time is spent: data files, base checkpoint, tokenizer, layouts at this size.
if [ "$NODE_RANK" = "0" ]; then
  megamid plan --world-size "$WORLD_SIZE" "$RECIPE" "$@"
fi

exec torchrun \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RDZV_ID:-llama3-8b-128k}" \
  -m megamid.cli train "$RECIPE" "$@"
