#!/usr/bin/env bash
# Installs tandem's build and test dependencies from Debian packages.
# Idempotent: packages already present are left alone, and apt is not
# touched at all when nothing is missing. Says what it found (nvcc or not).
set -euo pipefail

# clang's sanitizer runtimes are packaged per clang version: the one Debian's
# "clang" depends on (14 on Debian 12, 19 on Debian 13).
clang_major() {
  local v
  v=$(apt-cache depends clang 2>/dev/null | sed -n 's/.*Depends: clang-\([0-9][0-9]*\)$/\1/p' | head -n 1)
  echo "${v:-14}"
}

packages=(
  build-essential cmake ninja-build ccache pkg-config zlib1g-dev
  catch2 libfmt-dev libopenblas-dev libcli11-dev libtomlplusplus-dev
  nlohmann-json3-dev libgloo-dev libssl-dev dataset-fashion-mnist
  fortunes  # English text for the language models (tandem data tokenize)
  python3-torch python3-numpy  # PyTorch loads tandem's checkpoints (tests/e2e/torch_eval.cpp)
  clang "libclang-rt-$(clang_major)-dev"  # libFuzzer and clang's sanitizer runtimes (tools/sanitize.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all ${#packages[@]} Debian packages present"
fi

nvcc_path=$(command -v nvcc || true)
[ -z "$nvcc_path" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_path=/usr/local/cuda/bin/nvcc
if [ -n "$nvcc_path" ]; then
  echo "setup: found nvcc at $nvcc_path ($("$nvcc_path" --version | grep -o 'release [0-9.]*')): CUDA kernels will be built"
else
  echo "setup: no nvcc found: building the CPU path only (TANDEM_CUDA=AUTO turns CUDA off)"
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: GPU present: $(nvidia-smi -L | head -n 1)"
else
  echo "setup: no GPU present: GPU tests will report SKIPPED"
fi
