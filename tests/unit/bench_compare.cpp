// `tandem bench kernels --compare`: a row slower than its baseline by more
// than the tolerance is a regression; faster or unmatched rows are not.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "bench/bench_kernels.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

TEST_CASE("bench --compare flags only rows slower than the tolerance", "[bench]") {
  bench::KernelReport base;
  base.device = "cuda:0";
  base.results = {{"gelu_forward", "n=100", "bf16", 1.0}, {"matmul_forward", "N=8", "bf16", 2.0},
                  {"cast", "n=5", "f32", 1.0}};
  std::string path = (std::filesystem::temp_directory_path() / fmt::format("tandem_base_{}.json", fresh_seed())).string();
  std::ofstream(path) << bench::to_json(base).dump();

  bench::KernelReport now = base;
  now.results[0].ms = 1.05;  // 5% slower: within 10%
  now.results[1].ms = 2.5;   // 25% slower: a regression
  now.results[2].ms = 0.5;   // faster
  now.results.push_back({"new_kernel", "n=1", "f32", 9.0});  // no baseline
  REQUIRE(bench::compare_with_baseline(now, path, 0.10) == 1);
  REQUIRE(bench::compare_with_baseline(now, path, 0.30) == 0);
  std::ofstream(path) << "{\"not\": \"a baseline\"}";
  REQUIRE_THROWS_AS(bench::compare_with_baseline(now, path, 0.1), UserError);
  std::filesystem::remove(path);
}
