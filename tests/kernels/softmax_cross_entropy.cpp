// CPU fused softmax + cross-entropy against float64 formulas: ignored rows,
// huge logits, masked (-inf) logits, in-place dlogits, bad targets, and a
// float64 finite-difference check of the backward.
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/softmax_cross_entropy.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

struct Reference {
  std::vector<double> losses, dlogits;
};

Reference softmax_cross_entropy64(const Vec& logits, const Ints& targets, double dloss, int64_t N, int64_t V) {
  Reference r{std::vector<double>(N, 0.0), std::vector<double>(N * V, 0.0)};
  for (int64_t n = 0; n < N; n++) {
    int32_t t = targets[n];
    if (t < 0) continue;
    const float* x = &logits[n * V];
    double m = -INFINITY, sum = 0;
    for (int64_t i = 0; i < V; i++) m = std::max(m, static_cast<double>(x[i]));
    for (int64_t i = 0; i < V; i++) sum += std::exp(x[i] - m);
    r.losses[n] = m + std::log(sum) - x[t];
    for (int64_t i = 0; i < V; i++) r.dlogits[n * V + i] = (std::exp(x[i] - m) / sum - (i == t)) * dloss;
  }
  return r;
}

Tensor int_tensor(const Ints& v) { return make_int_tensor(v, {static_cast<int64_t>(v.size())}); }

Vec run_forward(const Vec& logits, const Ints& targets, int64_t N, int64_t V) {
  Tensor losses = Tensor::from_vector(Vec(N, NAN), {N});  // poisoned
  kernels::softmax_cross_entropy_forward(losses, Tensor::from_vector(logits, {N, V}), int_tensor(targets), Stream());
  return losses.to_vector();
}

Vec run_backward(const Vec& logits, const Ints& targets, float dloss, int64_t N, int64_t V) {
  Tensor dlogits = Tensor::from_vector(Vec(N * V, NAN), {N, V});  // poisoned: must be overwritten
  kernels::softmax_cross_entropy_backward(dlogits, Tensor::from_vector(logits, {N, V}), int_tensor(targets), dloss,
                                          Stream());
  return dlogits.to_vector();
}

// The ignored rows come out exactly 0, loss and gradient.
bool ignored_rows_zero(const Vec& losses, const Vec& dlogits, const Ints& targets, int64_t V) {
  for (size_t n = 0; n < targets.size(); n++) {
    if (targets[n] >= 0) continue;
    if (losses[n] != 0.f) return false;
    for (int64_t i = 0; i < V; i++)
      if (dlogits[n * V + i] != 0.f) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("cpu softmax cross-entropy matches float64", "[kernels][softmax_cross_entropy]") {
  for (int64_t N : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{33}}) {
    for (int64_t V : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}}) {
      uint64_t seed = fresh_seed();
      INFO("N=" << N << " V=" << V << " seed=" << seed);
      Vec logits = random_vector(N * V, seed, -5.f, 5.f);
      Ints targets = random_targets(N, V, seed + 1);
      float dloss = mean_dloss(targets);
      Reference ref = softmax_cross_entropy64(logits, targets, dloss, N, V);

      Vec losses = run_forward(logits, targets, N, V), dlogits = run_backward(logits, targets, dloss, N, V);
      REQUIRE(all_finite(losses));
      REQUIRE(all_finite(dlogits));
      REQUIRE(rel_error(losses, ref.losses) <= 1e-6);
      REQUIRE(rel_error(dlogits, ref.dlogits) <= 1e-6);
      REQUIRE(ignored_rows_zero(losses, dlogits, targets, V));
    }
  }
}

TEST_CASE("cpu softmax cross-entropy stays finite for huge and masked logits", "[kernels][softmax_cross_entropy]") {
  for (int64_t V : {int64_t{7}, int64_t{1000}}) {
    const int64_t N = 33;
    uint64_t seed = fresh_seed();
    INFO("V=" << V << " seed=" << seed);
    Vec logits = random_vector(N * V, seed, -1000.f, 1000.f);
    Ints targets = random_targets(N, V, seed + 1);
    // Row 0: all logits equal and huge (loss log V). Row 1: the target is the
    // smallest logit (loss ~ 2000). Row 2: masked logits (-inf) beside the
    // target, which must add nothing.
    for (int64_t i = 0; i < V; i++) logits[i] = 1000.f;
    targets[0] = static_cast<int32_t>(V - 1);
    logits[1 * V + 0] = -1000.f, logits[1 * V + 1] = 1000.f, targets[1] = 0;
    for (int64_t i = 0; i < V; i += 2) logits[2 * V + i] = -INFINITY;
    targets[2] = 1;
    float dloss = mean_dloss(targets);
    Reference ref = softmax_cross_entropy64(logits, targets, dloss, N, V);

    Vec losses = run_forward(logits, targets, N, V), dlogits = run_backward(logits, targets, dloss, N, V);
    REQUIRE(all_finite(losses));
    REQUIRE(all_finite(dlogits));
    REQUIRE(rel_error(losses, ref.losses) <= 1e-6);
    REQUIRE(rel_error(dlogits, ref.dlogits) <= 1e-6);
    REQUIRE(std::fabs(losses[0] - std::log(static_cast<double>(V))) <= 1e-6);
    REQUIRE(ignored_rows_zero(losses, dlogits, targets, V));
  }
}

TEST_CASE("cpu softmax cross-entropy backward may write over the logits", "[kernels][softmax_cross_entropy]") {
  const int64_t N = 7, V = 33;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec logits = random_vector(N * V, seed, -5.f, 5.f);
  Ints targets = random_targets(N, V, seed + 1);
  Vec want = run_backward(logits, targets, 0.5f, N, V);
  Tensor inplace = Tensor::from_vector(logits, {N, V});
  kernels::softmax_cross_entropy_backward(inplace, inplace, int_tensor(targets), 0.5f, Stream());
  Vec got = inplace.to_vector();
  REQUIRE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
}

TEST_CASE("cpu softmax cross-entropy rejects targets >= V", "[kernels][softmax_cross_entropy]") {
  const int64_t N = 3, V = 7;
  Vec logits = random_vector(N * V, fresh_seed());
  for (int32_t bad : {7, 8, 1 << 30}) {
    Ints targets = {1, bad, -1};
    Tensor losses = Tensor::from_vector(Vec(N, NAN), {N});
    Tensor dlogits = Tensor::from_vector(Vec(N * V, NAN), {N, V});
    REQUIRE_THROWS(kernels::softmax_cross_entropy_forward(losses, Tensor::from_vector(logits, {N, V}),
                                                          int_tensor(targets), Stream()));
    REQUIRE_THROWS(kernels::softmax_cross_entropy_backward(dlogits, Tensor::from_vector(logits, {N, V}),
                                                           int_tensor(targets), 1.f, Stream()));
    REQUIRE(std::isnan(losses.to_vector()[0]));  // checked before anything was written
  }
  // Shapes and dtypes are checked too.
  Tensor losses = Tensor::empty({N}, DType::f32, Device::cpu());
  REQUIRE_THROWS(kernels::softmax_cross_entropy_forward(losses, Tensor::from_vector(logits, {N, V}),
                                                        int_tensor({0, 1}), Stream()));
  REQUIRE_THROWS(kernels::softmax_cross_entropy_forward(losses, Tensor::from_vector(logits, {N, V}),
                                                        Tensor::from_vector({0, 1, 2}, {N}), Stream()));
}

TEST_CASE("cpu softmax cross-entropy backward matches float64 finite differences",
          "[kernels][softmax_cross_entropy]") {
  for (int64_t V : {int64_t{1}, int64_t{7}, int64_t{33}}) {
    const int64_t N = 4;
    uint64_t seed = fresh_seed();
    INFO("V=" << V << " seed=" << seed);
    Vec logits = random_vector(N * V, seed, -3.f, 3.f);
    Ints targets = random_targets(N, V, seed + 1);
    targets[N - 1] = -1;  // always one ignored row
    const float dloss = 0.37f;
    // L = dloss * sum(losses): the scalar whose gradient the backward computes.
    auto objective = [&]() {
      double s = 0;
      for (float l : run_forward(logits, targets, N, V)) s += l;
      return dloss * s;
    };
    Vec analytic = run_backward(logits, targets, dloss, N, V);
    std::vector<double> numeric = numerical_gradient(logits, objective);
    REQUIRE(rel_error(analytic, numeric) <= 1e-2);
  }
}
