// CUDA BatchNorm against the CPU twin in f32, bf16 with bf16 parameters and
// bf16 with f32 parameters: odd sizes, 2-D and 3-D inputs, channels of more
// values than a block has threads, one value per channel (n = 1) and an
// empty batch (n = 0); poisoned outputs, dweight/dbias accumulated onto
// non-zero values, running statistics, eval; then eval in place, dinp over
// dout and bitwise repeatability.
#include <cmath>
#include <cstring>
#include <utility>

#include "kernels/batchnorm.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;

// The dtypes of the activations and of weight, bias and their gradients.
struct Precision {
  DType act, param;
};
const Precision kPrecisions[] = {{DType::f32, DType::f32}, {DType::bf16, DType::bf16}, {DType::bf16, DType::f32}};

// Rounding of a stored value: tight for f32, bf16's half ulp with room.
double tolerance(DType dtype) { return dtype == DType::f32 ? 1e-5 : 1e-2; }

// What a tensor of `dtype` holds of v.
Vec stored(Vec v, DType dtype) { return dtype == DType::bf16 ? rounded_to_bf16(std::move(v)) : v; }

struct Dims {
  Shape shape;
  int64_t N() const { return shape[0]; }
  int64_t C() const { return shape[1]; }
  int64_t numel() const { return shape_numel(shape); }
  int64_t HW() const {  // the product of the dimensions after C
    int64_t hw = 1;
    for (size_t i = 2; i < shape.size(); i++) hw *= shape[i];
    return hw;
  }
  int64_t count() const { return N() * HW(); }  // values per channel
};

// Odd everywhere; (N, C) and (N, C, L); one value per channel; an empty
// batch; channels of 1584 and 73,920 values (several per thread, several
// chunks of the normalize kernel, and a tail).
const std::vector<Dims> kDims = {{{3, 5, 7, 3}},    {{1, 1, 1, 1}},    {{1, 3, 1, 1}},   {{2, 3, 1, 1}},
                                 {{0, 3, 2, 2}},    {{7, 33, 2, 3}},   {{2, 1, 31, 33}}, {{37, 17}},
                                 {{5, 3, 11}},      {{16, 17, 9, 11}}, {{64, 3, 33, 35}}};

struct Inputs {
  Vec x, w, b, dy, dw0, db0, rm0, rv0;
};

// Fresh inputs, rounded to the dtypes the GPU stores, so that both sides
// see the same values. An offset mean, so that cancellation would show.
Inputs random_inputs(const Dims& d, Precision pr, uint64_t seed) {
  const int64_t C = d.C();
  return {stored(random_vector(d.numel(), seed, -2.f, 3.f), pr.act),
          stored(random_vector(C, seed + 1, -1.5f, 1.5f), pr.param),
          stored(random_vector(C, seed + 2), pr.param),
          stored(random_vector(d.numel(), seed + 3), pr.act),
          stored(random_vector(C, seed + 4), pr.param),
          stored(random_vector(C, seed + 5), pr.param),
          random_vector(C, seed + 6),
          random_vector(C, seed + 7, 0.5f, 2.f)};
}

struct Outputs {
  Vec out, mean, rstd, rm, rv, dinp, dw, db, eval;
};

const kernels::BatchNormOptions kOptions{.eps = 1e-3f, .momentum = 0.37f};

Tensor cpu_f32(Shape shape) { return Tensor::empty(shape, DType::f32, Device::cpu()); }

// Training forward, backward from its own statistics, and eval on the
// initial running statistics.
Outputs run_cpu(const Inputs& in, const Dims& d) {
  const int64_t C = d.C();
  Tensor x = Tensor::from_vector(in.x, d.shape), w = Tensor::from_vector(in.w, {C});
  Tensor b = Tensor::from_vector(in.b, {C});
  Tensor out = cpu_f32(d.shape), mean = cpu_f32({C}), rstd = cpu_f32({C}), dinp = cpu_f32(d.shape);
  Tensor eval = cpu_f32(d.shape);
  Tensor rm = Tensor::from_vector(in.rm0, {C}), rv = Tensor::from_vector(in.rv0, {C});
  Tensor dw = Tensor::from_vector(in.dw0, {C}), db = Tensor::from_vector(in.db0, {C});
  kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, x, w, b, kOptions, Stream());
  kernels::batchnorm_backward(dinp, dw, db, Tensor::from_vector(in.dy, d.shape), x, w, mean, rstd, Stream());
  kernels::batchnorm_forward_eval(eval, x, w, b, Tensor::from_vector(in.rm0, {C}), Tensor::from_vector(in.rv0, {C}),
                                  kOptions, Stream());
  return {out.to_vector(), mean.to_vector(), rstd.to_vector(), rm.to_vector(), rv.to_vector(),
          dinp.to_vector(), dw.to_vector(),  db.to_vector(),   eval.to_vector()};
}

// separate: every output in its own poisoned (NaN) tensor. in_place: dinp
// over dout, and eval's out over (a copy of) its inp.
enum class Placement { separate, in_place };

// The same three calls on the GPU. Every tensor is made before the first
// launch and lives until the stream is synchronized: the caching allocator
// hands a freed block out again at once, and make_tensor copies on another
// stream.
Outputs run_gpu(const Inputs& in, const Dims& d, Precision pr, Placement where, const Stream& stream) {
  Device gpu = stream.device();
  const int64_t C = d.C(), n = d.numel();
  auto act = [&](const Vec& v) { return make_tensor(v, d.shape, pr.act, gpu); };
  auto param = [&](const Vec& v) { return make_tensor(v, {C}, pr.param, gpu); };
  auto stat = [&](const Vec& v) { return make_tensor(v, {C}, DType::f32, gpu); };
  Tensor x = act(in.x), dy = act(in.dy), w = param(in.w), b = param(in.b);
  Tensor out = act(Vec(n, NAN)), mean = stat(Vec(C, NAN)), rstd = stat(Vec(C, NAN));
  Tensor rm = stat(in.rm0), rv = stat(in.rv0), rm_eval = stat(in.rm0), rv_eval = stat(in.rv0);
  Tensor dw = param(in.dw0), db = param(in.db0);
  Tensor dinp = where == Placement::in_place ? dy : act(Vec(n, NAN));
  Tensor eval = where == Placement::in_place ? act(in.x) : act(Vec(n, NAN));
  Tensor eval_inp = where == Placement::in_place ? eval : x;

  kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, x, w, b, kOptions, stream);
  kernels::batchnorm_backward(dinp, dw, db, dy, x, w, mean, rstd, stream);
  kernels::batchnorm_forward_eval(eval, eval_inp, w, b, rm_eval, rv_eval, kOptions, stream);
  stream.synchronize();
  return {out.to_vector(), mean.to_vector(), rstd.to_vector(), rm.to_vector(), rv.to_vector(),
          dinp.to_vector(), dw.to_vector(),  db.to_vector(),   eval.to_vector()};
}

// Per-value scales of the rounding error (the sums of |terms| behind each
// result, as tests/kernels/batchnorm.cpp builds them): a relative error
// would be at the mercy of cancellation (n = 2 gives xhat = +-1 and a dinp
// of rounding noise).
struct Scales {
  std::vector<double> out, mean, dinp, dw, db, eval;
};

Scales error_scales(const Inputs& in, const Outputs& cpu, const Dims& d) {
  const int64_t N = d.N(), C = d.C(), HW = d.HW(), count = d.count();
  Scales s{std::vector<double>(d.numel()), std::vector<double>(C), std::vector<double>(d.numel()),
           std::vector<double>(C), std::vector<double>(C), std::vector<double>(d.numel())};
  auto at = [&](int64_t n, int64_t c, int64_t i) { return (n * C + c) * HW + i; };
  for (int64_t c = 0; c < C; c++) {
    double m = cpu.mean[c], r = cpu.rstd[c], w = std::fabs(in.w[c]), b = std::fabs(in.b[c]);
    double eval_r = 1 / std::sqrt(static_cast<double>(in.rv0[c]) + kOptions.eps);
    double dy_mean = 0, dyx_mean = 0;
    s.dw[c] = std::fabs(in.dw0[c]);
    s.db[c] = std::fabs(in.db0[c]);
    s.mean[c] = 1e-30;
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < HW; i++) {
        double x = in.x[at(n, c, i)], dy = in.dy[at(n, c, i)], xhat = (x - m) * r;
        double xhat_scale = std::fabs(xhat) + (std::fabs(x) + std::fabs(m)) * r;
        s.out[at(n, c, i)] = xhat_scale * w + b;
        s.eval[at(n, c, i)] = (std::fabs(x) + std::fabs(in.rm0[c])) * eval_r * w + b;
        s.mean[c] += std::fabs(x) / count;
        s.dw[c] += std::fabs(dy) * xhat_scale;
        s.db[c] += std::fabs(dy);
        dy_mean += dy / count;
        dyx_mean += dy * xhat / count;
      }
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < HW; i++) {
        double x = in.x[at(n, c, i)], xhat_scale = std::fabs((x - m) * r) + (std::fabs(x) + std::fabs(m)) * r;
        s.dinp[at(n, c, i)] =
            w * r * (std::fabs(in.dy[at(n, c, i)]) + std::fabs(dy_mean) + xhat_scale * std::fabs(dyx_mean));
      }
  }
  return s;
}

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

std::string describe(const Dims& d, Precision pr) {
  return "shape=" + shape_str(d.shape) + " act=" + dtype_name(pr.act) + " param=" + dtype_name(pr.param);
}

}  // namespace

TEST_CASE("cuda batchnorm matches the cpu twin", "[gpu][batchnorm]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (Precision pr : kPrecisions) {
    for (const Dims& d : kDims) {
      uint64_t seed = fresh_seed();
      INFO(describe(d, pr) << " seed=" << seed);
      Inputs in = random_inputs(d, pr, seed);
      Outputs want = run_cpu(in, d);
      Outputs got = run_gpu(in, d, pr, Placement::separate, stream);
      for (const Vec* v : {&got.out, &got.mean, &got.rstd, &got.rm, &got.rv, &got.dinp, &got.dw, &got.db, &got.eval})
        REQUIRE(all_finite(*v));
      Scales scale = error_scales(in, want, d);
      const double act_tol = tolerance(pr.act), param_tol = tolerance(pr.param);
      REQUIRE(scaled_error(got.out, want.out, scale.out) <= act_tol);
      REQUIRE(scaled_error(got.dinp, want.dinp, scale.dinp) <= act_tol);
      REQUIRE(scaled_error(got.eval, want.eval, scale.eval) <= act_tol);
      REQUIRE(scaled_error(got.dw, want.dw, scale.dw) <= param_tol);
      REQUIRE(scaled_error(got.db, want.db, scale.db) <= param_tol);
      // The statistics are f32 from fp64 sums on both sides: the same
      // numbers up to the order of the sums.
      REQUIRE(scaled_error(got.mean, want.mean, scale.mean) <= 1e-6);
      REQUIRE(rel_error(got.rstd, want.rstd) <= 1e-6);
      REQUIRE(rel_error(got.rm, want.rm) <= 1e-6);
      REQUIRE(rel_error(got.rv, want.rv) <= 1e-6);
    }
  }
}

TEST_CASE("cuda batchnorm with one value per channel: out = bias, dinp = 0, running_var kept", "[gpu][batchnorm]") {
  Stream stream = Stream::create(Device::cuda(0));
  const int64_t C = 17;
  for (Precision pr : kPrecisions) {
    for (Shape shape : {Shape{1, C, 1, 1}, Shape{1, C}}) {
      Dims d{shape};
      uint64_t seed = fresh_seed();
      INFO(describe(d, pr) << " seed=" << seed);
      Inputs in = random_inputs(d, pr, seed);
      Outputs want = run_cpu(in, d);
      Outputs got = run_gpu(in, d, pr, Placement::separate, stream);
      REQUIRE(same_bits(got.out, stored(in.b, pr.act)));
      REQUIRE(got.dinp == Vec(C, 0.f));  // by value: -0 where weight < 0
      REQUIRE(same_bits(got.mean, in.x));
      REQUIRE(same_bits(got.rstd, want.rstd));  // 1 / sqrt(eps)
      REQUIRE(same_bits(got.rm, want.rm));
      REQUIRE(same_bits(got.rv, in.rv0));
      REQUIRE(same_bits(got.dw, in.dw0));  // + dout * xhat, xhat = 0
      REQUIRE(same_bits(got.db, stored(want.db, pr.param)));
    }
  }
}

TEST_CASE("cuda batchnorm with an empty batch changes no statistic", "[gpu][batchnorm]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (Precision pr : kPrecisions) {
    for (Shape shape : {Shape{0, 5, 3, 3}, Shape{0, 5}}) {
      Dims d{shape};
      uint64_t seed = fresh_seed();
      INFO(describe(d, pr) << " seed=" << seed);
      Inputs in = random_inputs(d, pr, seed);
      Outputs want = run_cpu(in, d);
      Outputs got = run_gpu(in, d, pr, Placement::separate, stream);
      REQUIRE(same_bits(got.mean, Vec(d.C(), 0.f)));
      REQUIRE(same_bits(got.rstd, want.rstd));  // 1 / sqrt(eps)
      REQUIRE(same_bits(got.rm, in.rm0));
      REQUIRE(same_bits(got.rv, in.rv0));
      REQUIRE(same_bits(got.dw, in.dw0));
      REQUIRE(same_bits(got.db, in.db0));
    }
  }
}

TEST_CASE("cuda batchnorm is bitwise repeatable, in place or not", "[gpu][batchnorm]") {
  Stream stream = Stream::create(Device::cuda(0));
  // 32,736 values per channel: 32 per thread of a 1024-thread block.
  for (const Dims& d : {Dims{{32, 17, 31, 33}}, Dims{{1031, 33}}, Dims{{64, 3, 33, 35}}}) {
    for (Precision pr : kPrecisions) {
      uint64_t seed = fresh_seed();
      INFO(describe(d, pr) << " seed=" << seed);
      Inputs in = random_inputs(d, pr, seed);
      Outputs a = run_gpu(in, d, pr, Placement::separate, stream);
      Outputs b = run_gpu(in, d, pr, Placement::separate, stream);
      Outputs c = run_gpu(in, d, pr, Placement::in_place, stream);
      REQUIRE(all_finite(a.dinp));
      for (const Outputs* o : {&b, &c}) {
        REQUIRE(same_bits(o->out, a.out));
        REQUIRE(same_bits(o->mean, a.mean));
        REQUIRE(same_bits(o->rstd, a.rstd));
        REQUIRE(same_bits(o->rm, a.rm));
        REQUIRE(same_bits(o->rv, a.rv));
        REQUIRE(same_bits(o->dinp, a.dinp));
        REQUIRE(same_bits(o->dw, a.dw));
        REQUIRE(same_bits(o->db, a.db));
        REQUIRE(same_bits(o->eval, a.eval));
      }
    }
  }
}

TEST_CASE("cuda batchnorm takes f32 statistics and f32 or activation-dtype parameters", "[gpu][batchnorm]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  const int64_t N = 3, C = 5;
  auto zeros = [&](Shape shape, DType dtype) { return Tensor::zeros(shape, dtype, gpu); };
  // Every tensor lives to the end (queued kernels read them).
  Tensor x = zeros({N, C}, DType::bf16), out = zeros({N, C}, DType::bf16);
  Tensor x32 = zeros({N, C}, DType::f32), out32 = zeros({N, C}, DType::f32);
  Tensor mean = zeros({C}, DType::f32), rstd = zeros({C}, DType::f32), rm = zeros({C}, DType::f32);
  Tensor rv = zeros({C}, DType::f32), w32 = zeros({C}, DType::f32), b32 = zeros({C}, DType::f32);
  Tensor w16 = zeros({C}, DType::bf16), b16 = zeros({C}, DType::bf16), stat16 = zeros({C}, DType::bf16);
  REQUIRE_NOTHROW(kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, x, w16, b16, {}, stream));
  REQUIRE_NOTHROW(kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, x, w32, b32, {}, stream));
  REQUIRE_THROWS_WITH(kernels::batchnorm_forward_train(out, stat16, rstd, rm, rv, x, w32, b32, {}, stream),
                      Catch::Contains("save_mean must be f32"));
  REQUIRE_THROWS_WITH(kernels::batchnorm_forward_train(out, mean, rstd, rm, rv, x, w32, b16, {}, stream),
                      Catch::Contains("share one dtype"));
  REQUIRE_THROWS_WITH(kernels::batchnorm_forward_eval(out32, x32, w16, b16, rm, rv, {}, stream),
                      Catch::Contains("weight must be f32"));
  stream.synchronize();
}
