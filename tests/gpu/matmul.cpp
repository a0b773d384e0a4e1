// CUDA matmul (cuBLASLt) against the CPU twin: f32 and bf16, every epilogue,
// the fused and the unfused paths, the gradient write semantics, empty
// dimensions and misaligned views.
#include <cmath>

#include "kernels/matmul.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::Epilogue;
using tandem::kernels::MatmulOptions;

namespace {

const char* epilogue_name(Epilogue e) {
  return e == Epilogue::none ? "none" : e == Epilogue::bias ? "bias" : "gelu_bias";
}

std::vector<float> poison(int64_t n) { return std::vector<float>(n, NAN); }

struct Dims {
  int64_t N, C, OC;
};
// OC % 8 == 0 takes the fused GELU epilogue (its aux leading dimension must
// be a multiple of 8); other OC take the unfused path. Includes empty
// dimensions, vectors (1) and GPT-2-like shapes.
const std::vector<Dims> kDims = {{0, 33, 7},     {1, 1, 1},       {1, 7, 33},       {7, 33, 1},
                                 {33, 7, 64},    {1000, 33, 7},   {64, 1031, 1000}, {1031, 1000, 64},
                                 {513, 768, 3072}, {100, 3072, 768}, {7, 0, 5},       {5, 7, 0}};

// One problem's inputs (rounded to the dtype), the CPU twin's results, and
// the same ops on absolute values: the scales for scaled_error.
struct Case {
  int64_t N, C, OC;
  DType dtype;
  Epilogue epilogue;
  std::vector<float> x, w, b, dout, dw0, db0;
  struct Results {
    Tensor out, pre, dinp, dweight, dbias;
  } cpu, scale;

  Case(Dims d, DType dtype_, Epilogue epilogue_, uint64_t seed)
      : N(d.N), C(d.C), OC(d.OC), dtype(dtype_), epilogue(epilogue_) {
    x = draw(N * C, seed, dtype), w = draw(OC * C, seed + 1, dtype), b = draw(OC, seed + 2, dtype);
    dout = draw(N * OC, seed + 3, dtype), dw0 = draw(OC * C, seed + 4, dtype), db0 = draw(OC, seed + 5, dtype);
    cpu = run_cpu(x, w, b, dout, dw0, db0, epilogue);
    // |gelu'| <= 1.13, so the scale of the GELU's input bounds its output too.
    Epilogue linear = epilogue == Epilogue::none ? Epilogue::none : Epilogue::bias;
    scale = run_cpu(abs_of(x), abs_of(w), abs_of(b), abs_of(dout), abs_of(dw0), abs_of(db0), linear);
  }

  MatmulOptions options(const Tensor& bias, const Tensor& pre_gelu, Epilogue e) const {
    MatmulOptions opts{.epilogue = e};
    if (e != Epilogue::none) opts.bias = bias;
    if (e == Epilogue::gelu_bias) opts.pre_gelu = pre_gelu;
    return opts;
  }
  MatmulOptions options(const Tensor& bias, const Tensor& pre_gelu) const { return options(bias, pre_gelu, epilogue); }

  Results run_cpu(const std::vector<float>& x_, const std::vector<float>& w_, const std::vector<float>& b_,
                  const std::vector<float>& dout_, const std::vector<float>& dw0_, const std::vector<float>& db0_,
                  Epilogue e) const {
    Results r;
    Tensor inp = Tensor::from_vector(x_, {N, C}), weight = Tensor::from_vector(w_, {OC, C});
    r.out = Tensor::empty({N, OC}, DType::f32, Device::cpu());
    r.pre = Tensor::empty({N, OC}, DType::f32, Device::cpu());
    kernels::matmul_forward(r.out, inp, weight, options(Tensor::from_vector(b_, {OC}), r.pre, e), Stream());
    if (e != Epilogue::gelu_bias) r.pre = r.out;  // the scale of pre_gelu is that of the linear output
    r.dinp = Tensor::empty({N, C}, DType::f32, Device::cpu());
    r.dweight = Tensor::from_vector(dw0_, {OC, C});
    r.dbias = Tensor::from_vector(db0_, {OC});
    kernels::matmul_backward(r.dinp, r.dweight, r.dbias, Tensor::from_vector(dout_, {N, OC}), inp, weight, Stream());
    return r;
  }
};

// Relative to the summed magnitudes: f32 differs from the CPU's OpenBLAS only
// in the order of additions; bf16 rounds every output to 8 bits (2^-9).
double tolerance(DType dtype) { return dtype == DType::f32 ? 1e-5 : 1e-2; }

}  // namespace

TEST_CASE("cuda matmul forward matches the cpu twin", "[gpu][matmul]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (Dims d : kDims) {
      for (Epilogue epilogue : {Epilogue::none, Epilogue::bias, Epilogue::gelu_bias}) {
        uint64_t seed = fresh_seed();
        INFO("dtype=" << dtype_name(dtype) << " N=" << d.N << " C=" << d.C << " OC=" << d.OC
                      << " epilogue=" << epilogue_name(epilogue) << " seed=" << seed);
        Case c(d, dtype, epilogue, seed);
        // Inputs are named so they outlive the synchronize (see tests/gpu/bias.cpp).
        Tensor inp = make_tensor(c.x, {d.N, d.C}, dtype, gpu), weight = make_tensor(c.w, {d.OC, d.C}, dtype, gpu);
        Tensor bias = make_tensor(c.b, {d.OC}, dtype, gpu);
        Tensor out = make_tensor(poison(d.N * d.OC), {d.N, d.OC}, dtype, gpu);
        Tensor pre = make_tensor(poison(d.N * d.OC), {d.N, d.OC}, dtype, gpu);
        kernels::matmul_forward(out, inp, weight, c.options(bias, pre), stream);
        stream.synchronize();
        auto got = out.to_vector();
        REQUIRE(all_finite(got));
        REQUIRE(scaled_error(got, c.cpu.out, c.scale.out) <= tolerance(dtype));
        if (epilogue == Epilogue::gelu_bias) {
          auto got_pre = pre.to_vector();
          REQUIRE(all_finite(got_pre));
          REQUIRE(scaled_error(got_pre, c.cpu.pre, c.scale.pre) <= tolerance(dtype));
        }
      }
    }
  }
}

TEST_CASE("cuda matmul backward matches the cpu twin", "[gpu][matmul]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (Dims d : kDims) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " N=" << d.N << " C=" << d.C << " OC=" << d.OC << " seed=" << seed);
      Case c(d, dtype, Epilogue::none, seed);
      // dinp is poisoned (it must be overwritten, never read); dweight and
      // dbias start from non-zero values (they must accumulate).
      Tensor dinp = make_tensor(poison(d.N * d.C), {d.N, d.C}, dtype, gpu);
      Tensor dweight = make_tensor(c.dw0, {d.OC, d.C}, dtype, gpu), dbias = make_tensor(c.db0, {d.OC}, dtype, gpu);
      Tensor dout = make_tensor(c.dout, {d.N, d.OC}, dtype, gpu), inp = make_tensor(c.x, {d.N, d.C}, dtype, gpu);
      Tensor weight = make_tensor(c.w, {d.OC, d.C}, dtype, gpu);
      kernels::matmul_backward(dinp, dweight, dbias, dout, inp, weight, stream);
      stream.synchronize();
      auto got_dinp = dinp.to_vector(), got_dweight = dweight.to_vector(), got_dbias = dbias.to_vector();
      REQUIRE(all_finite(got_dinp));
      REQUIRE(all_finite(got_dweight));
      REQUIRE(all_finite(got_dbias));
      REQUIRE(scaled_error(got_dinp, c.cpu.dinp, c.scale.dinp) <= tolerance(dtype));
      REQUIRE(scaled_error(got_dweight, c.cpu.dweight, c.scale.dweight) <= tolerance(dtype));
      REQUIRE(scaled_error(got_dbias, c.cpu.dbias, c.scale.dbias) <= tolerance(dtype));
    }
  }
}

// Views that start one element into their buffer: every pointer is only
// element-aligned (2 bytes for bf16), which rules out most cuBLASLt
// algorithms and, for the fused GELU, tests that alignment reaches the
// heuristic. Calls run twice so the second one uses the cached plan.
TEST_CASE("cuda matmul handles misaligned views", "[gpu][matmul]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  auto view_of = [&](const std::vector<float>& values, Shape shape, DType dtype) {
    std::vector<float> padded(values.size() + 1, NAN);
    std::copy(values.begin(), values.end(), padded.begin() + 1);
    return make_tensor(padded, {static_cast<int64_t>(padded.size())}, dtype, gpu).view(1, shape);
  };
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (Dims d : {Dims{33, 64, 96}, Dims{100, 7, 40}, Dims{17, 31, 13}}) {
      for (Epilogue epilogue : {Epilogue::bias, Epilogue::gelu_bias}) {
        uint64_t seed = fresh_seed();
        INFO("dtype=" << dtype_name(dtype) << " N=" << d.N << " C=" << d.C << " OC=" << d.OC
                      << " epilogue=" << epilogue_name(epilogue) << " seed=" << seed);
        Case c(d, dtype, epilogue, seed);
        Tensor inp = view_of(c.x, {d.N, d.C}, dtype), weight = view_of(c.w, {d.OC, d.C}, dtype);
        Tensor bias = view_of(c.b, {d.OC}, dtype);
        for (int run = 0; run < 2; run++) {
          Tensor out = view_of(poison(d.N * d.OC), {d.N, d.OC}, dtype);
          Tensor pre = view_of(poison(d.N * d.OC), {d.N, d.OC}, dtype);
          Tensor dinp = view_of(poison(d.N * d.C), {d.N, d.C}, dtype);
          Tensor dweight = view_of(c.dw0, {d.OC, d.C}, dtype), dbias = view_of(c.db0, {d.OC}, dtype);
          Tensor dout = view_of(c.dout, {d.N, d.OC}, dtype);
          kernels::matmul_forward(out, inp, weight, c.options(bias, pre), stream);
          kernels::matmul_backward(dinp, dweight, dbias, dout, inp, weight, stream);
          stream.synchronize();
          double tol = tolerance(dtype);
          REQUIRE(scaled_error(out.to_vector(), c.cpu.out, c.scale.out) <= tol);
          if (epilogue == Epilogue::gelu_bias) REQUIRE(scaled_error(pre.to_vector(), c.cpu.pre, c.scale.pre) <= tol);
          REQUIRE(scaled_error(dinp.to_vector(), c.cpu.dinp, c.scale.dinp) <= tol);
          REQUIRE(scaled_error(dweight.to_vector(), c.cpu.dweight, c.scale.dweight) <= tol);
          REQUIRE(scaled_error(dbias.to_vector(), c.cpu.dbias, c.scale.dbias) <= tol);
        }
      }
    }
  }
}
