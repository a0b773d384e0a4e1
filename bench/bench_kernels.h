// `tandem bench kernels`: times every kernel family on one device at the
// shapes GPT-2 124M and the MLP use, and compares each with the device's
// measured ceilings (a large device copy for bandwidth, a large matmul for
// arithmetic), so a row reads "how far from the floor is this kernel".
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/core/device.h"

namespace tandem::bench {

struct KernelResult {
  std::string kernel;  // "matmul_forward"
  std::string shape;   // "N=8192 C=768 OC=3072"
  std::string dtype;
  double ms = 0;        // median time per call
  double gbytes_per_s = 0;
  double tflops = 0;    // 0 for memory-bound kernels
  double pct_of_peak = 0;  // of bandwidth, or of matmul TFLOP/s for matmuls
};

struct KernelReport {
  std::string device;
  double peak_gbytes_per_s = 0;  // measured: device-to-device copy, read + write
  double peak_tflops = 0;        // measured: large matmul in the device's fast dtype
  std::vector<KernelResult> results;
};

KernelReport run_kernel_bench(Device device);
nlohmann::json to_json(const KernelReport& report);
void print_table(const KernelReport& report);
// Prints rows more than `tolerance` (0.1 = 10%) slower than in `baseline`
// (a JSON file written by --json); returns how many regressed.
int compare_with_baseline(const KernelReport& report, const std::string& baseline_path, double tolerance);

}  // namespace tandem::bench
