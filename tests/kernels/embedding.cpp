// CPU embedding lookup: the forward copies rows exactly; the backward adds
// every row of dout to its table row (repeated indices included) on top of
// what dtable held, against float64 sums; bad indices throw before anything
// is written; and a float64 finite-difference check of the backward.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/embedding.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

Tensor int_tensor(const Ints& v) { return make_int_tensor(v, {static_cast<int64_t>(v.size())}); }

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("cpu embedding matches float64", "[kernels][embedding]") {
  for (Spread spread : {Spread::uniform, Spread::hot}) {
    for (int64_t N : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{33}}) {
      for (int64_t V : {int64_t{1}, int64_t{7}, int64_t{1000}}) {
        for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}}) {
          uint64_t seed = fresh_seed();
          INFO("N=" << N << " V=" << V << " C=" << C << " hot=" << (spread == Spread::hot) << " seed=" << seed);
          Vec table = random_vector(V * C, seed), dout = random_vector(N * C, seed + 1),
              dtable0 = random_vector(V * C, seed + 2);
          Ints idx = random_indices(N, V, spread, seed + 3);

          Tensor out = Tensor::from_vector(Vec(N * C, NAN), {N, C});
          kernels::embedding_forward(out, Tensor::from_vector(table, {V, C}), int_tensor(idx), Stream());
          Vec want(N * C);
          for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++) want[n * C + c] = table[idx[n] * C + c];
          REQUIRE(same_bits(out.to_vector(), want));

          // dtable starts non-zero: it must be added to.
          Tensor dtable = Tensor::from_vector(dtable0, {V, C});
          kernels::embedding_backward(dtable, Tensor::from_vector(dout, {N, C}), int_tensor(idx), Stream());
          // A chain of k fp32 additions is off the exact sum by at most
          // k * 2^-24 * (sum of |terms|) (recursive summation bound).
          std::vector<double> ref(dtable0.begin(), dtable0.end()), magnitude(V * C), terms(V * C, 1.0);
          for (int64_t i = 0; i < V * C; i++) magnitude[i] = std::fabs(dtable0[i]);
          for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++) {
              ref[idx[n] * C + c] += dout[n * C + c];
              magnitude[idx[n] * C + c] += std::fabs(dout[n * C + c]);
              terms[idx[n] * C + c] += 1;
            }
          Vec got = dtable.to_vector();
          REQUIRE(all_finite(got));
          double worst = 0;  // error over its bound, worst element; NaN stays NaN
          for (int64_t i = 0; i < V * C; i++)
            worst = std::max(worst, std::fabs(got[i] - ref[i]) / (terms[i] * 0x1p-24 * magnitude[i] + 1e-30));
          REQUIRE(worst <= 1.0);
        }
      }
    }
  }
}

TEST_CASE("cpu embedding takes (B, T) indices", "[kernels][embedding]") {
  const int64_t B = 2, T = 3, V = 5, C = 4;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec table = random_vector(V * C, seed);
  Ints idx = {4, 0, 4, 4, 1, 0};
  Tensor out = Tensor::empty({B, T, C}, DType::f32, Device::cpu());
  kernels::embedding_forward(out, Tensor::from_vector(table, {V, C}), make_int_tensor(idx, {B, T}), Stream());
  Vec got = out.to_vector();
  for (int64_t n = 0; n < B * T; n++)
    for (int64_t c = 0; c < C; c++) REQUIRE(got[n * C + c] == table[idx[n] * C + c]);
  // out with the wrong element count, table not 2-d, f32 indices: all refused.
  REQUIRE_THROWS(kernels::embedding_forward(Tensor::empty({B, T, C + 1}, DType::f32, Device::cpu()),
                                            Tensor::from_vector(table, {V, C}), make_int_tensor(idx, {B, T}), Stream()));
  REQUIRE_THROWS(kernels::embedding_forward(out, Tensor::from_vector(table, {V * C}), make_int_tensor(idx, {B, T}),
                                            Stream()));
  REQUIRE_THROWS(kernels::embedding_forward(out, Tensor::from_vector(table, {V, C}),
                                            Tensor::from_vector({4, 0, 4, 4, 1, 0}, {B, T}), Stream()));
}

TEST_CASE("cpu embedding rejects indices outside [0, V) before writing", "[kernels][embedding]") {
  const int64_t N = 3, V = 5, C = 2;
  Vec table = random_vector(V * C, fresh_seed()), dtable0 = random_vector(V * C, fresh_seed());
  for (int32_t bad : {-1, 5, 6, -100}) {
    INFO("bad=" << bad);
    Ints idx = {0, bad, 4};
    Tensor out = Tensor::from_vector(Vec(N * C, NAN), {N, C});
    REQUIRE_THROWS(kernels::embedding_forward(out, Tensor::from_vector(table, {V, C}), int_tensor(idx), Stream()));
    Tensor dtable = Tensor::from_vector(dtable0, {V, C});
    REQUIRE_THROWS(kernels::embedding_backward(dtable, Tensor::from_vector(Vec(N * C, 1.f), {N, C}),
                                               int_tensor(idx), Stream()));
    REQUIRE(same_bits(dtable.to_vector(), dtable0));
  }
}

TEST_CASE("cpu embedding backward matches float64 finite differences", "[kernels][embedding]") {
  const int64_t N = 9, V = 4, C = 3;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec table = random_vector(V * C, seed), R = random_vector(N * C, seed + 1);
  Ints idx = random_indices(N, V, Spread::hot, seed + 2);
  // sum(out * R) in float64 over the f32 forward.
  auto objective = [&]() {
    Tensor out = Tensor::empty({N, C}, DType::f32, Device::cpu());
    kernels::embedding_forward(out, Tensor::from_vector(table, {V, C}), int_tensor(idx), Stream());
    double s = 0;
    Vec o = out.to_vector();
    for (int64_t i = 0; i < N * C; i++) s += static_cast<double>(o[i]) * R[i];
    return s;
  };
  Tensor dtable = Tensor::zeros({V, C}, DType::f32, Device::cpu());
  kernels::embedding_backward(dtable, Tensor::from_vector(R, {N, C}), int_tensor(idx), Stream());
  std::vector<double> numeric = numerical_gradient(table, objective);
  REQUIRE(rel_error(dtable.to_vector(), numeric) <= 1e-2);
}
