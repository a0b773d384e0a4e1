// CPU LayerNorm against float64 formulas (forward, backward, accumulation
// semantics), a float64 finite-difference check of the backward, and the
// fused residual + LayerNorm forward against the unfused pair, bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/layernorm.h"
#include "kernels/residual.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

constexpr float kEps = 1e-5f;
using Vec = std::vector<float>;

struct Reference {
  std::vector<double> out, mean, rstd, dinp, dweight, dbias;
  // Sums of |terms| behind dweight and dbias: the scale of their rounding
  // error, which a relative error can hide behind cancellation.
  std::vector<double> dweight_scale, dbias_scale;
};

// float64 LayerNorm forward and backward; dweight and dbias start from
// dweight0 and dbias0 (parameter gradients accumulate).
Reference layernorm64(const Vec& x, const Vec& w, const Vec& b, const Vec& dy, const Vec& dweight0,
                      const Vec& dbias0, int64_t N, int64_t C) {
  Reference r;
  r.out.resize(N * C);
  r.dinp.resize(N * C);
  r.mean.resize(N);
  r.rstd.resize(N);
  r.dweight.assign(dweight0.begin(), dweight0.end());
  r.dbias.assign(dbias0.begin(), dbias0.end());
  for (float v : dweight0) r.dweight_scale.push_back(std::fabs(v));
  for (float v : dbias0) r.dbias_scale.push_back(std::fabs(v));
  std::vector<double> xhat(C);
  for (int64_t n = 0; n < N; n++) {
    const float* xr = &x[n * C];
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; c++) mean += xr[c];
    mean /= C;
    for (int64_t c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
    var /= C;
    double rstd = 1.0 / std::sqrt(var + kEps);
    r.mean[n] = mean;
    r.rstd[n] = rstd;
    double g_mean = 0, gx_mean = 0;
    for (int64_t c = 0; c < C; c++) {
      xhat[c] = (xr[c] - mean) * rstd;
      r.out[n * C + c] = xhat[c] * w[c] + b[c];
      double g = static_cast<double>(w[c]) * dy[n * C + c];
      g_mean += g / C;
      gx_mean += g * xhat[c] / C;
    }
    for (int64_t c = 0; c < C; c++) {
      double d = dy[n * C + c];
      r.dinp[n * C + c] = rstd * (w[c] * d - g_mean - xhat[c] * gx_mean);
      r.dweight[c] += d * xhat[c];
      r.dbias[c] += d;
      r.dweight_scale[c] += std::fabs(d * xhat[c]);
      r.dbias_scale[c] += std::fabs(d);
    }
  }
  return r;
}

// The CPU forward on plain vectors: out only.
Vec forward(const Vec& x, const Vec& w, const Vec& b, int64_t N, int64_t C) {
  Tensor out = Tensor::empty({N, C}, DType::f32, Device::cpu());
  Tensor mean = Tensor::empty({N}, DType::f32, Device::cpu()), rstd = Tensor::empty({N}, DType::f32, Device::cpu());
  kernels::layernorm_forward(out, mean, rstd, Tensor::from_vector(x, {N, C}), Tensor::from_vector(w, {C}),
                             Tensor::from_vector(b, {C}), {.eps = kEps}, Stream());
  return out.to_vector();
}

// sum(out * R) in float64: the scalar whose gradient the backward computes
// when dout = R.
double objective(const Vec& out, const Vec& R) {
  double s = 0;
  for (size_t i = 0; i < out.size(); i++) s += static_cast<double>(out[i]) * R[i];
  return s;
}

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("cpu layernorm matches float64", "[kernels][layernorm]") {
  for (int64_t N : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{33}}) {
    for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}}) {
      uint64_t seed = fresh_seed();
      INFO("N=" << N << " C=" << C << " seed=" << seed);
      // An offset mean on purpose: the variance must not lose it to cancellation.
      Vec x = random_vector(N * C, seed, -2.f, 3.f), w = random_vector(C, seed + 1, -1.5f, 1.5f),
          b = random_vector(C, seed + 2), dy = random_vector(N * C, seed + 3), dw0 = random_vector(C, seed + 4),
          db0 = random_vector(C, seed + 5);
      Reference ref = layernorm64(x, w, b, dy, dw0, db0, N, C);

      Tensor tx = Tensor::from_vector(x, {N, C}), tw = Tensor::from_vector(w, {C});
      Tensor out = Tensor::empty({N, C}, DType::f32, Device::cpu());
      Tensor mean = Tensor::empty({N}, DType::f32, Device::cpu()), rstd = Tensor::empty({N}, DType::f32, Device::cpu());
      kernels::layernorm_forward(out, mean, rstd, tx, tw, Tensor::from_vector(b, {C}), {}, Stream());

      // dinp starts as NaN: it must be overwritten. dweight and dbias start
      // non-zero: they must be added to.
      Tensor dinp = Tensor::from_vector(Vec(N * C, NAN), {N, C});
      Tensor dweight = Tensor::from_vector(dw0, {C}), dbias = Tensor::from_vector(db0, {C});
      kernels::layernorm_backward(dinp, dweight, dbias, Tensor::from_vector(dy, {N, C}), tx, tw, mean, rstd,
                                  Stream());

      REQUIRE(all_finite(out.to_vector()));
      REQUIRE(all_finite(dinp.to_vector()));
      REQUIRE(rel_error(out.to_vector(), ref.out) <= 1e-5);
      REQUIRE(rel_error(mean.to_vector(), ref.mean) <= 1e-6);
      REQUIRE(rel_error(rstd.to_vector(), ref.rstd) <= 1e-6);
      REQUIRE(rel_error(dinp.to_vector(), ref.dinp) <= 1e-4);
      REQUIRE(scaled_error(dweight.to_vector(), ref.dweight, ref.dweight_scale) <= 1e-5);
      REQUIRE(scaled_error(dbias.to_vector(), ref.dbias, ref.dbias_scale) <= 1e-5);
    }
  }
}

TEST_CASE("cpu layernorm takes (B, T, C) and dinp may alias dout", "[kernels][layernorm]") {
  const int64_t B = 3, T = 5, C = 33, N = B * T;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec x = random_vector(N * C, seed), w = random_vector(C, seed + 1), b = random_vector(C, seed + 2),
      dy = random_vector(N * C, seed + 3);
  Tensor tx = Tensor::from_vector(x, {B, T, C}), tw = Tensor::from_vector(w, {C});
  Tensor out = Tensor::empty({B, T, C}, DType::f32, Device::cpu());
  Tensor mean = Tensor::empty({B, T}, DType::f32, Device::cpu()), rstd = Tensor::empty({B, T}, DType::f32, Device::cpu());
  kernels::layernorm_forward(out, mean, rstd, tx, tw, Tensor::from_vector(b, {C}), {}, Stream());
  REQUIRE(same_bits(out.to_vector(), forward(x, w, b, N, C)));

  Tensor dinp = Tensor::empty({B, T, C}, DType::f32, Device::cpu());
  Tensor dw1 = Tensor::zeros({C}, DType::f32, Device::cpu()), db1 = Tensor::zeros({C}, DType::f32, Device::cpu());
  kernels::layernorm_backward(dinp, dw1, db1, Tensor::from_vector(dy, {B, T, C}), tx, tw, mean, rstd, Stream());

  Tensor inplace = Tensor::from_vector(dy, {B, T, C});  // dout, then dinp
  Tensor dw2 = Tensor::zeros({C}, DType::f32, Device::cpu()), db2 = Tensor::zeros({C}, DType::f32, Device::cpu());
  kernels::layernorm_backward(inplace, dw2, db2, inplace, tx, tw, mean, rstd, Stream());
  REQUIRE(same_bits(inplace.to_vector(), dinp.to_vector()));
  REQUIRE(same_bits(dw2.to_vector(), dw1.to_vector()));
  REQUIRE(same_bits(db2.to_vector(), db1.to_vector()));

  // Shapes are checked.
  REQUIRE_THROWS(kernels::layernorm_forward(out, mean, rstd, tx, Tensor::from_vector(Vec(C - 1, 1.f), {C - 1}),
                                            Tensor::from_vector(b, {C}), {}, Stream()));
  REQUIRE_THROWS(kernels::layernorm_forward(out, Tensor::empty({N - 1}, DType::f32, Device::cpu()), rstd, tx, tw,
                                            Tensor::from_vector(b, {C}), {}, Stream()));
}

TEST_CASE("cpu layernorm backward matches float64 finite differences", "[kernels][layernorm]") {
  for (int64_t N : {int64_t{1}, int64_t{3}}) {
    for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}}) {
      uint64_t seed = fresh_seed();
      INFO("N=" << N << " C=" << C << " seed=" << seed);
      Vec x = random_vector(N * C, seed), w = random_vector(C, seed + 1, 0.5f, 1.5f), b = random_vector(C, seed + 2),
          R = random_vector(N * C, seed + 3);

      Tensor tx = Tensor::from_vector(x, {N, C}), tw = Tensor::from_vector(w, {C});
      Tensor out = Tensor::empty({N, C}, DType::f32, Device::cpu());
      Tensor mean = Tensor::empty({N}, DType::f32, Device::cpu()), rstd = Tensor::empty({N}, DType::f32, Device::cpu());
      kernels::layernorm_forward(out, mean, rstd, tx, tw, Tensor::from_vector(b, {C}), {}, Stream());
      Tensor dinp = Tensor::empty({N, C}, DType::f32, Device::cpu());
      Tensor dweight = Tensor::zeros({C}, DType::f32, Device::cpu()), dbias = Tensor::zeros({C}, DType::f32, Device::cpu());
      kernels::layernorm_backward(dinp, dweight, dbias, Tensor::from_vector(R, {N, C}), tx, tw, mean, rstd, Stream());

      // Central differences of sum(out * R) in float64 over the f32 forward.
      auto loss = [&] { return objective(forward(x, w, b, N, C), R); };
      auto numeric = [&](Vec& param) { return numerical_gradient(param, loss); };
      REQUIRE(rel_error(dinp.to_vector(), numeric(x)) <= 1e-2);
      REQUIRE(rel_error(dweight.to_vector(), numeric(w)) <= 1e-2);
      REQUIRE(rel_error(dbias.to_vector(), numeric(b)) <= 1e-2);
    }
  }
}

TEST_CASE("cpu residual_layernorm equals residual_add then layernorm_forward bitwise", "[kernels][layernorm]") {
  for (int64_t N : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{33}}) {
    for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}}) {
      uint64_t seed = fresh_seed();
      INFO("N=" << N << " C=" << C << " seed=" << seed);
      Vec a = random_vector(N * C, seed, -2.f, 3.f), b = random_vector(N * C, seed + 1),
          w = random_vector(C, seed + 2, -1.5f, 1.5f), bias = random_vector(C, seed + 3);
      Tensor ta = Tensor::from_vector(a, {N, C}), tb = Tensor::from_vector(b, {N, C});
      Tensor tw = Tensor::from_vector(w, {C}), tbias = Tensor::from_vector(bias, {C});

      // The unfused pair.
      Tensor r1 = Tensor::empty({N, C}, DType::f32, Device::cpu());
      Tensor out1 = Tensor::empty({N, C}, DType::f32, Device::cpu());
      Tensor m1 = Tensor::empty({N}, DType::f32, Device::cpu()), s1 = Tensor::empty({N}, DType::f32, Device::cpu());
      kernels::residual_add(r1, ta, tb, Stream());
      kernels::layernorm_forward(out1, m1, s1, r1, tw, tbias, {.eps = kEps}, Stream());

      // Fused, into poisoned outputs; then in place over a, and over b.
      auto poisoned = [](int64_t n, Shape shape) { return Tensor::from_vector(Vec(n, NAN), shape); };
      Tensor r2 = poisoned(N * C, {N, C}), out2 = poisoned(N * C, {N, C});
      Tensor m2 = poisoned(N, {N}), s2 = poisoned(N, {N});
      kernels::residual_layernorm_forward(r2, out2, m2, s2, ta, tb, tw, tbias, {.eps = kEps}, Stream());
      Tensor over_a = Tensor::from_vector(a, {N, C}), over_b = Tensor::from_vector(b, {N, C});
      Tensor out3 = poisoned(N * C, {N, C}), m3 = poisoned(N, {N}), s3 = poisoned(N, {N});
      kernels::residual_layernorm_forward(over_a, out3, m3, s3, over_a, tb, tw, tbias, {.eps = kEps}, Stream());
      Tensor out4 = poisoned(N * C, {N, C}), m4 = poisoned(N, {N}), s4 = poisoned(N, {N});
      kernels::residual_layernorm_forward(over_b, out4, m4, s4, ta, over_b, tw, tbias, {.eps = kEps}, Stream());

      REQUIRE(all_finite(out1.to_vector()));
      struct Run { const Tensor *r, *out, *m, *s; };
      for (Run run : {Run{&r2, &out2, &m2, &s2}, Run{&over_a, &out3, &m3, &s3}, Run{&over_b, &out4, &m4, &s4}}) {
        REQUIRE(same_bits(run.r->to_vector(), r1.to_vector()));
        REQUIRE(same_bits(run.out->to_vector(), out1.to_vector()));
        REQUIRE(same_bits(run.m->to_vector(), m1.to_vector()));
        REQUIRE(same_bits(run.s->to_vector(), s1.to_vector()));
      }
    }
  }
}

TEST_CASE("cpu residual_layernorm takes (B, T, C) and refuses overlapping outputs", "[kernels][layernorm]") {
  const int64_t B = 3, T = 5, C = 7, N = B * T;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec a = random_vector(N * C, seed), b = random_vector(N * C, seed + 1);
  Tensor ta = Tensor::from_vector(a, {B, T, C}), tb = Tensor::from_vector(b, {B, T, C});
  Tensor w = random_tensor({C}, seed + 2), bias = random_tensor({C}, seed + 3);
  Tensor residual = Tensor::empty({B, T, C}, DType::f32, Device::cpu());
  Tensor out = Tensor::empty({B, T, C}, DType::f32, Device::cpu());
  Tensor mean = Tensor::empty({B, T}, DType::f32, Device::cpu());
  Tensor rstd = Tensor::empty({B, T}, DType::f32, Device::cpu());
  kernels::residual_layernorm_forward(residual, out, mean, rstd, ta, tb, w, bias, {}, Stream());
  Vec r(N * C);
  for (int64_t i = 0; i < N * C; i++) r[i] = a[i] + b[i];
  REQUIRE(same_bits(residual.to_vector(), r));
  REQUIRE(same_bits(out.to_vector(), forward(r, w.to_vector(), bias.to_vector(), N, C)));

  // out over residual, a or b: the fused forward would read what it wrote.
  for (const Tensor* over : {&residual, &ta, &tb})
    REQUIRE_THROWS_WITH(kernels::residual_layernorm_forward(residual, *over, mean, rstd, ta, tb, w, bias, {}, Stream()),
                        Catch::Contains("out overlaps"));
  // A residual that overlaps a without being a's elements, row for row.
  Tensor buf = Tensor::from_vector(Vec((N + 1) * C, 1.f), {N + 1, C});
  REQUIRE_THROWS_WITH(kernels::residual_layernorm_forward(buf.view(C, {B, T, C}), out, mean, rstd,
                                                          buf.view(0, {B, T, C}), tb, w, bias, {}, Stream()),
                      Catch::Contains("without being the same elements"));
  // Shapes are checked.
  REQUIRE_THROWS(kernels::residual_layernorm_forward(residual, out, mean, rstd, ta, random_tensor({B, T, C + 1}, seed),
                                                     w, bias, {}, Stream()));
  REQUIRE_THROWS(kernels::residual_layernorm_forward(residual, out, Tensor::empty({N - 1}, DType::f32, Device::cpu()),
                                                     rstd, ta, tb, w, bias, {}, Stream()));
}
