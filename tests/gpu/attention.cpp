// CUDA causal attention against the CPU twin, f32 and bf16, with poisoned
// outputs; a bitwise run-to-run check of both passes; and the head sizes the
// CUDA kernels refuse.
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

struct Inputs {
  Vec qkv, dout;  // (B, T, 3C), (B, T, C)
};

// Fresh inputs, rounded through bf16 when the GPU stores bf16, so that both
// sides see the same values. q and k in [-2, 2): scores of a few units, so
// the softmax is neither flat nor one-hot, and the running max of the online
// softmax moves from tile to tile.
Inputs random_inputs(const Dims& d, DType dtype, uint64_t seed) {
  Inputs in{random_vector(shape_numel(d.qkv()), seed, -2.f, 2.f), random_vector(shape_numel(d.out()), seed + 1)};
  if (dtype == DType::bf16)
    for (Vec* v : {&in.qkv, &in.dout}) *v = rounded_to_bf16(*v);
  return in;
}

struct Outputs {
  Vec out, lse, dqkv;
};

// The CPU forward, then the CPU backward from the given out (the forward's
// out rounded to the GPU's dtype, which is what the GPU backward will see)
// and the forward's lse.
Outputs run_cpu(const Inputs& in, const Dims& d, DType dtype) {
  Device cpu = Device::cpu();
  Tensor qkv = Tensor::from_vector(in.qkv, d.qkv());
  Tensor out = Tensor::empty(d.out(), DType::f32, cpu), lse = Tensor::empty(d.lse(), DType::f32, cpu);
  kernels::attention_forward(out, lse, qkv, d.NH, Stream());
  Vec out_seen = out.to_vector();
  if (dtype == DType::bf16) out_seen = rounded_to_bf16(out_seen);
  Tensor dqkv = Tensor::empty(d.qkv(), DType::f32, cpu);
  kernels::attention_backward(dqkv, Tensor::from_vector(in.dout, d.out()), qkv, Tensor::from_vector(out_seen, d.out()),
                              lse, d.NH, Stream());
  return {out_seen, lse.to_vector(), dqkv.to_vector()};
}

// The GPU forward into poisoned outputs, and the GPU backward into a
// poisoned dqkv from the given out and lse (the CPU twin's, so that the
// backward is compared on its own). Every tensor is made before the first
// launch and lives until the stream is synchronized (see tests/gpu/layernorm.cpp).
Outputs run_gpu(const Inputs& in, const Vec& out_in, const Vec& lse_in, const Dims& d, DType dtype,
                const Stream& stream) {
  Device gpu = stream.device();
  Tensor qkv = make_tensor(in.qkv, d.qkv(), dtype, gpu);
  Tensor out = make_tensor(Vec(shape_numel(d.out()), NAN), d.out(), dtype, gpu);
  Tensor lse = make_tensor(Vec(shape_numel(d.lse()), NAN), d.lse(), DType::f32, gpu);
  Tensor dout = make_tensor(in.dout, d.out(), dtype, gpu);
  Tensor out_given = make_tensor(out_in, d.out(), dtype, gpu);
  Tensor lse_given = make_tensor(lse_in, d.lse(), DType::f32, gpu);
  Tensor dqkv = make_tensor(Vec(shape_numel(d.qkv()), NAN), d.qkv(), dtype, gpu);

  kernels::attention_forward(out, lse, qkv, d.NH, stream);
  kernels::attention_backward(dqkv, dout, qkv, out_given, lse_given, d.NH, stream);
  stream.synchronize();
  return {out.to_vector(), lse.to_vector(), dqkv.to_vector()};
}

// The q, k or v columns (part 0, 1, 2) of a (B, T, 3C) gradient: each is
// compared on its own, so that a wrong dq cannot hide behind a larger dv.
Vec part(const Vec& dqkv, const Dims& d, int which) {
  const int64_t C = d.C();
  Vec p;
  p.reserve(d.B * d.T * C);
  for (int64_t row = 0; row < d.B * d.T; row++)
    p.insert(p.end(), dqkv.begin() + row * 3 * C + which * C, dqkv.begin() + row * 3 * C + (which + 1) * C);
  return p;
}

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("cuda attention matches the cpu twin", "[gpu][attention]") {
  Stream stream = Stream::create(Device::cuda(0));
  // T below, at and across the 8-row blocks and 32-row tiles; HS below a
  // warp, odd, between warps (80: lanes own 2 or 3 dims) and at the maximum.
  const std::vector<Dims> cases = {{1, 1, 1, 8},   {2, 7, 3, 5},    {1, 33, 2, 8},   {3, 17, 2, 64},
                                   {1, 65, 1, 80}, {2, 100, 3, 128}, {1, 257, 2, 33}, {2, 256, 4, 64}};
  for (DType dtype : {DType::f32, DType::bf16}) {
    // bf16 rounds every stored output; the statistics (lse) stay f32.
    double out_tol = dtype == DType::f32 ? 1e-5 : 1e-2;
    double grad_tol = dtype == DType::f32 ? 1e-4 : 1e-2;
    for (const Dims& d : cases) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " B=" << d.B << " T=" << d.T << " NH=" << d.NH << " HS=" << d.HS
                    << " seed=" << seed);
      Inputs in = random_inputs(d, dtype, seed);
      Outputs want = run_cpu(in, d, dtype);
      Outputs got = run_gpu(in, want.out, want.lse, d, dtype, stream);
      REQUIRE(all_finite(got.out));
      REQUIRE(all_finite(got.lse));
      REQUIRE(all_finite(got.dqkv));
      REQUIRE(rel_error(got.out, want.out) <= out_tol);
      REQUIRE(unit_scaled_error(got.lse, want.lse) <= 1e-5);
      for (int which : {0, 1, 2}) {
        INFO("part=" << "qkv"[which]);
        REQUIRE(rel_error(part(got.dqkv, d, which), part(want.dqkv, d, which)) <= grad_tol);
      }
    }
  }
}

TEST_CASE("cuda attention is bitwise repeatable", "[gpu][attention]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Dims d{2, 300, 4, 64};
    uint64_t seed = fresh_seed();
    INFO("dtype=" << dtype_name(dtype) << " seed=" << seed);
    Inputs in = random_inputs(d, dtype, seed);
    Outputs cpu = run_cpu(in, d, dtype);
    Outputs a = run_gpu(in, cpu.out, cpu.lse, d, dtype, stream);
    Outputs b = run_gpu(in, cpu.out, cpu.lse, d, dtype, stream);
    REQUIRE(all_finite(a.dqkv));
    REQUIRE(same_bits(a.out, b.out));
    REQUIRE(same_bits(a.lse, b.lse));
    REQUIRE(same_bits(a.dqkv, b.dqkv));
  }
}

TEST_CASE("cuda attention with no positions does nothing, and refuses head sizes over the maximum",
          "[gpu][attention]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (const Dims& d : {Dims{0, 4, 2, 8}, Dims{2, 0, 2, 8}}) {
    Tensor qkv = make_tensor({}, d.qkv(), DType::f32, gpu), out = make_tensor({}, d.out(), DType::f32, gpu);
    Tensor lse = make_tensor({}, d.lse(), DType::f32, gpu), dqkv = make_tensor({}, d.qkv(), DType::f32, gpu);
    kernels::attention_forward(out, lse, qkv, d.NH, stream);
    kernels::attention_backward(dqkv, out, qkv, out, lse, d.NH, stream);
  }
  stream.synchronize();

  const Dims big{1, 3, 1, kernels::cuda::kAttentionMaxHeadSize + 1};
  Tensor qkv = make_tensor(Vec(shape_numel(big.qkv()), 0.f), big.qkv(), DType::f32, gpu);
  Tensor out = make_tensor(Vec(shape_numel(big.out()), 0.f), big.out(), DType::f32, gpu);
  Tensor lse = make_tensor(Vec(shape_numel(big.lse()), 0.f), big.lse(), DType::f32, gpu);
  REQUIRE_THROWS(kernels::attention_forward(out, lse, qkv, big.NH, stream));
}
