// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC'11): a counter-based generator. The i-th random number of a stream
// is a pure function of (seed, i), so the CPU and every CUDA thread compute
// the same numbers independently, in any order: dropout masks are recomputed
// in backward instead of stored, and a resumed run draws what it would have.
//
// This header compiles as host code and, under nvcc, as device code too.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TANDEM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TANDEM_HOST_DEVICE inline
#endif

namespace tandem {

struct Philox4 {
  uint32_t v[4];
};

TANDEM_HOST_DEVICE uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Philox-4x32-10 on a full 128-bit counter and 64-bit key (the form the
// reference test vectors use).
TANDEM_HOST_DEVICE Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // key schedule
  uint32_t c0 = ctr.v[0], c1 = ctr.v[1], c2 = ctr.v[2], c3 = ctr.v[3];
  for (int round = 0; round < 10; round++) {
    uint32_t hi0, hi1;
    uint32_t lo0 = philox_mulhilo(kMul0, c0, &hi0);
    uint32_t lo1 = philox_mulhilo(kMul1, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

// Four 32-bit random words for counter `counter` under key `seed`.
TANDEM_HOST_DEVICE Philox4 philox4x32(uint64_t counter, uint64_t seed) {
  Philox4 ctr = {{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// A float in [0, 1) from 24 random bits (exact in fp32 on every device).
TANDEM_HOST_DEVICE float philox_bits_to_uniform(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// The uniform [0, 1) number with index `i` of stream `seed`: word i % 4 of
// block i / 4, so four consecutive elements share one Philox evaluation.
TANDEM_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t i) {
  Philox4 r = philox4x32(i >> 2, seed);
  return philox_bits_to_uniform(r.v[i & 3]);
}

// A standard normal number with index `i` (Box-Muller over two words of one
// block; used for weight init on the host).
inline float philox_normal(uint64_t seed, uint64_t i) {
  Philox4 r = philox4x32(i, seed ^ 0x5851F42D4C957F2Dull);
  double u1 = 1.0 - (r.v[0] >> 8) * (1.0 / 16777216.0);  // in (0, 1]: log is finite
  double u2 = (r.v[1] >> 8) * (1.0 / 16777216.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace tandem
