#!/usr/bin/env bash
# The main job: install what is missing, build, and train the MLP on
# Fashion-MNIST data-parallel: one rank per GPU with NCCL when GPUs are
# visible, else 2 ranks on the CPU with Gloo (64 samples each, the same
# global batch of 128 as one process). Metrics go to runs/mlp/metrics.jsonl,
# the final checkpoint under runs/mlp/ckpt. Each run starts afresh (under
# the launcher, train would otherwise resume from the last run's checkpoint).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tools/setup.sh
bash tools/build.sh
rm -rf runs/mlp
mkdir -p runs/mlp
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && \
   grep -q '^TANDEM_CUDA_ENABLED:INTERNAL=1' build/CMakeCache.txt; then
  launch=(--nproc-per-node gpu --backend nccl)
  train=(--set device=cuda)
else
  launch=(--nproc-per-node 2 --backend gloo)
  train=(--set device=cpu --set batch_size=64)
fi
exec build/tandem launch "${launch[@]}" -- build/tandem train --config models/mlp/fashion.toml "${train[@]}" "$@" \
  --metrics-out runs/mlp/metrics.jsonl --ckpt-dir runs/mlp/ckpt
