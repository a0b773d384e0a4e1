#!/usr/bin/env bash
# Configures and builds tandem into build/ (Release; CUDA when nvcc is found,
# unless TANDEM_CUDA=ON|OFF says otherwise). ccache with CCACHE_BASEDIR set
# to the checkout lets a fresh clone reuse earlier compilations.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CCACHE_BASEDIR="$root"
export CCACHE_NOHASHDIR=1
export PATH="$PATH:/usr/local/cuda/bin"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA="${TANDEM_CUDA:-AUTO}" >/dev/null
cmake --build build -j"$(nproc)"
