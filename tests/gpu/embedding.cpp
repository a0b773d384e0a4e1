// CUDA embedding against the CPU twin: the forward copies exactly; the f32
// backward equals the CPU twin bit for bit (Note [Deterministic embedding
// backward]) and every backward repeats bitwise; bf16 within rounding; bad
// indices never touch memory out of bounds.
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/embedding.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

struct Case {
  int64_t N, V, C;
  Spread spread;
};

// Odd sizes, V = 1, C not a multiple of 32 or of a warp's 128-channel strip,
// and GPT-2's token table (50257 x 768) with more table rows than warps.
const std::vector<Case> kCases = {
    {1, 1, 1, Spread::uniform},          {7, 1, 7, Spread::uniform},         {33, 7, 33, Spread::uniform},
    {1031, 7, 1, Spread::hot},           {1031, 3, 1000, Spread::uniform},   {1031, 1000, 33, Spread::hot},
    {1031, 1000, 129, Spread::runs},     {33, 50257, 7, Spread::uniform},    {1031, 1000, 768, Spread::uniform},
    {4099, 50257, 768, Spread::hot},     {8192, 50257, 768, Spread::uniform}, {8192, 1024, 768, Spread::runs},
};

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Tensors live until the stream is synchronized: the caching allocator hands
// a freed block out again at once (runtime/core/allocator.h).
Vec gpu_backward(const Vec& dtable0, const Vec& dout, const Ints& idx, const Case& k, DType dtype,
                 const Stream& stream) {
  Device gpu = stream.device();
  Tensor dtable = make_tensor(dtable0, {k.V, k.C}, dtype, gpu), gdout = make_tensor(dout, {k.N, k.C}, dtype, gpu);
  Tensor gidx = make_int_tensor(idx, {k.N}, gpu);
  kernels::embedding_backward(dtable, gdout, gidx, stream);
  stream.synchronize();
  return dtable.to_vector();
}

}  // namespace

TEST_CASE("cuda embedding matches the cpu twin", "[gpu][embedding]") {
  Stream stream = Stream::create(Device::cuda(0));
  Device gpu = stream.device();
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Case& k : kCases) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " N=" << k.N << " V=" << k.V << " C=" << k.C
                    << " spread=" << spread_name(k.spread) << " seed=" << seed);
      Vec table = random_vector(k.V * k.C, seed), dout = random_vector(k.N * k.C, seed + 1),
          dtable0 = random_vector(k.V * k.C, seed + 2);
      if (dtype == DType::bf16) table = rounded_to_bf16(table), dout = rounded_to_bf16(dout), dtable0 = rounded_to_bf16(dtable0);
      Ints idx = random_indices(k.N, k.V, k.spread, seed + 3);

      // Forward: a copy, so exact in either dtype.
      Tensor cpu_out = Tensor::empty({k.N, k.C}, DType::f32, Device::cpu());
      kernels::embedding_forward(cpu_out, Tensor::from_vector(table, {k.V, k.C}), make_int_tensor(idx, {k.N}), Stream());
      Tensor gout = make_tensor(Vec(k.N * k.C, NAN), {k.N, k.C}, dtype, gpu);
      Tensor gtable = make_tensor(table, {k.V, k.C}, dtype, gpu), gidx = make_int_tensor(idx, {k.N}, gpu);
      kernels::embedding_forward(gout, gtable, gidx, stream);
      stream.synchronize();
      REQUIRE(same_bits(gout.to_vector(), cpu_out.to_vector()));

      // Backward: the CPU twin's plain loop, then the GPU twice.
      Tensor cdtable = Tensor::from_vector(dtable0, {k.V, k.C});
      kernels::embedding_backward(cdtable, Tensor::from_vector(dout, {k.N, k.C}), make_int_tensor(idx, {k.N}), Stream());
      Vec want = cdtable.to_vector();
      Vec got = gpu_backward(dtable0, dout, idx, k, dtype, stream);
      Vec again = gpu_backward(dtable0, dout, idx, k, dtype, stream);
      REQUIRE(all_finite(got));
      REQUIRE(same_bits(again, got));
      if (dtype == DType::f32) {
        REQUIRE(same_bits(got, want));
      } else {
        REQUIRE(rel_error(got, want) <= 1e-2);
      }
    }
  }
}

TEST_CASE("cuda embedding stays in bounds for indices outside [0, V)", "[gpu][embedding]") {
  // A broken precondition (kernels/embedding.h): the forward writes a NaN
  // row, the backward skips the row; nothing else changes.
  Stream stream = Stream::create(Device::cuda(0));
  Device gpu = stream.device();
  const int64_t N = 5, V = 7, C = 33;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec table = random_vector(V * C, seed), dout = random_vector(N * C, seed + 1), dtable0 = random_vector(V * C, seed + 2);
  Ints idx = {3, -1, 6, 7, 1 << 30};
  Tensor out = make_tensor(Vec(N * C, 0.f), {N, C}, DType::f32, gpu);
  Tensor gtable = make_tensor(table, {V, C}, DType::f32, gpu), gidx = make_int_tensor(idx, {N}, gpu);
  kernels::embedding_forward(out, gtable, gidx, stream);
  stream.synchronize();
  Vec got = out.to_vector();
  for (int64_t n = 0; n < N; n++) {
    bool valid = idx[n] >= 0 && idx[n] < V;
    for (int64_t c = 0; c < C; c++) {
      if (valid) REQUIRE(got[n * C + c] == table[idx[n] * C + c]);
      else REQUIRE(std::isnan(got[n * C + c]));
    }
  }

  // The CPU twin on the valid rows only.
  Ints kept_idx;
  Vec kept_dout;
  for (int64_t n = 0; n < N; n++) {
    if (idx[n] < 0 || idx[n] >= V) continue;
    kept_idx.push_back(idx[n]);
    kept_dout.insert(kept_dout.end(), dout.begin() + n * C, dout.begin() + (n + 1) * C);
  }
  int64_t kept = static_cast<int64_t>(kept_idx.size());
  Tensor cdtable = Tensor::from_vector(dtable0, {V, C});
  kernels::embedding_backward(cdtable, Tensor::from_vector(kept_dout, {kept, C}), make_int_tensor(kept_idx, {kept}),
                              Stream());
  REQUIRE(same_bits(gpu_backward(dtable0, dout, idx, {N, V, C, Spread::uniform}, DType::f32, stream),
                    cdtable.to_vector()));
}
