// CPU pooling against float64 references (max with argmax, average with
// count_include_pad both ways, global average; forward and backward),
// PyTorch's floor-mode sizes, ties, padding that never wins, NaN, float64
// finite-difference checks of every backward, and argument checks.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "kernels/pool.h"
#include "support/pool_shapes.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using kernels::Pool2dShape;

namespace {

using Vec = std::vector<float>;
using IVec = std::vector<int32_t>;

Tensor f32(Shape shape) { return Tensor::empty(shape, DType::f32, Device::cpu()); }
Tensor i32(Shape shape) { return Tensor::empty(shape, DType::i32, Device::cpu()); }
Shape in_shape(const Pool2dShape& s) { return {s.N, s.C, s.H, s.W}; }
Shape out_shape(const Pool2dShape& s) { return {s.N, s.C, s.P(), s.Q()}; }

IVec ints(const Tensor& t) { return IVec(t.data_as<int32_t>(), t.data_as<int32_t>() + t.numel()); }

std::string str(const Pool2dShape& s) { return kernels::pool_detail::str(s); }

const std::vector<Pool2dShape>& kShapes = kPoolShapes;

// n distinct values 0.05 apart, shuffled: no ties, and a +-1e-2 finite
// difference step never changes which is the largest.
Vec distinct_values(int64_t n, uint64_t seed) {
  std::vector<int64_t> k(n);
  std::iota(k.begin(), k.end(), 0);
  std::shuffle(k.begin(), k.end(), std::mt19937_64(seed));
  Vec v(n);
  for (int64_t i = 0; i < n; i++) v[i] = 0.05f * static_cast<float>(k[i] - n / 2);
  return v;
}

// Values from {0, 1, 2}: ties everywhere.
Vec tied_values(int64_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  Vec v(n);
  for (auto& x : v) x = static_cast<float>(gen() % 3);
  return v;
}

// Calls f(h, w) for the real input positions under output (p, q), row-major,
// walking the whole padded window.
template <typename F>
void for_window(const Pool2dShape& s, int64_t p, int64_t q, F f) {
  for (int64_t r = 0; r < s.R; r++)
    for (int64_t c = 0; c < s.S; c++) {
      int64_t h = p * s.stride_h - s.pad_h + r, w = q * s.stride_w - s.pad_w + c;
      if (h >= 0 && h < s.H && w >= 0 && w < s.W) f(h, w);
    }
}

struct MaxReference {
  std::vector<double> out, dinp;
  IVec argmax;
};

// float64 max pooling: the first strictly greatest real value of each
// window; dinp[argmax] += dout.
MaxReference maxpool64(const Vec& x, const Vec& dy, const Pool2dShape& s) {
  const int64_t P = s.P(), Q = s.Q();
  MaxReference r;
  r.dinp.assign(s.N * s.C * s.H * s.W, 0.0);
  for (int64_t plane = 0; plane < s.N * s.C; plane++) {
    for (int64_t p = 0; p < P; p++)
      for (int64_t q = 0; q < Q; q++) {
        double best = -INFINITY;
        int64_t where = -1;
        for_window(s, p, q, [&](int64_t h, int64_t w) {
          double v = x[plane * s.H * s.W + h * s.W + w];
          if (where < 0 || v > best) {
            best = v;
            where = h * s.W + w;
          }
        });
        r.out.push_back(best);
        r.argmax.push_back(static_cast<int32_t>(where));
        r.dinp[plane * s.H * s.W + where] += dy[(plane * P + p) * Q + q];
      }
  }
  return r;
}

struct AvgReference {
  std::vector<double> out, dinp;
};

// float64 average pooling: the sum of the real values over R * S
// (count_include_pad) or over the number of real values.
AvgReference avgpool64(const Vec& x, const Vec& dy, const Pool2dShape& s, bool count_include_pad) {
  const int64_t P = s.P(), Q = s.Q();
  AvgReference r;
  r.dinp.assign(s.N * s.C * s.H * s.W, 0.0);
  for (int64_t plane = 0; plane < s.N * s.C; plane++) {
    for (int64_t p = 0; p < P; p++)
      for (int64_t q = 0; q < Q; q++) {
        double sum = 0;
        int64_t real = 0;
        for_window(s, p, q, [&](int64_t h, int64_t w) {
          sum += x[plane * s.H * s.W + h * s.W + w];
          real++;
        });
        double divisor = count_include_pad ? static_cast<double>(s.R * s.S) : static_cast<double>(real);
        r.out.push_back(sum / divisor);
        double g = dy[(plane * P + p) * Q + q] / divisor;
        for_window(s, p, q, [&](int64_t h, int64_t w) { r.dinp[plane * s.H * s.W + h * s.W + w] += g; });
      }
  }
  return r;
}

// The forwards on plain vectors: out only.
Vec maxpool(const Vec& x, const Pool2dShape& s) {
  Tensor out = f32(out_shape(s)), argmax = i32(out_shape(s));
  kernels::maxpool2d_forward(out, argmax, Tensor::from_vector(x, in_shape(s)), s, Stream());
  return out.to_vector();
}
Vec avgpool(const Vec& x, const Pool2dShape& s, bool count_include_pad) {
  Tensor out = f32(out_shape(s));
  kernels::avgpool2d_forward(out, Tensor::from_vector(x, in_shape(s)), s,
                             count_include_pad, Stream());
  return out.to_vector();
}

double objective(const Vec& out, const Vec& R) {
  double sum = 0;
  for (size_t i = 0; i < out.size(); i++) sum += static_cast<double>(out[i]) * R[i];
  return sum;
}

}  // namespace

TEST_CASE("pool output sizes are PyTorch's floor mode", "[kernels][pool]") {
  auto P = [](int64_t H, int64_t R, int64_t stride, int64_t pad) {
    return Pool2dShape{.H = H, .R = R, .stride_h = stride, .pad_h = pad}.P();
  };
  REQUIRE(P(7, 3, 2, 1) == 4);  // (7 + 2 - 3) / 2 + 1
  REQUIRE(P(8, 3, 2, 0) == 3);  // 5 / 2 rounds down: the last column is never pooled
  REQUIRE(P(5, 2, 2, 1) == 3);
  REQUIRE(P(4, 4, 3, 2) == 2);
  REQUIRE(P(1, 1, 1, 0) == 1);
  REQUIRE(P(224, 3, 2, 1) == 112);  // ResNet's stem max pool
  Pool2dShape s{.W = 6, .S = 3, .stride_w = 1, .pad_w = 1};
  REQUIRE(s.Q() == 6);
  // A pooling the checks refuse has no output, rather than a division by zero.
  REQUIRE(Pool2dShape{}.P() == 0);
  REQUIRE(P(2, 3, 1, 0) == 0);
}

TEST_CASE("cpu maxpool2d matches float64: forward, argmax, backward", "[kernels][pool]") {
  for (const Pool2dShape& s : kShapes) {
    uint64_t seed = fresh_seed();
    INFO(str(s) << " seed=" << seed);
    const int64_t n_in = s.N * s.C * s.H * s.W, n_out = s.N * s.C * s.P() * s.Q();
    Vec x = distinct_values(n_in, seed), dy = random_vector(n_out, seed + 1);
    MaxReference ref = maxpool64(x, dy, s);

    Tensor out = f32(out_shape(s)), argmax = i32(out_shape(s));
    kernels::maxpool2d_forward(out, argmax, Tensor::from_vector(x, in_shape(s)), s, Stream());
    // dinp starts as NaN: it must be overwritten.
    Tensor dinp = Tensor::from_vector(Vec(n_in, NAN), in_shape(s));
    kernels::maxpool2d_backward(dinp, Tensor::from_vector(dy, out_shape(s)), argmax, s, Stream());

    REQUIRE(all_finite(out.to_vector()));
    REQUIRE(all_finite(dinp.to_vector()));
    REQUIRE(max_abs_diff(out.to_vector(), ref.out) == 0);  // a maximum is exact
    REQUIRE(ints(argmax) == ref.argmax);
    REQUIRE(rel_error(dinp.to_vector(), ref.dinp) <= 1e-6);
  }
}

TEST_CASE("cpu maxpool2d: first of ties, padding never wins, -inf and NaN", "[kernels][pool]") {
  // Ties everywhere, against the float64 reference (first in row-major order).
  for (const Pool2dShape& s : kShapes) {
    uint64_t seed = fresh_seed();
    INFO(str(s) << " seed=" << seed);
    const int64_t n_in = s.N * s.C * s.H * s.W, n_out = s.N * s.C * s.P() * s.Q();
    Vec x = tied_values(n_in, seed);
    MaxReference ref = maxpool64(x, Vec(n_out, 1.f), s);
    Tensor out = f32(out_shape(s)), argmax = i32(out_shape(s));
    kernels::maxpool2d_forward(out, argmax, Tensor::from_vector(x, in_shape(s)), s, Stream());
    REQUIRE(max_abs_diff(out.to_vector(), ref.out) == 0);
    REQUIRE(ints(argmax) == ref.argmax);
  }

  // Constant planes with padding: every window ties, and the first REAL
  // position wins. Padding is -inf, not 0: negative values and -inf stay.
  const Pool2dShape s{.N = 1, .C = 1, .H = 4, .W = 5, .R = 3, .S = 3, .stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1};
  const int64_t n_in = s.H * s.W, P = s.P(), Q = s.Q();
  IVec first_real;
  for (int64_t p = 0; p < P; p++)
    for (int64_t q = 0; q < Q; q++)
      first_real.push_back(static_cast<int32_t>(std::max<int64_t>(p * 2 - 1, 0) * s.W + std::max<int64_t>(q * 2 - 1, 0)));
  for (float v : {1.f, -5.f, -std::numeric_limits<float>::infinity()}) {
    INFO("value=" << v);
    Tensor out = f32(out_shape(s)), argmax = i32(out_shape(s));
    kernels::maxpool2d_forward(out, argmax, Tensor::from_vector(Vec(n_in, v), in_shape(s)), s, Stream());
    REQUIRE(out.to_vector() == Vec(P * Q, v));
    REQUIRE(ints(argmax) == first_real);
  }

  // A NaN wins its windows (PyTorch CPU); the other windows do not see it.
  Vec x = distinct_values(n_in, fresh_seed());
  const int64_t nan_at = 2 * s.W + 2;  // (2, 2): under outputs (1, 1) only
  x[nan_at] = NAN;
  Tensor out = f32(out_shape(s)), argmax = i32(out_shape(s));
  kernels::maxpool2d_forward(out, argmax, Tensor::from_vector(x, in_shape(s)), s, Stream());
  MaxReference ref = maxpool64(x, Vec(P * Q, 1.f), s);
  Vec got = out.to_vector();
  IVec where = ints(argmax);
  for (int64_t p = 0; p < P; p++)
    for (int64_t q = 0; q < Q; q++) {
      INFO("p=" << p << " q=" << q);
      int64_t i = p * Q + q;
      bool covers = p * 2 - 1 <= 2 && 2 <= p * 2 + 1 && q * 2 - 1 <= 2 && 2 <= q * 2 + 1;
      if (covers) {
        REQUIRE(std::isnan(got[i]));
        REQUIRE(where[i] == nan_at);
      } else {
        REQUIRE(got[i] == ref.out[i]);
        REQUIRE(where[i] == ref.argmax[i]);
      }
    }
}

TEST_CASE("cpu avgpool2d matches float64, count_include_pad both ways", "[kernels][pool]") {
  for (const Pool2dShape& s : kShapes) {
    for (bool include_pad : {true, false}) {
      uint64_t seed = fresh_seed();
      INFO(str(s) << " count_include_pad=" << include_pad << " seed=" << seed);
      const int64_t n_in = s.N * s.C * s.H * s.W, n_out = s.N * s.C * s.P() * s.Q();
      Vec x = random_vector(n_in, seed, -2.f, 3.f), dy = random_vector(n_out, seed + 1);
      AvgReference ref = avgpool64(x, dy, s, include_pad);

      Tensor out = f32(out_shape(s));
      kernels::avgpool2d_forward(out, Tensor::from_vector(x, in_shape(s)), s, include_pad,
                                 Stream());
      Tensor dinp = Tensor::from_vector(Vec(n_in, NAN), in_shape(s));
      kernels::avgpool2d_backward(dinp, Tensor::from_vector(dy, out_shape(s)), s, include_pad,
                                  Stream());

      REQUIRE(all_finite(out.to_vector()));
      REQUIRE(all_finite(dinp.to_vector()));
      REQUIRE(rel_error(out.to_vector(), ref.out) <= 1e-6);
      REQUIRE(rel_error(dinp.to_vector(), ref.dinp) <= 1e-6);
    }
  }
}

TEST_CASE("cpu avgpool2d at padded edges, by hand", "[kernels][pool]") {
  // A 2x2 plane [[1, 2], [3, 4]], window 2x2, stride 1, padding 1: a 3x3
  // output whose corners see one real value, edges two, the centre four.
  const Pool2dShape s{.N = 1, .C = 1, .H = 2, .W = 2, .R = 2, .S = 2, .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1};
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, in_shape(s));
  Tensor out = f32(out_shape(s));
  kernels::avgpool2d_forward(out, x, s, /*count_include_pad=*/true, Stream());  // PyTorch's default: padding counts
  REQUIRE(out.to_vector() == Vec{0.25f, 0.75f, 0.5f, 1.f, 2.5f, 1.5f, 0.75f, 1.75f, 1.f});
  kernels::avgpool2d_forward(out, x, s, /*count_include_pad=*/false, Stream());
  REQUIRE(out.to_vector() == Vec{1.f, 1.5f, 2.f, 2.f, 2.5f, 3.f, 3.f, 3.5f, 4.f});

  // Backward of ones: each input gets 1/divisor from each of its 4 windows.
  Tensor dinp = f32(in_shape(s));
  kernels::avgpool2d_backward(dinp, Tensor::from_vector(Vec(9, 1.f), out_shape(s)), s, /*count_include_pad=*/true, Stream());
  REQUIRE(dinp.to_vector() == Vec(4, 1.f));
  kernels::avgpool2d_backward(dinp, Tensor::from_vector(Vec(9, 1.f), out_shape(s)), s,
                              /*count_include_pad=*/false, Stream());
  // Input (0, 0): windows with 1, 2, 2 and 4 real values.
  float want = 1.f + 0.5f + 0.5f + 0.25f;
  REQUIRE(dinp.to_vector() == Vec(4, want));
}

TEST_CASE("cpu global_avgpool matches float64", "[kernels][pool]") {
  for (Shape shape : {Shape{3, 5, 7, 3}, Shape{1, 1, 1, 1}, Shape{0, 2, 3, 3}, Shape{2, 33, 1, 31}, Shape{1, 2, 16, 16}}) {
    for (bool flat : {true, false}) {
      uint64_t seed = fresh_seed();
      INFO("shape=" << shape_str(shape) << " out (N, C)=" << flat << " seed=" << seed);
      const int64_t N = shape[0], C = shape[1], HW = shape[2] * shape[3];
      Shape oshape = flat ? Shape{N, C} : Shape{N, C, 1, 1};
      Vec x = random_vector(N * C * HW, seed, -2.f, 3.f), dy = random_vector(N * C, seed + 1);
      std::vector<double> out_want(N * C), dinp_want(N * C * HW);
      for (int64_t i = 0; i < N * C; i++) {
        double sum = 0;
        for (int64_t j = 0; j < HW; j++) sum += x[i * HW + j];
        out_want[i] = sum / HW;
        for (int64_t j = 0; j < HW; j++) dinp_want[i * HW + j] = static_cast<double>(dy[i]) / HW;
      }
      Tensor out = Tensor::from_vector(Vec(N * C, NAN), oshape);
      kernels::global_avgpool_forward(out, Tensor::from_vector(x, shape), Stream());
      Tensor dinp = Tensor::from_vector(Vec(N * C * HW, NAN), shape);
      kernels::global_avgpool_backward(dinp, Tensor::from_vector(dy, oshape), Stream());
      REQUIRE(all_finite(out.to_vector()));
      REQUIRE(all_finite(dinp.to_vector()));
      REQUIRE(rel_error(out.to_vector(), out_want) <= 1e-6);
      REQUIRE(rel_error(dinp.to_vector(), dinp_want) <= 1e-6);
    }
  }
}

TEST_CASE("cpu pool backwards match float64 finite differences", "[kernels][pool]") {
  const std::vector<Pool2dShape> shapes = {kShapes[0], kShapes[2], kShapes[3], kShapes[5], kShapes[9]};
  for (const Pool2dShape& s : shapes) {
    uint64_t seed = fresh_seed();
    INFO(str(s) << " seed=" << seed);
    const int64_t n_in = s.N * s.C * s.H * s.W, n_out = s.N * s.C * s.P() * s.Q();
    Vec R = random_vector(n_out, seed + 1);
    auto numeric = [&](Vec& x, auto forward) {
      return numerical_gradient(x, [&] { return objective(forward(x), R); });
    };

    // Max pooling without ties: the step never changes the winner.
    Vec x = distinct_values(n_in, seed);
    Tensor out = f32(out_shape(s)), argmax = i32(out_shape(s)), dinp = f32(in_shape(s));
    kernels::maxpool2d_forward(out, argmax, Tensor::from_vector(x, in_shape(s)), s, Stream());
    kernels::maxpool2d_backward(dinp, Tensor::from_vector(R, out_shape(s)), argmax, s, Stream());
    REQUIRE(rel_error(dinp.to_vector(), numeric(x, [&](const Vec& v) { return maxpool(v, s); })) <= 1e-2);

    for (bool include_pad : {true, false}) {
      INFO("count_include_pad=" << include_pad);
      Vec y = random_vector(n_in, seed + 2);
      kernels::avgpool2d_backward(dinp, Tensor::from_vector(R, out_shape(s)), s, include_pad,
                                  Stream());
      REQUIRE(rel_error(dinp.to_vector(), numeric(y, [&](const Vec& v) { return avgpool(v, s, include_pad); })) <=
              1e-2);
    }

    Vec z = random_vector(n_in, seed + 3);
    Vec Rg = random_vector(s.N * s.C, seed + 4);
    kernels::global_avgpool_backward(dinp, Tensor::from_vector(Rg, {s.N, s.C}), Stream());
    auto global = [&] {
      Tensor o = f32({s.N, s.C});
      kernels::global_avgpool_forward(o, Tensor::from_vector(z, in_shape(s)), Stream());
      return objective(o.to_vector(), Rg);
    };
    REQUIRE(rel_error(dinp.to_vector(), numerical_gradient(z, global)) <= 1e-2);
  }
}

TEST_CASE("cpu pool checks its arguments", "[kernels][pool]") {
  const Pool2dShape s{.N = 2, .C = 3, .H = 7, .W = 5, .R = 3, .S = 3, .stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1};
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Tensor x = random_tensor(in_shape(s), seed), out = f32(out_shape(s)), argmax = i32(out_shape(s));
  Tensor dinp = f32(in_shape(s)), dout = random_tensor(out_shape(s), seed + 1);
  auto max_fwd = [&](const Tensor& o, const Tensor& a, const Tensor& in, const Pool2dShape& shape) {
    kernels::maxpool2d_forward(o, a, in, shape, Stream());
  };
  REQUIRE_NOTHROW(max_fwd(out, argmax, x, s));
  REQUIRE_NOTHROW(kernels::maxpool2d_backward(dinp, dout, argmax, s, Stream()));

  // The pooling itself.
  Pool2dShape bad = s;
  bad.pad_h = 2;  // more than half of R = 3
  REQUIRE_THROWS_WITH(max_fwd(out, argmax, x, bad), Catch::Contains("at most half the window"));
  bad = s;
  bad.stride_w = 0;  // left at its default
  REQUIRE_THROWS_WITH(max_fwd(out, argmax, x, bad), Catch::Contains("strides must be >= 1"));
  bad = s;
  bad.R = 10;
  bad.pad_h = 0;  // 10 rows against 7
  REQUIRE_THROWS_WITH(max_fwd(out, argmax, x, bad), Catch::Contains("larger than the padded input"));
  bad = s;
  bad.S = 0;
  bad.pad_w = 0;
  REQUIRE_THROWS_WITH(max_fwd(out, argmax, x, bad), Catch::Contains("at least 1x1"));

  // Tensors against the pooling.
  REQUIRE_THROWS_WITH(max_fwd(out, argmax, random_tensor({s.N, s.C, s.H, s.W + 1}, seed), s), Catch::Contains("inp is"));
  REQUIRE_THROWS_WITH(max_fwd(f32({s.N, s.C, s.P() + 1, s.Q()}), argmax, x, s), Catch::Contains("out is"));
  REQUIRE_THROWS_WITH(max_fwd(out, f32(out_shape(s)), x, s), Catch::Contains("argmax must be"));
  REQUIRE_THROWS_WITH(max_fwd(out, i32({s.N * s.C * s.P() * s.Q()}), x, s), Catch::Contains("argmax is"));
  REQUIRE_THROWS(max_fwd(out, argmax, Tensor::zeros(in_shape(s), DType::i32, Device::cpu()), s));
  REQUIRE_THROWS_WITH(max_fwd(out, argmax, Tensor(), s), Catch::Contains("undefined inp"));
  REQUIRE_THROWS_WITH(kernels::maxpool2d_backward(f32(out_shape(s)), dout, argmax, s, Stream()),
                      Catch::Contains("dinp is"));
  // A corrupt argmax would write outside the plane: caught.
  Tensor far = make_int_tensor(IVec(argmax.numel(), static_cast<int32_t>(s.H * s.W)), out_shape(s));
  REQUIRE_THROWS_WITH(kernels::maxpool2d_backward(dinp, dout, far, s, Stream()),
                      Catch::Contains("outside an input plane"));
  // dinp over dout (same shapes with a 1x1 window).
  const Pool2dShape unit{.N = 2, .C = 3, .H = 4, .W = 4, .R = 1, .S = 1, .stride_h = 1, .stride_w = 1};
  Tensor both = random_tensor(in_shape(unit), seed), unit_argmax = i32(in_shape(unit));
  REQUIRE_THROWS_WITH(kernels::maxpool2d_backward(both, both, unit_argmax, unit, Stream()),
                      Catch::Contains("dinp overlaps dout"));
  REQUIRE_THROWS_WITH(kernels::avgpool2d_backward(both, both, unit, true, Stream()), Catch::Contains("dinp overlaps dout"));

  REQUIRE_THROWS_WITH(kernels::avgpool2d_forward(f32(in_shape(s)), x, s, true, Stream()), Catch::Contains("out is"));
  REQUIRE_THROWS_WITH(kernels::avgpool2d_backward(dinp, f32(in_shape(s)), s, true, Stream()), Catch::Contains("dout is"));
  REQUIRE_THROWS_WITH(kernels::avgpool2d_forward(out, x, bad, true, Stream()), Catch::Contains("at least 1x1"));

  Tensor gout = f32({s.N, s.C});
  REQUIRE_NOTHROW(kernels::global_avgpool_forward(gout, x, Stream()));
  REQUIRE_THROWS_WITH(kernels::global_avgpool_forward(gout, random_tensor({s.N, s.C, s.H}, seed), Stream()),
                      Catch::Contains("expected inp (N, C, H, W)"));
  REQUIRE_THROWS_WITH(kernels::global_avgpool_forward(f32({s.C, s.N}), x, Stream()), Catch::Contains("out is"));
  REQUIRE_THROWS_WITH(kernels::global_avgpool_forward(gout, f32({s.N, s.C, 0, 3}), Stream()),
                      Catch::Contains("H, W >= 1"));
  REQUIRE_THROWS_WITH(kernels::global_avgpool_backward(dinp, f32({s.N, s.C + 1}), Stream()), Catch::Contains("dout is"));
  Tensor g4 = random_tensor({s.N, s.C, 1, 1}, seed);
  REQUIRE_THROWS_WITH(kernels::global_avgpool_backward(g4, g4, Stream()), Catch::Contains("dinp overlaps dout"));
}
