// Helpers shared by the tests: fresh random inputs, float64 comparisons and
// the sizes every kernel test walks through.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <string>
#include <random>
#include <vector>

#include "runtime/core/tensor.h"

namespace tandem::testing {

// Odd sizes on purpose: 1, a prime below a warp, one past a warp, and one
// that is not a multiple of any block size.
inline const std::vector<int64_t> kOddSizes = {1, 7, 33, 1000, 1031};

// A fresh seed per call (std::random_device), printed by Catch on failure
// through INFO at the call site, so a failing draw can be replayed.
inline uint64_t fresh_seed() { return (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}(); }

// A new empty directory under the system's temporary directory; the test removes it.
inline std::filesystem::path temp_dir(const std::string& name) {
  std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("tandem_test_" + name + "_" + std::to_string(fresh_seed()));
  std::filesystem::create_directories(p);
  return p;
}

// A whole file's bytes ("" when it cannot be read), and writing them.
inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// How indices (tokens) repeat: uniform over [0, V); "hot": about half are
// one index (a padding or very frequent token), interleaved with the rest;
// "runs": stretches of one index in a row (as sorted or packed data).
enum class Spread { uniform, hot, runs };

inline const char* spread_name(Spread s) {
  return s == Spread::uniform ? "uniform" : s == Spread::hot ? "hot" : "runs";
}

inline std::vector<int32_t> random_indices(int64_t N, int64_t V, Spread spread, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(V - 1));
  int32_t hot = pick(gen), run = pick(gen);
  std::vector<int32_t> idx(N);
  for (int64_t n = 0; n < N; n++) {
    if (spread == Spread::runs && n % 17 == 0) run = pick(gen);
    idx[n] = spread == Spread::uniform ? pick(gen) : spread == Spread::hot ? (gen() % 2 ? hot : pick(gen)) : run;
  }
  return idx;
}

// Uniform values in [lo, hi) from `seed`.
inline std::vector<float> random_vector(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

inline Tensor random_tensor(Shape shape, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return Tensor::from_vector(random_vector(shape_numel(shape), seed, lo, hi), shape);
}

// Relative error ||a - b|| / ||b|| in float64; NaN anywhere gives NaN, so
// REQUIRE(rel_error(...) <= tol) fails on NaN (STYLE.md, habit to avoid 2).
template <typename A, typename B>
double rel_error(const A& a, const B& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, ref = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    ref += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  if (ref == 0) return std::sqrt(diff);
  return std::sqrt(diff / ref);
}

template <typename A>
bool all_finite(const A& a) {
  for (auto x : a)
    if (!std::isfinite(static_cast<double>(x))) return false;
  return true;
}

// Max |a - b| in float64; NaN gives NaN.
template <typename A, typename B>
double max_abs_diff(const A& a, const B& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

// Rounds every value through bf16, in place: the inputs a bf16 kernel sees.
inline std::vector<float> rounded_to_bf16(std::vector<float> v) {
  for (auto& x : v) x = round_to_bf16(x);
  return v;
}

// f16 on the host through the compiler's _Float16 (round to nearest even,
// as __float2half_rn).
inline float round_to_f16(float v) { return static_cast<float>(static_cast<_Float16>(v)); }

// The values rounded to `dtype` (f32, bf16 or f16): what a kernel of that
// storage type sees.
inline std::vector<float> rounded(std::vector<float> v, DType dtype) {
  if (dtype == DType::bf16) return rounded_to_bf16(std::move(v));
  if (dtype == DType::f16)
    for (auto& x : v) x = round_to_f16(x);
  return v;
}

// Random values in [-1, 1), rounded to `dtype` so that a bf16 kernel and
// its fp32 CPU twin see the same inputs.
inline std::vector<float> draw(int64_t n, uint64_t seed, DType dtype) {
  return rounded(random_vector(n, seed), dtype);
}

inline std::vector<float> abs_of(std::vector<float> v) {
  for (auto& x : v) x = std::fabs(x);
  return v;
}

// Worst |got[i] - want[i]| / scale[i], where scale[i] is the sum of the
// magnitudes of the terms that made want[i] (|x| @ |W|^T + |b|, say): a
// floating-point sum is accurate relative to that, not relative to a result
// that happens to cancel to near zero. NaN anywhere gives NaN.
template <typename G, typename W, typename S>
double scaled_error(const G& got, const W& want, const S& scale) {
  REQUIRE(got.size() == want.size());
  REQUIRE(got.size() == scale.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); i++) {
    double e = std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])) /
               (static_cast<double>(scale[i]) + 1e-30);
    if (std::isnan(e)) return e;
    worst = std::max(worst, e);
  }
  return worst;
}
inline double scaled_error(const std::vector<float>& got, const Tensor& want, const Tensor& scale) {
  return scaled_error(got, want.to_vector(), scale.to_vector());
}

// max |a - b| / max(1, max |b|): the error relative to the O(1) scale of the
// values, which does not blow up when one of a few values lands near zero by
// cancellation (n = 1, a weight that steps across 0).
template <typename A, typename B>
double unit_scaled_error(const A& a, const B& b) {
  double scale = 1;
  for (auto x : b) scale = std::max(scale, std::fabs(static_cast<double>(x)));
  return max_abs_diff(a, b) / scale;
}

// d loss / d values[i] for every i by central differences, in float64 over
// a forward that computes in fp32: each value steps by +-eps (large enough
// that fp32 rounding in the forward stays far below the change it causes),
// and the quotient divides by the step fp32 actually took.
inline std::vector<double> numerical_gradient(float* values, int64_t n, const std::function<double()>& loss,
                                              float eps = 1e-2f) {
  std::vector<double> grad(n);
  for (int64_t i = 0; i < n; i++) {
    float keep = values[i], up = keep + eps, down = keep - eps;
    values[i] = up;
    double l_up = loss();
    values[i] = down;
    double l_down = loss();
    values[i] = keep;
    grad[i] = (l_up - l_down) / (static_cast<double>(up) - static_cast<double>(down));
  }
  return grad;
}
inline std::vector<double> numerical_gradient(std::vector<float>& values, const std::function<double()>& loss,
                                              float eps = 1e-2f) {
  return numerical_gradient(values.data(), static_cast<int64_t>(values.size()), loss, eps);
}

// Class targets in [0, V) with about a quarter ignored (-1, or -100 as
// PyTorch's ignore_index).
inline std::vector<int32_t> random_targets(int64_t N, int64_t V, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(V - 1));
  std::vector<int32_t> t(N);
  for (auto& x : t) x = gen() % 4 == 0 ? (gen() % 2 ? -1 : -100) : pick(gen);
  return t;
}

// 1 / (number of rows that count): the upstream gradient of a mean loss.
inline float mean_dloss(const std::vector<int32_t>& targets) {
  int64_t valid = 0;
  for (int32_t t : targets) valid += t >= 0;
  return valid == 0 ? 1.f : 1.f / static_cast<float>(valid);
}

// A tensor of `dtype` (f32, bf16 or f16) on `device` holding `values`.
inline Tensor make_tensor(const std::vector<float>& values, Shape shape, DType dtype, Device device) {
  Tensor host = Tensor::empty(shape, dtype, Device::cpu());
  REQUIRE(static_cast<int64_t>(values.size()) == host.numel());
  if (dtype == DType::f32) {
    std::copy(values.begin(), values.end(), host.data_as<float>());
  } else if (dtype == DType::bf16) {
    uint16_t* p = host.data_as<uint16_t>();
    for (size_t i = 0; i < values.size(); i++) p[i] = f32_to_bf16(values[i]);
  } else {
    REQUIRE(dtype == DType::f16);
    _Float16* p = static_cast<_Float16*>(host.data());
    for (size_t i = 0; i < values.size(); i++) p[i] = static_cast<_Float16>(values[i]);
  }
  return device.is_cpu() ? host : host.to(device);
}

// The values of a tensor of f32, bf16 or f16 on any device, as floats on
// the host (synchronizes); empty for an undefined tensor.
inline std::vector<float> download(const Tensor& t) {
  if (!t.defined()) return {};
  if (t.dtype() != DType::f16) return t.to_vector();
  Tensor host = t.to(Device::cpu());
  const _Float16* p = static_cast<const _Float16*>(host.data());
  return std::vector<float>(p, p + host.numel());
}

// An i32 tensor on `device` holding `values`.
inline Tensor make_int_tensor(const std::vector<int32_t>& values, Shape shape, Device device = Device::cpu()) {
  Tensor host = Tensor::empty(shape, DType::i32, Device::cpu());
  REQUIRE(static_cast<int64_t>(values.size()) == host.numel());
  std::copy(values.begin(), values.end(), host.data_as<int32_t>());
  return device.is_cpu() ? host : host.to(device);
}

}  // namespace tandem::testing
