// CPU sum and norm_squared against float64 sums.
#include <cmath>

#include "kernels/reduce.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

enum class Reduction { sum, norm_squared };

float run(Reduction r, const Tensor& x) {
  Tensor out = Tensor::from_vector({NAN}, {1});  // poisoned
  // No scratch on the CPU.
  if (r == Reduction::sum) kernels::sum(out, x, Tensor(), Stream());
  else kernels::norm_squared(out, x, Tensor(), Stream());
  return out.to_vector()[0];
}

}  // namespace

TEST_CASE("cpu sum and norm_squared match float64", "[kernels][reduce]") {
  std::vector<int64_t> sizes = kOddSizes;
  sizes.push_back(0);
  sizes.push_back(100003);
  for (int64_t n : sizes) {
    uint64_t seed = fresh_seed();
    INFO("n=" << n << " seed=" << seed);
    std::vector<float> x = random_vector(n, seed, -2.f, 3.f);
    double sum = 0, sum_abs = 0, sum_sq = 0;
    for (float v : x) {
      sum += v;
      sum_abs += std::fabs(v);
      sum_sq += static_cast<double>(v) * v;
    }
    Tensor t = Tensor::from_vector(x, {n});
    float got_sum = run(Reduction::sum, t), got_sq = run(Reduction::norm_squared, t);
    // The result is the double sum rounded once to f32.
    REQUIRE(std::fabs(got_sum - sum) <= 1e-7 * sum_abs);
    REQUIRE(std::fabs(got_sq - sum_sq) <= 1e-7 * sum_sq);
    if (n == 0) REQUIRE((got_sum == 0.f && got_sq == 0.f));
  }
}

TEST_CASE("cpu reductions take any shape and check out", "[kernels][reduce]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::vector<float> x = random_vector(3 * 11, seed);
  double want = 0;
  for (float v : x) want += v;
  float got = run(Reduction::sum, Tensor::from_vector(x, {3, 11}));
  REQUIRE(std::fabs(got - want) <= 1e-6);
  Tensor two = Tensor::zeros({2}, DType::f32, Device::cpu());
  REQUIRE_THROWS(kernels::sum(two, Tensor::from_vector(x, {33}), Tensor(), Stream()));
}
