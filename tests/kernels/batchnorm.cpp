// CPU BatchNorm against float64 formulas (training forward, running
// statistics, eval, backward, accumulation semantics), one value per channel
// (variance 0), 2-D and 3-D inputs, float64 finite-difference checks of the
// backward, and argument checks.
#include <cmath>
#include <cstring>

#include "kernels/batchnorm.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;

struct Dims {
  int64_t N, C, H, W;
  int64_t HW() const { return H * W; }
  int64_t numel() const { return N * C * H * W; }
  Shape shape() const { return {N, C, H, W}; }
};

struct Reference {
  std::vector<double> out, mean, rstd, running_mean, running_var, dinp, dweight, dbias;
  // Sums of |terms| behind out, dinp, dweight and dbias: the scale of their
  // rounding error, which a relative error can hide behind cancellation
  // (with n = 2, xhat = +-1 whatever x is, and dinp is O(eps)). All but
  // dbias's include the fp32 rounding of x - mean, which rstd magnifies when
  // the values of a channel lie close together.
  std::vector<double> out_scale, dinp_scale, dweight_scale, dbias_scale;
};

// float64 BatchNorm training forward and backward over (N, C, HW), with the
// running statistics updated from rm0 and rv0 and dweight and dbias
// accumulated from dw0 and db0. The choices are kernels/batchnorm.h's:
// biased variance to normalize, unbiased for running_var, which one value
// per channel leaves alone.
Reference batchnorm64(const Vec& x, const Vec& w, const Vec& b, const Vec& dy, const Vec& dw0, const Vec& db0,
                      const Vec& rm0, const Vec& rv0, int64_t N, int64_t C, int64_t HW,
                      const kernels::BatchNormOptions& o) {
  Reference r;
  r.out.resize(N * C * HW);
  r.dinp.resize(N * C * HW);
  r.dinp_scale.resize(N * C * HW);
  r.out_scale.resize(N * C * HW);
  r.mean.resize(C);
  r.rstd.resize(C);
  r.running_mean.assign(rm0.begin(), rm0.end());
  r.running_var.assign(rv0.begin(), rv0.end());
  r.dweight.assign(dw0.begin(), dw0.end());
  r.dbias.assign(db0.begin(), db0.end());
  for (float v : dw0) r.dweight_scale.push_back(std::fabs(v));
  for (float v : db0) r.dbias_scale.push_back(std::fabs(v));
  const int64_t count = N * HW;
  const double eps = o.eps, momentum = o.momentum;
  auto at = [&](int64_t n, int64_t c, int64_t i) { return (n * C + c) * HW + i; };
  for (int64_t c = 0; c < C; c++) {
    if (count == 0) {
      r.mean[c] = 0;
      r.rstd[c] = 1 / std::sqrt(eps);
      continue;
    }
    double mean = 0, var = 0;
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < HW; i++) mean += x[at(n, c, i)];
    mean /= count;
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < HW; i++) var += (x[at(n, c, i)] - mean) * (x[at(n, c, i)] - mean);
    double sq = var;
    var /= count;
    double rstd = 1 / std::sqrt(var + eps);
    r.mean[c] = mean;
    r.rstd[c] = rstd;
    r.running_mean[c] = (1 - momentum) * rm0[c] + momentum * mean;
    if (count > 1) r.running_var[c] = (1 - momentum) * rv0[c] + momentum * sq / (count - 1);
    double dy_mean = 0, dyx_mean = 0;
    for (int64_t n = 0; n < N; n++) {
      for (int64_t i = 0; i < HW; i++) {
        double xhat = (x[at(n, c, i)] - mean) * rstd, d = dy[at(n, c, i)];
        r.out[at(n, c, i)] = xhat * w[c] + b[c];
        double xhat_rounding = (std::fabs(x[at(n, c, i)]) + std::fabs(mean)) * rstd;
        r.out_scale[at(n, c, i)] = (std::fabs(xhat) + xhat_rounding) * std::fabs(w[c]) + std::fabs(b[c]);
        dy_mean += d / count;
        dyx_mean += d * xhat / count;
        r.dweight[c] += d * xhat;
        r.dbias[c] += d;
        r.dweight_scale[c] += std::fabs(d) * (std::fabs(xhat) + xhat_rounding);
        r.dbias_scale[c] += std::fabs(d);
      }
    }
    for (int64_t n = 0; n < N; n++) {
      for (int64_t i = 0; i < HW; i++) {
        double xhat = (x[at(n, c, i)] - mean) * rstd;
        r.dinp[at(n, c, i)] = w[c] * rstd * (dy[at(n, c, i)] - dy_mean - xhat * dyx_mean);
        double xhat_rounding = (std::fabs(x[at(n, c, i)]) + std::fabs(mean)) * rstd;
        r.dinp_scale[at(n, c, i)] = std::fabs(w[c]) * rstd *
                                    (std::fabs(dy[at(n, c, i)]) + std::fabs(dy_mean) +
                                     (std::fabs(xhat) + xhat_rounding) * std::fabs(dyx_mean));
      }
    }
  }
  return r;
}

Tensor f32(Shape shape) { return Tensor::empty(shape, DType::f32, Device::cpu()); }
Tensor zeros(Shape shape) { return Tensor::zeros(shape, DType::f32, Device::cpu()); }

// The training forward on plain vectors: out only (fresh running statistics).
Vec forward_train(const Vec& x, const Vec& w, const Vec& b, const Dims& d) {
  Tensor out = f32(d.shape()), mean = f32({d.C}), rstd = f32({d.C});
  Tensor rm = zeros({d.C});
  Tensor rv = Tensor::from_vector(Vec(d.C, 1.f), {d.C});
  kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, Tensor::from_vector(x, d.shape()),
                                   Tensor::from_vector(w, {d.C}), Tensor::from_vector(b, {d.C}), {}, Stream());
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

// Sizes: odd everywhere, one value per channel (variance 0), an empty batch.
const std::vector<Dims> kDims = {{3, 5, 7, 3}, {1, 1, 1, 1}, {1, 4, 1, 1}, {2, 3, 1, 1}, {4, 2, 5, 5},
                                 {0, 3, 2, 2}, {7, 33, 2, 3}, {2, 1, 31, 33}};

}  // namespace

TEST_CASE("cpu batchnorm training matches float64", "[kernels][batchnorm]") {
  for (const Dims& d : kDims) {
    for (float momentum : {0.1f, 0.37f}) {
      uint64_t seed = fresh_seed();
      INFO("N=" << d.N << " C=" << d.C << " H=" << d.H << " W=" << d.W << " momentum=" << momentum
                << " seed=" << seed);
      const int64_t C = d.C;
      kernels::BatchNormOptions o{.eps = 1e-5f, .momentum = momentum};
      // An offset mean on purpose: the variance must not lose it to cancellation.
      Vec x = random_vector(d.numel(), seed, -2.f, 3.f), w = random_vector(C, seed + 1, -1.5f, 1.5f),
          b = random_vector(C, seed + 2), dy = random_vector(d.numel(), seed + 3), dw0 = random_vector(C, seed + 4),
          db0 = random_vector(C, seed + 5), rm0 = random_vector(C, seed + 6),
          rv0 = random_vector(C, seed + 7, 0.5f, 2.f);
      Reference ref = batchnorm64(x, w, b, dy, dw0, db0, rm0, rv0, d.N, C, d.HW(), o);

      Tensor tx = Tensor::from_vector(x, d.shape()), tw = Tensor::from_vector(w, {C});
      Tensor out = f32(d.shape()), mean = f32({C}), rstd = f32({C});
      Tensor rm = Tensor::from_vector(rm0, {C}), rv = Tensor::from_vector(rv0, {C});
      kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, tx, tw, Tensor::from_vector(b, {C}), o, Stream());

      // dinp starts as NaN: it must be overwritten. dweight and dbias start
      // non-zero: they must be added to.
      Tensor dinp = Tensor::from_vector(Vec(d.numel(), NAN), d.shape());
      Tensor dweight = Tensor::from_vector(dw0, {C}), dbias = Tensor::from_vector(db0, {C});
      kernels::batchnorm_backward(dinp, dweight, dbias, Tensor::from_vector(dy, d.shape()), tx, tw, mean, rstd,
                                  Stream());

      for (const Tensor* t : {&out, &mean, &rstd, &rm, &rv, &dinp, &dweight, &dbias})
        REQUIRE(all_finite(t->to_vector()));
      REQUIRE(scaled_error(out.to_vector(), ref.out, ref.out_scale) <= 1e-5);
      REQUIRE(rel_error(mean.to_vector(), ref.mean) <= 1e-6);
      REQUIRE(rel_error(rstd.to_vector(), ref.rstd) <= 1e-6);
      REQUIRE(rel_error(rm.to_vector(), ref.running_mean) <= 1e-6);
      REQUIRE(rel_error(rv.to_vector(), ref.running_var) <= 1e-6);
      REQUIRE(scaled_error(dinp.to_vector(), ref.dinp, ref.dinp_scale) <= 1e-5);
      REQUIRE(scaled_error(dweight.to_vector(), ref.dweight, ref.dweight_scale) <= 1e-5);
      REQUIRE(scaled_error(dbias.to_vector(), ref.dbias, ref.dbias_scale) <= 1e-5);
    }
  }
}

TEST_CASE("cpu batchnorm with one value per channel: out = bias, no NaN, running_var kept",
          "[kernels][batchnorm]") {
  // N = 1 and H = W = 1: every channel's variance is 0 (and unbiased variance
  // undefined); as 4-D and as 2-D (N, C).
  const int64_t C = 5;
  for (Shape shape : {Shape{1, C, 1, 1}, Shape{1, C}}) {
    uint64_t seed = fresh_seed();
    INFO("shape=" << shape_str(shape) << " seed=" << seed);
    Vec x = random_vector(C, seed, -2.f, 3.f), w = random_vector(C, seed + 1), b = random_vector(C, seed + 2),
        rm0 = random_vector(C, seed + 3), rv0 = random_vector(C, seed + 4, 0.5f, 2.f);
    Tensor tx = Tensor::from_vector(x, shape), tw = Tensor::from_vector(w, {C});
    Tensor out = f32(shape), mean = f32({C}), rstd = f32({C});
    Tensor rm = Tensor::from_vector(rm0, {C}), rv = Tensor::from_vector(rv0, {C});
    kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, tx, tw, Tensor::from_vector(b, {C}), {}, Stream());
    Tensor dinp = Tensor::from_vector(Vec(C, NAN), shape);
    Tensor dweight = zeros({C}), dbias = zeros({C});
    Vec dy = random_vector(C, seed + 5);
    kernels::batchnorm_backward(dinp, dweight, dbias, Tensor::from_vector(dy, shape), tx, tw, mean, rstd, Stream());

    for (const Tensor* t : {&out, &mean, &rstd, &rm, &rv, &dinp, &dweight, &dbias})
      REQUIRE(all_finite(t->to_vector()));
    REQUIRE(same_bits(out.to_vector(), b));
    REQUIRE(same_bits(mean.to_vector(), x));
    REQUIRE(dinp.to_vector() == Vec(C, 0.f));     // by value: -0 where weight < 0
    REQUIRE(dweight.to_vector() == Vec(C, 0.f));  // dout * xhat, xhat = 0
    REQUIRE(same_bits(dbias.to_vector(), dy));
    REQUIRE(same_bits(rv.to_vector(), rv0));
    std::vector<double> rm_want(C);
    for (int64_t c = 0; c < C; c++) rm_want[c] = 0.9 * rm0[c] + 0.1 * x[c];
    REQUIRE(rel_error(rm.to_vector(), rm_want) <= 1e-6);
  }
}

TEST_CASE("cpu batchnorm running statistics over several steps", "[kernels][batchnorm]") {
  const Dims d{3, 5, 7, 3};
  const int64_t C = d.C;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  kernels::BatchNormOptions o{.eps = 1e-3f, .momentum = 0.25f};
  Tensor rm = zeros({C}), rv = Tensor::from_vector(Vec(C, 1.f), {C});
  std::vector<double> rm_want(C, 0.0), rv_want(C, 1.0);
  Tensor w = random_tensor({C}, seed), b = random_tensor({C}, seed + 1);
  for (int step = 0; step < 4; step++) {
    // Batches with different means and spreads, so each step moves the statistics.
    float lo = -1.f - step, hi = 2.f + 2 * step;
    Vec x = random_vector(d.numel(), seed + 2 + step, lo, hi);
    Tensor out = f32(d.shape()), mean = f32({C}), rstd = f32({C});
    kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, Tensor::from_vector(x, d.shape()), w, b, o, Stream());
    const int64_t count = d.N * d.HW();
    for (int64_t c = 0; c < C; c++) {
      double m = 0, sq = 0;
      for (int64_t n = 0; n < d.N; n++)
        for (int64_t i = 0; i < d.HW(); i++) m += x[(n * C + c) * d.HW() + i];
      m /= count;
      for (int64_t n = 0; n < d.N; n++)
        for (int64_t i = 0; i < d.HW(); i++) sq += std::pow(x[(n * C + c) * d.HW() + i] - m, 2);
      rm_want[c] = 0.75 * rm_want[c] + 0.25 * m;
      rv_want[c] = 0.75 * rv_want[c] + 0.25 * sq / (count - 1);  // unbiased, as PyTorch
    }
    INFO("step=" << step);
    REQUIRE(rel_error(rm.to_vector(), rm_want) <= 1e-6);
    REQUIRE(rel_error(rv.to_vector(), rv_want) <= 1e-6);
  }

  // momentum 0 keeps the running statistics; momentum 1 replaces them.
  Vec x = random_vector(d.numel(), seed + 9, -2.f, 3.f);
  Tensor out = f32(d.shape()), mean = f32({C}), rstd = f32({C});
  Vec rm_before = rm.to_vector(), rv_before = rv.to_vector();
  kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, Tensor::from_vector(x, d.shape()), w, b,
                                   {.momentum = 0.f}, Stream());
  REQUIRE(same_bits(rm.to_vector(), rm_before));
  REQUIRE(same_bits(rv.to_vector(), rv_before));
  kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, Tensor::from_vector(x, d.shape()), w, b,
                                   {.momentum = 1.f}, Stream());
  REQUIRE(same_bits(rm.to_vector(), mean.to_vector()));
  Reference ref = batchnorm64(x, w.to_vector(), b.to_vector(), Vec(d.numel()), Vec(C), Vec(C), rm_before, rv_before,
                              d.N, C, d.HW(), {.momentum = 1.f});
  REQUIRE(rel_error(rv.to_vector(), ref.running_var) <= 1e-6);
}

TEST_CASE("cpu batchnorm eval uses the running statistics and changes nothing", "[kernels][batchnorm]") {
  for (const Dims& d : kDims) {
    uint64_t seed = fresh_seed();
    INFO("N=" << d.N << " C=" << d.C << " H=" << d.H << " W=" << d.W << " seed=" << seed);
    const int64_t C = d.C;
    Vec x = random_vector(d.numel(), seed, -2.f, 3.f), w = random_vector(C, seed + 1), b = random_vector(C, seed + 2),
        rm0 = random_vector(C, seed + 3), rv0 = random_vector(C, seed + 4, 0.f, 2.f);
    rv0[0] = 0.f;  // a channel that never varied: eps keeps it finite
    const float eps = 1e-3f;
    Tensor tx = Tensor::from_vector(x, d.shape()), tw = Tensor::from_vector(w, {C}), tb = Tensor::from_vector(b, {C});
    Tensor rm = Tensor::from_vector(rm0, {C}), rv = Tensor::from_vector(rv0, {C});
    Tensor out = f32(d.shape());
    kernels::batchnorm_forward_eval(out, tx, tw, tb, rm, rv, {.eps = eps}, Stream());
    std::vector<double> want(d.numel());
    for (int64_t n = 0; n < d.N; n++)
      for (int64_t c = 0; c < C; c++)
        for (int64_t i = 0; i < d.HW(); i++) {
          int64_t k = (n * C + c) * d.HW() + i;
          want[k] = (x[k] - static_cast<double>(rm0[c])) / std::sqrt(static_cast<double>(rv0[c]) + eps) * w[c] + b[c];
        }
    REQUIRE(all_finite(out.to_vector()));
    REQUIRE(rel_error(out.to_vector(), want) <= 1e-5);
    REQUIRE(same_bits(rm.to_vector(), rm0));
    REQUIRE(same_bits(rv.to_vector(), rv0));
    REQUIRE(same_bits(tx.to_vector(), x));

    // In place: out over inp, element for element.
    kernels::batchnorm_forward_eval(tx, tx, tw, tb, rm, rv, {.eps = eps}, Stream());
    REQUIRE(same_bits(tx.to_vector(), out.to_vector()));
  }
}

TEST_CASE("cpu batchnorm takes (N, C) and (N, C, L); dinp may alias dout; gradients add up",
          "[kernels][batchnorm]") {
  const int64_t N = 3, C = 5, L = 7;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  // Each of (N, C), (N, C, L) against (N, C, H, W) with the same elements.
  for (auto [shape, as4d] : {std::pair{Shape{N, C}, Shape{N, C, 1, 1}}, std::pair{Shape{N, C, L}, Shape{N, C, L, 1}}}) {
    INFO("shape=" << shape_str(shape));
    int64_t n = shape_numel(shape);
    Vec x = random_vector(n, seed, -2.f, 3.f), dy = random_vector(n, seed + 1);
    Tensor w = random_tensor({C}, seed + 2), b = random_tensor({C}, seed + 3);
    struct Result { Vec out, mean, rstd, rm, rv, dinp, dw, db; };
    auto run = [&](Shape s) {
      Tensor tx = Tensor::from_vector(x, s), out = f32(s), mean = f32({C}), rstd = f32({C});
      Tensor rm = zeros({C}), rv = Tensor::from_vector(Vec(C, 1.f), {C});
      kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, tx, w, b, {}, Stream());
      Tensor dinp = f32(s), dw = zeros({C}), db = zeros({C});
      kernels::batchnorm_backward(dinp, dw, db, Tensor::from_vector(dy, s), tx, w, mean, rstd, Stream());
      return Result{out.to_vector(), mean.to_vector(), rstd.to_vector(), rm.to_vector(), rv.to_vector(),
                    dinp.to_vector(), dw.to_vector(), db.to_vector()};
    };
    Result got = run(shape), want = run(as4d);
    REQUIRE(same_bits(got.out, want.out));
    REQUIRE(same_bits(got.mean, want.mean));
    REQUIRE(same_bits(got.rstd, want.rstd));
    REQUIRE(same_bits(got.rm, want.rm));
    REQUIRE(same_bits(got.rv, want.rv));
    REQUIRE(same_bits(got.dinp, want.dinp));
    REQUIRE(same_bits(got.dw, want.dw));
    REQUIRE(same_bits(got.db, want.db));

    // dinp over dout, element for element: the same bits. A second backward
    // into the same dweight and dbias adds the same amounts again.
    Tensor tx = Tensor::from_vector(x, shape), out = f32(shape), mean = f32({C}), rstd = f32({C});
    Tensor rm = zeros({C}), rv = Tensor::from_vector(Vec(C, 1.f), {C});
    kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, tx, w, b, {}, Stream());
    Tensor inplace = Tensor::from_vector(dy, shape);
    Tensor dw = zeros({C}), db = zeros({C});
    kernels::batchnorm_backward(inplace, dw, db, inplace, tx, w, mean, rstd, Stream());
    REQUIRE(same_bits(inplace.to_vector(), want.dinp));
    kernels::batchnorm_backward(f32(shape), dw, db, Tensor::from_vector(dy, shape), tx, w, mean, rstd, Stream());
    Vec dw2 = want.dw, db2 = want.db;
    for (auto& v : dw2) v += v;
    for (auto& v : db2) v += v;
    REQUIRE(same_bits(dw.to_vector(), dw2));
    REQUIRE(same_bits(db.to_vector(), db2));
  }
}

TEST_CASE("cpu batchnorm backward matches float64 finite differences", "[kernels][batchnorm]") {
  // Not n = 2: there xhat = +-1 whatever x is, and the gradient is O(eps),
  // below the fp32 noise of the differences. n = 1 is exact: out = bias.
  for (const Dims& d : {Dims{3, 5, 7, 3}, Dims{1, 3, 1, 1}, Dims{4, 2, 1, 1}, Dims{2, 3, 2, 3}}) {
    uint64_t seed = fresh_seed();
    INFO("N=" << d.N << " C=" << d.C << " H=" << d.H << " W=" << d.W << " seed=" << seed);
    const int64_t C = d.C;
    Vec x = random_vector(d.numel(), seed, -2.f, 3.f), w = random_vector(C, seed + 1, 0.5f, 1.5f),
        b = random_vector(C, seed + 2), R = random_vector(d.numel(), seed + 3);

    Tensor tx = Tensor::from_vector(x, d.shape()), tw = Tensor::from_vector(w, {C});
    Tensor out = f32(d.shape()), mean = f32({C}), rstd = f32({C});
    Tensor rm = zeros({C}), rv = Tensor::from_vector(Vec(C, 1.f), {C});
    kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, tx, tw, Tensor::from_vector(b, {C}), {}, Stream());
    Tensor dinp = f32(d.shape());
    Tensor dweight = zeros({C}), dbias = zeros({C});
    kernels::batchnorm_backward(dinp, dweight, dbias, Tensor::from_vector(R, d.shape()), tx, tw, mean, rstd,
                                Stream());

    // Central differences of sum(out * R) in float64 over the f32 forward.
    auto loss = [&] { return objective(forward_train(x, w, b, d), R); };
    auto numeric = [&](Vec& param) { return numerical_gradient(param, loss); };
    REQUIRE(rel_error(dinp.to_vector(), numeric(x)) <= 1e-2);
    REQUIRE(rel_error(dweight.to_vector(), numeric(w)) <= 1e-2);
    REQUIRE(rel_error(dbias.to_vector(), numeric(b)) <= 1e-2);
  }
}

TEST_CASE("cpu batchnorm checks its arguments", "[kernels][batchnorm]") {
  const Dims d{3, 5, 7, 3};
  const int64_t C = d.C;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Tensor x = random_tensor(d.shape(), seed), w = random_tensor({C}, seed + 1), b = random_tensor({C}, seed + 2);
  Tensor out = f32(d.shape()), mean = f32({C}), rstd = f32({C});
  Tensor rm = zeros({C}), rv = Tensor::from_vector(Vec(C, 1.f), {C});
  auto train = [&](const Tensor& o, const Tensor& m, const Tensor& s, const Tensor& r_m, const Tensor& r_v,
                   const Tensor& in, const Tensor& wt, const Tensor& bs, kernels::BatchNormOptions opt = {}) {
    kernels::batchnorm_forward_train(o, m, s, r_m, r_v, in, wt, bs, opt, Stream());
  };
  REQUIRE_NOTHROW(train(out, mean, rstd, rm, rv, x, w, b));

  Tensor short_c = f32({C - 1});
  REQUIRE_THROWS_WITH(train(out, mean, rstd, rm, rv, x, short_c, b), Catch::Contains("weight has 4 elements"));
  REQUIRE_THROWS_WITH(train(out, mean, rstd, rm, rv, x, w, short_c), Catch::Contains("bias"));
  REQUIRE_THROWS_WITH(train(out, short_c, rstd, rm, rv, x, w, b), Catch::Contains("save_mean"));
  REQUIRE_THROWS_WITH(train(out, mean, short_c, rm, rv, x, w, b), Catch::Contains("save_rstd"));
  REQUIRE_THROWS_WITH(train(out, mean, rstd, short_c, rv, x, w, b), Catch::Contains("running_mean"));
  REQUIRE_THROWS_WITH(train(out, mean, rstd, rm, short_c, x, w, b), Catch::Contains("running_var"));
  // Same element count, other shape: out must be inp's shape.
  REQUIRE_THROWS_WITH(train(f32({d.N, C, d.W, d.H}), mean, rstd, rm, rv, x, w, b), Catch::Contains("out is"));
  REQUIRE_THROWS_WITH(train(out, mean, rstd, rm, rv, f32({d.numel()}), w, b), Catch::Contains("expected (N, C)"));
  REQUIRE_THROWS_WITH(train(out, mean, rstd, rm, rv, x, w, b, {.eps = 0.f}), Catch::Contains("eps"));
  REQUIRE_THROWS_WITH(train(out, mean, rstd, rm, rv, x, w, b, {.momentum = 1.5f}), Catch::Contains("momentum"));
  REQUIRE_THROWS_WITH(train(x, mean, rstd, rm, rv, x, w, b), Catch::Contains("out overlaps inp"));
  REQUIRE_THROWS(train(out, mean, rstd, rm, rv, Tensor::zeros(d.shape(), DType::i32, Device::cpu()), w, b));
  REQUIRE_THROWS(train(out, Tensor::empty({C}, DType::i32, Device::cpu()), rstd, rm, rv, x, w, b));
  REQUIRE_THROWS(train(out, mean, rstd, rm, rv, Tensor(), w, b));

  REQUIRE_THROWS_WITH(kernels::batchnorm_forward_eval(out, x, w, b, rm, short_c, {}, Stream()),
                      Catch::Contains("running_var"));
  REQUIRE_THROWS_WITH(kernels::batchnorm_forward_eval(f32({d.numel()}), x, w, b, rm, rv, {}, Stream()),
                      Catch::Contains("out is"));

  Tensor dinp = f32(d.shape()), dw = zeros({C}), db = zeros({C});
  Tensor dy = random_tensor(d.shape(), seed + 3);
  REQUIRE_NOTHROW(kernels::batchnorm_backward(dinp, dw, db, dy, x, w, mean, rstd, Stream()));
  REQUIRE_THROWS_WITH(kernels::batchnorm_backward(dinp, short_c, db, dy, x, w, mean, rstd, Stream()),
                      Catch::Contains("dweight"));
  REQUIRE_THROWS_WITH(kernels::batchnorm_backward(f32({d.N, C}), dw, db, dy, x, w, mean, rstd, Stream()),
                      Catch::Contains("dinp is"));
  REQUIRE_THROWS_WITH(kernels::batchnorm_backward(x, dw, db, dy, x, w, mean, rstd, Stream()),
                      Catch::Contains("dinp overlaps inp"));
}
