// CUDA token + position encoder against the CPU twin, f32 and bf16, into
// NaN-poisoned outputs: the forward and dwpe equal the CPU twin bit for bit
// (in bf16, its result rounded once); dwte is the CUDA embedding backward bit
// for bit and within bf16 rounding of the CPU twin; every backward repeats
// bitwise; bad tokens never touch memory out of bounds.
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/encoder.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

struct Case {
  int64_t B, T, maxT, V, C;
  Spread spread;
};

// Odd sizes, V = 1, maxT > T, C not a multiple of 32 or of the embedding
// backward's 128-channel strip, and GPT-2 small's tables (50257 x 768,
// 1024 x 768) at full sequence length.
const std::vector<Case> kCases = {
    {3, 5, 8, 11, 7, Spread::uniform},          {1, 1, 1, 1, 1, Spread::uniform},
    {2, 7, 9, 1, 33, Spread::uniform},          {5, 33, 40, 7, 129, Spread::hot},
    {7, 129, 200, 1000, 1031, Spread::uniform}, {4, 1024, 1024, 50257, 768, Spread::hot},
    {8, 1024, 1024, 50257, 768, Spread::uniform},
};

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

struct Grads {
  Vec dwte, dwpe;
};

// Tensors live until the stream is synchronized: the caching allocator hands
// a freed block out again at once (runtime/core/allocator.h).
Grads gpu_backward(const Vec& dwte0, const Vec& dwpe0, const Vec& dout, const Ints& tok, const Case& k, DType dtype,
                   const Stream& stream) {
  Device gpu = stream.device();
  Tensor dwte = make_tensor(dwte0, {k.V, k.C}, dtype, gpu), dwpe = make_tensor(dwpe0, {k.maxT, k.C}, dtype, gpu);
  Tensor gdout = make_tensor(dout, {k.B, k.T, k.C}, dtype, gpu), gtok = make_int_tensor(tok, {k.B, k.T}, gpu);
  kernels::encoder_backward(dwte, dwpe, gdout, gtok, stream);
  stream.synchronize();
  return {dwte.to_vector(), dwpe.to_vector()};
}

Grads cpu_backward(const Vec& dwte0, const Vec& dwpe0, const Vec& dout, const Ints& tok, const Case& k) {
  Tensor dwte = Tensor::from_vector(dwte0, {k.V, k.C}), dwpe = Tensor::from_vector(dwpe0, {k.maxT, k.C});
  kernels::encoder_backward(dwte, dwpe, Tensor::from_vector(dout, {k.B, k.T, k.C}), make_int_tensor(tok, {k.B, k.T}),
                            Stream());
  return {dwte.to_vector(), dwpe.to_vector()};
}

// What a bf16 tensor holds of the CPU twin's fp32 result; the identity for f32.
Vec stored(const Vec& v, DType dtype) { return dtype == DType::bf16 ? rounded_to_bf16(v) : v; }

}  // namespace

TEST_CASE("cuda encoder matches the cpu twin", "[gpu][encoder]") {
  Stream stream = Stream::create(Device::cuda(0));
  Device gpu = stream.device();
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Case& k : kCases) {
      const int64_t N = k.B * k.T;
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " B=" << k.B << " T=" << k.T << " maxT=" << k.maxT << " V=" << k.V
                    << " C=" << k.C << " hot=" << (k.spread == Spread::hot) << " seed=" << seed);
      // Inputs rounded through bf16 when the GPU stores bf16, so that both
      // sides see the same values.
      Vec wte = draw(k.V * k.C, seed, dtype), wpe = draw(k.maxT * k.C, seed + 1, dtype),
          dout = draw(N * k.C, seed + 2, dtype), dwte0 = draw(k.V * k.C, seed + 3, dtype),
          dwpe0 = draw(k.maxT * k.C, seed + 4, dtype);
      Ints tok = random_indices(N, k.V, k.spread, seed + 5);

      // Forward: one fp32 addition of the same values on both sides, rounded
      // once to the storage dtype (f32_to_bf16 rounds as the GPU does), so
      // exact in either dtype.
      Tensor cpu_out = Tensor::empty({k.B, k.T, k.C}, DType::f32, Device::cpu());
      kernels::encoder_forward(cpu_out, make_int_tensor(tok, {k.B, k.T}), Tensor::from_vector(wte, {k.V, k.C}),
                               Tensor::from_vector(wpe, {k.maxT, k.C}), Stream());
      Tensor gout = make_tensor(Vec(N * k.C, NAN), {k.B, k.T, k.C}, dtype, gpu);
      Tensor gwte = make_tensor(wte, {k.V, k.C}, dtype, gpu), gwpe = make_tensor(wpe, {k.maxT, k.C}, dtype, gpu);
      Tensor gtok = make_int_tensor(tok, {k.B, k.T}, gpu);
      kernels::encoder_forward(gout, gtok, gwte, gwpe, stream);
      stream.synchronize();
      Vec got_out = gout.to_vector();
      REQUIRE(all_finite(got_out));
      REQUIRE(same_bits(got_out, stored(cpu_out.to_vector(), dtype)));

      // Backward: the CPU twin's plain loops, then the GPU twice.
      Grads want = cpu_backward(dwte0, dwpe0, dout, tok, k);
      Grads got = gpu_backward(dwte0, dwpe0, dout, tok, k, dtype, stream);
      Grads again = gpu_backward(dwte0, dwpe0, dout, tok, k, dtype, stream);
      REQUIRE(all_finite(got.dwte));
      REQUIRE(all_finite(got.dwpe));
      REQUIRE(same_bits(again.dwte, got.dwte));
      REQUIRE(same_bits(again.dwpe, got.dwpe));
      // dwpe: the same fp32 chain in b order on both sides, rounded once.
      REQUIRE(same_bits(got.dwpe, stored(want.dwpe, dtype)));
      if (dtype == DType::f32) {
        REQUIRE(same_bits(got.dwte, want.dwte));
      } else {  // bf16 may round a chain more than once (kernels/cuda/embedding.cu)
        REQUIRE(rel_error(got.dwte, want.dwte) <= 1e-2);
      }

      // dwte is the CUDA embedding backward over the B * T rows, bit for bit.
      Tensor dtable = make_tensor(dwte0, {k.V, k.C}, dtype, gpu), gdout = make_tensor(dout, {N, k.C}, dtype, gpu);
      Tensor flat_tok = make_int_tensor(tok, {N}, gpu);
      kernels::embedding_backward(dtable, gdout, flat_tok, stream);
      stream.synchronize();
      REQUIRE(same_bits(dtable.to_vector(), got.dwte));
    }
  }
}

TEST_CASE("cuda encoder stays in bounds for tokens outside [0, V)", "[gpu][encoder]") {
  // A broken precondition (kernels/encoder.h): the forward writes a NaN row,
  // dwte skips the row, dwpe still adds it; nothing else changes.
  Stream stream = Stream::create(Device::cuda(0));
  Device gpu = stream.device();
  const Case k = {2, 3, 4, 7, 33, Spread::uniform};
  const int64_t N = k.B * k.T, C = k.C;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec wte = random_vector(k.V * C, seed), wpe = random_vector(k.maxT * C, seed + 1),
      dout = random_vector(N * C, seed + 2), dwte0 = random_vector(k.V * C, seed + 3),
      dwpe0 = random_vector(k.maxT * C, seed + 4);
  Ints tok = {3, -1, 6, 7, 1 << 30, 0};
  Tensor out = make_tensor(Vec(N * C, 0.f), {k.B, k.T, C}, DType::f32, gpu);
  Tensor gwte = make_tensor(wte, {k.V, C}, DType::f32, gpu), gwpe = make_tensor(wpe, {k.maxT, C}, DType::f32, gpu);
  Tensor gtok = make_int_tensor(tok, {k.B, k.T}, gpu);
  kernels::encoder_forward(out, gtok, gwte, gwpe, stream);
  stream.synchronize();
  Vec got = out.to_vector();
  for (int64_t n = 0; n < N; n++) {
    bool valid = tok[n] >= 0 && tok[n] < k.V;
    for (int64_t c = 0; c < C; c++) {
      if (valid) REQUIRE(got[n * C + c] == wte[tok[n] * C + c] + wpe[(n % k.T) * C + c]);
      else REQUIRE(std::isnan(got[n * C + c]));
    }
  }

  // The CPU embedding backward on the valid rows for dwte; the CPU encoder
  // with every bad token replaced by a valid one for dwpe, which does not
  // depend on the tokens.
  Ints kept_tok, fixed_tok = tok;
  Vec kept_dout;
  for (int64_t n = 0; n < N; n++) {
    if (tok[n] < 0 || tok[n] >= k.V) {
      fixed_tok[n] = 0;
      continue;
    }
    kept_tok.push_back(tok[n]);
    kept_dout.insert(kept_dout.end(), dout.begin() + n * C, dout.begin() + (n + 1) * C);
  }
  int64_t kept = static_cast<int64_t>(kept_tok.size());
  Tensor cdwte = Tensor::from_vector(dwte0, {k.V, C});
  kernels::embedding_backward(cdwte, Tensor::from_vector(kept_dout, {kept, C}), make_int_tensor(kept_tok, {kept}),
                              Stream());
  Grads want = cpu_backward(dwte0, dwpe0, dout, fixed_tok, k);
  Grads grads = gpu_backward(dwte0, dwpe0, dout, tok, k, DType::f32, stream);
  REQUIRE(same_bits(grads.dwte, cdwte.to_vector()));
  REQUIRE(same_bits(grads.dwpe, want.dwpe));
}

TEST_CASE("cuda encoder with no rows does nothing", "[gpu][encoder]") {
  Stream stream = Stream::create(Device::cuda(0));
  Device gpu = stream.device();
  const int64_t V = 11, maxT = 8, C = 7;
  Vec dwte0 = random_vector(V * C, fresh_seed()), dwpe0 = random_vector(maxT * C, fresh_seed());
  for (Case k : {Case{0, 5, maxT, V, C, Spread::uniform}, Case{3, 0, maxT, V, C, Spread::uniform}}) {
    INFO("B=" << k.B << " T=" << k.T);
    Tensor out = make_tensor({}, {k.B, k.T, C}, DType::f32, gpu), tok = make_int_tensor({}, {k.B, k.T}, gpu);
    Tensor wte = make_tensor(dwte0, {V, C}, DType::f32, gpu), wpe = make_tensor(dwpe0, {maxT, C}, DType::f32, gpu);
    kernels::encoder_forward(out, tok, wte, wpe, stream);
    Grads g = gpu_backward(dwte0, dwpe0, {}, {}, k, DType::f32, stream);
    REQUIRE(same_bits(g.dwte, dwte0));
    REQUIRE(same_bits(g.dwpe, dwpe0));
  }
}
