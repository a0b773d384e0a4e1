// Main for tests/gpu: skips visibly (exit 77, which ctest counts as skipped)
// when no CUDA GPU is usable; with one present, any failure is a failure.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "runtime/core/device.h"

int main(int argc, char* argv[]) {
  if (!tandem::cuda_built()) {
    std::printf("SKIPPED: GPU tests (this build has no CUDA; configure with -DTANDEM_CUDA=ON)\n");
    return 77;
  }
  if (tandem::cuda_device_count() == 0) {
    std::printf("SKIPPED: GPU tests (no CUDA GPU visible)\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
