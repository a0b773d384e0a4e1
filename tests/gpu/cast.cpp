// CUDA f32 <-> bf16 and f32 <-> f16 casts against the CPU twin, bit for bit:
// random bit patterns (every exponent, denormals, NaN payloads; for f16 also
// values around its range) plus the special values and halfway cases listed
// one by one.
#include <cstring>

#include "kernels/cast.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

// NaN, inf, zeros, denormals and the rounding edge cases, as f32 bits.
const std::vector<uint32_t> kSpecialBits = {
    0x00000000u, 0x80000000u,                            // +-0
    0x7f800000u, 0xff800000u,                            // +-inf
    0x7fc00000u, 0xffc00000u, 0x7fffffffu, 0xffffffffu,  // quiet NaNs
    0x7f800001u, 0xff800001u, 0x7fa00000u, 0x7fbfffffu,  // signalling NaNs
    0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu,  // halfway and either side of it
    0x7f7fffffu, 0x7f7f7fffu, 0x7f7f8000u, 0xff7f8000u,  // around overflow to inf
    0x00000001u, 0x00008000u, 0x00018000u, 0x00008001u,  // denormals, halfway cases
    0x807fffffu, 0x007fffffu, 0x00800000u, 0x80800000u,  // denormal/normal boundary
    // f16's: halfway cases, overflow (65504, 65520), subnormals
    0x3f801000u, 0x3f803000u, 0x3f801001u, 0x3f800fffu,  // halfway and either side of it
    0x477fe000u, 0x477fefffu, 0x477ff000u, 0xc77ff000u,  // around overflow to inf
    0x38800000u, 0x387fc000u, 0x387fe000u, 0x33800000u,  // normal/subnormal boundary, 2^-24
    0x33000000u, 0xb3000000u, 0x33000001u, 0x33c00000u,  // around 2^-25, halfway to 0
};

const std::vector<DType> kHalfTypes = {DType::bf16, DType::f16};

// A host tensor of `dtype` holding exactly these bits (no float round trip
// that could touch a signalling NaN).
template <typename Bits>
Tensor host_from_bits(const std::vector<Bits>& bits, DType dtype) {
  int64_t n = static_cast<int64_t>(bits.size());
  Tensor t = Tensor::empty({n}, dtype, Device::cpu());
  REQUIRE(t.nbytes() == bits.size() * sizeof(Bits));
  if (n > 0) std::memcpy(t.data(), bits.data(), t.nbytes());
  return t;
}

template <typename Bits>
std::vector<Bits> bits_of(const Tensor& t) {
  Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  std::vector<Bits> out(host.numel());
  REQUIRE(host.nbytes() == out.size() * sizeof(Bits));
  if (!out.empty()) std::memcpy(out.data(), host.data(), host.nbytes());
  return out;
}

// Casts `inp` on the GPU into a poisoned output of `out_dtype`.
Tensor gpu_cast(const Tensor& host_inp, DType out_dtype, const Stream& stream) {
  int64_t n = host_inp.numel();
  Tensor inp = host_inp.to(stream.device());
  Tensor out = make_tensor(std::vector<float>(n, NAN), {n}, out_dtype, stream.device());  // poisoned
  kernels::cast(out, inp, stream);
  stream.synchronize();
  return out;
}

}  // namespace

TEST_CASE("cuda cast f32 -> bf16 and f16 equals the cpu bit for bit", "[gpu][cast]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : kHalfTypes) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}, int64_t{1 << 20} + 3}) {
      uint64_t seed = fresh_seed();
      INFO(dtype_name(dtype) << " n=" << n << " seed=" << seed);
      // Random bit patterns; for f16 every odd element instead a value
      // from 2^-27 to 2^17 (random sign and mantissa), around f16's range.
      std::mt19937_64 gen(seed);
      std::vector<uint32_t> bits(n);
      for (int64_t i = 0; i < n; i++) {
        bits[i] = static_cast<uint32_t>(gen());
        if (dtype == DType::f16 && i % 2)
          bits[i] = (bits[i] & 0x807fffffu) | static_cast<uint32_t>(127 - 27 + gen() % 45) << 23;
      }
      // The special values overwrite the head, where they fit.
      for (size_t i = 0; i < kSpecialBits.size() && i < bits.size(); i++) bits[i] = kSpecialBits[i];
      Tensor inp = host_from_bits(bits, DType::f32);

      Tensor want = Tensor::empty({n}, dtype, Device::cpu());
      kernels::cast(want, inp, Stream());
      std::vector<uint16_t> got = bits_of<uint16_t>(gpu_cast(inp, dtype, stream)), expected = bits_of<uint16_t>(want);
      int64_t mismatches = 0, first = 0;
      for (int64_t i = 0; i < n; i++) {
        if (got[i] == expected[i]) continue;
        if (mismatches++ == 0) first = i;
      }
      INFO("mismatches " << mismatches << ", the first at " << first << ": f32 bits " << std::hex << bits[first]
                         << ", gpu " << got[first] << ", cpu " << expected[first]);
      REQUIRE(mismatches == 0);
    }
  }
}

TEST_CASE("cuda cast bf16 and f16 -> f32 equals the cpu bit for bit", "[gpu][cast]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : kHalfTypes) {
    // Every 16-bit pattern, then random ones past 2^16 elements.
    const int64_t n = (1 << 20) + 3;
    uint64_t seed = fresh_seed();
    INFO(dtype_name(dtype) << " seed=" << seed);
    std::mt19937_64 gen(seed);
    std::vector<uint16_t> bits(n);
    for (int64_t i = 0; i < n; i++) bits[i] = i < (1 << 16) ? static_cast<uint16_t>(i) : static_cast<uint16_t>(gen());
    Tensor inp = host_from_bits(bits, dtype);
    Tensor want = Tensor::empty({n}, DType::f32, Device::cpu());
    kernels::cast(want, inp, Stream());
    REQUIRE(bits_of<uint32_t>(gpu_cast(inp, DType::f32, stream)) == bits_of<uint32_t>(want));
  }
}

TEST_CASE("cuda cast round trips and same-dtype copies", "[gpu][cast]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : kHalfTypes) {
    uint64_t seed = fresh_seed();
    INFO(dtype_name(dtype) << " seed=" << seed);
    const int64_t n = 1031;
    std::vector<uint16_t> bits(n);
    std::mt19937_64 gen(seed);
    for (auto& b : bits) b = static_cast<uint16_t>(gen());
    Tensor h = host_from_bits(bits, dtype).to(stream.device());
    Tensor f = Tensor::empty({n}, DType::f32, stream.device());
    Tensor back = Tensor::empty({n}, dtype, stream.device());
    Tensor copy = Tensor::empty({n}, dtype, stream.device());
    kernels::cast(f, h, stream);
    kernels::cast(back, f, stream);  // 16 bits -> f32 -> 16 bits: the identity, but NaNs come back quiet
    kernels::cast(copy, h, stream);  // same dtype: a copy
    kernels::cast(copy, copy, stream);  // onto itself: nothing
    stream.synchronize();
    // bf16: exponent 0x7f80, quiet bit 0x40; f16: 0x7c00 and 0x200.
    uint16_t exponent = dtype == DType::bf16 ? 0x7f80 : 0x7c00, quiet = dtype == DType::bf16 ? 0x40 : 0x200;
    std::vector<uint16_t> quieted = bits;
    for (auto& b : quieted)
      if ((b & 0x7fff) > exponent) b |= quiet;
    REQUIRE(bits_of<uint16_t>(back) == quieted);
    REQUIRE(bits_of<uint16_t>(copy) == bits);
  }
}
