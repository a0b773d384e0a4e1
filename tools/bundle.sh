#!/usr/bin/env bash
# Copies the shared libraries that build/tandem and the test binaries need,
# and that a machine with only the CUDA toolkit may lack (fmt, OpenBLAS,
# gfortran, ...), into build/lib, where the binaries look first ($ORIGIN/lib,
# $ORIGIN/../lib). The C/C++ runtime and the large CUDA libraries (cuBLAS,
# cuDNN, NCCL) are left out: the GPU machine's CUDA toolkit provides them.
# Then build/ can be copied to a GPU machine and run there:
#   tools/gpu-check.sh build
set -euo pipefail
build=${1:-build}
mkdir -p "$build/lib"
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libcublas|libcudnn|libnccl|libcuda\.)'
for bin in "$build/tandem" "$build"/tests/tests_*; do
  [ -x "$bin" ] || continue
  ldd "$bin" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    if [[ ! "$name" =~ $skip ]] && [ ! -e "$build/lib/$name" ]; then
      cp -L "$path" "$build/lib/$name"
      echo "bundle: $name"
    fi
  done
done
du -sh "$build/lib"
