// CUDA f32 <-> bf16 casts against the CPU twin, bit for bit: random bit
// patterns (every exponent, denormals, NaN payloads) plus the special
// values and halfway cases listed one by one.
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
};

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

TEST_CASE("cuda cast f32 -> bf16 equals the cpu bit for bit", "[gpu][cast]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}, int64_t{1 << 20} + 3}) {
    uint64_t seed = fresh_seed();
    INFO("n=" << n << " seed=" << seed);
    std::mt19937_64 gen(seed);
    std::vector<uint32_t> bits(n);
    for (auto& b : bits) b = static_cast<uint32_t>(gen());
    // The special values overwrite the head, where they fit.
    for (size_t i = 0; i < kSpecialBits.size() && i < bits.size(); i++) bits[i] = kSpecialBits[i];
    Tensor inp = host_from_bits(bits, DType::f32);

    Tensor want = Tensor::empty({n}, DType::bf16, Device::cpu());
    kernels::cast(want, inp, Stream());
    std::vector<uint16_t> got = bits_of<uint16_t>(gpu_cast(inp, DType::bf16, stream)), expected = bits_of<uint16_t>(want);
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

TEST_CASE("cuda cast bf16 -> f32 equals the cpu bit for bit", "[gpu][cast]") {
  Stream stream = Stream::create(Device::cuda(0));
  // Every bf16 pattern, then random ones past 2^16 elements.
  const int64_t n = (1 << 20) + 3;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::mt19937_64 gen(seed);
  std::vector<uint16_t> bits(n);
  for (int64_t i = 0; i < n; i++) bits[i] = i < (1 << 16) ? static_cast<uint16_t>(i) : static_cast<uint16_t>(gen());
  Tensor inp = host_from_bits(bits, DType::bf16);
  Tensor want = Tensor::empty({n}, DType::f32, Device::cpu());
  kernels::cast(want, inp, Stream());
  REQUIRE(bits_of<uint32_t>(gpu_cast(inp, DType::f32, stream)) == bits_of<uint32_t>(want));
}

TEST_CASE("cuda cast round trips and same-dtype copies", "[gpu][cast]") {
  Stream stream = Stream::create(Device::cuda(0));
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  const int64_t n = 1031;
  std::vector<uint16_t> bits(n);
  std::mt19937_64 gen(seed);
  for (auto& b : bits) b = static_cast<uint16_t>(gen());
  Tensor h = host_from_bits(bits, DType::bf16).to(stream.device());
  Tensor f = Tensor::empty({n}, DType::f32, stream.device());
  Tensor back = Tensor::empty({n}, DType::bf16, stream.device());
  Tensor copy = Tensor::empty({n}, DType::bf16, stream.device());
  kernels::cast(f, h, stream);
  kernels::cast(back, f, stream);  // bf16 -> f32 -> bf16: the identity, but NaNs come back quiet
  kernels::cast(copy, h, stream);  // same dtype: a copy
  kernels::cast(copy, copy, stream);  // onto itself: nothing
  stream.synchronize();
  std::vector<uint16_t> quieted = bits;
  for (auto& b : quieted)
    if ((b & 0x7fff) > 0x7f80) b |= 0x40;
  REQUIRE(bits_of<uint16_t>(back) == quieted);
  REQUIRE(bits_of<uint16_t>(copy) == bits);
}
