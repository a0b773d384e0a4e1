#!/usr/bin/env bash
# Sanitizer and fuzz checks (CI runs this after tools/test.sh):
#   build-asan  ASan + UBSan (gcc, CPU only): the unit, kernels, runtime and
#               collectives tests. e2e and chaos are left out: they run the
#               CLI as subprocesses for minutes, which ASan would make several
#               times slower, and they exercise the same library code the
#               runtime and collectives tests already cover in-process.
#   build-tsan  ThreadSanitizer (gcc, CPU only): the collectives tests.
#               tests/tsan.supp holds the suppressions, each explained: only
#               frames of uninstrumented system libraries (libstdc++'s
#               exception_ptr today; Gloo's if it ever reports), never tandem code.
#   build-fuzz  libFuzzer targets (clang, ASan + UBSan), each run for
#               FUZZ_SECONDS (default 20) from tests/fuzz/corpus/<name>/;
#               skipped with a note when clang++ is missing.
# Usage: tools/sanitize.sh [asan] [tsan] [fuzz]   (default: all three)
# A failing check stops the script with its exit code; new inputs the
# fuzzers find stay in build-fuzz/corpus/, crashes in build-fuzz/crashes/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CCACHE_BASEDIR="$root"
export CCACHE_NOHASHDIR=1
jobs=$(nproc)
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(asan tsan fuzz)

fuzz_targets=(store_frames safetensors config manifest)
fuzz_seconds=${FUZZ_SECONDS:-20}
asan_tests=(unit kernels runtime collectives)

configure() {  # configure DIR COMPILER SANITIZE [extra cmake args...]
  local dir=$1 cxx=$2 sanitize=$3
  shift 3
  CXX=$cxx cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTANDEM_CUDA=OFF \
    -DTANDEM_SANITIZE="$sanitize" "$@" >/dev/null
}

run_asan() {
  echo "sanitize: ASan + UBSan: ${asan_tests[*]}"
  configure build-asan g++ address
  cmake --build build-asan -j"$jobs" --target "${asan_tests[@]/#/tests_}"
  (cd build-asan &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --output-on-failure --timeout 900 -R "^($(IFS='|'; echo "${asan_tests[*]}"))\$")
}

run_tsan() {
  echo "sanitize: TSan: collectives"
  configure build-tsan g++ thread
  cmake --build build-tsan -j"$jobs" --target tests_collectives
  (cd build-tsan &&
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/tsan.supp" \
    ctest --output-on-failure --timeout 900 -R '^collectives$')
}

run_fuzz() {
  if ! command -v clang++ >/dev/null 2>&1; then
    echo "sanitize: no clang++: fuzz targets skipped (tools/setup.sh installs clang)"
    return 0
  fi
  echo "sanitize: libFuzzer: ${fuzz_targets[*]}, ${fuzz_seconds} s each"
  configure build-fuzz clang++ address -DTANDEM_FUZZ=ON
  cmake --build build-fuzz -j"$jobs" --target fuzz_store_frames fuzz_safetensors fuzz_manifest fuzz_config
  mkdir -p build-fuzz/crashes
  for t in "${fuzz_targets[@]}"; do
    mkdir -p "build-fuzz/corpus/$t"
    # New inputs go to build-fuzz/corpus/<t>; the committed seeds are only read.
    local log="build-fuzz/fuzz_$t.log"
    if TANDEM_LOG_LEVEL=error ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      "build-fuzz/fuzz/fuzz_$t" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="build-fuzz/crashes/$t-" "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
      echo "sanitize: fuzz_$t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log"), no findings"
    else
      grep -v '^#[0-9]' "$log" | tail -n 60
      echo "sanitize: fuzz_$t found a problem (input saved under build-fuzz/crashes/, full log $log)"
      exit 1
    fi
  done
}

for phase in "${phases[@]}"; do
  case $phase in
    asan) run_asan ;;
    tsan) run_tsan ;;
    fuzz) run_fuzz ;;
    *) echo "sanitize: unknown phase '$phase' (asan, tsan, fuzz)" >&2; exit 2 ;;
  esac
done
echo "sanitize: all checks passed (${phases[*]})"
