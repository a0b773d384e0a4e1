// CUDA pooling against the CPU twin, f32 and bf16: max with argmax (equal
// to the CPU's, ties, padding, -inf and NaN), average with
// count_include_pad both ways, global average with both output shapes;
// every backward into poisoned dinp; odd sizes, strides below, at and above
// the window, padding, an empty batch; and bitwise repeatability.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>

#include "kernels/pool.h"
#include "support/pool_shapes.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using kernels::Pool2dShape;

namespace {

using Vec = std::vector<float>;
using IVec = std::vector<int32_t>;

Shape in_shape(const Pool2dShape& s) { return {s.N, s.C, s.H, s.W}; }
Shape out_shape(const Pool2dShape& s) { return {s.N, s.C, s.P(), s.Q()}; }
int64_t in_numel(const Pool2dShape& s) { return s.N * s.C * s.H * s.W; }
int64_t out_numel(const Pool2dShape& s) { return s.N * s.C * s.P() * s.Q(); }

std::string str(const Pool2dShape& s) { return kernels::pool_detail::str(s); }

// The CPU tests' shapes, plus C = 17 on a ResNet-stem-like 3x3/2 pooling
// and overlapping 2x2/1 windows.
std::vector<Pool2dShape> all_shapes() {
  std::vector<Pool2dShape> shapes = kPoolShapes;
  shapes.push_back({.N = 2, .C = 17, .H = 33, .W = 31, .R = 3, .S = 3, .stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1});
  shapes.push_back({.N = 3, .C = 3, .H = 15, .W = 17, .R = 2, .S = 2, .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1});
  return shapes;
}
const std::vector<Pool2dShape> kShapes = all_shapes();

// Values from {0, 1, 2}: ties in every window.
Vec tied_values(int64_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  Vec v(n);
  for (auto& x : v) x = static_cast<float>(gen() % 3);
  return v;
}

Vec stored(Vec v, DType dtype) { return dtype == DType::bf16 ? rounded_to_bf16(std::move(v)) : v; }

double tolerance(DType dtype) { return dtype == DType::f32 ? 1e-6 : 1e-2; }

IVec ints(const Tensor& t) {
  Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  return IVec(host.data_as<int32_t>(), host.data_as<int32_t>() + host.numel());
}

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Equal values, NaN equal to NaN (a max over a NaN is a NaN of any payload).
bool same_values(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
  return true;
}

struct MaxResult {
  Vec out, dinp;
  IVec argmax;
};

MaxResult cpu_maxpool(const Vec& x, const Vec& dy, const Pool2dShape& s) {
  Tensor out = Tensor::empty(out_shape(s), DType::f32, Device::cpu());
  Tensor argmax = Tensor::empty(out_shape(s), DType::i32, Device::cpu());
  Tensor dinp = Tensor::empty(in_shape(s), DType::f32, Device::cpu());
  kernels::maxpool2d_forward(out, argmax, Tensor::from_vector(x, in_shape(s)), s, Stream());
  kernels::maxpool2d_backward(dinp, Tensor::from_vector(dy, out_shape(s)), argmax, s, Stream());
  return {out.to_vector(), dinp.to_vector(), ints(argmax)};
}

// Into poisoned outputs; the backward from the GPU's own argmax. Tensors
// live until the stream is synchronized (the caching allocator reuses a
// freed block at once).
MaxResult gpu_maxpool(const Vec& x, const Vec& dy, const Pool2dShape& s, DType dtype, const Stream& stream) {
  Device gpu = stream.device();
  Tensor gx = make_tensor(x, in_shape(s), dtype, gpu), gdy = make_tensor(dy, out_shape(s), dtype, gpu);
  Tensor out = make_tensor(Vec(out_numel(s), NAN), out_shape(s), dtype, gpu);
  Tensor argmax = make_int_tensor(IVec(out_numel(s), -7), out_shape(s), gpu);
  Tensor dinp = make_tensor(Vec(in_numel(s), NAN), in_shape(s), dtype, gpu);
  kernels::maxpool2d_forward(out, argmax, gx, s, stream);
  kernels::maxpool2d_backward(dinp, gdy, argmax, s, stream);
  stream.synchronize();
  return {out.to_vector(), dinp.to_vector(), ints(argmax)};
}

struct AvgResult {
  Vec out, dinp;
};

AvgResult cpu_avgpool(const Vec& x, const Vec& dy, const Pool2dShape& s, bool count_include_pad) {
  Tensor out = Tensor::empty(out_shape(s), DType::f32, Device::cpu());
  Tensor dinp = Tensor::empty(in_shape(s), DType::f32, Device::cpu());
  kernels::avgpool2d_forward(out, Tensor::from_vector(x, in_shape(s)), s, count_include_pad, Stream());
  kernels::avgpool2d_backward(dinp, Tensor::from_vector(dy, out_shape(s)), s, count_include_pad, Stream());
  return {out.to_vector(), dinp.to_vector()};
}

AvgResult gpu_avgpool(const Vec& x, const Vec& dy, const Pool2dShape& s, bool count_include_pad, DType dtype,
                      const Stream& stream) {
  Device gpu = stream.device();
  Tensor gx = make_tensor(x, in_shape(s), dtype, gpu), gdy = make_tensor(dy, out_shape(s), dtype, gpu);
  Tensor out = make_tensor(Vec(out_numel(s), NAN), out_shape(s), dtype, gpu);
  Tensor dinp = make_tensor(Vec(in_numel(s), NAN), in_shape(s), dtype, gpu);
  kernels::avgpool2d_forward(out, gx, s, count_include_pad, stream);
  kernels::avgpool2d_backward(dinp, gdy, s, count_include_pad, stream);
  stream.synchronize();
  return {out.to_vector(), dinp.to_vector()};
}

AvgResult cpu_global(const Vec& x, const Vec& dy, Shape shape, Shape oshape) {
  Tensor out = Tensor::empty(oshape, DType::f32, Device::cpu());
  Tensor dinp = Tensor::empty(shape, DType::f32, Device::cpu());
  kernels::global_avgpool_forward(out, Tensor::from_vector(x, shape), Stream());
  kernels::global_avgpool_backward(dinp, Tensor::from_vector(dy, oshape), Stream());
  return {out.to_vector(), dinp.to_vector()};
}

AvgResult gpu_global(const Vec& x, const Vec& dy, Shape shape, Shape oshape, DType dtype, const Stream& stream) {
  Device gpu = stream.device();
  Tensor gx = make_tensor(x, shape, dtype, gpu), gdy = make_tensor(dy, oshape, dtype, gpu);
  Tensor out = make_tensor(Vec(shape_numel(oshape), NAN), oshape, dtype, gpu);
  Tensor dinp = make_tensor(Vec(shape_numel(shape), NAN), shape, dtype, gpu);
  kernels::global_avgpool_forward(out, gx, stream);
  kernels::global_avgpool_backward(dinp, gdy, stream);
  stream.synchronize();
  return {out.to_vector(), dinp.to_vector()};
}

enum class Values { random, tied };

}  // namespace

TEST_CASE("cuda maxpool2d matches the cpu twin: max, argmax, backward", "[gpu][pool]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Pool2dShape& s : kShapes) {
      for (Values values : {Values::random, Values::tied}) {
        uint64_t seed = fresh_seed();
        INFO(str(s) << " dtype=" << dtype_name(dtype) << " tied=" << (values == Values::tied) << " seed=" << seed);
        // Both sides see the same (bf16-rounded) values, so the same
        // comparisons pick the same winners.
        Vec x = stored(values == Values::tied ? tied_values(in_numel(s), seed)
                                               : random_vector(in_numel(s), seed, -2.f, 3.f),
                       dtype);
        Vec dy = stored(random_vector(out_numel(s), seed + 1), dtype);
        MaxResult want = cpu_maxpool(x, dy, s);
        MaxResult got = gpu_maxpool(x, dy, s, dtype, stream);
        REQUIRE(all_finite(got.out));
        REQUIRE(all_finite(got.dinp));
        REQUIRE(same_bits(got.out, want.out));  // a maximum is one of the inputs
        REQUIRE(got.argmax == want.argmax);
        REQUIRE(rel_error(got.dinp, want.dinp) <= tolerance(dtype));
      }
    }
  }
}

TEST_CASE("cuda maxpool2d: padding never wins, -inf and NaN as on the cpu", "[gpu][pool]") {
  Stream stream = Stream::create(Device::cuda(0));
  const Pool2dShape s{.N = 1, .C = 2, .H = 4, .W = 5, .R = 3, .S = 3, .stride_h = 2, .stride_w = 2,
                      .pad_h = 1, .pad_w = 1};
  const int64_t n_in = in_numel(s), n_out = out_numel(s);
  for (DType dtype : {DType::f32, DType::bf16}) {
    // Constant planes: every window ties and the first real position wins.
    for (float v : {1.f, -5.f, -std::numeric_limits<float>::infinity()}) {
      INFO("dtype=" << dtype_name(dtype) << " value=" << v);
      MaxResult want = cpu_maxpool(Vec(n_in, v), Vec(n_out, 1.f), s);
      MaxResult got = gpu_maxpool(Vec(n_in, v), Vec(n_out, 1.f), s, dtype, stream);
      REQUIRE(same_values(got.out, want.out));
      REQUIRE(got.argmax == want.argmax);
      REQUIRE(got.dinp == want.dinp);
    }
    // A NaN wins the windows that hold it; the others do not see it.
    uint64_t seed = fresh_seed();
    INFO("dtype=" << dtype_name(dtype) << " seed=" << seed);
    Vec x = stored(random_vector(n_in, seed), dtype);
    x[2 * s.W + 2] = NAN;
    x[n_in - 1] = NAN;
    Vec dy = stored(random_vector(n_out, seed + 1), dtype);
    MaxResult want = cpu_maxpool(x, dy, s);
    MaxResult got = gpu_maxpool(x, dy, s, dtype, stream);
    REQUIRE(same_values(got.out, want.out));
    REQUIRE(got.argmax == want.argmax);
    REQUIRE(rel_error(got.dinp, want.dinp) <= tolerance(dtype));
  }
}

TEST_CASE("cuda avgpool2d matches the cpu twin, count_include_pad both ways", "[gpu][pool]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Pool2dShape& s : kShapes) {
      for (bool include_pad : {true, false}) {
        uint64_t seed = fresh_seed();
        INFO(str(s) << " dtype=" << dtype_name(dtype) << " count_include_pad=" << include_pad << " seed=" << seed);
        Vec x = stored(random_vector(in_numel(s), seed, -2.f, 3.f), dtype);
        Vec dy = stored(random_vector(out_numel(s), seed + 1), dtype);
        AvgResult want = cpu_avgpool(x, dy, s, include_pad);
        AvgResult got = gpu_avgpool(x, dy, s, include_pad, dtype, stream);
        REQUIRE(all_finite(got.out));
        REQUIRE(all_finite(got.dinp));
        REQUIRE(rel_error(got.out, want.out) <= tolerance(dtype));
        REQUIRE(rel_error(got.dinp, want.dinp) <= tolerance(dtype));
      }
    }
  }
}

TEST_CASE("cuda global_avgpool matches the cpu twin", "[gpu][pool]") {
  Stream stream = Stream::create(Device::cuda(0));
  const std::vector<Shape> shapes = {{3, 5, 7, 3}, {1, 1, 1, 1},  {0, 2, 3, 3},   {2, 33, 1, 31},
                                     {4, 17, 7, 7}, {1, 3, 64, 67}, {1, 2, 224, 224}};
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Shape& shape : shapes) {
      for (bool flat : {true, false}) {
        uint64_t seed = fresh_seed();
        INFO("shape=" << shape_str(shape) << " out (N, C)=" << flat << " dtype=" << dtype_name(dtype)
                      << " seed=" << seed);
        const int64_t N = shape[0], C = shape[1];
        Shape oshape = flat ? Shape{N, C} : Shape{N, C, 1, 1};
        Vec x = stored(random_vector(shape_numel(shape), seed, -2.f, 3.f), dtype);
        Vec dy = stored(random_vector(N * C, seed + 1), dtype);
        AvgResult want = cpu_global(x, dy, shape, oshape);
        AvgResult got = gpu_global(x, dy, shape, oshape, dtype, stream);
        REQUIRE(all_finite(got.out));
        REQUIRE(all_finite(got.dinp));
        REQUIRE(rel_error(got.out, want.out) <= tolerance(dtype));
        REQUIRE(rel_error(got.dinp, want.dinp) <= tolerance(dtype));
      }
    }
  }
}

TEST_CASE("cuda pools are bitwise repeatable", "[gpu][pool]") {
  Stream stream = Stream::create(Device::cuda(0));
  // Overlapping windows (stride 1 < window 3), so backward values gather
  // from up to nine outputs.
  const Pool2dShape s{.N = 8, .C = 17, .H = 57, .W = 55, .R = 3, .S = 3, .stride_h = 1, .stride_w = 1,
                      .pad_h = 1, .pad_w = 1};
  for (DType dtype : {DType::f32, DType::bf16}) {
    uint64_t seed = fresh_seed();
    INFO("dtype=" << dtype_name(dtype) << " seed=" << seed);
    Vec x = stored(random_vector(in_numel(s), seed), dtype), dy = stored(random_vector(out_numel(s), seed + 1), dtype);
    MaxResult max_a = gpu_maxpool(x, dy, s, dtype, stream), max_b = gpu_maxpool(x, dy, s, dtype, stream);
    REQUIRE(all_finite(max_a.dinp));
    REQUIRE(same_bits(max_a.out, max_b.out));
    REQUIRE(max_a.argmax == max_b.argmax);
    REQUIRE(same_bits(max_a.dinp, max_b.dinp));
    for (bool include_pad : {true, false}) {
      AvgResult a = gpu_avgpool(x, dy, s, include_pad, dtype, stream);
      AvgResult b = gpu_avgpool(x, dy, s, include_pad, dtype, stream);
      REQUIRE(all_finite(a.dinp));
      REQUIRE(same_bits(a.out, b.out));
      REQUIRE(same_bits(a.dinp, b.dinp));
    }
    Shape shape = in_shape(s);
    Vec gdy = stored(random_vector(s.N * s.C, seed + 2), dtype);
    AvgResult a = gpu_global(x, gdy, shape, {s.N, s.C}, dtype, stream);
    AvgResult b = gpu_global(x, gdy, shape, {s.N, s.C}, dtype, stream);
    REQUIRE(same_bits(a.out, b.out));
    REQUIRE(same_bits(a.dinp, b.dinp));
  }
}
