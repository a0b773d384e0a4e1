// CPU residual add against float64 sums, including the in-place forms.
#include "kernels/residual.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

TEST_CASE("cpu residual_add matches float64 sums", "[kernels][residual]") {
  std::vector<int64_t> sizes = kOddSizes;
  sizes.push_back(0);
  for (int64_t n : sizes) {
    uint64_t seed = fresh_seed();
    INFO("n=" << n << " seed=" << seed);
    std::vector<float> a = random_vector(n, seed), b = random_vector(n, seed + 1, -3.f, 3.f);
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; i++) want[i] = static_cast<double>(a[i]) + b[i];

    Tensor ta = Tensor::from_vector(a, {n}), tb = Tensor::from_vector(b, {n});
    Tensor out = Tensor::from_vector(std::vector<float>(n, NAN), {n});  // poisoned
    kernels::residual_add(out, ta, tb, Stream());
    REQUIRE(all_finite(out.to_vector()));
    REQUIRE(rel_error(out.to_vector(), want) <= 1e-7);

    // In place into either operand.
    kernels::residual_add(ta, ta, tb, Stream());
    REQUIRE(rel_error(ta.to_vector(), want) <= 1e-7);
    Tensor ta2 = Tensor::from_vector(a, {n});
    kernels::residual_add(tb, ta2, tb, Stream());
    REQUIRE(rel_error(tb.to_vector(), want) <= 1e-7);
  }
}

TEST_CASE("cpu residual_add rejects mismatched shapes", "[kernels][residual]") {
  Tensor a = Tensor::zeros({4}, DType::f32, Device::cpu()), b = Tensor::zeros({5}, DType::f32, Device::cpu());
  REQUIRE_THROWS(kernels::residual_add(a, a, b, Stream()));
}
