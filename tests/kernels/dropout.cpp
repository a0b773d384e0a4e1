// CPU dropout against a float64 formula over the Philox mask; the keep rate,
// determinism in (seed, offset), counter offsets, and backward.
#include <cmath>

#include "kernels/dropout.h"
#include "runtime/core/philox.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using kernels::DropoutOptions;

namespace {

std::vector<float> run_forward(const std::vector<float>& x, const DropoutOptions& opts) {
  int64_t n = static_cast<int64_t>(x.size());
  Tensor out = Tensor::from_vector(std::vector<float>(n, NAN), {n});  // poisoned
  kernels::dropout_forward(out, Tensor::from_vector(x, {n}), opts, Stream());
  return out.to_vector();
}

}  // namespace

TEST_CASE("cpu dropout matches the float64 formula", "[kernels][dropout]") {
  std::vector<int64_t> sizes = kOddSizes;
  sizes.push_back(0);
  for (int64_t n : sizes) {
    for (float p : {0.1f, 0.5f, 0.9f}) {
      uint64_t seed = fresh_seed();
      DropoutOptions opts{.p = p, .seed = seed, .offset = seed % 1000};  // offsets not a multiple of 4 too
      INFO("n=" << n << " p=" << p << " seed=" << seed << " offset=" << opts.offset);
      std::vector<float> x = random_vector(n, seed, 0.5f, 1.5f);  // nonzero, so zeros are the mask
      std::vector<double> want(n);
      std::vector<bool> keep(n);
      for (int64_t i = 0; i < n; i++) {
        keep[i] = philox_uniform(seed, opts.offset + i) >= p;
        want[i] = keep[i] ? x[i] / (1.0 - p) : 0.0;
      }
      std::vector<float> y = run_forward(x, opts);
      REQUIRE(all_finite(y));
      REQUIRE(rel_error(y, want) <= 1e-6);
      for (int64_t i = 0; i < n; i++) REQUIRE((y[i] != 0.f) == keep[i]);

      // Backward: the same mask and scale; dinp is overwritten, here in place over dout.
      std::vector<float> g = random_vector(n, seed + 1, 0.5f, 1.5f);
      std::vector<double> want_dx(n);
      for (int64_t i = 0; i < n; i++) want_dx[i] = keep[i] ? g[i] / (1.0 - p) : 0.0;
      Tensor dout = Tensor::from_vector(g, {n});
      kernels::dropout_backward(dout, dout, opts, Stream());
      REQUIRE(rel_error(dout.to_vector(), want_dx) <= 1e-6);
    }
  }
}

TEST_CASE("cpu dropout keeps about 1 - p of a large input", "[kernels][dropout]") {
  const int64_t n = 1 << 20;
  std::vector<float> ones(n, 1.f);
  for (float p : {0.01f, 0.1f, 0.5f, 0.9f}) {
    uint64_t seed = fresh_seed();
    INFO("p=" << p << " seed=" << seed);
    std::vector<float> y = run_forward(ones, {.p = p, .seed = seed, .offset = 0});
    int64_t kept = 0;
    double total = 0;
    for (float v : y) {
      kept += v != 0.f;
      total += v;
    }
    double frac = static_cast<double>(kept) / n, sigma = std::sqrt(p * (1.0 - p) / n);
    REQUIRE(std::fabs(frac - (1.0 - p)) <= 6 * sigma);
    // Inverted dropout keeps the mean: E[y] = 1.
    REQUIRE(std::fabs(total / n - 1.0) <= 6 * sigma / (1.0 - p));
  }
}

TEST_CASE("cpu dropout masks are a function of (seed, offset + i)", "[kernels][dropout]") {
  const int64_t n = 1031;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::vector<float> ones(n, 1.f);
  DropoutOptions opts{.p = 0.5f, .seed = seed, .offset = 12345};
  std::vector<float> a = run_forward(ones, opts), b = run_forward(ones, opts);
  REQUIRE(a == b);

  DropoutOptions shifted = opts;
  shifted.offset += n;
  REQUIRE(run_forward(ones, shifted) != a);
  DropoutOptions reseeded = opts;
  reseeded.seed += 1;
  REQUIRE(run_forward(ones, reseeded) != a);

  // Dropping the tail [k, n) alone with offset + k gives the tail of the
  // whole mask: counters, not call boundaries, decide (k odd on purpose).
  for (int64_t k : {1, 3, 6, 517}) {
    DropoutOptions tail = opts;
    tail.offset += k;
    std::vector<float> t = run_forward(std::vector<float>(n - k, 1.f), tail);
    REQUIRE(t == std::vector<float>(a.begin() + k, a.end()));
  }
}

TEST_CASE("cpu dropout with p = 0 copies and checks p", "[kernels][dropout]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::vector<float> x = random_vector(33, seed);
  REQUIRE(run_forward(x, {.p = 0.f, .seed = seed, .offset = 0}) == x);
  Tensor t = Tensor::from_vector(x, {33});
  kernels::dropout_forward(t, t, {.p = 0.f, .seed = seed, .offset = 0}, Stream());  // in place
  REQUIRE(t.to_vector() == x);
  for (float bad : {1.f, 1.5f, -0.1f, NAN})
    REQUIRE_THROWS(kernels::dropout_forward(t, t, {.p = bad, .seed = seed, .offset = 0}, Stream()));
}
