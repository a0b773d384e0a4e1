// CPU causal attention against float64 formulas that materialize p; the
// causal mask; a float64 finite-difference check of the backward; and the
// argument checks of kernels/attention.h.
#include <cmath>
#include <cstring>

#include "kernels/attention.h"
#include "support/attention_dims.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;

using Dims = AttentionDims;

// B=1, T=1 and sizes that are odd in every dimension.
const std::vector<Dims> kCases = {{1, 1, 1, 1}, {1, 1, 2, 4}, {2, 7, 3, 5}, {3, 17, 2, 8}, {2, 33, 2, 16},
                                  {1, 5, 1, 33}};

struct Reference {
  std::vector<double> out, lse, dqkv;
};

// Causal attention in float64 from the formulas of kernels/attention.h, with
// the (T, T) matrix p written out per (b, h). Works on doubles so that the
// finite-difference check can call it too.
Reference attention64(const std::vector<double>& qkv, const std::vector<double>& dout, const Dims& d) {
  const int64_t T = d.T, HS = d.HS, C = d.C();
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  Reference r{std::vector<double>(d.B * T * C, 0.0), std::vector<double>(d.B * d.NH * T, 0.0),
              std::vector<double>(d.B * T * 3 * C, 0.0)};
  auto q = [&](int64_t b, int64_t t, int64_t h) { return &qkv[(b * T + t) * 3 * C + h * HS]; };
  auto at = [&](int64_t b, int64_t t, int64_t h) { return (b * T + t) * C + h * HS; };  // in out, dout
  auto dot = [&](const double* x, const double* y) {
    double s = 0;
    for (int64_t c = 0; c < HS; c++) s += x[c] * y[c];
    return s;
  };
  std::vector<double> p(T * T), dp(T * T);
  for (int64_t b = 0; b < d.B; b++) {
    for (int64_t h = 0; h < d.NH; h++) {
      std::fill(p.begin(), p.end(), 0.0);
      for (int64_t i = 0; i < T; i++) {
        double m = -INFINITY, sum = 0;
        for (int64_t j = 0; j <= i; j++) m = std::max(m, scale * dot(q(b, i, h), q(b, j, h) + C));
        for (int64_t j = 0; j <= i; j++) sum += std::exp(scale * dot(q(b, i, h), q(b, j, h) + C) - m);
        double lse = m + std::log(sum);
        r.lse[(b * d.NH + h) * T + i] = lse;
        for (int64_t j = 0; j <= i; j++) p[i * T + j] = std::exp(scale * dot(q(b, i, h), q(b, j, h) + C) - lse);
        for (int64_t j = 0; j <= i; j++)
          for (int64_t c = 0; c < HS; c++) r.out[at(b, i, h) + c] += p[i * T + j] * q(b, j, h)[2 * C + c];
      }
      if (dout.empty()) continue;
      // ds = p * (dp - rowsum(p * dp)), with rowsum(p * dp) = dout . out.
      for (int64_t i = 0; i < T; i++) {
        double D = 0;
        for (int64_t j = 0; j <= i; j++) {
          dp[i * T + j] = dot(&dout[at(b, i, h)], q(b, j, h) + 2 * C);
          D += p[i * T + j] * dp[i * T + j];
        }
        for (int64_t j = 0; j <= i; j++) {
          double ds = p[i * T + j] * (dp[i * T + j] - D);
          double* dq = &r.dqkv[(b * T + i) * 3 * C + h * HS];
          double* dk = &r.dqkv[(b * T + j) * 3 * C + C + h * HS];
          double* dv = dk + C;
          for (int64_t c = 0; c < HS; c++) {
            dq[c] += scale * ds * q(b, j, h)[C + c];
            dk[c] += scale * ds * q(b, i, h)[c];
            dv[c] += p[i * T + j] * dout[at(b, i, h) + c];
          }
        }
      }
    }
  }
  return r;
}

std::vector<double> widen(const Vec& v) { return {v.begin(), v.end()}; }

struct Result {
  Vec out, lse, dqkv;
};

// The CPU kernels through the Tensor API; dqkv starts as NaN (it must be
// overwritten).
Result run_cpu(const Vec& qkv, const Vec& dout, const Dims& d) {
  Tensor tqkv = Tensor::from_vector(qkv, d.qkv());
  Tensor out = Tensor::empty(d.out(), DType::f32, Device::cpu());
  Tensor lse = Tensor::empty(d.lse(), DType::f32, Device::cpu());
  kernels::attention_forward(out, lse, tqkv, d.NH, Stream());
  Tensor dqkv = Tensor::from_vector(Vec(qkv.size(), NAN), d.qkv());
  kernels::attention_backward(dqkv, Tensor::from_vector(dout, d.out()), tqkv, out, lse, d.NH, Stream());
  return {out.to_vector(), lse.to_vector(), dqkv.to_vector()};
}

bool same_bits(const float* a, const float* b, int64_t n) { return n == 0 || std::memcmp(a, b, n * sizeof(float)) == 0; }

}  // namespace

TEST_CASE("cpu attention matches float64", "[kernels][attention]") {
  // range 8 with HS = 8 gives scores in the hundreds: exp() overflows
  // unless the max is taken out, and p is nearly one-hot.
  for (float range : {1.f, 8.f}) {
    for (const Dims& d : kCases) {
      uint64_t seed = fresh_seed();
      INFO("B=" << d.B << " T=" << d.T << " NH=" << d.NH << " HS=" << d.HS << " range=" << range << " seed=" << seed);
      Vec qkv = random_vector(shape_numel(d.qkv()), seed, -range, range);
      Vec dout = random_vector(shape_numel(d.out()), seed + 1);
      Reference ref = attention64(widen(qkv), widen(dout), d);
      Result got = run_cpu(qkv, dout, d);
      REQUIRE(all_finite(got.out));
      REQUIRE(all_finite(got.lse));
      REQUIRE(all_finite(got.dqkv));
      // fp32 rounding of the scores, relative to |s|, becomes an absolute
      // error in p: peaked softmaxes (|s| ~ 100) lose about two digits.
      // (Seen: about 1e-7 and 2e-7, then 2e-6 and 2e-5.)
      double out_tol = range == 1.f ? 1e-6 : 1e-5, grad_tol = range == 1.f ? 1e-5 : 2e-4;
      REQUIRE(rel_error(got.out, ref.out) <= out_tol);
      REQUIRE(unit_scaled_error(got.lse, ref.lse) <= 1e-5);
      REQUIRE(rel_error(got.dqkv, ref.dqkv) <= grad_tol);
    }
  }
}

TEST_CASE("cpu attention with no positions does nothing", "[kernels][attention]") {
  for (const Dims& d : {Dims{0, 4, 2, 3}, Dims{2, 0, 2, 3}}) {
    Result got = run_cpu(Vec(shape_numel(d.qkv())), Vec(shape_numel(d.out())), d);
    REQUIRE(got.out.empty());
    REQUIRE(got.dqkv.empty());
  }
}

TEST_CASE("cpu attention is causal", "[kernels][attention]") {
  const Dims d{2, 9, 3, 4};
  const int64_t C = d.C();
  for (int64_t cut : {int64_t{0}, int64_t{4}, int64_t{7}}) {
    uint64_t seed = fresh_seed();
    INFO("cut=" << cut << " seed=" << seed);
    Vec qkv = random_vector(shape_numel(d.qkv()), seed);
    // Only rows <= cut get an upstream gradient.
    Vec dout = random_vector(shape_numel(d.out()), seed + 1);
    for (int64_t b = 0; b < d.B; b++)
      for (int64_t t = cut + 1; t < d.T; t++)
        for (int64_t c = 0; c < C; c++) dout[(b * d.T + t) * C + c] = 0.f;
    Result base = run_cpu(qkv, dout, d);

    // New q, k and v at every position after `cut`: no output, lse or
    // gradient at positions <= cut may change, not by a bit.
    Vec changed = qkv, noise = random_vector(shape_numel(d.qkv()), seed + 2, -3.f, 3.f);
    for (int64_t b = 0; b < d.B; b++)
      for (int64_t t = cut + 1; t < d.T; t++)
        for (int64_t c = 0; c < 3 * C; c++) changed[(b * d.T + t) * 3 * C + c] = noise[(b * d.T + t) * 3 * C + c];
    Result moved = run_cpu(changed, dout, d);
    for (int64_t b = 0; b < d.B; b++) {
      int64_t rows = cut + 1;
      REQUIRE(same_bits(&moved.out[b * d.T * C], &base.out[b * d.T * C], rows * C));
      REQUIRE(same_bits(&moved.dqkv[b * d.T * 3 * C], &base.dqkv[b * d.T * 3 * C], rows * 3 * C));
      for (int64_t h = 0; h < d.NH; h++)
        REQUIRE(same_bits(&moved.lse[(b * d.NH + h) * d.T], &base.lse[(b * d.NH + h) * d.T], rows));
      // A loss of rows <= cut has no gradient at later positions.
      for (int64_t t = cut + 1; t < d.T; t++)
        for (int64_t c = 0; c < 3 * C; c++) REQUIRE(base.dqkv[(b * d.T + t) * 3 * C + c] == 0.f);
    }
  }
}

TEST_CASE("cpu attention backward matches float64 finite differences", "[kernels][attention]") {
  for (const Dims& d : {Dims{2, 5, 2, 3}, Dims{1, 6, 1, 4}}) {
    uint64_t seed = fresh_seed();
    INFO("B=" << d.B << " T=" << d.T << " NH=" << d.NH << " HS=" << d.HS << " seed=" << seed);
    Vec qkv = random_vector(shape_numel(d.qkv()), seed, -2.f, 2.f);
    Vec w = random_vector(shape_numel(d.out()), seed + 1);  // loss = sum(out * w), so dout = w
    Result got = run_cpu(qkv, w, d);

    // Central differences of the float64 forward, in float64 throughout.
    std::vector<double> x = widen(qkv), numeric(x.size());
    const double eps = 1e-6;
    auto loss = [&] {
      std::vector<double> out = attention64(x, {}, d).out;
      double s = 0;
      for (size_t i = 0; i < out.size(); i++) s += out[i] * w[i];
      return s;
    };
    for (size_t i = 0; i < x.size(); i++) {
      double keep = x[i];
      x[i] = keep + eps;
      double up = loss();
      x[i] = keep - eps;
      double down = loss();
      x[i] = keep;
      numeric[i] = (up - down) / (2 * eps);
    }
    REQUIRE(all_finite(got.dqkv));
    REQUIRE(rel_error(got.dqkv, numeric) <= 1e-5);
  }
}

TEST_CASE("cpu attention checks its arguments", "[kernels][attention]") {
  const Dims d{2, 5, 3, 4};
  const int64_t C = d.C();
  Device cpu = Device::cpu();
  Tensor qkv = random_tensor(d.qkv(), fresh_seed());
  Tensor out = Tensor::empty(d.out(), DType::f32, cpu), lse = Tensor::empty(d.lse(), DType::f32, cpu);
  Tensor dout = random_tensor(d.out(), fresh_seed()), dqkv = Tensor::empty(d.qkv(), DType::f32, cpu);
  Stream s;
  kernels::attention_forward(out, lse, qkv, d.NH, s);
  kernels::attention_backward(dqkv, dout, qkv, out, lse, d.NH, s);

  // qkv must be (B, T, 3C) with 3C a multiple of 3 * num_heads.
  REQUIRE_THROWS(kernels::attention_forward(out, lse, qkv.reshape({d.B * d.T, 3 * C}), d.NH, s));
  REQUIRE_THROWS(kernels::attention_forward(out, lse, qkv, 0, s));
  REQUIRE_THROWS(kernels::attention_forward(out, lse, qkv, 5, s));  // 3C = 36 is not a multiple of 15
  REQUIRE_THROWS(kernels::attention_forward(out, lse, qkv, 2 * C, s));  // HS would be 0
  // out (B, T, C) and lse (B, NH, T) f32.
  REQUIRE_THROWS(kernels::attention_forward(Tensor::empty({d.B, d.T, C + 1}, DType::f32, cpu), lse, qkv, d.NH, s));
  REQUIRE_THROWS(kernels::attention_forward(out.reshape({d.B * d.T, C}), lse, qkv, d.NH, s));
  REQUIRE_THROWS(kernels::attention_forward(out, Tensor::empty({d.B, d.T, d.NH}, DType::f32, cpu), qkv, d.NH, s));
  REQUIRE_THROWS(kernels::attention_forward(out, Tensor::empty(d.lse(), DType::i32, cpu), qkv, d.NH, s));
  REQUIRE_THROWS(kernels::attention_forward(out, Tensor(), qkv, d.NH, s));
  // bf16 is for CUDA only.
  REQUIRE_THROWS(kernels::attention_forward(Tensor::empty(d.out(), DType::bf16, cpu), lse,
                                            Tensor::empty(d.qkv(), DType::bf16, cpu), d.NH, s));
  // out must not alias qkv.
  REQUIRE_THROWS(kernels::attention_forward(qkv.view(0, d.out()), lse, qkv, d.NH, s));

  REQUIRE_THROWS(kernels::attention_backward(dqkv, dout, qkv, out, lse, 5, s));  // 5 heads do not divide C
  REQUIRE_THROWS(kernels::attention_backward(dqkv, qkv, qkv, out, lse, d.NH, s));  // dout (B, T, 3C)
  REQUIRE_THROWS(kernels::attention_backward(dqkv.reshape({d.B, 3 * C, d.T}), dout, qkv, out, lse, d.NH, s));
  REQUIRE_THROWS(kernels::attention_backward(dqkv, dout, qkv, out, Tensor::empty({d.B * d.NH * d.T}, DType::f32, cpu),
                                             d.NH, s));
  // dqkv must not alias qkv, dout, out or lse, whole or in part.
  REQUIRE_THROWS(kernels::attention_backward(qkv, dout, qkv, out, lse, d.NH, s));
  Tensor big = Tensor::empty({2 * shape_numel(d.qkv())}, DType::f32, cpu);
  Tensor big_qkv = big.view(0, d.qkv());
  big_qkv.copy_from(qkv);
  REQUIRE_THROWS(kernels::attention_backward(big.view(C, d.qkv()), dout, big_qkv, out, lse, d.NH, s));
  Tensor dout_in_dqkv = dqkv.view(shape_numel(d.qkv()) - shape_numel(d.out()), d.out());
  dout_in_dqkv.copy_from(dout);
  REQUIRE_THROWS(kernels::attention_backward(dqkv, dout_in_dqkv, qkv, out, lse, d.NH, s));
  REQUIRE_THROWS(kernels::attention_backward(dqkv, dout, qkv, dqkv.view(0, d.out()), lse, d.NH, s));
  // Apart (two halves of one buffer) is fine.
  kernels::attention_backward(big.view(shape_numel(d.qkv()), d.qkv()), dout, big_qkv, out, lse, d.NH, s);
}
