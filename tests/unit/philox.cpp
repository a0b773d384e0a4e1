// Philox against the published known-answer vectors (Random123's kat_vectors)
// and the properties the runtime relies on.
#include "runtime/core/philox.h"
#include "support/testing.h"

using namespace tandem;

TEST_CASE("philox4x32-10 matches the reference vectors", "[philox]") {
  struct Kat {
    Philox4 ctr;
    uint32_t k0, k1;
    Philox4 out;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& k : kats) {
    Philox4 r = philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; i++) REQUIRE(r.v[i] == k.out.v[i]);
  }
}

TEST_CASE("philox uniforms are in [0, 1) with the right mean", "[philox]") {
  const int64_t n = 1 << 18;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    float u = philox_uniform(1234, i);
    REQUIRE(u >= 0.f);
    REQUIRE(u < 1.f);
    sum += u;
  }
  REQUIRE(std::fabs(sum / n - 0.5) <= 0.005);
  REQUIRE(philox_uniform(1, 5) != philox_uniform(2, 5));  // the seed matters
  REQUIRE(philox_uniform(1, 5) == philox_uniform(1, 5));  // and nothing else
}

TEST_CASE("philox normals have mean 0 and variance 1", "[philox]") {
  const int64_t n = 1 << 18;
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < n; i++) {
    double x = philox_normal(99, i);
    REQUIRE(std::isfinite(x));
    sum += x;
    sq += x * x;
  }
  REQUIRE(std::fabs(sum / n) <= 0.01);
  REQUIRE(std::fabs(sq / n - 1.0) <= 0.02);
}
