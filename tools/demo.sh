#!/usr/bin/env bash
# The main job: install what is missing, build, and train the MLP on
# Fashion-MNIST (on the GPU when one is visible, else on the CPU), writing
# metrics to runs/mlp/metrics.jsonl and a checkpoint under runs/mlp/ckpt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tools/setup.sh
bash tools/build.sh
mkdir -p runs/mlp
exec build/tandem train --config models/mlp/fashion.toml --set device=auto "$@" \
  --metrics-out runs/mlp/metrics.jsonl --ckpt-dir runs/mlp/ckpt
