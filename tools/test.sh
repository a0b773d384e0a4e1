#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every test.
# GPU tests report SKIPPED when no GPU is visible.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tools/setup.sh
bash tools/build.sh
cd build
ctest --output-on-failure --timeout 900 "$@"
