// Main for tests/gpu: skips visibly (exit 77, which ctest counts as skipped)
// when the machine has no NVIDIA GPU; with one present, any failure is a
// failure, a driver that cannot reach the GPU included.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "runtime/core/device.h"

int main(int argc, char* argv[]) {
  if (!tandem::cuda_built()) {
    std::printf("SKIPPED: GPU tests (this build has no CUDA; configure with -DTANDEM_CUDA=ON)\n");
    return 77;
  }
  if (tandem::cuda_device_count() == 0) {
    // The driver's device nodes exist only where there is an NVIDIA GPU;
    // CUDA_VISIBLE_DEVICES="" or -1 hides it on purpose.
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    bool hidden = visible && (std::string(visible).empty() || std::string(visible) == "-1");
    if (std::filesystem::exists("/dev/nvidiactl") && !hidden) {
      std::printf("FAILED: GPU tests: /dev/nvidiactl exists but CUDA reports no usable device (check the driver "
                  "with nvidia-smi, and CUDA_VISIBLE_DEVICES)\n");
      return 1;
    }
    std::printf("SKIPPED: GPU tests (no CUDA GPU visible)\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
