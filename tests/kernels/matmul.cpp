// CPU matmul (forward with every epilogue, backward) against naive float64.
#include <cmath>

#include "kernels/matmul.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::Epilogue;
using tandem::kernels::MatmulOptions;

namespace {

double gelu64(double x) { return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }

const char* epilogue_name(Epilogue e) {
  return e == Epilogue::none ? "none" : e == Epilogue::bias ? "bias" : "gelu_bias";
}

// Exact results, and the magnitude each was summed from (see scaled_error).
struct Reference {
  std::vector<double> pre, out, out_scale;    // (N, OC): before and after the GELU
  std::vector<double> dinp, dinp_scale;       // (N, C)
  std::vector<double> dweight, dweight_scale; // (OC, C), starting from dweight0
  std::vector<double> dbias, dbias_scale;     // (OC), starting from dbias0
};

Reference reference(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                    const std::vector<float>& dout, const std::vector<float>& dw0, const std::vector<float>& db0,
                    Epilogue epilogue, int64_t N, int64_t C, int64_t OC) {
  auto abs_of = [](const std::vector<float>& v) {
    std::vector<double> a(v.size());
    for (size_t i = 0; i < v.size(); i++) a[i] = std::fabs(v[i]);
    return a;
  };
  Reference r;
  r.pre.resize(N * OC), r.out.resize(N * OC), r.out_scale.resize(N * OC);
  r.dinp.resize(N * C), r.dinp_scale.resize(N * C);
  r.dweight.assign(dw0.begin(), dw0.end()), r.dweight_scale = abs_of(dw0);
  r.dbias.assign(db0.begin(), db0.end()), r.dbias_scale = abs_of(db0);
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < OC; o++) {
      double s = epilogue == Epilogue::none ? 0.0 : b[o], a = std::fabs(s);
      for (int64_t c = 0; c < C; c++) {
        double t = static_cast<double>(x[n * C + c]) * w[o * C + c];
        s += t, a += std::fabs(t);
      }
      r.pre[n * OC + o] = s;
      r.out[n * OC + o] = epilogue == Epilogue::gelu_bias ? gelu64(s) : s;
      r.out_scale[n * OC + o] = a;  // |gelu'| <= 1.13, so this bounds the GELU's output error too
    }
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t o = 0; o < OC; o++) {
        double t = static_cast<double>(dout[n * OC + o]) * w[o * C + c];
        r.dinp[n * C + c] += t, r.dinp_scale[n * C + c] += std::fabs(t);
      }
  for (int64_t o = 0; o < OC; o++) {
    for (int64_t c = 0; c < C; c++)
      for (int64_t n = 0; n < N; n++) {
        double t = static_cast<double>(dout[n * OC + o]) * x[n * C + c];
        r.dweight[o * C + c] += t, r.dweight_scale[o * C + c] += std::fabs(t);
      }
    for (int64_t n = 0; n < N; n++) r.dbias[o] += dout[n * OC + o], r.dbias_scale[o] += std::fabs(dout[n * OC + o]);
  }
  return r;
}

// fp32 GEMM error relative to the summed magnitudes: about K * 2^-24 at
// worst for these sizes, far less in practice.
constexpr double kTol = 1e-5;

}  // namespace

TEST_CASE("cpu matmul matches float64", "[kernels][matmul]") {
  const std::vector<int64_t> rows = {0, 1, 7, 33, 100}, features = {1, 7, 33, 100}, outputs = {1, 7, 33, 64};
  for (int64_t N : rows)
    for (int64_t C : features)
      for (int64_t OC : outputs)
        for (Epilogue epilogue : {Epilogue::none, Epilogue::bias, Epilogue::gelu_bias}) {
          uint64_t seed = fresh_seed();
          INFO("N=" << N << " C=" << C << " OC=" << OC << " epilogue=" << epilogue_name(epilogue)
                    << " seed=" << seed);
          auto x = random_vector(N * C, seed), w = random_vector(OC * C, seed + 1), b = random_vector(OC, seed + 2),
               dout = random_vector(N * OC, seed + 3), dw0 = random_vector(OC * C, seed + 4),
               db0 = random_vector(OC, seed + 5), garbage = random_vector(N * C, seed + 6, 1e3f, 1e4f);
          Reference ref = reference(x, w, b, dout, dw0, db0, epilogue, N, C, OC);

          Tensor inp = Tensor::from_vector(x, {N, C}), weight = Tensor::from_vector(w, {OC, C});
          Tensor out = Tensor::from_vector(std::vector<float>(N * OC, NAN), {N, OC});
          MatmulOptions opts{.epilogue = epilogue};
          if (epilogue != Epilogue::none) opts.bias = Tensor::from_vector(b, {OC});
          if (epilogue == Epilogue::gelu_bias)
            opts.pre_gelu = Tensor::from_vector(std::vector<float>(N * OC, NAN), {N, OC});
          kernels::matmul_forward(out, inp, weight, opts, Stream());
          REQUIRE(scaled_error(out.to_vector(), ref.out, ref.out_scale) <= kTol);
          if (epilogue == Epilogue::gelu_bias)
            REQUIRE(scaled_error(opts.pre_gelu.to_vector(), ref.pre, ref.out_scale) <= kTol);

          // Backward does not depend on the epilogue; run it once per shape.
          if (epilogue != Epilogue::none) continue;
          Tensor dinp = Tensor::from_vector(garbage, {N, C});  // must be overwritten
          Tensor dweight = Tensor::from_vector(dw0, {OC, C}), dbias = Tensor::from_vector(db0, {OC});
          kernels::matmul_backward(dinp, dweight, dbias, Tensor::from_vector(dout, {N, OC}), inp, weight, Stream());
          REQUIRE(scaled_error(dinp.to_vector(), ref.dinp, ref.dinp_scale) <= kTol);
          REQUIRE(scaled_error(dweight.to_vector(), ref.dweight, ref.dweight_scale) <= kTol);
          REQUIRE(scaled_error(dbias.to_vector(), ref.dbias, ref.dbias_scale) <= kTol);
        }
}

TEST_CASE("cpu matmul handles empty dimensions", "[kernels][matmul]") {
  struct Dims {
    int64_t N, C, OC;
  };
  for (Dims d : {Dims{0, 5, 3}, Dims{4, 0, 3}, Dims{4, 5, 0}}) {
    auto [N, C, OC] = d;
    uint64_t seed = fresh_seed();
    INFO("N=" << N << " C=" << C << " OC=" << OC << " seed=" << seed);
    auto b = random_vector(OC, seed), dw0 = random_vector(OC * C, seed + 1), db0 = random_vector(OC, seed + 2);
    Tensor inp = random_tensor({N, C}, seed + 3), weight = random_tensor({OC, C}, seed + 4);
    Tensor out = Tensor::from_vector(std::vector<float>(N * OC, NAN), {N, OC});
    Tensor pre = Tensor::from_vector(std::vector<float>(N * OC, NAN), {N, OC});
    kernels::matmul_forward(out, inp, weight,
                            {.bias = Tensor::from_vector(b, {OC}), .epilogue = Epilogue::gelu_bias, .pre_gelu = pre},
                            Stream());
    // An empty sum is zero: out = gelu(bias) in every row.
    std::vector<double> expect(N * OC), expect_pre(N * OC);
    for (int64_t i = 0; i < N * OC; i++) expect_pre[i] = b[i % OC], expect[i] = gelu64(b[i % OC]);
    REQUIRE(rel_error(out.to_vector(), expect) <= 1e-5);
    REQUIRE(rel_error(pre.to_vector(), expect_pre) == 0.0);

    Tensor dinp = Tensor::from_vector(std::vector<float>(N * C, NAN), {N, C});
    Tensor dweight = Tensor::from_vector(dw0, {OC, C}), dbias = Tensor::from_vector(db0, {OC});
    Tensor dout = random_tensor({N, OC}, seed + 5);
    kernels::matmul_backward(dinp, dweight, dbias, dout, inp, weight, Stream());
    Reference ref = reference(inp.to_vector(), weight.to_vector(), b, dout.to_vector(), dw0, db0, Epilogue::none,
                              N, C, OC);
    REQUIRE(scaled_error(dinp.to_vector(), ref.dinp, ref.dinp_scale) <= kTol);
    REQUIRE(scaled_error(dweight.to_vector(), ref.dweight, ref.dweight_scale) <= kTol);
    REQUIRE(scaled_error(dbias.to_vector(), ref.dbias, ref.dbias_scale) <= kTol);
  }
}

TEST_CASE("cpu matmul flattens leading dimensions and skips undefined gradients", "[kernels][matmul]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  const int64_t B = 2, T = 3, C = 5, OC = 4;
  auto x = random_vector(B * T * C, seed), dout = random_vector(B * T * OC, seed + 1);
  Tensor weight = random_tensor({OC, C}, seed + 2), bias = random_tensor({OC}, seed + 3);
  Tensor out3 = Tensor::empty({B, T, OC}, DType::f32, Device::cpu());
  Tensor out2 = Tensor::empty({B * T, OC}, DType::f32, Device::cpu());
  MatmulOptions opts{.bias = bias, .epilogue = Epilogue::bias};
  kernels::matmul_forward(out3, Tensor::from_vector(x, {B, T, C}), weight, opts, Stream());
  kernels::matmul_forward(out2, Tensor::from_vector(x, {B * T, C}), weight, opts, Stream());
  REQUIRE(max_abs_diff(out3.to_vector(), out2.to_vector()) == 0.0);

  // Only dweight requested: dinp and dbias are skipped without complaint.
  auto dw0 = random_vector(OC * C, seed + 4);
  Tensor dweight = Tensor::from_vector(dw0, {OC, C});
  kernels::matmul_backward(Tensor(), dweight, Tensor(), Tensor::from_vector(dout, {B, T, OC}),
                           Tensor::from_vector(x, {B, T, C}), weight, Stream());
  Reference ref = reference(x, weight.to_vector(), bias.to_vector(), dout, dw0, std::vector<float>(OC), Epilogue::none,
                            B * T, C, OC);
  REQUIRE(scaled_error(dweight.to_vector(), ref.dweight, ref.dweight_scale) <= kTol);
}

TEST_CASE("cpu matmul rejects inconsistent options and shapes", "[kernels][matmul]") {
  auto zeros = [](Shape shape) { return Tensor::zeros(std::move(shape), DType::f32, Device::cpu()); };
  Tensor inp = zeros({3, 5}), weight = zeros({4, 5}), out = zeros({3, 4}), bias = zeros({4}), pre = zeros({3, 4});
  auto forward = [&](const Tensor& y, const Tensor& x, const MatmulOptions& opts) {
    kernels::matmul_forward(y, x, weight, opts, Stream());
  };
  REQUIRE_THROWS(forward(out, inp, {.epilogue = Epilogue::bias}));                         // no bias
  REQUIRE_THROWS(forward(out, inp, {.bias = bias}));                                       // bias, epilogue none
  REQUIRE_THROWS(forward(out, inp, {.bias = bias, .epilogue = Epilogue::gelu_bias}));      // no pre_gelu
  REQUIRE_THROWS(forward(out, inp, {.bias = bias, .epilogue = Epilogue::gelu_bias, .pre_gelu = out}));  // aliased
  REQUIRE_THROWS(forward(out, inp, {.bias = zeros({5}), .epilogue = Epilogue::bias}));     // bias of C
  REQUIRE_THROWS(forward(zeros({3, 5}), inp, {}));                                         // out of (N, C)
  REQUIRE_THROWS(forward(out, zeros({3, 6}), {}));                                         // inp of C + 1
  REQUIRE_THROWS(kernels::matmul_backward(Tensor(), Tensor(), Tensor(), zeros({3, 5}), inp, weight, Stream()));
  REQUIRE_NOTHROW(forward(out, inp, {.bias = bias, .epilogue = Epilogue::gelu_bias, .pre_gelu = pre}));
}
