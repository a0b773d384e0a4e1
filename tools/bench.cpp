// tandem bench kernels [--device cpu|cuda] [--json OUT] [--compare BASELINE]
#include <fmt/format.h>

#include <fstream>
#include <memory>

#include "bench/bench_kernels.h"
#include "runtime/core/error.h"
#include "tools/commands.h"

namespace tandem::tools {

namespace {

struct BenchArgs {
  std::string device;  // empty: cuda when a GPU is visible, else cpu
  std::string json_out;
  std::string compare;
  double tolerance = 0.10;
};

void run_bench_kernels(const BenchArgs& args) {
  Device device = args.device.empty() ? (cuda_device_count() > 0 ? Device::cuda(0) : Device::cpu())
                                      : parse_device(args.device);
  if (device.is_cuda()) require_cuda("tandem bench kernels --device cuda");
  bench::KernelReport report = bench::run_kernel_bench(device);
  bench::print_table(report);
  if (!args.json_out.empty()) {
    std::ofstream out(args.json_out);
    out << bench::to_json(report).dump(2) << "\n";
    if (!out) throw UserError(fmt::format("cannot write {}", args.json_out));
  }
  if (!args.compare.empty()) {
    int regressions = bench::compare_with_baseline(report, args.compare, args.tolerance);
    if (regressions > 0) throw UserError(fmt::format("{} kernels regressed against {}", regressions, args.compare));
    fmt::print("no regressions against {}\n", args.compare);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  auto args = std::make_shared<BenchArgs>();
  CLI::App* kernels = bench->add_subcommand("kernels", "Time every kernel against the device's measured peaks");
  kernels->add_option("--device", args->device, "cpu, cuda or cuda:N (default: cuda when a GPU is visible)");
  kernels->add_option("--json", args->json_out, "Write the results as JSON");
  kernels->add_option("--compare", args->compare, "Flag kernels slower than in this --json baseline");
  kernels->add_option("--tolerance", args->tolerance, "Slowdown that counts as a regression (default 0.10)");
  kernels->callback([args] { run_bench_kernels(*args); });
}

}  // namespace tandem::tools
