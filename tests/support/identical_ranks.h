// Expected results for a world of identical ranks (the simulated network's
// semantics): values every side holds alike, in f32, bf16 or i32, and what
// the collectives leave of them.
#pragma once

#include <chrono>
#include <cmath>
#include <vector>

#include "support/testing.h"

namespace tandem::testing {

inline double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

// Values of `dtype` (integers for i32) that every side sees alike.
inline std::vector<float> values_for(int64_t n, uint64_t seed, DType dtype) {
  if (dtype != DType::i32) return draw(n, seed, dtype);
  std::vector<float> v = random_vector(n, seed, -1000.f, 1000.f);
  for (float& x : v) x = std::trunc(x);
  return v;
}

// A 1-d tensor of `dtype` on `device` holding `v`.
inline Tensor make_values(const std::vector<float>& v, DType dtype, Device device) {
  int64_t n = static_cast<int64_t>(v.size());
  if (dtype == DType::i32) return make_int_tensor(std::vector<int32_t>(v.begin(), v.end()), {n}, device);
  return make_tensor(v, {n}, dtype, device);
}

// The values of a f32, bf16 or i32 tensor as floats on the host.
inline std::vector<float> read_values(const Tensor& t) {
  if (t.dtype() != DType::i32) return t.to_vector();
  Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  const int32_t* p = host.data_as<int32_t>();
  return std::vector<float>(p, p + host.numel());
}

// What a sum over `n` identical ranks leaves: x * n, rounded to the dtype once.
inline std::vector<float> times(std::vector<float> v, int n, DType dtype) {
  for (float& x : v) x = dtype == DType::bf16 ? round_to_bf16(x * static_cast<float>(n)) : x * static_cast<float>(n);
  return v;
}

// `v` n times over: what all_gather of identical ranks leaves.
inline std::vector<float> repeated(const std::vector<float>& v, int n) {
  std::vector<float> out;
  for (int r = 0; r < n; r++) out.insert(out.end(), v.begin(), v.end());
  return out;
}

}  // namespace tandem::testing
