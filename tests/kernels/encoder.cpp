// CPU token + position encoder: the forward against float64 sums; the
// backward adds to what dwte and dwpe held (repeated tokens included) against
// float64 sums, and its dwte is the embedding backward bit for bit; bad
// tokens throw before anything is written; T > maxT and bad shapes are
// refused; and a float64 finite-difference check of the backward.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/encoder.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

struct Shape5 {
  int64_t B, T, maxT, V, C;
};

// B = 0, T = 1, V = 1, C = 1, maxT > T and maxT == T, GPT-2-like strips.
const std::vector<Shape5> kShapes = {
    {3, 5, 8, 11, 7}, {0, 5, 8, 11, 7}, {1, 1, 1, 1, 1},      {2, 7, 7, 1, 33},
    {4, 33, 40, 1000, 33}, {5, 3, 1024, 7, 1000}, {1, 17, 17, 50, 129},
};

// A chain of k fp32 additions is off the exact sum by at most
// k * 2^-24 * (sum of |terms|) (recursive summation bound). Returns the worst
// error over its bound; NaN stays NaN.
double worst_over_bound(const Vec& got, const std::vector<double>& ref, const std::vector<double>& magnitude,
                        const std::vector<double>& terms) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); i++)
    worst = std::max(worst, std::fabs(got[i] - ref[i]) / (terms[i] * 0x1p-24 * magnitude[i] + 1e-30));
  return worst;
}

}  // namespace

TEST_CASE("cpu encoder matches float64", "[kernels][encoder]") {
  for (Spread spread : {Spread::uniform, Spread::hot}) {
    for (const Shape5& s : kShapes) {
      const int64_t B = s.B, T = s.T, maxT = s.maxT, V = s.V, C = s.C, N = B * T;
      uint64_t seed = fresh_seed();
      INFO("B=" << B << " T=" << T << " maxT=" << maxT << " V=" << V << " C=" << C
                << " hot=" << (spread == Spread::hot) << " seed=" << seed);
      Vec wte = random_vector(V * C, seed), wpe = random_vector(maxT * C, seed + 1),
          dout = random_vector(N * C, seed + 2), dwte0 = random_vector(V * C, seed + 3),
          dwpe0 = random_vector(maxT * C, seed + 4);
      Ints tok = random_indices(N, V, spread, seed + 5);
      Tensor tokens = make_int_tensor(tok, {B, T});

      // Forward into a poisoned out: one fp32 addition per element, so
      // within half an ulp of the float64 sum.
      Tensor out = Tensor::from_vector(Vec(N * C, NAN), {B, T, C});
      kernels::encoder_forward(out, tokens, Tensor::from_vector(wte, {V, C}), Tensor::from_vector(wpe, {maxT, C}),
                               Stream());
      Vec got = out.to_vector();
      REQUIRE(all_finite(got));
      double worst = 0;
      for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
          double want = static_cast<double>(wte[tok[n] * C + c]) + wpe[(n % T) * C + c];
          worst = std::max(worst, std::fabs(got[n * C + c] - want) / (0x1p-24 * std::fabs(want) + 1e-30));
        }
      REQUIRE(worst <= 1.0);

      // Backward: dwte and dwpe start non-zero, they must be added to.
      Tensor dwte = Tensor::from_vector(dwte0, {V, C}), dwpe = Tensor::from_vector(dwpe0, {maxT, C});
      Tensor tdout = Tensor::from_vector(dout, {B, T, C});
      kernels::encoder_backward(dwte, dwpe, tdout, tokens, Stream());
      std::vector<double> ref_te(dwte0.begin(), dwte0.end()), mag_te(V * C), terms_te(V * C, 1.0);
      std::vector<double> ref_pe(dwpe0.begin(), dwpe0.end()), mag_pe(maxT * C), terms_pe(maxT * C, 1.0);
      for (int64_t i = 0; i < V * C; i++) mag_te[i] = std::fabs(dwte0[i]);
      for (int64_t i = 0; i < maxT * C; i++) mag_pe[i] = std::fabs(dwpe0[i]);
      for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
          double d = dout[n * C + c];
          int64_t te = tok[n] * C + c, pe = (n % T) * C + c;
          ref_te[te] += d, mag_te[te] += std::fabs(d), terms_te[te] += 1;
          ref_pe[pe] += d, mag_pe[pe] += std::fabs(d), terms_pe[pe] += 1;
        }
      Vec got_te = dwte.to_vector(), got_pe = dwpe.to_vector();
      REQUIRE(all_finite(got_te));
      REQUIRE(all_finite(got_pe));
      REQUIRE(worst_over_bound(got_te, ref_te, mag_te, terms_te) <= 1.0);
      REQUIRE(worst_over_bound(got_pe, ref_pe, mag_pe, terms_pe) <= 1.0);
      // Positions T..maxT-1 are not used: their rows stay as they were.
      REQUIRE(same_bits(Vec(got_pe.begin() + T * C, got_pe.end()), Vec(dwpe0.begin() + T * C, dwpe0.end())));

      // dwte is the embedding backward over the B * T rows, bit for bit (Note
      // [Deterministic encoder backward]).
      Tensor dtable = Tensor::from_vector(dwte0, {V, C});
      kernels::embedding_backward(dtable, tdout, tokens, Stream());
      REQUIRE(same_bits(got_te, dtable.to_vector()));
    }
  }
}

TEST_CASE("cpu encoder refuses T > maxT and bad shapes", "[kernels][encoder]") {
  const int64_t B = 3, T = 5, V = 11, C = 7;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Ints tok = random_indices(B * T, V, Spread::uniform, seed);
  Tensor tokens = make_int_tensor(tok, {B, T});
  Tensor wte = random_tensor({V, C}, seed + 1), wpe = random_tensor({T, C}, seed + 2);
  Tensor out = Tensor::empty({B, T, C}, DType::f32, Device::cpu());
  Tensor dout = random_tensor({B, T, C}, seed + 3);
  Tensor dwte = Tensor::zeros({V, C}, DType::f32, Device::cpu());

  // maxT == T is fine; one position fewer is a user error, with a message
  // that names both numbers.
  kernels::encoder_forward(out, tokens, wte, wpe, Stream());
  Tensor short_wpe = random_tensor({T - 1, C}, seed + 4);
  REQUIRE_THROWS_WITH(kernels::encoder_forward(out, tokens, wte, short_wpe, Stream()),
                      Catch::Contains("T = 5") && Catch::Contains("4 positions"));
  Tensor short_dwpe = Tensor::zeros({T - 1, C}, DType::f32, Device::cpu());
  REQUIRE_THROWS_WITH(kernels::encoder_backward(dwte, short_dwpe, dout, tokens, Stream()),
                      Catch::Contains("T = 5") && Catch::Contains("4 positions"));
  // Nothing was written by the refused backward.
  REQUIRE(same_bits(dwte.to_vector(), Vec(V * C, 0.f)));
  REQUIRE(same_bits(short_dwpe.to_vector(), Vec((T - 1) * C, 0.f)));

  // Tokens not (B, T); wpe with another C; out with the wrong element count;
  // f32 tokens; wte not 2-d: all refused.
  REQUIRE_THROWS(kernels::encoder_forward(out, make_int_tensor(tok, {B * T}), wte, wpe, Stream()));
  REQUIRE_THROWS(kernels::encoder_forward(out, tokens, wte, random_tensor({T, C + 1}, seed), Stream()));
  REQUIRE_THROWS(kernels::encoder_forward(Tensor::empty({B, T, C + 1}, DType::f32, Device::cpu()), tokens, wte, wpe,
                                          Stream()));
  REQUIRE_THROWS(kernels::encoder_forward(out, Tensor::from_vector(Vec(B * T, 0.f), {B, T}), wte, wpe, Stream()));
  REQUIRE_THROWS(kernels::encoder_forward(out, tokens, wte.reshape({V * C}), wpe, Stream()));
  REQUIRE_THROWS(kernels::encoder_backward(dwte, Tensor::zeros({T, C + 1}, DType::f32, Device::cpu()), dout, tokens,
                                           Stream()));
}

TEST_CASE("cpu encoder rejects tokens outside [0, V) before writing", "[kernels][encoder]") {
  const int64_t B = 2, T = 3, maxT = 4, V = 5, C = 2;
  Vec wte = random_vector(V * C, fresh_seed()), wpe = random_vector(maxT * C, fresh_seed()),
      dwte0 = random_vector(V * C, fresh_seed()), dwpe0 = random_vector(maxT * C, fresh_seed());
  for (int32_t bad : {-1, 5, 6, -100}) {
    INFO("bad=" << bad);
    // The bad token last, so a loop that wrote as it checked would have
    // written every other row first.
    Ints tok = {0, 4, 4, 1, 2, bad};
    Tensor tokens = make_int_tensor(tok, {B, T});
    Vec poison(B * T * C, NAN);
    Tensor out = Tensor::from_vector(poison, {B, T, C});
    REQUIRE_THROWS_WITH(kernels::encoder_forward(out, tokens, Tensor::from_vector(wte, {V, C}),
                                                 Tensor::from_vector(wpe, {maxT, C}), Stream()),
                        Catch::Contains("(b, t) = (1, 2)"));
    REQUIRE(same_bits(out.to_vector(), poison));
    Tensor dwte = Tensor::from_vector(dwte0, {V, C}), dwpe = Tensor::from_vector(dwpe0, {maxT, C});
    REQUIRE_THROWS(kernels::encoder_backward(dwte, dwpe, Tensor::from_vector(Vec(B * T * C, 1.f), {B, T, C}), tokens,
                                             Stream()));
    REQUIRE(same_bits(dwte.to_vector(), dwte0));
    REQUIRE(same_bits(dwpe.to_vector(), dwpe0));
  }
}

TEST_CASE("cpu encoder backward matches float64 finite differences", "[kernels][encoder]") {
  const int64_t B = 3, T = 5, maxT = 8, V = 11, C = 7;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec wte = random_vector(V * C, seed), wpe = random_vector(maxT * C, seed + 1), R = random_vector(B * T * C, seed + 2);
  Ints tok = random_indices(B * T, V, Spread::hot, seed + 3);
  Tensor tokens = make_int_tensor(tok, {B, T});
  // sum(out * R) in float64 over the f32 forward.
  auto objective = [&]() {
    Tensor out = Tensor::empty({B, T, C}, DType::f32, Device::cpu());
    kernels::encoder_forward(out, tokens, Tensor::from_vector(wte, {V, C}), Tensor::from_vector(wpe, {maxT, C}),
                             Stream());
    double s = 0;
    Vec o = out.to_vector();
    for (int64_t i = 0; i < B * T * C; i++) s += static_cast<double>(o[i]) * R[i];
    return s;
  };
  Tensor dwte = Tensor::zeros({V, C}, DType::f32, Device::cpu());
  Tensor dwpe = Tensor::zeros({maxT, C}, DType::f32, Device::cpu());
  kernels::encoder_backward(dwte, dwpe, Tensor::from_vector(R, {B, T, C}), tokens, Stream());
  REQUIRE(rel_error(dwte.to_vector(), numerical_gradient(wte, objective)) <= 1e-2);
  REQUIRE(rel_error(dwpe.to_vector(), numerical_gradient(wpe, objective)) <= 1e-2);
}
