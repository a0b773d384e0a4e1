// CPU f32 <-> bf16 and f32 <-> f16 casts against an independent oracle: the
// nearer of the two neighbours, found in float64, ties to even; plus the
// special values (NaN, inf, denormals, halfway cases, overflow) one by one.
#include <cmath>
#include <cstring>

#include "kernels/cast.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
float float_of(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// The value of bf16 bits, decoded field by field in float64.
double bf16_value(uint16_t h) {
  int sign = h >> 15, exponent = (h >> 7) & 0xff, mantissa = h & 0x7f;
  double magnitude;
  if (exponent == 0xff) magnitude = mantissa ? NAN : INFINITY;
  else if (exponent == 0) magnitude = std::ldexp(mantissa, -133);  // denormal: m * 2^(1 - 127 - 7)
  else magnitude = std::ldexp(128 + mantissa, exponent - 134);
  return sign ? -magnitude : magnitude;
}

// Round-to-nearest-even bf16 of a finite f32, by comparing distances to the
// two candidates in float64. Past the largest bf16 the upper candidate is
// inf, which IEEE rounding treats as 2^128 when measuring.
uint16_t oracle_bf16(float x) {
  uint32_t b = bits_of(x);
  if (std::isinf(x)) return static_cast<uint16_t>(b >> 16);
  uint16_t down = static_cast<uint16_t>(b >> 16);  // truncation, toward zero
  uint16_t up = static_cast<uint16_t>(down + 1);   // next away from zero
  double v = std::fabs(static_cast<double>(x));
  double lo = std::fabs(bf16_value(down));
  double hi = (up & 0x7fff) == 0x7f80 ? std::ldexp(1.0, 128) : std::fabs(bf16_value(up));
  if (v - lo < hi - v) return down;
  if (v - lo > hi - v) return up;
  return (down & 1) ? up : down;  // tie: even mantissa
}

// The value of f16 (IEEE binary16) bits, decoded field by field in float64.
double f16_value(uint16_t h) {
  int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double magnitude;
  if (exponent == 0x1f) magnitude = mantissa ? NAN : INFINITY;
  else if (exponent == 0) magnitude = std::ldexp(mantissa, -24);  // subnormal: m * 2^(1 - 15 - 10)
  else magnitude = std::ldexp(1024 + mantissa, exponent - 25);
  return sign ? -magnitude : magnitude;
}

// Round-to-nearest-even f16 of a non-NaN f32: `down` is the largest finite
// f16 magnitude at most |x| (a binary search over the bit patterns, which
// order like the magnitudes), `up` the next one; the nearer wins in float64,
// a tie goes to the even mantissa. Past 65504 the upper candidate is inf,
// which IEEE rounding treats as 2^16 when measuring.
uint16_t oracle_f16(float x) {
  uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  double v = std::fabs(static_cast<double>(x));
  if (std::isinf(x)) return sign | 0x7c00;
  uint16_t down = 0, hi_bits = 0x7bff;  // the answer lies in [down, hi_bits]
  while (down < hi_bits) {
    uint16_t mid = static_cast<uint16_t>((down + hi_bits + 1) / 2);
    if (f16_value(mid) <= v) down = mid;
    else hi_bits = static_cast<uint16_t>(mid - 1);
  }
  uint16_t up = static_cast<uint16_t>(down + 1);
  double lo = f16_value(down), hi = up == 0x7c00 ? std::ldexp(1.0, 16) : f16_value(up);
  if (v - lo < hi - v) return sign | down;
  if (v - lo > hi - v) return sign | up;
  return sign | ((down & 1) ? up : down);  // tie: even mantissa
}

// The f16 NaN that an f32 NaN narrows to (Note [Cast NaNs] in
// kernels/cpu/cast.cpp): sign, quiet bit, the top 10 payload bits.
uint16_t f16_nan_of(uint32_t bits) {
  return static_cast<uint16_t>(((bits >> 16) & 0x8000u) | 0x7e00u | ((bits & 0x7fffffu) >> 13));
}

// `x` cast on the CPU to `dtype` (bf16 or f16), as bits.
std::vector<uint16_t> narrowed(const std::vector<float>& x, DType dtype) {
  int64_t n = static_cast<int64_t>(x.size());
  Tensor out = Tensor::empty({n}, dtype, Device::cpu());
  kernels::cast(out, Tensor::from_vector(x, {n}), Stream());
  const uint16_t* p = out.data_as<uint16_t>();
  return {p, p + n};
}
std::vector<uint16_t> to_bf16(const std::vector<float>& x) { return narrowed(x, DType::bf16); }
std::vector<uint16_t> to_f16(const std::vector<float>& x) { return narrowed(x, DType::f16); }

}  // namespace

TEST_CASE("cpu cast f32 -> bf16 rounds to nearest even", "[kernels][cast]") {
  std::vector<int64_t> sizes = kOddSizes;
  sizes.push_back(0);
  for (int64_t n : sizes) {
    uint64_t seed = fresh_seed();
    INFO("n=" << n << " seed=" << seed);
    // Random bit patterns cover every exponent, denormals and specials.
    std::mt19937_64 gen(seed);
    std::vector<float> x(n);
    for (auto& v : x) v = float_of(static_cast<uint32_t>(gen()));
    std::vector<uint16_t> got = to_bf16(x);
    for (int64_t i = 0; i < n; i++) {
      INFO("i=" << i << " bits=" << std::hex << bits_of(x[i]));
      if (std::isnan(x[i])) {
        REQUIRE(std::isnan(bf16_value(got[i])));
        REQUIRE((got[i] >> 15) == (bits_of(x[i]) >> 31));  // sign kept
      } else {
        REQUIRE(got[i] == oracle_bf16(x[i]));
      }
    }
  }
}

TEST_CASE("cpu cast f32 -> bf16 special values", "[kernels][cast]") {
  struct Case {
    uint32_t in;
    uint16_t out;
  };
  const std::vector<Case> cases = {
      {0x00000000u, 0x0000},  // +0
      {0x80000000u, 0x8000},  // -0
      {0x7f800000u, 0x7f80},  // +inf
      {0xff800000u, 0xff80},  // -inf
      {0x7fc00000u, 0x7fc0},  // quiet NaN
      {0xffc00000u, 0xffc0},  // negative quiet NaN
      {0x7f800001u, 0x7fc0},  // signalling NaN, low payload: quieted, not rounded to inf
      {0x7fa00000u, 0x7fe0},  // signalling NaN, high payload kept
      {0x3f808000u, 0x3f80},  // 1 + 2^-8: halfway, ties to even (down)
      {0x3f818000u, 0x3f82},  // halfway above an odd mantissa: up
      {0x3f808001u, 0x3f81},  // just above halfway: up
      {0x3f807fffu, 0x3f80},  // just below halfway: down
      {0x7f7fffffu, 0x7f80},  // largest f32 rounds to inf
      {0x7f7f7fffu, 0x7f7f},  // just below the halfway point to inf: largest bf16
      {0x7f7f8000u, 0x7f80},  // halfway to inf above an odd mantissa: inf
      {0x00000001u, 0x0000},  // smallest denormal: rounds to 0
      {0x00008000u, 0x0000},  // denormal halfway, even: down to 0
      {0x00018000u, 0x0002},  // denormal halfway, odd: up
      {0x00008001u, 0x0001},  // denormal just above halfway
      {0x807fffffu, 0x8080},  // largest negative denormal rounds to -smallest normal
      {0x00800000u, 0x0080},  // smallest normal
  };
  std::vector<float> x;
  for (const Case& c : cases) x.push_back(float_of(c.in));
  std::vector<uint16_t> got = to_bf16(x);
  for (size_t i = 0; i < cases.size(); i++) {
    INFO("in=" << std::hex << cases[i].in);
    REQUIRE(got[i] == cases[i].out);
  }
}

TEST_CASE("cpu cast bf16 -> f32 is exact, and same dtype copies", "[kernels][cast]") {
  // Every bf16 bit pattern.
  const int64_t n = 1 << 16;
  Tensor h = Tensor::empty({n}, DType::bf16, Device::cpu());
  for (int64_t i = 0; i < n; i++) h.data_as<uint16_t>()[i] = static_cast<uint16_t>(i);
  Tensor f = Tensor::from_vector(std::vector<float>(n, 0.f), {n});
  kernels::cast(f, h, Stream());
  for (int64_t i = 0; i < n; i++) {
    INFO("bits=" << std::hex << i);
    float got = f.data_as<float>()[i];
    double want = bf16_value(static_cast<uint16_t>(i));
    if (std::isnan(want)) {
      REQUIRE(bits_of(got) == static_cast<uint32_t>(i) << 16);  // payload and sign kept
    } else {
      REQUIRE(static_cast<double>(got) == want);
      REQUIRE(std::signbit(got) == std::signbit(want));
    }
  }
  // Round trip bf16 -> f32 -> bf16 is the identity, except that signalling
  // NaNs come back quiet (sign and payload kept).
  Tensor back = Tensor::empty({n}, DType::bf16, Device::cpu());
  kernels::cast(back, f, Stream());
  for (int64_t i = 0; i < n; i++) {
    uint16_t in = h.data_as<uint16_t>()[i];
    uint16_t want = std::isnan(bf16_value(in)) ? static_cast<uint16_t>(in | 0x40) : in;
    REQUIRE(back.data_as<uint16_t>()[i] == want);
  }

  // Same dtype: a copy.
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::vector<float> x = random_vector(1031, seed);
  Tensor out = Tensor::from_vector(std::vector<float>(1031, NAN), {1031});
  kernels::cast(out, Tensor::from_vector(x, {1031}), Stream());
  REQUIRE(out.to_vector() == x);
  Tensor copy = Tensor::empty({n}, DType::bf16, Device::cpu());
  kernels::cast(copy, h, Stream());
  REQUIRE(std::memcmp(copy.data(), h.data(), h.nbytes()) == 0);
}

TEST_CASE("cpu cast f32 -> f16 rounds to nearest even", "[kernels][cast]") {
  std::vector<int64_t> sizes = kOddSizes;
  sizes.push_back(0);
  for (int64_t n : sizes) {
    uint64_t seed = fresh_seed();
    INFO("n=" << n << " seed=" << seed);
    // Even elements: random bit patterns (every exponent, NaN payloads);
    // odd ones: values around f16's range, 2^-27 (below the smallest
    // subnormal) to 2^17 (past the largest normal), with random signs and
    // mantissas, where nearly all the rounding happens.
    std::mt19937_64 gen(seed);
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; i++) {
      uint32_t bits = static_cast<uint32_t>(gen());
      if (i % 2) bits = (bits & 0x807fffffu) | static_cast<uint32_t>(127 - 27 + gen() % 45) << 23;
      x[i] = float_of(bits);
    }
    std::vector<uint16_t> got = to_f16(x);
    for (int64_t i = 0; i < n; i++) {
      INFO("i=" << i << " bits=" << std::hex << bits_of(x[i]) << " got=" << got[i]);
      if (std::isnan(x[i])) REQUIRE(got[i] == f16_nan_of(bits_of(x[i])));
      else REQUIRE(got[i] == oracle_f16(x[i]));
    }
  }
}

TEST_CASE("cpu cast f32 -> f16 special values", "[kernels][cast]") {
  struct Case {
    uint32_t in;
    uint16_t out;
  };
  const std::vector<Case> cases = {
      {0x00000000u, 0x0000},  // +0
      {0x80000000u, 0x8000},  // -0
      {0x7f800000u, 0x7c00},  // +inf
      {0xff800000u, 0xfc00},  // -inf
      {0x7fc00000u, 0x7e00},  // quiet NaN
      {0xffc00000u, 0xfe00},  // negative quiet NaN
      {0x7f800001u, 0x7e00},  // signalling NaN, low payload: quieted, not rounded to inf
      {0x7fa00000u, 0x7f00},  // signalling NaN, high payload kept
      {0x3f800000u, 0x3c00},  // 1
      {0x3f801000u, 0x3c00},  // 1 + 2^-11: halfway, ties to even (down)
      {0x3f803000u, 0x3c02},  // halfway above an odd mantissa: up
      {0x3f801001u, 0x3c01},  // just above halfway: up
      {0x3f800fffu, 0x3c00},  // just below halfway: down
      {0x477fe000u, 0x7bff},  // 65504, the largest f16
      {0xc77fe000u, 0xfbff},  // -65504
      {0x477fefffu, 0x7bff},  // just below 65520, the halfway point to inf
      {0x477ff000u, 0x7c00},  // 65520: halfway above an odd mantissa, to inf
      {0xc77ff000u, 0xfc00},  // -65520 to -inf
      {0x47800000u, 0x7c00},  // 65536
      {0x7f7fffffu, 0x7c00},  // largest f32
      {0x38800000u, 0x0400},  // 2^-14, the smallest normal
      {0x387fc000u, 0x03ff},  // the largest subnormal
      {0x387fe000u, 0x0400},  // halfway from it to the smallest normal: up to even
      {0x33800000u, 0x0001},  // 2^-24, the smallest subnormal
      {0xb3800000u, 0x8001},  // -2^-24
      {0x33000000u, 0x0000},  // 2^-25: halfway to 0, even: down
      {0xb3000000u, 0x8000},  // -2^-25 to -0
      {0x33000001u, 0x0001},  // just above 2^-25: up
      {0x33c00000u, 0x0002},  // 3 * 2^-25: halfway above an odd subnormal: up
      {0x00000001u, 0x0000},  // an f32 denormal: 0
      {0x80000001u, 0x8000},  // a negative f32 denormal: -0
  };
  std::vector<float> x;
  for (const Case& c : cases) x.push_back(float_of(c.in));
  std::vector<uint16_t> got = to_f16(x);
  for (size_t i = 0; i < cases.size(); i++) {
    INFO("in=" << std::hex << cases[i].in << " got=" << got[i]);
    REQUIRE(got[i] == cases[i].out);
    if (!std::isnan(x[i])) REQUIRE(got[i] == oracle_f16(x[i]));  // the oracle agrees
  }
}

TEST_CASE("cpu cast f16 -> f32 is exact", "[kernels][cast]") {
  // Every f16 bit pattern.
  const int64_t n = 1 << 16;
  Tensor h = Tensor::empty({n}, DType::f16, Device::cpu());
  for (int64_t i = 0; i < n; i++) h.data_as<uint16_t>()[i] = static_cast<uint16_t>(i);
  Tensor f = Tensor::from_vector(std::vector<float>(n, 0.f), {n});
  kernels::cast(f, h, Stream());
  for (int64_t i = 0; i < n; i++) {
    INFO("bits=" << std::hex << i);
    float got = f.data_as<float>()[i];
    double want = f16_value(static_cast<uint16_t>(i));
    if (std::isnan(want)) {  // sign and payload shifted into place
      uint32_t sign = static_cast<uint32_t>(i & 0x8000) << 16, payload = static_cast<uint32_t>(i & 0x3ff) << 13;
      REQUIRE(bits_of(got) == (sign | 0x7f800000u | payload));
    } else {
      REQUIRE(static_cast<double>(got) == want);
      REQUIRE(std::signbit(got) == std::signbit(want));
    }
  }
  // Round trip f16 -> f32 -> f16 is the identity, except that signalling
  // NaNs come back quiet (sign and payload kept).
  Tensor back = Tensor::empty({n}, DType::f16, Device::cpu());
  kernels::cast(back, f, Stream());
  for (int64_t i = 0; i < n; i++) {
    uint16_t in = h.data_as<uint16_t>()[i];
    uint16_t want = std::isnan(f16_value(in)) ? static_cast<uint16_t>(in | 0x200) : in;
    INFO("bits=" << std::hex << in);
    REQUIRE(back.data_as<uint16_t>()[i] == want);
  }
}

TEST_CASE("cpu cast checks its arguments", "[kernels][cast]") {
  Tensor f = Tensor::zeros({8}, DType::f32, Device::cpu());
  Tensor h = Tensor::zeros({7}, DType::bf16, Device::cpu());
  REQUIRE_THROWS(kernels::cast(h, f, Stream()));  // sizes differ
  Tensor i = Tensor::zeros({8}, DType::i32, Device::cpu());
  REQUIRE_THROWS(kernels::cast(i, f, Stream()));  // unsupported dtype
  Tensor b = Tensor::zeros({8}, DType::bf16, Device::cpu()), e = Tensor::zeros({8}, DType::f16, Device::cpu());
  REQUIRE_THROWS(kernels::cast(e, b, Stream()));  // between 16-bit types: through f32 only
  REQUIRE_THROWS(kernels::cast(b, e, Stream()));
  // Partly overlapping views of one storage are refused; the very same
  // tensor is a no-op.
  Tensor buf = Tensor::zeros({16}, DType::f32, Device::cpu());
  REQUIRE_THROWS(kernels::cast(buf.view(0, {8}), buf.view(4, {8}), Stream()));
  REQUIRE_NOTHROW(kernels::cast(buf, buf, Stream()));
}
